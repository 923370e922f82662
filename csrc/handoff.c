/* The Channel's hand-off area: large messages through shared memory instead of the socket.
 *
 * A message of handoff_min bytes or more (up to half the area) is copied by
 * the sender into a shared area, a memfd it made and passed once (SCM_RIGHTS)
 * with the first such message; the frame on the socket then carries only a
 * 16-byte descriptor [u64 offset][u64 release position] in place of the
 * payload (FRAME_BULK; the header's length is still the message's; the
 * framing is channel.c's). The receiver copies the message out of the area
 * and stores the release position in the area's header, which frees the
 * space: one memcpy on each side and no kernel copy, where the socket path
 * costs two copies through the kernel plus its per-page bookkeeping. The
 * area is a byte ring used in stream order, like the Ring's data area. A
 * sender that finds no room within HANDOFF_WAIT_NS sends the message inline,
 * so a receiver that stops reading only ever holds the sender up the way a
 * full socket does. fi_chan_recv_view lends a message in place instead of
 * copying it; its release (and that of any message received meanwhile:
 * positions are cumulative) waits until fi_chan_release_view. Per-message
 * memfds were measured first and lost to the plain socket (memfd_create,
 * page allocation and mapping per message: ~1.2 GB/s against 4-5 GB/s).
 *
 * Layout: a AREA_HDR-byte header page (magic "FIPCAREA" at 0, the u64
 * release position on its own cache line at AREA_RELEASED), then the data.
 *
 * Hostile peers. A received area must be a memfd sealed against shrinking
 * (else the sender could truncate it under our reads: SIGBUS), and every
 * descriptor is checked against the area's size as we mapped it. The sender
 * trusts nothing the receiver writes in the area but the release position,
 * and checks that too.
 */
#define _GNU_SOURCE
#include "handoff.h"
#include "refs.h"
#include "sys.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define AREA_HDR 4096u                   /* the area's header page; data follows */
#define AREA_RELEASED 64u                /* offset of the u64 release position (own cache line) */
#define AREA_MAGIC 0x4145524143504946ull /* "FIPCAREA" */
#define NO_RELEASE UINT64_MAX            /* rel_pending: nothing to store */

/* A mapping of the peer's hand-off area. Reference-counted: the channel
 * holds one while the area is current (or stale, see fi_chan_recv_view) and
 * every view the caller still holds pins one, so a view, or a slice of it,
 * kept past its block never reads unmapped memory (fi_chan_view_pin). */
struct fi_area {
    char *p;
    size_t len;
    uint32_t refs;
};

static void area_unref(struct fi_area *a)
{
    if (a && ref_put(&a->refs)) {
        munmap(a->p, a->len);
        free(a);
    }
}

void fi_area_unpin(fi_area *a) { area_unref(a); }

static uint64_t *area_released(char *area) { return (uint64_t *)(void *)(area + AREA_RELEASED); }

/* ---- receiving ---------------------------------------------------------- */

int fi_handoff_map(struct handoff_rx *h, int fd)
{
    /* Seals before size: once F_SEAL_SHRINK is seen the size can only stay
     * (or grow, which maps nothing new); read the other way round, the
     * sender could shrink and seal in between and we would map pages that
     * are gone (SIGBUS on the first read). */
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        return -EPROTO;
    struct stat st;
    if (fstat(fd, &st))
        return -errno;
    if (!S_ISREG(st.st_mode) || st.st_size <= (off_t)AREA_HDR ||
        (uint64_t)st.st_size - AREA_HDR > HANDOFF_AREA_MAX)
        return -EPROTO;
    size_t n = (size_t)st.st_size;
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -EPROTO; /* e.g. sealed against writing: not an area */
    uint64_t magic;
    memcpy(&magic, p, 8);
    struct fi_area *a = magic == AREA_MAGIC ? malloc(sizeof *a) : NULL;
    if (!a) {
        munmap(p, n);
        return magic == AREA_MAGIC ? -ENOMEM : -EPROTO;
    }
    a->p = p;
    a->len = n;
    a->refs = 1;
    if (h->area && h->view_held) {
        if (h->stale_area) { /* a third area while the first is still lent: no honest peer */
            area_unref(a);
            return -EPROTO;
        }
        h->stale_area = h->area;     /* let go when the view goes */
        h->rel_pending = NO_RELEASE; /* nothing of the new area is taken yet */
    } else {
        area_unref(h->area);
    }
    h->area = a;
    h->data = n - AREA_HDR;
    return 0;
}

int fi_handoff_locate(const struct handoff_rx *h, const char *d, uint32_t len, const char **src,
                      uint64_t *rel)
{
    uint64_t off;
    memcpy(&off, d, 8);
    memcpy(rel, d + 8, 8);
    if (!h->area || off > h->data || len > h->data - off)
        return -EBADMSG;
    *src = h->area->p + AREA_HDR + off;
    return 0;
}

void fi_handoff_release(struct handoff_rx *h, uint64_t rel)
{
    if (h->view_held)
        h->rel_pending = rel;
    else
        __atomic_store_n(area_released(h->area->p), rel, __ATOMIC_RELEASE);
}

void fi_handoff_lend(struct handoff_rx *h, uint64_t rel)
{
    h->view_held = 1;
    h->view_area = h->area;
    h->rel_pending = rel;
}

int fi_handoff_unlend(struct handoff_rx *h)
{
    if (!h->view_held)
        return -EINVAL;
    h->view_held = 0;
    area_unref(h->stale_area);
    h->stale_area = NULL;
    h->view_area = NULL;
    if (h->rel_pending != NO_RELEASE && h->area)
        __atomic_store_n(area_released(h->area->p), h->rel_pending, __ATOMIC_RELEASE);
    return 0;
}

fi_area *fi_handoff_pin(struct handoff_rx *h)
{
    fi_area *a = h->view_held ? h->view_area : NULL;
    if (a)
        __atomic_add_fetch(&a->refs, 1, __ATOMIC_SEQ_CST);
    return a;
}

void fi_handoff_rx_free(struct handoff_rx *h)
{
    area_unref(h->area);
    area_unref(h->stale_area);
    h->area = h->stale_area = h->view_area = NULL;
}

/* ---- sending ------------------------------------------------------------ */

int fi_handoff_config(struct handoff_tx *t, size_t min_len, size_t area_size)
{
    if (min_len && (area_size < 2 * min_len || area_size % 4096 || area_size > HANDOFF_AREA_MAX))
        return -EINVAL;
    if (t->area && area_size != t->data)
        return -EBUSY; /* the peer mapped the one we have */
    t->min = min_len;
    t->area_size = min_len ? area_size : 0;
    return 0;
}

/* Make this end's area: a memfd sealed so that it can never shrink or grow
 * (the receiver checks), mapped and faulted in once. */
static int area_create(struct handoff_tx *t)
{
    size_t n = AREA_HDR + t->area_size;
    int fd = (int)syscall(SYS_memfd_create, "fastipc-channel", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    /* fallocate takes the pages now: where memory is short it fails here
     * (and the channel keeps to the socket) instead of a later write into
     * a page shmem cannot supply raising SIGBUS. */
    if (ftruncate(fd, (off_t)n) || fallocate(fd, 0, 0, (off_t)n) ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    uint64_t magic = AREA_MAGIC;
    memcpy(p, &magic, 8);
    t->area = p;
    t->area_len = n;
    t->data = t->area_size;
    t->area_fd = fd;
    t->head = t->released = 0;
    return 0;
}

int fi_handoff_put(struct handoff_tx *t, const void *buf, size_t n, int64_t wait_until)
{
    if (!t->area && area_create(t)) {
        t->min = 0; /* e.g. no memfd here: inline from now on */
        return -EAGAIN;
    }
    uint64_t size = t->data, head = t->head, pos = head % size, start = head;
    if (pos + n > size) { /* never split a message: skip the end of the area */
        start += size - pos;
        pos = 0;
    }
    uint64_t end = start + n;
    for (;;) {
        uint64_t rel = __atomic_load_n(area_released(t->area), __ATOMIC_ACQUIRE);
        if (rel < t->released || rel > head) {
            t->min = 0; /* the receiver wrote nonsense: stop trusting the area */
            return -EAGAIN;
        }
        t->released = rel;
        if (end - rel <= size)
            break;
        if (mono_ns() >= wait_until)
            return -EAGAIN;
        cpu_relax();
    }
    memcpy(t->area + AREA_HDR + pos, buf, n);
    t->head = end;
    memcpy(t->desc, &pos, 8);
    memcpy(t->desc + 8, &end, 8);
    t->bulk = 1;
    return 0;
}

void fi_handoff_sent(struct handoff_tx *t)
{
    t->bulk = 0;
    if (t->area_fd >= 0) { /* the peer holds it now */
        close(t->area_fd);
        t->area_fd = -1;
    }
}

void fi_handoff_tx_free(struct handoff_tx *t)
{
    if (t->area)
        munmap(t->area, t->area_len);
    t->area = NULL;
    if (t->area_fd >= 0)
        close(t->area_fd);
    t->area_fd = -1;
}
