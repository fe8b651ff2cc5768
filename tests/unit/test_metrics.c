/* test_metrics: registry identity, Prometheus text rendering, histogram
 * buckets and quantile estimates (metrics.h), and modules that keep their
 * series in statics registering again after metrics_free_all
 * (metrics_register_due: their old pointers point to freed series). */
#define _GNU_SOURCE
#include "check.h"
#include "conn.h"
#include "listener.h"
#include "metrics.h"
#include "ratelimit.h"
#include "series.h"
#include "ws.h"
#include "wsread.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* Value of the first line starting with prefix (followed by a space). */
static int line_value(const char *text, const char *prefix, double *v)
{
    size_t pl = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, prefix, pl) == 0 && p[pl] == ' ') {
            *v = strtod(p + pl + 1, NULL);
            return 0;
        }
    }
    return -1;
}

static double scrape_fn(void *ud) { return *(double *)ud; }

static void test_identity(void)
{
    metric_counter *a = metrics_counter("chat_t_frames_total", "Frames.", "dir=\"in\"");
    metric_counter *b = metrics_counter("chat_t_frames_total", NULL, "dir=\"out\"");
    metric_counter *a2 = metrics_counter("chat_t_frames_total", NULL, "dir=\"in\"");
    CHECK(a == a2, "same name+labels -> same series");
    CHECK(a != b, "other labels -> other series");
    metric_counter *n1 = metrics_counter("chat_t_plain_total", "Plain.", NULL);
    metric_counter *n2 = metrics_counter("chat_t_plain_total", NULL, "");
    CHECK(n1 == n2, "NULL labels == empty labels");
    metric_gauge *g1 = metrics_gauge("chat_t_conns", "Connections.", NULL);
    CHECK(g1 == metrics_gauge("chat_t_conns", NULL, NULL), "gauge identity");
    metric_hist *h1 = metrics_histogram("chat_t_lag_seconds", "Lag.", NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    metric_observe(h1, 0.001);
    CHECK(h1 == metrics_histogram("chat_t_lag_seconds", NULL, NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS),
          "histogram identity");
    CHECK(metric_hist_count(h1) == 1, "re-registration keeps observations");

    metric_inc(a); metric_inc(a); metric_add(b, 40); metric_inc(n1);
    metric_set(g1, 3); metric_gadd(g1, -1.5);
    CHECK(a->v == 2 && b->v == 40 && g1->v == 1.5, "updates");
}

static void test_render(void)
{
    static double fnval; /* outlives this function: rendered by later tests */
    fnval = 7;
    metrics_gauge_fn("chat_t_queue_depth", "Queue depth.", NULL, scrape_fn, &fnval);
    size_t len = 0;
    char *t = metrics_render(&len);
    CHECK(t && strlen(t) == len, "length matches");
    CHECK(count_of(t, "# HELP chat_t_frames_total Frames.\n") == 1, "HELP once:\n%s", t);
    CHECK(count_of(t, "# TYPE chat_t_frames_total counter\n") == 1, "TYPE counter once");
    CHECK(count_of(t, "# TYPE chat_t_conns gauge\n") == 1, "TYPE gauge once");
    CHECK(count_of(t, "# TYPE chat_t_lag_seconds histogram\n") == 1, "TYPE histogram once");
    CHECK(count_of(t, "# TYPE chat_t_queue_depth gauge\n") == 1, "gauge_fn typed gauge");
    CHECK(count_of(t, "# HELP ") == count_of(t, "# TYPE "), "one HELP per TYPE");
    double v;
    CHECK(line_value(t, "chat_t_frames_total{dir=\"in\"}", &v) == 0 && v == 2, "counter in");
    CHECK(line_value(t, "chat_t_frames_total{dir=\"out\"}", &v) == 0 && v == 40, "counter out");
    CHECK(line_value(t, "chat_t_plain_total", &v) == 0 && v == 1, "unlabelled counter");
    CHECK(line_value(t, "chat_t_conns", &v) == 0 && v == 1.5, "gauge value");
    CHECK(line_value(t, "chat_t_queue_depth", &v) == 0 && v == 7, "gauge_fn value");
    /* HELP/TYPE precede the family's samples */
    CHECK(strstr(t, "# TYPE chat_t_frames_total") < strstr(t, "chat_t_frames_total{"), "TYPE before samples");
    free(t);
    fnval = 9; /* computed at scrape time */
    t = metrics_render(&len);
    CHECK(line_value(t, "chat_t_queue_depth", &v) == 0 && v == 9, "gauge_fn re-evaluated");
    free(t);
}

static void test_histogram(void)
{
    static const double b[] = {0.1, 0.5, 1, 5};
    metric_hist *h = metrics_histogram("chat_t_dur_seconds", "Durations.", "op=\"x\"", b, 4);
    double obs[] = {0.05, 0.1, 0.3, 0.5, 0.7, 2, 3, 100};
    for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++) metric_observe(h, obs[i]);
    size_t len;
    char *t = metrics_render(&len);
    const char *le[] = {"0.1", "0.5", "1", "5", "+Inf"};
    double want[] = {2, 4, 5, 7, 8}; /* cumulative, bounds inclusive (le) */
    double prev = -1;
    for (int i = 0; i < 5; i++) {
        char key[128];
        double v = -1;
        snprintf(key, sizeof key, "chat_t_dur_seconds_bucket{op=\"x\",le=\"%s\"}", le[i]);
        CHECK(line_value(t, key, &v) == 0 && v == want[i], "%s = %g want %g", key, v, want[i]);
        CHECK(v >= prev, "cumulative");
        prev = v;
    }
    double c = 0, s = 0;
    CHECK(line_value(t, "chat_t_dur_seconds_count{op=\"x\"}", &c) == 0 && c == 8, "count");
    CHECK(line_value(t, "chat_t_dur_seconds_sum{op=\"x\"}", &s) == 0 && s > 106.64 && s < 106.66, "sum %g", s);
    /* unlabelled histogram: le is the only label */
    CHECK(strstr(t, "chat_t_lag_seconds_bucket{le=\"+Inf\"} 1\n") != NULL, "unlabelled +Inf bucket");
    free(t);
    CHECK(metric_hist_count(h) == 8, "hist count");
}

static void test_quantile(void)
{
    metric_hist *h = metrics_histogram("chat_t_q_seconds", "Q.", NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    CHECK(metric_hist_quantile(h, 0.5) == 0, "empty histogram -> 0");
    for (int i = 1; i <= 1000; i++) metric_observe(h, i / 1000.0 * 0.1); /* uniform 0.1ms..100ms */
    double p50 = metric_hist_quantile(h, 0.5), p90 = metric_hist_quantile(h, 0.9),
           p99 = metric_hist_quantile(h, 0.99);
    /* true values 50ms, 90ms, 99ms; the estimate must land in the right bucket */
    CHECK(p50 > 0.025 && p50 <= 0.05, "p50 %g", p50);
    CHECK(p90 > 0.05 && p90 <= 0.1, "p90 %g", p90);
    CHECK(p99 > 0.05 && p99 <= 0.1, "p99 %g", p99);
    CHECK(p50 <= p90 && p90 <= p99, "monotone in q");
    double prev = 0;
    int mono = 1;
    for (double q = 0.01; q < 1; q += 0.01) {
        double e = metric_hist_quantile(h, q);
        if (e < prev) mono = 0;
        prev = e;
    }
    CHECK(mono, "monotone over q in (0,1)");
    /* all observations in one bucket: the estimate stays inside it */
    metric_hist *one = metrics_histogram("chat_t_one_seconds", "One.", NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    for (int i = 0; i < 100; i++) metric_observe(one, 0.0015);
    double e = metric_hist_quantile(one, 0.5);
    CHECK(e > 0.001 && e <= 0.002, "single bucket p50 %g", e);
    /* above the last bound: capped at the last bound */
    metric_hist *big = metrics_histogram("chat_t_big_seconds", "Big.", NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    metric_observe(big, 1000);
    CHECK(metric_hist_quantile(big, 0.99) == 10, "overflow capped at last bound");
}

/* Each module registers once (its guard), its series are freed, then it
 * initialises again: its series are back in the exposition and an update
 * lands in them (before: the guard saw its dangling pointer, registered
 * nothing, and the update wrote into freed memory, which ASan reports). */
static void rl_evict(ratelimit *rl)
{
    char k[16];
    for (int i = 0; i < 17; i++) {   /* 16 buckets that never refill, then one more */
        snprintf(k, sizeof k, "k%d", i);
        rl_take(rl, k, strlen(k), 0.001, 1, 1000);
    }
}

static void test_register_again(void)
{
    for (int round = 0; round < 2; round++) {
        metrics_free_all();
        for (int twice = 0; twice < 2; twice++) {   /* the guard: registered once */
            conn_metrics_init();
            listener_metrics_init();
            ws_metrics_init();
            wsread_metrics_init();
        }
        ratelimit *rl = rl_new(16);
        rl_evict(rl);
        rl_free(rl);
        wsread_count_failure(1002);
        CHECK(series("chat_ratelimit_evictions_total") == 1, "round %d: evictions %g", round,
              series("chat_ratelimit_evictions_total"));
        CHECK(series("chat_ws_protocol_errors_total{code=\"1002\"}") == 1, "round %d: 1002 %g",
              round, series("chat_ws_protocol_errors_total{code=\"1002\"}"));
        CHECK(series("chat_connections_open") == 0, "round %d: conn.c's gauge", round);
        CHECK(series("chat_accept_paused") == 0, "round %d: listener.c's gauge", round);
        CHECK(series("chat_connections_total{result=\"accepted\"}") == 0, "round %d: ws.c's", round);
        size_t len;
        char *t = metrics_render(&len);
        CHECK(t && count_of(t, "# TYPE chat_ws_protocol_errors_total ") == 1 &&
                  count_of(t, "chat_ws_protocol_errors_total{code=\"1002\"} ") == 1,
              "round %d: registered once", round);
        free(t);
    }
}

int main(void)
{
    test_identity();
    test_render();
    test_histogram();
    test_quantile();
    metrics_free_all();
    size_t len = 99;
    char *t = metrics_render(&len);
    CHECK(len == 0, "empty after free_all (%zu)", len);
    free(t);
    metric_counter *c = metrics_counter("chat_t_again_total", "Again.", NULL);
    CHECK(c && c->v == 0, "register after free_all");
    test_register_again();
    metrics_free_all();
    return check_summary("test_metrics");
}
