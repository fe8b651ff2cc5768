/* lt_hist: log-linear latency histogram, see lt_hist.h. */
#include "lt_hist.h"

static unsigned bucket_of(uint64_t v)
{
    if (v < LT_HIST_LIN)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);      /* >= 6 */
    unsigned sub = (unsigned)((v >> (e - 5)) & (LT_HIST_SUB - 1));
    unsigned idx = LT_HIST_LIN + (e - 6) * LT_HIST_SUB + sub;
    return idx < LT_HIST_NB ? idx : LT_HIST_NB - 1;
}

/* midpoint of a bucket's value range */
static uint64_t value_of(unsigned idx)
{
    if (idx < LT_HIST_LIN)
        return idx;
    unsigned e = (idx - LT_HIST_LIN) / LT_HIST_SUB + 6;
    unsigned sub = (idx - LT_HIST_LIN) % LT_HIST_SUB;
    uint64_t lo = (1ull << e) + ((uint64_t)sub << (e - 5));
    return lo + (1ull << (e - 6));
}

void lt_hist_add(struct lt_hist *h, uint64_t v)
{
    h->b[bucket_of(v)]++;
    h->n++;
    h->sum += v;
    if (v > h->max)
        h->max = v;
}

void lt_hist_merge(struct lt_hist *dst, const struct lt_hist *src)
{
    for (unsigned i = 0; i < LT_HIST_NB; i++)
        dst->b[i] += src->b[i];
    dst->n += src->n;
    dst->sum += src->sum;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t lt_hist_quantile(const struct lt_hist *h, double q)
{
    if (h->n == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->n);
    if (rank >= h->n)
        rank = h->n - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < LT_HIST_NB; i++) {
        seen += h->b[i];
        if (seen > rank) {
            uint64_t v = value_of(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}
