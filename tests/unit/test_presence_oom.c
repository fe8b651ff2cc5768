/* test_presence_oom: presence.c over the memory store when allocations
 * fail (allocfail.h: the test and the core are linked with --wrap of
 * malloc/calloc/realloc/free). Covers: a leave handler whose remove cannot
 * be queued (push_remove's realloc fails) during the store's sweep and
 * during a batch's apply: presence.c frees the entry only after the store
 * call (the sweep walks the record in the entry's slot, the batch's ops
 * point at its strings): no use after free (ASan), no record leaked (the
 * blocks allocated during a case are all freed with the node), the entry
 * expires by TTL. And the memory store's release out of memory (the record
 * cannot be copied): the entry is forgotten without a leave, the user's
 * count and name stay with their other entry. */
#define _GNU_SOURCE
#include "presence.h"
#include "allocfail.h"
#include "check.h"
#include "log.h"
#include "metrics.h"
#include "uvwait.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TTL 300
#define SWEEP 100
#define ROOM "oom-room"

static uv_loop_t *L;
static presence *P;

/* ---- transitions seen, and what the handler does ---- */
typedef struct tr { char event[8], user[32], name[32]; } tr;
static tr T[64];
static int nt;

/* the handler removes this connection (once) with push_remove's realloc
 * failing, on a leave (sweep case) or a join (apply case) */
static uint64_t g_rm_conn;
static const char *g_rm_on;

static void on_tr(void *ud, const char *room, const char *event, const char *user, const char *name)
{
    (void)ud;
    if (nt < 64) {
        snprintf(T[nt].event, sizeof T[nt].event, "%s", event);
        snprintf(T[nt].user, sizeof T[nt].user, "%s", user);
        snprintf(T[nt].name, sizeof T[nt].name, "%s", name);
        nt++;
    }
    if (g_rm_conn && g_rm_on && !strcmp(event, g_rm_on)) {
        /* (uint64_t)-1: the connection of the other user (alice 1, bob 2) */
        uint64_t id = g_rm_conn != (uint64_t)-1 ? g_rm_conn : !strcmp(user, "alice") ? 2 : 1;
        g_rm_conn = 0;
        af_fail_realloc = 1;
        presence_remove(P, room, id);
        af_fail_realloc = 0;
    }
}

static int count_tr(const char *event, const char *user)
{
    int c = 0;
    for (int i = 0; i < nt; i++) c += !strcmp(T[i].event, event) && !strcmp(T[i].user, user);
    return c;
}

/* ---- lists (also a barrier: a list runs in the flush after the batch) ---- */
typedef struct lres { int done, status, n; char users[8][32], names[8][32]; } lres;

static void list_cb(void *ud, int status, const presence_user *u, size_t n)
{
    lres *r = ud;
    r->done = 1;
    r->status = status;
    for (size_t i = 0; i < n && i < 8; i++) {
        snprintf(r->users[i], 32, "%s", u[i].user);
        snprintf(r->names[i], 32, "%s", u[i].name);
    }
    r->n = (int)n;
}

static int do_list(lres *r)
{
    memset(r, 0, sizeof *r);
    if (presence_list(P, ROOM, list_cb, r) < 0) return -1;
    WAIT_ON(L, r->done, 3000);
    return r->done ? r->status : -1;
}

static void node_new(void)
{
    char err[128] = "";
    presence_opts o = { NULL, "oomnode", TTL, SWEEP, 0 };
    presence_handlers h = { on_tr };
    P = presence_new(L, &o, &h, NULL, err, sizeof err);
    if (!P) { fprintf(stderr, "presence_new: %s\n", err); exit(1); }
}

static void node_free(void)
{
    presence_free(P);
    P = NULL;
    run_on(L, 20);      /* the timers' close callbacks free the instance */
}

static void case_start(void)
{
    nt = 0;
    g_rm_conn = 0;
    g_rm_on = NULL;
    af_failed = 0;
    af_mark();
    node_new();
}

/* Everything the node and the store allocated during the case is freed. */
static void case_end(void)
{
    node_free();
    CHECK(af_live() == 0, "%zu blocks allocated during the case are still live (leaked)", af_live());
}

/* The sweep expires the entry; the leave handler removes the connection
 * and push_remove's realloc fails: the entry cannot wait in a remove, so
 * presence.c frees it, while the sweep is still on the store's record in
 * the entry's slot. Before the fix the store copied the record to a block
 * of its own (release), the sweep then wrote the freed record (ASan:
 * heap-use-after-free) and buried the copy (a leaked block). */
static void test_sweep_leave_remove_oom(void)
{
    case_start();
    presence_add(P, ROOM, 1, "alice", "Alice");
    lres r;
    CHECK(do_list(&r) == 0 && r.n == 1, "alice listed");
    CHECK(count_tr("join", "alice") == 1);
    g_rm_conn = 1;
    g_rm_on = "leave";
    WAIT_ON(L, count_tr("leave", "alice") > 0, 3000);   /* no heartbeat: expires */
    CHECK(count_tr("leave", "alice") == 1, "one leave by the sweep");
    CHECK(af_failed == 1, "the handler's remove met the failed realloc (%d)", af_failed);
    CHECK(g_rm_conn == 0, "the handler ran");
    CHECK(do_list(&r) == 0 && r.n == 0, "nobody left in the room (%d)", r.n);
    run_on(L, 2 * SWEEP);
    CHECK(count_tr("leave", "alice") == 1, "still one leave");
    case_end();
}

/* Two connections join in one batch; the first join's handler removes the
 * other connection, whose upsert is later in the same batch, and its remove
 * cannot be queued. Before the fix its entry was freed at once and the
 * apply read the batch's op of it (its strings in the freed entry: ASan
 * heap-use-after-free). Now the upsert is applied and, with no remove
 * queued, the entry expires by TTL: one join and one leave each. */
static void test_apply_join_remove_oom(void)
{
    case_start();
    presence_add(P, ROOM, 1, "alice", "Alice");
    presence_add(P, ROOM, 2, "bob", "Bob");
    /* the first join (either order) removes the other user's connection */
    g_rm_on = "join";
    g_rm_conn = (uint64_t)-1;
    lres r;
    CHECK(do_list(&r) == 0, "batch applied");
    CHECK(count_tr("join", "alice") == 1 && count_tr("join", "bob") == 1, "both joined once");
    CHECK(af_failed == 1, "the handler's remove met the failed realloc (%d)", af_failed);
    WAIT_ON(L, count_tr("leave", "alice") + count_tr("leave", "bob") == 2, 3000);
    CHECK(count_tr("leave", "alice") == 1 && count_tr("leave", "bob") == 1,
          "both expired by TTL (no heartbeat), one leave each");
    case_end();
}

/* The store's release out of memory: the entry whose remove cannot be
 * queued (realloc fails, not inside a store call) is released and its
 * record cannot be copied (calloc fails): it is forgotten without a leave;
 * the user's other connection keeps them listed, with the name, and its
 * removal announces the one leave. A user with no other entry is dropped
 * silently. */
static void test_release_oom(void)
{
    case_start();
    presence_add(P, ROOM, 1, "alice", "Alice");
    presence_add(P, ROOM, 2, "alice", "Alice");
    presence_add(P, ROOM, 3, "carol", "Carol");
    lres r;
    CHECK(do_list(&r) == 0 && r.n == 2, "alice and carol listed (%d)", r.n);
    af_fail_realloc = 1;
    af_fail_calloc = 1;
    presence_remove(P, ROOM, 1);
    CHECK(af_failed == 2, "push_remove's realloc and release's copy failed (%d)", af_failed);
    af_fail_realloc = 1;
    af_fail_calloc = 1;
    presence_remove(P, ROOM, 3);
    CHECK(af_failed == 4, "the same for carol (%d)", af_failed);
    af_fail_realloc = af_fail_calloc = 0;
    CHECK(do_list(&r) == 0 && r.n == 1 && !strcmp(r.users[0], "alice") && !strcmp(r.names[0], "Alice"),
          "alice listed with her name through her other connection, carol forgotten (%d)", r.n);
    CHECK(count_tr("leave", "alice") == 0 && count_tr("leave", "carol") == 0, "no leave announced");
    presence_remove(P, ROOM, 2);
    CHECK(do_list(&r) == 0 && r.n == 0, "nobody listed");
    CHECK(count_tr("leave", "alice") == 1, "alice's last connection: one leave");
    CHECK(nt > 0 && !strcmp(T[nt - 1].name, "Alice"), "the leave carries the name");
    run_on(L, TTL + 2 * SWEEP);
    CHECK(count_tr("leave", "carol") == 0 && count_tr("leave", "alice") == 1, "nothing expires later");
    case_end();
}

int main(void)
{
    log_set_level(getenv("PRESENCE_LOG") ? LOG_DEBUG : LOG_ERROR);
    L = uv_default_loop();
    uvwait_init(L);
    /* the metrics exist from the first instance on (not a case's blocks) */
    node_new();
    node_free();
    static const uvwait_case cases[] = {
        {"sweep_leave_remove_oom", test_sweep_leave_remove_oom},
        {"apply_join_remove_oom", test_apply_join_remove_oom},
        {"release_oom", test_release_oom},
    };
    uvwait_cases(L, cases, sizeof cases / sizeof cases[0], NULL);
    uvwait_close();
    uv_run(L, UV_RUN_DEFAULT);
    uv_loop_close(L);
    metrics_free_all();
    return check_summary("test_presence_oom");
}
