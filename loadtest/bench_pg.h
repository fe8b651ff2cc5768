/* bench_pg: what the Postgres benchmarks (bench_store, bench_unread) share:
 * the loop with a tick (uv_run(UV_RUN_ONCE) never blocks long), the store
 * under test, die(), exec_or_die() on a blocking connection, and the
 * percentiles of a sorted sample. The benchmark defines BENCH_NAME (the
 * prefix of die's message) before including it.
 * Header-only: one copy per benchmark executable. */
#ifndef CHATD_BENCH_PG_H
#define CHATD_BENCH_PG_H
#include "store.h"
#include "util.h"
#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uv_loop_t *L;
static store *S;
static uv_timer_t tick;
static void on_tick(uv_timer_t *t) { (void)t; }

static void die(const char *what)
{
    fprintf(stderr, BENCH_NAME ": %s\n", what);
    exit(1);
}

/* qsort order of a sample of nanoseconds */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* the q quantile (0..1) of n sorted nanoseconds, in ms */
static double pct_ms(uint64_t *v, size_t n, double q)
{
    if (!n) return 0;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return (double)v[i] / 1e6;
}

static void exec_or_die(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "%s: %s", sql, PQresultErrorMessage(r));
        exit(1);
    }
    PQclear(r);
}

#endif
