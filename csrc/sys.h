/* Small Linux helpers shared by the C sources: clocks, futexes, spinning. */
#ifndef FASTIPC_SYS_H
#define FASTIPC_SYS_H

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define FI_FOREVER (-1)

/* memfd and file seals (Linux 3.17). manylinux2014's glibc 2.17 has no
 * memfd_create() and its headers may lack the numbers, so they are spelled
 * out here; a kernel without the call answers ENOSYS and the Channel then
 * keeps to the socket. */
#ifndef SYS_memfd_create
#if defined(__x86_64__)
#define SYS_memfd_create 319
#elif defined(__i386__)
#define SYS_memfd_create 356
#elif defined(__aarch64__)
#define SYS_memfd_create 279
#elif defined(__powerpc64__)
#define SYS_memfd_create 360
#elif defined(__s390x__)
#define SYS_memfd_create 350
#endif
#endif
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#define MFD_ALLOW_SEALING 0x0002U
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_GET_SEALS 1034
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The CLOCK_MONOTONIC deadline of a timeout (ns; < 0: FI_FOREVER). */
static inline int64_t deadline_of(int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return FI_FOREVER;
    int64_t now = mono_ns();
    return timeout_ns > INT64_MAX - now ? FI_FOREVER : now + timeout_ns;
}

/* Sleep while *addr == val, at most timeout_ns (< 0: no limit).
 * 0 when woken or the word had changed, -ETIMEDOUT, -EINTR. */
static inline int futex_wait(uint32_t *addr, uint32_t val, int64_t timeout_ns)
{
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000;
        ts.tv_nsec = timeout_ns % 1000000000;
        tsp = &ts;
    }
    /* Not FUTEX_PRIVATE: the word is shared between processes. The timeout
     * of FUTEX_WAIT is relative and measured on CLOCK_MONOTONIC. */
    if (syscall(SYS_futex, addr, FUTEX_WAIT, val, tsp, NULL, 0) == 0)
        return 0;
    if (errno == EAGAIN)
        return 0;
    return -errno;
}

static inline void futex_wake_all(uint32_t *addr)
{
    syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

#endif /* FASTIPC_SYS_H */
