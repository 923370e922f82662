/* The Channel's hand-off area (handoff.c): internal to csrc/, not part of the cffi cdef.
 *
 * A message of handoff_min bytes or more (up to half the area) is copied by
 * the sender into a shared area, a sealed memfd it made and passed once with
 * the first such message; the frame on the socket (channel.c) then carries
 * only a HANDOFF_DESC-byte descriptor [u64 offset][u64 release position].
 * The area is a byte ring used in stream order; the receiver frees room by
 * storing a message's release position in the area's header. handoff.c,
 * top, has the layout and what each side trusts.
 *
 * None of these calls touch the socket, take a lock or count themselves in:
 * the caller (channel.c) owns the two structs, inside its fi_chan, and calls
 * them from inside a counted-in channel call. None block, except
 * fi_handoff_put, which spins (no sleep) until its wait_until.
 */
#ifndef FASTIPC_HANDOFF_H
#define FASTIPC_HANDOFF_H

#include "fastipc.h"

#include <stddef.h>
#include <stdint.h>

#define HANDOFF_DESC 16u           /* a FRAME_BULK frame's wire payload */
#define HANDOFF_AREA_MAX (1ull << 30) /* the largest area (data bytes) made or mapped */
#define HANDOFF_WAIT_NS 200000     /* a sender waits this long for room before sending inline */

/* Receiving: the peer's area, and the message lent in place from it. */
struct handoff_rx {
    fi_area *area;        /* current mapping (NULL: none yet); one reference */
    size_t data;          /* its data bytes */
    int view_held;        /* a message is lent in place (fi_chan_recv_view) */
    uint64_t rel_pending; /* release position stored when the view goes */
    fi_area *stale_area;  /* an area replaced while a view into it was lent; one reference */
    fi_area *view_area;   /* the area of the message lent (no reference of its own) */
};

/* Sending: this end's own area. Zeroed, then area_fd = -1 (handoff_tx_init). */
struct handoff_tx {
    size_t min, area_size; /* fi_chan_set_handoff's; min 0: off */
    char *area;            /* our mapping (NULL until the first hand-off) */
    size_t area_len, data; /* mapping and data bytes */
    int area_fd;           /* >= 0 until the area went out with a frame */
    uint64_t head;         /* area position after the last message put */
    uint64_t released;     /* the receiver's last release position seen */
    int bulk;              /* the frame being sent is the descriptor in desc */
    unsigned char desc[HANDOFF_DESC];
};

static inline void handoff_tx_init(struct handoff_tx *t) { t->area_fd = -1; }

/* ---- receiving ---------------------------------------------------------- */

/* Map the area the peer passed on fd and make it current (the previous one
 * goes, or stays as stale_area while a view into it is lent). fd stays the
 * caller's to close. Seals before size, then size, then magic; never blocks.
 * 0; -EPROTO not a memfd sealed against shrinking of a size we map, not a
 * fastipc area (magic, or unmappable e.g. sealed against writing), or a third
 * area while the first is still lent; -ENOMEM; or fstat's errno. */
int fi_handoff_map(struct handoff_rx *h, int fd);

/* Check the descriptor d (HANDOFF_DESC bytes from the wire) of a len-byte
 * message against the current area: *src gets the message in the area
 * (the peer's memory: it may change under us but is never unmapped while
 * the area is held), *rel its release position. -EBADMSG no area, or the
 * descriptor points outside it. Never blocks. */
int fi_handoff_locate(const struct handoff_rx *h, const char *d, uint32_t len, const char **src,
                      uint64_t *rel);

/* Give the sender back the room up to release position rel (later positions
 * free everything before them); while a view is lent the store waits for
 * fi_handoff_unlend. The current area must exist (after fi_handoff_locate). */
void fi_handoff_release(struct handoff_rx *h, uint64_t rel);

/* Lend the message just located in place: its release position rel is
 * stored only when fi_handoff_unlend lets it go. */
void fi_handoff_lend(struct handoff_rx *h, uint64_t rel);

/* Let go of the lent message: drops a stale area, stores the pending
 * release position. -EINVAL none is lent. */
int fi_handoff_unlend(struct handoff_rx *h);

/* A new reference to the area of the lent message (NULL if none), for the
 * caller to drop with fi_area_unpin (fastipc.h) whenever it likes: the
 * mapping outlives the channel until then. */
fi_area *fi_handoff_pin(struct handoff_rx *h);

/* Drop the references h holds (current and stale area; pinned ones stay). */
void fi_handoff_rx_free(struct handoff_rx *h);

/* ---- sending ------------------------------------------------------------ */

/* Set what goes through the area (messages of min_len to area_size / 2
 * bytes; min_len 0: none). -EINVAL area_size not a multiple of 4096, under
 * 2 * min_len or over HANDOFF_AREA_MAX; -EBUSY another size once the area
 * exists (the peer mapped the one we have). */
int fi_handoff_config(struct handoff_tx *t, size_t min_len, size_t area_size);

/* Whether an n-byte message qualifies for the area (inline: the send hot path). */
static inline int handoff_wants(const struct handoff_tx *t, size_t n)
{
    return t->min && n >= t->min && n <= t->area_size / 2;
}

/* Copy an n-byte message into the area (made here, at the first message)
 * and make its descriptor the frame to send (bulk, desc). Spins until
 * wait_until (CLOCK_MONOTONIC ns) for room. 0; -EAGAIN send it inline: no
 * room by then, or no area to be had or trusted (hand-off is then off for
 * good: min = 0). */
int fi_handoff_put(struct handoff_tx *t, const void *buf, size_t n, int64_t wait_until);

/* The descriptor frame went out whole: forget it, and close our fd of the
 * area if it went with that frame (the peer holds it now). */
void fi_handoff_sent(struct handoff_tx *t);

/* Unmap the area and close its fd if it never went out. */
void fi_handoff_tx_free(struct handoff_tx *t);

#endif /* FASTIPC_HANDOFF_H */
