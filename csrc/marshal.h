/* Batches in marshal's list-of-bytes format, shared by the ring and the channel.
 *
 * send_many hands C `marshal.dumps(list, 2)` (built in C by CPython, no
 * Python loop per message) and recv_many returns what `marshal.loads` turns
 * into a list of bytes in C. The type codes are those of Python/marshal.c,
 * stable since Python 2; version 2 writes no back-references. Every length
 * is checked against the buffer: the blob comes from our Python, but C never
 * trusts a length it did not compute.
 */
#ifndef FASTIPC_MARSHAL_H
#define FASTIPC_MARSHAL_H

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define MARSHAL_LIST '['
#define MARSHAL_TUPLE '('
#define MARSHAL_BYTES 's'
#define MARSHAL_FLAG_REF 0x80
/* Bytes a list header, and each item's header, take. */
#define MARSHAL_HDR 5u

/* Read the header of a list or tuple: its item count, or -EINVAL; *items
 * then points at the first item. */
static inline int64_t batch_count(const char *buf, size_t len, const char **items)
{
    uint32_t count;
    if (len < MARSHAL_HDR)
        return -EINVAL;
    unsigned char type = (unsigned char)buf[0] & ~MARSHAL_FLAG_REF;
    if (type != MARSHAL_LIST && type != MARSHAL_TUPLE)
        return -EINVAL;
    memcpy(&count, buf + 1, 4);
    *items = buf + MARSHAL_HDR;
    return count;
}

/* Step *p over one bytes item ending before `end`: its payload and length go
 * to *data and *n. -EINVAL if it is not a whole bytes item. */
static inline int batch_item(const char **p, const char *end, const char **data, uint32_t *n)
{
    if (end - *p < (ptrdiff_t)MARSHAL_HDR || ((unsigned char)(*p)[0] & ~MARSHAL_FLAG_REF) != MARSHAL_BYTES)
        return -EINVAL;
    memcpy(n, *p + 1, 4);
    if ((uint64_t)(end - *p - MARSHAL_HDR) < *n)
        return -EINVAL;
    *data = *p + MARSHAL_HDR;
    *p += MARSHAL_HDR + (size_t)*n;
    return 0;
}

/* Write one bytes item at w (room checked by the caller); returns the end. */
static inline char *batch_put(char *w, const char *data, uint32_t n)
{
    w[0] = MARSHAL_BYTES;
    memcpy(w + 1, &n, 4);
    memcpy(w + MARSHAL_HDR, data, n);
    return w + MARSHAL_HDR + n;
}

/* Finish a list of `count` items written after out[0:MARSHAL_HDR]. */
static inline void batch_close(char *out, uint32_t count)
{
    out[0] = MARSHAL_LIST;
    memcpy(out + 1, &count, 4);
}

#endif /* FASTIPC_MARSHAL_H */
