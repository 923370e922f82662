/* libFuzzer harness: the marshal batch parser (csrc/marshal.h) as the Ring
 * (fi_ring_try_send_batch) and the Channel (fi_chan_send_batch, timeout 0)
 * use it, on arbitrary blobs.
 *
 * Input: one selector byte (which ring capacity, which channel, skip), then
 * the blob. A reference parser decides what the answer must be: -EINVAL
 * for anything that is not a list or tuple of `count` whole bytes items
 * (or count <= skip, for the ring), -EMSGSIZE if an item exceeds the
 * capacity / max_message, else success. On success the ring must hold
 * exactly items skip..skip+n-1 (received and compared), and the channel's
 * socket must carry exactly one frame per item (drained and compared). */
#include "fuzz_common.h"

#define NRING 3
static const uint64_t ring_caps[NRING] = {16, 300, 20000};
static int ring_fd[NRING];
static int sv[2][2] = {{-1, -1}, {-1, -1}};
static fi_chan *chans[2];
static const uint32_t chan_max[2] = {100, 1u << 24};
static int ready;

static void init(void)
{
    if (ready)
        return;
    ready = 1;
    for (int i = 0; i < NRING; i++) {
        ring_fd[i] = memfd_create("fuzz-ring", MFD_CLOEXEC);
        CHECK(ring_fd[i] >= 0, "memfd_create");
        CHECK(ftruncate(ring_fd[i], (off_t)fi_ring_segment_size(ring_caps[i])) == 0, "ftruncate");
    }
    for (int i = 0; i < 2; i++) {
        make_pair(sv[i]);
        CHECK(fi_chan_new(sv[i][0], 4096, chan_max[i], 1, &chans[i]) == 0, "fi_chan_new");
    }
}

/* The reference parser: the items' offsets and lengths, or -EINVAL / -EMSGSIZE. */
struct item {
    size_t off;
    uint32_t len;
};

static int64_t ref_parse(const uint8_t *b, size_t n, uint64_t limit, size_t skip,
                         struct item **items)
{
    *items = NULL;
    if (n < 5 || ((b[0] & 0x7f) != '[' && (b[0] & 0x7f) != '('))
        return -EINVAL;
    uint32_t count;
    memcpy(&count, b + 1, 4);
    if (count <= skip && skip) /* the ring's check, before the items' */
        return -EINVAL;
    /* Every item takes at least 5 bytes: more than that cannot be there. */
    if ((uint64_t)count * 5 > n - 5)
        return -EINVAL;
    struct item *it = malloc(((size_t)count + 1) * sizeof *it);
    size_t pos = 5;
    int too_large = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (n - pos < 5 || (b[pos] & 0x7f) != 's') {
            free(it);
            return -EINVAL;
        }
        uint32_t len;
        memcpy(&len, b + pos + 1, 4);
        if (n - pos - 5 < len) {
            free(it);
            return -EINVAL;
        }
        it[i].off = pos + 5;
        it[i].len = len;
        too_large |= len > limit;
        pos += 5 + (size_t)len;
    }
    *items = it;
    return too_large ? -EMSGSIZE : (int64_t)count;
}

static void fuzz_ring(const uint8_t *b, size_t n, int which, size_t skip)
{
    static char out[20000];
    fi_ring *r;
    CHECK(fi_ring_create(ring_fd[which], ring_caps[which], &r) == 0, "fi_ring_create");
    struct item *it;
    int64_t want = ref_parse(b, n, ring_caps[which], skip ? skip : 0, &it);
    if (want == 0) /* an empty list: count <= skip */
        want = -EINVAL;
    int64_t got = fi_ring_try_send_batch(r, (const char *)b, n, skip);
    if (want < 0) {
        CHECK(got == want, "ring: send_batch gave %lld, the reference parser %lld", (long long)got,
              (long long)want);
    } else {
        CHECK(got > 0 && got <= want - (int64_t)skip, "ring: send_batch gave %lld for %lld items",
              (long long)got, (long long)(want - (int64_t)skip));
        for (int64_t i = 0; i < got; i++) {
            const struct item *x = &it[skip + (size_t)i];
            int64_t m = fi_ring_try_recv(r, out, sizeof out);
            CHECK(m == x->len, "ring: item %lld came back as %lld bytes, sent %u", (long long)i,
                  (long long)m, x->len);
            CHECK(memcmp(out, b + x->off, x->len) == 0, "ring: item %lld bytes differ", (long long)i);
        }
        CHECK(fi_ring_try_recv(r, out, sizeof out) == -EAGAIN, "ring: more than was sent");
    }
    free(it);
    ring_dispose(r);
}

/* Compare what the socket carries with the frames of items[0:count]. */
struct expect {
    const uint8_t *b;
    const struct item *it;
    int64_t count;
    int64_t idx;  /* the item being compared */
    size_t done;  /* bytes of its frame seen */
};

static void compare(struct expect *e, const unsigned char *p, size_t n)
{
    while (n) {
        CHECK(e->idx < e->count, "chan: %zu bytes more than the batch's frames", n);
        const struct item *x = &e->it[e->idx];
        unsigned char hdr[8];
        memcpy(hdr, &x->len, 4);
        memset(hdr + 4, 0, 4);
        size_t total = 8 + (size_t)x->len, k = total - e->done;
        if (k > n)
            k = n;
        for (size_t i = 0; i < k; i++) {
            size_t at = e->done + i;
            unsigned char want = at < 8 ? hdr[at] : e->b[x->off + at - 8];
            CHECK(p[i] == want, "chan: frame %lld byte %zu is %#x, want %#x", (long long)e->idx, at,
                  p[i], want);
        }
        e->done += k;
        p += k;
        n -= k;
        if (e->done == total) {
            e->idx++;
            e->done = 0;
        }
    }
}

static void drain_compare(int fd, struct expect *e)
{
    static unsigned char buf[1 << 16];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0)
            return;
        compare(e, buf, (size_t)n);
    }
}

static void fuzz_chan(const uint8_t *b, size_t n, int which)
{
    fi_chan *c = chans[which];
    struct item *it;
    int64_t want = ref_parse(b, n, chan_max[which], 0, &it);
    struct expect e = {b, it, want, 0, 0};
    int64_t got;
    for (int tries = 0;; tries++) {
        got = fi_chan_send_batch(c, (const char *)b, n, 0);
        if (want >= 0)
            drain_compare(sv[which][1], &e);
        if (got != -EAGAIN)
            break;
        CHECK(want >= 0 && tries < 100000, "chan: -EAGAIN for a batch that must be refused, or forever");
    }
    if (want < 0) {
        CHECK(got == want, "chan: send_batch gave %lld, the reference parser %lld", (long long)got,
              (long long)want);
        CHECK(drain(sv[which][1]) == 0, "chan: a refused batch sent bytes");
    } else {
        CHECK(got == want, "chan: send_batch gave %lld for %lld items", (long long)got,
              (long long)want);
        CHECK(e.idx == want && e.done == 0, "chan: %lld of %lld frames arrived", (long long)e.idx,
              (long long)want);
        CHECK(fi_chan_tx_partial(c) == 0 && fi_chan_tx_frames(c) == 0, "chan: batch state left");
    }
    free(it);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init();
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    const uint8_t *b = data + 1;
    size_t n = size - 1;
    if (sel & 0x80)
        fuzz_chan(b, n, sel & 1);
    else
        fuzz_ring(b, n, (sel & 3) % NRING, (sel >> 2) & 3);
    return 0;
}
