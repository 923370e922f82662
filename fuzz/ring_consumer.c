/* libFuzzer harness: the Ring's consumer path (csrc/ring.c) over a segment
 * whose header and data come from the input.
 *
 * Segments are memfds made once, each a real ring (fi_ring_segment_size /
 * fi_ring_create) of one of a few capacities; its valid header is saved.
 * Each input: the saved header is put back, then overwritten where the
 * input says: head and tail (near each other or raw), the shutdown mark,
 * the message counters, the closed flag, a geometry field (magic, version,
 * header size, capacity, data size), the lock words; the data area gets
 * input bytes from the head on (wrapping), i.e. record headers and
 * payloads. Then fi_ring_open and a program of fi_ring_len,
 * fi_ring_next_len, fi_ring_try_recv (caps exact, short, large),
 * fi_ring_try_recv1, fi_ring_try_recv_batch, fi_ring_peek + reading the
 * whole view + fi_ring_release (timeout 0), fi_ring_try_send,
 * fi_ring_try_send_batch, fi_ring_shutdown, and pokes of header words or
 * data bytes between calls (a hostile peer writing meanwhile).
 *
 * Nothing may fault or read out of bounds (ASan for the heap; the view is
 * read to its end, past the double mapping would fault); lengths returned
 * fit the buffer and the capacity; a batch is a well-formed marshal list;
 * a message received is the bytes at the head as the segment held them. */
#include "fuzz_common.h"

/* struct fi_header (ring.c): five u64, then three 128-byte aligned parts. */
#define OFF_MAGIC 0
#define OFF_VERSION 8
#define OFF_HSIZE 16
#define OFF_CAP 24
#define OFF_DSIZE 32
#define OFF_PLOCK 128
#define OFF_TAIL 136
#define OFF_PRODUCED 144
#define OFF_CLOCK 256
#define OFF_HEAD 264
#define OFF_CONSUMED 272
#define OFF_WAKE 384
#define OFF_CLOSED 400
#define TAIL_CLOSED (1ull << 63)

#define NSEG 4
static const uint64_t caps[NSEG] = {1, 64, 1000, 5000};
struct seg {
    int fd;
    size_t size, hsize, dsize;
    unsigned char *map;
    unsigned char saved[4096];
};
static struct seg segs[NSEG];
static int ready;

static void init(void)
{
    if (ready)
        return;
    ready = 1;
    for (int i = 0; i < NSEG; i++) {
        struct seg *g = &segs[i];
        g->fd = memfd_create("fuzz-ring", MFD_CLOEXEC);
        CHECK(g->fd >= 0, "memfd_create: %s", strerror(errno));
        g->size = fi_ring_segment_size(caps[i]);
        CHECK(ftruncate(g->fd, (off_t)g->size) == 0, "ftruncate: %s", strerror(errno));
        fi_ring *r;
        CHECK(fi_ring_create(g->fd, caps[i], &r) == 0, "fi_ring_create");
        g->dsize = fi_ring_data_size(r);
        g->hsize = g->size - g->dsize;
        ring_dispose(r);
        g->map = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_SHARED, g->fd, 0);
        CHECK(g->map != MAP_FAILED, "mmap: %s", strerror(errno));
        memcpy(g->saved, g->map, sizeof g->saved);
        uint64_t v;
        memcpy(&v, g->map + OFF_CAP, 8);
        CHECK(v == caps[i], "header layout changed: capacity at %d is %llu", OFF_CAP,
              (unsigned long long)v);
        memcpy(&v, g->map + OFF_DSIZE, 8);
        CHECK(v == g->dsize, "header layout changed: data size");
    }
}

static void put64(struct seg *g, size_t off, uint64_t v) { memcpy(g->map + off, &v, 8); }
static uint64_t get64(struct seg *g, size_t off)
{
    uint64_t v;
    memcpy(&v, g->map + off, 8);
    return v;
}

/* Compare out[0:n] with the segment's data from stream position pos on (wrapping). */
static void check_bytes(struct seg *g, uint64_t pos, const char *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char want = g->map[g->hsize + (pos + i) % g->dsize];
        CHECK((unsigned char)out[i] == want, "received byte %zu is %#x, the segment holds %#x", i,
              (unsigned char)out[i], want);
    }
}

static void op_recv(fi_ring *r, struct seg *g, uint64_t cap, input *in, uint8_t op)
{
    int64_t nl = fi_ring_next_len(r);
    size_t n;
    switch ((op >> 4) & 3) {
    case 0: n = nl >= 0 ? (size_t)nl : 16; break;
    case 1: n = nl > 0 ? (size_t)nl - 1 : 0; break;
    case 2: n = in_u16(in); break;
    default: n = cap + 64; break;
    }
    char *out = malloc(n ? n : 1);
    uint64_t head = get64(g, OFF_HEAD);
    int64_t got;
    if (op & 0x40) {
        fi_ring_set_scratch(r, out, n);
        got = fi_ring_try_recv1(r);
        fi_ring_set_scratch(r, NULL, 0);
    } else {
        got = fi_ring_try_recv(r, out, n);
    }
    if (got >= 0) {
        CHECK((uint64_t)got <= n && (uint64_t)got <= cap, "recv of %lld bytes (cap %zu, capacity %llu)",
              (long long)got, n, (unsigned long long)cap);
        check_bytes(g, head + 8, out, (size_t)got);
    }
    free(out);
}

static void op_batch(fi_ring *r, uint64_t cap, input *in)
{
    size_t n = in_u16(in), max_count = in_u8(in);
    char *out = malloc(n ? n : 1);
    int64_t got = fi_ring_try_recv_batch(r, out, n, max_count);
    if (got >= 0) {
        CHECK((uint64_t)got <= n, "batch of %lld bytes in %zu", (long long)got, n);
        uint32_t k = check_marshal_list(out, (size_t)got);
        CHECK(k >= 1 && k <= max_count, "batch of %u items, max_count %zu", k, max_count);
        const char *p = out + 5;
        for (uint32_t i = 0; i < k; i++) {
            uint32_t len;
            memcpy(&len, p + 1, 4);
            CHECK(len <= cap, "batch item of %u bytes, capacity %llu", len, (unsigned long long)cap);
            p += 5 + len;
        }
    } else if (max_count == 0) {
        CHECK(got == -EINVAL, "max_count 0 gave %lld", (long long)got);
    }
    free(out);
}

static void op_peek(fi_ring *r, uint64_t cap, uint8_t op)
{
    char *p = NULL;
    int64_t got = fi_ring_peek(r, 0, &p, NULL);
    if (got >= 0) {
        CHECK((uint64_t)got <= cap, "view of %lld bytes, capacity %llu", (long long)got,
              (unsigned long long)cap);
        volatile unsigned sum = 0;
        for (int64_t i = 0; i < got; i++)
            sum += (unsigned char)p[i];
        (void)sum;
        if (op & 0x10)
            (void)fi_ring_release(r);
        else
            (void)fi_ring_unhold(r);
    }
}

static void op_send(fi_ring *r, uint64_t cap, input *in, uint8_t op)
{
    static char payload[8192];
    size_t n = (op & 0x10) ? in_u16(in) % 8192 : in_u8(in);
    memset(payload, (int)n, n);
    int rc = fi_ring_try_send(r, payload, n);
    if (n > cap)
        CHECK(rc == -EMSGSIZE || rc < 0, "a message over the capacity was sent: %d", rc);
}

static void op_send_batch(fi_ring *r, input *in)
{
    char blob[5 + 8 * (5 + 300)];
    uint32_t count = 1 + in_u8(in) % 8, skip = in_u8(in) % 3;
    size_t pos = 5;
    blob[0] = '[';
    memcpy(blob + 1, &count, 4);
    for (uint32_t i = 0; i < count; i++) {
        uint32_t n = in_u8(in) + (in_u8(in) & 1 ? 44 : 0);
        blob[pos] = 's';
        memcpy(blob + pos + 1, &n, 4);
        memset(blob + pos + 5, (int)i, n);
        pos += 5 + n;
    }
    (void)fi_ring_try_send_batch(r, blob, pos, skip);
}

static void op_poke(struct seg *g, input *in, uint8_t op)
{
    static const size_t fields[] = {OFF_TAIL, OFF_HEAD, OFF_PRODUCED, OFF_CONSUMED, OFF_PLOCK,
                                    OFF_CLOCK, OFF_CLOSED, OFF_WAKE};
    if (op & 0x10) {
        size_t at = in_u16(in) % g->dsize;
        g->map[g->hsize + at] = in_u8(in);
    } else {
        size_t f = fields[in_u8(in) % 8];
        uint64_t v = get64(g, f);
        uint8_t how = in_u8(in);
        v = how & 1 ? in_u64(in) : v + (uint64_t)(int8_t)(how & 0xfe);
        put64(g, f, v);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init();
    input in = {data, size};
    uint8_t sel = in_u8(&in), flags = in_u8(&in);
    struct seg *g = &segs[sel % NSEG];
    memcpy(g->map, g->saved, sizeof g->saved);
    memset(g->map + g->hsize, 0, g->dsize);
    uint64_t head = (flags & 1) ? ((flags & 2) ? in_u64(&in) : in_u32(&in)) : 0;
    uint64_t tail = (flags & 4) ? in_u64(&in) : head + in_u16(&in);
    if (flags & 8)
        tail |= TAIL_CLOSED;
    uint64_t consumed = in_u16(&in), produced = consumed + in_u8(&in);
    put64(g, OFF_HEAD, head);
    put64(g, OFF_TAIL, tail);
    put64(g, OFF_CONSUMED, consumed);
    put64(g, OFF_PRODUCED, produced);
    if (flags & 32)
        g->map[OFF_CLOSED] = 1;
    if (flags & 64) {
        static const size_t geo[] = {OFF_MAGIC, OFF_VERSION, OFF_HSIZE, OFF_CAP, OFF_DSIZE};
        uint8_t which = in_u8(&in);
        uint64_t v = get64(g, geo[which % 5]);
        put64(g, geo[which % 5], which & 0x80 ? in_u64(&in) : v + (uint64_t)(int8_t)in_u8(&in));
    }
    if (flags & 128) {
        put64(g, OFF_PLOCK, in_u64(&in));
        put64(g, OFF_CLOCK, in_u64(&in));
    }
    /* Record bytes from the head on. */
    size_t nbytes = in_u8(&in), got;
    if (flags & 16)
        nbytes *= 16;
    const uint8_t *rec = in_bytes(&in, nbytes, &got);
    for (size_t i = 0; i < got; i++)
        g->map[g->hsize + (head + i) % g->dsize] = rec[i];

    fi_ring *r = NULL;
    int rc = fi_ring_open(g->fd, &r);
    if (rc) {
        CHECK(rc < 0 && r == NULL, "fi_ring_open failed (%d) but gave a handle", rc);
        return 0;
    }
    uint64_t cap = fi_ring_capacity(r);
    CHECK(cap >= 1 && cap + 8 <= g->dsize && fi_ring_data_size(r) == g->dsize,
          "opened with capacity %llu, data size %llu", (unsigned long long)cap,
          (unsigned long long)fi_ring_data_size(r));
    fi_ring_set_spin(r, 0);
    while (in.n) {
        uint8_t op = in_u8(&in);
        switch (op & 7) {
        case 0: {
            int64_t n = fi_ring_len(r);
            CHECK(n == -EBADMSG || (n >= 0 && (uint64_t)n <= g->dsize / 8), "len %lld", (long long)n);
            break;
        }
        case 1: {
            int64_t n = fi_ring_next_len(r);
            CHECK(n < 0 || (uint64_t)n <= cap, "next_len %lld over the capacity", (long long)n);
            break;
        }
        case 2: op_recv(r, g, cap, &in, op); break;
        case 3: op_batch(r, cap, &in); break;
        case 4: op_peek(r, cap, op); break;
        case 5: (op & 0x80) ? op_send_batch(r, &in) : op_send(r, cap, &in, op); break;
        case 6: op_poke(g, &in, op); break;
        default:
            if (op & 0x10)
                (void)fi_ring_shutdown(r);
            else
                (void)fi_ring_is_shutdown(r);
            break;
        }
    }
    (void)fi_ring_unhold(r);
    ring_dispose(r);
    return 0;
}
