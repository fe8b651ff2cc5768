/* test_readstate: the read state module (core/readstate.c) and the retention
 * statements, against a real Postgres 15 (through the real store) and the
 * in-process bus. Uses CHATD_TEST_DATABASE_URL when set, else starts a
 * throwaway Postgres with tools/services.sh on a port of 17120-17139. Works
 * in its own schema (PGOPTIONS search_path). Exit 0 pass, 1 fail, 77 skip. */
#define _GNU_SOURCE
#define CHECK_STOPS_TEST
#include "check.h"
#include "pg_procs.h"
#include "uvwait.h"
#include "bus.h"
#include "readstate.h"
#include "store.h"
#include "store_schema.h"
#include "metrics.h"
#include "util.h"
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uv_loop_t *L;
static store *S;
static bus *B;

#define WAIT(cond, ms) WAIT_ON(L, cond, ms)
static void run_for(int ms) { run_on(L, ms); }

/* ---------- the in-process bus: receipts arrive through on_emit ---------- */

static int g_receipts;
static char g_last_receipt[512];
static void h_msg(void *ud, const char *room, uint64_t seq, const char *tail, size_t len) {}
static void h_gap(void *ud, const char *room, uint64_t from, uint64_t to) {}
static void h_emit(void *ud, const char *room, const char *kind, const char *data, size_t len)
{
    if (strcmp(kind, "presence") != 0 || !strstr(data, "\"type\":\"read\"")) return;
    g_receipts++;
    snprintf(g_last_receipt, sizeof g_last_receipt, "%.*s", (int)len, data);
}
static void h_ready(void *ud, int ready) {}

/* ---------- callbacks ---------- */

typedef struct mctx { int calls, status; uint64_t stored; long db_at_cb; const char *user, *room; } mctx;

static long db_read_seq(const char *user, const char *room)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT read_seq FROM read_state WHERE user_id='%s' AND room='%s'", user, room);
    return qint(sql);
}

static void mcb(void *ud, int status, uint64_t stored)
{
    mctx *c = ud;
    c->calls++;
    c->status = status;
    c->stored = stored;
    if (c->user) c->db_at_cb = db_read_seq(c->user, c->room);
}

typedef struct lctx { int calls, status; uint64_t read_seq, kept_from; } lctx;
static void lcb(void *ud, int status, uint64_t rs, uint64_t kf)
{
    lctx *c = ud;
    c->calls++;
    c->status = status;
    c->read_seq = rs;
    c->kept_from = kf;
}

typedef struct uctx { int calls, status; char body[4096]; } uctx;
static void ucb(void *ud, int status, char *json, size_t len)
{
    uctx *c = ud;
    c->calls++;
    c->status = status;
    snprintf(c->body, sizeof c->body, "%.*s", (int)len, json ? json : "");
    free(json);
}

static void open_all(int batch_ms, int lookup_timeout_ms)
{
    char err[256] = "";
    store_opts so = {g_url, 100, 2, 0};
    S = store_new(L, &so, err, sizeof err);
    CHECK(S);
    bus_opts bo = {NULL, 100, 60, 0, 3000, 0, 0, 0, 0};
    bus_handlers bh = {h_msg, h_gap, h_emit, h_ready, NULL, NULL, NULL, NULL};
    B = bus_new(L, &bo, &bh, NULL, err, sizeof err);
    CHECK(B);
    WAIT(store_ready(S) && bus_ready(B), 10000);
    CHECK(store_ready(S) && bus_ready(B));
    readstate_opts ro = {batch_ms, 500, lookup_timeout_ms};
    readstate_init(L, S, B, &ro);
}

static void close_all(void)
{
    readstate_shutdown();
    store_free(S);
    bus_free(B);
    S = NULL;
    B = NULL;
    run_for(20);
}

/* ---------- tests ---------- */

/* Marks in one window: one statement; the same (user, room) coalesced to
 * its highest seq; every waiter answered after the commit with the stored
 * value; never backwards; a receipt only when the value moved. */
static void test_marks(void)
{
    open_all(20, 2000);
    metric_hist *rows = metrics_histogram("chat_read_batch_rows", NULL, NULL, NULL, 0);
    uint64_t batches0 = metric_hist_count(rows);
    static mctx m[40];
    memset(m, 0, sizeof m);
    char users[40][16];
    bus_subscribe(B, "r1");
    run_for(20);
    for (int i = 0; i < 40; i++) {
        snprintf(users[i], sizeof users[i], "u%d", i % 30);
        m[i].user = users[i];
        m[i].room = "r1";
        /* u0..u9 twice: 5+i then 3 (coalesced to 5+i) */
        uint64_t seq = i < 30 ? 5 + (uint64_t)i : 3;
        CHECK(readstate_mark(users[i], "Name", "r1", seq, 1, NULL, mcb, &m[i]) == 0);
    }
    CHECK(m[0].calls == 0);   /* never from inside the call */
    WAIT(m[39].calls, 5000);
    for (int i = 0; i < 40; i++) {
        uint64_t want = 5 + (uint64_t)(i % 30);
        CHECK(m[i].calls == 1 && m[i].status == 0 && m[i].stored == want);
        CHECK(m[i].db_at_cb == (long)want);    /* committed before the answer */
    }
    CHECK(metric_hist_count(rows) == batches0 + 1);   /* one statement for 40 marks */
    WAIT(g_receipts >= 30, 2000);
    run_for(50);
    CHECK(g_receipts == 30);
    CHECK(strstr(g_last_receipt, "\"room\":\"r1\"") && strstr(g_last_receipt, "\"name\":\"Name\""));
    /* lower: answered with the stored value, no receipt */
    mctx low = {0};
    CHECK(readstate_mark("u1", "Name", "r1", 2, 1, NULL, mcb, &low) == 0);
    WAIT(low.calls, 5000);
    CHECK(low.status == 0 && low.stored == 6);
    run_for(50);
    CHECK(g_receipts == 30);
    /* higher without receipt: stored, no receipt */
    mctx hi = {0};
    CHECK(readstate_mark("u1", "Name", "r1", 50, 0, NULL, mcb, &hi) == 0);
    WAIT(hi.calls, 5000);
    CHECK(hi.stored == 50 && db_read_seq("u1", "r1") == 50);
    run_for(50);
    CHECK(g_receipts == 30);
    /* a dropped owner is never called, the mark is still stored */
    int owner;
    mctx gone = {0};
    CHECK(readstate_mark("u2", "Name", "r1", 60, 0, &owner, mcb, &gone) == 0);
    readstate_drop(&owner);
    run_for(200);
    CHECK(gone.calls == 0);
    CHECK(db_read_seq("u2", "r1") == 60);
    /* user names that need quoting in an array literal */
    mctx q = {0};
    CHECK(readstate_mark("we\"ird\\ \xc3\xa9,{}", "N", "r1", 7, 0, NULL, mcb, &q) == 0);
    WAIT(q.calls, 5000);
    CHECK(q.status == 0 && q.stored == 7);
    CHECK(qint("SELECT read_seq FROM read_state WHERE user_id = E'we\"ird\\\\ \xc3\xa9,{}'") == 7);
    bus_unsubscribe(B, "r1");
    close_all();
}

/* Lookups: batched, the stored value, 0 when never read, a queued mark
 * counted before it commits, kept_from of the room; a stalled database
 * answers -1 after the timeout and the late result is ignored. */
static void test_lookups(void)
{
    open_all(30, 300);
    lctx a = {0}, b = {0}, c = {0};
    CHECK(qexec("INSERT INTO rooms (room, epoch, kept_from) VALUES ('lk', 'e', 17)") == 0);
    mctx m = {0};
    CHECK(readstate_mark("ann", "Ann", "lk", 21, 0, NULL, mcb, &m) == 0);
    CHECK(readstate_lookup("ann", "lk", lcb, &a) == 0);     /* the mark is still queued */
    CHECK(readstate_lookup("bob", "lk", lcb, &b) == 0);
    CHECK(readstate_lookup("ann", "none", lcb, &c) == 0);
    WAIT(a.calls && b.calls && c.calls && m.calls, 5000);
    CHECK(a.status == 0 && a.read_seq == 21 && a.kept_from == 17);
    CHECK(b.status == 0 && b.read_seq == 0 && b.kept_from == 17);
    CHECK(c.status == 0 && c.read_seq == 0 && c.kept_from == 0);
    /* a lock holds the lookup: the timeout answers -1 */
    CHECK(qexec("BEGIN") == 0);
    CHECK(qexec("LOCK TABLE read_state IN ACCESS EXCLUSIVE MODE") == 0);
    lctx slow = {0};
    uint64_t t0 = mono_ms();
    CHECK(readstate_lookup("ann", "lk", lcb, &slow) == 0);
    WAIT(slow.calls, 3000);
    uint64_t dt = mono_ms() - t0;
    CHECK(slow.calls == 1 && slow.status == -1);
    CHECK(dt >= 250 && dt < 2000);
    CHECK(qexec("COMMIT") == 0);
    run_for(200);               /* the late result arrives: ignored, nothing called twice */
    CHECK(slow.calls == 1);
    lctx after = {0};
    CHECK(readstate_lookup("ann", "lk", lcb, &after) == 0);
    WAIT(after.calls, 3000);
    CHECK(after.status == 0 && after.read_seq == 21);
    /* shutdown answers what is queued with -1 */
    lctx q1 = {0};
    mctx q2 = {0};
    CHECK(readstate_lookup("ann", "lk", lcb, &q1) == 0);
    CHECK(readstate_mark("ann", "Ann", "lk", 30, 0, NULL, mcb, &q2) == 0);
    close_all();
    CHECK(q1.calls == 1 && q1.status == -1);
    CHECK(q2.calls == 1 && q2.status == -1);
    /* no store: refused at once */
    CHECK(!readstate_ready());
    CHECK(readstate_lookup("ann", "lk", lcb, &q1) == -1);
}

/* GET /rooms/unread: exact counts, own messages excluded, rows below
 * kept_from not counted, the head from rooms.head when rows are gone. */
static void test_unread(void)
{
    open_all(5, 2000);
    CHECK(qexec("INSERT INTO messages (room, seq, user_id, name, body, ts) "
                "SELECT 'ua', g, CASE WHEN g % 3 = 0 THEN 'me' ELSE 'x' END, 'n', 'b', g "
                "FROM generate_series(1, 30) g") == 0);
    CHECK(qexec("INSERT INTO messages (room, seq, user_id, name, body, ts) "
                "SELECT 'ub', g, 'y', 'n', 'b', g FROM generate_series(5, 12) g") == 0);
    CHECK(qexec("INSERT INTO rooms (room, epoch, head, kept_from) VALUES ('ub', 'e', 12, 5), "
                "('uc', 'e', 40, 41)") == 0);
    CHECK(qexec("INSERT INTO read_state (user_id, room, read_seq) VALUES ('me', 'ua', 10), "
                "('me', 'ub', 0), ('me', 'uc', 3), ('other', 'ua', 1)") == 0);
    uctx u = {0};
    CHECK(readstate_unread("me", ucb, &u) == 0);
    WAIT(u.calls, 5000);
    CHECK(u.status == 0);
    /* ua: seqs 11..30 = 20, own (multiples of 3: 12..30 -> 7) excluded = 13;
     * ub: 5..12 = 8 (kept_from 5); uc: every row gone, head 40 */
    CHECK(strcmp(u.body, "{\"rooms\":[{\"room\":\"ua\",\"seq\":30,\"read_seq\":10,\"unread\":13},"
                         "{\"room\":\"ub\",\"seq\":12,\"read_seq\":0,\"unread\":8},"
                         "{\"room\":\"uc\",\"seq\":40,\"read_seq\":3,\"unread\":0}]}") == 0);
    if (strstr(u.body, "ua") == NULL) fprintf(stderr, "body: %s\n", u.body);
    uctx none = {0};
    CHECK(readstate_unread("nobody", ucb, &none) == 0);
    WAIT(none.calls, 5000);
    CHECK(none.status == 0 && strcmp(none.body, "{\"rooms\":[]}") == 0);
    /* the plan: one index-only scan of messages_unread per room */
    PGresult *r = PQexec(bc, "PREPARE pu(text) AS " STORE_SQL_UNREAD);
    PQclear(r);
    r = PQexec(bc, "EXPLAIN EXECUTE pu('me')");
    char plan[8192] = "";
    size_t len = 0;
    for (int i = 0; i < PQntuples(r); i++)
        len += (size_t)snprintf(plan + len, len < sizeof plan ? sizeof plan - len : 0, "%s\n", PQgetvalue(r, i, 0));
    PQclear(r);
    qexec("DEALLOCATE pu");
    CHECK(strstr(plan, "messages_unread") && !strstr(plan, "Seq Scan on messages"));
    if (!strstr(plan, "messages_unread")) fprintf(stderr, "plan:\n%s", plan);
    close_all();
}

/* The retention statements: MARK records head and kept_from (monotonic),
 * DELETE removes a bounded seq range, and a room whose rows are all gone
 * keeps its head (store_head: seqs are never reused). */
typedef struct qctx { int calls, status, rows; char v[4][32]; } qctx;
static void qcb(void *ud, int status, const store_result *res)
{
    qctx *c = ud;
    c->calls++;
    c->status = status;
    c->rows = status == 0 ? store_result_rows(res) : 0;
    for (int i = 0; i < 3 && c->rows; i++) {
        const char *v = store_result_value(res, 0, i);
        snprintf(c->v[i], sizeof c->v[i], "%s", v ? v : "NULL");
    }
}
typedef struct hctx { int calls, status; uint64_t max; } hctx;
static void hcb(void *ud, int status, uint64_t max, const char *epoch)
{
    hctx *c = ud;
    c->calls++;
    c->status = status;
    c->max = max;
}

static int rg_calls, rg_status;
static size_t rg_n;
static uint64_t rg_first, rg_last;
static void rgcb(void *ud, int status, const store_row *rows, size_t n)
{
    rg_calls++;
    rg_status = status;
    rg_n = n;
    rg_first = n ? rows[0].seq : 0;
    rg_last = n ? rows[n - 1].seq : 0;
}

static int run_q(const char *sql, int n, const char **p, qctx *c)
{
    memset(c, 0, sizeof *c);
    if (store_query(S, sql, n, p, qcb, c) != 0) return -1;
    WAIT(c->calls, 5000);
    return c->calls == 1 && c->status == 0 ? 0 : -1;
}

static void test_retention_sql(void)
{
    open_all(5, 2000);
    /* 20 rows, ts = seq * 1000; the first 12 older than the cut 12500 */
    CHECK(qexec("INSERT INTO messages (room, seq, user_id, name, body, ts) "
                "SELECT 'rt', g, 'u', 'n', 'b', g * 1000 FROM generate_series(1, 20) g") == 0);
    CHECK(qexec("INSERT INTO rooms (room, epoch) VALUES ('rt', 'e')") == 0);
    qctx c;
    const char *mark[2] = {"{\"rt\"}", "{12500}"};
    CHECK(run_q(STORE_SQL_RETENTION_MARK, 2, mark, &c) == 0);
    CHECK(c.rows == 1 && !strcmp(c.v[0], "rt") && !strcmp(c.v[1], "13") && !strcmp(c.v[2], "1"));
    CHECK(qint("SELECT head FROM rooms WHERE room='rt'") == 20);
    /* reads stop at kept_from at once, before any row is deleted */
    CHECK(qint("SELECT count(*) FROM messages WHERE room='rt'") == 20);
    rg_calls = 0;
    CHECK(store_range(S, "rt", 0, UINT64_MAX, 100, 1, rgcb, NULL) == 0);
    WAIT(rg_calls, 5000);
    CHECK(rg_status == 0 && rg_n == 8 && rg_first == 13 && rg_last == 20);
    rg_calls = 0;
    CHECK(store_range(S, "rt", 5, UINT64_MAX, 100, 0, rgcb, NULL) == 0);  /* recovery since=5 */
    WAIT(rg_calls, 5000);
    CHECK(rg_status == 0 && rg_n == 8 && rg_first == 13);
    /* a DELETE batch: [1, 6) */
    const char *del[3] = {"rt", "1", "6"};
    CHECK(run_q(STORE_SQL_RETENTION_DELETE, 3, del, &c) == 0);
    CHECK(!strcmp(c.v[0], "5"));
    CHECK(qint("SELECT min(seq) FROM messages WHERE room='rt'") == 6);
    /* kept_from never moves back (an older cut) */
    const char *older[2] = {"{\"rt\"}", "{1000}"};
    CHECK(run_q(STORE_SQL_RETENTION_MARK, 2, older, &c) == 0);
    CHECK(!strcmp(c.v[1], "13") && !strcmp(c.v[2], "6"));
    /* everything older: kept_from = head + 1; all deleted; the head stays */
    const char *all[2] = {"{\"rt\"}", "{999999}"};
    CHECK(run_q(STORE_SQL_RETENTION_MARK, 2, all, &c) == 0);
    CHECK(!strcmp(c.v[1], "21"));
    const char *del2[3] = {"rt", "6", "21"};
    CHECK(run_q(STORE_SQL_RETENTION_DELETE, 3, del2, &c) == 0);
    CHECK(!strcmp(c.v[0], "15"));
    CHECK(qint("SELECT count(*) FROM messages WHERE room='rt'") == 0);
    hctx h = {0};
    CHECK(store_head(S, "rt", hcb, &h) == 0);
    WAIT(h.calls, 5000);
    CHECK(h.status == 0 && h.max == 20);
    /* a seq between the last old row and the first kept one (published, not
     * committed yet: 10) stays above the boundary: kept_from 10, not 11 (at 11
     * the acked row 10 would be hidden from history once committed, and
     * deleted by the next pass) */
    CHECK(qexec("INSERT INTO messages (room, seq, user_id, name, body, ts) "
                "SELECT 'rg', g, 'u', 'n', 'b', CASE WHEN g < 10 THEN g ELSE 100000 + g END "
                "FROM generate_series(1, 12) g WHERE g <> 10") == 0);
    CHECK(qexec("INSERT INTO rooms (room, epoch) VALUES ('rg', 'e')") == 0);
    const char *gap[2] = {"{\"rg\"}", "{50000}"};
    CHECK(run_q(STORE_SQL_RETENTION_MARK, 2, gap, &c) == 0);
    CHECK(c.rows == 1 && !strcmp(c.v[1], "10"), "kept_from with a seq in flight: %s", c.v[1]);
    CHECK(qexec("INSERT INTO messages (room, seq, user_id, name, body, ts) "
                "VALUES ('rg', 10, 'u', 'n', 'late', 100010)") == 0);   /* it commits */
    CHECK(run_q(STORE_SQL_RETENTION_MARK, 2, gap, &c) == 0);
    CHECK(!strcmp(c.v[1], "10"), "the next pass keeps it: %s", c.v[1]);
    /* nothing old: unchanged */
    const char *none[2] = {"{\"rg\"}", "{0}"};
    CHECK(run_q(STORE_SQL_RETENTION_MARK, 2, none, &c) == 0);
    CHECK(!strcmp(c.v[1], "10"));
    /* the lock: one session at a time */
    CHECK(run_q(STORE_SQL_RETENTION_LOCK, 0, NULL, &c) == 0 && !strcmp(c.v[0], "t"));
    PGresult *r = PQexec(bc, STORE_SQL_RETENTION_LOCK);
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK && !strcmp(PQgetvalue(r, 0, 0), "f"));
    PQclear(r);
    CHECK(run_q(STORE_SQL_RETENTION_UNLOCK, 0, NULL, &c) == 0 && !strcmp(c.v[0], "t"));
    r = PQexec(bc, STORE_SQL_RETENTION_LOCK);
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK && !strcmp(PQgetvalue(r, 0, 0), "t"));
    PQclear(r);
    qexec(STORE_SQL_RETENTION_UNLOCK);
    close_all();
}

int main(void)
{
    int rc0 = pg_setup("readstate", 17120);
    if (rc0 != 0) return rc0;
    L = uv_default_loop();
    uvwait_init(L);
    static const uvwait_case tests[] = {
        {"marks", test_marks},
        {"lookups", test_lookups},
        {"unread", test_unread},
        {"retention_sql", test_retention_sql},
    };
    int nfail = uvwait_cases(L, tests, sizeof tests / sizeof tests[0], NULL);
    pg_teardown();
    uvwait_close();
    uv_run(L, UV_RUN_DEFAULT);
    uv_loop_close(L);
    metrics_free_all();
    if (nfail) fprintf(stderr, "test_readstate: %d test(s) FAILED\n", nfail);
    return nfail ? 1 : 0;
}
