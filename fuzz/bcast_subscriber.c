/* libFuzzer harness: the broadcast ring's segment checks and subscriber path
 * (csrc/broadcast.c) over a segment whose header, slots and data come from
 * the input.
 *
 * Segments are memfds made once with fi_bc_segment_size / fi_bc_create for a
 * few (capacity, slots, policy) shapes; the valid header and slot pages are
 * saved. Each input: they are put back; the positions (tail, head, reserved)
 * start at an input base and the sequence counters at an input value; one
 * geometry field (magic, version, header size, capacity, data size, slots,
 * policy) may be overwritten, then fi_bc_open (a failure must give no
 * handle) and fi_bc_subscribe (timeout 0). Then the positions are set from
 * the input (near the cursor, or raw 64-bit), the shutdown mark and flag,
 * `pins`, the publisher lock word and slot words (owner, cursor, pin); the
 * data area gets input bytes from the cursor on (record headers with their
 * sequence numbers, and payloads). Then a program of fi_bc_try_recv (exact,
 * short, large caps), fi_bc_try_recv1, fi_bc_try_recv_batch, fi_bc_peek (the
 * whole view read) + fi_bc_release / fi_bc_unhold, fi_bc_len,
 * fi_bc_next_len, fi_bc_poll, fi_bc_room, fi_bc_try_publish,
 * fi_bc_try_publish_batch, fi_bc_publish (timeout 0), fi_bc_shutdown, and
 * pokes of header words, slot words and data bytes between calls (a hostile
 * peer writing meanwhile).
 *
 * Nothing may fault, hang or read out of bounds (the view is read to its
 * end: past the double mapping would fault); lengths fit the buffer and the
 * capacity; a batch is a well-formed marshal list of 1..max_count items;
 * -EOVERFLOW reports at least one lost message; fi_bc_len is -EBADMSG or
 * at most data size / 16. Input encoding: see the reads in the code below
 * (fuzz/make_corpus.py writes valid seeds). */
#include "fuzz_common.h"

/* struct bc_header (broadcast.c) and struct bc_slot. */
#define OFF_GEOM 0 /* magic, version, header size, capacity, data size: u64 each */
#define OFF_SLOTS_POLICY 40 /* u32 slots, u32 policy */
#define OFF_LOCK 128
#define OFF_SEQ 136
#define OFF_HEAD 144
#define OFF_HEAD_SEQ 152
#define OFF_TAIL 256
#define OFF_RESERVED 264
#define OFF_CLOSED 400
#define OFF_PINS 404
#define SLOT_SIZE 128
#define TAIL_CLOSED (1ull << 63)

#define NSEG 4
static const struct {
    uint64_t cap;
    uint32_t slots;
    int policy;
} shapes[NSEG] = {{64, 1, 0}, {1000, 2, 1}, {5000, 4, 0}, {1, 40, 1}};

struct seg {
    int fd;
    size_t size, hsize, dsize;
    unsigned char *map;
    unsigned char *saved; /* hsize bytes */
};
static struct seg segs[NSEG];
static int ready;
static char buf[1 << 16];

static void init(void)
{
    if (ready)
        return;
    ready = 1;
    for (int i = 0; i < NSEG; i++) {
        struct seg *g = &segs[i];
        g->fd = memfd_create("fuzz-bcast", MFD_CLOEXEC);
        CHECK(g->fd >= 0, "memfd_create: %s", strerror(errno));
        g->size = fi_bc_segment_size(shapes[i].cap, shapes[i].slots);
        CHECK(ftruncate(g->fd, (off_t)g->size) == 0, "ftruncate: %s", strerror(errno));
        fi_bcast *b;
        CHECK(fi_bc_create(g->fd, shapes[i].cap, shapes[i].slots, shapes[i].policy, &b) == 0,
              "fi_bc_create");
        fi_bc_free(b);
        g->map = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_SHARED, g->fd, 0);
        CHECK(g->map != MAP_FAILED, "mmap: %s", strerror(errno));
        uint64_t v;
        memcpy(&v, g->map + 16, 8);
        g->hsize = v;
        memcpy(&v, g->map + 32, 8);
        g->dsize = v;
        CHECK(g->hsize + g->dsize == g->size, "header layout changed");
        memcpy(&v, g->map + 24, 8);
        CHECK(v == shapes[i].cap, "header layout changed: capacity");
        g->saved = malloc(g->hsize);
        CHECK(g->saved != NULL, "malloc");
        memcpy(g->saved, g->map, g->hsize);
    }
}

static void put64(struct seg *g, size_t off, uint64_t v) { memcpy(g->map + off, &v, 8); }
static void put32(struct seg *g, size_t off, uint32_t v) { memcpy(g->map + off, &v, 4); }
static uint64_t get64(struct seg *g, size_t off)
{
    uint64_t v;
    memcpy(&v, g->map + off, 8);
    return v;
}

/* Write input bytes into the data area from position pos on (wrapping). */
static void put_data(struct seg *g, input *in, uint64_t pos, size_t n)
{
    size_t got;
    const uint8_t *p = in_bytes(in, n, &got);
    for (size_t i = 0; i < got; i++)
        g->map[g->hsize + (pos + i) % g->dsize] = p[i];
}

/* A hostile write between calls: a header word, a slot word or data bytes. */
static void poke(struct seg *g, input *in, uint64_t base)
{
    uint8_t what = in_u8(in);
    uint32_t nslots = shapes[g - segs].slots;
    switch (what % 6) {
    case 0: put64(g, OFF_TAIL, (get64(g, OFF_TAIL) & TAIL_CLOSED) | (base + in_u16(in))); break;
    case 1: put64(g, OFF_HEAD, base + in_u16(in) - in_u16(in)); break;
    case 2: put64(g, OFF_RESERVED, base + in_u16(in)); break;
    case 3: put64(g, 4096 + (in_u8(in) % nslots) * SLOT_SIZE + 8 * (in_u8(in) % 5), in_u64(in)); break;
    case 4: put32(g, OFF_PINS, in_u32(in)); break;
    default: put_data(g, in, base + in_u16(in), in_u8(in)); break;
    }
}

static void read_view(const char *p, int64_t n)
{
    volatile char sink = 0;
    for (int64_t i = 0; i < n; i++)
        sink ^= p[i];
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init();
    input in = {data, size};
    struct seg *g = &segs[in_u8(&in) % NSEG];
    uint8_t flags = in_u8(&in);
    uint64_t cap = shapes[g - segs].cap;
    memcpy(g->map, g->saved, g->hsize);
    memset(g->map + g->hsize, 0, g->dsize);

    /* Where the subscriber joins. */
    uint64_t base = (uint64_t)in_u32(&in) << 6, seq0 = in_u16(&in);
    put64(g, OFF_TAIL, base);
    put64(g, OFF_HEAD, base);
    put64(g, OFF_RESERVED, base);
    put64(g, OFF_SEQ, seq0);
    put64(g, OFF_HEAD_SEQ, seq0);
    if (flags & 1) { /* a bad geometry field */
        uint8_t f = in_u8(&in) % 7;
        uint64_t v = in_u64(&in);
        if (f < 5)
            put64(g, OFF_GEOM + 8 * f, v);
        else
            put32(g, OFF_SLOTS_POLICY + 4 * (f - 5), (uint32_t)v);
    }
    fi_bcast *b = NULL;
    int rc = fi_bc_open(g->fd, &b);
    if (rc) {
        CHECK(rc < 0, "fi_bc_open returned %d", rc);
        return 0;
    }
    fi_bc_set_spin(b, 0);
    cap = fi_bc_capacity(b); /* a poked capacity may still fit the data size */
    if (flags & 2) /* the publisher lock held by someone (maybe no one alive) */
        put64(g, OFF_LOCK, in_u64(&in));
    rc = fi_bc_subscribe(b, 0);
    CHECK(rc == 0 || rc == -EUSERS || rc == -ETIMEDOUT || rc == -EAGAIN || rc == -EDEADLK,
          "fi_bc_subscribe: %d", rc);
    int subscribed = rc == 0;

    /* What was published after the subscriber joined: records from its cursor. */
    uint64_t tail = base + in_u16(&in);
    if (flags & 4) {
        put64(g, OFF_TAIL, in_u64(&in));
        put64(g, OFF_HEAD, in_u64(&in));
        put64(g, OFF_RESERVED, in_u64(&in));
    } else {
        put64(g, OFF_TAIL, tail | (flags & 8 ? TAIL_CLOSED : 0));
        put64(g, OFF_RESERVED, tail + in_u16(&in));
        put64(g, OFF_HEAD, base - in_u8(&in));
    }
    put64(g, OFF_SEQ, seq0 + in_u8(&in));
    if (flags & 8)
        put32(g, OFF_CLOSED, 1);
    if (flags & 16)
        put32(g, OFF_PINS, in_u32(&in));
    put_data(g, &in, base, in_u16(&in));

    fi_bc_set_scratch(b, buf, sizeof buf);
    uint64_t last_lagged = 0;
    while (in.n) {
        uint8_t op = in_u8(&in);
        int64_t n;
        switch (op % 16) {
        case 0:
        case 1: {
            size_t c = op % 16 == 0 ? (size_t)cap : in_u16(&in) % sizeof buf;
            n = fi_bc_try_recv(b, buf, c);
            CHECK(n < 0 || ((uint64_t)n <= c && (uint64_t)n <= cap), "recv %lld > %zu", (long long)n, c);
            CHECK(n != -EOVERFLOW || fi_bc_lagged(b) >= 1, "an overrun that lost nothing");
            break;
        }
        case 2:
            n = fi_bc_try_recv1(b);
            CHECK(n < 0 || (uint64_t)n <= cap, "recv1 %lld", (long long)n);
            break;
        case 3: {
            size_t c = 5 + in_u16(&in) % (sizeof buf - 5), k = 1 + in_u8(&in) % 64;
            n = fi_bc_try_recv_batch(b, buf, c, k);
            if (n > 0) {
                CHECK((size_t)n <= c, "batch of %lld bytes in %zu", (long long)n, c);
                uint32_t count = check_marshal_list(buf, (size_t)n);
                CHECK(count >= 1 && count <= k, "batch of %u items, max %zu", count, k);
            }
            break;
        }
        case 4: {
            char *p = NULL;
            n = fi_bc_peek(b, 0, &p, NULL);
            if (n >= 0) {
                CHECK((uint64_t)n <= cap, "view of %lld bytes", (long long)n);
                read_view(p, n);
                if (in_u8(&in) & 1)
                    fi_bc_release(b);
                else
                    fi_bc_unhold(b);
            }
            break;
        }
        case 5:
            n = fi_bc_len(b);
            CHECK(n == -EBADMSG || n == -EINVAL || (n >= 0 && (uint64_t)n <= g->dsize / 16),
                  "len %lld", (long long)n);
            break;
        case 6:
            n = fi_bc_next_len(b);
            CHECK(n < 0 || (uint64_t)n <= cap, "next_len %lld", (long long)n);
            break;
        case 7:
            fi_bc_poll(b);
            break;
        case 8:
            n = fi_bc_room(b);
            CHECK(n < 0 || (uint64_t)n <= cap, "room %lld", (long long)n);
            break;
        case 9: {
            size_t k = in_u16(&in) % (cap + 2);
            memset(buf, 'p', k);
            fi_bc_try_publish(b, buf, k);
            break;
        }
        case 10: {
            /* [b"x" * k1, b"y" * k2] */
            uint32_t k1 = in_u8(&in), k2 = in_u8(&in), two = 2;
            char *w = buf;
            *w++ = '[';
            memcpy(w, &two, 4), w += 4;
            *w++ = 's';
            memcpy(w, &k1, 4), w += 4;
            memset(w, 'x', k1), w += k1;
            *w++ = 's';
            memcpy(w, &k2, 4), w += 4;
            memset(w, 'y', k2), w += k2;
            n = fi_bc_try_publish_batch(b, buf, (size_t)(w - buf), in_u8(&in) % 3);
            CHECK(n <= 2, "published %lld of 2", (long long)n);
            break;
        }
        case 11:
            fi_bc_publish(b, "abc", 3, 0);
            break;
        case 12:
            if (in_u8(&in) == 0x5a)
                fi_bc_shutdown(b);
            break;
        case 13: {
            char *p = NULL;
            fi_bhold h = {0};
            rc = fi_bc_reserve(b, in_u8(&in) % (cap + 1), 0, &p, &h);
            if (rc == 0) {
                memset(p, 'r', 1);
                if (in_u8(&in) & 1)
                    fi_bc_commit(b);
                else
                    fi_bc_abort(b);
            }
            fi_bhold_drop(&h);
            break;
        }
        default:
            poke(g, &in, base);
            break;
        }
        if (subscribed) {
            /* A loss is never more than was published (the count in the
             * segment, which only pokes between calls change). */
            uint64_t lagged = fi_bc_lagged(b);
            CHECK(lagged <= get64(g, OFF_SEQ) || lagged == last_lagged, "lagged %llu of %llu",
                  (unsigned long long)lagged, (unsigned long long)get64(g, OFF_SEQ));
            last_lagged = lagged;
        }
    }
    fi_bc_free(b);
    return 0;
}
