/* bench_unread: latency of GET /rooms/unread's query (STORE_SQL_UNREAD, run
 * exactly as chatd runs it: store_query on the store's libpq connection,
 * unnamed statement, one at a time) against a real Postgres. Not a test;
 * figures and how to run: docs/storage.md "Unread counts".
 *   bench_unread CONNINFO [--rooms N] [--messages N] [--queries N]
 *                         [--skip-populate] [--explain]
 * Works in its own schema (bench_unread, via PGOPTIONS search_path), created
 * by the store's own migrations. Population: N rooms, M messages written
 * interleaved across the rooms (room = i % N, the worst layout for the heap:
 * a room's rows sit on as many pages as it has rows), authors random among
 * 1,000 users; 300 measured users, each with a read state in 100 random
 * rooms, in three groups: "mostly read" (read_seq = head - 0..5), "half read"
 * (read_seq uniform in 0..head), "nothing read" (read_seq 0: every message of
 * 100 rooms is counted); 200k more read states of other users. Then VACUUM
 * ANALYZE and, per group, --queries queries for random users of the group:
 * p50 / p99 / max. Then 100k fresh messages (not vacuumed yet: the
 * visibility map does not cover them, index-only scans visit the heap) and
 * the "half read" group again. */
#define _GNU_SOURCE
#define BENCH_NAME "bench_unread"
#include "bench_pg.h"
#include "store.h"
#include "store_schema.h"
#include "util.h"
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long q_long(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    long v = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) ? atol(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return v;
}

static int g_done, g_status, g_rows;
static long g_unread;
static void on_rows(void *ud, int status, const store_result *res)
{
    (void)ud;
    g_status = status;
    g_rows = status == 0 ? store_result_rows(res) : 0;
    g_unread = 0;
    for (int i = 0; i < g_rows; i++) g_unread += atol(store_result_value(res, i, 3));
    g_done = 1;
}

static const char *GROUPS[] = {"mostly read", "half read", "nothing read"};

/* Runs n queries for random users of group g; prints the line. */
static void measure(int g, int n, const char *label)
{
    uint64_t *lat = calloc((size_t)n, sizeof *lat);
    long unread_sum = 0;
    if (!lat) die("out of memory");
    for (int i = 0; i < n; i++) {
        char user[32];
        snprintf(user, sizeof user, "bench-%d", g * 100 + rand() % 100);
        const char *p[1] = {user};
        g_done = 0;
        uint64_t t0 = mono_ns();
        if (store_query_named(S, STORE_STMT_UNREAD, STORE_SQL_UNREAD, 1, p, on_rows, NULL) != 0) die("store_query refused");
        while (!g_done) uv_run(L, UV_RUN_ONCE);
        lat[i] = mono_ns() - t0;
        if (g_status != 0 || g_rows != 100) die("unexpected answer (want 100 rooms)");
        unread_sum += g_unread;
    }
    qsort(lat, (size_t)n, sizeof *lat, cmp_u64);
    printf("%-14s %-22s rooms 100, unread/user avg %7.0f: p50 %.2f ms, p99 %.2f ms, max %.2f ms (%d queries)\n",
           GROUPS[g], label, (double)unread_sum / n, pct_ms(lat, (size_t)n, 0.5), pct_ms(lat, (size_t)n, 0.99),
           (double)lat[n - 1] / 1e6, n);
    free(lat);
}

static void explain(PGconn *c, const char *user)
{
    char *sql = NULL;
    /* the statement with the user inlined ($1 appears twice) */
    const char *t = STORE_SQL_UNREAD;
    size_t cap = strlen(t) + 256, o = 0;
    sql = malloc(cap);
    if (!sql) die("out of memory");
    o += (size_t)snprintf(sql, cap, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) ");
    for (const char *p = t; *p; p++) {
        if (p[0] == '$' && p[1] == '1') {
            o += (size_t)snprintf(sql + o, cap - o, "'%s'", user);
            p++;
        } else {
            sql[o++] = *p;
        }
    }
    sql[o] = 0;
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) die(PQresultErrorMessage(r));
    printf("\nEXPLAIN ANALYZE for %s:\n", user);
    for (int i = 0; i < PQntuples(r); i++) printf("  %s\n", PQgetvalue(r, i, 0));
    PQclear(r);
    free(sql);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_unread CONNINFO [--rooms N] [--messages N] [--queries N] "
                        "[--skip-populate] [--explain]\n");
        return 2;
    }
    const char *url = argv[1];
    long rooms = 10000, messages = 1000000;
    int queries = 1000, populate = 1, want_explain = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--rooms") && i + 1 < argc) rooms = atol(argv[++i]);
        else if (!strcmp(argv[i], "--messages") && i + 1 < argc) messages = atol(argv[++i]);
        else if (!strcmp(argv[i], "--queries") && i + 1 < argc) queries = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--skip-populate")) populate = 0;
        else if (!strcmp(argv[i], "--explain")) want_explain = 1;
        else die("unknown argument");
    }
    if (rooms < 100 || messages < rooms || queries < 1) die("need rooms >= 100, messages >= rooms, queries >= 1");
    if (!getenv("PGOPTIONS")) setenv("PGOPTIONS", "-c search_path=bench_unread", 1);
    srand(42);
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) die(PQerrorMessage(c));
    exec_or_die(c, "SET client_min_messages = warning");
    char sql[2048];
    if (populate) {
        exec_or_die(c, "DROP SCHEMA IF EXISTS bench_unread CASCADE");
        exec_or_die(c, "CREATE SCHEMA bench_unread");
    }
    L = uv_default_loop();
    uv_timer_init(L, &tick);
    uv_timer_start(&tick, on_tick, 5, 5);
    char err[256];
    store_opts so = {url, 500, 2, 0};
    S = store_new(L, &so, err, sizeof err);
    if (!S) die(err);
    uint64_t end = mono_ms() + 20000;
    while (!store_ready(S) && mono_ms() < end) uv_run(L, UV_RUN_ONCE);
    if (!store_ready(S)) die("store not ready (schema)");
    if (populate) {
        uint64_t t0 = mono_ms();
        snprintf(sql, sizeof sql,
                 "INSERT INTO messages (room, seq, client_id, user_id, name, body, ts) "
                 "SELECT 'room-' || (i %% %ld), i / %ld + 1, 'c' || i, 'user-' || (hashint4(i) & 1023), "
                 "'Name', repeat('x', 80), 1700000000000 + i FROM generate_series(0, %ld) i",
                 rooms, rooms, messages - 1);
        exec_or_die(c, sql);
        snprintf(sql, sizeof sql,
                 "INSERT INTO rooms (room, epoch) SELECT 'room-' || r, 'e' FROM generate_series(0, %ld) r",
                 rooms - 1);
        exec_or_die(c, sql);
        /* the measured users: 3 groups of 100, 100 distinct random rooms each */
        snprintf(sql, sizeof sql,
                 "INSERT INTO read_state (user_id, room, read_seq) "
                 "SELECT 'bench-' || u, 'room-' || r.k, 0 FROM generate_series(0, 299) u "
                 "CROSS JOIN LATERAL (SELECT DISTINCT (hashint4(u * 7919 + j) & 2147483647) %% %ld AS k "
                 "FROM generate_series(0, 400) j LIMIT 100) r", rooms);
        exec_or_die(c, sql);
        exec_or_die(c, "UPDATE read_state rs SET read_seq = GREATEST(0, h.head - "
                       "(hashtext(rs.user_id || rs.room) & 7) % 6) FROM (SELECT room, max(seq) AS head FROM "
                       "messages GROUP BY room) h WHERE h.room = rs.room AND rs.user_id LIKE 'bench-%' AND "
                       "substr(rs.user_id, 7)::int < 100");
        exec_or_die(c, "UPDATE read_state rs SET read_seq = (hashtext(rs.user_id || rs.room) & 2147483647) % "
                       "(h.head + 1) FROM (SELECT room, max(seq) AS head FROM messages GROUP BY room) h "
                       "WHERE h.room = rs.room AND rs.user_id LIKE 'bench-%' AND "
                       "substr(rs.user_id, 7)::int BETWEEN 100 AND 199");
        snprintf(sql, sizeof sql,
                 "INSERT INTO read_state (user_id, room, read_seq) SELECT 'other-' || u, "
                 "'room-' || ((u * 31 + k * 7) %% %ld), 50 FROM generate_series(0, 9999) u, "
                 "generate_series(0, 19) k ON CONFLICT DO NOTHING", rooms);
        exec_or_die(c, sql);
        exec_or_die(c, "VACUUM ANALYZE messages");
        exec_or_die(c, "VACUUM ANALYZE read_state");
        exec_or_die(c, "VACUUM ANALYZE rooms");
        printf("populated in %.1f s: %ld rooms, %ld messages, %ld read states\n",
               (double)(mono_ms() - t0) / 1000.0, q_long(c, "SELECT count(*) FROM rooms"),
               q_long(c, "SELECT count(*) FROM messages"), q_long(c, "SELECT count(*) FROM read_state"));
    }
    for (int g = 0; g < 3; g++) measure(g, 20, "(warm-up)");
    for (int g = 0; g < 3; g++) measure(g, queries, "(vacuumed)");
    if (want_explain) {
        explain(c, "bench-150");
        explain(c, "bench-250");
    }
    /* fresh rows: a burst of 100k messages over the same rooms, not vacuumed */
    exec_or_die(c, "ALTER TABLE messages SET (autovacuum_enabled = false)");
    snprintf(sql, sizeof sql,
             "INSERT INTO messages (room, seq, client_id, user_id, name, body, ts) "
             "SELECT 'room-' || (i %% %ld), 100000 + i / %ld, 'f' || i, 'user-' || (hashint4(i) & 1023), "
             "'Name', repeat('x', 80), 1800000000000 + i FROM generate_series(0, 99999) i",
             rooms, rooms);
    exec_or_die(c, sql);
    measure(1, queries, "(+100k not vacuumed)");
    measure(2, queries, "(+100k not vacuumed)");
    /* back to the populated state, for --skip-populate */
    exec_or_die(c, "DELETE FROM messages WHERE seq >= 100000");
    exec_or_die(c, "ALTER TABLE messages RESET (autovacuum_enabled)");
    exec_or_die(c, "VACUUM ANALYZE messages");
    store_free(S);
    uv_timer_stop(&tick);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(L, UV_RUN_DEFAULT);
    PQfinish(c);
    return 0;
}
