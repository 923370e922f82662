/* The Channel's hot path: length-framed messages over a Unix stream socket.
 * One algorithm, in one file: framing and fd matching share the receive
 * state (stream offsets); the hand-off area is handoff.c.
 *
 * Wire format (docs/architecture.md, "Wire format"): [u32 LE length][u32 LE flags][payload].
 * Flag FRAME_FDS marks a frame whose SCM_RIGHTS fds ride on its first byte.
 *
 * Sending. One frame is one sendmsg of an iovec [header, caller's buffer],
 * so nothing is joined; a batch puts many frames in one sendmsg (up to
 * IOV_MAX iovecs; small frames staged into one, see send_batch_step). The socket is used with MSG_DONTWAIT: a partial write leaves
 * the progress in the handle (tx_done, tx_frames, tx_pos) and the next call,
 * given the same buffer, resumes exactly where the kernel stopped, so no
 * byte is lost or sent twice.
 *
 * Receiving. Frames are cut from a per-handle buffer that each recvmsg fills
 * as far as it can, so one syscall serves many small messages. A large frame
 * (over direct_min bytes: 64 KiB, at most half the buffer) is read straight into the
 * caller's destination; if that read has to stop midway (timeout, signal),
 * the handle remembers the destination and how far it got.
 *
 * fds. The kernel attaches a sendmsg's fds to the first skb it queues, and
 * a stream recvmsg returns after consuming an skb with fds; so the fds of
 * a frame come with a read whose last byte is in that frame (the skb that
 * carried them was the frame's first). Each received set is recorded with
 * the stream offsets [lo, hi) of its read; a frame flagged FRAME_FDS claims
 * the oldest set only if hi - 1 is inside the frame (set_is_frames), else
 * the frame is a protocol error.
 * Sets nobody claims (a peer sending fds without the flag) are closed once
 * the stream has moved past them, so they never leak.
 *
 * Hand-off through shared memory (handoff.c has the area itself). A large
 * message can travel in the sender's shared area: its frame is flagged
 * FRAME_BULK and carries a HANDOFF_DESC-byte descriptor in place of the
 * payload (the header's length is still the message's); the frame that
 * first uses an area also carries its fd (FRAME_AREA|FRAME_FDS). This file
 * cuts those frames and settles their fds like any other; handoff.c maps,
 * checks and releases.
 *
 * Hostile peers. Every length read from the wire is checked against
 * max_message before anything is allocated or copied, and every fd count
 * against the control message's real length; handoff.c checks areas and
 * descriptors.
 */
#define _GNU_SOURCE
#include "fastipc.h"
#include "handoff.h"
#include "marshal.h"
#include "refs.h"
#include "sys.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fastipc's frame and batch formats assume a little-endian CPU"
#endif

#define HDR 8u
#define FRAME_FDS 1u
#define FRAME_BULK 2u /* the payload is in the sender's area; the wire carries a descriptor */
#define FRAME_AREA 4u /* with FRAME_BULK|FRAME_FDS: the one fd is the sender's (new) area */
#define KNOWN_FLAGS (FRAME_FDS | FRAME_BULK | FRAME_AREA)
#define VIEW_SPIN_RATE 8u             /* bytes/ns (8 GB/s): see spin_end */
#define VIEW_SPIN_MAX_NS 250000
#define MAX_FDS 253 /* SCM_MAX_FD in the kernel */
#define MAX_SETS 16 /* fd sets received but not yet claimed */
#define DIRECT_MAX (64u * 1024)
/* A receive given no buffer (out NULL) reads a frame longer than this into
 * a buffer of the handle's own of 1/RX_OWN_PART of its length first, and
 * asks for the whole frame's buffer only once that much has come: what a
 * header announcing max_message costs in memory (address space included)
 * follows what the peer actually sends. */
#define RX_OWN_FROM (1u << 20)
#define RX_OWN_PART 16u
#ifndef IOV_MAX
#define IOV_MAX 1024
#endif
#define BATCH_IOV (IOV_MAX < 1024 ? IOV_MAX : 1024)
#define STAGE_CAP (256u * 1024) /* send_many's staging buffer */
#define STAGE_MAX (16u * 1024)  /* payloads this long are sent from where they are */


struct fdset {
    uint64_t lo, hi; /* stream offsets of the recvmsg that brought them */
    int n;           /* fds in this set; -1: MSG_CTRUNC (they were closed) */
    int *fds;        /* max_fds slots in the pool */
};

/* Lifetime (docs/architecture.md, "Handles and threads"): fi_chan_close may
 * come from any thread while another is inside a call, so every call counts
 * itself in `refs` (enter/leave; the open handle is 1 more) and the
 * buffers, fds and the handle's own dup of the socket go when it drops to
 * 0. The struct goes only in fi_chan_free. The dup is why a socket fd
 * number closed by Python can never be reused under a call still inside. */
struct fi_chan {
    int fd;     /* our own dup of the socket */
    int closed; /* fi_chan_close was called */
    uint32_t refs;
    int defer_close; /* inside a try call (GIL held): fds go to `doomed`, not close() */
    int *doomed;     /* fds to close in the next call that may block */
    int ndoomed;
    int held_fds;    /* fds in the unclaimed sets */
    int dead; /* sticky -errno: the stream cannot go on */
    int eof;  /* recvmsg returned 0 (or ECONNRESET) */
    uint32_t max_message;

    char *rbuf;
    size_t rcap, rpos, rend; /* unread bytes are rbuf[rpos:rend] */
    size_t direct_min;       /* longer frames are read into the caller's buffer */
    uint64_t rx_total;       /* stream offset of rbuf[rend] (bytes ever read) */
    char *scratch;
    size_t scap;

    /* a frame being read straight into rx_out */
    int rx_active;
    uint32_t rx_len, rx_flags;
    uint64_t rx_start;
    size_t rx_done;
    char *rx_out;
    size_t rx_cap; /* bytes rx_out holds: rx_len, or less for rx_own */
    char *rx_own;  /* our own buffer for a frame's first part (see RX_OWN_FROM) */

    /* fds */
    size_t max_fds;
    char *cbuf;
    size_t ccap;
    struct fdset sets[MAX_SETS];
    int set_head, nsets;
    int *pool;
    int *last; /* fds of the last frame received with keep_fds */
    int nlast;

    int64_t spin_ns; /* retry this long before sleeping in ppoll */
    uint64_t view_end; /* stream offset just past the last message lent as a view */
    uint32_t view_len; /* and its length (0: none yet) */

    /* sending */
    size_t tx_done;     /* bytes of the current frame already sent */
    uint64_t tx_frames; /* frames of the current batch completely sent */
    size_t tx_pos;      /* offset in the batch blob of that frame's item */
    struct iovec iov[BATCH_IOV];
    char *stage; /* STAGE_CAP bytes, allocated by the first batch */

    struct handoff_rx hrx; /* hand-off: the peer's area we read from (handoff.h) */
    int hrx_lock;          /* pid of the process whose thread touches hrx, 0: none (hrx_take) */
    struct handoff_tx htx; /* hand-off: our area */
};

/* This process's pid without a syscall each time (getpid() is one since
 * glibc 2.25, and hrx_take runs 2-3 times a hand-off message): read once,
 * forgotten in a child fork() makes. Each of the two modules built from
 * this file keeps its own copy; both hold the same pid. */
static int cached_pid;
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;
static void forget_pid(void) { __atomic_store_n(&cached_pid, 0, __ATOMIC_RELAXED); }
static void watch_pid_forks(void) { pthread_atfork(NULL, NULL, forget_pid); }
static int self_pid(void)
{
    int p = __atomic_load_n(&cached_pid, __ATOMIC_RELAXED);
    if (!p) {
        pthread_once(&pid_once, watch_pid_forks);
        p = (int)getpid();
        __atomic_store_n(&cached_pid, p, __ATOMIC_RELAXED);
    }
    return p;
}

/* hrx is touched by the receiving call (the holder of the Python RX turn,
 * the GIL released) and by fi_chan_release_view and the view pins, which
 * a recv_view block's thread calls at its end without the turn while
 * another thread may be receiving: unguarded, a release could be lost or
 * stored backwards, and a new area mapped by the receiver could be freed
 * under the other's read. Each holds this word around its few loads and
 * stores (or one mmap/munmap). It holds the holder's pid: a word inherited
 * held through fork() names another process, and is taken over (no
 * thread here will let it go). */
static void hrx_take(fi_chan *c)
{
    int me = self_pid();
    for (;;) {
        int v = 0;
        if (__atomic_compare_exchange_n(&c->hrx_lock, &v, me, 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            return;
        if (v != me && __atomic_compare_exchange_n(&c->hrx_lock, &v, me, 0, __ATOMIC_ACQUIRE,
                                                   __ATOMIC_RELAXED))
            return;
        sched_yield();
    }
}

static void hrx_give(fi_chan *c) { __atomic_store_n(&c->hrx_lock, 0, __ATOMIC_RELEASE); }

/* ---- helpers ---------------------------------------------------------- */

static void put_hdr(unsigned char *h, uint32_t len, uint32_t flags)
{
    memcpy(h, &len, 4); /* little-endian CPU, checked above */
    memcpy(h + 4, &flags, 4);
}

/* Wait until fd is ready for `events` or the deadline passes. POLLHUP and
 * POLLERR also end the wait: the retried call then reports what happened. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    struct timespec ts, *tsp = NULL;
    if (deadline >= 0) {
        int64_t left = deadline - mono_ns();
        if (left <= 0)
            return -ETIMEDOUT;
        ts.tv_sec = left / 1000000000;
        ts.tv_nsec = left % 1000000000;
        tsp = &ts;
    }
    struct pollfd p = {.fd = fd, .events = events, .revents = 0};
    int r = ppoll(&p, 1, tsp, NULL);
    if (r < 0)
        return -errno;
    return r == 0 ? -ETIMEDOUT : 0;
}

/* Close an fd that arrived and nobody will take. close() can block: on a
 * socket with SO_LINGER set and data unsent it waits out the linger time, so
 * a peer could pass such a socket to stall the receiver. Linger is turned
 * off first (the kernel still sends what is queued, in the background). */
static void close_received(int fd)
{
    struct linger lg;
    socklen_t len = sizeof lg;
    if (getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &len) == 0 && lg.l_onoff) {
        lg.l_onoff = 0;
        lg.l_linger = 0;
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(fd);
}

#define DOOMED_CAP (4 * MAX_FDS + 8)

/* Close received fds; inside a try call (which runs holding Python's GIL)
 * they wait in `doomed` for the next call that may block, so no close ever
 * stops the other threads. */
static void close_fds(fi_chan *c, const int *fds, int n)
{
    for (int i = 0; i < n; i++) {
        if (c->defer_close && c->ndoomed < DOOMED_CAP)
            c->doomed[c->ndoomed++] = fds[i];
        else
            close_received(fds[i]);
    }
}

static void flush_doomed(fi_chan *c)
{
    int n = c->ndoomed;
    c->ndoomed = 0;
    for (int i = 0; i < n; i++)
        close_received(c->doomed[i]);
}

static void drop_last(fi_chan *c)
{
    close_fds(c, c->last, c->nlast);
    c->nlast = 0;
}

static struct fdset *set_at(fi_chan *c, int i) { return &c->sets[(c->set_head + i) % MAX_SETS]; }

static void pop_set(fi_chan *c, int keep)
{
    struct fdset *s = set_at(c, 0);
    if (keep && s->n > 0) {
        drop_last(c);
        memcpy(c->last, s->fds, (size_t)s->n * sizeof(int));
        c->nlast = s->n;
    } else if (s->n > 0) {
        close_fds(c, s->fds, s->n);
    }
    if (s->n > 0)
        c->held_fds -= s->n;
    s->n = 0;
    c->set_head = (c->set_head + 1) % MAX_SETS;
    c->nsets--;
}

/* Record the fds a recvmsg brought with stream bytes [lo, hi). */
static int take_cmsgs(fi_chan *c, struct msghdr *m, uint64_t lo, uint64_t hi)
{
    int rc = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm; cm = CMSG_NXTHDR(m, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t bytes = cm->cmsg_len > CMSG_LEN(0) ? cm->cmsg_len - CMSG_LEN(0) : 0;
        int n = (int)(bytes / sizeof(int));
        int *fds = (int *)CMSG_DATA(cm);
        if (n > (int)c->max_fds) /* cannot happen with our control buffer; be safe */
            n = (int)c->max_fds;
        /* fds ride only on a frame's first byte, so a set that arrives
         * while a long frame is read straight into its destination, past
         * that frame's start, belongs to no frame. And an honest peer
         * leaves at most two sets unclaimed (the frame being completed and
         * the next one, whose first byte came with the last read): more
         * sets, or more fds than two frames may carry, is a peer hoarding
         * our fd table. Refuse both: close everything held. */
        int orphan = c->rx_active && lo > c->rx_start;
        if (orphan || c->nsets == MAX_SETS || c->held_fds + n > 2 * (int)c->max_fds) {
            int tmp[MAX_FDS];
            memcpy(tmp, fds, (size_t)n * sizeof(int));
            close_fds(c, tmp, n);
            while (c->nsets > 0)
                pop_set(c, 0);
            c->dead = rc = -EPROTO;
            continue;
        }
        struct fdset *s = set_at(c, c->nsets);
        memcpy(s->fds, fds, (size_t)n * sizeof(int));
        s->n = n;
        s->lo = lo;
        s->hi = hi;
        c->nsets++;
        c->held_fds += n;
    }
    if (m->msg_flags & MSG_CTRUNC) {
        /* Some fds did not fit (the kernel closed those): close the ones that
         * did and mark the set so the frame reports it. */
        if (c->nsets > 0 && set_at(c, c->nsets - 1)->lo == lo) {
            struct fdset *s = set_at(c, c->nsets - 1);
            close_fds(c, s->fds, s->n);
            c->held_fds -= s->n;
            s->n = -1;
        } else if (c->nsets < MAX_SETS) {
            struct fdset *s = set_at(c, c->nsets++);
            s->n = -1;
            s->lo = lo;
            s->hi = hi;
        }
    }
    return rc;
}

/* One recvmsg into p[0:n]: bytes read, 0 at end of stream, or -errno. */
static int64_t rx_read(fi_chan *c, char *p, size_t n)
{
    struct iovec iov = {.iov_base = p, .iov_len = n};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = c->cbuf;
    /* CMSG_LEN, not the buffer's CMSG_SPACE: the kernel installs as many
     * fds as the length has room for, and the padding of CMSG_SPACE would
     * let one more than max_fds in, unseen (found by fuzz/chan_frames). */
    m.msg_controllen = CMSG_LEN(c->max_fds * sizeof(int));
    ssize_t got = recvmsg(c->fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (got < 0) {
        if (errno != ECONNRESET)
            return -errno;
        c->eof = 1; /* the peer went away with data unread: the end of the stream */
        return 0;
    }
    int rc = 0;
    if (m.msg_controllen > 0 || (m.msg_flags & MSG_CTRUNC))
        rc = take_cmsgs(c, &m, c->rx_total, c->rx_total + (uint64_t)got);
    c->rx_total += (uint64_t)got;
    if (got == 0)
        c->eof = 1;
    return rc ? rc : got;
}

/* Read more into the receive buffer so that it can hold `need` bytes from rpos. */
static int64_t fill(fi_chan *c, size_t need)
{
    if (c->rpos == c->rend) {
        c->rpos = c->rend = 0;
    } else if (c->rpos > 0 && (c->rpos + need > c->rcap || c->rend > c->rcap - c->rcap / 8)) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rend - c->rpos);
        c->rend -= c->rpos;
        c->rpos = 0;
    }
    if (c->rend == c->rcap)
        return -EOVERFLOW; /* cannot happen: frames over direct_min never wait in rbuf */
    int64_t got = rx_read(c, c->rbuf + c->rend, c->rcap - c->rend);
    if (got > 0)
        c->rend += (size_t)got;
    return got;
}

/* Whether the oldest set is the fds of the frame in stream bytes [start,
 * end): a recvmsg stops right after the skb that carries fds, the first of
 * the sendmsg that sent them, so a set belongs to the frame holding its
 * read's last byte (hi - 1), not to any frame that merely began in that read. */
static int set_is_frames(fi_chan *c, uint64_t start, uint64_t end)
{
    struct fdset *s = set_at(c, 0);
    return c->nsets > 0 && s->lo <= start && s->hi - 1 >= start && s->hi - 1 < end;
}

/* The frame in stream bytes [start, end) is complete: settle its fds. */
static int claim_fds(fi_chan *c, uint64_t start, uint64_t end, uint32_t flags, int keep)
{
    drop_last(c);
    while (c->nsets > 0 && set_at(c, 0)->hi <= start)
        pop_set(c, 0); /* sent without the flag: nobody's, close them */
    if (!(flags & FRAME_FDS))
        return 0;
    if (!set_is_frames(c, start, end))
        return c->dead = -EPROTO; /* flagged, but no fds came with it */
    int truncated = set_at(c, 0)->n < 0;
    pop_set(c, keep);
    return truncated ? -ENOBUFS : 0;
}

/* Whether settling the fds of the frame that started at `start` closes any
 * (then a try call leaves the frame for a call that may block). */
static int would_close(fi_chan *c, uint64_t start, uint32_t flags, int keep)
{
    if (!c->defer_close)
        return 0;
    if (c->nlast > 0 || (flags & FRAME_AREA) || ((flags & FRAME_FDS) && !keep))
        return 1;
    for (int i = 0; i < c->nsets && set_at(c, i)->hi <= start; i++)
        if (set_at(c, i)->n > 0)
            return 1;
    return 0;
}

/* Bytes of a frame's payload on the wire. */
static size_t wire_len(uint32_t len, uint32_t flags)
{
    return flags & FRAME_BULK ? HANDOFF_DESC : len;
}

/* Locate the message of the FRAME_BULK frame that started at stream offset
 * `start`, whose descriptor is at d: take a new area if it brought one and
 * check the descriptor; *src gets the message in the area, *rel its release
 * position. Its fds are settled here (an area frame carries no others). */
static int bulk_locate(fi_chan *c, uint64_t start, uint32_t len, uint32_t flags,
                       const char *d, const char **src, uint64_t *rel)
{
    drop_last(c);
    while (c->nsets > 0 && set_at(c, 0)->hi <= start)
        pop_set(c, 0);
    if (flags & FRAME_AREA) {
        if (!set_is_frames(c, start, start + HDR + HANDOFF_DESC))
            return c->dead = -EPROTO;
        struct fdset *s = set_at(c, 0);
        int fd = -1;
        if (s->n == 1) {
            fd = s->fds[0];
            s->n = 0; /* ours now */
            c->held_fds -= 1;
        }
        pop_set(c, 0);
        if (fd < 0)
            return c->dead = -EPROTO;
        int rc = fi_handoff_map(&c->hrx, fd);
        close_fds(c, &fd, 1);
        if (rc)
            return c->dead = rc;
    }
    int rc = fi_handoff_locate(&c->hrx, d, len, src, rel);
    return rc ? (c->dead = rc) : 0;
}

/* Deliver a FRAME_BULK frame into out: locate, copy, release. */
static int bulk_take(fi_chan *c, uint64_t start, uint32_t len, uint32_t flags,
                     const char *d, char *out)
{
    const char *src;
    uint64_t rel;
    hrx_take(c);
    int rc = bulk_locate(c, start, len, flags, d, &src, &rel);
    hrx_give(c);
    if (rc)
        return rc;
    /* src is in the current area: only this (turn-holding) call replaces it. */
    memcpy(out, src, len);
    hrx_take(c);
    fi_handoff_release(&c->hrx, rel);
    hrx_give(c);
    return 0;
}

/* The header at rpos (>= HDR bytes buffered): its length and flags, or a sticky error. */
static int parse_hdr(fi_chan *c, uint32_t *len, uint32_t *flags)
{
    memcpy(len, c->rbuf + c->rpos, 4);
    memcpy(flags, c->rbuf + c->rpos + 4, 4);
    if (*flags & ~KNOWN_FLAGS)
        return c->dead = -EPROTO;
    /* An area comes only with a descriptor, and a descriptor's fds only with an area. */
    if ((*flags & FRAME_AREA) ? (*flags & (FRAME_BULK | FRAME_FDS)) != (FRAME_BULK | FRAME_FDS)
                              : (*flags & FRAME_BULK) && (*flags & FRAME_FDS))
        return c->dead = -EPROTO;
    if (*len > c->max_message)
        return c->dead = -EFBIG;
    return 0;
}

/* The stream ended: clean at a frame boundary, or in the middle of one. */
static int64_t at_eof(fi_chan *c)
{
    c->dead = (c->rend == c->rpos && !c->rx_active) ? -EPIPE : -ENODATA;
    return c->dead;
}

/* Continue the frame being read straight into out. */
static int64_t recv_direct(fi_chan *c, int keep)
{
    while (c->rx_done < c->rx_cap) {
        if (c->eof)
            return at_eof(c);
        int64_t got = rx_read(c, c->rx_out + c->rx_done, c->rx_cap - c->rx_done);
        if (got < 0)
            return got; /* -EAGAIN etc.: the progress stays for the next call */
        c->rx_done += (size_t)got;
        if (c->ndoomed && c->defer_close)
            return -EXDEV;
    }
    if (c->rx_done < c->rx_len)
        return -ENOBUFS; /* rx_own is full: the caller adopts it into a whole buffer */
    if (would_close(c, c->rx_start, c->rx_flags, keep))
        return -EXDEV;
    c->rx_active = 0;
    int rc = claim_fds(c, c->rx_start, c->rx_start + HDR + c->rx_len, c->rx_flags, keep);
    return rc ? rc : (int64_t)c->rx_len;
}

/* Deliver the next frame into out[0:cap] without waiting; -EAGAIN if it is not all here. */
static int64_t recv_step(fi_chan *c, char *out, size_t cap, int keep)
{
    if (c->dead)
        return c->dead;
    if (c->rx_active) {
        if (out != c->rx_out && !(out == NULL && c->rx_out == c->rx_own))
            return -EINPROGRESS;
        return recv_direct(c, keep);
    }
    for (;;) {
        size_t avail = c->rend - c->rpos;
        size_t need = HDR;
        if (avail >= HDR) {
            uint32_t len, flags;
            int rc = parse_hdr(c, &len, &flags);
            if (rc)
                return rc;
            size_t wire = wire_len(len, flags);
            /* out NULL: only a frame long enough to start in rx_own (below) */
            if (len > cap && (out || len <= RX_OWN_FROM || avail - HDR >= wire))
                return -EMSGSIZE;
            if (avail - HDR >= wire) {
                uint64_t start = c->rx_total - avail;
                if (would_close(c, start, flags, keep))
                    return -EXDEV;
                const char *payload = c->rbuf + c->rpos + HDR;
                c->rpos += HDR + wire;
                if (flags & FRAME_BULK) {
                    rc = bulk_take(c, start, len, flags, payload, out);
                } else {
                    if (len)
                        memcpy(out, payload, len);
                    rc = claim_fds(c, start, start + HDR + wire, flags, keep);
                }
                return rc ? rc : (int64_t)len;
            }
            if (wire > c->direct_min) {
                size_t have = avail - HDR, room = len;
                if (!out) {
                    /* wire == len here: a frame over RX_OWN_FROM is no descriptor */
                    room = len / RX_OWN_PART > have ? len / RX_OWN_PART : have;
                    if (!(out = c->rx_own = malloc(room)))
                        return -ENOMEM;
                }
                c->rx_active = 1;
                c->rx_len = len;
                c->rx_flags = flags;
                c->rx_start = c->rx_total - avail;
                c->rx_out = out;
                c->rx_cap = room;
                c->rx_done = have;
                memcpy(out, c->rbuf + c->rpos + HDR, have);
                c->rpos = c->rend = 0;
                return recv_direct(c, keep);
            }
            need = HDR + wire;
        }
        if (c->eof)
            return at_eof(c);
        int64_t got = fill(c, need);
        if (got < 0)
            return got;
        if (c->ndoomed && c->defer_close)
            return -EXDEV; /* fds to close came with that read */
    }
}

/* Lend the next frame in place if it is a hand-off (its message stays in
 * the area until fi_chan_release_view); -ENOMSG if it is not. */
static int64_t recv_view_step(fi_chan *c, char *out, size_t cap, size_t unused)
{
    (void)unused;
    if (c->dead)
        return c->dead;
    if (c->rx_active)
        return -ENOMSG; /* a long inline frame is being read */
    hrx_take(c);
    int held = c->hrx.view_held;
    hrx_give(c);
    if (held)
        return -EBUSY;
    for (;;) {
        size_t avail = c->rend - c->rpos;
        if (avail >= HDR) {
            uint32_t len, flags;
            int rc = parse_hdr(c, &len, &flags);
            if (rc)
                return rc;
            if (!(flags & FRAME_BULK))
                return -ENOMSG;
            if (avail - HDR >= HANDOFF_DESC) {
                uint64_t start = c->rx_total - avail, rel;
                const char *d = c->rbuf + c->rpos + HDR, *src;
                c->rpos += HDR + HANDOFF_DESC;
                hrx_take(c);
                rc = bulk_locate(c, start, len, flags, d, &src, &rel);
                if (!rc)
                    fi_handoff_lend(&c->hrx, rel);
                hrx_give(c);
                if (rc)
                    return rc;
                *(const char **)(void *)out = src;
                (void)cap;
                c->view_end = start + HDR + HANDOFF_DESC;
                c->view_len = len;
                return len;
            }
        }
        if (c->eof)
            return at_eof(c);
        int64_t got = fill(c, HDR + HANDOFF_DESC);
        if (got < 0)
            return got;
    }
}

/* Cut up to max_count complete frames into a marshal list at out; read the
 * socket only if no frame is complete. */
static int64_t recv_batch_step(fi_chan *c, char *out, size_t cap, size_t max_count)
{
    if (c->dead)
        return c->dead;
    if (c->rx_active)
        return -EINPROGRESS;
    if (cap < 10)
        return -EMSGSIZE;
    uint32_t len, flags;
    for (;;) {
        size_t avail = c->rend - c->rpos;
        size_t need = HDR;
        if (avail >= HDR) {
            int rc = parse_hdr(c, &len, &flags);
            if (rc)
                return rc;
            if ((uint64_t)len + 10 > cap || len > c->direct_min || (flags & FRAME_BULK))
                return -EMSGSIZE; /* received alone */
            if (avail - HDR >= len)
                break;
            need = HDR + len;
        }
        if (c->eof)
            return at_eof(c);
        int64_t got = fill(c, need);
        if (got < 0)
            return got;
        if (c->ndoomed && c->defer_close)
            return -EXDEV; /* fds to close came with that read */
    }
    char *w = out + 5;
    uint32_t count = 0;
    for (;;) {
        size_t avail = c->rend - c->rpos;
        uint64_t start = c->rx_total - avail;
        if (count > 0 && (flags & FRAME_FDS))
            break; /* a frame with fds heads the next batch, so an error is its own */
        if (would_close(c, start, flags, 0)) {
            if (count == 0)
                return -EXDEV;
            break;
        }
        char *next = batch_put(w, c->rbuf + c->rpos + HDR, len);
        c->rpos += HDR + len;
        int rc = claim_fds(c, start, start + HDR + len, flags, 0);
        if (rc) {
            if (count == 0)
                return rc;
            break; /* cannot happen (flagged frames are first); keep what we have */
        }
        w = next;
        if (++count == max_count || count == UINT32_MAX)
            break;
        avail = c->rend - c->rpos;
        if (avail < HDR)
            break;
        memcpy(&len, c->rbuf + c->rpos, 4);
        memcpy(&flags, c->rbuf + c->rpos + 4, 4);
        /* A bad or incomplete frame ends the batch; the next call reports or waits. */
        if ((flags & ~FRAME_FDS) || len > c->max_message || avail - HDR < len ||
            (uint64_t)(out + cap - w) < (uint64_t)len + 5)
            break;
    }
    batch_close(out, count);
    return w - out;
}

/* Send (the rest of) one frame: a header announcing `len` bytes with
 * `flags`, then the n bytes at buf; -EAGAIN with the progress kept. */
static int send_step(fi_chan *c, uint32_t len, uint32_t flags, const void *buf, size_t n,
                     const int *fds, size_t nfds)
{
    unsigned char hdr[HDR];
    union {
        char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    put_hdr(hdr, len, flags);
    size_t total = HDR + n;
    while (c->tx_done < total) {
        struct iovec iov[2];
        struct msghdr m;
        memset(&m, 0, sizeof m);
        size_t done = c->tx_done;
        int k = 0;
        if (done < HDR) {
            iov[k].iov_base = hdr + done;
            iov[k++].iov_len = HDR - done;
            if (n) {
                iov[k].iov_base = (void *)buf;
                iov[k++].iov_len = n;
            }
        } else {
            iov[k].iov_base = (char *)buf + (done - HDR);
            iov[k++].iov_len = total - done;
        }
        m.msg_iov = iov;
        m.msg_iovlen = (size_t)k;
        if (done == 0 && nfds) {
            m.msg_control = ctl.buf;
            m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
            struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
            memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
        }
        ssize_t w = sendmsg(c->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0)
            return errno == ECONNRESET ? -EPIPE : -errno;
        c->tx_done += (size_t)w;
    }
    c->tx_done = 0;
    return 0;
}

/* Send (the rest of) one message: through the area when it qualifies, else inline. */
static int send_msg(fi_chan *c, const void *buf, size_t n, const int *fds, size_t nfds,
                    int64_t wait_until)
{
    struct handoff_tx *t = &c->htx;
    if (!t->bulk && c->tx_done == 0 && nfds == 0 && handoff_wants(t, n))
        fi_handoff_put(t, buf, n, wait_until);
    if (!t->bulk)
        return send_step(c, (uint32_t)n, nfds ? FRAME_FDS : 0, buf, n, fds, nfds);
    int afd = t->area_fd;
    uint32_t flags = FRAME_BULK | (afd >= 0 ? FRAME_AREA | FRAME_FDS : 0);
    int rc = send_step(c, (uint32_t)n, flags, t->desc, HANDOFF_DESC, &afd, afd >= 0 ? 1 : 0);
    if (rc == 0)
        fi_handoff_sent(t);
    return rc;
}

/* Send the rest of a validated batch of `count` frames; -EAGAIN with progress kept.
 *
 * Small frames are copied, header and payload, into the staging buffer: the
 * kernel copies one long segment far faster than many short ones (2000
 * iovecs of 8 and 64 bytes: 78 us; the same 72 KB staged: 9 us, measured
 * here). A payload of STAGE_MAX bytes or more gets an iovec of its own
 * instead, so a large message is never copied twice. After a partial write
 * the next call re-stages from the blob, which is still the caller's. */
static int send_batch_step(fi_chan *c, const char *blob, size_t len, uint64_t count)
{
    const char *end = blob + len;
    while (c->tx_frames < count) {
        const char *p = blob + c->tx_pos, *data = NULL;
        uint32_t n = 0;
        int k = 0;
        size_t used = 0, run = 0; /* stage[run:used] is not yet in an iovec */
        for (uint64_t f = 0; c->tx_frames + f < count && k + 3 <= BATCH_IOV; f++) {
            const char *item = p;
            if (batch_item(&p, end, &data, &n)) /* validated before the first send */
                return -EINVAL;
            unsigned char hdr[HDR];
            put_hdr(hdr, n, 0);
            size_t skip = f == 0 ? c->tx_done : 0;
            size_t hskip = skip < HDR ? skip : HDR, pskip = skip - hskip;
            if (n < STAGE_MAX) {
                if (used + HDR + n > STAGE_CAP) {
                    p = item;
                    break;
                }
                memcpy(c->stage + used, hdr + hskip, HDR - hskip);
                used += HDR - hskip;
                memcpy(c->stage + used, data + pskip, n - pskip);
                used += n - pskip;
            } else {
                if (used + HDR > STAGE_CAP) {
                    p = item;
                    break;
                }
                memcpy(c->stage + used, hdr + hskip, HDR - hskip);
                used += HDR - hskip;
                if (used > run) {
                    c->iov[k].iov_base = c->stage + run;
                    c->iov[k++].iov_len = used - run;
                    run = used;
                }
                c->iov[k].iov_base = (char *)data + pskip;
                c->iov[k++].iov_len = n - pskip;
            }
        }
        if (used > run) {
            c->iov[k].iov_base = c->stage + run;
            c->iov[k++].iov_len = used - run;
        }
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_iov = c->iov;
        m.msg_iovlen = (size_t)k;
        ssize_t w = sendmsg(c->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0)
            return errno == ECONNRESET ? -EPIPE : -errno;
        size_t left = (size_t)w;
        p = blob + c->tx_pos;
        while (left > 0) {
            if (batch_item(&p, end, &data, &n))
                return -EINVAL;
            size_t rest = HDR + n - c->tx_done;
            if (left < rest) {
                c->tx_done += left;
                break;
            }
            left -= rest;
            c->tx_done = 0;
            c->tx_frames++;
            c->tx_pos = (size_t)(p - blob);
        }
    }
    return 0;
}

/* ---- public: lifetime ------------------------------------------------- */

/* Free what the open handle holds (refs reached 0): buffers, fds, areas, the dup. */
static void release_all(fi_chan *c)
{
    c->defer_close = 0;
    if (c->doomed)
        flush_doomed(c);
    while (c->nsets > 0)
        pop_set(c, 0);
    if (c->last)
        drop_last(c);
    free(c->rbuf);
    free(c->cbuf);
    free(c->pool);
    free(c->last);
    free(c->stage);
    free(c->doomed);
    free(c->rx_own);
    c->rbuf = c->cbuf = c->stage = c->rx_own = NULL;
    c->pool = c->last = c->doomed = NULL;
    fi_handoff_rx_free(&c->hrx);
    fi_handoff_tx_free(&c->htx);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static void leave(fi_chan *c)
{
    if (ref_put(&c->refs))
        release_all(c);
}

/* Count this thread in for a call: -EBADF once closed (see struct fi_chan). */
static int enter(fi_chan *c)
{
    if (!c || ref_get(&c->refs))
        return -EBADF;
    if (__atomic_load_n(&c->closed, __ATOMIC_SEQ_CST)) {
        leave(c);
        return -EBADF;
    }
    return 0;
}

static inline int is_closed_chan(fi_chan *c) { return __atomic_load_n(&c->closed, __ATOMIC_RELAXED); }

int fi_chan_new(int fd, size_t rbuf_size, uint32_t max_message, size_t max_fds, fi_chan **out)
{
    if (fd < 0 || rbuf_size < 64 || max_fds < 1 || max_fds > MAX_FDS)
        return -EINVAL;
    fi_chan *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->refs = 1;
    handoff_tx_init(&c->htx);
    c->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (c->fd < 0) {
        int rc = -errno;
        free(c);
        return rc;
    }
    c->max_message = max_message;
    c->rcap = rbuf_size;
    c->direct_min = rbuf_size / 2 < DIRECT_MAX ? rbuf_size / 2 : DIRECT_MAX;
    c->max_fds = max_fds;
    c->ccap = CMSG_SPACE(max_fds * sizeof(int));
    c->rbuf = malloc(rbuf_size);
    c->cbuf = malloc(c->ccap);
    c->pool = malloc(MAX_SETS * max_fds * sizeof(int));
    c->last = malloc(max_fds * sizeof(int));
    c->doomed = malloc(DOOMED_CAP * sizeof(int));
    if (!c->rbuf || !c->cbuf || !c->pool || !c->last || !c->doomed) {
        fi_chan_free(c);
        return -ENOMEM;
    }
    for (int i = 0; i < MAX_SETS; i++)
        c->sets[i].fds = c->pool + (size_t)i * max_fds;
    *out = c;
    return 0;
}

int fi_chan_close(fi_chan *c)
{
    if (!c || __atomic_exchange_n(&c->closed, 1, __ATOMIC_SEQ_CST))
        return 0;
    uint32_t left = __atomic_sub_fetch(&c->refs, 1, __ATOMIC_SEQ_CST);
    if (left == 0)
        release_all(c);
    return (int)left;
}

void fi_chan_free(fi_chan *c)
{
    if (!c)
        return;
    fi_chan_close(c);
    /* A call still counted would use the struct later: keep it (a leak). */
    if (__atomic_load_n(&c->refs, __ATOMIC_SEQ_CST) == 0)
        free(c);
}

fi_area *fi_chan_view_pin(fi_chan *c)
{
    if (enter(c))
        return NULL;
    hrx_take(c);
    fi_area *a = fi_handoff_pin(&c->hrx);
    hrx_give(c);
    leave(c);
    return a;
}

int fi_chan_view_pin_into(fi_chan *c, fi_pin *pin)
{
    if (!pin || pin->ring || pin->area)
        return -EINVAL;
    if (enter(c))
        return -EBADF;
    hrx_take(c);
    fi_area *a = fi_handoff_pin(&c->hrx);
    hrx_give(c);
    leave(c);
    if (!a)
        return -ENOENT;
    pin->area = a;
    return 0;
}

void fi_chan_set_spin(fi_chan *c, int64_t spin_ns) { c->spin_ns = spin_ns < 0 ? 0 : spin_ns; }

static int set_handoff_body(fi_chan *c, size_t min_len, size_t area_size)
{
    if (!c)
        return -EBADF;
    return fi_handoff_config(&c->htx, min_len, area_size);
}

void fi_chan_set_scratch(fi_chan *c, char *buf, size_t cap)
{
    c->scratch = buf;
    c->scap = cap;
}

static int pending_body(fi_chan *c)
{
    if (!c)
        return 0;
    size_t avail = c->rend - c->rpos;
    uint32_t len, flags;
    if (c->rx_active || avail < HDR)
        return 0;
    memcpy(&len, c->rbuf + c->rpos, 4);
    memcpy(&flags, c->rbuf + c->rpos + 4, 4);
    return avail - HDR >= wire_len(len, flags);
}

static int64_t next_len_body(fi_chan *c)
{
    uint32_t len;
    if (!c)
        return -EBADF;
    if (c->rx_active)
        return c->rx_len;
    if (c->rend - c->rpos < HDR)
        return -EAGAIN;
    memcpy(&len, c->rbuf + c->rpos, 4);
    return len;
}

static int64_t rx_partial_body(fi_chan *c) { return c && c->rx_active ? (int64_t)c->rx_done : -1; }

static int64_t buffered_body(fi_chan *c)
{
    if (!c)
        return 0;
    /* A mapped area counts: the peer's next descriptors point into it. */
    return (int64_t)(c->rend - c->rpos) + (c->rx_active ? 1 : 0) + c->nsets + c->nlast +
           (c->hrx.area ? 1 : 0);
}

static int rx_adopt_body(fi_chan *c, const char *from, char *to)
{
    if (!c || !c->rx_active || c->rx_out != (from ? from : c->rx_own) || !c->rx_out)
        return 0;
    memcpy(to, c->rx_out, c->rx_done);
    c->rx_out = to;
    c->rx_cap = c->rx_len;
    free(c->rx_own);
    c->rx_own = NULL;
    return 1;
}

static int rx_owned_body(fi_chan *c) { return c && c->rx_active && c->rx_out == c->rx_own; }

static int64_t tx_partial_body(fi_chan *c) { return c ? (int64_t)c->tx_done : 0; }

static int64_t tx_frames_body(fi_chan *c) { return c ? (int64_t)c->tx_frames : 0; }

static void tx_reset_body(fi_chan *c)
{
    c->tx_done = 0;
    c->tx_frames = 0;
    c->tx_pos = 0;
    c->htx.bulk = 0; /* its area space is freed with the next message's release */
}

static int take_fds_body(fi_chan *c, int *out, size_t cap)
{
    if (!c)
        return -EBADF;
    int n = c->nlast < (int)cap ? c->nlast : (int)cap;
    memcpy(out, c->last, (size_t)n * sizeof(int));
    close_fds(c, c->last + n, c->nlast - n);
    c->nlast = 0;
    return n;
}

/* ---- public: non-blocking --------------------------------------------- */

static int try_send_body(fi_chan *c, const void *buf, size_t n)
{
    if (!c)
        return -EBADF;
    if (n > c->max_message)
        return -EMSGSIZE;
    return send_msg(c, buf, n, NULL, 0, 0); /* holds the GIL: never waits for room */
}


/* ---- public: waiting --------------------------------------------------- */

static int send_body(fi_chan *c, const void *buf, size_t n, const int *fds, size_t nfds,
                 int64_t timeout_ns)
{
    if (!c)
        return -EBADF;
    if (n > c->max_message)
        return -EMSGSIZE;
    if (nfds > MAX_FDS)
        return -EINVAL;
    int64_t deadline = deadline_of(timeout_ns);
    int64_t room_until = mono_ns() + HANDOFF_WAIT_NS;
    if (deadline >= 0 && deadline < room_until)
        room_until = deadline;
    for (;;) {
        int rc = send_msg(c, buf, n, fds, nfds, room_until);
        if (rc != -EAGAIN || timeout_ns == 0)
            return rc;
        rc = wait_fd(c->fd, POLLOUT, deadline);
        if (rc)
            return rc;
        if (is_closed_chan(c))
            return -EBADF;
    }
}

static int64_t send_batch_body(fi_chan *c, const char *blob, size_t len, int64_t timeout_ns)
{
    const char *p, *end = blob + len, *data;
    if (!c)
        return -EBADF;
    int64_t count = batch_count(blob, len, &p);
    if (count < 0)
        return count;
    if (c->tx_frames == 0 && c->tx_done == 0) {
        /* A fresh batch: check every item before sending any. */
        uint32_t n;
        int too_large = 0;
        for (int64_t i = 0; i < count; i++) {
            if (batch_item(&p, end, &data, &n))
                return -EINVAL;
            too_large |= n > c->max_message;
        }
        if (too_large)
            return -EMSGSIZE;
        if (!c->stage && !(c->stage = malloc(STAGE_CAP)))
            return -ENOMEM;
        c->tx_pos = 5;
    }
    int64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        int rc = send_batch_step(c, blob, len, (uint64_t)count);
        if (rc == 0) {
            fi_chan_tx_reset(c);
            return count;
        }
        if (rc != -EAGAIN || timeout_ns == 0)
            return rc;
        rc = wait_fd(c->fd, POLLOUT, deadline);
        if (rc)
            return rc;
        if (is_closed_chan(c))
            return -EBADF;
    }
}

/* Before the first sleep of a receive, retry for spin_ns: a peer that keeps
 * sending is met without a sleep, and its sendmsg need not wake us (a
 * wake-up costs 20-35 us on these VMs; benchmarks/RESULTS.md).
 *
 * Right after a message lent as a view, the wait is stretched to the time
 * the sender needs to copy the next such message into its area (len bytes
 * at VIEW_SPIN_RATE), at most VIEW_SPIN_MAX_NS. A view costs the receiver
 * nearly nothing, so it is back waiting at once, and with the plain 20 us
 * it slept before every large message and the sender paid a wake-up in each
 * sendmsg: a fifth of the sender's time in perf, and 1 MiB recv_view
 * streams ran 18% faster stretched (median of 8 interleaved pairs, better
 * in 8 of 8). Receivers that copy (recv, recv_into) keep the plain spin:
 * stretched, their 1 MiB streams ran slower in 7 of 8 pairs, as did a
 * longer FASTIPC_SPIN_US in earlier runs; the copying receiver is the
 * slower side there, and is seldom left waiting. */
static int spin_end(fi_chan *c, int64_t deadline, int64_t *until)
{
    int64_t spin = c->spin_ns;
    if (spin <= 0)
        return 0;
    if (c->view_len && c->rx_total - (c->rend - c->rpos) == c->view_end) {
        int64_t stretch = (int64_t)(c->view_len / VIEW_SPIN_RATE);
        if (stretch > VIEW_SPIN_MAX_NS)
            stretch = VIEW_SPIN_MAX_NS;
        if (stretch > spin)
            spin = stretch;
    }
    *until = mono_ns() + spin;
    if (deadline >= 0 && deadline < *until)
        *until = deadline;
    return 1;
}

/* Run a receive step until it has something other than -EAGAIN, spinning
 * first and then sleeping in ppoll, until the deadline. */
typedef int64_t (*recv_step_fn)(fi_chan *c, char *out, size_t cap, size_t arg);

static int64_t recv_waiting(fi_chan *c, recv_step_fn step, char *out, size_t cap, size_t arg,
                            int64_t timeout_ns)
{
    int64_t deadline = deadline_of(timeout_ns), until = 0;
    int spinning = timeout_ns != 0 && spin_end(c, deadline, &until);
    for (;;) {
        int64_t rc = step(c, out, cap, arg);
        if (rc != -EAGAIN || timeout_ns == 0)
            return rc;
        if (spinning) {
            cpu_relax();
            spinning = mono_ns() < until;
            continue;
        }
        rc = wait_fd(c->fd, POLLIN, deadline);
        if (rc)
            return rc;
        if (is_closed_chan(c))
            return -EBADF;
    }
}

static int64_t recv_one_step(fi_chan *c, char *out, size_t cap, size_t keep_fds)
{
    return recv_step(c, out, cap, keep_fds != 0);
}

static int64_t recv_body(fi_chan *c, char *out, size_t cap, int keep_fds, int64_t timeout_ns)
{
    if (!c)
        return -EBADF;
    flush_doomed(c); /* fds a try call left to close */
    return recv_waiting(c, recv_one_step, out, cap, (size_t)(keep_fds != 0), timeout_ns);
}

static int64_t recv_view_body(fi_chan *c, const char **ptr, int64_t timeout_ns)
{
    if (!c)
        return -EBADF;
    flush_doomed(c); /* fds a try call left to close */
    return recv_waiting(c, recv_view_step, (char *)(void *)ptr, sizeof *ptr, 0, timeout_ns);
}

static int release_view_body(fi_chan *c)
{
    if (!c)
        return -EBADF;
    hrx_take(c);
    int rc = fi_handoff_unlend(&c->hrx);
    hrx_give(c);
    return rc;
}

static int64_t recv_batch_body(fi_chan *c, char *out, size_t cap, size_t max_count,
                           int64_t timeout_ns)
{
    if (!c)
        return -EBADF;
    flush_doomed(c); /* fds a try call left to close */
    if (max_count == 0)
        return -EINVAL;
    return recv_waiting(c, recv_batch_step, out, cap, max_count, timeout_ns);
}

/* ---- public: every call counts itself in (see struct fi_chan, refs.h) --- */

int fi_chan_set_handoff(fi_chan *c, size_t min_len, size_t area_size)
{
    COUNTED_CALL(c, enter, leave, -EBADF, set_handoff_body(c, min_len, area_size));
}

int fi_chan_pending(fi_chan *c)
{
    COUNTED_CALL(c, enter, leave, 0, pending_body(c));
}

int64_t fi_chan_next_len(fi_chan *c)
{
    COUNTED_CALL(c, enter, leave, -EBADF, next_len_body(c));
}

int64_t fi_chan_rx_partial(fi_chan *c)
{
    COUNTED_CALL(c, enter, leave, -1, rx_partial_body(c));
}

int64_t fi_chan_buffered(fi_chan *c)
{
    COUNTED_CALL(c, enter, leave, 0, buffered_body(c));
}

int fi_chan_rx_adopt(fi_chan *c, const char *from, char *to)
{
    COUNTED_CALL(c, enter, leave, 0, rx_adopt_body(c, from, to));
}

int fi_chan_rx_owned(fi_chan *c)
{
    COUNTED_CALL(c, enter, leave, 0, rx_owned_body(c));
}

int64_t fi_chan_tx_partial(fi_chan *c)
{
    COUNTED_CALL(c, enter, leave, 0, tx_partial_body(c));
}

int64_t fi_chan_tx_frames(fi_chan *c)
{
    COUNTED_CALL(c, enter, leave, 0, tx_frames_body(c));
}

int fi_chan_take_fds(fi_chan *c, int *out, size_t cap)
{
    COUNTED_CALL(c, enter, leave, -EBADF, take_fds_body(c, out, cap));
}

int fi_chan_try_send(fi_chan *c, const void *buf, size_t n)
{
    COUNTED_CALL(c, enter, leave, -EBADF, try_send_body(c, buf, n));
}

int fi_chan_send(fi_chan *c, const void *buf, size_t n, const int *fds, size_t nfds,
                 int64_t timeout_ns)
{
    COUNTED_CALL(c, enter, leave, -EBADF, send_body(c, buf, n, fds, nfds, timeout_ns));
}

int64_t fi_chan_send_batch(fi_chan *c, const char *blob, size_t len, int64_t timeout_ns)
{
    COUNTED_CALL(c, enter, leave, -EBADF, send_batch_body(c, blob, len, timeout_ns));
}

int64_t fi_chan_recv(fi_chan *c, char *out, size_t cap, int keep_fds, int64_t timeout_ns)
{
    COUNTED_CALL(c, enter, leave, -EBADF, recv_body(c, out, cap, keep_fds, timeout_ns));
}

int64_t fi_chan_recv_view(fi_chan *c, const char **ptr, int64_t timeout_ns)
{
    COUNTED_CALL(c, enter, leave, -EBADF, recv_view_body(c, ptr, timeout_ns));
}

int fi_chan_release_view(fi_chan *c)
{
    COUNTED_CALL(c, enter, leave, -EBADF, release_view_body(c));
}

int64_t fi_chan_recv_batch(fi_chan *c, char *out, size_t cap, size_t max_count,
                           int64_t timeout_ns)
{
    COUNTED_CALL(c, enter, leave, -EBADF, recv_batch_body(c, out, cap, max_count, timeout_ns));
}

void fi_chan_tx_reset(fi_chan *c)
{
    if (enter(c))
        return;
    tx_reset_body(c);
    leave(c);
}

/* The try calls run holding the GIL: fds they would close wait in `doomed`,
 * and once some do, these calls return -EXDEV so that the caller goes
 * through a call that may block (and closes them without the GIL). */
static int try_begin(fi_chan *c)
{
    if (enter(c))
        return -EBADF;
    if (c->ndoomed) {
        leave(c);
        return -EXDEV;
    }
    c->defer_close = 1;
    return 0;
}

static void try_end(fi_chan *c)
{
    c->defer_close = 0;
    leave(c);
}

int64_t fi_chan_try_recv1(fi_chan *c)
{
    int64_t rc = try_begin(c);
    if (rc)
        return rc;
    rc = recv_step(c, c->scratch, c->scap, 0);
    try_end(c);
    return rc;
}

int64_t fi_chan_try_recv(fi_chan *c, char *out, size_t cap, int keep_fds)
{
    int64_t rc = try_begin(c);
    if (rc)
        return rc;
    rc = recv_step(c, out, cap, keep_fds != 0);
    try_end(c);
    return rc;
}

int64_t fi_chan_try_recv_batch(fi_chan *c, char *out, size_t cap, size_t max_count)
{
    if (max_count == 0)
        return -EINVAL;
    int64_t rc = try_begin(c);
    if (rc)
        return rc;
    rc = recv_batch_step(c, out, cap, max_count);
    try_end(c);
    return rc;
}
