/* libFuzzer harness: the Channel's hand-off descriptors (csrc/channel.c
 * bulk_locate / recv_view, csrc/handoff.c fi_handoff_map / fi_handoff_locate),
 * with real and hostile areas.
 *
 * Areas are memfds made once: good ones as handoff.c's area_create makes
 * them (magic "FIPCAREA" at 0, a 4096-byte header, data after it, sealed
 * F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL; their data a known pattern), one
 * sealed against shrinking only (also acceptable), and hostile ones:
 * unsealed, sealed against growing only, wrong magic, header-only, tiny,
 * sealed against writing, over the 1 GiB limit, not a file (an eventfd).
 *
 * Input: max_message and max_fds, then a program: a FRAME_BULK|FRAME_AREA|
 * FRAME_FDS frame carrying an area chosen by the input (usually one fd, or
 * 0..3 of them), FRAME_BULK frames with a descriptor (offset, release
 * position) and length from the input, small inline frames, raw bytes,
 * and receives: fi_chan_recv (caps exact, short, long), fi_chan_recv_view
 * / fi_chan_release_view, fi_chan_recv_batch, fi_chan_take_fds,
 * fi_chan_next_len / fi_chan_pending / fi_chan_buffered.
 *
 * A model of the frames written checks every message delivered: it must be
 * the next frame written, whole, its bytes those of the area it points
 * into; a hostile area or a descriptor outside the area must never deliver
 * a message; a valid frame must not be refused; the release position must
 * reach the area. fds: as in chan_frames (fd_check after the drain). */
#include "fuzz_common.h"

#include <sys/eventfd.h>

#ifndef FUZZ_ODD_MAX_FDS /* see chan_frames.c */
#define FUZZ_ODD_MAX_FDS 0
#endif

/* Finding (fuzz/README.md, crashes/chan_handoff/fds-claimed-by-earlier-frame):
 * a frame flagged with fds that came without any claims the fds of a later
 * frame read in the same recvmsg (claim_fds takes the oldest set with
 * lo <= start < hi, though the fds belong to the frame holding byte hi - 1).
 * So such frames are not checked unless built with -DFUZZ_STRICT_FD_CLAIM=1. */
#ifndef FUZZ_STRICT_FD_CLAIM
#define FUZZ_STRICT_FD_CLAIM 0
#endif

#define AREA_HDR 4096u
#define FRAME_FDS 1u
#define FRAME_BULK 2u
#define FRAME_AREA 4u

enum { A_GOOD16K, A_GOOD4K, A_SHRINKSEAL, A_UNSEALED, A_GROWSEAL, A_BADMAGIC, A_HDRONLY,
       A_TINY, A_WSEAL, A_HUGE, A_NOTFILE, NAREAS };

struct area {
    int fd;
    int good;
    size_t data; /* data bytes (good areas) */
    unsigned char *map; /* the harness's own mapping (good areas) */
};
static struct area areas[NAREAS];
static int sv[2] = {-1, -1};

static unsigned char pattern(int a, uint64_t i) { return (unsigned char)(i * 131 + (uint64_t)a * 17 + (i >> 8)); }

static int make_area(const char *name, size_t size, int seals, uint64_t magic)
{
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    CHECK(fd >= 0, "memfd_create: %s", strerror(errno));
    CHECK(ftruncate(fd, (off_t)size) == 0, "ftruncate: %s", strerror(errno));
    if (size >= 8)
        CHECK(pwrite(fd, &magic, 8, 0) == 8, "pwrite: %s", strerror(errno));
    if (seals)
        CHECK(fcntl(fd, F_ADD_SEALS, seals) == 0, "F_ADD_SEALS: %s", strerror(errno));
    return fd;
}

static void init(void)
{
    if (sv[0] >= 0)
        return;
    raise_nofile();
    const uint64_t MAGIC = 0x4145524143504946ull; /* "FIPCAREA" */
    const int SEALED = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
    areas[A_GOOD16K] = (struct area){make_area("fuzz-area-16k", AREA_HDR + 16384, 0, MAGIC), 1, 16384, NULL};
    areas[A_GOOD4K] = (struct area){make_area("fuzz-area-4k", AREA_HDR + 4096, 0, MAGIC), 1, 4096, NULL};
    areas[A_SHRINKSEAL] = (struct area){make_area("fuzz-area-shrinkseal", AREA_HDR + 8192, 0, MAGIC), 1, 8192, NULL};
    for (int a = 0; a < 3; a++) { /* fill the data, then seal (a shared writable map stays ours) */
        struct area *ar = &areas[a];
        ar->map = mmap(NULL, AREA_HDR + ar->data, PROT_READ | PROT_WRITE, MAP_SHARED, ar->fd, 0);
        CHECK(ar->map != MAP_FAILED, "mmap: %s", strerror(errno));
        for (size_t i = 0; i < ar->data; i++)
            ar->map[AREA_HDR + i] = pattern(a, i);
        int seals = a == A_SHRINKSEAL ? F_SEAL_SHRINK : SEALED;
        CHECK(fcntl(ar->fd, F_ADD_SEALS, seals) == 0, "F_ADD_SEALS: %s", strerror(errno));
    }
    areas[A_UNSEALED] = (struct area){make_area("fuzz-area-unsealed", AREA_HDR + 4096, 0, MAGIC), 0, 0, NULL};
    areas[A_GROWSEAL] = (struct area){make_area("fuzz-area-growseal", AREA_HDR + 4096, F_SEAL_GROW, MAGIC), 0, 0, NULL};
    areas[A_BADMAGIC] = (struct area){make_area("fuzz-area-badmagic", AREA_HDR + 4096, SEALED, MAGIC ^ 1), 0, 0, NULL};
    areas[A_HDRONLY] = (struct area){make_area("fuzz-area-hdronly", AREA_HDR, SEALED, MAGIC), 0, 0, NULL};
    areas[A_TINY] = (struct area){make_area("fuzz-area-tiny", 12, SEALED, MAGIC), 0, 0, NULL};
    areas[A_WSEAL] = (struct area){make_area("fuzz-area-wseal", AREA_HDR + 4096, SEALED | F_SEAL_WRITE, MAGIC), 0, 0, NULL};
    areas[A_HUGE] = (struct area){make_area("fuzz-area-huge", AREA_HDR + (1ull << 30) + 4096, SEALED, MAGIC), 0, 0, NULL};
    int efd = eventfd(0, EFD_CLOEXEC);
    CHECK(efd >= 0, "eventfd: %s", strerror(errno));
    areas[A_NOTFILE] = (struct area){efd, 0, 0, NULL};
    make_pair(sv);
    fd_baseline();
}

#define MAXQ 512
struct frame {
    uint8_t kind; /* 0 inline, 1 bulk, 2 bulk with area */
    uint8_t area; /* the area sent (kind 2) */
    uint8_t nfds;
    uint32_t len;
    uint64_t off, rel;
};

struct state {
    fi_chan *c;
    uint32_t max_message;
    size_t max_fds;
    size_t fds_sent;
    int model;    /* the queue below is exactly what is on the stream */
    int cur;      /* the area the channel should have mapped (-1 none) */
    int view;     /* a view is lent */
    struct frame q[MAXQ];
    size_t qh, qt;
};

static void push(struct state *s, const struct frame *f, ssize_t w, size_t want)
{
    if (w != (ssize_t)want || s->qt - s->qh == MAXQ) {
        s->model = 0; /* part of a frame on the stream, or too many: stop predicting */
        return;
    }
    s->q[s->qt++ % MAXQ] = *f;
}

static void op_bulk(struct state *s, input *in, uint8_t op, int with_area)
{
    struct frame f = {.kind = (uint8_t)(with_area ? 2 : 1)};
    uint8_t mode = in_u8(in);
    f.len = (mode & 1) ? in_u32(in) : in_u16(in) % 20000;
    f.off = (mode & 2) ? in_u64(in) : in_u16(in);
    f.rel = (mode & 4) ? in_u64(in) : f.off + f.len;
    unsigned char buf[24];
    uint32_t flags = FRAME_BULK | (with_area ? FRAME_AREA | FRAME_FDS : 0);
    int nfds = 0, fd = -1;
    if (with_area) {
        f.area = (uint8_t)(in_u8(in) % NAREAS);
        fd = areas[f.area].fd;
        nfds = (op & 0x40) ? in_u8(in) % 4 : 1;
        if (nfds == 0 && (op & 0x80))
            nfds = -1; /* an SCM_RIGHTS message without fds */
    }
    f.nfds = (uint8_t)(nfds < 0 ? 0 : nfds);
    memcpy(buf, &f.len, 4);
    memcpy(buf + 4, &flags, 4);
    memcpy(buf + 8, &f.off, 8);
    memcpy(buf + 16, &f.rel, 8);
    ssize_t w = send_with_fds(sv[0], buf, sizeof buf, fd, nfds);
    if (w > 0)
        s->fds_sent += f.nfds;
    push(s, &f, w, sizeof buf);
}

static void op_inline(struct state *s, input *in)
{
    struct frame f = {.kind = 0, .len = in_u8(in)};
    unsigned char buf[8 + 256];
    uint32_t flags = 0;
    memcpy(buf, &f.len, 4);
    memcpy(buf + 4, &flags, 4);
    for (uint32_t i = 0; i < f.len; i++)
        buf[8 + i] = (unsigned char)(i ^ f.len);
    push(s, &f, send_with_fds(sv[0], buf, 8 + f.len, -1, 0), 8 + f.len);
}

static void op_raw(struct state *s, input *in)
{
    size_t n = in_u8(in), got;
    const uint8_t *p = in_bytes(in, n, &got);
    if (got)
        s->model = 0;
    if (got)
        (void)send_with_fds(sv[0], p, got, -1, 0);
}

/* Would the channel deliver frame f (front of the queue)? */
static int valid(const struct state *s, const struct frame *f)
{
    if (f->len > s->max_message)
        return 0;
    if (f->kind == 0)
        return 1;
    int a = f->kind == 2 ? f->area : s->cur;
    if (a < 0 || !areas[a].good || (f->kind == 2 && f->nfds != 1))
        return 0;
    return f->off <= areas[a].data && f->len <= areas[a].data - f->off;
}

/* A message of r bytes at p was delivered: it must be the front frame. */
static void delivered(struct state *s, const char *p, int64_t r)
{
    if (!s->model)
        return;
    CHECK(s->qh < s->qt, "a message of %lld bytes that nobody sent", (long long)r);
    struct frame *f = &s->q[s->qh++ % MAXQ];
    CHECK(r == f->len, "delivered %lld bytes for a frame of %u", (long long)r, f->len);
    if (!FUZZ_STRICT_FD_CLAIM && f->kind == 2 && f->nfds != 1) {
        s->model = 0; /* it took some later frame's fds: which area is mapped now is unknown */
        return;
    }
    CHECK(valid(s, f), "delivered a frame that must be refused (kind %d, area %d, off %llu, len %u)",
          f->kind, f->kind == 2 ? f->area : s->cur, (unsigned long long)f->off, f->len);
    if (f->kind == 0) {
        for (uint32_t i = 0; i < f->len; i++)
            CHECK((unsigned char)p[i] == (unsigned char)(i ^ f->len), "inline byte %u wrong", i);
        return;
    }
    if (f->kind == 2)
        s->cur = f->area;
    const unsigned char *src = areas[s->cur].map + AREA_HDR + f->off;
    CHECK(memcmp(p, src, f->len) == 0, "hand-off message bytes differ from area %d at %llu", s->cur,
          (unsigned long long)f->off);
}

static void after_error(struct state *s, int64_t r)
{
    if (!s->model || r == -EAGAIN || r == -EMSGSIZE || r == -ENOMSG || r == -EBUSY ||
        r == -EINVAL)
        return;
    if (s->qh < s->qt && !s->view) {
        struct frame *f = &s->q[s->qh % MAXQ];
        CHECK(!valid(s, f), "a valid frame refused with %lld (kind %d, area %d, off %llu, len %u)",
              (long long)r, f->kind, f->kind == 2 ? f->area : s->cur, (unsigned long long)f->off,
              f->len);
    }
    s->model = 0; /* sticky from here on */
}

static void check_released(struct state *s, uint64_t want)
{
    uint64_t rel;
    memcpy(&rel, areas[s->cur].map + 64, 8);
    CHECK(rel == want, "release position %llu in the area, want %llu", (unsigned long long)rel,
          (unsigned long long)want);
}

static void op_recv(struct state *s, input *in, uint8_t op)
{
    int64_t nl = fi_chan_next_len(s->c);
    size_t cap;
    switch ((op >> 4) & 3) {
    /* (no valid frame is longer than the largest good area's 16 KiB of data) */
    case 0: cap = nl >= 0 && nl <= (1 << 15) ? (size_t)nl : 64; break;   /* exact */
    case 1: cap = nl > 0 && nl <= (1 << 15) ? (size_t)nl - 1 : 0; break; /* one short */
    case 2: cap = in_u16(in); break;
    default: cap = 1 << 15; break;
    }
    char *out = malloc(cap ? cap : 1);
    int64_t r = fi_chan_recv(s->c, out, cap, (op & 0x40) != 0, 0);
    if (r >= 0) {
        CHECK((uint64_t)r <= cap, "recv of %lld bytes into %zu", (long long)r, cap);
        int bulk = s->model && s->qh < s->qt && s->q[s->qh % MAXQ].kind != 0;
        uint64_t rel = s->model && s->qh < s->qt ? s->q[s->qh % MAXQ].rel : 0;
        delivered(s, out, r);
        if (bulk && s->model && !s->view)
            check_released(s, rel);
    } else {
        after_error(s, r);
    }
    free(out);
}

static void op_view(struct state *s, uint8_t op)
{
    const char *p = NULL;
    int64_t r = fi_chan_recv_view(s->c, &p, 0);
    if (r >= 0) {
        CHECK(!s->view, "a second view while one is lent");
        volatile unsigned sum = 0;
        for (int64_t i = 0; i < r; i++)
            sum += (unsigned char)p[i];
        (void)sum;
        delivered(s, p, r);
        s->view = 1;
        if (op & 0x10) {
            CHECK(fi_chan_release_view(s->c) == 0, "release failed");
            s->view = 0;
        }
    } else {
        if (r == -EBUSY)
            CHECK(s->view, "-EBUSY without a view lent");
        after_error(s, r);
    }
}

static void op_batch(struct state *s, input *in)
{
    size_t cap = in_u16(in), max_count = 1 + in_u8(in);
    char *out = malloc(cap ? cap : 1);
    int64_t r = fi_chan_recv_batch(s->c, out, cap, max_count, 0);
    if (r >= 0) {
        uint32_t n = check_marshal_list(out, (size_t)r);
        CHECK(n >= 1 && n <= max_count, "batch of %u", n);
        const char *p = out + 5;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t len;
            memcpy(&len, p + 1, 4);
            if (s->model)
                CHECK(s->qh < s->qt && s->q[s->qh % MAXQ].kind == 0,
                      "a batch delivered a hand-off frame or one nobody sent");
            delivered(s, p + 5, len);
            p += 5 + len;
        }
    } else {
        after_error(s, r);
    }
    free(out);
}

static void op_misc(struct state *s, input *in, uint8_t op)
{
    switch ((op >> 4) & 3) {
    case 0:
        if (fi_chan_release_view(s->c) == 0) {
            CHECK(s->view, "released a view nobody was lent");
            s->view = 0;
        }
        break;
    case 1: {
        int fds[4];
        size_t cap = in_u8(in) % 5;
        int n = fi_chan_take_fds(s->c, fds, cap);
        CHECK(n >= 0 && (size_t)n <= cap, "take_fds %d", n);
        for (int i = 0; i < n; i++)
            close_given(fds[i]);
        break;
    }
    default:
        (void)fi_chan_buffered(s->c);
        if (fi_chan_pending(s->c))
            CHECK(fi_chan_next_len(s->c) >= 0, "pending without a header");
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init();
    input in = {data, size};
    struct state *s = calloc(1, sizeof *s);
    uint8_t sel = in_u8(&in);
    s->max_message = (sel & 1) ? in_u16(&in) : 1u << 20;
    s->max_fds = 1 + in_u8(&in) % 253;
    if (!FUZZ_ODD_MAX_FDS && s->max_fds % 2 && s->max_fds != 253)
        s->max_fds++;
    s->model = 1;
    s->cur = -1;
    CHECK(fi_chan_new(sv[1], 4096, s->max_message, s->max_fds, &s->c) == 0, "fi_chan_new");
    while (in.n) {
        uint8_t op = in_u8(&in);
        switch (op & 7) {
        case 0: op_bulk(s, &in, op, 1); break;
        case 1: op_bulk(s, &in, op, 0); break;
        case 2: (op & 0x80) ? op_raw(s, &in) : op_inline(s, &in); break;
        case 3:
        case 4: op_recv(s, &in, op); break;
        case 5: op_view(s, op); break;
        case 6: op_batch(s, &in); break;
        default: op_misc(s, &in, op); break;
        }
    }
    for (int i = 0; i < 64; i++) { /* receive until an error or -EAGAIN */
        int64_t before = s->model ? (int64_t)(s->qt - s->qh) : -1;
        op_recv(s, &in, 0x30);
        if (fi_chan_next_len(s->c) < 0 || (s->model && (int64_t)(s->qt - s->qh) == before))
            break;
    }
    fi_chan_free(s->c);
    drain(sv[1]);
    fd_check(s->fds_sent);
    free(s);
    return 0;
}
