/* outq: see outq.h. The ring starts in the queue (OUTQ_INLINE frames) and
 * grows by doubling up to max_frames; a grown ring is kept while the queue
 * is in use and freed by the periodic outq_trim once it has stayed empty,
 * so an idle connection holds no allocation. */
#include "outq.h"
#include <stdlib.h>
#include <string.h>

void outq_init(outq *q, uint32_t max_frames, size_t max_bytes)
{
    memset(q, 0, sizeof *q);
    q->max_frames = max_frames ? max_frames : 1;
    q->max_bytes = max_bytes;
}

static void ring_free(outq *q)
{
    if (q->ring != q->inl) free(q->ring);
}

int outq_trim(outq *q)
{
    int idle = !q->pushed;
    q->pushed = 0;
    if (q->count || !outq_has_ring(q) || !idle) return 0;
    ring_free(q);
    q->ring = q->inl;
    q->cap = OUTQ_INLINE < q->max_frames ? OUTQ_INLINE : q->max_frames;
    q->head = 0;
    return 1;
}

static int grow(outq *q)
{
    uint32_t ncap = q->cap ? q->cap * 2 : OUTQ_INLINE;
    if (ncap > q->max_frames) ncap = q->max_frames;
    if (ncap <= q->cap) return -1;
    if (ncap <= OUTQ_INLINE) {      /* the first ring: the inline one (empty) */
        q->ring = q->inl;
        q->cap = ncap;
        q->head = 0;
        return 0;
    }
    msg **nr = malloc(sizeof(msg *) * ncap);
    if (!nr) return -1;
    for (uint32_t i = 0; i < q->count; i++) nr[i] = q->ring[(q->head + i) % q->cap];
    ring_free(q);
    q->ring = nr;
    q->cap = ncap;
    q->head = 0;
    return 0;
}

int outq_push(outq *q, msg *m)
{
    size_t w = msg_wire_len(m);
    if (q->count >= q->max_frames || q->bytes + w > q->max_bytes) return -1;
    if (q->count == q->cap && grow(q) < 0) return -1;
    q->ring[(q->head + q->count) % q->cap] = msg_ref(m);
    q->count++;
    q->bytes += w;
    q->pushed = 1;
    return 0;
}

int outq_iov(const outq *q, struct iovec *iov, int max, size_t *total)
{
    int n = 0;
    size_t t = 0;
    for (uint32_t i = 0; i < q->count && n < max; i++) {
        msg *m = q->ring[(q->head + i) % q->cap];
        size_t off = i == 0 ? q->head_off : 0;
        iov[n].iov_base = (void *)(msg_wire(m) + off);
        iov[n].iov_len = msg_wire_len(m) - off;
        t += iov[n].iov_len;
        n++;
    }
    *total = t;
    return n;
}

void outq_consume(outq *q, size_t n, void (*done)(msg *m, void *ud), void *ud)
{
    while (n && q->count) {
        msg *m = q->ring[q->head];
        size_t left = msg_wire_len(m) - q->head_off;
        if (n < left) {
            q->head_off += n;
            q->bytes -= n;
            return;
        }
        n -= left;
        q->bytes -= left;
        q->head_off = 0;
        q->head = (q->head + 1) % q->cap;
        q->count--;
        if (done) done(m, ud);
        msg_unref(m);
    }
}

void outq_clear(outq *q)
{
    while (q->count) {
        msg_unref(q->ring[q->head]);
        q->head = (q->head + 1) % q->cap;
        q->count--;
    }
    ring_free(q);
    q->ring = NULL;
    q->cap = q->head = 0;
    q->bytes = q->head_off = 0;
}
