/* lt_hist: log-linear latency histogram (about 3% resolution, ns values),
 * mergeable by plain addition so worker processes can ship it over a pipe. */
#ifndef LT_HIST_H
#define LT_HIST_H
#include <stdint.h>

#define LT_HIST_SUB 32            /* sub-buckets per power of two */
#define LT_HIST_LIN 64            /* values below this are exact */
#define LT_HIST_NB (LT_HIST_LIN + 42 * LT_HIST_SUB)

struct lt_hist {
    uint64_t n, sum, max;
    uint64_t b[LT_HIST_NB];
};

void lt_hist_add(struct lt_hist *h, uint64_t v);
void lt_hist_merge(struct lt_hist *dst, const struct lt_hist *src);
/* q in [0,1]; returns 0 for an empty histogram */
uint64_t lt_hist_quantile(const struct lt_hist *h, double q);

#endif
