/* metrics: Prometheus counters, gauges and histograms, and their text
 * exposition (format 0.0.4).
 * Owns: every metric series of the process. Series are registered once
 * (at init, never on the hot path) and updated through the returned pointer:
 * an update is a plain add, no allocation, no lock (one loop thread).
 * Names carry the chat_ prefix; labels are a fixed string such as
 * "reason=\"slow_consumer\"" chosen at registration (never per room/user). */
#ifndef CHATD_METRICS_H
#define CHATD_METRICS_H
#include <stddef.h>
#include <stdint.h>

typedef struct metric_counter { uint64_t v; } metric_counter;
typedef struct metric_gauge { double v; } metric_gauge;
typedef struct metric_hist metric_hist;

/* Registration: same name+labels returns the same series. help may be NULL
 * after the first registration of a name. */
metric_counter *metrics_counter(const char *name, const char *help, const char *labels);
metric_gauge *metrics_gauge(const char *name, const char *help, const char *labels);
/* bounds: ascending upper bounds (seconds for durations); copied. */
metric_hist *metrics_histogram(const char *name, const char *help, const char *labels,
                               const double *bounds, int nbounds);
/* A gauge (or a counter) whose value is computed at scrape time. */
void metrics_gauge_fn(const char *name, const char *help, const char *labels,
                      double (*fn)(void *), void *ud);
void metrics_counter_fn(const char *name, const char *help, const char *labels,
                        double (*fn)(void *), void *ud);

static inline void metric_inc(metric_counter *c) { c->v++; }
static inline void metric_add(metric_counter *c, uint64_t n) { c->v += n; }
static inline void metric_set(metric_gauge *g, double v) { g->v = v; }
static inline void metric_gadd(metric_gauge *g, double d) { g->v += d; }
void metric_observe(metric_hist *h, double v);

/* Quantile estimate from the buckets (for benchmarks/tests), q in (0,1). */
double metric_hist_quantile(const metric_hist *h, double q);
uint64_t metric_hist_count(const metric_hist *h);

/* Standard bucket sets. */
extern const double METRICS_LAG_BUCKETS[];   /* 50us .. 10s */
extern const int METRICS_LAG_NBUCKETS;

/* Renders every series; returns a malloc'd NUL-terminated string, *len set. */
char *metrics_render(size_t *len);
/* Frees every series (at exit, for leak checkers; tests may register again
 * afterwards). */
void metrics_free_all(void);
/* The one guard of a module that registers its series once and keeps the
 * pointers in statics: 1 when it must register them (the first call, or the
 * first since metrics_free_all freed what its pointers point to), noting in
 * *seen (the module's static, 0 at start) that it does; 0 while its
 * pointers are valid. */
int metrics_register_due(unsigned *seen);

#endif
