/* test_store: the store module against a real Postgres 15.
 * Uses CHATD_TEST_DATABASE_URL when set, else starts a throwaway Postgres
 * with tools/services.sh on a port of 17100-17119 (and then also kills and
 * restarts it mid-stream). Every run works in its own schema (PGOPTIONS
 * search_path) so it never touches other data. Exit 0 pass, 1 fail, 77 skip. */
#define _GNU_SOURCE
/* each test stops at its first failed check: later steps build on earlier ones */
#define CHECK_STOPS_TEST
#include "check.h"
#include "pg_procs.h"
#include "uvwait.h"
#include "store.h"
#include "store_schema.h"
#include <inttypes.h>
#include "metrics.h"
#include "util.h"
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uv_loop_t *L;

#define WAIT(cond, ms) WAIT_ON(L, cond, ms)

static void run_for(int ms) { run_on(L, ms); }

static long row_count(const char *room, long seq)
{
    char sql[256];
    if (seq >= 0) snprintf(sql, sizeof sql, "SELECT count(*) FROM messages WHERE room='%s' AND seq=%ld", room, seq);
    else snprintf(sql, sizeof sql, "SELECT count(*) FROM messages WHERE room='%s'", room);
    return qint(sql);
}

static store *open_store(int batch_max, int batch_ms, int pending_max)
{
    char err[256] = "";
    store_opts o = {g_url, batch_max, batch_ms, pending_max};
    store *s = store_new(L, &o, err, sizeof err);
    if (!s) fprintf(stderr, "store_new: %s\n", err);
    return s;
}

/* ---------- callbacks ---------- */

typedef struct wctx {
    int calls, status, committed_at_cb;
    const char *room;
    long seq;
    uint64_t t_cb;
} wctx;

static void wcb(void *ud, int status)
{
    wctx *c = ud;
    c->calls++;
    c->status = status;
    c->t_cb = mono_ns();
    if (status == 0 && c->room) c->committed_at_cb = row_count(c->room, c->seq) == 1;
}

static int sum_calls(const wctx *w, int n)
{
    int t = 0;
    for (int i = 0; i < n; i++) t += w[i].calls;
    return t;
}

static int g_cnt_ok, g_cnt_fail, g_cnt_calls;
static void count_cb(void *ud, int status)
{
    (void)ud;
    g_cnt_calls++;
    if (status == 0) g_cnt_ok++; else g_cnt_fail++;
}
static void reset_counts(void) { g_cnt_ok = g_cnt_fail = g_cnt_calls = 0; }

static store_row mkrow(const char *room, uint64_t seq, const char *body)
{
    store_row r = {.room = room, .seq = seq, .user = "u1", .name = "User One", .body = body,
                   .body_len = strlen(body), .ts = 1700000000000ull + seq};
    return r;
}

typedef struct rctx {
    int calls, status;
    size_t n;
    uint64_t seqs[256];
    char body0[64], client0[64], user0[32], name0[32];
    char meta[2][64];
    int client0_null, meta_null[2];
    uint64_t ts0;
} rctx;

static void rcb(void *ud, int status, const store_row *rows, size_t n)
{
    rctx *c = ud;
    c->calls++;
    c->status = status;
    c->n = n;
    for (size_t i = 0; i < n && i < 256; i++) c->seqs[i] = rows[i].seq;
    if (n) {
        snprintf(c->body0, sizeof c->body0, "%.*s", (int)rows[0].body_len, rows[0].body);
        c->client0_null = rows[0].client_id == NULL;
        snprintf(c->client0, sizeof c->client0, "%s", rows[0].client_id ? rows[0].client_id : "");
        snprintf(c->user0, sizeof c->user0, "%s", rows[0].user);
        snprintf(c->name0, sizeof c->name0, "%s", rows[0].name);
        c->ts0 = rows[0].ts;
    }
    for (size_t i = 0; i < n && i < 2; i++) {
        c->meta_null[i] = rows[i].meta == NULL;
        snprintf(c->meta[i], sizeof c->meta[i], "%.*s", (int)rows[i].meta_len,
                 rows[i].meta ? rows[i].meta : "");
    }
}

static int range_sync(store *s, const char *room, uint64_t after, uint64_t before, int limit,
                      int newest, rctx *c)
{
    memset(c, 0, sizeof *c);
    if (store_range(s, room, after, before, limit, newest, rcb, c) != 0) return -1;
    WAIT(c->calls, 5000);
    return c->calls == 1 && c->status == 0 ? 0 : -1;
}

/* consecutive ascending check */
static int seqs_are(const rctx *c, uint64_t from, uint64_t to)
{
    if (to < from) return c->n == 0;
    if (c->n != to - from + 1) return 0;
    for (size_t i = 0; i < c->n; i++)
        if (c->seqs[i] != from + i) return 0;
    return 1;
}

/* ---------- tests ---------- */

static void test_bad_and_unreachable(void)
{
    char err[256] = "";
    store_opts bad = {"postgresql://[::1", 0, 0, 0};
    CHECK(store_new(L, &bad, err, sizeof err) == NULL);
    CHECK(err[0] != 0);
    store_opts o = {"host=127.0.0.1 port=17199 dbname=chatd user=postgres", 10, 1, 100};
    store *s = store_new(L, &o, err, sizeof err);
    CHECK(s);
    run_for(300);
    CHECK(!store_ready(s));
    rctx rc;
    CHECK(store_range(s, "r", 0, UINT64_MAX, 10, 1, rcb, &rc) == -1);
    reset_counts();
    for (int i = 1; i <= 5; i++) {
        store_row r = mkrow("unreach", (uint64_t)i, "x");
        CHECK(store_write(s, &r, count_cb, NULL) == 0);
    }
    run_for(200);
    CHECK(g_cnt_calls == 0);
    CHECK(store_pending(s) == 5);
    store_free(s);
    CHECK(g_cnt_calls == 5 && g_cnt_fail == 5);
    run_for(20);
    CHECK(g_cnt_calls == 5);
}

static void test_migrations(void)
{
    long before = qint("SELECT count(*) FROM pg_tables WHERE tablename='messages' AND schemaname=current_schema()");
    CHECK(before == 0);
    store *a = open_store(0, 0, 0), *b = open_store(0, 0, 0);
    CHECK(a && b);
    WAIT(store_ready(a) && store_ready(b), 10000);
    CHECK(store_ready(a) && store_ready(b));
    /* versions need not be contiguous (v3 and v5 come from other branches) */
    CHECK(qint("SELECT count(*) FROM schema_migrations") >= 2);
    CHECK(qint("SELECT max(version) FROM schema_migrations") == store_schema_version());
    CHECK(qint("SELECT count(*) FROM pg_tables WHERE tablename='messages' AND schemaname=current_schema()") == 1);
    store_free(a);
    store_free(b);
    store *c = open_store(0, 0, 0);
    WAIT(store_ready(c), 10000);
    CHECK(store_ready(c));
    CHECK(qint("SELECT max(version) FROM schema_migrations") == store_schema_version());
    CHECK(qint("SELECT count(*) FROM schema_migrations") == qint("SELECT count(DISTINCT version) FROM schema_migrations"));
    CHECK(qint("SELECT count(*) FROM information_schema.columns WHERE table_name='messages' "
               "AND column_name='meta' AND table_schema=current_schema()") == 1);
    store_free(c);
}

static void test_batches(void)
{
    store *s = open_store(100, 20, 0);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    metric_hist *rows_h = metrics_histogram("chat_pg_batch_rows", NULL, NULL, NULL, 0);
    metric_counter *written = metrics_counter("chat_pg_rows_written_total", NULL, NULL);
    uint64_t batches0 = metric_hist_count(rows_h), written0 = written->v;

    /* one row waits about batch_ms, then commits before its callback */
    wctx one = {.room = "batch1", .seq = 1};
    store_row r1 = mkrow("batch1", 1, "hello");
    uint64_t t0 = mono_ns();
    CHECK(store_write(s, &r1, wcb, &one) == 0);
    WAIT(one.calls, 5000);
    CHECK(one.calls == 1 && one.status == 0 && one.committed_at_cb);
    CHECK(one.t_cb - t0 >= 18ull * 1000000ull);

    /* 250 rows: batches of at most 100, each callback after its commit */
    static wctx w[250];
    for (int i = 0; i < 250; i++) {
        w[i] = (wctx){.room = "batch2", .seq = i + 1};
        store_row r = mkrow("batch2", (uint64_t)i + 1, "body");
        CHECK(store_write(s, &r, wcb, &w[i]) == 0);
    }
    CHECK(store_pending(s) == 250);
    WAIT(sum_calls(w, 250) == 250, 10000);
    for (int i = 0; i < 250; i++) CHECK(w[i].calls == 1 && w[i].status == 0 && w[i].committed_at_cb);
    CHECK(store_pending(s) == 0);
    CHECK(row_count("batch2", -1) == 250);
    CHECK(metric_hist_count(rows_h) - batches0 >= 4 && metric_hist_count(rows_h) - batches0 <= 6);
    CHECK(written->v - written0 == 251);
    size_t len;
    char *txt = metrics_render(&len);
    CHECK(strstr(txt, "chat_pg_op_duration_seconds_bucket{op=\"batch\"") &&
          strstr(txt, "chat_pg_pending_writes") && strstr(txt, "chat_pg_reconnects_total"));
    free(txt);
    store_free(s);
}

/* batch_max above STORE_BATCH_HARD_MAX (10000 rows) is clamped */
static void test_param_limit(void)
{
    store *s = open_store(100000, 50, 0);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    metric_hist *rows_h = metrics_histogram("chat_pg_batch_rows", NULL, NULL, NULL, 0);
    uint64_t b0 = metric_hist_count(rows_h);
    reset_counts();
    const int N = 12000;
    for (int i = 1; i <= N; i++) {
        store_row r = mkrow("bigbatch", (uint64_t)i, "b");
        CHECK(store_write(s, &r, count_cb, NULL) == 0);
    }
    WAIT(g_cnt_calls == N, 30000);
    CHECK(g_cnt_ok == N);
    /* batches of STORE_BATCH_HARD_MAX rows, then the rest */
    uint64_t want = (uint64_t)((N + STORE_BATCH_HARD_MAX - 1) / STORE_BATCH_HARD_MAX);
    CHECK(metric_hist_count(rows_h) - b0 == want, "%llu batches, want %llu",
          (unsigned long long)(metric_hist_count(rows_h) - b0), (unsigned long long)want);
    CHECK(row_count("bigbatch", -1) == N);
    store_free(s);
}

static void test_idempotent(void)
{
    store *s = open_store(100, 5, 0);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    reset_counts();
    store_row a = mkrow("idem", 1, "first");
    CHECK(store_write(s, &a, count_cb, NULL) == 0);
    CHECK(store_write(s, &a, count_cb, NULL) == 0); /* same batch, identical */
    WAIT(g_cnt_calls == 2, 5000);
    CHECK(store_write(s, &a, count_cb, NULL) == 0); /* a later batch: a retry, a backfill */
    WAIT(g_cnt_calls == 3, 5000);
    CHECK(g_cnt_ok == 3);
    CHECK(row_count("idem", 1) == 1);
    CHECK(qint("SELECT count(*) FROM messages WHERE room='idem' AND body='first'") == 1);
    /* rows Postgres could not store are refused up front */
    store_row bad = mkrow("idem", 2, "x");
    bad.body = "a\0b";
    bad.body_len = 3;
    CHECK(store_write(s, &bad, count_cb, NULL) == -3, "NUL: never storable");
    bad.body = "\xff\xfe";
    bad.body_len = 2;
    CHECK(store_write(s, &bad, count_cb, NULL) == -3, "invalid UTF-8: never storable");
    store_row big = mkrow("idem", (uint64_t)INT64_MAX + 1, "x");
    CHECK(store_write(s, &big, count_cb, NULL) == -3, "seq over 2^63-1: never storable");
    store_free(s);
}

/* A different row under a stored (room, seq) is a conflict: never reported
 * as stored (status -2), counted, and the stored row stays; identical rows
 * in the same batch stay fine. */
/* the batch's column arrays carry any text (quotes, backslashes, braces,
 * commas, the word NULL, newlines) and a NULL client id or meta unchanged;
 * batches of different sizes share the one prepared statement */
#define ARR_META "{\"k\": \"a\\\\b \\\"q\\\" {,}\", \"n\": null}"
static void test_array_text(void)
{
    store *s = open_store(500, 2, 0);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    reset_counts();
    const char *bodies[] = {"a \"quoted\" {x,y}", "back\\slash\\", "NULL", "", "line\nbreak, \t tab",
                            "\xc3\xa9\\\"}{", "{\"json\": [1, 2]}"};
    int nb = (int)(sizeof bodies / sizeof bodies[0]);
    for (int i = 0; i < nb; i++) {
        store_row r = mkrow("arr\"{,}", (uint64_t)i + 1, bodies[i]);
        r.client_id = i % 2 ? "c\"1\\" : NULL;
        r.name = "N\\\"";
        if (i % 2) { r.meta = ARR_META; r.meta_len = strlen(ARR_META); }
        CHECK(store_write(s, &r, count_cb, NULL) == 0);
        if (i == 2) WAIT(g_cnt_calls == 3, 5000); /* a batch of 3, then one of 4 */
    }
    WAIT(g_cnt_calls == nb, 5000);
    CHECK(g_cnt_ok == nb);
    for (int i = 0; i < nb; i++) {
        rctx c;
        CHECK(range_sync(s, "arr\"{,}", (uint64_t)i, (uint64_t)i + 2, 1, 0, &c) == 0);
        CHECK(c.n == 1 && strcmp(c.body0, bodies[i]) == 0);
        CHECK(c.client0_null == !(i % 2));
        if (i % 2) CHECK(strcmp(c.client0, "c\"1\\") == 0);
        CHECK(strcmp(c.name0, "N\\\"") == 0);
        CHECK(c.meta_null[0] == !(i % 2));
        if (i % 2) CHECK(strcmp(c.meta[0], ARR_META) == 0);
    }
    store_free(s);
}

typedef struct cctx { int calls, status; unsigned char st[8]; } cctx;

static void ccb(void *ud, int status, const unsigned char *stored)
{
    cctx *c = ud;
    c->calls++;
    c->status = status;
    if (stored) memcpy(c->st, stored, 5);
}

static int bc_calls, bc_status;
static unsigned char bc_st[512];

static void bccb(void *ud, int status, const unsigned char *stored)
{
    (void)ud;
    bc_calls++;
    bc_status = status;
    if (stored) memcpy(bc_st, stored, 450);
}

/* store_check: which (room, seq) pairs are stored */
static void test_check(void)
{
    store *s = open_store(500, 2, 0);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    reset_counts();
    store_row a = mkrow("chk", 1, "x"), b = mkrow("chk", 3, "y"), c2 = mkrow("chk\"2", 2, "z");
    CHECK(store_write(s, &a, count_cb, NULL) == 0);
    CHECK(store_write(s, &b, count_cb, NULL) == 0);
    CHECK(store_write(s, &c2, count_cb, NULL) == 0);
    WAIT(g_cnt_calls == 3, 5000);
    const char *rooms[] = {"chk", "chk", "chk", "chk\"2", "nope"};
    uint64_t seqs[] = {1, 2, 3, 2, 1};
    cctx c = {0};
    CHECK(store_check(s, 5, rooms, seqs, ccb, &c) == 0);
    WAIT(c.calls, 5000);
    CHECK(c.calls == 1 && c.status == 0);
    CHECK(c.st[0] == 1 && c.st[1] == 0 && c.st[2] == 1 && c.st[3] == 1 && c.st[4] == 0);
    CHECK(store_check(s, 0, rooms, seqs, ccb, &c) == -1);
    /* more pairs than one chunk (200): every chunk's answer lands in place */
    {
        enum { BIG = 450 };
        static const char *br[BIG];
        static uint64_t bs[BIG];
        for (int i = 0; i < BIG; i++) { br[i] = "chk"; bs[i] = (uint64_t)(i % 5); }
        bc_calls = 0;
        CHECK(store_check(s, BIG, br, bs, bccb, NULL) == 0);
        WAIT(bc_calls, 5000);
        CHECK(bc_calls == 1 && bc_status == 0);
        int bad = 0;
        for (int i = 0; i < BIG; i++) bad += bc_st[i] != (bs[i] == 1 || bs[i] == 3);
        CHECK(bad == 0);
    }
    /* pending when the store goes away: answered -1 */
    cctx d = {0};
    CHECK(store_check(s, 5, rooms, seqs, ccb, &d) == 0);
    store_free(s);
    CHECK(d.calls == 1 && d.status == -1);
}

static store_row mkupd(const char *room, uint64_t seq, int kind, uint64_t target, const char *user);

static void test_conflict(void)
{
    store *s = open_store(100, 5, 0);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    metric_counter *conflicts = metrics_counter("chat_store_conflicts_total", NULL, NULL);
    metric_counter *written = metrics_counter("chat_pg_rows_written_total", NULL, NULL);
    uint64_t c0 = conflicts->v, w0 = written->v;
    wctx w[8];
    memset(w, 0, sizeof w);
    store_row first = mkrow("confl", 1, "first"), other = mkrow("confl", 1, "other");
    store_row two = mkrow("confl", 2, "two");
    store_row idc = mkrow("confl", 3, "with id"), idd = mkrow("confl", 3, "with id");
    idc.client_id = "c1";
    idd.client_id = "c2";                                     /* differs only by id */
    store_row ide = mkrow("confl", 3, "resent");              /* same id and user: */
    ide.client_id = "c1";                                     /* the same message */
    ide.ts += 5;
    store_row idf = mkrow("confl", 3, "with id");             /* same id, another user */
    idf.client_id = "c1";
    idf.user = "u2";
    store_row idg = mkupd("confl", 3, STORE_EDIT, 1, "u1");   /* same id and user, an edit: */
    idg.client_id = "c1";                                     /* the id used twice (-4) */
    idg.body = "e";
    idg.body_len = 1;
    CHECK(store_write(s, &first, wcb, &w[0]) == 0);
    CHECK(store_write(s, &other, wcb, &w[1]) == 0);           /* same batch, different */
    CHECK(store_write(s, &two, wcb, &w[2]) == 0);
    CHECK(store_write(s, &idc, wcb, &w[3]) == 0);
    CHECK(store_write(s, &idd, wcb, &w[4]) == 0);
    WAIT(sum_calls(w, 5) == 5, 5000);
    CHECK(w[0].calls == 1 && w[0].status == 0);
    CHECK(w[1].calls == 1 && w[1].status == -2);
    CHECK(w[2].calls == 1 && w[2].status == 0);
    CHECK(w[3].calls == 1 && w[3].status == 0);
    CHECK(w[4].calls == 1 && w[4].status == -2);
    /* a later batch: the conflicting one again, the stored one again, a
     * row that differs only in ts, and a new row next to them */
    store_row ts = mkrow("confl", 2, "two");
    ts.ts += 1;
    store_row four = mkrow("confl", 4, "four");
    CHECK(store_write(s, &other, wcb, &w[5]) == 0);
    CHECK(store_write(s, &first, wcb, &w[6]) == 0);
    CHECK(store_write(s, &ts, wcb, &w[7]) == 0);
    wctx w4 = {0}, we = {0}, wf = {0}, wg = {0};
    CHECK(store_write(s, &four, wcb, &w4) == 0);
    CHECK(store_write(s, &ide, wcb, &we) == 0);
    CHECK(store_write(s, &idf, wcb, &wf) == 0);
    CHECK(store_write(s, &idg, wcb, &wg) == 0);
    WAIT(sum_calls(w + 5, 3) == 3 && w4.calls && we.calls && wf.calls && wg.calls, 5000);
    CHECK(w[5].status == -2 && w[6].status == 0 && w[7].status == -2 && w4.status == 0);
    CHECK(we.status == 0 && wf.status == -2);
    CHECK(wg.status == -4, "the id used for an edit too: -4 (%d)", wg.status);
    CHECK(conflicts->v - c0 == 5, "conflicts %llu (an id used twice is none)",
          (unsigned long long)(conflicts->v - c0));
    CHECK(written->v - w0 == 4); /* seqs 1, 2, 3, 4 */
    CHECK(qint("SELECT count(*) FROM messages WHERE room='confl'") == 4);
    CHECK(qint("SELECT count(*) FROM messages WHERE room='confl' AND seq=1 AND body='first'") == 1);
    CHECK(qint("SELECT count(*) FROM messages WHERE room='confl' AND seq=3 AND client_id='c1'") == 1);
    /* the verify is one prepared statement whatever the batch size, its
     * keys passed as array literals: a room that needs quoting in one */
    const char *odd = "con\"f,l\\{x} y";
    store_row q1 = mkrow(odd, 1, "q1"), q2 = mkrow(odd, 1, "q2"), q3 = mkrow(odd, 1, "q1");
    wctx wq[3];
    memset(wq, 0, sizeof wq);
    CHECK(store_write(s, &q1, wcb, &wq[0]) == 0);
    WAIT(wq[0].calls == 1, 5000);
    CHECK(store_write(s, &q2, wcb, &wq[1]) == 0);
    CHECK(store_write(s, &q3, wcb, &wq[2]) == 0);
    WAIT(wq[1].calls == 1 && wq[2].calls == 1, 5000);
    CHECK(wq[0].status == 0 && wq[1].status == -2 && wq[2].status == 0,
          "odd room: stored, conflict, identical (%d %d %d)", wq[0].status, wq[1].status, wq[2].status);
    CHECK(qint("SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query = '"
               STORE_SQL_VERIFY "'") == 1, "the store's session last ran the prepared verify");
    store_free(s);
}

typedef struct hctx { int calls, status; uint64_t max; char epoch[64]; } hctx;

static void hcb(void *ud, int status, uint64_t max, const char *epoch)
{
    hctx *h = ud;
    h->calls++;
    h->status = status;
    h->max = max;
    snprintf(h->epoch, sizeof h->epoch, "%s", epoch ? epoch : "");
}

static int head_sync(store *s, const char *room, hctx *h)
{
    memset(h, 0, sizeof *h);
    if (store_head(s, room, hcb, h) != 0) return -1;
    WAIT(h->calls, 5000);
    return h->calls == 1 && h->status == 0 ? 0 : -1;
}

/* The durable head: max stored seq and a stable per-room epoch. */
static void test_head(void)
{
    store *s = open_store(100, 5, 0);
    hctx h, h2, h3;
    CHECK(store_head(s, "headroom", hcb, &h) == -1); /* not ready yet */
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    CHECK(head_sync(s, "headroom", &h) == 0);
    CHECK(h.max == 0 && strlen(h.epoch) == 16);
    CHECK(head_sync(s, "headroom", &h2) == 0);
    CHECK(h2.max == 0 && strcmp(h.epoch, h2.epoch) == 0);
    reset_counts();
    for (uint64_t i = 1; i <= 7; i++) {
        store_row r = mkrow("headroom", i * 10, "x");
        CHECK(store_write(s, &r, count_cb, NULL) == 0);
    }
    WAIT(g_cnt_calls == 7, 5000);
    CHECK(head_sync(s, "headroom", &h2) == 0);
    CHECK(h2.max == 70 && strcmp(h.epoch, h2.epoch) == 0);
    CHECK(head_sync(s, "otherroom", &h3) == 0);
    CHECK(h3.max == 0 && strlen(h3.epoch) == 16 && strcmp(h3.epoch, h.epoch) != 0);
    /* many at once, queued with the writes: all answered, one epoch */
    static hctx many[50];
    memset(many, 0, sizeof many);
    for (int i = 0; i < 50; i++) CHECK(store_head(s, "burst", hcb, &many[i]) == 0);
    WAIT(many[49].calls, 5000);
    for (int i = 0; i < 50; i++)
        CHECK(many[i].calls == 1 && many[i].status == 0 && strcmp(many[i].epoch, many[0].epoch) == 0);
    CHECK(qint("SELECT count(*) FROM rooms WHERE room IN ('headroom','otherroom','burst')") == 3);
    /* store_free answers a queued head with -1 */
    hctx gone = {0};
    CHECK(store_head(s, "gone", hcb, &gone) == 0);
    store_free(s);
    CHECK(gone.calls == 1 && gone.status == -1);
}

typedef struct sctx {
    int calls, status;
    uint64_t max;
    size_t n;
    char ids[16][16], users[16][16];
    uint64_t seqs[16], ts[16];
} sctx;

static void scb(void *ud, int status, uint64_t max, const char *epoch, size_t n,
                const char *const *users, const char *const *ids, const uint64_t *seqs,
                const uint64_t *ts)
{
    sctx *c = ud;
    c->calls++;
    c->status = status;
    c->max = max;
    c->n = n;
    CHECK(status != 0 || (epoch && strlen(epoch) == 16));
    for (size_t i = 0; i < n && i < 16; i++) {
        snprintf(c->ids[i], sizeof c->ids[i], "%s", ids[i]);
        snprintf(c->users[i], sizeof c->users[i], "%s", users[i]);
        c->seqs[i] = seqs[i];
        c->ts[i] = ts[i];
    }
}

static int seed_sync(store *s, const char *room, uint64_t since, uint64_t max_ids, sctx *c)
{
    memset(c, 0, sizeof *c);
    if (store_seed(s, room, since, max_ids, scb, c) != 0) return -1;
    WAIT(c->calls, 5000);
    return c->calls == 1 && c->status == 0 ? 0 : -1;
}

/* id at seq, sent by user (ids are per sender: the seed names it) */
static int seed_has_by(const sctx *c, const char *user, const char *id, uint64_t seq)
{
    for (size_t i = 0; i < c->n && i < 16; i++)
        if (strcmp(c->ids[i], id) == 0 && c->seqs[i] == seq && strcmp(c->users[i], user) == 0)
            return 1;
    return 0;
}

static int seed_has(const sctx *c, const char *id, uint64_t seq)
{
    return seed_has_by(c, "u", id, seq);
}

/* A seed (store_seed): the head, and the client ids of the rows published
 * since the window's start among the max_ids seqs below the head (message
 * and update rows alike); none before it, none without a client id, none
 * further below the head. */
static void test_seed(void)
{
    store *s = open_store(100, 5, 0);
    WAIT(store_ready(s), 10000);
    /* seqs 1..12; 3 has no client id, 9 is older than the window, 12 an edit */
    CHECK(qexec("INSERT INTO messages (room, seq, client_id, user_id, name, body, ts) "
                "SELECT 'seedr', g, CASE WHEN g = 3 THEN NULL ELSE 'c' || g END, 'u', 'n', 'b', "
                "CASE WHEN g = 9 THEN 500 ELSE 2000 END FROM generate_series(1, 11) g") == 0);
    CHECK(qexec("INSERT INTO messages (room, seq, client_id, user_id, name, body, ts, kind, target) "
                "VALUES ('seedr', 12, 'e12', 'u', 'n', 'edited', 2000, 1, 1)") == 0);
    sctx c;
    CHECK(seed_sync(s, "seedr", 1000, 5, &c) == 0);
    CHECK(c.max == 12 && c.n == 4, "head 12, 4 ids (%llu %zu)", (unsigned long long)c.max, c.n);
    CHECK(seed_has(&c, "c8", 8) && seed_has(&c, "c10", 10) && seed_has(&c, "c11", 11) &&
          seed_has(&c, "e12", 12), "8, 10, 11 and the edit 12");
    CHECK(c.ts[0] == 2000, "with its ts");
    CHECK(seed_sync(s, "seedr", 1000, 12, &c) == 0);
    CHECK(c.n == 10 && !seed_has(&c, "c9", 9) && seed_has(&c, "c1", 1),
          "the whole room: 10 ids, not the old 9, not 3 (%zu)", c.n);
    CHECK(seed_sync(s, "seedr", 0, 12, &c) == 0);
    CHECK(c.max == 12 && c.n == 0, "since 0: the head alone (%zu)", c.n);
    /* two senders with the same id: both rows, each with its user */
    CHECK(qexec("INSERT INTO messages (room, seq, client_id, user_id, name, body, ts) VALUES "
                "('seedr', 13, '1', 'alice', 'n', 'a', 2000), ('seedr', 14, '1', 'bob', 'n', 'b', 2000)") == 0);
    CHECK(seed_sync(s, "seedr", 1000, 5, &c) == 0);
    CHECK(c.max == 14 && seed_has_by(&c, "alice", "1", 13) && seed_has_by(&c, "bob", "1", 14) &&
          !seed_has_by(&c, "alice", "1", 14), "alice's id 1 at 13, bob's at 14 (%zu)", c.n);
    CHECK(seed_sync(s, "seedempty", 1000, 5, &c) == 0);
    CHECK(c.max == 0 && c.n == 0, "a room without rows: head 0, no ids");
    sctx gone = {0};
    CHECK(store_seed(s, "gone", 1000, 5, scb, &gone) == 0);
    store_free(s);
    CHECK(gone.calls == 1 && gone.status == -1);
}

/* A schema of version 1 (messages only) with data migrates to the current
 * one keeping its rows. */
static void test_migrate_from_v1(void)
{
    CHECK(qexec("CREATE SCHEMA mig_v1") == 0);
    CHECK(qexec("CREATE TABLE mig_v1.schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now());"
                "INSERT INTO mig_v1.schema_migrations (version, name) VALUES (1, 'messages');"
                "CREATE TABLE mig_v1.messages (room text NOT NULL, seq bigint NOT NULL, client_id text,"
                " user_id text NOT NULL, name text NOT NULL, body text NOT NULL, ts bigint NOT NULL,"
                " PRIMARY KEY (room, seq));"
                "INSERT INTO mig_v1.messages VALUES ('old', 1, NULL, 'u', 'U', 'kept', 1),"
                " ('old', 2, 'c', 'u', 'U', 'kept too', 2);") == 0);
    char url[400];
    snprintf(url, sizeof url, "%s%coptions=-csearch_path%%3Dmig_v1", g_url, strchr(g_url, '?') ? '&' : '?');
    char err[256] = "";
    store_opts o = {url, 10, 5, 0};
    store *s = store_new(L, &o, err, sizeof err);
    CHECK(s);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    CHECK(qint("SELECT max(version) FROM mig_v1.schema_migrations") == store_schema_version());
    CHECK(qint("SELECT count(*) FROM mig_v1.messages WHERE body LIKE 'kept%'") == 2);
    hctx h;
    CHECK(head_sync(s, "old", &h) == 0);
    CHECK(h.max == 2 && strlen(h.epoch) == 16);
    CHECK(qint("SELECT count(*) FROM mig_v1.rooms WHERE room='old'") == 1);
    store_free(s);
    qexec("DROP SCHEMA mig_v1 CASCADE");
}

/* meta (server API) is stored as the text given and read back; a row
 * without it reads NULL; a resend with the same id and meta is the same
 * message */
static void test_meta(void)
{
    store *s = open_store(10, 2, 0);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    reset_counts();
    const char *meta = "{\"b\": [1, 2.50], \"a\":\"\u00e9\"}";
    store_row with = mkrow("metaroom", 1, "with meta");
    with.client_id = "api-1";
    with.meta = meta;
    with.meta_len = strlen(meta);
    store_row without = mkrow("metaroom", 2, "without");
    CHECK(store_write(s, &with, count_cb, NULL) == 0);
    CHECK(store_write(s, &without, count_cb, NULL) == 0);
    WAIT(g_cnt_calls == 2, 5000);
    CHECK(g_cnt_ok == 2);
    rctx c;
    CHECK(range_sync(s, "metaroom", 0, UINT64_MAX, 10, 0, &c) == 0);
    CHECK(c.n == 2 && !c.meta_null[0] && strcmp(c.meta[0], meta) == 0 && c.meta_null[1]);
    CHECK(qint("SELECT count(*) FROM messages WHERE room='metaroom' AND meta::jsonb ? 'b'") == 1);
    reset_counts();
    CHECK(store_write(s, &with, count_cb, NULL) == 0); /* a retry: idempotent */
    WAIT(g_cnt_calls == 1, 5000);
    CHECK(g_cnt_ok == 1 && row_count("metaroom", -1) == 2);
    store_free(s);
}

static int g_drained;
static void drain_cb(void *ud) { (void)ud; g_drained++; }

static void test_pending_max_and_drain(void)
{
    store *s = open_store(1000, 100000, 10);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    reset_counts();
    for (int i = 1; i <= 10; i++) {
        store_row r = mkrow("pmax", (uint64_t)i, "b");
        CHECK(store_write(s, &r, count_cb, NULL) == 0);
    }
    store_row r11 = mkrow("pmax", 11, "b");
    CHECK(store_write(s, &r11, count_cb, NULL) == -1);
    CHECK(store_pending(s) == 10);
    run_for(100);
    CHECK(g_cnt_calls == 0); /* batch_ms is far away */
    g_drained = 0;
    store_drain(s, drain_cb, NULL);
    WAIT(g_drained, 5000);
    CHECK(g_drained == 1 && g_cnt_ok == 10);
    CHECK(row_count("pmax", -1) == 10);
    CHECK(store_write(s, &r11, count_cb, NULL) == 0);
    /* drain with nothing pending still calls back (asynchronously) */
    store_drain(s, drain_cb, NULL);
    WAIT(g_drained == 2, 5000);
    CHECK(g_drained == 2);
    CHECK(g_cnt_ok == 11);
    /* free with queued rows: each callback once, status -1 */
    store_row r12 = mkrow("pmax", 12, "b");
    CHECK(store_write(s, &r12, count_cb, NULL) == 0);
    store_free(s);
    CHECK(g_cnt_calls == 12 && g_cnt_fail == 1);
}

static store *g_free_me;
static int g_freecb_calls;
static void free_in_cb(void *ud, int status)
{
    (void)ud;
    g_freecb_calls++;
    if (status == 0) g_cnt_ok++;
    if (g_free_me) { store *s = g_free_me; g_free_me = NULL; store_free(s); }
}

static void test_free_from_callback(void)
{
    store *s = open_store(100, 1, 0);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    reset_counts();
    g_freecb_calls = 0;
    for (int i = 1; i <= 3; i++) {
        store_row r = mkrow("freecb", (uint64_t)i, "b");
        CHECK(store_write(s, &r, free_in_cb, NULL) == 0);
    }
    g_free_me = s;
    WAIT(g_freecb_calls == 3, 5000);
    CHECK(g_freecb_calls == 3 && g_cnt_ok == 3); /* all three committed in one batch */
    run_for(20);
    CHECK(g_freecb_calls == 3);
}

static void test_range(void)
{
    store *s = open_store(500, 2, 0);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    reset_counts();
    for (int i = 1; i <= 120; i++) {
        char body[64];
        snprintf(body, sizeof body, "msg %d \xc3\xa9\xe2\x82\xac", i);
        store_row r = mkrow("rng", (uint64_t)i, body);
        if (i % 2) r.client_id = "cid";
        CHECK(store_write(s, &r, count_cb, NULL) == 0);
    }
    WAIT(g_cnt_calls == 120, 5000);
    CHECK(g_cnt_ok == 120);
    rctx c;
    CHECK(range_sync(s, "rng", 0, UINT64_MAX, 50, 1, &c) == 0);
    CHECK(seqs_are(&c, 71, 120));
    CHECK(strcmp(c.body0, "msg 71 \xc3\xa9\xe2\x82\xac") == 0);
    CHECK(!c.client0_null && strcmp(c.client0, "cid") == 0);
    CHECK(strcmp(c.user0, "u1") == 0 && strcmp(c.name0, "User One") == 0);
    CHECK(c.ts0 == 1700000000000ull + 71);
    CHECK(range_sync(s, "rng", 0, 71, 50, 1, &c) == 0);
    CHECK(seqs_are(&c, 21, 70));
    CHECK(c.client0_null == 0);
    CHECK(range_sync(s, "rng", 0, 21, 50, 1, &c) == 0);
    CHECK(seqs_are(&c, 1, 20));
    CHECK(range_sync(s, "rng", 0, 1, 50, 1, &c) == 0);
    CHECK(c.n == 0);
    CHECK(range_sync(s, "rng", 100, UINT64_MAX, 10, 0, &c) == 0);
    CHECK(seqs_are(&c, 101, 110));
    CHECK(range_sync(s, "rng", 115, UINT64_MAX, 50, 0, &c) == 0);
    CHECK(seqs_are(&c, 116, 120));
    CHECK(range_sync(s, "rng", 10, 15, 50, 1, &c) == 0);
    CHECK(seqs_are(&c, 11, 14));
    CHECK(range_sync(s, "rng", 10, 15, 2, 1, &c) == 0);
    CHECK(seqs_are(&c, 13, 14));
    CHECK(range_sync(s, "rng", 10, 15, 2, 0, &c) == 0);
    CHECK(seqs_are(&c, 11, 12));
    CHECK(c.client0_null == 0);
    CHECK(range_sync(s, "rng", 11, 15, 1, 0, &c) == 0);
    CHECK(seqs_are(&c, 12, 12));
    CHECK(c.client0_null == 1);
    CHECK(range_sync(s, "rng", 0, UINT64_MAX, 0, 1, &c) == 0);
    CHECK(c.n == 0);
    CHECK(range_sync(s, "nosuchroom", 0, UINT64_MAX, 50, 1, &c) == 0);
    CHECK(c.n == 0);
    /* several queued at once are answered FIFO, interleaved with a batch */
    rctx q[3];
    memset(q, 0, sizeof q);
    store_row r = mkrow("rng", 121, "late");
    CHECK(store_write(s, &r, count_cb, NULL) == 0);
    CHECK(store_range(s, "rng", 0, UINT64_MAX, 5, 1, rcb, &q[0]) == 0);
    CHECK(store_range(s, "rng", 0, 3, 5, 1, rcb, &q[1]) == 0);
    CHECK(store_range(s, "rng", 200, UINT64_MAX, 5, 1, rcb, &q[2]) == 0);
    WAIT(q[0].calls && q[1].calls && q[2].calls && g_cnt_calls == 121, 5000);
    CHECK(q[0].status == 0 && q[0].n == 5 && q[1].n == 2 && q[2].n == 0 && g_cnt_ok == 121);
    store_free(s);
}

static void test_paging_under_inserts(void)
{
    store *s = open_store(500, 2, 0);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    reset_counts();
    const int N = 500;
    for (int i = 1; i <= N; i++) {
        store_row r = mkrow("page", (uint64_t)i, "p");
        CHECK(store_write(s, &r, count_cb, NULL) == 0);
    }
    WAIT(g_cnt_calls == N, 5000);
    CHECK(g_cnt_ok == N);
    static int seen[1000];
    memset(seen, 0, sizeof seen);
    uint64_t cursor = UINT64_MAX, next_seq = (uint64_t)N + 1, last = UINT64_MAX;
    int pages = 0, total = 0, expect_calls = N;
    rctx c;
    for (;;) {
        /* newer rows keep arriving between (and during) page fetches */
        for (int k = 0; k < 20; k++) {
            store_row r = mkrow("page", next_seq++, "new");
            CHECK(store_write(s, &r, count_cb, NULL) == 0);
            expect_calls++;
        }
        memset(&c, 0, sizeof c);
        CHECK(store_range(s, "page", 0, cursor, 37, 1, rcb, &c) == 0);
        WAIT(c.calls, 5000);
        CHECK(c.calls == 1 && c.status == 0);
        if (c.n == 0) break;
        for (size_t i = 0; i < c.n; i++) {
            if (i) CHECK(c.seqs[i] == c.seqs[i - 1] + 1);
            CHECK(c.seqs[i] < 1000);
            seen[c.seqs[i]]++;
        }
        if (pages == 0) last = c.seqs[c.n - 1];
        else CHECK(c.seqs[c.n - 1] + 1 == cursor); /* no skip at the boundary */
        cursor = c.seqs[0];
        total += (int)c.n;
        pages++;
    }
    CHECK(last >= (uint64_t)N);
    CHECK(total == (int)last);
    for (uint64_t i = 1; i <= last; i++) CHECK(seen[i] == 1);
    WAIT(g_cnt_calls == expect_calls, 5000);
    CHECK(g_cnt_ok == expect_calls);
    store_free(s);
}

static int plan_uses_pkey(const char *sql)
{
    PGresult *r = PQexec(bc, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "explain failed: %s\n", PQresultErrorMessage(r));
        PQclear(r);
        return 0;
    }
    char plan[4096] = "";
    size_t len = 0;
    for (int i = 0; i < PQntuples(r); i++)
        len += (size_t)snprintf(plan + len, len < sizeof plan ? sizeof plan - len : 0, "%s\n", PQgetvalue(r, i, 0));
    PQclear(r);
    /* messages_unread (schema v3) is also (room, seq)-ordered: either will do */
    int ok = (strstr(plan, "Index Scan") || strstr(plan, "Index Only Scan")) &&
             (strstr(plan, "messages_pkey") || strstr(plan, "messages_unread")) &&
             !strstr(plan, "Seq Scan on messages") && !strstr(plan, "Sort");
    /* (a Seq Scan on rooms for kept_from is fine: a one-row lookup in a
     * small table, whichever way the planner reads it) */
    if (!ok) fprintf(stderr, "unexpected plan:\n%s", plan);
    return ok;
}

static void test_explain(void)
{
    CHECK(qexec("INSERT INTO messages (room, seq, user_id, name, body, ts) "
                "SELECT 'ex' || (g % 100), g / 100 + 1, 'u', 'n', 'body ' || g, g "
                "FROM generate_series(0, 199999) g") == 0);
    CHECK(qexec("ANALYZE messages") == 0);
    CHECK(qexec("PREPARE pdesc(text, bigint, bigint, bigint) AS " STORE_SQL_RANGE_DESC) == 0);
    CHECK(qexec("PREPARE pasc(text, bigint, bigint, bigint) AS " STORE_SQL_RANGE_ASC) == 0);
    CHECK(qexec("SET plan_cache_mode = force_generic_plan") == 0);
    CHECK(plan_uses_pkey("EXPLAIN EXECUTE pdesc('ex42', 0, 1500, 50)"));
    CHECK(plan_uses_pkey("EXPLAIN EXECUTE pasc('ex42', 700, 9223372036854775807, 50)"));
    CHECK(qexec("SET plan_cache_mode = force_custom_plan") == 0);
    CHECK(plan_uses_pkey("EXPLAIN EXECUTE pdesc('ex42', 0, 9223372036854775807, 50)"));
    CHECK(plan_uses_pkey("EXPLAIN EXECUTE pdesc('ex42', 0, 1500, 50)"));
    CHECK(qexec("RESET plan_cache_mode") == 0);
    CHECK(qexec("DEALLOCATE pdesc") == 0 && qexec("DEALLOCATE pasc") == 0);
}

/* ---------- Postgres killed and restarted mid-stream ---------- */

/* ---------- message updates (schema v4) ---------- */

typedef struct pagectx {
    int calls, status;
    size_t n;
    uint64_t seq[8], edited[8];
    int deleted[8], kind[8];
    char body[8][32], reactions[8][96];
} pagectx;

static void pagecb(void *ud, int status, const store_row *rows, size_t n)
{
    pagectx *c = ud;
    c->calls++;
    c->status = status;
    c->n = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        c->seq[i] = rows[i].seq;
        c->edited[i] = rows[i].edited_ts;
        c->deleted[i] = rows[i].deleted;
        c->kind[i] = rows[i].kind;
        snprintf(c->body[i], sizeof c->body[i], "%.*s", (int)rows[i].body_len, rows[i].body);
        snprintf(c->reactions[i], sizeof c->reactions[i], "%s", rows[i].reactions ? rows[i].reactions : "-");
    }
}

typedef struct tctx {
    int calls, status, kind, deleted, id_kind;
    char author[32], id[32];
    uint64_t target, id_seq;
} tctx;
static void tcb(void *ud, int status, const store_target_row *row)
{
    tctx *c = ud;
    c->calls++;
    c->status = status;
    if (!row) return;
    c->id_seq = row->id_seq;
    c->id_kind = row->id_kind;
    c->kind = row->kind;
    c->deleted = row->deleted;
    c->target = row->target;
    snprintf(c->author, sizeof c->author, "%s", row->author ? row->author : "");
    snprintf(c->id, sizeof c->id, "%s", row->client_id ? row->client_id : "-");
}

typedef struct xctx { int calls, status, deleted; size_t n; char pairs[256]; } xctx;
static void xcb(void *ud, int status, int deleted, const char *const *emoji, const char *const *user,
                size_t n)
{
    xctx *c = ud;
    c->calls++;
    c->status = status;
    c->deleted = deleted;
    c->n = n;
    size_t o = 0;
    c->pairs[0] = 0;
    for (size_t i = 0; i < n && o < sizeof c->pairs - 40; i++)
        o += (size_t)snprintf(c->pairs + o, sizeof c->pairs - o, "%s%s/%s", i ? "," : "", emoji[i], user[i]);
}

static store_row mkupd(const char *room, uint64_t seq, int kind, uint64_t target, const char *user)
{
    store_row r = {.room = room, .seq = seq, .user = user, .name = user, .body = "", .body_len = 0,
                   .ts = 1700000000000ull + seq, .kind = kind, .target = target};
    return r;
}

static store_row mkreact(const char *room, uint64_t seq, uint64_t target, const char *user,
                         const char *emoji, int on, int64_t count)
{
    store_row r = mkupd(room, seq, STORE_REACT, target, user);
    r.emoji = emoji;
    r.on = on;
    r.count = count;
    return r;
}

static int write_all(store *s, store_row *rows, int n)
{
    reset_counts();
    for (int i = 0; i < n; i++)
        if (store_write(s, &rows[i], count_cb, NULL) != 0) return -1;
    WAIT(g_cnt_calls == n, 5000);
    return g_cnt_ok == n ? 0 : -1;
}

/* The erase trigger (a delete erases its message) must not scan messages
 * at every insert: PL/pgSQL plans its statements once per session, so a
 * session whose first insert met a small table kept a sequential-scan plan
 * as the table grew (1.88 ms of Postgres CPU per one-row transaction).
 * Here: the store's session plans the trigger on an empty table, the table
 * then grows to 100k rows, and the store's next batches must read it
 * through indexes only (pg_stat_user_tables.seq_scan of messages unmoved). */
static long seq_scans(void)
{
    return qint("SELECT seq_scan FROM pg_stat_user_tables WHERE relid = 'messages'::regclass");
}

static void test_trigger_plan(void)
{
    /* the schema is migrated by a session of its own that then ends (its
     * counters reach the shared statistics when it exits) */
    store *m = open_store(100, 2, 0);
    WAIT(store_ready(m), 10000);
    CHECK(store_ready(m));
    store_free(m);
    CHECK(qexec("TRUNCATE messages") == 0 && qexec("ANALYZE messages") == 0);
    store *s = open_store(100, 2, 0);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    store_row first = mkrow("tp0", 1, "planned on an empty table");
    CHECK(write_all(s, &first, 1) == 0);
    CHECK(qexec("INSERT INTO messages (room, seq, user_id, name, body, ts) "
                "SELECT 'tpbig' || (g % 50), g / 50 + 1, 'u', 'n', 'b', g "
                "FROM generate_series(0, 99999) g") == 0);
    /* this session's own counters (TRUNCATE and ANALYZE scan the table)
     * are flushed before the baseline is read */
    CHECK(qexec("SELECT pg_stat_force_next_flush()") == 0);
    run_for(200);
    long before = seq_scans();
    store_row rows[20];
    for (int i = 0; i < 20; i++) rows[i] = mkrow("tp1", (uint64_t)i + 1, "after the growth");
    CHECK(write_all(s, rows, 20) == 0);
    store_row del = mkupd("tp1", 21, STORE_DELETE, 3, "u1");
    CHECK(write_all(s, &del, 1) == 0);
    store_free(s); /* its session ends: its statistics reach the shared counters */
    run_for(50);
    long after = before;
    for (int i = 0; i < 30 && after == before; i++) { run_for(100); after = seq_scans(); }
    CHECK(row_count("tp1", -1) == 21);
    CHECK(qint("SELECT count(*) FROM messages WHERE room = 'tp1' AND seq = 3 AND deleted") == 1,
          "the delete still erased its message");
    CHECK(before >= 0 && after == before, "seq scans of messages during the batches: %ld", after - before);
}

/* Updates are rows of their own (kind, target, ...): replay reads them in
 * seq order, history shows messages in their current state, a delete
 * erases its message and the message's edits even when they are stored
 * after it, a retried/backfilled erased row is no conflict, and the
 * target / reactions reads tell an update what it needs. */
static void test_updates(void)
{
    store *s = open_store(100, 5, 0);
    WAIT(store_ready(s), 10000);
    CHECK(store_ready(s));
    const char *R = "upd";
    store_row m1 = mkrow(R, 1, "hello"), m2 = mkrow(R, 2, "second");
    store_row e3 = mkupd(R, 3, STORE_EDIT, 1, "u1");
    e3.body = "hello!";
    e3.body_len = 6;
    store_row e4 = mkupd(R, 4, STORE_EDIT, 1, "u1");
    e4.body = "hello!!";
    e4.body_len = 7;
    store_row rows[] = {m1, m2, e4, e3,                       /* edits stored out of order */
                        mkreact(R, 5, 1, "a", "\xF0\x9F\x91\x8D", 1, 1),
                        mkreact(R, 6, 1, "b", "\xF0\x9F\x91\x8D", 1, 2),
                        mkreact(R, 7, 1, "a", ":x:", 1, 1),
                        mkreact(R, 8, 1, "a", "\xF0\x9F\x91\x8D", 0, 1),
                        mkreact(R, 9, 1, "b", ":x:", 1, 2),
                        mkreact(R, 10, 1, "b", ":x:", 0, 1),
                        mkreact(R, 11, 1, "a", ":x:", 0, 0)};
    CHECK(write_all(s, rows, 11) == 0);
    /* invalid update rows are refused up front */
    store_row bad = mkupd(R, 12, STORE_EDIT, 0, "u1");
    CHECK(store_write(s, &bad, count_cb, NULL) == -3);
    bad = mkreact(R, 12, 1, "a", NULL, 1, 1);
    CHECK(store_write(s, &bad, count_cb, NULL) == -3);
    bad = mkupd(R, 12, 7, 1, "a");
    CHECK(store_write(s, &bad, count_cb, NULL) == -3);

    pagectx h = {0};
    CHECK(store_history(s, R, UINT64_MAX, 50, pagecb, &h) == 0);
    WAIT(h.calls, 5000);
    CHECK(h.status == 0 && h.n == 2, "history rows %zu", h.n);
    CHECK(h.seq[0] == 1 && h.seq[1] == 2);
    CHECK(strcmp(h.body[0], "hello!!") == 0, "current body '%s'", h.body[0]);
    CHECK(h.edited[0] == 1700000000004ull, "edited_ts of the latest edit (seq 4)");
    CHECK(!h.deleted[0] && h.edited[1] == 0 && strcmp(h.body[1], "second") == 0);
    /* the latest react of each emoji gives its count; emojis at 0 are left out */
    CHECK(strstr(h.reactions[0], "\"\xF0\x9F\x91\x8D\" : 1") && !strstr(h.reactions[0], ":x:"),
          "reactions '%s'", h.reactions[0]);
    CHECK(strcmp(h.reactions[1], "-") == 0);
    /* paging: the newest message before 2 is 1; update seqs never listed */
    memset(&h, 0, sizeof h);
    CHECK(store_history(s, R, 2, 50, pagecb, &h) == 0);
    WAIT(h.calls, 5000);
    CHECK(h.n == 1 && h.seq[0] == 1);

    /* replay: every row in seq order, with its kind */
    rctx rc;
    CHECK(range_sync(s, R, 0, UINT64_MAX, 100, 0, &rc) == 0);
    CHECK(seqs_are(&rc, 1, 11));

    /* the target read */
    tctx t = {0};
    CHECK(store_target(s, R, 1, NULL, NULL, tcb, &t) == 0);
    WAIT(t.calls, 5000);
    CHECK(t.status == 1 && t.kind == STORE_MESSAGE && !t.deleted && strcmp(t.author, "u1") == 0);
    memset(&t, 0, sizeof t);
    CHECK(store_target(s, R, 6, NULL, NULL, tcb, &t) == 0);
    WAIT(t.calls, 5000);
    CHECK(t.status == 1 && t.kind == STORE_REACT && t.target == 1 && strcmp(t.author, "b") == 0 &&
          strcmp(t.id, "-") == 0, "row 6: target %llu author %s id %s",
          (unsigned long long)t.target, t.author, t.id);
    memset(&t, 0, sizeof t);
    CHECK(store_target(s, R, 99, NULL, NULL, tcb, &t) == 0);
    WAIT(t.calls, 5000);
    CHECK(t.status == STORE_TARGET_NONE);
    /* a row's client id; below the room's kept_from (retention): gone, row or not */
    CHECK(qexec("INSERT INTO messages (room, seq, client_id, user_id, name, body, ts) VALUES "
                "('tgone', 1, 'c1', 'u1', 'n', 'old', 1), ('tgone', 2, 'c2', 'u1', 'n', 'kept', 2)") == 0);
    memset(&t, 0, sizeof t);
    CHECK(store_target(s, "tgone", 1, NULL, NULL, tcb, &t) == 0);
    WAIT(t.calls, 5000);
    CHECK(t.status == STORE_TARGET_ROW && strcmp(t.id, "c1") == 0 && t.target == 0);
    /* with a sender and an id: that sender's update of the target with that id */
    CHECK(qexec("INSERT INTO messages (room, seq, client_id, user_id, name, body, ts, kind, target) "
                "VALUES ('tgone', 3, 'e9', 'u1', 'n', 'x', 3, 1, 2), "
                "('tgone', 4, 'e8', 'u1', 'n', 'y', 4, 1, 1)") == 0);
    memset(&t, 0, sizeof t);
    CHECK(store_target(s, "tgone", 2, "u1", "e9", tcb, &t) == 0);
    WAIT(t.calls, 5000);
    CHECK(t.status == STORE_TARGET_ROW && t.id_seq == 3 && t.id_kind == STORE_EDIT,
          "the id's update: %llu kind %d", (unsigned long long)t.id_seq, t.id_kind);
    memset(&t, 0, sizeof t);
    CHECK(store_target(s, "tgone", 2, "u2", "e9", tcb, &t) == 0);   /* another sender */
    WAIT(t.calls, 5000);
    CHECK(t.status == STORE_TARGET_ROW && t.id_seq == 0);
    memset(&t, 0, sizeof t);
    CHECK(store_target(s, "tgone", 2, "u1", "e8", tcb, &t) == 0);   /* an update of another target */
    WAIT(t.calls, 5000);
    CHECK(t.status == STORE_TARGET_ROW && t.id_seq == 0);
    CHECK(qexec("INSERT INTO rooms (room, epoch, kept_from) VALUES ('tgone', 'e', 2) "
                "ON CONFLICT (room) DO UPDATE SET kept_from = 2") == 0);
    memset(&t, 0, sizeof t);
    CHECK(store_target(s, "tgone", 1, "u1", "e8", tcb, &t) == 0);   /* its row still there: gone */
    WAIT(t.calls, 5000);
    CHECK(t.status == STORE_TARGET_GONE && t.id_seq == 4, "seq below kept_from: %d, id's update %llu",
          t.status, (unsigned long long)t.id_seq);
    memset(&t, 0, sizeof t);
    CHECK(store_target(s, "tgone", 2, NULL, NULL, tcb, &t) == 0);
    WAIT(t.calls, 5000);
    CHECK(t.status == STORE_TARGET_ROW && strcmp(t.id, "c2") == 0);

    /* the reactions read: the latest react of each (emoji, user) */
    xctx x = {0};
    CHECK(store_reactions(s, R, 1, xcb, &x) == 0);
    WAIT(x.calls, 5000);
    CHECK(x.status == 0 && !x.deleted && x.n == 1 && strcmp(x.pairs, "\xF0\x9F\x91\x8D/b") == 0,
          "reactions %zu '%s'", x.n, x.pairs);

    /* delete of 1: the message and its edits are erased */
    store_row d12 = mkupd(R, 12, STORE_DELETE, 1, "u1");
    CHECK(write_all(s, &d12, 1) == 0);
    CHECK(qint("SELECT count(*) FROM messages WHERE room='upd' AND deleted AND body=''") == 3);
    memset(&h, 0, sizeof h);
    CHECK(store_history(s, R, UINT64_MAX, 50, pagecb, &h) == 0);
    WAIT(h.calls, 5000);
    CHECK(h.n == 2 && h.deleted[0] && h.body[0][0] == 0 && h.edited[0] == 0 &&
          strcmp(h.reactions[0], "-") == 0);
    memset(&t, 0, sizeof t);
    CHECK(store_target(s, R, 1, NULL, NULL, tcb, &t) == 0);
    WAIT(t.calls, 5000);
    CHECK(t.status == 1 && t.deleted);
    memset(&x, 0, sizeof x);
    CHECK(store_reactions(s, R, 1, xcb, &x) == 0);
    WAIT(x.calls, 5000);
    CHECK(x.status == 0 && x.deleted);
    /* a retried or backfilled copy of an erased row is the same row, no conflict */
    metric_counter *conf = metrics_counter("chat_store_conflicts_total", NULL, NULL);
    uint64_t c0 = conf->v;
    store_row again[] = {m1, e3};
    CHECK(write_all(s, again, 2) == 0);
    CHECK(conf->v == c0);

    /* a message and an edit stored after the delete that erases them (a
     * late batch, a backfill): erased on arrival */
    store_row late[] = {mkupd("upd2", 3, STORE_DELETE, 1, "u1"), mkupd("upd2", 2, STORE_EDIT, 1, "u1")};
    late[1].body = "edited";
    late[1].body_len = 6;
    CHECK(write_all(s, late, 2) == 0);
    store_row m = mkrow("upd2", 1, "secret");
    m.meta = "{\"order\":\"secret\"}";
    m.meta_len = strlen(m.meta);
    CHECK(write_all(s, &m, 1) == 0);
    CHECK(qint("SELECT count(*) FROM messages WHERE room='upd2' AND body <> ''") == 0);
    CHECK(qint("SELECT count(*) FROM messages WHERE room='upd2' AND deleted") == 2);
    CHECK(qint("SELECT count(*) FROM messages WHERE room='upd2' AND meta IS NOT NULL") == 0,
          "a deleted message keeps no meta (schema version 7)");
    /* and a message with meta deleted after it was stored */
    store_row m3 = mkrow("upd3", 1, "with meta");
    m3.meta = "{\"k\":1}";
    m3.meta_len = strlen(m3.meta);
    CHECK(write_all(s, &m3, 1) == 0);
    CHECK(qint("SELECT count(*) FROM messages WHERE room='upd3' AND meta IS NOT NULL") == 1);
    store_row d3 = mkupd("upd3", 2, STORE_DELETE, 1, "u1");
    CHECK(write_all(s, &d3, 1) == 0);
    CHECK(qint("SELECT count(*) FROM messages WHERE room='upd3' AND (meta IS NOT NULL OR body <> '')") == 0,
          "erased by a delete stored after it");
    /* the function of this test's schema (search_path), not another
     * schema's in the same database */
    CHECK(qint("SELECT count(*) FROM pg_proc WHERE oid = 'chatd_erase_deleted'::regproc AND "
               "'enable_seqscan=off' = ANY(proconfig)") == 1, "the trigger keeps enable_seqscan off");
    CHECK(qint("SELECT count(*) FROM pg_proc WHERE oid = 'chatd_erase_deleted'::regproc AND "
               "prosrc LIKE '%IF NOT EXISTS (SELECT 1 FROM chatd_new%THEN RETURN NULL; END IF;%'") == 1,
          "the trigger returns at once when its batch erases nothing (schema version 8)");
    store_free(s);
}

/* ---- rows Postgres refuses for good (an operator's constraint or trigger) ----
 * test_refused sets them up, refused_body runs the checks (it stops at the
 * first failed one), test_refused drops them whatever happened: later
 * tests share the schema. */

static char g_poison[64];

static int all_zero_but(const wctx *w, int n, int bad1, int bad2)
{
    for (int i = 0; i < n; i++) {
        int want = (i == bad1 || i == bad2) ? -3 : 0;
        if (w[i].calls != 1 || w[i].status != want) {
            fprintf(stderr, "row %d: %d calls, status %d (want %d)\n", i, w[i].calls, w[i].status,
                    want);
            return 0;
        }
    }
    return 1;
}

static void refused_body(store *s)
{
    metric_counter *refused = metrics_counter("chat_store_rows_refused_total", NULL, NULL);
    metric_counter *reconn = metrics_counter("chat_pg_reconnects_total", NULL, NULL);
    uint64_t r0 = refused->v, c0 = reconn->v;
    char bodies[16][32];
    /* 8 rows in one batch, the poison one in the middle (seq 5); 4 more
     * written while it is being bisected */
    wctx w[12];
    memset(w, 0, sizeof w);
    for (int i = 0; i < 8; i++) {
        snprintf(bodies[i], sizeof bodies[i], "ok-%d", i);
        store_row r = mkrow("poison", (uint64_t)i + 1, i == 4 ? g_poison : bodies[i]);
        CHECK(store_write(s, &r, wcb, &w[i]) == 0);
    }
    run_for(2);
    for (int i = 8; i < 12; i++) {
        snprintf(bodies[i], sizeof bodies[i], "later-%d", i);
        store_row r = mkrow("poison", (uint64_t)i + 1, bodies[i]);
        CHECK(store_write(s, &r, wcb, &w[i]) == 0);
    }
    WAIT(sum_calls(w, 12) == 12, 5000);
    CHECK(sum_calls(w, 12) == 12, "every write answered within 5 s (%d of 12)", sum_calls(w, 12));
    CHECK(all_zero_but(w, 12, 4, -1), "11 stored, the poison row -3");
    CHECK(row_count("poison", -1) == 11 && row_count("poison", 5) == 0);
    CHECK(refused->v - r0 == 1, "refused counted once (%llu)", (unsigned long long)(refused->v - r0));
    CHECK(reconn->v == c0, "a refusal is no reason to reconnect");
    CHECK(store_pending(s) == 0);
    /* a batch of only the poison row */
    wctx one = {0};
    store_row p1 = mkrow("poison1", 1, g_poison);
    CHECK(store_write(s, &p1, wcb, &one) == 0);
    WAIT(one.calls == 1, 5000);
    CHECK(one.calls == 1 && one.status == -3 && row_count("poison1", -1) == 0);
    CHECK(refused->v - r0 == 2);
    /* two refused rows, first and last of a 16-row batch, by a trigger
     * (P0001: RAISE EXCEPTION) and a cast it makes (22P02) */
    wctx w2[16];
    memset(w2, 0, sizeof w2);
    for (int i = 0; i < 16; i++) {
        snprintf(bodies[i], sizeof bodies[i], "%s", i == 0 ? "raise-poison" : i == 15 ? "cast-poison"
                                                                                       : "fine");
        store_row r = mkrow("poison2", (uint64_t)i + 1, bodies[i]);
        CHECK(store_write(s, &r, wcb, &w2[i]) == 0);
    }
    WAIT(sum_calls(w2, 16) == 16, 5000);
    CHECK(all_zero_but(w2, 16, 0, 15), "14 stored, the first and the last -3");
    CHECK(row_count("poison2", -1) == 14);
    CHECK(refused->v - r0 == 4);
    /* a drain waits for the bisection and answers */
    wctx w3[3];
    memset(w3, 0, sizeof w3);
    store_row d[3] = {mkrow("poison3", 1, "a"), mkrow("poison3", 2, g_poison), mkrow("poison3", 3, "c")};
    for (int i = 0; i < 3; i++) CHECK(store_write(s, &d[i], wcb, &w3[i]) == 0);
    g_drained = 0;
    store_drain(s, drain_cb, NULL);
    WAIT(g_drained, 5000);
    CHECK(g_drained == 1 && all_zero_but(w3, 3, 1, -1) && row_count("poison3", -1) == 2);
    CHECK(refused->v - r0 == 5);
    /* a transient error (40001, serialization failure, raised by the
     * trigger while poison_flag has a row) is retried, never refused */
    CHECK(qexec("INSERT INTO poison_flag VALUES (true)") == 0);
    wctx w4[3];
    memset(w4, 0, sizeof w4);
    for (int i = 0; i < 3; i++) {
        store_row r = mkrow("poison4", (uint64_t)i + 1, "retry me");
        CHECK(store_write(s, &r, wcb, &w4[i]) == 0);
    }
    WAIT(reconn->v > c0, 5000);
    /* a batch that keeps failing keeps the backoff growing (100, 200, 400,
     * 800 ms...): a connection that became ready again is no proof that
     * what failed works now (it was reset at every ready: a reconnect
     * every ~100 ms for ever) */
    uint64_t c1 = reconn->v;
    run_for(1500);
    CHECK(reconn->v - c1 <= 6, "reconnects with a growing backoff (%" PRIu64 " in 1.5 s)",
          reconn->v - c1);
    CHECK(sum_calls(w4, 3) == 0 && store_pending(s) == 3, "not answered while the error lasts");
    CHECK(reconn->v > c0, "the batch failed and the store reconnected");
    CHECK(qexec("DELETE FROM poison_flag") == 0);
    WAIT(sum_calls(w4, 3) == 3, 15000);
    CHECK(all_zero_but(w4, 3, -1, -1) && row_count("poison4", -1) == 3);
    CHECK(refused->v - r0 == 5, "a transient error refuses nothing");
    /* a rule added after a row was stored (NOT VALID: stored rows are not
     * checked) refuses that row when it is sent again (a resend, a retried
     * batch, a backfill: the CHECK runs before ON CONFLICT skips it): it
     * is stored, so it is answered 0, not -3; another message under its
     * (room, seq) is a conflict (-2); a new row with that body is -3 */
    char late[64], sql[200];
    snprintf(late, sizeof late, "late-%ld", (long)getpid());
    wctx w5[4];
    memset(w5, 0, sizeof w5);
    store_row l1 = mkrow("poison5", 1, late);
    l1.client_id = "late-id";
    CHECK(store_write(s, &l1, wcb, &w5[0]) == 0);
    WAIT(w5[0].calls == 1, 5000);
    CHECK(w5[0].calls == 1 && w5[0].status == 0);
    snprintf(sql, sizeof sql, "ALTER TABLE messages ADD CONSTRAINT chatd_test_late CHECK (body <> '%s') "
             "NOT VALID", late);
    CHECK(qexec(sql) == 0);
    store_row l2 = mkrow("poison5", 1, late);
    l2.client_id = "other-id";
    l2.user = "u2";
    store_row l3 = mkrow("poison5", 2, late);
    CHECK(store_write(s, &l1, wcb, &w5[1]) == 0);
    CHECK(store_write(s, &l2, wcb, &w5[2]) == 0);
    CHECK(store_write(s, &l3, wcb, &w5[3]) == 0);
    WAIT(sum_calls(w5, 4) == 4, 5000);
    CHECK(w5[1].calls == 1 && w5[1].status == 0, "the stored row sent again: 0 (got %d)", w5[1].status);
    CHECK(w5[2].calls == 1 && w5[2].status == -2, "another message at its seq: -2 (got %d)",
          w5[2].status);
    CHECK(w5[3].calls == 1 && w5[3].status == -3, "a new refused row: -3 (got %d)", w5[3].status);
    CHECK(row_count("poison5", -1) == 1);
    CHECK(refused->v - r0 == 6, "only the new row counted as refused");
}

static void test_refused(void)
{
    snprintf(g_poison, sizeof g_poison, "poison-%ld", (long)getpid());
    char sql[256];
    snprintf(sql, sizeof sql, "ALTER TABLE messages ADD CONSTRAINT chatd_test_poison "
             "CHECK (body <> '%s')", g_poison);
    int ok = qexec(sql) == 0 &&
             qexec("CREATE TABLE poison_flag (on_ boolean)") == 0 &&
             qexec("CREATE FUNCTION poison_trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   "IF NEW.body = 'raise-poison' THEN RAISE EXCEPTION 'no %', NEW.seq; END IF; "
                   "IF NEW.body = 'cast-poison' THEN PERFORM NEW.body::int; END IF; "
                   "IF EXISTS (SELECT 1 FROM poison_flag) THEN "
                   "RAISE EXCEPTION 'try again' USING ERRCODE = '40001'; END IF; "
                   "RETURN NEW; END $$") == 0 &&
             qexec("CREATE TRIGGER poison_trg BEFORE INSERT ON messages FOR EACH ROW "
                   "EXECUTE FUNCTION poison_trg()") == 0;
    if (!ok) check_fail("could not set up the constraint and the trigger");
    store *s = ok ? open_store(100, 5, 0) : NULL;
    if (s) {
        WAIT(store_ready(s), 10000);
        if (store_ready(s)) refused_body(s);
        else check_fail("store not ready");
        store_free(s);
    }
    qexec("DROP TRIGGER IF EXISTS poison_trg ON messages");
    qexec("DROP FUNCTION IF EXISTS poison_trg()");
    qexec("DROP TABLE IF EXISTS poison_flag");
    qexec("ALTER TABLE messages DROP CONSTRAINT IF EXISTS chatd_test_poison");
    qexec("ALTER TABLE messages DROP CONSTRAINT IF EXISTS chatd_test_late");
    CHECK(qint("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'chatd_test_%'") == 0);
}

#define RS_TOTAL 6000
static store *g_rs;
static int g_rs_next = 1, g_rs_status[RS_TOTAL + 1], g_rs_calls;
static void rs_cb(void *ud, int status)
{
    int i = (int)(intptr_t)ud;
    g_rs_status[i] = status == 0 ? 1 : -1;
    g_rs_calls++;
}
static void rs_writer(uv_timer_t *t)
{
    for (int k = 0; k < 20 && g_rs_next <= RS_TOTAL; k++, g_rs_next++) {
        store_row r = mkrow("restart", (uint64_t)g_rs_next, "survive");
        if (store_write(g_rs, &r, rs_cb, (void *)(intptr_t)g_rs_next) != 0) {
            check_fail("store_write refused row %d", g_rs_next);
        }
    }
    if (g_rs_next > RS_TOTAL) uv_timer_stop(t);
}

static uv_timer_t g_rs_writer; /* closed by test_pg_restart whatever happens */

static void pg_restart_body(void)
{
    metric_counter *reconn = metrics_counter("chat_pg_reconnects_total", NULL, NULL);
    uint64_t reconn0 = reconn->v;
    g_rs = open_store(200, 2, 0);
    CHECK(g_rs);
    WAIT(store_ready(g_rs), 10000);
    CHECK(store_ready(g_rs));
    uv_timer_start(&g_rs_writer, rs_writer, 2, 2);
    WAIT(g_rs_calls >= 1500, 20000);
    CHECK(g_rs_calls >= 1500);
    /* hold a lock that blocks the next INSERT, so a batch is surely in flight
     * (sent, not committed) when Postgres dies */
    CHECK(qexec("BEGIN") == 0);
    CHECK(qexec("LOCK TABLE messages IN SHARE MODE") == 0);
    run_for(300);
    int acked_before = g_rs_calls;
    run_for(300);
    CHECK(g_rs_calls == acked_before); /* the in-flight batch is stuck */
    CHECK(store_pending(g_rs) > 0);
    CHECK(pg_kill9() == 0);
    run_for(700); /* writes keep queueing while Postgres is down */
    CHECK(!store_ready(g_rs));
    CHECK(g_rs_calls == acked_before);
    CHECK(pg_start() == 0);
    WAIT(g_rs_calls == RS_TOTAL, 60000);
    CHECK(g_rs_calls == RS_TOTAL);
    for (int i = 1; i <= RS_TOTAL; i++) CHECK(g_rs_status[i] == 1);
    CHECK(reconn->v > reconn0);
    PQreset(bc);
    CHECK(PQstatus(bc) == CONNECTION_OK);
    CHECK(row_count("restart", -1) == RS_TOTAL);
    CHECK(qint("SELECT count(DISTINCT seq) FROM messages WHERE room='restart'") == RS_TOTAL);
    CHECK(qint("SELECT min(seq) FROM messages WHERE room='restart'") == 1);
    CHECK(qint("SELECT max(seq) FROM messages WHERE room='restart'") == RS_TOTAL);
}

static void test_pg_restart(void)
{
    uv_timer_init(L, &g_rs_writer);
    pg_restart_body();
    uv_close((uv_handle_t *)&g_rs_writer, NULL);
    store_free(g_rs);
    g_rs = NULL;
    if (postmaster_pid() > 0 && kill((pid_t)postmaster_pid(), 0) != 0) pg_start(); /* for cleanup */
}

/* pg_restart stops and starts Postgres: only one this test started */
static const char *skip_case(const char *name)
{
    return strcmp(name, "pg_restart") == 0 && !g_own_pg ? "needs our own Postgres" : NULL;
}

int main(void)
{
    int rc0 = pg_setup("store", 17100);
    if (rc0 != 0) return rc0;

    L = uv_default_loop();
    uvwait_init(L);

    static const uvwait_case tests[] = {
        {"bad_and_unreachable", test_bad_and_unreachable},
        {"migrations", test_migrations},
        {"batches", test_batches},
        {"param_limit", test_param_limit},
        {"idempotent", test_idempotent},
        {"array_text", test_array_text},
        {"check", test_check},
        {"conflict", test_conflict},
        {"head", test_head},
        {"seed", test_seed},
        {"migrate_from_v1", test_migrate_from_v1},
        {"pending_max_and_drain", test_pending_max_and_drain},
        {"free_from_callback", test_free_from_callback},
        {"range", test_range},
        {"meta", test_meta},
        {"paging_under_inserts", test_paging_under_inserts},
        {"explain", test_explain},
        {"updates", test_updates},
        {"trigger_plan", test_trigger_plan},
        {"refused", test_refused},
        {"pg_restart", test_pg_restart},
    };
    int nfail = uvwait_cases(L, tests, sizeof tests / sizeof tests[0], skip_case);

    pg_teardown();
    uvwait_close();
    /* bounded: a store leaked by a failed check must not hang us (run_for
     * cannot bound it here: its ticker is closed, and the loop would wait
     * on the leaked store's socket until ctest's timeout) */
    uvwait_ms(L, 50);
    if (uv_loop_close(L) != 0 && !nfail) check_fail("handles left open on the loop");
    metrics_free_all();
    if (nfail) fprintf(stderr, "test_store: %d test(s) FAILED\n", nfail);
    return check_summary("test_store");
}
