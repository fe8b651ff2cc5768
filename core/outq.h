/* outq: a connection's bounded outbound queue of shared frames.
 * A ring of msg references bounded by frame count and by bytes; the head
 * frame may be partly written (head_off bytes of its wire form are out).
 * Up to OUTQ_INLINE frames live in the queue itself (no allocation for an
 * idle or lightly loaded connection); a longer queue moves to a malloc'd
 * ring, kept when the queue drains (the next burst reuses it: no malloc and
 * free per burst in a busy room) and given back by outq_trim once the
 * queue has stayed empty, with nothing pushed, between two trims (conn.c
 * trims every queue once a second: an idle connection holds no ring).
 * Owns: one reference to every queued msg. The queue must not be copied
 * (the ring may point into it). */
#ifndef CHATD_OUTQ_H
#define CHATD_OUTQ_H
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include "msg.h"

#define OUTQ_INLINE 2

typedef struct outq {
    msg **ring;            /* inl, or malloc'd when cap > OUTQ_INLINE */
    uint32_t cap, head, count;
    size_t bytes;          /* wire bytes queued, minus head_off */
    size_t head_off;       /* bytes of the head frame already written */
    uint32_t max_frames;
    uint8_t pushed;        /* a frame was pushed since the last outq_trim */
    size_t max_bytes;
    msg *inl[OUTQ_INLINE];
} outq;

void outq_init(outq *q, uint32_t max_frames, size_t max_bytes);
/* Takes a new reference on m. Returns -1 (nothing taken) when the frame
 * would exceed either bound. */
int outq_push(outq *q, msg *m);
/* frames more frames of bytes wire bytes would fit beside what is queued */
static inline int outq_fits(const outq *q, size_t frames, size_t bytes)
{
    return q->count + frames <= q->max_frames && bytes <= q->max_bytes &&
           q->bytes <= q->max_bytes - bytes;
}
static inline int outq_empty(const outq *q) { return q->count == 0; }
static inline msg *outq_peek(const outq *q) { return q->count ? q->ring[q->head] : NULL; }
/* Fills up to max iovecs from the head (first one offset by head_off);
 * returns how many; *total gets their byte sum. */
int outq_iov(const outq *q, struct iovec *iov, int max, size_t *total);
/* Marks n wire bytes as written: drops the fully written frames (calling
 * done(m, ud) for each before unref) and advances head_off. */
void outq_consume(outq *q, size_t n, void (*done)(msg *m, void *ud), void *ud);
void outq_clear(outq *q);
/* Gives a grown ring back (the queue returns to its inline ring) when the
 * queue is empty and nothing was pushed since the previous call; returns 1
 * when it freed one. Called periodically: a ring outlives its last burst by
 * one to two periods. */
int outq_trim(outq *q);
/* 1 while the queue holds a malloc'd ring. */
static inline int outq_has_ring(const outq *q) { return q->ring && q->ring != q->inl; }

#endif
