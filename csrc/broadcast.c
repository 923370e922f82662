/* The broadcast ring: every subscriber sees every message (publish/subscribe).
 *
 * Layout of the segment (/dev/shm/fastipc.NAME):
 *   [header: one page][subscriber slots: S * 128 bytes, to a page][data: D bytes]
 * As in ring.c the data area is mapped twice, back to back, so every record
 * and every zero-copy view is contiguous in this process's address space.
 *
 * A record is a 16-byte header (u32 payload length, u32 stride to the next
 * record, u64 sequence number: messages published before it) and the
 * payload padded to 8 bytes; the last record of each publish is padded on to
 * a 64-byte boundary. Positions are monotonic byte counts: the records in
 * [head, tail) are kept; publishers append at tail and, to make room, move
 * head past the oldest records (`overwrite`) or wait until every live
 * subscriber's cursor is past them (`block`).
 *
 * Publishers serialise on a lock in the segment that survives its holder's
 * death (lock.h); subscribers take no shared lock at all. Each subscriber has
 * a slot: its owner (pid and start time, as lock.c identifies a lock holder),
 * its cursor (position and sequence number) and the position its open view
 * pins. A slot whose process is dead is reclaimed (by `subscribe` when all
 * are taken, by a publisher its cursor or pin holds back: asked at most
 * every ~2 ms per handle), so a dead subscriber never stalls publishers for
 * good, whatever timeout they use.
 *
 * Overwrite without torn reads (a seqlock over positions). Before writing
 * bytes that end at position E, a publisher stores `reserved` = E (what may
 * be overwritten from now on: everything before E - D). A subscriber copies
 * the record at its cursor P, then re-reads `reserved`: the copy is good iff
 * reserved <= P + D, i.e. no publisher had started writing over it. When it
 * was overrun it jumps to `head` (the oldest record kept, stored before
 * `reserved`) and, when it next reads a record there, reports how many it
 * missed (that record's sequence number minus its own, -EOVERFLOW) without
 * consuming it: so it never returns a torn, skipped-without-notice or
 * repeated message. Under `block` a publisher that must move head moves it
 * as far as the slowest live cursor or pin (its cached lower bound of them)
 * allows, since every subscriber has read what it passes, and announces
 * `reserved` = head + D: what head already says may go. That is never less
 * than the write (a real overrun is still caught), and every live cursor
 * is at or past head (none sees an overrun that did not happen; one whose
 * slot was taken for a dead process's, lock.h's limits, is behind head and
 * resumes there with Lagged). head and `reserved` then change about once a
 * lap, not once a message, and `reserved`'s line stays in the subscribers'
 * caches.
 *
 * Views. A subscriber's open view pins its record: the slot's `pinned`
 * word, and a count `pins` so publishers scan the slots only when some view
 * is open. Publisher and subscriber form a Dekker pair (publisher: store
 * `reserved`, load `pins`/`pinned`; subscriber: store `pinned`, load
 * `reserved`, all sequentially consistent): either the publisher sees the pin
 * and waits for it (never writing over it), or the subscriber sees the
 * reservation and reports the overrun instead of lending the bytes. Under
 * `overwrite`, publishers thus wait for open views only, never for cursors.
 *
 * Waiting as in ring.c: spin, then announce oneself in a `sleeping` flag and
 * sleep on a futex word that the other side bumps only when the flag is set
 * (no syscall on the publish path while nobody sleeps). Publishers sleep in
 * naps of at most 2 ms while they wait for subscribers, to check the slowest
 * one's owner.
 *
 * Hostile segments: geometry is read once at open, checked against the file
 * size and kept in the private handle; every position, length and slot value
 * read from shared memory afterwards is checked before use (-EBADMSG).
 * Known limit (as ring.c): truncating the file under a mapping faults.
 */
#define _GNU_SOURCE
#include "fastipc.h"
#include "lock.h"
#include "marshal.h"
#include "refs.h"
#include "sys.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define BC_MAGIC 0x3130434249435046ULL /* "FPCIBC01" read as little-endian */
/* 2: `tail` and `reserved` on a line of their own (see struct bc_header). */
#define BC_LAYOUT_VERSION 2u
#define BC_PAGE_MIN 4096u
#define BC_LINE 128
#define BC_REC_HDR 16u
#define BC_SLOT_SIZE 128u
#define BC_MAX_SLOTS 4096u
#define BC_MAX_CAPACITY (UINT32_MAX - 255u)
#define BC_SPIN_PAUSES 8
/* How long the slowest subscriber must look stalled before a waiting
 * publisher asks /proc whether its process still runs (as lock.c). */
#define BC_LIVENESS_NS 2000000
#define TAIL_CLOSED (1ull << 63)
/* Jumps to the oldest record a subscriber tries before reporting "nothing
 * yet" (publishers overrunning it faster than it can look). */
#define BC_LAG_TRIES 64

#define ALIGNED_LINE __attribute__((aligned(BC_LINE)))

struct bc_header {
    uint64_t magic; /* written last by the creator */
    uint64_t version;
    uint64_t header_size; /* the page of this struct plus the slot pages */
    uint64_t capacity;
    uint64_t data_size;
    uint32_t max_subscribers;
    uint32_t policy; /* 0 overwrite, 1 block */
    /* Publishers' own line: subscribers read none of it on their path. */
    struct {
        fi_lock lock;
        uint64_t seq;      /* messages published, ever */
        uint64_t head;     /* oldest record kept */
        uint64_t head_seq; /* its sequence number (a snapshot for len) */
    } ALIGNED_LINE prod;
    /* What subscribers read for every message, away from what publishers
     * write several times a message: on one line, a subscriber spinning on
     * `tail` took the line back between a publisher's stores (a transfer
     * each). Publishers store `tail` once a message, `reserved` (under
     * `block`) about once a lap. */
    struct {
        uint64_t tail;     /* bytes published, ever; | TAIL_CLOSED once shut down */
        uint64_t reserved; /* end of what publishers started writing (see top) */
    } ALIGNED_LINE pub;
    struct {
        uint32_t sub_futex;    /* bumped to wake subscribers */
        uint32_t sub_sleeping; /* a subscriber is (about to be) asleep */
        uint32_t pub_futex;    /* bumped to wake publishers */
        uint32_t pub_sleeping;
        uint32_t closed;   /* set once by shutdown */
        uint32_t pins;     /* open views (slots whose pinned != 0), maybe high */
        uint32_t watchers; /* all slots' watchers (maybe high: a dead watcher's) */
    } ALIGNED_LINE wake;
};

struct bc_slot {
    uint64_t owner;  /* fi_proc_self() of the subscriber's process; 0 free */
    uint64_t pos;    /* cursor: next record to read */
    uint64_t seq;    /* sequence number expected there */
    uint64_t pinned; /* position + 1 of the record an open view lends; 0 none */
    uint32_t watchers; /* readiness watchers of this slot's doorbell */
    uint32_t pad0;
    uint64_t missed; /* messages this subscriber lost to overwrite (for inspection) */
    char pad[BC_SLOT_SIZE - 48];
};

enum bc_hold { HOLD_NONE = 0, HOLD_PUB = 1, HOLD_SUB = 2 };

/* Lifetime as fi_ring (ring.c, struct fi_ring), with one more step: refs
 * counts the open handle, calls inside that may wait and a held side (what
 * uses the subscriber slot); maps counts refs as one, plus each pin (a
 * view's export, which keeps the bytes mapped but uses no slot); life the
 * mapping and fi_bc_free. So a closed subscriber gives its slot back when
 * no call is inside and no block open, even while an export of a view
 * lives on (a block publisher would otherwise wait for it). */
/* The loss the last -EOVERFLOW reported to one thread: a thread sharing a
 * subscriber asks for its count after the call returns, by which time
 * another thread's overrun may have come (b->lagged is the last one). */
#define BC_LAG_THREADS 8
struct bc_lag {
    uint64_t thread; /* pthread_self() of the thread told; 0: free or being rewritten */
    uint64_t count;
    uint64_t stamp; /* when written: the oldest entry goes first */
};

struct fi_bcast {
    struct bc_header *hdr;
    struct bc_slot *slots;
    int closed;
    uint32_t refs;
    uint32_t maps;
    uint32_t life;
    char *data;
    void *map_base;
    size_t map_len;
    uint64_t cap;
    uint64_t size; /* D */
    uint32_t nslots;
    uint32_t policy;
    int64_t spin_ns;
    uint64_t cached_min; /* publisher: lower bound of the slowest live cursor */
    uint32_t fork_gen;   /* *forks when mapped: another value, a copy made by fork() */
    const uint32_t *forks; /* the fork counter of the module that mapped it (below) */
    int64_t checked_ns;  /* publisher: when make_room last asked /proc about a blocker */
    /* subscriber */
    int32_t slot; /* -1: not subscribed */
    uint64_t owner;
    uint64_t pos, seq;
    int resync;         /* jumped to head after an overrun: report on next read */
    uint64_t lagged;    /* messages the last -EOVERFLOW reported (any thread's) */
    /* ... and per thread, for threads sharing the handle (note_lag) */
    struct bc_lag lags[BC_LAG_THREADS];
    uint64_t lag_stamp;
    uint64_t missed;    /* all messages lost so far */
    fi_lock sub_lock;   /* private: one receive at a time on this handle */
    char *scratch;
    size_t scratch_cap;
    pthread_t scratch_owner; /* the one thread whose receives may use it */
    /* an open reserve (HOLD_PUB) or recv view (HOLD_SUB) */
    enum bc_hold holding;
    uint64_t hold_gen;
    uint64_t held_len, held_pos, held_stride;
    /* Subscriber doorbells (fi_bc_set_bells): the FIFO of slot i is
     * bell_prefix + i, opened by the first publish that must ring it.
     * bells and its entries are set by CAS (bell_table, ring_slot_bell):
     * threads of one handle may ring at once. */
    char *bell_prefix;
    int *bells;
    uint32_t bell_uid;
};

/* ---- small helpers ---------------------------------------------------- */

/* Bumped in every child fork() makes: a subscriber handle whose fork_gen
 * differs is a forked copy, and its slot (cursor, pin) is the subscribing
 * process's. The copy refuses subscriber calls (-ECHILD) and never writes
 * the slot. One relaxed load, where asking getpid() would be a syscall.
 * The handle points at the counter of the module that mapped it: this file
 * is built into two modules (GIL-releasing and not), each with its own. */
static uint32_t fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void after_fork_child(void) { __atomic_add_fetch(&fork_gen, 1, __ATOMIC_RELAXED); }
static void watch_forks(void) { pthread_atfork(NULL, NULL, after_fork_child); }
static inline int forked(const fi_bcast *b)
{
    return b->fork_gen != __atomic_load_n(b->forks, __ATOMIC_RELAXED);
}

static inline uint64_t align8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }
static inline uint64_t rec_size(uint64_t n) { return BC_REC_HDR + align8(n); }
static inline uint64_t align_line(uint64_t pos) { return (pos + 63u) & ~(uint64_t)63u; }
static inline uint64_t slot_size(uint64_t n) { return align_line(BC_REC_HDR + n); }
static inline uint64_t ld_acq(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t ld_sc(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline uint32_t ld32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline char *at(fi_bcast *b, uint64_t pos) { return b->data + pos % b->size; }
static inline uint64_t ld_tail(const struct bc_header *h, int order)
{
    return __atomic_load_n(&h->pub.tail, order) & ~TAIL_CLOSED;
}
static inline int is_shut(const struct bc_header *h) { return ld32(&h->wake.closed) != 0; }
static inline int usable(const fi_bcast *b) { return b && !__atomic_load_n(&b->closed, __ATOMIC_RELAXED); }

static inline void wake(uint32_t *futex_word, uint32_t *sleeping)
{
    /* Plain load first: the common case (nobody asleep) stays read-only. */
    if (ld32(sleeping) && __atomic_exchange_n(sleeping, 0, __ATOMIC_SEQ_CST)) {
        __atomic_add_fetch(futex_word, 1, __ATOMIC_SEQ_CST);
        futex_wake_all(futex_word);
    }
}

/* The handle's table of bell fds (-1: not open yet), made by the first ring.
 * Two threads may ring at once (shutdown(), which keeps the GIL, and a
 * publish that released it): the table is published by one CAS, filled
 * before it, so no thread reads an fd from an unfilled table; the loser
 * frees its own. NULL: no memory (the ring is skipped, a bell is a hint). */
static int *bell_table(fi_bcast *b)
{
    int *t = __atomic_load_n(&b->bells, __ATOMIC_ACQUIRE);
    if (t)
        return t;
    int *fresh = malloc(sizeof(int) * b->nslots);
    if (!fresh)
        return NULL;
    for (uint32_t k = 0; k < b->nslots; k++)
        fresh[k] = -1;
    if (__atomic_compare_exchange_n(&b->bells, &t, fresh, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return fresh;
    free(fresh);
    return t;
}

/* Write one byte to slot i's doorbell FIFO, opening it the first time
 * (never following a symlink; only a FIFO owned by us, root or the
 * segment's owner). A missing or unusable one is skipped: a bell is a hint,
 * and a full FIFO (EAGAIN) already holds a wake-up. Of two threads opening
 * the same bell at once, one CAS keeps one fd and the other closes its own
 * (the table is read without a lock: fds are closed only by unmap(), when
 * no call is inside). */
static void ring_slot_bell(fi_bcast *b, uint32_t i)
{
    if (!b->bell_prefix)
        return;
    int *t = bell_table(b);
    if (!t)
        return;
    int fd = __atomic_load_n(&t[i], __ATOMIC_ACQUIRE);
    if (fd < 0) {
        char path[512];
        struct stat st;
        if (snprintf(path, sizeof path, "%s%u", b->bell_prefix, i) >= (int)sizeof path)
            return;
        int mine = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
        if (mine < 0)
            return;
        if (fstat(mine, &st) || !S_ISFIFO(st.st_mode) ||
            (st.st_uid != geteuid() && st.st_uid != 0 && st.st_uid != b->bell_uid)) {
            close(mine);
            return;
        }
        if (__atomic_compare_exchange_n(&t[i], &fd, mine, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            fd = mine;
        else
            close(mine); /* another thread's open won: fd is now its fd */
    }
    char c = 0;
    ssize_t w = write(fd, &c, 1);
    (void)w;
}

/* Ring the doorbells of the slots being watched (readiness: asyncio,
 * selectors). The global count is read after the publishing store
 * (sequentially consistent, the Dekker pair of fi_bc_watch and the
 * watcher's re-check), so the hot path pays one load and no syscall while
 * nobody watches. */
static void ring_bells(fi_bcast *b)
{
    if (!ld32(&b->hdr->wake.watchers))
        return;
    for (uint32_t i = 0; i < b->nslots; i++) {
        struct bc_slot *s = &b->slots[i];
        if (ld32(&s->watchers) && __atomic_load_n(&s->owner, __ATOMIC_RELAXED))
            ring_slot_bell(b, i);
    }
}

static inline void wake_subscribers(fi_bcast *b)
{
    wake(&b->hdr->wake.sub_futex, &b->hdr->wake.sub_sleeping);
    ring_bells(b);
}

static inline void wake_publishers(fi_bcast *b) { wake(&b->hdr->wake.pub_futex, &b->hdr->wake.pub_sleeping); }

/* A record header, and reading one back with the checks every header from
 * the segment gets: 0, or -EBADMSG if it cannot be one we wrote with
 * `avail` bytes published from its position. */
static inline void put_header(char *p, uint32_t len, uint64_t stride, uint64_t seq)
{
    uint32_t w[2] = {len, (uint32_t)stride};
    memcpy(p, w, sizeof w);
    memcpy(p + 8, &seq, 8);
}

static int get_header(fi_bcast *b, uint64_t pos, uint64_t avail, uint32_t *len, uint64_t *stride,
                      uint64_t *seq)
{
    uint32_t w[2];
    const char *p = at(b, pos);
    memcpy(w, p, sizeof w);
    memcpy(seq, p + 8, 8);
    uint64_t rec = rec_size(w[0]);
    if (w[0] > b->cap || w[1] < rec || w[1] - rec > 56 || w[1] % 8 || w[1] > avail)
        return -EBADMSG;
    *len = w[0];
    *stride = w[1];
    return 0;
}

/* ---- publisher side (call with the publisher lock held) ---------------- */

/* The slowest live subscriber's cursor (block) and the oldest pinned record
 * (any policy), scanning the slots; *slowest gets the slot index of the
 * limiting one (-1: none). -EBADMSG for a live cursor outside [head, tail]. */
static int scan_slots(fi_bcast *b, uint64_t head, uint64_t tail, uint64_t *limit, int *slowest)
{
    uint64_t lim = UINT64_MAX;
    int who = -1;
    int cursors = b->policy == 1;
    for (uint32_t i = 0; i < b->nslots; i++) {
        struct bc_slot *s = &b->slots[i];
        if (!__atomic_load_n(&s->owner, __ATOMIC_SEQ_CST))
            continue;
        if (cursors) {
            uint64_t pos = ld_sc(&s->pos);
            if (pos > tail || pos < head)
                return -EBADMSG;
            if (pos < lim) {
                lim = pos;
                who = (int)i;
            }
        }
        uint64_t pin = ld_sc(&s->pinned);
        /* A pin outside the data area's last D bytes protects nothing:
         * ignore it (a stale or hostile value must not stall publishers).
         * Not against head: head may already have moved past a pinned
         * record whose bytes the publisher still waits to write over. */
        if (pin && pin - 1 < tail && tail - (pin - 1) <= b->size && pin - 1 < lim) {
            lim = pin - 1;
            who = (int)i;
        }
    }
    *limit = lim;
    *slowest = who;
    return 0;
}

static int reclaim_if_dead(fi_bcast *b, uint32_t i, uint64_t owner);

/* Short of room: is the slot holding us back a dead process's? Reclaim it
 * (1: retry). Asked here, not only by a publisher asleep in pub_wait, so
 * that publishers which never wait that long (timeout=0, short timeouts,
 * reserve) are not held up for good by a dead subscriber or view holder;
 * at most once per BC_LIVENESS_NS per handle (it reads /proc). */
static int reclaim_blocker(fi_bcast *b, uint64_t head, uint64_t tail)
{
    int64_t now = mono_ns();
    if (now - b->checked_ns < BC_LIVENESS_NS)
        return 0;
    b->checked_ns = now;
    uint64_t limit;
    int who;
    if (scan_slots(b, head, tail, &limit, &who) || who < 0)
        return 0;
    return reclaim_if_dead(b, (uint32_t)who, __atomic_load_n(&b->slots[who].owner, __ATOMIC_SEQ_CST));
}

/* Make room for bytes [tail, end): move head past the records that must go
 * and announce the write in `reserved`. 0, -EAGAIN (a live subscriber, or
 * an open view, needs the bytes: wait and retry) or -EBADMSG. */
static int make_room(fi_bcast *b, uint64_t tail, uint64_t end)
{
    struct bc_header *h = b->hdr;
    uint64_t head = h->prod.head, head_seq = h->prod.head_seq;
    if (head > tail || tail - head > b->size)
        return -EBADMSG;
    uint64_t need = end - b->size; /* head must reach this */
    if (end > b->size && head < need) {
        /* Under `block` head goes as far as the slowest live cursor allows,
         * once a lap (see top); under `overwrite` only as far as this write
         * needs: the records kept are where an overrun subscriber resumes. */
        uint64_t limit = UINT64_MAX, goal = need;
        if (b->policy == 1) {
            if (b->cached_min < need) {
                int who;
                int rc = scan_slots(b, head, tail, &b->cached_min, &who);
                if (rc)
                    return rc;
                /* No live subscriber: one that comes joins at the tail or
                 * later, so the tail is a lower bound of every cursor. */
                if (b->cached_min > tail)
                    b->cached_min = tail;
            }
            limit = goal = b->cached_min;
        }
        while (head < goal) {
            uint32_t len;
            uint64_t stride, seq;
            if (get_header(b, head, tail - head, &len, &stride, &seq))
                return -EBADMSG;
            if (head + stride > limit) {
                /* Cursors and pins stand at records: one inside a record is
                 * corrupted (pub_ready, taking it for room, would send us
                 * back here for ever, a publisher spinning in place). */
                if (limit > head)
                    return -EBADMSG;
                break;
            }
            head += stride;
            head_seq = seq + 1;
        }
        /* head first: a subscriber that sees the new `reserved` then finds
         * a head past everything that may be overwritten (see top). */
        __atomic_store_n(&h->prod.head_seq, head_seq, __ATOMIC_RELEASE);
        __atomic_store_n(&h->prod.head, head, __ATOMIC_RELEASE);
        if (head < need)
            return reclaim_blocker(b, head, tail) ? make_room(b, tail, end) : -EAGAIN;
    }
    /* What may be written over from now on: under `block` all that head
     * has passed (see top), under `overwrite` what this write needs. */
    uint64_t announce = end;
    if (b->policy == 1 && head + b->size > announce)
        announce = head + b->size;
    if (announce > h->pub.reserved)
        __atomic_store_n(&h->pub.reserved, announce, __ATOMIC_SEQ_CST);
    if (b->policy == 0 && end > b->size && ld32(&h->wake.pins)) {
        /* An open view's record must not be written over: wait for it. */
        uint64_t limit;
        int who;
        int rc = scan_slots(b, head, tail, &limit, &who);
        if (rc)
            return rc;
        if (limit < need)
            return reclaim_blocker(b, head, tail) ? make_room(b, tail, end) : -EAGAIN;
    }
    return 0;
}

/* After taking the publisher lock over from a dead holder. publish() makes
 * a message visible with two stores, the count (seq) and then the tail: a
 * holder killed between them left a count ahead of what was published, and
 * the next records would carry numbers no subscriber expects (each would
 * look corrupted, for ever). Count the kept records again instead: the
 * last one's number + 1 (head_seq when none is kept). A corrupt position
 * or record is left for the locked step to report. */
static void repair_seq(fi_bcast *b)
{
    struct bc_header *h = b->hdr;
    uint64_t tail = ld_tail(h, __ATOMIC_ACQUIRE), pos = h->prod.head, seq = h->prod.head_seq;
    if (pos > tail || tail - pos > b->size)
        return;
    for (int first = 1; pos < tail; first = 0) {
        uint32_t len;
        uint64_t stride, rseq;
        if (get_header(b, pos, tail - pos, &len, &stride, &rseq))
            return;
        if (first) /* make_room stores head_seq, then head: the holder may have died between */
            __atomic_store_n(&h->prod.head_seq, rseq, __ATOMIC_RELEASE);
        seq = rseq + 1;
        pos += stride;
    }
    __atomic_store_n(&h->prod.seq, seq, __ATOMIC_RELEASE);
}

/* Take the publisher lock (repairing what a dead holder left half done). */
static int pub_lock(fi_bcast *b, int64_t deadline)
{
    int over = 0;
    int rc = fi_lock_wait_over(&b->hdr->prod.lock, deadline, b->spin_ns, &over);
    if (rc == 0 && over)
        repair_seq(b);
    return rc;
}

/* Make [old_tail, tail) visible: 0, -EPIPE shut down meanwhile, -EBADMSG. */
static int publish(fi_bcast *b, uint64_t old_tail, uint64_t tail, uint64_t count)
{
    struct bc_header *h = b->hdr;
    uint64_t seq = h->prod.seq;
    __atomic_store_n(&h->prod.seq, seq + count, __ATOMIC_RELEASE);
    uint64_t seen = old_tail;
    if (!__atomic_compare_exchange_n(&h->pub.tail, &seen, tail, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&h->prod.seq, seq, __ATOMIC_RELEASE);
        wake_subscribers(b);
        return seen & TAIL_CLOSED ? -EPIPE : -EBADMSG;
    }
    wake_subscribers(b);
    return 0;
}

static int publish_locked(fi_bcast *b, const void *buf, size_t n)
{
    struct bc_header *h = b->hdr;
    if (is_shut(h)) {
        wake_subscribers(b);
        return -EPIPE;
    }
    uint64_t tail = ld_tail(h, __ATOMIC_RELAXED);
    uint64_t stride = align_line(tail + rec_size(n)) - tail;
    int rc = make_room(b, tail, tail + stride);
    if (rc)
        return rc;
    /* Order the announcement in `reserved` before the bytes (seqlock writer). */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    char *p = at(b, tail);
    put_header(p, (uint32_t)n, stride, h->prod.seq);
    memcpy(p + BC_REC_HDR, buf, n);
    return publish(b, tail, tail + stride, 1);
}

static int64_t publish_batch_locked(fi_bcast *b, const char *buf, size_t len, size_t skip)
{
    struct bc_header *h = b->hdr;
    const char *p, *end = buf + len, *data;
    uint32_t n;
    int64_t count = batch_count(buf, len, &p);
    if (count < 0)
        return count;
    if ((uint64_t)count <= skip)
        return -EINVAL;
    const char *first = NULL;
    int too_large = 0;
    for (int64_t i = 0; i < count; i++) {
        if (i == (int64_t)skip)
            first = p;
        if (batch_item(&p, end, &data, &n))
            return -EINVAL;
        too_large |= n > b->cap;
    }
    if (too_large)
        return -EMSGSIZE;
    if (is_shut(h)) {
        wake_subscribers(b);
        return -EPIPE;
    }
    uint64_t tail = ld_tail(h, __ATOMIC_RELAXED), pos = tail, last = tail, seq = h->prod.seq;
    uint32_t last_len = 0;
    int64_t sent = 0;
    for (p = first; sent < count - (int64_t)skip; sent++) {
        const char *q = p;
        batch_item(&q, end, &data, &n);
        uint64_t rec = rec_size(n);
        /* Room for this record and the padding should it end the publish;
         * never more than one data area in one publish (the first record
         * would be overwritten by the last). */
        uint64_t rec_end = align_line(pos + rec);
        if (rec_end - tail > b->size)
            break;
        int rc = make_room(b, tail, rec_end);
        if (rc == -EBADMSG)
            return rc;
        if (rc)
            break;
        __atomic_thread_fence(__ATOMIC_RELEASE);
        char *w = at(b, pos);
        put_header(w, n, rec, seq + (uint64_t)sent);
        memcpy(w + BC_REC_HDR, data, n);
        last = pos;
        last_len = n;
        pos += rec;
        p = q;
    }
    if (sent == 0)
        return -EAGAIN;
    pos = align_line(pos);
    put_header(at(b, last), last_len, pos - last, seq + (uint64_t)sent - 1);
    int rc = publish(b, tail, pos, (uint64_t)sent);
    return rc ? rc : sent;
}

/* ---- subscriber side (call with the handle's sub_lock held) ------------ */

/* Store the cursor in the slot. Under `block` publishers wait on it: a
 * sequentially consistent store, then wake any that sleep (Dekker with
 * pub_wait). Under `overwrite` it is only for len() and inspection. */
static void advance(fi_bcast *b, uint64_t pos, uint64_t seq)
{
    b->pos = pos;
    __atomic_store_n(&b->seq, seq, __ATOMIC_RELEASE); /* fi_bc_len reads it from other threads */
    struct bc_slot *s = &b->slots[b->slot]; /* the slot goes only with the mapping */
    __atomic_store_n(&s->seq, seq, __ATOMIC_RELAXED);
    if (b->policy == 1) {
        __atomic_store_n(&s->pos, pos, __ATOMIC_SEQ_CST);
        wake_publishers(b);
    } else {
        __atomic_store_n(&s->pos, pos, __ATOMIC_RELEASE);
    }
}

/* Whether the bytes of a record at `pos` read so far are still the ones
 * published (no publisher began writing over them). */
static inline int intact(fi_bcast *b, uint64_t pos)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return __atomic_load_n(&b->hdr->pub.reserved, __ATOMIC_RELAXED) <= pos + b->size;
}

/* Overrun: jump to the oldest record kept; the next read there reports the
 * loss (resync). 0 to retry, -EBADMSG. */
static int jump_to_head(fi_bcast *b)
{
    struct bc_header *h = b->hdr;
    /* reserved before tail: then reserved <= tail + D whatever publishers
     * did in between, and more means a corrupted segment (which would
     * otherwise make every record look overrun, for ever). */
    uint64_t reserved = ld_acq(&h->pub.reserved);
    /* head between two loads of tail: publishers may move both in between
     * (this thread preempted), so head may be past the first tail, never
     * past the second, and never more than D behind the first; checked
     * against a single tail, a fast publisher looked like corruption. */
    uint64_t tail0 = ld_tail(h, __ATOMIC_ACQUIRE), head = ld_acq(&h->prod.head);
    uint64_t tail = ld_tail(h, __ATOMIC_ACQUIRE);
    /* And reserved <= head + D: make_room stores head, then a `reserved` at
     * most D past it, and head only grows. More would have every record
     * from head on look overrun for ever: a receive that never returns. */
    if (head > tail || (head < tail0 && tail0 - head > b->size) || head < b->pos ||
        reserved > tail0 + b->size || reserved > head + b->size)
        return -EBADMSG;
    b->pos = head;
    b->resync = 1;
    return 0;
}

/* The record at the cursor, checked: 0 with its fields, -EAGAIN none yet,
 * -EPIPE shut down and drained, -ESTALE overrun (jump_to_head), -EBADMSG. */
static int next_record(fi_bcast *b, uint64_t *avail, uint32_t *len, uint64_t *stride, uint64_t *seq)
{
    uint64_t raw = ld_acq(&b->hdr->pub.tail), tail = raw & ~TAIL_CLOSED, pos = b->pos;
    if (pos == tail)
        return raw & TAIL_CLOSED ? -EPIPE : -EAGAIN;
    if (pos > tail)
        return -EBADMSG;
    if (tail - pos > b->size)
        return -ESTALE;
    *avail = tail - pos;
    if (get_header(b, pos, tail - pos, len, stride, seq))
        return intact(b, pos) ? -EBADMSG : -ESTALE;
    return 0;
}

/* Record the loss of n messages just reported to this thread (sub_lock held:
 * one writer). The entry is this thread's own, else the oldest: a thread's
 * count survives until BC_LAG_THREADS other threads are overrun after it. The
 * thread word goes to 0 while the count changes, so a reader (fi_bc_lagged,
 * no lock) that sees its own id on both sides of the count read got it. */
static void note_lag(fi_bcast *b, uint64_t n)
{
    uint64_t me = (uint64_t)pthread_self();
    struct bc_lag *e = &b->lags[0];
    for (int i = 0; i < BC_LAG_THREADS; i++) {
        if (b->lags[i].thread == me) {
            e = &b->lags[i];
            break;
        }
        if (b->lags[i].stamp < e->stamp)
            e = &b->lags[i];
    }
    __atomic_store_n(&e->thread, 0, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&e->count, n, __ATOMIC_RELAXED);
    e->stamp = ++b->lag_stamp;
    __atomic_store_n(&e->thread, me, __ATOMIC_RELEASE);
}

/* After a good copy of the record at the cursor: check its sequence number.
 * 0 (deliver it), -EOVERFLOW (a loss to report first; the record stays),
 * -EBADMSG. */
static int check_seq(fi_bcast *b, uint64_t seq)
{
    if (seq == b->seq) {
        b->resync = 0;
        return 0;
    }
    /* Past what was ever published: not a sequence number a publisher wrote. */
    if (!b->resync || seq < b->seq || seq > ld_acq(&b->hdr->prod.seq))
        return -EBADMSG;
    b->lagged = seq - b->seq;
    b->missed += b->lagged;
    note_lag(b, b->lagged);
    __atomic_store_n(&b->slots[b->slot].missed, b->missed, __ATOMIC_RELAXED);
    __atomic_store_n(&b->seq, seq, __ATOMIC_RELEASE); /* fi_bc_len reads it from other threads */
    b->resync = 0;
    advance(b, b->pos, seq);
    return -EOVERFLOW;
}

static int64_t recv_locked(fi_bcast *b, char *out, size_t cap)
{
    for (int tries = 0; tries < BC_LAG_TRIES; tries++) {
        uint64_t avail, stride, seq;
        uint32_t len;
        int rc = next_record(b, &avail, &len, &stride, &seq);
        if (rc == 0) {
            if (len > cap) {
                if (!intact(b, b->pos))
                    rc = -ESTALE;
                else if ((rc = check_seq(b, seq)) == 0)
                    return -EMSGSIZE; /* the message stays */
            } else {
                memcpy(out, at(b, b->pos) + BC_REC_HDR, len);
                if (!intact(b, b->pos))
                    rc = -ESTALE;
                else if ((rc = check_seq(b, seq)) == 0) {
                    advance(b, b->pos + stride, seq + 1);
                    return len;
                }
            }
        }
        if (rc != -ESTALE)
            return rc;
        if ((rc = jump_to_head(b)))
            return rc;
    }
    return -EAGAIN;
}

static int64_t recv_batch_locked(fi_bcast *b, char *out, size_t cap, size_t max_count)
{
    for (int tries = 0; tries < BC_LAG_TRIES; tries++) {
        uint64_t avail, stride, seq;
        uint32_t len;
        int rc = next_record(b, &avail, &len, &stride, &seq);
        if (rc == 0 && (cap < 5 || (uint64_t)len + 5 > cap - 5)) {
            if (!intact(b, b->pos))
                rc = -ESTALE;
            else if ((rc = check_seq(b, seq)) == 0)
                return -EMSGSIZE;
        }
        if (rc == 0) {
            uint64_t first = b->pos, pos = first, first_seq = seq;
            uint32_t count = 0;
            char *w = out + 5;
            for (;;) {
                w = batch_put(w, at(b, pos) + BC_REC_HDR, len);
                pos += stride;
                avail -= stride;
                if (++count == max_count || count == UINT32_MAX || avail == 0)
                    break;
                uint64_t next_seq;
                /* A bad or unexpected record ends the batch; the next call,
                 * which starts there, reports it. */
                if (get_header(b, pos, avail, &len, &stride, &next_seq) ||
                    next_seq != first_seq + count || (uint64_t)(out + cap - w) < (uint64_t)len + 5)
                    break;
            }
            /* The oldest record is the first to be overwritten: if it is
             * intact, so is every later one. */
            if (!intact(b, first))
                rc = -ESTALE;
            else if ((rc = check_seq(b, first_seq)) == 0) {
                batch_close(out, count);
                advance(b, pos, first_seq + count);
                return w - out;
            }
        }
        if (rc != -ESTALE)
            return rc;
        if ((rc = jump_to_head(b)))
            return rc;
    }
    return -EAGAIN;
}

/* Pin the record at the cursor for a view: 0 with its length and stride,
 * or as recv_locked. */
static int64_t peek_locked(fi_bcast *b, uint64_t *stride_out)
{
    struct bc_header *h = b->hdr;
    struct bc_slot *s = &b->slots[b->slot];
    for (int tries = 0; tries < BC_LAG_TRIES; tries++) {
        uint64_t avail, stride, seq;
        uint32_t len;
        int rc = next_record(b, &avail, &len, &stride, &seq);
        if (rc == 0) {
            /* The pin, then the check of `reserved` (Dekker, see top). */
            __atomic_add_fetch(&h->wake.pins, 1, __ATOMIC_SEQ_CST);
            __atomic_store_n(&s->pinned, b->pos + 1, __ATOMIC_SEQ_CST);
            uint64_t reserved = ld_sc(&h->pub.reserved);
            /* Re-read the header under the pin: what we lend is what we checked. */
            if (reserved > b->pos + b->size ||
                get_header(b, b->pos, avail, &len, &stride, &seq)) {
                rc = reserved > b->pos + b->size ? -ESTALE : -EBADMSG;
            } else if ((rc = check_seq(b, seq)) == 0) {
                *stride_out = stride;
                return len;
            }
            __atomic_store_n(&s->pinned, 0, __ATOMIC_SEQ_CST);
            uint32_t v = ld32(&h->wake.pins);
            while (v && !__atomic_compare_exchange_n(&h->wake.pins, &v, v - 1, 0, __ATOMIC_SEQ_CST,
                                                     __ATOMIC_SEQ_CST))
                ;
            wake_publishers(b);
        }
        if (rc != -ESTALE)
            return rc;
        if ((rc = jump_to_head(b)))
            return rc;
    }
    return -EAGAIN;
}

static void unpin(fi_bcast *b)
{
    struct bc_header *h = b->hdr;
    struct bc_slot *s = &b->slots[b->slot];
    if (forked(b)) /* the pin is the subscribing process's open view */
        return;
    if (__atomic_exchange_n(&s->pinned, 0, __ATOMIC_SEQ_CST)) {
        uint32_t v = ld32(&h->wake.pins);
        while (v && !__atomic_compare_exchange_n(&h->wake.pins, &v, v - 1, 0, __ATOMIC_SEQ_CST,
                                                 __ATOMIC_SEQ_CST))
            ;
    }
    wake_publishers(b);
}

/* ---- waiting ---------------------------------------------------------- */

/* A subscriber may stop waiting: a record past its cursor, shut down, the
 * handle closed or the positions inconsistent (the locked path reports). */
static int sub_ready(fi_bcast *b)
{
    return ld_tail(b->hdr, __ATOMIC_SEQ_CST) != __atomic_load_n(&b->pos, __ATOMIC_RELAXED) ||
           is_shut(b->hdr) || __atomic_load_n(&b->closed, __ATOMIC_RELAXED);
}

static int sub_wait(fi_bcast *b, int64_t deadline)
{
    struct bc_header *h = b->hdr;
    int64_t now = mono_ns(), spin_end = now + b->spin_ns;
    if (deadline >= 0 && deadline < spin_end)
        spin_end = deadline;
    for (unsigned i = 1;; i++) {
        if (sub_ready(b))
            return 0;
        for (int k = 0; k < BC_SPIN_PAUSES; k++)
            cpu_relax();
        if ((i & 7) == 0 && mono_ns() >= spin_end)
            break;
    }
    for (;;) {
        now = mono_ns();
        if (deadline >= 0 && now >= deadline)
            return -ETIMEDOUT;
        uint32_t seen = ld32(&h->wake.sub_futex);
        __atomic_exchange_n(&h->wake.sub_sleeping, 1, __ATOMIC_SEQ_CST);
        if (sub_ready(b))
            return 0;
        int rc = futex_wait(&h->wake.sub_futex, seen, deadline < 0 ? -1 : deadline - now);
        if (rc == -EINTR)
            return rc;
        if (sub_ready(b))
            return 0;
    }
}

/* Reclaim slot i if its owner is `owner` and that process is gone. 1 if
 * it was reclaimed. Publisher lock held (by subscribe, too). */
static int reclaim_if_dead(fi_bcast *b, uint32_t i, uint64_t owner)
{
    struct bc_slot *s = &b->slots[i];
    if (!owner || fi_owner_alive(owner))
        return 0;
    if (!__atomic_compare_exchange_n(&s->owner, &owner, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        return 0;
    if (__atomic_exchange_n(&s->pinned, 0, __ATOMIC_SEQ_CST)) {
        uint32_t v = ld32(&b->hdr->wake.pins);
        while (v && !__atomic_compare_exchange_n(&b->hdr->wake.pins, &v, v - 1, 0,
                                                 __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            ;
    }
    b->cached_min = 0; /* rescan */
    return 1;
}

/* Whether a waiting publisher should retry: a publish of `n` bytes would
 * find room now (or the ring is shut down / the handle closed / something
 * is inconsistent). *slowest and *limit get the slot holding it back. */
static int pub_ready(fi_bcast *b, uint64_t n, int *slowest, uint64_t *limit)
{
    struct bc_header *h = b->hdr;
    *slowest = -1;
    if (is_shut(h) || __atomic_load_n(&b->closed, __ATOMIC_RELAXED))
        return 1;
    uint64_t tail = ld_tail(h, __ATOMIC_SEQ_CST), head = ld_sc(&h->prod.head);
    if (head > tail || tail - head > b->size)
        return 1;
    uint64_t end = align_line(tail + rec_size(n));
    if (end <= b->size)
        return 1;
    if (scan_slots(b, head, tail, limit, slowest))
        return 1;
    return *limit >= end - b->size;
}

static int pub_wait(fi_bcast *b, uint64_t n, int64_t deadline)
{
    struct bc_header *h = b->hdr;
    int slowest, stalled = -1;
    uint64_t limit, stalled_pos = 0;
    int64_t now = mono_ns(), spin_end = now + b->spin_ns, stalled_since = now;
    if (deadline >= 0 && deadline < spin_end)
        spin_end = deadline;
    while (now < spin_end) {
        if (pub_ready(b, n, &slowest, &limit))
            return 0;
        for (int k = 0; k < 64; k++)
            cpu_relax();
        now = mono_ns();
    }
    for (;;) {
        if (deadline >= 0 && now >= deadline)
            return -ETIMEDOUT;
        uint32_t seen = ld32(&h->wake.pub_futex);
        __atomic_exchange_n(&h->wake.pub_sleeping, 1, __ATOMIC_SEQ_CST);
        if (pub_ready(b, n, &slowest, &limit))
            return 0;
        if (slowest != stalled || limit != stalled_pos) {
            stalled = slowest;
            stalled_pos = limit;
            stalled_since = now;
        } else if (now - stalled_since >= BC_LIVENESS_NS && slowest >= 0) {
            /* The same subscriber has held us up for a while: back to the
             * locked step, whose make_room asks whether its process is
             * still there and frees a dead one's slot (reclaim_blocker).
             * Not here: slots change hands (subscribe, reclaim) only under
             * the publisher lock (unlocked, a subscribe could take the slot
             * between the owner's release and the pin's, open a view,
             * and lose its pin to us), and the locked step also takes the
             * lock over from a dead holder, which a try here would not. */
            return 0;
        }
        int64_t nap = BC_LIVENESS_NS;
        if (deadline >= 0 && deadline - now < nap)
            nap = deadline - now;
        int rc = futex_wait(&h->wake.pub_futex, seen, nap);
        if (rc == -EINTR)
            return rc;
        now = mono_ns();
    }
}

/* ---- handle lifetime -------------------------------------------------- */

static void leave_slot(fi_bcast *b);

static void unmap(fi_bcast *b)
{
    if (b->bells) {
        for (uint32_t i = 0; i < b->nslots; i++)
            if (b->bells[i] >= 0)
                close(b->bells[i]);
        free(b->bells);
        b->bells = NULL;
    }
    free(b->bell_prefix);
    b->bell_prefix = NULL;
    munmap(b->map_base, b->map_len);
    b->hdr = NULL;
    b->data = NULL;
    b->slots = NULL;
}

static void put_map(fi_bcast *b)
{
    if (ref_put(&b->maps)) {
        unmap(b);
        if (ref_put(&b->life))
            free(b);
    }
}

static void put_ref(fi_bcast *b)
{
    if (ref_put(&b->refs)) {
        /* No call is inside and no block open any more, so nothing of this
         * handle uses the slot after this (pins only keep bytes mapped). */
        leave_slot(b);
        put_map(b);
    }
}

static int enter(fi_bcast *b)
{
    if (!b || ref_get(&b->refs))
        return -EBADF;
    if (__atomic_load_n(&b->closed, __ATOMIC_SEQ_CST)) {
        put_ref(b);
        return -EBADF;
    }
    return 0;
}

static uint64_t page_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    return page > (long)BC_PAGE_MIN ? (uint64_t)page : BC_PAGE_MIN;
}

static uint64_t header_size_for(uint64_t slots)
{
    uint64_t page = page_size();
    return page + (slots * BC_SLOT_SIZE + page - 1) / page * page;
}

static uint64_t data_size_for(uint64_t capacity)
{
    uint64_t page = page_size();
    return (slot_size(capacity) + page - 1) / page * page;
}

uint64_t fi_bc_segment_size(uint64_t capacity, uint32_t subscribers)
{
    return header_size_for(subscribers) + data_size_for(capacity);
}

static int map_segment(int fd, uint64_t hsize, uint64_t size, fi_bcast **out)
{
    fi_bcast *b = calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    b->map_len = hsize + 2 * size;
    char *base = mmap(NULL, b->map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    int err = 0;
    if (base == MAP_FAILED) {
        err = errno;
        goto fail;
    }
    if (mmap(base, hsize + size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED ||
        mmap(base + hsize + size, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
             (off_t)hsize) == MAP_FAILED) {
        err = errno;
        munmap(base, b->map_len);
        goto fail;
    }
    b->map_base = base;
    b->hdr = (struct bc_header *)base;
    b->slots = (struct bc_slot *)(base + page_size());
    b->data = base + hsize;
    b->size = size;
    b->spin_ns = 20000;
    pthread_once(&fork_once, watch_forks);
    b->forks = &fork_gen;
    b->fork_gen = __atomic_load_n(&fork_gen, __ATOMIC_RELAXED);
    b->refs = 1;
    b->maps = 1;
    b->life = 2;
    b->slot = -1;
    *out = b;
    return 0;
fail:
    free(b);
    return -err;
}

int fi_bc_create(int fd, uint64_t capacity, uint32_t subscribers, int policy, fi_bcast **out)
{
    _Static_assert(sizeof(struct bc_header) <= BC_PAGE_MIN, "header outgrew its page");
    _Static_assert(sizeof(struct bc_slot) == BC_SLOT_SIZE, "slot size");
    struct stat st;
    if (capacity == 0 || capacity > BC_MAX_CAPACITY || subscribers == 0 ||
        subscribers > BC_MAX_SLOTS || (policy != 0 && policy != 1))
        return -EINVAL;
    uint64_t hsize = header_size_for(subscribers), size = data_size_for(capacity);
    if (fstat(fd, &st))
        return -errno;
    if ((uint64_t)st.st_size != hsize + size)
        return -EINVAL;
    fi_bcast *b;
    int rc = map_segment(fd, hsize, size, &b);
    if (rc)
        return rc;
    struct bc_header *h = b->hdr;
    memset(h, 0, sizeof *h);
    memset(b->slots, 0, (size_t)subscribers * BC_SLOT_SIZE);
    h->version = BC_LAYOUT_VERSION;
    h->header_size = hsize;
    h->capacity = capacity;
    h->data_size = size;
    h->max_subscribers = subscribers;
    h->policy = (uint32_t)policy;
    b->cap = capacity;
    b->nslots = subscribers;
    b->policy = (uint32_t)policy;
    __atomic_store_n(&h->magic, BC_MAGIC, __ATOMIC_RELEASE);
    *out = b;
    return 0;
}

int fi_bc_open(int fd, fi_bcast **out)
{
    struct stat st;
    struct bc_header copy;
    if (fstat(fd, &st))
        return -errno;
    if ((uint64_t)st.st_size < sizeof copy)
        return st.st_size == 0 ? -EAGAIN : -EPROTO;
    errno = 0;
    if (pread(fd, &copy, sizeof copy, 0) != (ssize_t)sizeof copy)
        return errno ? -errno : -EPROTO;
    uint64_t magic = __atomic_load_n(&copy.magic, __ATOMIC_ACQUIRE);
    if (magic == 0)
        return -EAGAIN;
    if (magic != BC_MAGIC)
        return -EPROTO;
    if (copy.version != BC_LAYOUT_VERSION)
        return -EPROTONOSUPPORT;
    if (copy.max_subscribers == 0 || copy.max_subscribers > BC_MAX_SLOTS || copy.policy > 1 ||
        copy.header_size != header_size_for(copy.max_subscribers) || copy.capacity == 0 ||
        copy.capacity > BC_MAX_CAPACITY || copy.data_size != data_size_for(copy.capacity) ||
        (uint64_t)st.st_size != copy.header_size + copy.data_size)
        return -EBADMSG;
    fi_bcast *b;
    int rc = map_segment(fd, copy.header_size, copy.data_size, &b);
    if (rc)
        return rc;
    b->cap = copy.capacity;
    b->nslots = copy.max_subscribers;
    b->policy = copy.policy;
    *out = b;
    return 0;
}

/* Free this handle's slot, if it has one and still owns it. */
static void leave_slot(fi_bcast *b)
{
    if (b->slot < 0)
        return;
    if (forked(b) || b->owner != fi_proc_self()) {
        /* A copy inherited through fork(): the slot (and any pin in it) is
         * the subscribing process's, which still uses it. */
        b->slot = -1;
        return;
    }
    struct bc_slot *s = &b->slots[b->slot];
    unpin(b);
    uint64_t mine = b->owner;
    __atomic_compare_exchange_n(&s->owner, &mine, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    b->slot = -1;
    wake_publishers(b); /* under `block` they may have waited for us */
}

void fi_bc_close(fi_bcast *b)
{
    if (!b || __atomic_exchange_n(&b->closed, 1, __ATOMIC_SEQ_CST))
        return;
    struct bc_header *h = b->hdr;
    __atomic_add_fetch(&h->wake.sub_futex, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&h->wake.pub_futex, 1, __ATOMIC_SEQ_CST);
    futex_wake_all(&h->wake.sub_futex);
    futex_wake_all(&h->wake.pub_futex);
    put_ref(b);
}

void fi_bc_free(fi_bcast *b)
{
    if (!b)
        return;
    fi_bc_close(b);
    if (ref_put(&b->life))
        free(b);
}

int fi_bc_pin_into(fi_bcast *b, fi_bpin *pin)
{
    if (!b || !pin || pin->bc)
        return -EINVAL;
    int rc = ref_get(&b->maps);
    if (rc == 0)
        pin->bc = b;
    return rc;
}

void fi_bpin_drop(fi_bpin *pin, const char *view)
{
    (void)view;
    fi_bcast *b = pin ? __atomic_exchange_n(&pin->bc, NULL, __ATOMIC_SEQ_CST) : NULL;
    if (b)
        put_map(b);
}

void fi_bpin_release(fi_bpin *pin) { fi_bpin_drop(pin, NULL); }

uint64_t fi_bc_capacity(const fi_bcast *b) { return b->cap; }
uint32_t fi_bc_max_subscribers(const fi_bcast *b) { return b->nslots; }
int fi_bc_policy(const fi_bcast *b) { return (int)b->policy; }
void fi_bc_set_spin(fi_bcast *b, int64_t spin_ns) { b->spin_ns = spin_ns < 0 ? 0 : spin_ns; }
void fi_bc_set_scratch(fi_bcast *b, char *buf, size_t cap)
{
    b->scratch = buf;
    b->scratch_cap = buf ? cap : 0;
    b->scratch_owner = pthread_self();
}

int fi_bc_set_bells(fi_bcast *b, const char *prefix, uint32_t uid)
{
    if (!usable(b))
        return -EBADF;
    if (!prefix || strlen(prefix) > 400)
        return -EINVAL;
    char *copy = strdup(prefix);
    if (!copy)
        return -ENOMEM;
    free(b->bell_prefix);
    b->bell_prefix = copy;
    b->bell_uid = uid;
    return 0;
}

static int64_t count_subscribers(fi_bcast *b)
{
    int64_t n = 0;
    for (uint32_t i = 0; i < b->nslots; i++) {
        uint64_t owner = __atomic_load_n(&b->slots[i].owner, __ATOMIC_ACQUIRE);
        n += owner && fi_owner_alive(owner);
    }
    return n;
}

/* Counted: it reads /proc with the GIL released, so a close() from another
 * thread may come meanwhile; the mapping must outlive the scan. */
int64_t fi_bc_subscribers(fi_bcast *b)
{
    COUNTED_CALL(b, enter, put_ref, -EBADF, count_subscribers(b));
}

int64_t fi_bc_slot_info(fi_bcast *b, uint32_t i, uint64_t *owner, uint64_t *pos, uint64_t *seq)
{
    if (!usable(b))
        return -EBADF;
    if (i >= b->nslots)
        return -EINVAL;
    struct bc_slot *s = &b->slots[i];
    *owner = __atomic_load_n(&s->owner, __ATOMIC_ACQUIRE);
    *pos = __atomic_load_n(&s->pos, __ATOMIC_ACQUIRE);
    *seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
    return *owner ? fi_owner_alive(*owner) : 0;
}

int64_t fi_bc_published(fi_bcast *b)
{
    if (!usable(b))
        return -EBADF;
    return (int64_t)(ld_acq(&b->hdr->prod.seq) & INT64_MAX);
}

int64_t fi_bc_room(fi_bcast *b)
{
    if (!usable(b))
        return -EBADF;
    struct bc_header *h = b->hdr;
    uint64_t tail, head, limit = UINT64_MAX;
    /* Without the publisher lock, publishers (and, under `block`, cursors)
     * may move between these loads (this thread preempted) and make a sound
     * state look corrupted: a snapshot counts as corrupted only if 64 in a
     * row fail the checks (measured: 175 false errors in 10 M calls against
     * a fast publisher with one try). */
    for (int tries = 0;; tries++) {
        if (tries == 64)
            return -EBADMSG;
        int who;
        tail = ld_tail(h, __ATOMIC_ACQUIRE);
        head = ld_acq(&h->prod.head);
        limit = UINT64_MAX;
        if (head > tail || tail - head > b->size)
            continue;
        if (b->policy == 1 && scan_slots(b, head, tail, &limit, &who))
            continue;
        break;
    }
    /* Under `overwrite` everything kept may go; under `block`, what lies
     * before the slowest live cursor. */
    uint64_t used = b->policy == 1 && limit != UINT64_MAX ? tail - limit : 0;
    uint64_t room = (b->size - used) & ~(uint64_t)63u;
    if (room < BC_REC_HDR)
        return -ENOSPC;
    room -= BC_REC_HDR;
    return (int64_t)(room < b->cap ? room : b->cap);
}

int fi_bc_is_shutdown(fi_bcast *b) { return usable(b) && is_shut(b->hdr); }

int fi_bc_shutdown(fi_bcast *b)
{
    if (!usable(b))
        return -EBADF;
    struct bc_header *h = b->hdr;
    __atomic_fetch_or(&h->pub.tail, TAIL_CLOSED, __ATOMIC_SEQ_CST);
    __atomic_store_n(&h->wake.closed, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&h->wake.sub_sleeping, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&h->wake.pub_sleeping, 0, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&h->wake.sub_futex, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&h->wake.pub_futex, 1, __ATOMIC_SEQ_CST);
    futex_wake_all(&h->wake.sub_futex);
    futex_wake_all(&h->wake.pub_futex);
    /* Every taken slot's bell: a watcher must see the shutdown. */
    for (uint32_t i = 0; i < b->nslots; i++)
        if (__atomic_load_n(&b->slots[i].owner, __ATOMIC_RELAXED))
            ring_slot_bell(b, i);
    return 0;
}

/* Add delta to *w, clamped to 0..UINT32_MAX (shared with other, possibly
 * dead or hostile, processes); return the new value. */
static uint32_t add_clamped(uint32_t *w, int delta)
{
    uint32_t old = __atomic_load_n(w, __ATOMIC_SEQ_CST), next;
    do {
        if (delta < 0)
            next = old < (uint32_t)-delta ? 0 : old + (uint32_t)delta;
        else
            next = old > UINT32_MAX - (uint32_t)delta ? UINT32_MAX : old + (uint32_t)delta;
    } while (!__atomic_compare_exchange_n(w, &old, next, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return next;
}

int64_t fi_bc_watch(fi_bcast *b, int delta)
{
    if (!usable(b))
        return -EBADF;
    if (b->slot < 0)
        return -EINVAL;
    if (forked(b))
        return -ECHILD;
    /* The global count first when adding, last when removing, so it is
     * never below what the slots need. */
    if (delta > 0)
        add_clamped(&b->hdr->wake.watchers, delta);
    uint32_t n = add_clamped(&b->slots[b->slot].watchers, delta);
    if (delta < 0)
        add_clamped(&b->hdr->wake.watchers, delta);
    /* The watcher's re-check of the ring comes after: a store-load pair. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return n;
}

int fi_bc_poll(fi_bcast *b)
{
    if (!usable(b))
        return -EBADF;
    if (b->slot < 0)
        return -EINVAL;
    if (forked(b))
        return -ECHILD;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return sub_ready(b);
}

/* ---- subscribing ------------------------------------------------------ */

static int subscribe_locked(fi_bcast *b)
{
    struct bc_header *h = b->hdr;
    uint64_t self = fi_proc_self();
    /* Under the publisher lock: tail and seq stand still. */
    uint64_t tail = ld_tail(h, __ATOMIC_ACQUIRE), seq = h->prod.seq;
    int found = -1;
    for (int pass = 0; pass < 2 && found < 0; pass++) {
        for (uint32_t i = 0; i < b->nslots; i++) {
            struct bc_slot *s = &b->slots[i];
            uint64_t owner = __atomic_load_n(&s->owner, __ATOMIC_SEQ_CST);
            /* First pass: a free slot; second: one whose process is gone. */
            if (pass == 1 && owner && !reclaim_if_dead(b, i, owner))
                continue;
            if (pass == 1)
                owner = 0;
            if (owner != 0)
                continue;
            /* The cursor before the owner word: readers without the lock
             * (fi_bc_room, pub_ready) scan the owned slots, and would take
             * a free slot's old position, behind head, for corruption. */
            __atomic_store_n(&s->pinned, 0, __ATOMIC_SEQ_CST);
            __atomic_store_n(&s->watchers, 0, __ATOMIC_SEQ_CST);
            __atomic_store_n(&s->missed, 0, __ATOMIC_SEQ_CST);
            __atomic_store_n(&s->seq, seq, __ATOMIC_SEQ_CST);
            __atomic_store_n(&s->pos, tail, __ATOMIC_SEQ_CST);
            if (__atomic_compare_exchange_n(&s->owner, &owner, self, 0, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST)) {
                found = (int)i;
                break;
            }
        }
    }
    if (found < 0)
        return -EUSERS;
    b->slot = found;
    b->owner = self;
    b->pos = tail;
    __atomic_store_n(&b->seq, seq, __ATOMIC_RELEASE); /* fi_bc_len reads it from other threads */
    b->resync = 0;
    return 0;
}

static int subscribe_wait(fi_bcast *b, int64_t timeout_ns)
{
    if (b->slot >= 0)
        return -EALREADY;
    fi_lock *m = &b->hdr->prod.lock;
    int rc = pub_lock(b, deadline_of(timeout_ns));
    if (rc)
        return rc;
    rc = subscribe_locked(b);
    fi_lock_release(m);
    return rc;
}

int fi_bc_subscribe(fi_bcast *b, int64_t timeout_ns)
{
    COUNTED_CALL(b, enter, put_ref, -EBADF, subscribe_wait(b, timeout_ns));
}

int fi_bc_slot(fi_bcast *b) { return b ? b->slot : -1; }

int64_t fi_bc_len(fi_bcast *b)
{
    if (!usable(b))
        return -EBADF;
    if (b->slot < 0)
        return -EINVAL;
    if (forked(b))
        return -ECHILD;
    struct bc_header *h = b->hdr;
    uint64_t n = 0;
    /* head_seq and seq from between the same two publishes: read seq on
     * both sides. Two plain loads could straddle many publishes (this thread
     * preempted in between) and add up to more records than the ring holds,
     * which is also how a corrupted count looks (measured: 25 false errors in
     * 11 M calls against a fast publisher). A publisher too fast to catch
     * between two loads, 64 times, gets the count clamped to what fits. */
    for (int tries = 0; tries < 64; tries++) {
        /* This handle's cursor first: another thread's receive on it (the GIL
         * released) may move it on meanwhile, but never past a seq read after
         * it; read last, it could be two or more past seq: a false -EBADMSG. */
        uint64_t mine = __atomic_load_n(&b->seq, __ATOMIC_ACQUIRE);
        uint64_t seq0 = ld_acq(&h->prod.seq);
        uint64_t head_seq = ld_acq(&h->prod.head_seq), seq = ld_acq(&h->prod.seq);
        uint64_t from = mine > head_seq ? mine : head_seq;
        if (seq < from)
            return seq + 1 < from ? -EBADMSG : 0; /* a publish in flight */
        n = seq - from;
        if (seq != seq0)
            continue;
        if (n > b->size / BC_REC_HDR)
            return -EBADMSG;
        return (int64_t)n;
    }
    return (int64_t)(n < b->size / BC_REC_HDR ? n : b->size / BC_REC_HDR);
}

uint64_t fi_bc_lagged(const fi_bcast *b)
{
    uint64_t me = (uint64_t)pthread_self();
    for (int i = 0; i < BC_LAG_THREADS; i++) {
        const struct bc_lag *e = &b->lags[i];
        if (__atomic_load_n(&e->thread, __ATOMIC_ACQUIRE) != me)
            continue;
        uint64_t n = __atomic_load_n(&e->count, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&e->thread, __ATOMIC_RELAXED) == me)
            return n; /* not taken over by another thread's overrun meanwhile */
    }
    return b->lagged;
}
uint64_t fi_bc_missed(const fi_bcast *b) { return b->missed; }

int64_t fi_bc_next_len(fi_bcast *b)
{
    if (!usable(b) || b->slot < 0)
        return -EBADF;
    uint64_t tail = ld_tail(b->hdr, __ATOMIC_ACQUIRE);
    if (tail == b->pos)
        return -EAGAIN;
    if (tail < b->pos || tail - b->pos > b->size)
        return -EBADMSG;
    uint32_t len;
    memcpy(&len, at(b, b->pos), 4);
    return len > b->cap ? -EBADMSG : (int64_t)len;
}

/* ---- public: non-blocking --------------------------------------------- */

int fi_bc_try_publish(fi_bcast *b, const void *buf, size_t n)
{
    if (!usable(b))
        return -EBADF;
    if (n > b->cap)
        return -EMSGSIZE;
    int rc = fi_lock_try(&b->hdr->prod.lock);
    if (rc)
        return rc;
    rc = publish_locked(b, buf, n);
    fi_lock_release(&b->hdr->prod.lock);
    return rc;
}

int64_t fi_bc_try_publish_batch(fi_bcast *b, const char *buf, size_t len, size_t skip)
{
    if (!usable(b))
        return -EBADF;
    int rc = fi_lock_try(&b->hdr->prod.lock);
    if (rc)
        return rc;
    int64_t n = publish_batch_locked(b, buf, len, skip);
    fi_lock_release(&b->hdr->prod.lock);
    return n;
}

int64_t fi_bc_try_recv(fi_bcast *b, char *out, size_t cap)
{
    if (!usable(b) || b->slot < 0)
        return -EBADF;
    if (forked(b))
        return -ECHILD;
    int rc = fi_lock_try(&b->sub_lock);
    if (rc)
        return rc;
    int64_t n = recv_locked(b, out, cap);
    fi_lock_release(&b->sub_lock);
    return n;
}

int64_t fi_bc_try_recv1(fi_bcast *b)
{
    if (!usable(b))
        return -EBADF;
    /* The caller slices the message out of the scratch buffer after this
     * returns: another thread's receive must not refill it in between (as
     * fi_ring_try_recv1). */
    if (!pthread_equal(b->scratch_owner, pthread_self()))
        return -ECHILD;
    return fi_bc_try_recv(b, b->scratch, b->scratch_cap);
}

int64_t fi_bc_spin_recv1(fi_bcast *b, int64_t spin_ns)
{
    int64_t rc = fi_bc_try_recv1(b);
    if (rc != -EAGAIN)
        return rc;
    int64_t until = mono_ns() + spin_ns;
    for (unsigned i = 1;; i++) {
        if (sub_ready(b))
            return fi_bc_try_recv1(b);
        for (int k = 0; k < BC_SPIN_PAUSES; k++)
            cpu_relax();
        if ((i & 7) == 0 && mono_ns() >= until)
            return -EAGAIN;
    }
}

int64_t fi_bc_try_recv_batch(fi_bcast *b, char *out, size_t cap, size_t max_count)
{
    if (!usable(b) || b->slot < 0)
        return -EBADF;
    if (forked(b))
        return -ECHILD;
    if (max_count == 0)
        return -EINVAL;
    int rc = fi_lock_try(&b->sub_lock);
    if (rc)
        return rc;
    int64_t n = recv_batch_locked(b, out, cap, max_count);
    fi_lock_release(&b->sub_lock);
    return n;
}

/* ---- public: blocking ------------------------------------------------- */

/* Between tries: wait for the other side. 0 to retry, -ETIMEDOUT, -EINTR,
 * -EBADF once the handle was closed. Once shut down, a subscriber with
 * nothing left polls gently (as ring.c's closed_wait). */
static int side_wait(fi_bcast *b, int pub, uint64_t n, int64_t deadline)
{
    if (__atomic_load_n(&b->closed, __ATOMIC_RELAXED))
        return -EBADF;
    /* Also here, not only when asleep: a side that looks ready but whose
     * locked step keeps saying "not yet" must still see its deadline. */
    if (deadline >= 0 && mono_ns() >= deadline)
        return -ETIMEDOUT;
    int rc;
    if (!pub && is_shut(b->hdr)) {
        if (deadline >= 0 && mono_ns() >= deadline)
            return -ETIMEDOUT;
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
        rc = 0;
    } else {
        rc = pub ? pub_wait(b, n, deadline) : sub_wait(b, deadline);
    }
    if (rc == 0 && __atomic_load_n(&b->closed, __ATOMIC_RELAXED))
        return -EBADF;
    return rc;
}

/* Retry `op` under the lock (the segment's publisher lock, or the handle's
 * subscriber lock) until it stops saying -EAGAIN, waiting in between. */
#define BLOCKING(b, pub, n, timeout_ns, op)                                         \
    do {                                                                            \
        fi_lock *m_ = (pub) ? &(b)->hdr->prod.lock : &(b)->sub_lock;                \
        int64_t deadline_ = deadline_of(timeout_ns);                                \
        for (;;) {                                                                  \
            int64_t rc_ = (pub) ? pub_lock((b), deadline_)                          \
                                : fi_lock_wait(m_, deadline_, (b)->spin_ns);        \
            if (rc_)                                                                \
                return rc_;                                                         \
            rc_ = (op);                                                             \
            fi_lock_release(m_);                                                    \
            if (rc_ != -EAGAIN)                                                     \
                return rc_;                                                         \
            rc_ = side_wait((b), (pub), (n), deadline_);                            \
            if (rc_)                                                                \
                return rc_;                                                         \
        }                                                                           \
    } while (0)

static int publish_wait(fi_bcast *b, const void *buf, size_t n, int64_t timeout_ns)
{
    BLOCKING(b, 1, n, timeout_ns, publish_locked(b, buf, n));
}

int fi_bc_publish(fi_bcast *b, const void *buf, size_t n, int64_t timeout_ns)
{
    COUNTED_CALL(b, enter, put_ref, -EBADF,
                 n > b->cap ? -EMSGSIZE : publish_wait(b, buf, n, timeout_ns));
}

static int64_t publish_batch_wait(fi_bcast *b, const char *buf, size_t len, size_t skip,
                                  int64_t timeout_ns)
{
    const char *p, *data;
    uint32_t n = 0;
    int64_t count = batch_count(buf, len, &p);
    if (count < 0)
        return count;
    for (size_t i = 0; i <= skip && (int64_t)i < count; i++)
        if (batch_item(&p, buf + len, &data, &n))
            return -EINVAL;
    BLOCKING(b, 1, n, timeout_ns, publish_batch_locked(b, buf, len, skip));
}

int64_t fi_bc_publish_batch(fi_bcast *b, const char *buf, size_t len, size_t skip, int64_t timeout_ns)
{
    COUNTED_CALL(b, enter, put_ref, -EBADF, publish_batch_wait(b, buf, len, skip, timeout_ns));
}

static int64_t recv_wait(fi_bcast *b, char *out, size_t cap, int64_t timeout_ns)
{
    if (b->slot < 0)
        return -EBADF;
    if (forked(b))
        return -ECHILD;
    BLOCKING(b, 0, 0, timeout_ns, recv_locked(b, out, cap));
}

int64_t fi_bc_recv(fi_bcast *b, char *out, size_t cap, int64_t timeout_ns)
{
    COUNTED_CALL(b, enter, put_ref, -EBADF, recv_wait(b, out, cap, timeout_ns));
}

static int64_t recv_batch_wait(fi_bcast *b, char *out, size_t cap, size_t max_count, int64_t timeout_ns)
{
    if (b->slot < 0)
        return -EBADF;
    if (forked(b))
        return -ECHILD;
    BLOCKING(b, 0, 0, timeout_ns, recv_batch_locked(b, out, cap, max_count));
}

int64_t fi_bc_recv_batch(fi_bcast *b, char *out, size_t cap, size_t max_count, int64_t timeout_ns)
{
    if (max_count == 0)
        return -EINVAL;
    COUNTED_CALL(b, enter, put_ref, -EBADF, recv_batch_wait(b, out, cap, max_count, timeout_ns));
}

/* ---- holds: reserve (publisher lock) and views (subscriber lock) -------
 * As ring.c's: the call that takes the lock records the hold (and pins the
 * handle's struct) in a caller-allocated record in the same step, so a
 * raising signal handler at any instant leaves something that lets go. */

static inline fi_lock *held_lock(fi_bcast *b, enum bc_hold side)
{
    return side == HOLD_PUB ? &b->hdr->prod.lock : &b->sub_lock;
}

static int claim(fi_bcast *b, enum bc_hold side)
{
    enum bc_hold none = HOLD_NONE;
    if (!__atomic_compare_exchange_n(&b->holding, &none, side, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        return -EDEADLK;
    __atomic_add_fetch(&b->hold_gen, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static void unclaim(fi_bcast *b) { __atomic_store_n(&b->holding, HOLD_NONE, __ATOMIC_SEQ_CST); }

static void hold(fi_bcast *b, fi_bhold *rec)
{
    __atomic_add_fetch(&b->refs, 1, __ATOMIC_SEQ_CST);
    if (rec) {
        __atomic_add_fetch(&b->refs, 1, __ATOMIC_SEQ_CST);
        rec->gen = __atomic_load_n(&b->hold_gen, __ATOMIC_SEQ_CST);
        rec->owner = fi_lock_self();
        rec->forks = __atomic_load_n(b->forks, __ATOMIC_RELAXED);
        __atomic_store_n(&rec->bc, b, __ATOMIC_SEQ_CST);
    }
}

/* Let go of the held side (its view's pin too); -EPERM if this thread does
 * not hold it. `owner`: the holder's lock word. */
static int let_go_as(fi_bcast *b, enum bc_hold side, uint64_t owner)
{
    fi_lock *l = held_lock(b, side);
    if (fi_lock_held_by(l, owner))
        return -EPERM;
    if (side == HOLD_SUB)
        unpin(b);
    __atomic_store_n(&b->holding, HOLD_NONE, __ATOMIC_SEQ_CST);
    fi_lock_release_from(l, owner);
    put_ref(b);
    return 0;
}

static int reserve_loop(fi_bcast *b, size_t n, int64_t timeout_ns, char **ptr, fi_bhold *rec)
{
    fi_lock *m = &b->hdr->prod.lock;
    int64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        int rc = pub_lock(b, deadline);
        if (rc)
            return rc;
        struct bc_header *h = b->hdr;
        if (is_shut(h)) {
            rc = -EPIPE;
        } else {
            uint64_t tail = ld_tail(h, __ATOMIC_RELAXED);
            uint64_t end = align_line(tail + rec_size(n));
            rc = make_room(b, tail, end);
            if (rc == 0) {
                __atomic_thread_fence(__ATOMIC_RELEASE);
                hold(b, rec);
                b->held_len = n;
                b->held_pos = tail;
                *ptr = at(b, tail) + BC_REC_HDR;
                return 0; /* the publisher lock stays held until commit/abort */
            }
        }
        fi_lock_release(m);
        if (rc != -EAGAIN)
            return rc;
        if ((rc = side_wait(b, 1, n, deadline)))
            return rc;
    }
}

static int reserve_wait(fi_bcast *b, size_t n, int64_t timeout_ns, char **ptr, fi_bhold *rec)
{
    if (n > b->cap)
        return -EMSGSIZE;
    if (claim(b, HOLD_PUB))
        return -EDEADLK;
    int rc = reserve_loop(b, n, timeout_ns, ptr, rec);
    if (rc)
        unclaim(b);
    return rc;
}

int fi_bc_reserve(fi_bcast *b, size_t n, int64_t timeout_ns, char **ptr, fi_bhold *hold)
{
    if (hold && hold->bc)
        return -EINVAL;
    COUNTED_CALL(b, enter, put_ref, -EBADF, reserve_wait(b, n, timeout_ns, ptr, hold));
}

int fi_bc_commit(fi_bcast *b)
{
    if (!usable(b))
        return -EBADF;
    if (b->holding != HOLD_PUB)
        return -EINVAL;
    struct bc_header *h = b->hdr;
    if (fi_lock_held(&h->prod.lock))
        return -EPERM;
    int rc;
    if (is_shut(h)) {
        rc = -EPIPE;
        wake_subscribers(b);
    } else {
        uint64_t end = align_line(b->held_pos + rec_size(b->held_len));
        put_header(at(b, b->held_pos), (uint32_t)b->held_len, end - b->held_pos, h->prod.seq);
        rc = publish(b, b->held_pos, end, 1);
    }
    int released = let_go_as(b, HOLD_PUB, fi_lock_self());
    return released ? released : rc;
}

int fi_bc_abort(fi_bcast *b)
{
    if (!b)
        return -EBADF;
    if (b->holding != HOLD_PUB)
        return -EINVAL;
    return let_go_as(b, HOLD_PUB, fi_lock_self());
}

static int64_t peek_loop(fi_bcast *b, int64_t timeout_ns, char **ptr, fi_bhold *rec)
{
    fi_lock *m = &b->sub_lock;
    int64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        int64_t rc = fi_lock_wait(m, deadline, b->spin_ns);
        if (rc)
            return rc;
        uint64_t stride = 0; /* set when rc >= 0 (gcc -O2 cannot tell) */
        rc = peek_locked(b, &stride);
        if (rc >= 0) {
            hold(b, rec);
            b->held_pos = b->pos;
            b->held_stride = stride;
            *ptr = at(b, b->pos) + BC_REC_HDR;
            return rc; /* the subscriber lock stays held until release */
        }
        fi_lock_release(m);
        if (rc != -EAGAIN)
            return rc;
        if ((rc = side_wait(b, 0, 0, deadline)))
            return rc;
    }
}

static int64_t peek_wait(fi_bcast *b, int64_t timeout_ns, char **ptr, fi_bhold *rec)
{
    if (b->slot < 0)
        return -EBADF;
    if (forked(b))
        return -ECHILD;
    if (claim(b, HOLD_SUB))
        return -EDEADLK;
    int64_t rc = peek_loop(b, timeout_ns, ptr, rec);
    if (rc < 0)
        unclaim(b);
    return rc;
}

int64_t fi_bc_peek(fi_bcast *b, int64_t timeout_ns, char **ptr, fi_bhold *hold)
{
    if (hold && hold->bc)
        return -EINVAL;
    COUNTED_CALL(b, enter, put_ref, -EBADF, peek_wait(b, timeout_ns, ptr, hold));
}

int fi_bc_release(fi_bcast *b)
{
    if (!usable(b))
        return -EBADF;
    if (b->holding != HOLD_SUB)
        return -EINVAL;
    if (fi_lock_held(&b->sub_lock))
        return -EPERM;
    if (forked(b))
        return -ECHILD;
    advance(b, b->held_pos + b->held_stride, b->seq + 1);
    return let_go_as(b, HOLD_SUB, fi_lock_self());
}

int fi_bc_unhold(fi_bcast *b)
{
    if (!b)
        return -EBADF;
    enum bc_hold side = __atomic_load_n(&b->holding, __ATOMIC_SEQ_CST);
    if (side == HOLD_NONE)
        return 0;
    return let_go_as(b, side, fi_lock_self());
}

void fi_bhold_drop(fi_bhold *rec)
{
    fi_bcast *b = rec ? __atomic_exchange_n(&rec->bc, NULL, __ATOMIC_SEQ_CST) : NULL;
    if (!b)
        return;
    enum bc_hold side = __atomic_load_n(&b->holding, __ATOMIC_SEQ_CST);
    if (side == HOLD_NONE || __atomic_load_n(&b->hold_gen, __ATOMIC_SEQ_CST) != rec->gen) {
        put_ref(b);
        return;
    }
    if (rec->forks != __atomic_load_n(b->forks, __ATOMIC_RELAXED)) {
        /* Made before a fork() this process is a child of: the parent's hold
         * (its lock, its pin), whose block lives on there. Drop only this
         * copy's record of it. */
        unclaim(b);
        put_ref(b);
    } else if (fi_lock_held(held_lock(b, side)) == 0) {
        /* Still this record's hold: let go of it, for its thread if it died
         * in another one (its block is gone, so its holder never will). */
        let_go_as(b, side, fi_lock_self());
    } else {
        let_go_as(b, side, rec->owner);
    }
    put_ref(b);
}
