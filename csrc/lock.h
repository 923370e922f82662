/* A process-shared lock in shared memory that survives its holder's death.
 *
 * Why not a robust pthread mutex: glibc trusts the mutex bytes. Garbage in
 * them (a hostile or corrupted segment) makes pthread_mutex_* abort on an
 * assertion or spin forever, and glibc keeps robust-list pointers inside the
 * mutex. This lock has one 64-bit word, so any bytes are a state it handles:
 *   0                               free
 *   start << 32 | WAITERS? | tid    held by thread `tid`, whose start time
 *                                   (clock ticks since boot, low 32 bits)
 *                                   tells it from a later thread that reused
 *                                   the id
 * A waiter that has seen the same holder for a while asks /proc whether that
 * thread still runs; if not (gone, zombie, or another thread under a reused
 * id) it takes the lock over with a compare-and-swap.
 * Limits: holders must share our /proc (pid namespace), and with /proc
 * mounted hidepid=2 another user's holder looks dead.
 */
#ifndef FASTIPC_LOCK_H
#define FASTIPC_LOCK_H

#include <stdint.h>

typedef struct {
    uint64_t word;
} fi_lock;

/* 0 taken, -EAGAIN held by another thread (live or not: only fi_lock_wait
 * asks /proc, since that costs a file read), -EDEADLK held by this thread.
 * Never blocks. */
int fi_lock_try(fi_lock *l);

/* Take the lock, spinning for spin_ns, then sleeping, until `deadline`
 * (CLOCK_MONOTONIC ns; < 0: none). 0, -ETIMEDOUT, -EDEADLK, or -EINTR when a
 * signal arrived while asleep. */
int fi_lock_wait(fi_lock *l, int64_t deadline, int64_t spin_ns);

/* fi_lock_wait that sets *taken_over to 1 when it took the lock over from a
 * dead holder (else leaves it alone), for callers whose holder may leave
 * work to repair. */
int fi_lock_wait_over(fi_lock *l, int64_t deadline, int64_t spin_ns, int *taken_over);

/* Release the lock if this thread holds it: 0, or -EPERM (and the word is
 * left alone) if another thread or process does, e.g. a forked child
 * releasing what its parent took, or a holder that was taken over. */
int fi_lock_release(fi_lock *l);

/* 0 if this thread holds the lock, else -EPERM. */
int fi_lock_held(const fi_lock *l);

/* 0 if the thread whose word is `owner` (fi_lock_self) holds the lock, else -EPERM. */
int fi_lock_held_by(const fi_lock *l, uint64_t owner);

/* This thread's lock word (what fi_lock_try stores), to release later from
 * another thread with fi_lock_release_from. */
uint64_t fi_lock_self(void);

/* Release the lock if `owner` (an fi_lock_self value) holds it, from any
 * thread: for a hold whose holder can no longer release it itself (its
 * record died in another thread). 0, or -EPERM if someone else holds it. */
int fi_lock_release_from(fi_lock *l, uint64_t owner);

/* This process's identity word (pid | start time << 32, the shape of a lock
 * word), for owners that are processes rather than threads (a broadcast
 * ring's subscriber slots): any thread of the process may act for it. */
uint64_t fi_proc_self(void);

/* 0 if /proc says the thread or process whose word is `owner` is gone (no
 * such id, a zombie, or a later one under a reused id), else 1: errs
 * towards alive (no /proc, no permission). Reads a file: not for hot paths. */
int fi_owner_alive(uint64_t owner);

#endif /* FASTIPC_LOCK_H */
