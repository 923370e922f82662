/* The shared-memory ring: variable-length messages between processes.
 * One algorithm, in one file: the layout, the lock, the publish and the
 * waits all work on the same header words.
 *
 * Layout of the segment (/dev/shm/fastipc.NAME):
 *   [header: one page][data: D bytes]
 * The data area is mapped twice, back to back, so a record that runs off the
 * end continues at the start without being split: every record and every
 * zero-copy view is contiguous in this process's address space.
 *
 * A record is an 8-byte header (u32 payload length, u32 stride to the next
 * record) and the payload padded to 8 bytes; the last record of each publish
 * is padded on to a 64-byte boundary (see slot_size). `head` and `tail` are monotonic byte positions; the
 * bytes in [head, tail) are complete records, [tail, head + D) is free.
 *
 * Concurrency. Producers serialise on one process-shared lock, consumers on
 * another; a producer and a consumer never wait for each other except when
 * the ring is full or empty. The locks survive their holder's death, even by
 * SIGKILL (lock.h: the next locker sees the holder is gone and takes over).
 * Nothing needs repairing then, because every state change a holder makes
 * becomes visible in one atomic store made last (the tail after the payload
 * is written, the head after the payload is read): a dead producer's
 * half-written record lies beyond the tail and is overwritten, a dead
 * consumer's half-read record is still before the head and goes to the next
 * consumer. We chose this over robust pthread mutexes (glibc aborts or spins
 * on garbage mutex bytes) and file locks (a syscall per message).
 *
 * Waiting. A waiter spins for spin_ns, then announces itself in a `sleeping`
 * flag and sleeps on a futex word; the other side checks the flag after each
 * publish and only then pays for a wake-up. The flag and the index are both
 * accessed with sequentially consistent operations (Dekker): either the
 * waiter sees the new index or the publisher sees the flag.
 *
 * Hostile segments. Geometry is read once at open, checked against the file
 * size and kept in the private handle; every index and length read from
 * shared memory afterwards is checked against it before use, and a bad one
 * returns -EBADMSG. Known limit: a process that truncates the file under our
 * mapping makes our next access fault (SIGBUS).
 */
#define _GNU_SOURCE
#include "fastipc.h"
#include "lock.h"
#include "marshal.h"
#include "refs.h"
#include "sys.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#ifndef FASTIPC_VERSION
#define FASTIPC_VERSION "unknown"
#endif

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fastipc's record and batch formats assume a little-endian CPU"
#endif

#define FI_MAGIC 0x31304e5249435046ULL /* "FPCIRN01" read as little-endian */
/* 2: the tail word's top bit is the shutdown mark (TAIL_CLOSED).
 * 3: watcher counts in the wake line (the readiness doorbells, see ring_bell). */
#define FI_LAYOUT_VERSION 3u
#define FI_HEADER_MIN 4096u
#define FI_LINE 128 /* two x86 cache lines: the adjacent-line prefetcher pairs them */
#define FI_REC_HDR 8u
/* A record's stride (header, payload, padding to a line) must fit its u32. */
#define FI_MAX_CAPACITY (UINT32_MAX - 127u)
#define FI_SPIN_PAUSES 8 /* between looks at the other side while spinning */
/* Set in prod.tail by shutdown. A publish is a compare-and-swap from the
 * tail its producer read, so once the mark is in no producer can publish,
 * however long it held the lock (dead, stopped): a consumer that finds the
 * mark and an empty ring knows the ring is drained for good. */
#define TAIL_CLOSED (1ull << 63)


#define ALIGNED_LINE __attribute__((aligned(FI_LINE)))

struct fi_header {
    uint64_t magic; /* written last by the creator */
    uint64_t version;
    uint64_t header_size;
    uint64_t capacity;
    uint64_t data_size;
    struct {
        fi_lock lock;
        uint64_t tail;     /* bytes published, ever; | TAIL_CLOSED once shut down */
        uint64_t produced; /* messages published, ever */
    } ALIGNED_LINE prod;
    struct {
        fi_lock lock;
        uint64_t head;     /* bytes consumed, ever */
        uint64_t consumed; /* messages consumed, ever */
    } ALIGNED_LINE cons;
    struct {
        uint32_t cons_futex;    /* bumped to wake consumers */
        uint32_t cons_sleeping; /* a consumer is (about to be) asleep */
        uint32_t prod_futex;
        uint32_t prod_sleeping;
        uint32_t closed;        /* set once by shutdown */
        uint32_t cons_watchers; /* receivers watching the recv bell (fi_ring_watch) */
        uint32_t prod_watchers; /* senders watching the send bell */
    } ALIGNED_LINE wake;
};

enum fi_side { SIDE_NONE = 0, SIDE_PROD = 1, SIDE_CONS = 2 };

/* Lifetime of a handle (docs/architecture.md, "Handles and threads"):
 * fi_ring_close may come from any thread while others are inside calls or
 * hold views, so the mapping is reference-counted. `refs` is 1 for the open
 * handle, plus 1 for each thread inside a call that waits (enter/leave),
 * each pin (a view the caller still holds), and the side an open
 * reserve/peek holds; the mapping goes when it drops to 0. The struct
 * itself goes when both that happened and fi_ring_free was called (its
 * owner, Python's handle object, is gone): `life` counts the two. So a
 * stale pointer to a closed handle meets `closed`, never freed memory, and
 * a pin may outlive the handle's owner (a view's destructor holds only the
 * pin, see fi_pin_drop). Calls that never wait (marked "serial" in fastipc.h) do not
 * count themselves: the caller runs them and fi_ring_close one at a time
 * (Python: holding the GIL). */
struct fi_ring {
    struct fi_header *hdr;
    int closed;        /* fi_ring_close was called */
    uint32_t refs;     /* see above */
    uint32_t life;     /* 2: the mapping's and fi_ring_free's; the last frees the struct */
    char *data;        /* first of the two mappings of the data area */
    void *map_base;    /* the whole reservation: header + 2 * data */
    size_t map_len;
    uint64_t cap;      /* copied from the header at open and checked */
    uint64_t size;     /* D */
    int64_t spin_ns;
    uint64_t cached_head; /* producer's lower bound of head */
    uint64_t cached_tail; /* consumer's lower bound of tail */
    char *scratch;     /* lent by fi_ring_set_scratch */
    size_t scratch_cap;
    pthread_t scratch_owner; /* the one thread whose receives may use it */
    enum fi_side holding; /* side held by an open reserve/peek */
    uint64_t hold_gen;    /* counts the holds taken, for fi_hold_drop */
    uint64_t held_len;    /* the reserved length / the peeked record size */
    uint64_t held_pos;    /* where the reserved record starts */
    int bell[2];          /* the recv and send doorbell FIFOs (fi_ring_set_bells), or -1 */
    const uint32_t *forks; /* the fork counter of the module that mapped it (below) */
};

/* ---- small helpers ---------------------------------------------------- */

/* Bumped in every child fork() makes. A hold record notes it when made: in
 * a forked child the record's copy names the parent's hold, not to be let
 * go from here (fi_hold_drop). One relaxed load where asking getpid() would
 * be a syscall; the handle points at the counter of the module that mapped
 * it (this file is built into two modules, as broadcast.c). */
static uint32_t ring_forks;
static pthread_once_t ring_forks_once = PTHREAD_ONCE_INIT;
static void count_fork(void) { __atomic_add_fetch(&ring_forks, 1, __ATOMIC_RELAXED); }
static void watch_ring_forks(void) { pthread_atfork(NULL, NULL, count_fork); }

static inline uint64_t align8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }
static inline uint64_t rec_size(uint64_t n) { return FI_REC_HDR + align8(n); }
static inline uint64_t align_line(uint64_t pos) { return (pos + 63u) & ~(uint64_t)63u; }
/* Space a message published on its own takes: every publish ends on a
 * 64-byte boundary, so a producer never writes into the cache line a
 * consumer is reading (false sharing halved the single-message rate). */
static inline uint64_t slot_size(uint64_t n) { return align_line(FI_REC_HDR + n); }

static inline uint64_t ld_acq(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
/* The tail position without the shutdown mark. */
static inline uint64_t ld_tail(const struct fi_header *h, int order)
{
    return __atomic_load_n(&h->prod.tail, order) & ~TAIL_CLOSED;
}
static inline uint32_t ld32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }

static inline void wake(uint32_t *futex_word, uint32_t *sleeping)
{
    /* Plain load first: the common case (nobody asleep) stays read-only. */
    if (ld32(sleeping) && __atomic_exchange_n(sleeping, 0, __ATOMIC_SEQ_CST)) {
        __atomic_add_fetch(futex_word, 1, __ATOMIC_SEQ_CST);
        futex_wake_all(futex_word);
    }
}

/* The doorbells: a FIFO per side that readiness waiters (asyncio, selectors)
 * poll, rung with one byte only while the side's watcher count is non-zero,
 * so the hot path gains one load of a line it reads anyway and no syscall
 * when nobody watches. The count is read sequentially consistently after the
 * publishing store (the Dekker pair of fi_ring_watch's increment and the
 * watcher's re-check): either the watcher sees the new index or we see the
 * count. A full FIFO (EAGAIN) already holds a wake-up, and the fd is open
 * read-write, so a write never meets EPIPE. A count left high by a killed
 * watcher only costs these writes, never correctness. */
static inline void ring_bell(fi_ring *r, int i)
{
    if (r->bell[i] >= 0) {
        char b = 0;
        ssize_t w = write(r->bell[i], &b, 1);
        (void)w;
    }
}

static inline void wake_consumers(fi_ring *r)
{
    struct fi_header *h = r->hdr;
    wake(&h->wake.cons_futex, &h->wake.cons_sleeping);
    if (ld32(&h->wake.cons_watchers))
        ring_bell(r, 0);
}

static inline void wake_producers(fi_ring *r)
{
    struct fi_header *h = r->hdr;
    wake(&h->wake.prod_futex, &h->wake.prod_sleeping);
    if (ld32(&h->wake.prod_watchers))
        ring_bell(r, 1);
}

/* ---- locks ------------------------------------------------------------ */

static inline int lock_try(fi_lock *l) { return fi_lock_try(l); }
static inline int lock_wait(fi_ring *r, fi_lock *l, int64_t deadline) { return fi_lock_wait(l, deadline, r->spin_ns); }
static inline int unlock(fi_lock *l) { return fi_lock_release(l); }

/* ---- waiting ---------------------------------------------------------- */

static int is_closed(const struct fi_header *h) { return ld32(&h->wake.closed) != 0; }

/* Whether a waiter on `side` should stop waiting and retry under its lock.
 * Inconsistent indexes count as ready so that the locked path reports them. */
static int ready(fi_ring *r, enum fi_side side, uint64_t need)
{
    struct fi_header *h = r->hdr;
    uint64_t head = __atomic_load_n(&h->cons.head, __ATOMIC_SEQ_CST);
    uint64_t tail = ld_tail(h, __ATOMIC_SEQ_CST);
    if (is_closed(h) || r->closed || tail - head > r->size)
        return 1;
    if (side == SIDE_CONS)
        return tail != head;
    return r->size - (tail - head) >= need;
}

/* Busy-wait until `side` looks ready (1) or the clock passes `until` (0).
 * Each look reads the other side's cache line, which the other side must
 * then take back to write it: pausing between looks keeps that traffic from
 * slowing the very peer we wait for. */
static int spin_until(fi_ring *r, enum fi_side side, uint64_t need, int64_t until)
{
    for (unsigned i = 1;; i++) {
        if (ready(r, side, need))
            return 1;
        for (int k = 0; k < FI_SPIN_PAUSES; k++)
            cpu_relax();
        if ((i & 7) == 0 && mono_ns() >= until)
            return 0;
    }
}

static int wait_for(fi_ring *r, enum fi_side side, uint64_t need, int64_t deadline)
{
    struct fi_header *h = r->hdr;
    uint32_t *fut = side == SIDE_CONS ? &h->wake.cons_futex : &h->wake.prod_futex;
    uint32_t *slp = side == SIDE_CONS ? &h->wake.cons_sleeping : &h->wake.prod_sleeping;
    int64_t now = mono_ns(), spin_end = now + r->spin_ns;
    if (deadline >= 0 && deadline < spin_end)
        spin_end = deadline;
    if (spin_until(r, side, need, spin_end))
        return 0;
    now = mono_ns();
    for (;;) {
        if (deadline >= 0 && now >= deadline)
            return -ETIMEDOUT;
        uint32_t seen = ld32(fut);
        __atomic_exchange_n(slp, 1, __ATOMIC_SEQ_CST);
        if (ready(r, side, need))
            return 0;
        int rc = futex_wait(fut, seen, deadline < 0 ? -1 : deadline - now);
        if (rc == -EINTR)
            return rc;
        if (ready(r, side, need))
            return 0; /* also when this handle was closed: the caller's next step sees it */
        now = mono_ns();
    }
}

/* ---- producer side (call with the producer lock held) ------------------ */

/* Position of room for a record of `rec` bytes, or -EAGAIN / -EBADMSG. */
static int room_for(fi_ring *r, uint64_t tail, uint64_t rec)
{
    uint64_t used = tail - r->cached_head;
    if (used > r->size || r->size - used < rec) {
        r->cached_head = ld_acq(&r->hdr->cons.head);
        used = tail - r->cached_head;
        if (used > r->size)
            return -EBADMSG;
        /* Every publish ends on a line, so the tail stands on one. Off it
         * (corrupted), a record needs more than the slot_size() the waiting
         * step (ready) looks for: it would see room where this says full,
         * for ever. Checked only here, when full: never on the fast path. */
        if (r->size - used < rec)
            return tail % 64 ? -EBADMSG : -EAGAIN;
    }
    return 0;
}

static inline char *at(fi_ring *r, uint64_t pos) { return r->data + pos % r->size; }

/* A record header: the payload length and the stride to the next record
 * (the record's own size, plus the padding to a line when it ends a publish). */
static inline void put_record_header(char *p, uint32_t len, uint64_t stride)
{
    uint32_t hdr[2] = {len, (uint32_t)stride};
    memcpy(p, hdr, sizeof hdr);
}

/* Read and check the record header at `pos`, with `avail` committed bytes
 * from there: 0, or -EBADMSG if it cannot be a record we wrote. */
static int get_record_header(fi_ring *r, uint64_t pos, uint64_t avail, uint32_t *len, uint64_t *stride)
{
    uint32_t hdr[2];
    memcpy(hdr, at(r, pos), sizeof hdr);
    uint64_t rec = rec_size(hdr[0]);
    if (hdr[0] > r->cap || hdr[1] < rec || hdr[1] - rec > 56 || hdr[1] % 8 || hdr[1] > avail)
        return -EBADMSG;
    *len = hdr[0];
    *stride = hdr[1];
    return 0;
}

/* Make the records in [old_tail, tail) visible: 0, -EPIPE if the ring was
 * shut down meanwhile (nothing is published), -EBADMSG if the tail moved
 * under the producer lock (a corrupted or hostile segment). */
static int publish(fi_ring *r, uint64_t old_tail, uint64_t tail, uint64_t count)
{
    struct fi_header *h = r->hdr;
    uint64_t produced = h->prod.produced;
    __atomic_store_n(&h->prod.produced, produced + count, __ATOMIC_RELEASE);
    /* Sequentially consistent, so the check of the sleeping flag below
     * cannot be ordered before it (see wait_for). */
    uint64_t seen = old_tail;
    if (!__atomic_compare_exchange_n(&h->prod.tail, &seen, tail, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&h->prod.produced, produced, __ATOMIC_RELEASE);
        wake_consumers(r);
        return seen & TAIL_CLOSED ? -EPIPE : -EBADMSG;
    }
    wake_consumers(r);
    return 0;
}

static int send_locked(fi_ring *r, const void *buf, size_t n)
{
    struct fi_header *h = r->hdr;
    if (is_closed(h)) {
        wake_consumers(r);
        return -EPIPE;
    }
    uint64_t tail = ld_tail(h, __ATOMIC_RELAXED);
    uint64_t stride = align_line(tail + rec_size(n)) - tail;
    int rc = room_for(r, tail, stride);
    if (rc)
        return rc;
    char *p = at(r, tail);
    put_record_header(p, (uint32_t)n, stride);
    memcpy(p + FI_REC_HDR, buf, n);
    return publish(r, tail, tail + stride, 1);
}

static int64_t send_batch_locked(fi_ring *r, const char *buf, size_t len, size_t skip)
{
    struct fi_header *h = r->hdr;
    const char *p, *end = buf + len, *data;
    uint32_t n;
    int64_t count = batch_count(buf, len, &p);
    if (count < 0)
        return count;
    if ((uint64_t)count <= skip)
        return -EINVAL;
    /* Check every item before writing any, so a bad batch sends nothing. */
    const char *first = NULL;
    int too_large = 0;
    for (int64_t i = 0; i < count; i++) {
        if (i == (int64_t)skip)
            first = p;
        if (batch_item(&p, end, &data, &n))
            return -EINVAL;
        too_large |= n > r->cap;
    }
    if (too_large)
        return -EMSGSIZE;
    if (is_closed(h)) {
        wake_consumers(r);
        return -EPIPE;
    }
    uint64_t tail = ld_tail(h, __ATOMIC_RELAXED), pos = tail, last = tail;
    uint32_t last_len = 0;
    int64_t sent = 0;
    for (p = first; sent < count - (int64_t)skip; sent++) {
        const char *q = p;
        batch_item(&q, end, &data, &n);
        uint64_t rec = rec_size(n);
        /* Room for this record and the padding if it ends the publish. */
        int rc = room_for(r, tail, align_line(pos + rec) - tail);
        if (rc == -EBADMSG)
            return rc;
        if (rc)
            break;
        char *w = at(r, pos);
        put_record_header(w, n, rec);
        memcpy(w + FI_REC_HDR, data, n);
        last = pos;
        last_len = n;
        pos += rec;
        p = q;
    }
    if (sent == 0)
        return -EAGAIN;
    pos = align_line(pos);
    put_record_header(at(r, last), last_len, pos - last);
    int rc = publish(r, tail, pos, (uint64_t)sent);
    return rc ? rc : sent;
}

/* ---- consumer side (call with the consumer lock held) ------------------ */

/* An empty ring is "closed and drained" once the tail carries the shutdown
 * mark: no producer can publish after it (see TAIL_CLOSED), not even one
 * that is dead or stopped while holding the producer lock. Returns -EPIPE
 * (drained), -EAGAIN (nothing yet) or 0 (data arrived after all). */
static int drained(fi_ring *r)
{
    struct fi_header *h = r->hdr;
    uint64_t tail = ld_acq(&h->prod.tail);
    if (!(tail & TAIL_CLOSED))
        return -EAGAIN;
    r->cached_tail = tail & ~TAIL_CLOSED;
    return r->cached_tail == ld_acq(&h->cons.head) ? -EPIPE : 0;
}

/* The record at the head: its position and payload length, or -EAGAIN,
 * -EPIPE (shut down and drained), -EBADMSG. */
static int next_record(fi_ring *r, uint64_t *headp, uint32_t *lenp, uint64_t *stridep)
{
    struct fi_header *h = r->hdr;
    uint64_t head = ld_acq(&h->cons.head);
    /* cached_tail is a lower bound of tail; other consumers may have moved
     * head past it (the unsigned difference then wraps and is > size). */
    if (r->cached_tail - head > r->size || head == r->cached_tail)
        r->cached_tail = ld_tail(h, __ATOMIC_ACQUIRE);
    if (head == r->cached_tail) {
        int rc = drained(r);
        if (rc)
            return rc;
    }
    uint64_t avail = r->cached_tail - head;
    if (avail > r->size)
        return -EBADMSG;
    *headp = head;
    return get_record_header(r, head, avail, lenp, stridep);
}

static void consume(fi_ring *r, uint64_t head, uint64_t count)
{
    struct fi_header *h = r->hdr;
    __atomic_store_n(&h->cons.consumed, h->cons.consumed + count, __ATOMIC_RELEASE);
    __atomic_exchange_n(&h->cons.head, head, __ATOMIC_SEQ_CST);
    wake_producers(r);
}

static int64_t recv_locked(fi_ring *r, char *out, size_t cap)
{
    uint64_t head, stride;
    uint32_t len;
    int rc = next_record(r, &head, &len, &stride);
    if (rc)
        return rc;
    if (len > cap)
        return -EMSGSIZE;
    memcpy(out, at(r, head) + FI_REC_HDR, len);
    consume(r, head + stride, 1);
    return len;
}

static int64_t recv_batch_locked(fi_ring *r, char *out, size_t cap, size_t max_count)
{
    uint64_t head, pos, stride;
    uint32_t len, count = 0;
    int rc = next_record(r, &head, &len, &stride);
    if (rc)
        return rc;
    if (cap < 5 || (uint64_t)len + 5 > cap - 5)
        return -EMSGSIZE;
    char *w = out + 5;
    for (pos = head;;) {
        w = batch_put(w, at(r, pos) + FI_REC_HDR, len);
        pos += stride;
        if (++count == max_count || count == UINT32_MAX)
            break;
        if (pos == r->cached_tail)
            r->cached_tail = ld_tail(r->hdr, __ATOMIC_ACQUIRE);
        if (pos == r->cached_tail || r->cached_tail - pos > r->size)
            break;
        /* A bad record ends the batch; the next call reports it. */
        if (get_record_header(r, pos, r->cached_tail - pos, &len, &stride) ||
            (uint64_t)(out + cap - w) < (uint64_t)len + 5)
            break;
    }
    batch_close(out, count);
    consume(r, pos, count);
    return w - out;
}

/* ---- handle lifetime -------------------------------------------------- */

static void unmap(fi_ring *r)
{
    for (int i = 0; i < 2; i++) {
        if (r->bell[i] >= 0)
            close(r->bell[i]);
        r->bell[i] = -1;
    }
    munmap(r->map_base, r->map_len);
    r->hdr = NULL;
    r->data = NULL;
}

/* Drop one reference (see struct fi_ring); the last one takes the mapping. */
static void put_ref(fi_ring *r)
{
    if (ref_put(&r->refs)) {
        unmap(r);
        if (ref_put(&r->life))
            free(r);
    }
}

/* Count this thread in for a call that may wait: -EBADF once closed. A
 * reference is only ever taken while another is held (refs > 0), so the
 * mapping, once gone, never comes back into use. */
static int enter(fi_ring *r)
{
    if (!r || ref_get(&r->refs))
        return -EBADF;
    if (__atomic_load_n(&r->closed, __ATOMIC_SEQ_CST)) {
        put_ref(r);
        return -EBADF;
    }
    return 0;
}

/* For the serial calls: the handle is usable (not closed, so mapped). */
static inline int usable(const fi_ring *r) { return r && !__atomic_load_n(&r->closed, __ATOMIC_RELAXED); }

/* ---- public: lifetime ------------------------------------------------- */

const char *fi_version(void) { return FASTIPC_VERSION; }

static uint64_t header_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    return page > (long)FI_HEADER_MIN ? (uint64_t)page : FI_HEADER_MIN;
}

static uint64_t data_size_for(uint64_t capacity)
{
    uint64_t page = header_size();
    uint64_t need = slot_size(capacity);
    return (need + page - 1) / page * page;
}

uint64_t fi_ring_segment_size(uint64_t capacity) { return header_size() + data_size_for(capacity); }

static int map_segment(int fd, uint64_t hsize, uint64_t size, fi_ring **out)
{
    fi_ring *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    pthread_once(&ring_forks_once, watch_ring_forks);
    r->forks = &ring_forks;
    r->map_len = hsize + 2 * size;
    /* Reserve the whole range, then lay the file over it: header + data, and
     * the data once more right after, so records never need splitting. */
    char *base = mmap(NULL, r->map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    int err = 0;
    if (base == MAP_FAILED) {
        err = errno;
        goto fail;
    }
    if (mmap(base, hsize + size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED ||
        mmap(base + hsize + size, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
             (off_t)hsize) == MAP_FAILED) {
        err = errno;
        munmap(base, r->map_len);
        goto fail;
    }
    r->map_base = base;
    r->hdr = (struct fi_header *)base;
    r->data = base + hsize;
    r->size = size;
    r->spin_ns = 20000;
    r->refs = 1;
    r->life = 2;
    r->bell[0] = r->bell[1] = -1;
    *out = r;
    return 0;
fail:
    free(r);
    return -err;
}

int fi_ring_create(int fd, uint64_t capacity, fi_ring **out)
{
    _Static_assert(sizeof(struct fi_header) <= FI_HEADER_MIN, "header outgrew its page");
    struct stat st;
    uint64_t hsize = header_size(), size = data_size_for(capacity);
    if (capacity == 0 || capacity > FI_MAX_CAPACITY)
        return -EINVAL;
    if (fstat(fd, &st))
        return -errno;
    if ((uint64_t)st.st_size != hsize + size)
        return -EINVAL;
    fi_ring *r;
    int rc = map_segment(fd, hsize, size, &r);
    if (rc)
        return rc;
    struct fi_header *h = r->hdr;
    memset(h, 0, sizeof *h);
    h->version = FI_LAYOUT_VERSION;
    h->header_size = hsize;
    h->capacity = capacity;
    h->data_size = size;
    r->cap = capacity;
    __atomic_store_n(&h->magic, FI_MAGIC, __ATOMIC_RELEASE);
    *out = r;
    return 0;
}

int fi_ring_open(int fd, fi_ring **out)
{
    struct stat st;
    struct fi_header copy;
    uint64_t hsize = header_size();
    if (fstat(fd, &st))
        return -errno;
    if ((uint64_t)st.st_size < hsize)
        return st.st_size == 0 ? -EAGAIN : -EPROTO;
    errno = 0;
    if (pread(fd, &copy, sizeof copy, 0) != (ssize_t)sizeof copy)
        return errno ? -errno : -EPROTO;
    uint64_t magic = __atomic_load_n(&copy.magic, __ATOMIC_ACQUIRE);
    if (magic == 0)
        return -EAGAIN;
    if (magic != FI_MAGIC)
        return -EPROTO;
    if (copy.version != FI_LAYOUT_VERSION)
        return -EPROTONOSUPPORT;
    if (copy.header_size != hsize || copy.capacity == 0 || copy.capacity > FI_MAX_CAPACITY ||
        copy.data_size != data_size_for(copy.capacity) ||
        (uint64_t)st.st_size != hsize + copy.data_size)
        return -EBADMSG;
    fi_ring *r;
    int rc = map_segment(fd, hsize, copy.data_size, &r);
    if (rc)
        return rc;
    r->cap = copy.capacity;
    r->cached_head = r->cached_tail = ld_acq(&r->hdr->cons.head);
    *out = r;
    return 0;
}

void fi_ring_close(fi_ring *r)
{
    if (!r || __atomic_exchange_n(&r->closed, 1, __ATOMIC_SEQ_CST))
        return;
    /* Wake this handle's sleepers (a spurious wake-up for everyone else's):
     * they see `closed` in ready() and leave. The header is still mapped:
     * the handle's own reference is dropped only below. */
    struct fi_header *h = r->hdr;
    __atomic_add_fetch(&h->wake.cons_futex, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&h->wake.prod_futex, 1, __ATOMIC_SEQ_CST);
    futex_wake_all(&h->wake.cons_futex);
    futex_wake_all(&h->wake.prod_futex);
    put_ref(r);
}

void fi_ring_free(fi_ring *r)
{
    if (!r)
        return;
    fi_ring_close(r);
    /* Anything still counted (a pin, or a side held by a block its thread
     * never left) uses the struct later: the last of them frees it. */
    if (ref_put(&r->life))
        free(r);
}

int fi_ring_pin(fi_ring *r)
{
    /* -EBADF once the mapping is gone: never bring it back into use. */
    return r ? ref_get(&r->refs) : -EBADF;
}

void fi_ring_unpin(fi_ring *r)
{
    if (r)
        put_ref(r);
}

int fi_ring_pin_into(fi_ring *r, fi_pin *pin)
{
    if (!pin || pin->ring || pin->area)
        return -EINVAL;
    int rc = fi_ring_pin(r);
    if (rc == 0)
        pin->ring = r;
    return rc;
}

void fi_pin_drop(fi_pin *pin, const char *view)
{
    (void)view;
    if (!pin)
        return;
    fi_ring_unpin(__atomic_exchange_n(&pin->ring, NULL, __ATOMIC_SEQ_CST));
    fi_area_unpin(__atomic_exchange_n(&pin->area, NULL, __ATOMIC_SEQ_CST));
}

void fi_pin_release(fi_pin *pin) { fi_pin_drop(pin, NULL); }

uint64_t fi_ring_capacity(const fi_ring *r) { return r->cap; }
uint64_t fi_ring_data_size(const fi_ring *r) { return r->size; }
void fi_ring_set_scratch(fi_ring *r, char *buf, size_t cap)
{
    r->scratch = buf;
    r->scratch_cap = buf ? cap : 0;
    r->scratch_owner = pthread_self();
}

void fi_ring_set_spin(fi_ring *r, int64_t spin_ns) { r->spin_ns = spin_ns < 0 ? 0 : spin_ns; }

int64_t fi_ring_len(fi_ring *r)
{
    if (!usable(r))
        return -EBADF;
    struct fi_header *h = r->hdr;
    uint64_t consumed = __atomic_load_n(&h->cons.consumed, __ATOMIC_ACQUIRE);
    uint64_t produced = __atomic_load_n(&h->prod.produced, __ATOMIC_ACQUIRE);
    uint64_t n = produced - consumed;
    /* Read without locks, so a count a moment old; consumed is read first and
     * is only bumped after the matching produced, so n cannot go negative.
     * Known limit: a participant killed between bumping its counter and
     * publishing its index leaves the count off by that batch. */
    if (n > r->size / FI_REC_HDR)
        return -EBADMSG;
    return (int64_t)n;
}

int64_t fi_ring_room(fi_ring *r)
{
    if (!usable(r))
        return -EBADF;
    uint64_t head = ld_acq(&r->hdr->cons.head), tail = ld_tail(r->hdr, __ATOMIC_ACQUIRE);
    uint64_t used = tail - head;
    if (used > r->size)
        return -EBADMSG;
    /* A message published on its own takes its record rounded up to a line
     * (see slot_size), and tail sits on a line: count whole lines. */
    uint64_t room = (r->size - used) & ~(uint64_t)63u;
    if (room < FI_REC_HDR)
        return -ENOSPC;
    room -= FI_REC_HDR;
    return (int64_t)(room < r->cap ? room : r->cap);
}

int64_t fi_ring_next_len(fi_ring *r)
{
    if (!usable(r))
        return -EBADF;
    uint64_t head = ld_acq(&r->hdr->cons.head), tail = ld_tail(r->hdr, __ATOMIC_ACQUIRE);
    if (head == tail)
        return -EAGAIN;
    if (tail - head > r->size)
        return -EBADMSG;
    uint32_t len;
    memcpy(&len, at(r, head), 4);
    return len > r->cap ? -EBADMSG : (int64_t)len;
}

int fi_ring_is_shutdown(fi_ring *r) { return usable(r) && is_closed(r->hdr); }

int fi_ring_shutdown(fi_ring *r)
{
    if (!usable(r))
        return -EBADF;
    struct fi_header *h = r->hdr;
    /* The mark first: from here on no producer publishes (see TAIL_CLOSED). */
    __atomic_fetch_or(&h->prod.tail, TAIL_CLOSED, __ATOMIC_SEQ_CST);
    __atomic_store_n(&h->wake.closed, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&h->wake.cons_sleeping, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&h->wake.prod_sleeping, 0, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&h->wake.cons_futex, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&h->wake.prod_futex, 1, __ATOMIC_SEQ_CST);
    futex_wake_all(&h->wake.cons_futex);
    futex_wake_all(&h->wake.prod_futex);
    ring_bell(r, 0);
    ring_bell(r, 1);
    return 0;
}

void fi_ring_set_bells(fi_ring *r, int recv_fd, int send_fd)
{
    int fds[2] = {recv_fd, send_fd};
    for (int i = 0; i < 2; i++) {
        if (r->bell[i] >= 0)
            close(r->bell[i]);
        r->bell[i] = fds[i];
    }
}

int64_t fi_ring_watch(fi_ring *r, int side, int delta)
{
    if (!usable(r))
        return -EBADF;
    if (side != 0 && side != 1)
        return -EINVAL;
    uint32_t *w = side == 0 ? &r->hdr->wake.cons_watchers : &r->hdr->wake.prod_watchers;
    uint32_t old = __atomic_load_n(w, __ATOMIC_SEQ_CST), next;
    do {
        /* Never below 0 nor past the top: the count is shared with other,
         * possibly dead or hostile, processes. */
        if (delta < 0)
            next = old < (uint32_t)-delta ? 0 : old + (uint32_t)delta;
        else
            next = old > UINT32_MAX - (uint32_t)delta ? UINT32_MAX : old + (uint32_t)delta;
    } while (!__atomic_compare_exchange_n(w, &old, next, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    /* The watcher's re-check of the ring comes after this: order its loads
     * after the store above (a store-load pair needs a full fence). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return next;
}

int fi_ring_poll(fi_ring *r, int side, uint64_t need)
{
    if (!usable(r))
        return -EBADF;
    if (side != 0 && side != 1)
        return -EINVAL;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return ready(r, side == 0 ? SIDE_CONS : SIDE_PROD, side == 0 ? 0 : slot_size(need));
}

/* ---- public: non-blocking --------------------------------------------- */

int fi_ring_try_send(fi_ring *r, const void *buf, size_t n)
{
    if (!usable(r))
        return -EBADF;
    if (n > r->cap)
        return -EMSGSIZE;
    int rc = lock_try(&r->hdr->prod.lock);
    if (rc)
        return rc;
    rc = send_locked(r, buf, n);
    unlock(&r->hdr->prod.lock);
    return rc;
}

int64_t fi_ring_try_recv(fi_ring *r, char *out, size_t cap)
{
    if (!usable(r))
        return -EBADF;
    int rc = lock_try(&r->hdr->cons.lock);
    if (rc)
        return rc;
    int64_t n = recv_locked(r, out, cap);
    unlock(&r->hdr->cons.lock);
    return n;
}

int64_t fi_ring_try_recv1(fi_ring *r)
{
    if (!usable(r))
        return -EBADF;
    /* The caller slices the message out of the scratch buffer after this
     * returns: another thread's receive must not refill it in between. A
     * thread-local read costs nothing here; a lock in Python cost ~1,300
     * instructions a message. */
    if (!pthread_equal(r->scratch_owner, pthread_self()))
        return -ECHILD;
    return fi_ring_try_recv(r, r->scratch, r->scratch_cap);
}

int fi_ring_spin_send(fi_ring *r, const void *buf, size_t n, int64_t spin_ns)
{
    int rc = fi_ring_try_send(r, buf, n);
    if (rc == -EAGAIN && spin_until(r, SIDE_PROD, slot_size(n), mono_ns() + spin_ns))
        rc = fi_ring_try_send(r, buf, n);
    return rc;
}

int64_t fi_ring_spin_recv1(fi_ring *r, int64_t spin_ns)
{
    int64_t rc = fi_ring_try_recv1(r);
    if (rc == -EAGAIN && spin_until(r, SIDE_CONS, 0, mono_ns() + spin_ns))
        rc = fi_ring_try_recv1(r);
    return rc;
}

int64_t fi_ring_try_send_batch(fi_ring *r, const char *buf, size_t len, size_t skip)
{
    if (!usable(r))
        return -EBADF;
    int rc = lock_try(&r->hdr->prod.lock);
    if (rc)
        return rc;
    int64_t n = send_batch_locked(r, buf, len, skip);
    unlock(&r->hdr->prod.lock);
    return n;
}

int64_t fi_ring_try_recv_batch(fi_ring *r, char *out, size_t cap, size_t max_count)
{
    if (!usable(r))
        return -EBADF;
    if (max_count == 0)
        return -EINVAL;
    int rc = lock_try(&r->hdr->cons.lock);
    if (rc)
        return rc;
    int64_t n = recv_batch_locked(r, out, cap, max_count);
    unlock(&r->hdr->cons.lock);
    return n;
}

/* ---- public: blocking ------------------------------------------------- */

/* Wait for the other side; once shut down, a consumer polls gently (see
 * drained). Returns 0 to retry, -ETIMEDOUT, -EINTR, or -EBADF once the
 * handle was closed. */
static int closed_wait(fi_ring *r, enum fi_side side, uint64_t need, int64_t deadline)
{
    if (__atomic_load_n(&r->closed, __ATOMIC_RELAXED))
        return -EBADF;
    /* Also here, not only when asleep (as broadcast.c's side_wait): a side
     * that looks ready but whose locked step keeps saying "not yet" (a
     * corrupted segment) must still see its deadline. */
    if (deadline >= 0 && mono_ns() >= deadline)
        return -ETIMEDOUT;
    if (side == SIDE_CONS && is_closed(r->hdr)) {
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
        return 0;
    }
    int rc = wait_for(r, side, need, deadline);
    if (rc == 0 && __atomic_load_n(&r->closed, __ATOMIC_RELAXED))
        return -EBADF;
    return rc;
}

/* Retry `op` under `side`'s lock until it stops saying -EAGAIN. Between
 * tries the lock is dropped and we wait for the other side. */
#define BLOCKING(r, side, need, timeout_ns, op)                                       \
    do {                                                                          \
        fi_lock *m_ = (side) == SIDE_PROD ? &(r)->hdr->prod.lock : &(r)->hdr->cons.lock; \
        int64_t deadline_ = deadline_of(timeout_ns);                              \
        for (;;) {                                                                \
            int64_t rc_ = lock_wait((r), m_, deadline_);                          \
            if (rc_)                                                              \
                return rc_;                                                       \
            rc_ = (op);                                                           \
            unlock(m_);                                                           \
            if (rc_ != -EAGAIN)                                                   \
                return rc_;                                                       \
            rc_ = closed_wait((r), (side), (need), deadline_);                    \
            if (rc_)                                                              \
                return rc_;                                                       \
        }                                                                         \
    } while (0)

static int send_wait(fi_ring *r, const void *buf, size_t n, int64_t timeout_ns)
{
    BLOCKING(r, SIDE_PROD, slot_size(n), timeout_ns, send_locked(r, buf, n));
}

int fi_ring_send(fi_ring *r, const void *buf, size_t n, int64_t timeout_ns)
{
    COUNTED_CALL(r, enter, put_ref, -EBADF,
                 n > r->cap ? -EMSGSIZE : send_wait(r, buf, n, timeout_ns));
}

static int64_t recv_wait(fi_ring *r, char *out, size_t cap, int64_t timeout_ns)
{
    BLOCKING(r, SIDE_CONS, 0, timeout_ns, recv_locked(r, out, cap));
}

int64_t fi_ring_recv(fi_ring *r, char *out, size_t cap, int64_t timeout_ns)
{
    COUNTED_CALL(r, enter, put_ref, -EBADF, recv_wait(r, out, cap, timeout_ns));
}

static int64_t send_batch_wait(fi_ring *r, const char *buf, size_t len, size_t skip, int64_t timeout_ns)
{
    /* Wait for room for the next item only: any progress is returned. */
    const char *p, *data;
    uint32_t n = 0;
    int64_t count = batch_count(buf, len, &p);
    if (count < 0)
        return count;
    for (size_t i = 0; i <= skip && (int64_t)i < count; i++)
        if (batch_item(&p, buf + len, &data, &n))
            return -EINVAL;
    BLOCKING(r, SIDE_PROD, slot_size(n), timeout_ns, send_batch_locked(r, buf, len, skip));
}

int64_t fi_ring_send_batch(fi_ring *r, const char *buf, size_t len, size_t skip, int64_t timeout_ns)
{
    COUNTED_CALL(r, enter, put_ref, -EBADF, send_batch_wait(r, buf, len, skip, timeout_ns));
}

static int64_t recv_batch_wait(fi_ring *r, char *out, size_t cap, size_t max_count, int64_t timeout_ns)
{
    BLOCKING(r, SIDE_CONS, 0, timeout_ns, recv_batch_locked(r, out, cap, max_count));
}

int64_t fi_ring_recv_batch(fi_ring *r, char *out, size_t cap, size_t max_count, int64_t timeout_ns)
{
    if (max_count == 0)
        return -EINVAL;
    COUNTED_CALL(r, enter, put_ref, -EBADF, recv_batch_wait(r, out, cap, max_count, timeout_ns));
}

/* Hold `side` for an open reserve/peek: the side's lock stays taken, and
 * the mapping stays (one reference) until the side is let go. */
static void hold(fi_ring *r, enum fi_side side, fi_hold *rec)
{
    __atomic_add_fetch(&r->refs, 1, __ATOMIC_SEQ_CST);
    uint64_t gen = __atomic_load_n(&r->hold_gen, __ATOMIC_SEQ_CST); /* set by claim */
    __atomic_store_n(&r->holding, side, __ATOMIC_SEQ_CST);
    if (rec) {
        /* The record keeps the struct (a pin) until fi_hold_drop. */
        __atomic_add_fetch(&r->refs, 1, __ATOMIC_SEQ_CST);
        rec->gen = gen;
        rec->owner = fi_lock_self();
        rec->forks = __atomic_load_n(r->forks, __ATOMIC_RELAXED);
        __atomic_store_n(&rec->ring, r, __ATOMIC_SEQ_CST);
    }
}

/* Let go of the held side; -EPERM (and nothing changes) if this thread is
 * not the one holding it. */
static int let_go(fi_ring *r, fi_lock *l)
{
    if (fi_lock_held(l))
        return -EPERM;
    /* `holding` first: once the lock is free another thread of this handle
     * may take it and set `holding` for itself. */
    __atomic_store_n(&r->holding, SIDE_NONE, __ATOMIC_SEQ_CST);
    unlock(l);
    put_ref(r);
    return 0;
}

static int64_t reserve_locked(fi_ring *r, size_t n, char **ptr, fi_hold *rec)
{
    struct fi_header *h = r->hdr;
    if (is_closed(h)) {
        wake_consumers(r);
        return -EPIPE;
    }
    uint64_t tail = ld_tail(h, __ATOMIC_RELAXED);
    int rc = room_for(r, tail, align_line(tail + rec_size(n)) - tail);
    if (rc)
        return rc;
    hold(r, SIDE_PROD, rec);
    r->held_len = n;
    r->held_pos = tail;
    *ptr = at(r, tail) + FI_REC_HDR;
    return 1; /* not 0: keeps the lock (see fi_ring_reserve) */
}

/* Claim the handle's one hold for `side` before waiting for its lock: a
 * second block on the handle (this thread's, nested, or another thread's,
 * even on the other side) gets -EDEADLK instead of sharing held_pos/len.
 * Every failure after a claim gives it back (unclaim). */
static int claim(fi_ring *r, enum fi_side side)
{
    enum fi_side none = SIDE_NONE;
    if (!__atomic_compare_exchange_n(&r->holding, &none, side, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST))
        return -EDEADLK;
    /* A new generation from the claim on, before the lock is taken: a record
     * of an earlier hold whose destructor runs late (in another thread)
     * never mistakes this one, or its lock, for its own. */
    __atomic_add_fetch(&r->hold_gen, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static void unclaim(fi_ring *r) { __atomic_store_n(&r->holding, SIDE_NONE, __ATOMIC_SEQ_CST); }

static int reserve_loop(fi_ring *r, size_t n, int64_t timeout_ns, char **ptr, fi_hold *rec);

static int reserve_wait(fi_ring *r, size_t n, int64_t timeout_ns, char **ptr, fi_hold *rec)
{
    if (n > r->cap)
        return -EMSGSIZE;
    if (claim(r, SIDE_PROD))
        return -EDEADLK;
    int rc = reserve_loop(r, n, timeout_ns, ptr, rec);
    if (rc)
        unclaim(r);
    return rc;
}

static int reserve_loop(fi_ring *r, size_t n, int64_t timeout_ns, char **ptr, fi_hold *rec)
{
    fi_lock *m = &r->hdr->prod.lock;
    int64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        int rc = lock_wait(r, m, deadline);
        if (rc)
            return rc;
        rc = (int)reserve_locked(r, n, ptr, rec);
        if (rc == 1)
            return 0; /* the producer lock stays held until commit/abort */
        unlock(m);
        if (rc != -EAGAIN)
            return rc;
        rc = closed_wait(r, SIDE_PROD, slot_size(n), deadline);
        if (rc)
            return rc;
    }
}

int fi_ring_reserve(fi_ring *r, size_t n, int64_t timeout_ns, char **ptr, fi_hold *hold)
{
    if (hold && hold->ring)
        return -EINVAL;
    COUNTED_CALL(r, enter, put_ref, -EBADF, reserve_wait(r, n, timeout_ns, ptr, hold));
}

int fi_ring_commit(fi_ring *r)
{
    if (!usable(r))
        return -EBADF;
    if (r->holding != SIDE_PROD)
        return -EINVAL;
    struct fi_header *h = r->hdr;
    if (fi_lock_held(&h->prod.lock))
        return -EPERM; /* another thread's reservation: not ours to publish */
    int rc = 0;
    if (is_closed(h)) {
        rc = -EPIPE;
        wake_consumers(r);
    } else {
        uint64_t end = align_line(r->held_pos + rec_size(r->held_len));
        put_record_header(at(r, r->held_pos), (uint32_t)r->held_len, end - r->held_pos);
        rc = publish(r, r->held_pos, end, 1);
    }
    int released = let_go(r, &h->prod.lock);
    return released ? released : rc;
}

int fi_ring_abort(fi_ring *r)
{
    if (!r)
        return -EBADF;
    if (r->holding != SIDE_PROD)
        return -EINVAL;
    return let_go(r, &r->hdr->prod.lock);
}

static int64_t peek_locked(fi_ring *r, char **ptr, fi_hold *rec)
{
    uint64_t head, stride;
    uint32_t len;
    int rc = next_record(r, &head, &len, &stride);
    if (rc)
        return rc;
    hold(r, SIDE_CONS, rec);
    r->held_pos = head;
    r->held_len = stride;
    *ptr = at(r, head) + FI_REC_HDR;
    return len;
}

static int64_t peek_loop(fi_ring *r, int64_t timeout_ns, char **ptr, fi_hold *rec);

static int64_t peek_wait(fi_ring *r, int64_t timeout_ns, char **ptr, fi_hold *rec)
{
    if (claim(r, SIDE_CONS))
        return -EDEADLK;
    int64_t rc = peek_loop(r, timeout_ns, ptr, rec);
    if (rc < 0)
        unclaim(r);
    return rc;
}

static int64_t peek_loop(fi_ring *r, int64_t timeout_ns, char **ptr, fi_hold *rec)
{
    fi_lock *m = &r->hdr->cons.lock;
    int64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        int64_t rc = lock_wait(r, m, deadline);
        if (rc)
            return rc;
        rc = peek_locked(r, ptr, rec);
        if (rc >= 0)
            return rc; /* the consumer lock stays held until release */
        unlock(m);
        if (rc != -EAGAIN)
            return rc;
        rc = closed_wait(r, SIDE_CONS, 0, deadline);
        if (rc)
            return rc;
    }
}

int64_t fi_ring_peek(fi_ring *r, int64_t timeout_ns, char **ptr, fi_hold *hold)
{
    if (hold && hold->ring)
        return -EINVAL;
    COUNTED_CALL(r, enter, put_ref, -EBADF, peek_wait(r, timeout_ns, ptr, hold));
}

int fi_ring_release(fi_ring *r)
{
    if (!usable(r))
        return -EBADF;
    if (r->holding != SIDE_CONS)
        return -EINVAL;
    if (fi_lock_held(&r->hdr->cons.lock) != 0)
        return -EPERM; /* another thread's view: not ours to consume */
    consume(r, r->held_pos + r->held_len, 1);
    return let_go(r, &r->hdr->cons.lock);
}

int fi_ring_unhold(fi_ring *r)
{
    if (!r)
        return -EBADF;
    enum fi_side side = __atomic_load_n(&r->holding, __ATOMIC_SEQ_CST);
    if (side == SIDE_NONE)
        return 0;
    return let_go(r, side == SIDE_PROD ? &r->hdr->prod.lock : &r->hdr->cons.lock);
}

void fi_hold_drop(fi_hold *hold)
{
    fi_ring *r = hold ? __atomic_exchange_n(&hold->ring, NULL, __ATOMIC_SEQ_CST) : NULL;
    if (!r)
        return;
    /* Still the hold this record was made for (no block since let it go):
     * let go of it. The mapping is there: the record's pin keeps it. */
    enum fi_side side = __atomic_load_n(&r->holding, __ATOMIC_SEQ_CST);
    if (side == SIDE_NONE || __atomic_load_n(&r->hold_gen, __ATOMIC_SEQ_CST) != hold->gen) {
        put_ref(r);
        return;
    }
    fi_lock *l = side == SIDE_PROD ? &r->hdr->prod.lock : &r->hdr->cons.lock;
    if (hold->forks != __atomic_load_n(r->forks, __ATOMIC_RELAXED)) {
        /* Made before a fork() this process is a child of: the hold is the
         * parent's, whose block lives on there (letting its lock go would
         * let another participant in while the parent's view is open). Drop
         * only this copy's record of it: its reference and `holding`. */
        __atomic_store_n(&r->holding, SIDE_NONE, __ATOMIC_SEQ_CST);
        put_ref(r);
    } else if (fi_lock_held(l) == 0) {
        let_go(r, l);
    } else if (fi_lock_held_by(l, hold->owner) == 0) {
        /* The record died in another thread (a generator finalised there):
         * its block is gone, so its holder will never release; release for
         * it. */
        __atomic_store_n(&r->holding, SIDE_NONE, __ATOMIC_SEQ_CST);
        if (fi_lock_release_from(l, hold->owner) == 0)
            put_ref(r);
    }
    put_ref(r);
}
