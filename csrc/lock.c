/* The death-surviving shared lock (see lock.h for the design). */
#define _GNU_SOURCE
#include "lock.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "sys.h"

#define WAITERS 0x80000000u      /* somebody sleeps on the low 32 bits */
#define TID_MASK 0x3fffffffu      /* Linux pid_max is at most 2^22 */
/* How long a holder must look unchanged before we ask /proc about it. */
#define LIVENESS_AFTER_NS 2000000
#define NAP_NS 20000000           /* sleep at most this long between checks */

static __thread uint64_t tls_self;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* A forked child is a new thread with the parent's thread-local storage. */
static void forget_self(void) { tls_self = 0; }
static void register_atfork(void) { pthread_atfork(NULL, NULL, forget_self); }

/* State letter and start time (clock ticks since boot) of thread `tid`, from
 * /proc/<tid>/stat. 0 on success, -ENOENT if there is no such thread. */
static int thread_stat(long tid, char *state, uint64_t *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -ENOENT;
    buf[n] = 0;
    /* Field 2 is "(comm)" and comm may hold spaces or parentheses. */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return -EPROTO;
    p += 2;
    *state = *p;
    /* starttime is field 22; p is at field 3. */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return -EPROTO;
        p++;
    }
    unsigned long long v = 0;
    if (sscanf(p, "%llu", &v) != 1)
        return -EPROTO;
    *start = v;
    return 0;
}

static uint64_t self_word(void)
{
    if (tls_self)
        return tls_self;
    pthread_once(&atfork_once, register_atfork);
    long tid = syscall(SYS_gettid);
    char state;
    uint64_t start = 0;
    thread_stat(tid, &state, &start); /* without /proc: start 0, still unique by tid */
    tls_self = (uint64_t)(uint32_t)start << 32 | ((uint64_t)tid & TID_MASK);
    return tls_self;
}

/* Whether the holder recorded in `v` may still run. Errs towards "alive":
 * only a definite answer from /proc declares it dead. */
static int holder_alive(uint64_t v)
{
    long tid = (long)(v & TID_MASK);
    if (tid == 0)
        return 0; /* not a word any holder writes: garbage */
    char state;
    uint64_t start;
    int rc = thread_stat(tid, &state, &start);
    if (rc == -ENOENT || rc == -ESRCH)
        return 0;
    if (rc)
        return 1;
    if (state == 'Z' || state == 'X')
        return 0;
    return (uint32_t)start == (uint32_t)(v >> 32);
}

static __thread uint64_t tls_proc;
static __thread long tls_proc_pid;

uint64_t fi_proc_self(void)
{
    /* Keyed by pid: a forked child must not pass for its parent. */
    long pid = (long)getpid();
    if (tls_proc && tls_proc_pid == pid)
        return tls_proc;
    char state;
    uint64_t start = 0;
    thread_stat(pid, &state, &start);
    tls_proc = (uint64_t)(uint32_t)start << 32 | ((uint64_t)pid & TID_MASK);
    tls_proc_pid = pid;
    return tls_proc;
}

int fi_owner_alive(uint64_t owner) { return holder_alive(owner & ~(uint64_t)WAITERS); }

static inline int try_as(fi_lock *l, uint64_t self)
{
    uint64_t v = 0;
    if (__atomic_compare_exchange_n(&l->word, &v, self, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return 0;
    if ((v & ~(uint64_t)WAITERS) == (self & ~(uint64_t)WAITERS))
        return -EDEADLK;
    return -EAGAIN;
}

int fi_lock_try(fi_lock *l) { return try_as(l, self_word()); }

int fi_lock_wait(fi_lock *l, int64_t deadline, int64_t spin_ns)
{
    return fi_lock_wait_over(l, deadline, spin_ns, NULL);
}

int fi_lock_wait_over(fi_lock *l, int64_t deadline, int64_t spin_ns, int *taken_over)
{
    uint64_t self = self_word();
    int rc = try_as(l, self);
    if (rc != -EAGAIN)
        return rc;
    int64_t now = mono_ns(), spin_end = now + spin_ns;
    while (now < spin_end && (deadline < 0 || now < deadline)) {
        for (int i = 0; i < 32; i++)
            cpu_relax();
        if ((rc = try_as(l, self)) != -EAGAIN)
            return rc;
        now = mono_ns();
    }
    /* Once we have slept we take the lock marked WAITERS: others may still
     * sleep, and the mark makes our release wake them. */
    uint64_t mine = self | WAITERS, seen = 0;
    int64_t seen_since = now;
    for (;;) {
        uint64_t v = __atomic_load_n(&l->word, __ATOMIC_RELAXED);
        if (v == 0) {
            if ((rc = try_as(l, mine)) != -EAGAIN)
                return rc;
            continue;
        }
        uint64_t holder = v & ~(uint64_t)WAITERS;
        if (holder == self)
            return -EDEADLK;
        if (holder != seen) {
            seen = holder;
            seen_since = now;
        } else if (now - seen_since >= LIVENESS_AFTER_NS && !holder_alive(v)) {
            /* The holder is gone. Its changes were published by single
             * atomic stores or not at all, so there is nothing to repair
             * (a caller whose are not is told, through taken_over). */
            if (__atomic_compare_exchange_n(&l->word, &v, mine, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                if (taken_over)
                    *taken_over = 1;
                return 0;
            }
            continue;
        }
        if (deadline >= 0 && now >= deadline)
            return -ETIMEDOUT;
        if (!(v & WAITERS)) {
            if (!__atomic_compare_exchange_n(&l->word, &v, v | WAITERS, 0, __ATOMIC_RELAXED,
                                             __ATOMIC_RELAXED))
                continue;
            v |= WAITERS;
        }
        int64_t nap = NAP_NS;
        if (now - seen_since < LIVENESS_AFTER_NS)
            nap = LIVENESS_AFTER_NS - (now - seen_since);
        if (deadline >= 0 && deadline - now < nap)
            nap = deadline - now;
        /* The low half of the word (little-endian) is the futex. */
        rc = futex_wait((uint32_t *)&l->word, (uint32_t)v, nap);
        if (rc == -EINTR)
            return rc;
        now = mono_ns();
    }
}

int fi_lock_held(const fi_lock *l) { return fi_lock_held_by(l, self_word()); }

int fi_lock_held_by(const fi_lock *l, uint64_t owner)
{
    uint64_t v = __atomic_load_n(&l->word, __ATOMIC_RELAXED);
    return (v & ~(uint64_t)WAITERS) == (owner & ~(uint64_t)WAITERS) ? 0 : -EPERM;
}

uint64_t fi_lock_self(void) { return self_word() & ~(uint64_t)WAITERS; }

int fi_lock_release(fi_lock *l) { return fi_lock_release_from(l, self_word()); }

int fi_lock_release_from(fi_lock *l, uint64_t owner)
{
    uint64_t self = owner & ~(uint64_t)WAITERS;
    uint64_t v = __atomic_load_n(&l->word, __ATOMIC_RELAXED);
    do {
        if ((v & ~(uint64_t)WAITERS) != self)
            return -EPERM;
    } while (!__atomic_compare_exchange_n(&l->word, &v, 0, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED));
    if (v & WAITERS)
        futex_wake_all((uint32_t *)&l->word);
    return 0;
}
