/* fastipc's C hot path: the declarations shared by the C sources and the cffi builder.
 *
 * build_ffi.py reads the text between the CDEF markers as the cffi cdef, so the
 * declarations Python sees cannot drift from what the C implements. Keep that
 * part plain C declarations (no preprocessor lines, no attributes).
 *
 * Conventions: functions return 0 or a count on success and -errno on failure.
 * Timeouts are nanoseconds on CLOCK_MONOTONIC: < 0 waits forever, 0 never waits.
 * Errors every ring call may return besides those named:
 *   -EBADMSG   the shared segment is corrupted (a length or index out of bounds)
 *   -EPIPE     the ring was shut down (sends always; receives once drained)
 */
#ifndef FASTIPC_H
#define FASTIPC_H

#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */
typedef struct fi_ring fi_ring;

/* The version string compiled in; must equal fastipc.__version__. */
const char *fi_version(void);

/* Size in bytes of the segment file a ring of `capacity` payload bytes needs. */
uint64_t fi_ring_segment_size(uint64_t capacity);

/* Map the already sized, empty segment open on `fd` and lay out a new ring.
 * *out owns the mapping (free with fi_ring_close); fd may be closed after.
 * -EINVAL bad capacity or file size, -ENOMEM, or mmap's errno. */
int fi_ring_create(int fd, uint64_t capacity, fi_ring **out);

/* Map the existing ring on `fd` after checking its header and size.
 * -EPROTO not a fastipc native ring (magic), -EPROTONOSUPPORT other layout
 * version, -EAGAIN creator still initialising, -EBADMSG inconsistent header. */
int fi_ring_open(int fd, fi_ring **out);

/* Unmap and free the handle; NULL is allowed. Does not release a lock held
 * by an open reserve/view (the Python layer does that first). */
void fi_ring_close(fi_ring *r);

/* The payload capacity (bytes) and data-area size (bytes) of the handle. */
uint64_t fi_ring_capacity(const fi_ring *r);
uint64_t fi_ring_data_size(const fi_ring *r);

/* Lend the handle a buffer for fi_ring_try_recv1; the caller keeps it alive
 * (and unchanged) for as long as the handle uses it. */
void fi_ring_set_scratch(fi_ring *r, char *buf, size_t cap);

/* Busy-wait this long (ns) before sleeping in a blocking call. */
void fi_ring_set_spin(fi_ring *r, int64_t spin_ns);

/* Messages waiting (a snapshot), or -EBADMSG. Never blocks. */
int64_t fi_ring_len(fi_ring *r);

/* Length in bytes of the oldest message, -EAGAIN if empty. Never blocks; a hint. */
int64_t fi_ring_next_len(fi_ring *r);

/* 1 once fi_ring_shutdown was called on the ring by anyone, else 0. */
int fi_ring_is_shutdown(fi_ring *r);

/* Mark the ring shut down and wake every waiter. Never blocks. */
int fi_ring_shutdown(fi_ring *r);

/* ---- Non-blocking calls: never wait, safe to call with the GIL held. ---- */

/* Append one message of n bytes. -EAGAIN full or another producer is
 * active, -EMSGSIZE n > capacity. (void *, not char *: cffi converts a
 * bytes argument to void * ~40 ns faster.) */
int fi_ring_try_send(fi_ring *r, const void *buf, size_t n);

/* Copy the oldest message into out[0:cap] and consume it; return its length.
 * -EAGAIN empty or another consumer is active, -EMSGSIZE longer than cap
 * (the message stays). */
int64_t fi_ring_try_recv(fi_ring *r, char *out, size_t cap);

/* fi_ring_try_recv into the buffer lent by fi_ring_set_scratch: one
 * argument, because each argument of a cffi call costs ~40 ns. */
int64_t fi_ring_try_recv1(fi_ring *r);

/* fi_ring_try_send / fi_ring_try_recv1 that busy-wait up to spin_ns for
 * room or a message. Bounded, so still fine with the GIL held: a peer that
 * keeps up is met here without the cost of the blocking path. */
int fi_ring_spin_send(fi_ring *r, const void *buf, size_t n, int64_t spin_ns);
int64_t fi_ring_spin_recv1(fi_ring *r, int64_t spin_ns);

/* Append messages from a marshal-format list or tuple of bytes (marshal.dumps(
 * list, 2)), skipping the first `skip`; return how many were appended (> 0).
 * -EAGAIN none fits now, -EINVAL not such a list (bad item), -EMSGSIZE an item
 * exceeds the capacity (checked for every item before any is written). */
int64_t fi_ring_try_send_batch(fi_ring *r, const char *buf, size_t len, size_t skip);

/* Move up to max_count messages into out[0:cap] as a marshal list of bytes
 * (marshal.loads reads it); return the bytes written. -EAGAIN empty or
 * another consumer is active, -EMSGSIZE the oldest alone does not fit. */
int64_t fi_ring_try_recv_batch(fi_ring *r, char *out, size_t cap, size_t max_count);

/* ---- Blocking calls: spin, then sleep on a futex; call without the GIL. ----
 * Besides the above they return -ETIMEDOUT at the deadline, -EINTR when a
 * signal arrived while asleep (the caller runs handlers and retries), and
 * -EDEADLK when this thread already holds the side's lock (an open view). */

int fi_ring_send(fi_ring *r, const void *buf, size_t n, int64_t timeout_ns);
int64_t fi_ring_recv(fi_ring *r, char *out, size_t cap, int64_t timeout_ns);

/* Like the try_ form but waits until at least one message went out; returns
 * how many were appended by this call. */
int64_t fi_ring_send_batch(fi_ring *r, const char *buf, size_t len, size_t skip,
                           int64_t timeout_ns);

/* Waits for the first message only. */
int64_t fi_ring_recv_batch(fi_ring *r, char *out, size_t cap, size_t max_count,
                           int64_t timeout_ns);

/* Wait for room for an n-byte message and hold the producer side: *ptr gets
 * the n writable bytes in the ring. Finish with fi_ring_commit (publish) or
 * fi_ring_abort (discard), from the same thread. */
int fi_ring_reserve(fi_ring *r, size_t n, int64_t timeout_ns, char **ptr);
int fi_ring_commit(fi_ring *r);
int fi_ring_abort(fi_ring *r);

/* Wait for the oldest message and hold the consumer side: *ptr gets its
 * bytes in place; returns its length. Finish with fi_ring_release (which
 * consumes it), from the same thread. */
int64_t fi_ring_peek(fi_ring *r, int64_t timeout_ns, char **ptr);
int fi_ring_release(fi_ring *r);

/* Let go of whatever side an open reserve/peek holds, publishing and
 * consuming nothing (for closing a handle with a view still open). */
int fi_ring_unhold(fi_ring *r);
/* CDEF END */

#endif /* FASTIPC_H */
