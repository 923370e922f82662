/* libFuzzer harness: the Channel's frame parser (csrc/channel.c, receive side)
 * fed arbitrary bytes and fd counts through a real AF_UNIX stream socket.
 *
 * Input: a parameter block (max_message, max_fds, receive buffer size), then
 * a program of operations, one byte each plus arguments:
 *   write a raw chunk of input bytes, or a synthesized frame (header from the
 *   input, payload of a pattern), optionally with N (0..253) SCM_RIGHTS fds
 *   (copies of one memfd); end the stream (shutdown); fi_chan_recv with
 *   buffers of various sizes (too small included), keep_fds either way, a
 *   long frame's destination kept, swapped (-EINPROGRESS) or adopted;
 *   fi_chan_recv_batch; fi_chan_recv_view / fi_chan_release_view;
 *   fi_chan_take_fds; fi_chan_next_len / fi_chan_pending / fi_chan_buffered.
 * Then receives until an error or -EAGAIN. After fi_chan_free and a drain
 * of the socket, every fd that came in must be closed again (fd_check).
 *
 * Checks besides the sanitizers: lengths returned fit the buffer and
 * max_message and match fi_chan_next_len; a batch is a well-formed marshal
 * list; fds handed out are open and not the harness's; a pending frame
 * never answers -EAGAIN. */
#include "fuzz_common.h"

/* Finding (fuzz/README.md, crashes/chan_frames/fd-leak-odd-max-fds): with an
 * odd max_fds below 253 the control buffer, CMSG_SPACE-rounded, has room
 * for one fd more, and take_cmsgs clamps the count without closing the
 * extra fd. Until channel.c is fixed, max_fds stays even (or 253); build
 * with -DFUZZ_ODD_MAX_FDS=1 to fuzz odd values too. */
#ifndef FUZZ_ODD_MAX_FDS
#define FUZZ_ODD_MAX_FDS 0
#endif

static int sv[2] = {-1, -1}; /* sv[0]: the peer we write; sv[1]: the channel's */
static int payload_fd = -1;

struct state {
    fi_chan *c;
    uint32_t max_message;
    size_t max_fds;
    char *pinned; /* destination of a frame being read straight into it */
    size_t pinned_cap;
    int eof;
    size_t fds_sent;
};

static void init(void)
{
    if (payload_fd >= 0)
        return;
    raise_nofile();
    payload_fd = memfd_create("fuzz-payload", MFD_CLOEXEC);
    CHECK(payload_fd >= 0, "memfd_create: %s", strerror(errno));
    make_pair(sv);
    fd_baseline();
}

/* An fd count 0..253: mostly small (each fd costs a few syscalls), any value
 * reachable. */
static int fd_count(input *in)
{
    uint8_t b = in_u8(in);
    return b < 160 ? b % 8 : in_u8(in) % 254;
}

static void op_write_raw(struct state *s, input *in, uint8_t op)
{
    size_t n = in_u8(in), got;
    if (op & 0x20)
        n |= (size_t)in_u8(in) << 8;
    int nfds = (op & 0x10) ? fd_count(in) : 0;
    const uint8_t *p = in_bytes(in, n, &got);
    if (s->eof)
        return;
    if (op & 0x10 && nfds == 0)
        nfds = -1; /* an SCM_RIGHTS message without fds */
    if (send_with_fds(sv[0], p, got, payload_fd, nfds) > 0 && nfds > 0)
        s->fds_sent += (size_t)nfds;
}

static void op_write_frame(struct state *s, input *in, uint8_t op)
{
    static char buf[8 + (1 << 18)];
    uint32_t len = in_u16(in), flags = in_u8(in);
    if (op & 0x20)
        len <<= 2; /* up to 256 KiB: the direct path, the socket filling up */
    if (!(op & 0x40))
        flags &= 7;
    int nfds = (op & 0x10) ? fd_count(in) : 0;
    memcpy(buf, &len, 4);
    memcpy(buf + 4, &flags, 4);
    for (uint32_t i = 0; i < len && i < 64; i++)
        buf[8 + i] = (char)(i * 7 + len);
    if (s->eof)
        return;
    ssize_t w = send_with_fds(sv[0], buf, 8 + (size_t)len, payload_fd, nfds);
    if (w > 0 && nfds > 0)
        s->fds_sent += (size_t)nfds;
}

/* A destination buffer for a receive: exactly cap bytes (so ASan sees any
 * write past it), or the pinned one while a long frame is being read into it. */
static int64_t do_recv(struct state *s, size_t cap, int keep, uint8_t how)
{
    fi_chan *c = s->c;
    int64_t partial = fi_chan_rx_partial(c);
    char *buf;
    size_t bcap;
    if (partial >= 0) {
        CHECK(s->pinned, "a frame is read straight into a buffer the harness does not have");
        int64_t nl = fi_chan_next_len(c);
        CHECK(nl >= 0 && (uint64_t)nl <= s->pinned_cap && partial <= nl,
              "partial frame: next_len %lld, partial %lld, buffer %zu", (long long)nl,
              (long long)partial, s->pinned_cap);
        if (how % 3 == 1) { /* another buffer: must be refused */
            char other[16];
            int64_t r = fi_chan_recv(c, other, sizeof other, keep, 0);
            CHECK(r == -EINPROGRESS || r < 0, "recv into another buffer mid-frame gave %lld",
                  (long long)r);
            return r;
        }
        if (how % 3 == 2) { /* move the partial frame to a new buffer */
            char *to = malloc((size_t)nl ? (size_t)nl : 1);
            CHECK(fi_chan_rx_adopt(c, s->pinned, to) == 1, "rx_adopt refused its own buffer");
            CHECK(memcmp(to, s->pinned, (size_t)partial) == 0, "rx_adopt copied wrong bytes");
            free(s->pinned);
            s->pinned = to;
            s->pinned_cap = (size_t)nl;
        }
        buf = s->pinned;
        bcap = s->pinned_cap;
    } else {
        bcap = cap;
        buf = malloc(cap ? cap : 1);
    }
    int pending = fi_chan_pending(c);
    int64_t nl = fi_chan_next_len(c);
    if (pending)
        CHECK(nl >= 0, "pending frame but next_len %lld", (long long)nl);
    int64_t r = fi_chan_recv(c, buf, bcap, keep, 0);
    if (r >= 0) {
        CHECK((uint64_t)r <= bcap && (uint64_t)r <= s->max_message,
              "recv gave %lld bytes (cap %zu, max_message %u)", (long long)r, bcap,
              s->max_message);
        if (nl >= 0)
            CHECK(r == nl, "recv gave %lld bytes, next_len said %lld", (long long)r, (long long)nl);
    }
    if (pending && nl >= 0 && (uint64_t)nl <= bcap)
        CHECK(r != -EAGAIN, "a pending frame of %lld bytes answered -EAGAIN", (long long)nl);
    if (fi_chan_rx_partial(c) >= 0) {
        s->pinned = buf;
        s->pinned_cap = bcap;
    } else {
        if (buf == s->pinned)
            s->pinned = NULL;
        free(buf);
    }
    return r;
}

static int64_t op_recv(struct state *s, input *in, uint8_t op)
{
    size_t cap = in_u16(in);
    if (op & 0x20)
        cap <<= 2;
    uint8_t how = in_u8(in);
    return do_recv(s, cap, (op & 0x10) != 0, how);
}

static int64_t do_batch(struct state *s, size_t cap, size_t max_count)
{
    char *out = malloc(cap ? cap : 1);
    int64_t r = fi_chan_recv_batch(s->c, out, cap, max_count, 0);
    if (r >= 0) {
        CHECK((uint64_t)r <= cap, "batch of %lld bytes in %zu", (long long)r, cap);
        uint32_t n = check_marshal_list(out, (size_t)r);
        CHECK(n >= 1 && n <= max_count, "batch of %u items, max_count %zu", n, max_count);
    } else if (max_count == 0) {
        CHECK(r == -EINVAL, "max_count 0 gave %lld", (long long)r);
    }
    free(out);
    return r;
}

static int64_t op_batch(struct state *s, input *in, uint8_t op)
{
    size_t cap = in_u16(in);
    if (op & 0x20)
        cap <<= 2;
    return do_batch(s, cap, (size_t)in_u8(in) + ((op & 0x10) ? 0 : 1));
}

static int64_t op_view(struct state *s, uint8_t op)
{
    const char *p = NULL;
    int64_t r = fi_chan_recv_view(s->c, &p, 0);
    if (r >= 0) {
        CHECK((uint64_t)r <= s->max_message, "view of %lld bytes", (long long)r);
        volatile unsigned sum = 0;
        for (int64_t i = 0; i < r; i++)
            sum += (unsigned char)p[i];
        (void)sum;
        if (op & 0x10)
            CHECK(fi_chan_release_view(s->c) == 0, "release of a lent view failed");
    }
    return r;
}

static void op_take(struct state *s, input *in)
{
    size_t cap = in_u8(in);
    int *out = malloc((cap ? cap : 1) * sizeof(int));
    int n = fi_chan_take_fds(s->c, out, cap);
    CHECK(n >= 0 && (size_t)n <= cap && (size_t)n <= s->max_fds, "take_fds gave %d (cap %zu)", n,
          cap);
    for (int i = 0; i < n; i++)
        close_given(out[i]);
    free(out);
}

static void op_misc(struct state *s, uint8_t op)
{
    fi_chan *c = s->c;
    switch ((op >> 4) & 3) {
    case 0:
        (void)fi_chan_buffered(c);
        (void)fi_chan_rx_partial(c);
        if (fi_chan_pending(c))
            CHECK(fi_chan_next_len(c) >= 0, "pending without a header");
        break;
    case 1:
        (void)fi_chan_release_view(c);
        break;
    case 2:
        if (!s->eof) {
            shutdown(sv[0], SHUT_WR);
            s->eof = 1;
        }
        break;
    default: {
        if (fi_chan_rx_partial(c) >= 0)
            break; /* (-EINPROGRESS: do_recv tries another buffer) */
        size_t cap = (size_t)(op >> 6) * 160;
        char *scratch = malloc(cap ? cap : 1);
        fi_chan_set_scratch(c, scratch, cap);
        int64_t r = fi_chan_try_recv1(c);
        CHECK(r < 0 || (uint64_t)r <= cap, "try_recv1 gave %lld", (long long)r);
        if (fi_chan_rx_partial(c) >= 0) { /* a long frame is being read into it */
            s->pinned = scratch;
            s->pinned_cap = cap;
        } else {
            free(scratch);
        }
        fi_chan_set_scratch(c, NULL, 0);
        break;
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init();
    input in = {data, size};
    struct state s;
    memset(&s, 0, sizeof s);
    uint8_t sel = in_u8(&in);
    uint16_t mm = in_u16(&in);
    switch (sel & 3) {
    case 0: s.max_message = mm & 0xff; break;
    case 1: s.max_message = mm; break;
    case 2: s.max_message = (uint32_t)mm << 4; break;
    default: s.max_message = 64u << 20; break;
    }
    s.max_fds = 1 + in_u8(&in) % 253;
    if (!FUZZ_ODD_MAX_FDS && s.max_fds % 2 && s.max_fds != 253)
        s.max_fds++;
    size_t rbuf = 64 + in_u16(&in) % 4096;
    if (sel & 4)
        rbuf = 256 * 1024;
    CHECK(fi_chan_new(sv[1], rbuf, s.max_message, s.max_fds, &s.c) == 0, "fi_chan_new");
    while (in.n) {
        uint8_t op = in_u8(&in);
        switch (op & 7) {
        case 0:
        case 1: op_write_raw(&s, &in, op); break;
        case 2: op_write_frame(&s, &in, op); break;
        case 3:
        case 4: op_recv(&s, &in, op); break;
        case 5: op_batch(&s, &in, op); break;
        case 6:
            if (op & 0x40)
                op_take(&s, &in);
            else
                op_view(&s, op);
            break;
        default: op_misc(&s, op); break;
        }
    }
    /* Receive until an error or -EAGAIN. */
    for (int i = 0; i < 64; i++) {
        int64_t nl = fi_chan_next_len(s.c);
        size_t cap = nl >= 0 && nl <= (1 << 19) ? (size_t)nl : 4096;
        int64_t r = (i % 4 == 3) ? do_batch(&s, cap + 10, 64) : do_recv(&s, cap, i & 1, 0);
        if (r == -EMSGSIZE && i % 4 == 3)
            continue; /* that frame must be received alone */
        if (r < 0)
            break;
    }
    fi_chan_free(s.c);
    free(s.pinned);
    drain(sv[1]);
    if (s.eof) {
        drain(sv[0]);
        make_pair(sv);
    }
    fd_check(s.fds_sent);
    return 0;
}
