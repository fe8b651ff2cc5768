/* metrics: see metrics.h. A registry of families (name, help, type), each
 * with a list of series (labels + value). Rendering groups series by family
 * so HELP/TYPE appear once per name. */
#define _GNU_SOURCE
#include "metrics.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum mtype { M_COUNTER, M_GAUGE, M_HIST, M_GAUGE_FN, M_COUNTER_FN };

struct metric_hist {
    double *bounds;
    uint64_t *buckets; /* nbounds + 1 (+Inf) */
    int nbounds;
    uint64_t count;
    double sum;
};

typedef struct series {
    char *labels;
    union { metric_counter c; metric_gauge g; metric_hist h; } u;
    double (*fn)(void *);
    void *ud;
    struct series *next;
} series;

typedef struct family {
    char *name, *help;
    enum mtype type;
    series *first, *last;
    struct family *next;
} family;

static family *g_first, *g_last;
/* bumped by metrics_free_all: the pointers a module registered in an older
 * generation point to freed series (metrics_register_due); never 0 */
static unsigned g_gen = 1;

const double METRICS_LAG_BUCKETS[] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
const int METRICS_LAG_NBUCKETS = sizeof METRICS_LAG_BUCKETS / sizeof METRICS_LAG_BUCKETS[0];

static family *fam_get(const char *name, const char *help, enum mtype type)
{
    for (family *f = g_first; f; f = f->next)
        if (strcmp(f->name, name) == 0) return f;
    family *f = calloc(1, sizeof *f);
    if (!f) abort();
    f->name = strdup(name);
    f->help = strdup(help ? help : name);
    f->type = type;
    if (g_last) g_last->next = f; else g_first = f;
    g_last = f;
    return f;
}

static series *series_get(family *f, const char *labels, int *created)
{
    const char *l = labels ? labels : "";
    for (series *s = f->first; s; s = s->next)
        if (strcmp(s->labels, l) == 0) { *created = 0; return s; }
    series *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->labels = strdup(l);
    if (f->last) f->last->next = s; else f->first = s;
    f->last = s;
    *created = 1;
    return s;
}

metric_counter *metrics_counter(const char *name, const char *help, const char *labels)
{
    int c;
    return &series_get(fam_get(name, help, M_COUNTER), labels, &c)->u.c;
}

metric_gauge *metrics_gauge(const char *name, const char *help, const char *labels)
{
    int c;
    return &series_get(fam_get(name, help, M_GAUGE), labels, &c)->u.g;
}

void metrics_gauge_fn(const char *name, const char *help, const char *labels,
                      double (*fn)(void *), void *ud)
{
    int c;
    series *s = series_get(fam_get(name, help, M_GAUGE_FN), labels, &c);
    s->fn = fn;
    s->ud = ud;
}

void metrics_counter_fn(const char *name, const char *help, const char *labels,
                        double (*fn)(void *), void *ud)
{
    int c;
    series *s = series_get(fam_get(name, help, M_COUNTER_FN), labels, &c);
    s->fn = fn;
    s->ud = ud;
}

metric_hist *metrics_histogram(const char *name, const char *help, const char *labels,
                               const double *bounds, int nbounds)
{
    int c;
    series *s = series_get(fam_get(name, help, M_HIST), labels, &c);
    if (c) {
        s->u.h.nbounds = nbounds;
        s->u.h.bounds = malloc(sizeof(double) * (size_t)nbounds);
        s->u.h.buckets = calloc((size_t)nbounds + 1, sizeof(uint64_t));
        if (!s->u.h.bounds || !s->u.h.buckets) abort();
        memcpy(s->u.h.bounds, bounds, sizeof(double) * (size_t)nbounds);
    }
    return &s->u.h;
}

void metric_observe(metric_hist *h, double v)
{
    /* binary search for the first bound >= v */
    int lo = 0, hi = h->nbounds;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (v <= h->bounds[mid]) hi = mid; else lo = mid + 1;
    }
    h->buckets[lo]++;
    h->count++;
    h->sum += v;
}

uint64_t metric_hist_count(const metric_hist *h) { return h->count; }

double metric_hist_quantile(const metric_hist *h, double q)
{
    if (!h->count) return 0;
    double rank = q * (double)h->count;
    uint64_t cum = 0;
    for (int i = 0; i <= h->nbounds; i++) {
        uint64_t prev = cum;
        cum += h->buckets[i];
        if ((double)cum >= rank) {
            if (i == h->nbounds) return h->bounds[h->nbounds - 1];
            double lo = i ? h->bounds[i - 1] : 0, hi = h->bounds[i];
            double frac = h->buckets[i] ? (rank - (double)prev) / (double)h->buckets[i] : 0;
            return lo + (hi - lo) * frac;
        }
    }
    return h->bounds[h->nbounds - 1];
}

typedef struct { char *p; size_t len, cap; } sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (b->len + (size_t)n < b->cap) { b->len += (size_t)n; return; }
        size_t nc = b->cap * 2 + (size_t)n + 1;
        char *np = realloc(b->p, nc);
        if (!np) abort();
        b->p = np;
        b->cap = nc;
    }
}

static void fmt_num(char *out, size_t n, double v)
{
    if (v == (double)(int64_t)v && v < 9e15 && v > -9e15)
        snprintf(out, n, "%lld", (long long)v);
    else
        snprintf(out, n, "%.9g", v);
}

char *metrics_render(size_t *len)
{
    sbuf b = {malloc(8192), 0, 8192};
    if (!b.p) abort();
    b.p[0] = 0;
    static const char *tn[] = {"counter", "gauge", "histogram", "gauge", "counter"};
    for (family *f = g_first; f; f = f->next) {
        sb_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, tn[f->type]);
        for (series *s = f->first; s; s = s->next) {
            const char *l = s->labels;
            int hl = l[0] != 0;
            char num[64];
            switch (f->type) {
            case M_COUNTER:
                sb_printf(&b, "%s%s%s%s %llu\n", f->name, hl ? "{" : "", l, hl ? "}" : "",
                          (unsigned long long)s->u.c.v);
                break;
            case M_GAUGE:
            case M_GAUGE_FN:
            case M_COUNTER_FN:
                fmt_num(num, sizeof num, f->type == M_GAUGE ? s->u.g.v : s->fn(s->ud));
                sb_printf(&b, "%s%s%s%s %s\n", f->name, hl ? "{" : "", l, hl ? "}" : "", num);
                break;
            case M_HIST: {
                uint64_t cum = 0;
                for (int i = 0; i <= s->u.h.nbounds; i++) {
                    cum += s->u.h.buckets[i];
                    if (i < s->u.h.nbounds) fmt_num(num, sizeof num, s->u.h.bounds[i]);
                    else strcpy(num, "+Inf");
                    sb_printf(&b, "%s_bucket{%s%sle=\"%s\"} %llu\n", f->name, l, hl ? "," : "",
                              num, (unsigned long long)cum);
                }
                fmt_num(num, sizeof num, s->u.h.sum);
                sb_printf(&b, "%s_sum%s%s%s %s\n", f->name, hl ? "{" : "", l, hl ? "}" : "", num);
                sb_printf(&b, "%s_count%s%s%s %llu\n", f->name, hl ? "{" : "", l, hl ? "}" : "",
                          (unsigned long long)s->u.h.count);
                break;
            }
            }
        }
    }
    *len = b.len;
    return b.p;
}

void metrics_free_all(void)
{
    family *f = g_first;
    while (f) {
        family *fn = f->next;
        series *s = f->first;
        while (s) {
            series *sn = s->next;
            if (f->type == M_HIST) { free(s->u.h.bounds); free(s->u.h.buckets); }
            free(s->labels);
            free(s);
            s = sn;
        }
        free(f->name);
        free(f->help);
        free(f);
        f = fn;
    }
    g_first = g_last = NULL;
    if (++g_gen == 0) g_gen = 1;
}

int metrics_register_due(unsigned *seen)
{
    if (*seen == g_gen) return 0;
    *seen = g_gen;
    return 1;
}
