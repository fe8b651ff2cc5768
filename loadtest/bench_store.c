/* bench_store: throughput and latency of the history store against a real
 * Postgres (not a test; see docs/storage.md for figures and how to run).
 *   bench_store CONNINFO [--rows N] [--batch N] [--ack-seconds S]
 *                        [--queries N] [--skip-populate] [--json FILE]
 * Works in its own schema (bench_store, via PGOPTIONS search_path) which it
 * drops and re-creates unless --skip-populate. Prints:
 *   1. sustained stored rows/s with group commit (window of pending rows),
 *   2. ack latency p50/p99/max at a steady 1,000 rows/s,
 *   3. history page latency p50/p99 (limit 50, random cursors), 1M rows in
 *      one room and 1M rows across 10k rooms.
 * --json FILE also writes the throughput and ack figures as JSON (read by
 * loadtest/capacity.py). */
#define _GNU_SOURCE
#define BENCH_NAME "bench_store"
#include "bench_pg.h"
#include "store.h"
#include "util.h"
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char g_body[101];

/* ---------- 1. throughput ---------- */

static long tp_total, tp_sent, tp_done, tp_failed;
static int tp_window;
static void tp_cb(void *ud, int st) { (void)ud; tp_done++; if (st) tp_failed++; }
static void tp_fill(uv_timer_t *t)
{
    (void)t;
    char room[16];
    while (tp_sent < tp_total && tp_sent - tp_done < tp_window) {
        snprintf(room, sizeof room, "tp%ld", tp_sent % 100);
        store_row r = {.room = room, .seq = (uint64_t)(tp_sent / 100 + 1), .client_id = "c", .user = "user",
                       .name = "User", .body = g_body, .body_len = 100, .ts = now_ms()};
        if (store_write(S, &r, tp_cb, NULL) != 0) break;
        tp_sent++;
    }
}

/* ---------- 2. ack latency ---------- */

#define ACK_MAX 200000
static uint64_t ack_t0[ACK_MAX], ack_lat[ACK_MAX];
static long ack_sent, ack_done, ack_target;
static void ack_cb(void *ud, int st)
{
    long i = (long)(intptr_t)ud;
    ack_lat[i] = st == 0 ? mono_ns() - ack_t0[i] : UINT64_MAX;
    ack_done++;
}
static uint64_t ack_start;
static void ack_tick(uv_timer_t *t)
{
    /* catch up to 1 row per elapsed ms (timers may fire late) */
    long due = (long)((mono_ns() - ack_start) / 1000000u);
    if (due > ack_target) due = ack_target;
    while (ack_sent < due) {
        store_row r = {.room = "ack", .seq = (uint64_t)ack_sent + 1, .client_id = "c", .user = "user",
                       .name = "User", .body = g_body, .body_len = 100, .ts = now_ms()};
        ack_t0[ack_sent] = mono_ns();
        if (store_write(S, &r, ack_cb, (void *)(intptr_t)ack_sent) != 0) die("ack write refused");
        ack_sent++;
    }
    if (ack_sent >= ack_target) uv_timer_stop(t);
}

/* ---------- 3. pages ---------- */

static int pg_done, pg_status;
static size_t pg_n;
static void page_cb(void *ud, int st, const store_row *rows, size_t n)
{
    (void)ud; (void)rows;
    pg_done = 1;
    pg_status = st;
    pg_n = n;
}

static void pages(const char *label, int nq, int one_room)
{
    uint64_t *lat = malloc(sizeof *lat * (size_t)nq);
    size_t rows = 0;
    char room[16];
    for (int i = 0; i < nq; i++) {
        uint64_t before;
        if (one_room) {
            snprintf(room, sizeof room, "big");
            before = (uint64_t)(rand() % 1000000) + 2;
        } else {
            snprintf(room, sizeof room, "r%d", rand() % 10000);
            before = (rand() % 4) ? (uint64_t)(rand() % 100) + 2 : UINT64_MAX;
        }
        pg_done = 0;
        uint64_t t0 = mono_ns();
        if (store_range(S, room, 0, before, 50, 1, page_cb, NULL) != 0) die("range refused");
        while (!pg_done) uv_run(L, UV_RUN_ONCE);
        lat[i] = mono_ns() - t0;
        if (pg_status) die("range failed");
        rows += pg_n;
    }
    qsort(lat, (size_t)nq, sizeof *lat, cmp_u64);
    printf("history page (%s): %d queries, limit 50, %.1f rows avg: p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
           label, nq, (double)rows / nq, pct_ms(lat, (size_t)nq, 0.5), pct_ms(lat, (size_t)nq, 0.99),
           pct_ms(lat, (size_t)nq, 1.0));
    free(lat);
}

static store *open_store(const char *url, int batch_max)
{
    char err[256];
    store_opts o = {url, batch_max, 2, 100000};
    store *s = store_new(L, &o, err, sizeof err);
    if (!s) die(err);
    uint64_t end = mono_ms() + 15000;
    while (!store_ready(s) && mono_ms() < end) uv_run(L, UV_RUN_ONCE);
    if (!store_ready(s)) die("store not ready");
    return s;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CONNINFO [--rows N] [--batch N] [--ack-seconds S] [--queries N] [--skip-populate] [--json FILE]\n", argv[0]);
        return 2;
    }
    const char *url = argv[1], *json = NULL;
    long rows = 300000;
    int batch = 500, ack_s = 10, nq = 5000, populate = 1;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atol(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ack-seconds") && i + 1 < argc) ack_s = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--queries") && i + 1 < argc) nq = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--skip-populate")) populate = 0;
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else { fprintf(stderr, "unknown argument %s\n", argv[i]); return 2; }
    }
    if (ack_s * 1000L > ACK_MAX) ack_s = ACK_MAX / 1000;
    if (!getenv("PGOPTIONS")) setenv("PGOPTIONS", "-c search_path=bench_store", 1);
    memset(g_body, 'x', 100);
    srand(42);
    PGconn *bc = PQconnectdb(url);
    if (PQstatus(bc) != CONNECTION_OK) die(PQerrorMessage(bc));
    if (populate) {
        exec_or_die(bc, "SET client_min_messages = warning");
        exec_or_die(bc, "DROP SCHEMA IF EXISTS bench_store CASCADE");
        exec_or_die(bc, "CREATE SCHEMA bench_store");
    }
    L = uv_default_loop();
    uv_timer_init(L, &tick);
    uv_timer_start(&tick, on_tick, 1, 1);

    /* 1. sustained throughput */
    S = open_store(url, batch);
    tp_total = rows;
    tp_window = batch * 20;
    uv_timer_t filler;
    uv_timer_init(L, &filler);
    uint64_t t0 = mono_ns();
    uv_timer_start(&filler, tp_fill, 0, 1);
    while (tp_done < tp_total) uv_run(L, UV_RUN_ONCE);
    double secs = (double)(mono_ns() - t0) / 1e9;
    uv_timer_stop(&filler);
    printf("throughput: %ld rows (100-byte bodies, 100 rooms, batch_max %d, batch_ms 2) in %.2f s: %.0f rows/s (%ld failed)\n",
           tp_total, batch, secs, (double)tp_total / secs, tp_failed);
    FILE *jf = NULL;
    if (json) {
        jf = fopen(json, "w");
        if (!jf) die("cannot write the --json file");
        fprintf(jf, "{\"rows\": %ld, \"batch_max\": %d, \"batch_ms\": 2, \"body_bytes\": 100, "
                    "\"rooms\": 100, \"seconds\": %.3f, \"rows_per_s\": %.1f, \"failed\": %ld",
                tp_total, batch, secs, (double)tp_total / secs, tp_failed);
    }

    /* 2. ack latency at 1,000 rows/s */
    if (ack_s > 0) {
    ack_target = ack_s * 1000L;
    ack_start = mono_ns();
    uv_timer_start(&filler, ack_tick, 1, 1);
    while (ack_done < ack_target) uv_run(L, UV_RUN_ONCE);
    qsort(ack_lat, (size_t)ack_target, sizeof ack_lat[0], cmp_u64);
    printf("ack latency at 1000 rows/s for %d s (batch_ms 2): p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
           ack_s, pct_ms(ack_lat, (size_t)ack_target, 0.5), pct_ms(ack_lat, (size_t)ack_target, 0.99),
           pct_ms(ack_lat, (size_t)ack_target, 1.0));
    if (jf)
        fprintf(jf, ", \"ack_rate\": 1000, \"ack_p50_ms\": %.3f, \"ack_p99_ms\": %.3f",
                pct_ms(ack_lat, (size_t)ack_target, 0.5), pct_ms(ack_lat, (size_t)ack_target, 0.99));
    }
    if (jf) {
        fprintf(jf, "}\n");
        fclose(jf);
    }
    if (!uv_is_closing((uv_handle_t *)&filler)) uv_close((uv_handle_t *)&filler, NULL);

    /* 3. history pages */
    if (populate && nq > 0) {
        uint64_t p0 = mono_ms();
        exec_or_die(bc, "INSERT INTO messages (room, seq, client_id, user_id, name, body, ts) "
                        "SELECT 'big', g, 'c' || g, 'user', 'User', repeat('x', 100), g "
                        "FROM generate_series(1, 1000000) g");
        exec_or_die(bc, "INSERT INTO messages (room, seq, client_id, user_id, name, body, ts) "
                        "SELECT 'r' || (g % 10000), g / 10000 + 1, 'c' || g, 'user', 'User', repeat('x', 100), g "
                        "FROM generate_series(0, 999999) g");
        exec_or_die(bc, "VACUUM ANALYZE messages");
        printf("populated 2M rows in %.1f s\n", (double)(mono_ms() - p0) / 1000.0);
    }
    if (nq > 0) {
        pages("1M rows in one room", nq, 1);
        pages("1M rows across 10k rooms", nq, 0);
    }

    store_free(S);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(L, UV_RUN_DEFAULT);
    uv_loop_close(L);
    PQfinish(bc);
    return 0;
}
