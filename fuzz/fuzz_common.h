/* Helpers shared by the libFuzzer harnesses in fuzz/: reading the input,
 * the fd-leak check, socket draining, and the marshal batch reference
 * parser. Only the public API (csrc/fastipc.h) is used by the harnesses. */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fastipc.h"

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "fuzz check failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
            abort();                                                                  \
        }                                                                             \
    } while (0)

/* ---- reading the input ------------------------------------------------ */

typedef struct {
    const uint8_t *p;
    size_t n;
} input;

static inline uint8_t in_u8(input *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static inline uint16_t in_u16(input *in) { return (uint16_t)(in_u8(in) | in_u8(in) << 8); }

static inline uint32_t in_u32(input *in) { return (uint32_t)in_u16(in) | (uint32_t)in_u16(in) << 16; }

static inline uint64_t in_u64(input *in) { return (uint64_t)in_u32(in) | (uint64_t)in_u32(in) << 32; }

/* Up to k bytes of the input; *got says how many. */
static inline const uint8_t *in_bytes(input *in, size_t k, size_t *got)
{
    const uint8_t *p = in->p;
    if (k > in->n)
        k = in->n;
    in->p += k;
    in->n -= k;
    *got = k;
    return p;
}

/* ---- weak hooks for API that may come and go ---------------------------- */

/* fi_ring_free (a handle that outlives its close) is being added to ring.c;
 * use it when the build has it, so the harness leaks nothing either way. */
void fi_ring_free(fi_ring *r) __attribute__((weak));

static inline void ring_dispose(fi_ring *r)
{
    if (fi_ring_free)
        fi_ring_free(r);
    else
        fi_ring_close(r);
}

/* ---- fds ---------------------------------------------------------------- */

#define FD_TRACK 65536
static unsigned char fd_base[FD_TRACK]; /* 1: open when the baseline was taken (or since accepted) */
static int fd_base_top = -1;           /* highest fd in the baseline */

static inline void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Record every fd open now as the baseline. */
static inline void fd_baseline(void)
{
    memset(fd_base, 0, sizeof fd_base);
    fd_base_top = -1;
    DIR *d = opendir("/proc/self/fd");
    CHECK(d != NULL, "opendir /proc/self/fd: %s", strerror(errno));
    int self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        int fd = atoi(e->d_name);
        if (fd == self || fd < 0 || fd >= FD_TRACK)
            continue;
        fd_base[fd] = 1;
        if (fd > fd_base_top)
            fd_base_top = fd;
    }
    closedir(d);
}

static inline int fd_is_harness(int fd) { return fd >= 0 && fd < FD_TRACK && fd_base[fd]; }

/* After an iteration that let up to `received` fds into the process: every
 * fd the kernel could have given out for them (the lowest free numbers, so
 * all below fd_base_top + received + 1) must be closed again. An open one
 * that is ours (a memfd named "fuzz-...") is a leak: abort. Anything else
 * (an fd libFuzzer or the sanitizer opened) joins the baseline. */
static inline void fd_check(size_t received)
{
    static struct pollfd pfd[FD_TRACK];
    if (received == 0)
        return;
    size_t top = (size_t)fd_base_top + received + 1, k = 0;
    if (top >= FD_TRACK)
        top = FD_TRACK - 1;
    for (size_t fd = 0; fd <= top; fd++) {
        if (fd_base[fd])
            continue;
        pfd[k].fd = (int)fd;
        pfd[k].events = 0;
        pfd[k++].revents = 0;
    }
    if (k == 0)
        return;
    CHECK(poll(pfd, k, 0) >= 0, "poll: %s", strerror(errno));
    for (size_t i = 0; i < k; i++) {
        if (pfd[i].revents & POLLNVAL)
            continue;
        char path[64], target[256];
        snprintf(path, sizeof path, "/proc/self/fd/%d", pfd[i].fd);
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n > 0 ? n : 0] = 0;
        CHECK(strncmp(target, "/memfd:fuzz-", 12) != 0,
              "fd leak: fd %d (%s) is still open after fi_chan_free and the drain", pfd[i].fd,
              target);
        fd_base[pfd[i].fd] = 1; /* not ours: libFuzzer's or the sanitizer's */
        if (pfd[i].fd > fd_base_top)
            fd_base_top = pfd[i].fd;
    }
}

/* Close an fd a handle gave us; it must be a live fd that is not one of ours. */
static inline void close_given(int fd)
{
    CHECK(!fd_is_harness(fd), "handle gave out fd %d, which is one of the harness's own", fd);
    CHECK(close(fd) == 0, "handle gave out fd %d, which is not open (%s)", fd, strerror(errno));
}

/* Read and discard everything queued on fd (closing fds that ride along);
 * returns the bytes read. */
static inline size_t drain(int fd)
{
    static char buf[1 << 16];
    union {
        char b[CMSG_SPACE(253 * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    size_t total = 0;
    for (;;) {
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = ctl.b;
        m.msg_controllen = sizeof ctl.b;
        ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n <= 0)
            return total;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                continue;
            int nfd = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int fds[253];
            memcpy(fds, CMSG_DATA(cm), (size_t)nfd * sizeof(int));
            for (int i = 0; i < nfd; i++)
                close(fds[i]);
        }
        total += (size_t)n;
    }
}

/* A connected AF_UNIX stream pair on the numbers in sv (made anew when
 * sv[0] < 0, else moved onto the same numbers so the fd baseline holds). */
static inline void make_pair(int sv[2])
{
    int nv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, nv) == 0, "socketpair: %s",
          strerror(errno));
    if (sv[0] < 0) {
        sv[0] = nv[0];
        sv[1] = nv[1];
        return;
    }
    for (int i = 0; i < 2; i++) {
        CHECK(dup3(nv[i], sv[i], O_CLOEXEC) == sv[i], "dup3: %s", strerror(errno));
        close(nv[i]);
    }
}

/* Send n bytes with nfds copies of fd attached (nfds 0: no control
 * message; nfds < 0: an SCM_RIGHTS message with no fds). Returns sendmsg's. */
static inline ssize_t send_with_fds(int sock, const void *buf, size_t n, int fd, int nfds)
{
    union {
        char b[CMSG_SPACE(253 * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = n};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (nfds) {
        int k = nfds < 0 ? 0 : nfds;
        m.msg_control = ctl.b;
        m.msg_controllen = CMSG_SPACE((size_t)k * sizeof(int));
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN((size_t)k * sizeof(int));
        int *p = (int *)(void *)CMSG_DATA(cm);
        for (int i = 0; i < k; i++)
            p[i] = fd;
    }
    return sendmsg(sock, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
}

/* ---- marshal batches (reference parser) ------------------------------- */

/* Check that out[0:n] is a marshal list of bytes as the C side writes it
 * (list header, then count bytes items, nothing after); return the count. */
static inline uint32_t check_marshal_list(const char *out, size_t n)
{
    CHECK(n >= 5, "batch of %zu bytes", n);
    CHECK(out[0] == '[', "batch type %#x", (unsigned char)out[0]);
    uint32_t count, len;
    memcpy(&count, out + 1, 4);
    size_t pos = 5;
    for (uint32_t i = 0; i < count; i++) {
        CHECK(n - pos >= 5, "item %u header past the end (%zu of %zu)", i, pos, n);
        CHECK(out[pos] == 's', "item %u type %#x", i, (unsigned char)out[pos]);
        memcpy(&len, out + pos + 1, 4);
        CHECK(n - pos - 5 >= len, "item %u of %u bytes past the end", i, len);
        pos += 5 + len;
    }
    CHECK(pos == n, "batch has %zu bytes after its %u items", n - pos, count);
    return count;
}

#endif /* FUZZ_COMMON_H */
