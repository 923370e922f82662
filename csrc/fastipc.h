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
typedef struct fi_area fi_area;

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

/* Close the handle: every later call returns -EBADF, except fi_ring_abort and
 * fi_ring_unhold, which still let go of a side this thread holds. Threads
 * waiting in calls on it wake and return -EBADF. The mapping goes once no
 * call is inside, no pin is left and no side is held; the struct stays
 * until fi_ring_free. Serial (see below). Idempotent; NULL is allowed. */
void fi_ring_close(fi_ring *r);

/* Close (if open) and free the handle: call when no other thread can still
 * use the pointer (a pin may: the struct then goes with the last pin).
 * NULL is allowed. */
void fi_ring_free(fi_ring *r);

/* Keep the mapping while a view into it lives (a view past its block must
 * never fault): one fi_ring_unpin per successful fi_ring_pin, which may
 * come after fi_ring_close. -EBADF if the mapping is already gone. */
int fi_ring_pin(fi_ring *r);
void fi_ring_unpin(fi_ring *r);

/* A pin a view owns, in memory the caller allocates zeroed (Python: ffi.new)
 * before taking anything, so that an exception (a raising signal handler)
 * at any instant finds out from it whether there is a pin to drop. */
typedef struct fi_pin {
    fi_ring *ring; /* the ring whose mapping is pinned, or NULL */
    fi_area *area; /* the hand-off area pinned, or NULL (fi_chan_view_pin_into) */
} fi_pin;

/* fi_ring_pin recorded in *pin (which must hold nothing): 0, or -EBADF if
 * the mapping is already gone. Serial; never blocks. */
int fi_ring_pin_into(fi_ring *r, fi_pin *pin);

/* Drop what *pin holds, if anything, and clear it: idempotent. Shaped as a
 * view's destructor (ffi.gc(view_ptr, functools.partial(fi_pin_drop, pin)):
 * C only, so a raising signal handler cannot cut it short and leak the
 * pin); `view` is unused. The last pin of a closed ring unmaps it (and frees
 * the handle if fi_ring_free came first); of an area, unmaps and frees it.
 * Never blocks. */
void fi_pin_drop(fi_pin *pin, const char *view);

/* fi_pin_drop shaped as the record's own destructor (ffi.gc(pin,
 * fi_pin_release)): drops the pin should the view never come to own it. */
void fi_pin_release(fi_pin *pin);

/* The payload capacity (bytes) and data-area size (bytes) of the handle. */
uint64_t fi_ring_capacity(const fi_ring *r);
uint64_t fi_ring_data_size(const fi_ring *r);

/* Lend the handle a buffer for fi_ring_try_recv1; the caller keeps it alive
 * (and unchanged) for as long as the handle uses it. The calling thread
 * becomes the only one whose fi_ring_try_recv1/spin_recv1 use it. */
void fi_ring_set_scratch(fi_ring *r, char *buf, size_t cap);

/* Busy-wait this long (ns) before sleeping in a blocking call. */
void fi_ring_set_spin(fi_ring *r, int64_t spin_ns);

/* Messages waiting (a snapshot), or -EBADMSG. Never blocks. */
int64_t fi_ring_len(fi_ring *r);

/* The longest message (bytes) a send could append now without waiting (a
 * snapshot), -ENOSPC if not even an empty one fits, -EBADMSG. Never blocks. */
int64_t fi_ring_room(fi_ring *r);

/* Length in bytes of the oldest message, -EAGAIN if empty. Never blocks; a hint. */
int64_t fi_ring_next_len(fi_ring *r);

/* 1 once fi_ring_shutdown was called on the ring by anyone, else 0. */
int fi_ring_is_shutdown(fi_ring *r);

/* Mark the ring shut down and wake every waiter (and ring both bells). Never blocks. */
int fi_ring_shutdown(fi_ring *r);

/* ---- Readiness doorbells (asyncio, selectors): one FIFO per side. ----
 * Python names, makes and opens the FIFOs; C only rings them: after a
 * publish (recv bell) or a consume (send bell), one byte, and only while the
 * side's watcher count in the segment is non-zero. Side 0: receivers (the
 * recv bell), side 1: senders (the send bell). */

/* Hand the handle the recv and send bell fds (open O_RDWR|O_NONBLOCK; -1:
 * none). The handle owns them from here: they are closed when its mapping
 * goes (never while a call of another thread may still write to them). Serial. */
void fi_ring_set_bells(fi_ring *r, int recv_fd, int send_fd);

/* Add delta (+1 start watching, -1 stop) to side's watcher count, clamped to
 * 0..UINT32_MAX, followed by a full fence so the caller's re-check of the ring
 * is ordered after it; return the new count. -EBADF closed handle, -EINVAL
 * bad side. Serial; never blocks. */
int64_t fi_ring_watch(fi_ring *r, int side, int delta);

/* 1 if side would not have to wait now: a message waits or the ring is shut
 * down (side 0), room for a message of need bytes or shut down (side 1), or
 * the indexes are inconsistent (the call reports it); else 0. -EBADF closed
 * handle, -EINVAL bad side. A snapshot (another consumer may take it first).
 * Serial; never blocks. */
int fi_ring_poll(fi_ring *r, int side, uint64_t need);

/* ---- Non-blocking calls: never wait, safe to call with the GIL held. ----
 * These and fi_ring_len/next_len/shutdown/commit/release/close are "serial":
 * the caller never runs one at the same time as fi_ring_close on the handle
 * (Python: they are all called holding the GIL). The waiting calls below may
 * run while another thread closes the handle: they count themselves in. */

/* Append one message of n bytes. -EAGAIN full or another producer is
 * active, -EMSGSIZE n > capacity. (void *, not char *: cffi converts a
 * bytes argument to void * ~40 ns faster.) */
int fi_ring_try_send(fi_ring *r, const void *buf, size_t n);

/* Copy the oldest message into out[0:cap] and consume it; return its length.
 * -EAGAIN empty or another consumer is active, -EMSGSIZE longer than cap
 * (the message stays). */
int64_t fi_ring_try_recv(fi_ring *r, char *out, size_t cap);

/* fi_ring_try_recv into the buffer lent by fi_ring_set_scratch: one
 * argument, because each argument of a cffi call costs ~40 ns. -ECHILD,
 * touching nothing, from any thread but the one that lent it (which then
 * receives into a buffer of its own with fi_ring_try_recv). */
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

/* A record of one hold (reserve/peek), in memory the caller allocates
 * zeroed before the call that takes the side: that call fills it in (and
 * pins the handle's struct) in the same step as it takes the lock, so no
 * instant exists where the side is held and nothing owns its release. */
typedef struct fi_hold {
    fi_ring *ring;  /* the ring whose side is held, or NULL */
    uint64_t gen;   /* which hold of it */
    uint64_t owner; /* the holding thread's lock word */
    uint32_t forks; /* the process's fork count then: another in a forked copy */
} fi_hold;

/* If the hold *hold records is still held, let go of it, publishing and
 * consuming nothing, as fi_ring_unhold (from any thread: the record's
 * death means its block is gone, so its holder will never); then drop the pin
 * and clear the record: idempotent, and a no-op once the block finished the
 * hold itself. Shaped as the record's destructor (Python: ffi.gc(record,
 * fi_hold_drop)), so a block whose Python clean-up a raising signal handler
 * cut short still lets go, in C, when its frame goes. */
void fi_hold_drop(fi_hold *hold);

/* Wait for room for an n-byte message and hold the producer side: *ptr gets
 * the n writable bytes in the ring. Finish with fi_ring_commit (publish) or
 * fi_ring_abort (discard), from the same thread. hold (or NULL) must be
 * empty (-EINVAL) and gets the record of the hold. */
int fi_ring_reserve(fi_ring *r, size_t n, int64_t timeout_ns, char **ptr, fi_hold *hold);
int fi_ring_commit(fi_ring *r);
int fi_ring_abort(fi_ring *r);

/* Wait for the oldest message and hold the consumer side: *ptr gets its
 * bytes in place; returns its length. Finish with fi_ring_release (which
 * consumes it), from the same thread (-EPERM from another). hold as for
 * fi_ring_reserve. */
int64_t fi_ring_peek(fi_ring *r, int64_t timeout_ns, char **ptr, fi_hold *hold);
int fi_ring_release(fi_ring *r);

/* Let go of whatever side an open reserve/peek holds, publishing and
 * consuming nothing (for closing a handle with a view still open, or a
 * block an exception ended before it began). 0 also when nothing is held;
 * -EPERM if another thread holds it. */
int fi_ring_unhold(fi_ring *r);

/* ---- Broadcast ring: every subscriber gets every message (broadcast.c) ----
 * One handle type for both roles: a publisher handle (fi_bc_create/open), or
 * a subscriber once fi_bc_subscribe gave it a slot. Errors every call may
 * return besides those named: -EBADF NULL or closed handle (and subscriber
 * calls on a handle without a slot), -EBADMSG the segment is corrupted (a
 * position, length, sequence number or slot value out of bounds), -EPIPE
 * shut down (publishing always; receiving once this subscriber drained what
 * is kept). Receives return -EOVERFLOW when the subscriber was overrun
 * (policy overwrite): fi_bc_lagged says how many messages it lost, and the
 * next receive gets the oldest message still kept. */
typedef struct fi_bcast fi_bcast;

/* A pin a broadcast view owns (as fi_pin): memory the caller allocates
 * zeroed; NULL once dropped. */
typedef struct fi_bpin {
    fi_bcast *bc;
} fi_bpin;

/* A record of one hold (reserve, recv view), as fi_hold. */
typedef struct fi_bhold {
    fi_bcast *bc;
    uint64_t gen;
    uint64_t owner;
    uint32_t forks;
} fi_bhold;

/* Size in bytes of the segment file of a broadcast ring of `capacity`
 * payload bytes and `subscribers` slots. */
uint64_t fi_bc_segment_size(uint64_t capacity, uint32_t subscribers);

/* Map the already sized, empty segment on `fd` and lay out a broadcast ring
 * (policy 0 overwrite, 1 block). *out owns the mapping (fi_bc_free); fd may
 * be closed after. -EINVAL bad capacity, subscribers (1..4096), policy or
 * file size, -ENOMEM, or mmap's errno. */
int fi_bc_create(int fd, uint64_t capacity, uint32_t subscribers, int policy, fi_bcast **out);

/* Map the existing broadcast ring on `fd` after checking its header and
 * size. -EPROTO not a native broadcast ring (magic), -EPROTONOSUPPORT other
 * layout version, -EAGAIN creator still initialising, -EBADMSG inconsistent
 * header. */
int fi_bc_open(int fd, fi_bcast **out);

/* Close the handle (any thread; idempotent; NULL allowed): later calls
 * return -EBADF, waiting calls wake and return -EBADF. The mapping and the
 * subscriber slot go once no call is inside and no view or hold is left. */
void fi_bc_close(fi_bcast *b);

/* Close (if open) and free the handle, when no thread can use the pointer. */
void fi_bc_free(fi_bcast *b);

/* Keep the mapping while a view lives: records the pin in *pin (which must
 * hold nothing: -EINVAL). -EBADF once the mapping is gone. Never blocks. */
int fi_bc_pin_into(fi_bcast *b, fi_bpin *pin);

/* Drop what *pin holds, if anything (idempotent), shaped as a view's
 * destructor (ffi.gc(view, partial(fi_bpin_drop, pin))); `view` unused. */
void fi_bpin_drop(fi_bpin *pin, const char *view);

/* fi_bpin_drop shaped as the record's own destructor. */
void fi_bpin_release(fi_bpin *pin);

/* Geometry, read at open (never blocks): payload capacity (bytes), slots,
 * policy (0 overwrite, 1 block). */
uint64_t fi_bc_capacity(const fi_bcast *b);
uint32_t fi_bc_max_subscribers(const fi_bcast *b);
int fi_bc_policy(const fi_bcast *b);

/* Busy-wait this long (ns) before sleeping in a blocking call. */
void fi_bc_set_spin(fi_bcast *b, int64_t spin_ns);

/* Lend the handle a buffer for fi_bc_try_recv1 (the caller keeps it alive).
 * The calling thread becomes the only one whose fi_bc_try_recv1/spin_recv1
 * use it. */
void fi_bc_set_scratch(fi_bcast *b, char *buf, size_t cap);

/* Subscriber doorbells: slot i's FIFO is the path prefix + i (Python makes
 * them). After a publish, and at shutdown, a handle writes one byte to the
 * FIFO of each slot whose watcher count is non-zero, opening it the first
 * time (O_NOFOLLOW; only a FIFO owned by this user, root or `uid`) and
 * keeping the fd until the mapping goes (threads ringing at once open
 * one fd per FIFO). -EINVAL prefix over 400 bytes, -ENOMEM. Serial: call
 * it before the handle is shared. */
int fi_bc_set_bells(fi_bcast *b, const char *prefix, uint32_t uid);

/* Add delta to this subscriber's slot watcher count (clamped to
 * 0..UINT32_MAX), then a full fence; return the new count. -EINVAL not
 * subscribed. Serial; never blocks. */
int64_t fi_bc_watch(fi_bcast *b, int delta);

/* 1 if a receive on this subscriber would not wait now (a message past its
 * cursor, shut down, or inconsistent positions), else 0. -EINVAL not
 * subscribed. Serial; never blocks. */
int fi_bc_poll(fi_bcast *b);

/* Live subscribers: taken slots whose process /proc shows running (reads
 * a file per taken slot). Never blocks. */
int64_t fi_bc_subscribers(fi_bcast *b);

/* Slot i's owner word, cursor position and sequence number (a snapshot, for
 * inspection): 1 taken by a live process, 0 free or dead, -EINVAL i out of
 * range. Never blocks. */
int64_t fi_bc_slot_info(fi_bcast *b, uint32_t i, uint64_t *owner, uint64_t *pos, uint64_t *seq);

/* Messages published ever (a snapshot). Never blocks. */
int64_t fi_bc_published(fi_bcast *b);

/* The longest message (bytes) a publish could append now without waiting
 * (a snapshot): under overwrite always the capacity; under block what lies
 * before the slowest live subscriber. -ENOSPC not even an empty one. */
int64_t fi_bc_room(fi_bcast *b);

/* 1 once fi_bc_shutdown was called by anyone, else 0. */
int fi_bc_is_shutdown(fi_bcast *b);

/* Mark the ring shut down and wake every waiter. Never blocks. */
int fi_bc_shutdown(fi_bcast *b);

/* Take a subscriber slot for this handle, with its cursor at the newest end
 * (it gets what is published after this call). Waits up to timeout_ns for
 * the publisher lock only (the slot list is changed under it). -EUSERS all
 * slots are taken by live processes (a dead process's slot is reclaimed),
 * -EALREADY subscribed already, -ETIMEDOUT, -EINTR. Call without the GIL. */
int fi_bc_subscribe(fi_bcast *b, int64_t timeout_ns);

/* This handle's slot index, or -1. */
int fi_bc_slot(fi_bcast *b);

/* Messages waiting for this subscriber (a snapshot; after an overrun, the
 * ones still kept). -EINVAL not subscribed. Never blocks. */
int64_t fi_bc_len(fi_bcast *b);

/* Messages lost in the overrun the last -EOVERFLOW reported to this thread on
 * this handle (ask right after it: another thread sharing the handle has its
 * own); all lost so far. */
uint64_t fi_bc_lagged(const fi_bcast *b);
uint64_t fi_bc_missed(const fi_bcast *b);

/* Length in bytes of the next message, -EAGAIN none. A hint; never blocks. */
int64_t fi_bc_next_len(fi_bcast *b);

/* ---- Broadcast, non-blocking: safe with the GIL held (serial, as the ring's). ---- */

/* Publish one message of n bytes. -EAGAIN another publisher is active or
 * (block) no room, -EMSGSIZE n > capacity. */
int fi_bc_try_publish(fi_bcast *b, const void *buf, size_t n);

/* Publish from a marshal list/tuple of bytes, skipping the first `skip`;
 * return how many went out (> 0). -EAGAIN none fits now, -EINVAL not such a
 * list, -EMSGSIZE an item over the capacity (nothing published). */
int64_t fi_bc_try_publish_batch(fi_bcast *b, const char *buf, size_t len, size_t skip);

/* Copy the next message into out[0:cap]; return its length. -EAGAIN none
 * yet (or another thread is receiving on this handle), -EMSGSIZE longer than
 * cap (it stays), -EOVERFLOW overrun (see above), -EDEADLK a view of this
 * thread is open, -ECHILD a copy of the handle inherited through fork() (as
 * every subscriber call: the slot is the subscribing process's). */
int64_t fi_bc_try_recv(fi_bcast *b, char *out, size_t cap);

/* fi_bc_try_recv into the scratch buffer (one argument: cheaper in cffi).
 * -ECHILD, touching nothing, from any thread but the one that lent it
 * (which then receives into a buffer of its own with fi_bc_try_recv). */
int64_t fi_bc_try_recv1(fi_bcast *b);

/* fi_bc_try_recv1 that busy-waits up to spin_ns for a message (bounded:
 * fine with the GIL held). */
int64_t fi_bc_spin_recv1(fi_bcast *b, int64_t spin_ns);

/* Move up to max_count messages into out[0:cap] as a marshal list of bytes;
 * return the bytes written. -EMSGSIZE the next alone does not fit. */
int64_t fi_bc_try_recv_batch(fi_bcast *b, char *out, size_t cap, size_t max_count);

/* ---- Broadcast, blocking: spin, then sleep on a futex; call without the GIL. ----
 * Besides the above: -ETIMEDOUT at the deadline, -EINTR a signal arrived
 * while asleep, -EDEADLK this thread holds the side already (an open view
 * or reserve). Publishers under `block` wait for the slowest live
 * subscriber (a dead one's slot is freed after ~2 ms of no progress);
 * under `overwrite`, only for an open view on the bytes they would reuse. */
int fi_bc_publish(fi_bcast *b, const void *buf, size_t n, int64_t timeout_ns);
int64_t fi_bc_publish_batch(fi_bcast *b, const char *buf, size_t len, size_t skip,
                            int64_t timeout_ns);
int64_t fi_bc_recv(fi_bcast *b, char *out, size_t cap, int64_t timeout_ns);
int64_t fi_bc_recv_batch(fi_bcast *b, char *out, size_t cap, size_t max_count,
                         int64_t timeout_ns);

/* Wait for room and hold the publisher lock: *ptr gets n writable bytes.
 * Finish with fi_bc_commit (publish) or fi_bc_abort, same thread. hold (or
 * NULL) must be empty (-EINVAL). Under overwrite, the room is made at once:
 * an abort still costs subscribers the messages it displaced. */
int fi_bc_reserve(fi_bcast *b, size_t n, int64_t timeout_ns, char **ptr, fi_bhold *hold);
int fi_bc_commit(fi_bcast *b);
int fi_bc_abort(fi_bcast *b);

/* Wait for the next message and lend it in place, pinned (publishers never
 * write over it while lent); *ptr gets its bytes, the length is returned.
 * Finish with fi_bc_release (consumes it), same thread (-EPERM). */
int64_t fi_bc_peek(fi_bcast *b, int64_t timeout_ns, char **ptr, fi_bhold *hold);
int fi_bc_release(fi_bcast *b);

/* Let go of an open reserve/view, publishing and consuming nothing. 0 also
 * when nothing is held; -EPERM another thread holds it. Never blocks. */
int fi_bc_unhold(fi_bcast *b);

/* Destructor of a hold record (ffi.gc(record, fi_bhold_drop)), as fi_hold_drop. */
void fi_bhold_drop(fi_bhold *hold);

/* ---- Channel: length-framed messages over a Unix stream socket (channel.c) ----
 * A frame is an 8-byte header (u32 LE payload length, u32 LE flags) and the
 * payload. Flag bit 0 (fds attached) says SCM_RIGHTS fds ride on the frame's
 * first byte; bit 1 (hand-off) that the payload is in the sender's shared
 * area and the frame carries a 16-byte descriptor of it instead; bit 2
 * (area, with bits 0 and 1) that the one fd attached is that area. Other
 * bits are reserved and rejected (channel.c, top, has the details). The handle never owns
 * the socket fd (Python's socket object does) and works on it non-blocking
 * (MSG_DONTWAIT). Errors besides those named:
 *   -EPIPE     the peer closed the connection at a frame boundary (sticky)
 *   -ENODATA   the peer closed it in the middle of a frame (sticky)
 *   -EFBIG     a header announced more than max_message (sticky)
 *   -EPROTO    unknown flag bits, a frame flagged with fds that did not come, or a
 *              hand-off area that is not a sealed fastipc memfd (sticky)
 *   -EBADMSG   a hand-off descriptor outside the area (sticky)
 *   -ENOBUFS   MSG_CTRUNC: a frame's fds did not fit max_fds; the ones that came
 *              were closed and the frame consumed (not sticky)
 *   or the errno of sendmsg/recvmsg (-ECONNRESET is reported as -EPIPE/-ENODATA).
 * A sticky error is returned by every later receive. */
typedef struct fi_chan fi_chan;

/* A handle for connected AF_UNIX SOCK_STREAM socket `fd` (the handle works on
 * its own dup of it, so the caller may close `fd` any time) with a receive buffer of rbuf_size bytes (>= 64), frames of at
 * most max_message payload bytes and at most max_fds fds per frame (1..253).
 * -EINVAL bad sizes, -ENOMEM. */
int fi_chan_new(int fd, size_t rbuf_size, uint32_t max_message, size_t max_fds, fi_chan **out);

/* Close the handle; any thread, any time, idempotent. Every later call returns
 * -EBADF (or 0/-1 where so noted); calls waiting in other threads return
 * -EBADF when they next wake (shut the socket down to wake them now). The
 * buffers, received fds nobody took, areas and the handle's dup of the
 * socket go once no call is inside. Returns how many calls are still inside
 * (0: all is freed already). */
int fi_chan_close(fi_chan *c);

/* Close (if open) and free the handle: when no thread can use the pointer any
 * more. NULL is allowed. */
void fi_chan_free(fi_chan *c);

/* Pin the area of the message fi_chan_recv_view lent (NULL if none): it stays
 * mapped, even after the channel is closed or the peer replaced it, until
 * the matching fi_area_unpin. */
fi_area *fi_chan_view_pin(fi_chan *c);
void fi_area_unpin(fi_area *a);

/* fi_chan_view_pin recorded in *pin (which must hold nothing; drop it with
 * fi_pin_drop): 0, -ENOENT if no view is lent, -EBADF closed handle. */
int fi_chan_view_pin_into(fi_chan *c, fi_pin *pin);

/* Receives that must wait first retry for spin_ns (default 0) before sleeping. */
void fi_chan_set_spin(fi_chan *c, int64_t spin_ns);

/* Send messages of min_len bytes up to area_size / 2 (bytes) through a
 * shared area of area_size bytes (a memfd made at the first such message
 * and passed to the peer with it) instead of through the socket; 0 turns
 * it off (the default). Only fi_chan_send and fi_chan_try_send use it, for
 * messages without fds. -EINVAL area_size not a multiple of 4096, under
 * 2 * min_len or over 1 GiB; -EBUSY another size once the area exists. */
int fi_chan_set_handoff(fi_chan *c, size_t min_len, size_t area_size);

/* Lend the handle a buffer for fi_chan_try_recv1; the caller keeps it alive. */
void fi_chan_set_scratch(fi_chan *c, char *buf, size_t cap);

/* 1 if a complete frame is buffered (a receive returns without a syscall), else 0. */
int fi_chan_pending(fi_chan *c);

/* Payload length (bytes) announced by the buffered header of the next frame,
 * or -EAGAIN if no whole header is buffered. Never blocks. */
int64_t fi_chan_next_len(fi_chan *c);

/* Payload bytes of the current frame already read into the buffer a receive
 * was given (a large frame read straight into its destination; 0 and up),
 * -1 if no frame is being read that way. */
int64_t fi_chan_rx_partial(fi_chan *c);

/* Bytes received but not yet delivered, plus 1 per fd set or partial frame
 * held and 1 for a mapped hand-off area: non-zero if anything received
 * lives in this handle (so the channel cannot move to another process). */
int64_t fi_chan_buffered(fi_chan *c);

/* If the partial frame is being read into `from` (NULL: into the handle's
 * own first-part buffer, see fi_chan_recv), copy what came so far to `to`
 * (room for the whole frame: fi_chan_next_len bytes) and continue it there;
 * return 1. Return 0 (and change nothing) if it is not. */
int fi_chan_rx_adopt(fi_chan *c, const char *from, char *to);

/* 1 if the partial frame is in the handle's own first-part buffer, else 0. */
int fi_chan_rx_owned(fi_chan *c);

/* Bytes of the frame being sent that already went out, and frames of the
 * current batch completely sent; fi_chan_tx_reset forgets both (call it
 * only between frames, i.e. when fi_chan_tx_partial is 0). */
int64_t fi_chan_tx_partial(fi_chan *c);
int64_t fi_chan_tx_frames(fi_chan *c);
void fi_chan_tx_reset(fi_chan *c);

/* Hand the fds that came with the last frame received with keep_fds to the
 * caller: up to cap go to out (the rest are closed); returns how many. */
int fi_chan_take_fds(fi_chan *c, int *out, size_t cap);
/* Every handle call returns -EBADF (or 0) when given NULL or a closed handle. */

/* ---- Non-blocking calls: safe with the GIL held. ---- */

/* Send one frame of n payload bytes (one sendmsg: header + buf). -EMSGSIZE
 * n > max_message (nothing sent), -EAGAIN
 * when the socket is full; if part of the frame went out, call a send
 * again with the same buffer to finish it (fi_chan_tx_partial > 0). */
int fi_chan_try_send(fi_chan *c, const void *buf, size_t n);

/* Receive the next frame into the buffer lent by fi_chan_set_scratch, closing
 * any fds it carried; return its length. -EAGAIN nothing complete yet,
 * -EMSGSIZE longer than the scratch buffer (it stays), -EINPROGRESS a frame
 * is partly read into another buffer, -EXDEV received fds wait to be closed:
 * receive with a call below that may wait (it closes them; close() can
 * block, so the try calls never call it). */
int64_t fi_chan_try_recv1(fi_chan *c);

/* fi_chan_recv and fi_chan_recv_batch with timeout 0, never closing an fd
 * (-EXDEV as above). */
int64_t fi_chan_try_recv(fi_chan *c, char *out, size_t cap, int keep_fds);
int64_t fi_chan_try_recv_batch(fi_chan *c, char *out, size_t cap, size_t max_count);

/* ---- Calls that wait up to timeout_ns (0: never) in ppoll; call without the GIL. ----
 * Besides the above they return -ETIMEDOUT at the deadline and -EINTR when
 * a signal arrived (the caller runs handlers and retries). */

/* Send one frame with nfds (<= 253) fds attached to its first byte. Resumes
 * a frame partly sent by the previous call (the fds went with it). */
int fi_chan_send(fi_chan *c, const void *buf, size_t n, const int *fds, size_t nfds,
                 int64_t timeout_ns);

/* Send every item of a marshal-format list or tuple of bytes (marshal.dumps(
 * list, 2)) as one frame each, many frames per sendmsg (up to IOV_MAX
 * iovecs); returns the item count once all went out. Resumes the batch the
 * previous call left unfinished (pass the same blob). -EINVAL not such a
 * list, -EMSGSIZE an item over max_message (both checked before anything
 * is sent). */
int64_t fi_chan_send_batch(fi_chan *c, const char *blob, size_t len, int64_t timeout_ns);

/* Receive the next frame into out[0:cap]; return its length. A frame longer
 * than 64 KiB (or half the receive buffer) is read straight into out. keep_fds: keep
 * the frame's fds for fi_chan_take_fds (else they are closed). -EMSGSIZE
 * longer than cap (it stays), -EINPROGRESS a frame is partly read into
 * another buffer (see fi_chan_rx_adopt).
 * out NULL, cap 0: the caller has no buffer yet for a long frame. One over
 * 1 MiB is read into a buffer the handle allocates, of 1/16 of its length,
 * and -ENOBUFS comes once that is full: adopt it (fi_chan_rx_adopt with
 * from NULL) into a buffer for the whole frame and go on there. So a header
 * announcing a huge frame costs memory only as its bytes arrive. Any other
 * frame gives -EMSGSIZE (a frame of 0 bytes: 0). */
int64_t fi_chan_recv(fi_chan *c, char *out, size_t cap, int keep_fds, int64_t timeout_ns);

/* Lend the next message in place if it came through the hand-off area: *ptr
 * gets its bytes (read-only: the peer's memory), the length is returned.
 * Its room stays taken, and later receives keep theirs, until
 * fi_chan_release_view. -ENOMSG the next message is not a hand-off (take it
 * with fi_chan_recv), -EBUSY a view is already lent. */
int64_t fi_chan_recv_view(fi_chan *c, const char **ptr, int64_t timeout_ns);

/* Let go of the lent message (and of any area the peer replaced meanwhile).
 * -EINVAL none is lent. */
int fi_chan_release_view(fi_chan *c);

/* Move up to max_count buffered frames into out[0:cap] as a marshal list of
 * bytes (marshal.loads reads it), reading the socket once if none is
 * complete; closes fds that came with them; returns the bytes written.
 * Stops before a frame with fds. -EMSGSIZE the next frame must be received
 * alone (too long for out or for the receive buffer), -EINPROGRESS as above. */
int64_t fi_chan_recv_batch(fi_chan *c, char *out, size_t cap, size_t max_count,
                           int64_t timeout_ns);
/* ---- Signals as messages (signals.c; the signal:// transport) ----
 * Kept apart from the ring and channel: Python has neither sigqueue(2) nor
 * signalfd(2). Both calls are quick and never block. */

/* sigqueue(2): send signal `signo` carrying the int `value` to process `pid`.
 * 0, or -ESRCH no such process, -EPERM not allowed to signal it, -EAGAIN its
 * queue of pending signals is full (RLIMIT_SIGPENDING), -EINVAL a bad signal. */
int fi_sigqueue(int pid, int signo, int value);

/* signalfd(2) for the n signals in signos[] (non-blocking, close-on-exec):
 * the new fd (the caller owns it), or -EINVAL a bad signal number, -EMFILE,
 * -ENFILE, -ENOMEM. Does not block the signals: the caller does that. */
int fi_signalfd(const int *signos, size_t n);
/* CDEF END */

#endif /* FASTIPC_H */
