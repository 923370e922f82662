/* Reference counts that any thread may drop, and the shape of a call that counts itself in.
 *
 * A handle that any thread may close while others are inside calls on it
 * (docs/architecture.md, "Handles and threads") keeps a count: 1 for the open
 * handle, 1 for each call inside (and, in ring.c, each pin and held side).
 * What the count keeps goes when it drops to 0, and a count at 0 stays
 * there: ref_get never brings freed state back into use. Everything is
 * inline (the calls are on the hot path) and SEQ_CST, as the counts were.
 */
#ifndef FASTIPC_REFS_H
#define FASTIPC_REFS_H

#include <errno.h>
#include <stdint.h>

/* Take a reference while the count is above 0: 0, or -EBADF (it reached 0;
 * what it kept is gone). Never blocks. */
static inline int ref_get(uint32_t *refs)
{
    uint32_t v = __atomic_load_n(refs, __ATOMIC_SEQ_CST);
    do {
        if (v == 0)
            return -EBADF;
    } while (!__atomic_compare_exchange_n(refs, &v, v + 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return 0;
}

/* Drop a reference: 1 if it was the last (the caller frees what it kept), else 0. */
static inline int ref_put(uint32_t *refs)
{
    return __atomic_sub_fetch(refs, 1, __ATOMIC_SEQ_CST) == 0;
}

/* The whole body of a public call that counts itself in on handle h:
 * return `closed_rc` if enter(h) fails (NULL or closed handle), else count
 * in, evaluate `call` once, leave(h), and return its value. enter and leave
 * are the file's own (they differ in what the last reference frees). */
#define COUNTED_CALL(h, enter, leave, closed_rc, call) \
    do {                                               \
        if (enter(h))                                  \
            return closed_rc;                          \
        __typeof__(call) counted_rc_ = (call);         \
        leave(h);                                      \
        return counted_rc_;                            \
    } while (0)

#endif /* FASTIPC_REFS_H */
