/* test_presence: presence.h against a real redis-server (always started
 * here, on the first free port of 17701-17720, or of
 * CHATD_TEST_UNIT_PORT_LO..HI (ports.h); CHATD_TEST_REDIS_URL is
 * ignored: this test kills clients and restarts its server, which must
 * never hit a Redis shared with other tests) and in memory mode. Several presence
 * instances ("nodes") share one loop and one store; a heartbeat timer
 * touches every live connection like the core does on heartbeat frames.
 * Covers: one join/one leave for a user on two nodes, node crash expiry,
 * heartbeat expiry and self-heal, list after churn, a seeded random churn
 * over 3 nodes checked step by step against the true timeline, Redis
 * connection kill and Redis restart, list callbacks on free, a connection
 * leaving and re-joining a room within one batch or while its remove is in
 * flight (no false leave, no second join), foreign data in Redis (stale
 * rooms of other runs in the index, keys of another type). Room names and
 * node ids carry a random per-run prefix. */
#define _GNU_SOURCE
#include "presence.h"
#include "redis_slot.h"
#include "check.h"
#include "uvwait.h"
#include "redis_procs.h"
#include "log.h"
#include "metrics.h"
#include "series.h"
#include "util.h"
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define TTL 300
#define SWEEP 50
#define SLACK 250
#define REDIS_PORT_FIRST 17701
#define REDIS_PORT_LAST 17720

static uv_loop_t *L;
static const char *g_url;       /* NULL: memory mode */
static char g_url_buf[128];
static pid_t g_redis_pid;
static uint32_t g_ttl = TTL;    /* ttl of new nodes */
static char g_pfx[32];          /* room prefix, unique per run */
static int g_redis_port;

/* ---- recorded transitions ---- */
typedef struct ev { int node; char room[72]; char event[8]; char user[32]; char name[32]; } ev;
static ev *EV;
static int nev, capev;

#define MAXNODES 8
typedef struct node { presence *p; int idx; char id[64]; } node;
static node N[MAXNODES];

static void on_tr(void *ud, const char *room, const char *event, const char *user,
                  const char *name)
{
    node *n = ud;
    if (nev == capev) {
        capev = capev ? capev * 2 : 1024;
        EV = realloc(EV, (size_t)capev * sizeof *EV);
    }
    ev *e = &EV[nev++];
    e->node = n->idx;
    snprintf(e->room, sizeof e->room, "%s", room);
    snprintf(e->event, sizeof e->event, "%s", event);
    snprintf(e->user, sizeof e->user, "%s", user);
    snprintf(e->name, sizeof e->name, "%s", name);
}

static int count_ev(int from, const char *room, const char *user, const char *event)
{
    int c = 0;
    for (int i = from; i < nev; i++)
        if (!strcmp(EV[i].room, room) && !strcmp(EV[i].user, user) &&
            (!event || !strcmp(EV[i].event, event)))
            c++;
    return c;
}

/* ---- connections the harness heartbeats ---- */
typedef struct conn { int node; char room[72]; uint64_t id; char user[32]; int live, beat; } conn;
#define MAXCONNS 8192
static conn C[MAXCONNS];
static int nc;
static uint64_t g_conn_id = 1;

static void room_name(char *out, size_t n, const char *r) { snprintf(out, n, "%s%s", g_pfx, r); }

static conn *cadd(int node, const char *room, const char *user)
{
    conn *c = &C[nc++];
    c->node = node;
    room_name(c->room, sizeof c->room, room);
    c->id = g_conn_id++;
    snprintf(c->user, sizeof c->user, "%s", user);
    c->live = c->beat = 1;
    char name[40];
    snprintf(name, sizeof name, "N-%s", user);
    presence_add(N[node].p, c->room, c->id, user, name);
    return c;
}

static void cremove(conn *c)
{
    if (c->live && N[c->node].p) presence_remove(N[c->node].p, c->room, c->id);
    c->live = c->beat = 0;
}

static uv_timer_t hb_timer;
static uint64_t hb_last, hb_max_gap;   /* loop stalls (a loaded machine) */
static void hb_cb(uv_timer_t *t)
{
    uint64_t now = mono_ms();
    if (hb_last && now - hb_last > hb_max_gap) hb_max_gap = now - hb_last;
    hb_last = now;
    for (int i = 0; i < nc; i++)
        if (C[i].live && C[i].beat && N[C[i].node].p)
            presence_touch(N[C[i].node].p, C[i].room, C[i].id);
}

/* ---- running the loop ---- */
static void wait_ms(uint64_t ms) { uvwait_ms(L, ms); }

/* Runs the loop until cond() or timeout; returns 1 when cond held. */
static int wait_until(int (*cond)(void *), void *ud, uint64_t timeout_ms)
{
    uint64_t end = mono_ms() + timeout_ms;
    while (!cond(ud)) {
        if (mono_ms() > end) return 0;
        wait_ms(2);
    }
    return 1;
}

/* list results */
typedef struct lres { int done, status, sync; char users[64][32]; char names[64][32]; int n; } lres;
static void list_cb(void *ud, int status, const presence_user *u, size_t n)
{
    lres *r = ud;
    r->done++;
    r->status = status;
    r->n = 0;
    for (size_t i = 0; i < n && i < 64; i++) {
        snprintf(r->users[i], 32, "%s", u[i].user);
        snprintf(r->names[i], 32, "%s", u[i].name);
        r->n++;
    }
}
static int lres_done(void *ud) { return ((lres *)ud)->done > 0; }

static int do_list(int node, const char *room_full, lres *r)
{
    memset(r, 0, sizeof *r);
    if (presence_list(N[node].p, room_full, list_cb, r) < 0) return -1;
    if (r->done) r->sync = 1;   /* must never be synchronous */
    if (!wait_until(lres_done, r, 3000)) return -1;
    return r->status;
}

/* Barrier: every op issued on the node before it has been applied (the list
 * runs in the same flush after the batch, on the same pipeline). On a
 * Cluster a pipeline is per master: one list per room the node touched, each
 * on its room's connection. */
static void sync_node(int i)
{
    lres r;
    if (!N[i].p) return;
    char room[72];
    room_name(room, sizeof room, "sync");
    CHECK(do_list(i, room, &r) == 0, "sync list on node %d failed", i);
    CHECK(!r.sync, "list callback ran synchronously");
    if (!g_url || strncmp(g_url, "redis+cluster://", 16) != 0) return;
    for (int k = 0; k < nc; k++) {
        if (C[k].node != i) continue;
        int seen = 0;
        for (int j = 0; j < k && !seen; j++) seen = C[j].node == i && !strcmp(C[j].room, C[k].room);
        if (!seen) CHECK(do_list(i, C[k].room, &r) == 0, "sync list of %s failed", C[k].room);
    }
}
static void sync_all(void) { for (int i = 0; i < MAXNODES; i++) sync_node(i); }

static int has_user(const lres *r, const char *u)
{
    int c = 0;
    for (int i = 0; i < r->n; i++) c += !strcmp(r->users[i], u);
    return c;
}

static void node_new(int i, const char *id)
{
    char err[256] = "";
    presence_opts o = { g_url, id, g_ttl, SWEEP, 0 };
    presence_handlers h = { on_tr };
    N[i].idx = i;
    snprintf(N[i].id, sizeof N[i].id, "%s", id);
    N[i].p = presence_new(L, &o, &h, &N[i], err, sizeof err);
    if (!N[i].p) { fprintf(stderr, "presence_new: %s\n", err); exit(1); }
}

static int node_ready_cond(void *ud)
{
    /* ready when a list succeeds */
    lres r;
    int i = *(int *)ud;
    char room[72];
    room_name(room, sizeof room, "sync");
    return do_list(i, room, &r) == 0;
}

/* Free a node; its conns disappear without removes (a crash). */
static void node_crash(int i)
{
    for (int k = 0; k < nc; k++) if (C[k].node == i) C[k].live = C[k].beat = 0;
    presence_free(N[i].p);
    N[i].p = NULL;
}

static void node_free_graceful(int i)
{
    for (int k = 0; k < nc; k++) if (C[k].node == i && C[k].live) cremove(&C[k]);
    sync_node(i);
    presence_free(N[i].p);
    N[i].p = NULL;
}

static void setup_nodes(int n)
{
    for (int i = 0; i < n; i++) {
        char id[64];
        snprintf(id, sizeof id, "%sn%d-%d", g_pfx, i, (int)(g_conn_id % 100000));
        node_new(i, id);
    }
    for (int i = 0; i < n; i++) {
        int ok = wait_until(node_ready_cond, &i, 5000);
        CHECK(ok, "node %d not ready", i);
    }
}

static void teardown_nodes(void)
{
    for (int i = 0; i < MAXNODES; i++) if (N[i].p) node_free_graceful(i);
    wait_ms(20);
    nc = 0;
}

/* ---- tests ---- */

static void test_two_nodes_one_user(void)
{
    setup_nodes(2);
    int e0 = nev;
    conn *a = cadd(0, "r1", "u1");
    sync_node(0);
    conn *b = cadd(1, "r1", "u1");
    sync_all();
    CHECK(count_ev(e0, a->room, "u1", "join") == 1, "joins %d", count_ev(e0, a->room, "u1", "join"));
    CHECK(count_ev(e0, a->room, "u1", "leave") == 0, "early leave");
    CHECK(EV[e0].node == 0 && !strcmp(EV[e0].name, "N-u1"), "join by node 0 with name");
    lres r;
    CHECK(do_list(1, a->room, &r) == 0 && r.n == 1 && has_user(&r, "u1") == 1 &&
          !strcmp(r.names[0], "N-u1"), "list one user");
    cremove(a);
    sync_all();
    wait_ms(TTL / 2);
    CHECK(count_ev(e0, a->room, "u1", "leave") == 0, "leave while other conn lives");
    cremove(b);
    sync_all();
    CHECK(count_ev(e0, a->room, "u1", "leave") == 1, "leave after last removed");
    CHECK(EV[nev - 1].node == 1, "leave by node 1");
    CHECK(do_list(0, a->room, &r) == 0 && r.n == 0, "list empty, got %d", r.n);
    wait_ms(TTL + 2 * SWEEP);
    CHECK(count_ev(e0, a->room, "u1", NULL) == 2, "nothing more");
    teardown_nodes();
}

static void test_crash(void)
{
    setup_nodes(2);
    int e0 = nev;
    conn *a = cadd(0, "r2", "u2");
    conn *b = cadd(0, "r2", "u2b");
    conn *c = cadd(1, "r2", "u2b");
    sync_all();
    CHECK(count_ev(e0, a->room, "u2", "join") == 1, "join u2");
    wait_ms(100);   /* let a heartbeat or two pass */
    node_crash(0);
    uint64_t t0 = mono_ms();
    int e1 = nev;
    while (count_ev(e1, a->room, "u2", "leave") == 0 && mono_ms() - t0 < TTL + SWEEP + 2000)
        wait_ms(5);
    uint64_t dt = mono_ms() - t0;
    CHECK(count_ev(e1, a->room, "u2", "leave") == 1, "leave after crash");
    CHECK(dt <= TTL + SWEEP + SLACK, "crash leave took %llu ms", (unsigned long long)dt);
    CHECK(nev > e1 && EV[nev - 1].node == 1, "announced by the surviving node");
    fprintf(stderr, "  [%s] crash -> leave in %llu ms (ttl %d + sweep %d)\n",
            g_url ? "redis" : "mem", (unsigned long long)dt, TTL, SWEEP);
    wait_ms(TTL);
    CHECK(count_ev(e1, a->room, "u2", NULL) == 1, "exactly one leave");
    CHECK(count_ev(e1, a->room, "u2b", NULL) == 0, "u2b still present via node 1");
    lres r;
    CHECK(do_list(1, a->room, &r) == 0 && r.n == 1 && has_user(&r, "u2b"), "list after crash");
    (void)b;
    cremove(c);
    sync_all();
    CHECK(count_ev(e1, a->room, "u2b", "leave") == 1, "u2b leave");
    teardown_nodes();
}

static void test_expire_and_heal(void)
{
    setup_nodes(2);
    int e0 = nev;
    conn *a = cadd(0, "r3", "u3");
    sync_all();
    CHECK(count_ev(e0, a->room, "u3", "join") == 1, "join");
    a->beat = 0;   /* the client stops heartbeating */
    uint64_t t0 = mono_ms();
    while (count_ev(e0, a->room, "u3", "leave") == 0 && mono_ms() - t0 < TTL + 2000) wait_ms(5);
    uint64_t dt = mono_ms() - t0;
    CHECK(count_ev(e0, a->room, "u3", "leave") == 1, "expired");
    CHECK(dt <= TTL + SWEEP + SLACK, "expiry took %llu ms", (unsigned long long)dt);
    lres r;
    CHECK(do_list(1, a->room, &r) == 0 && r.n == 0, "list empty after expiry");
    /* a late heartbeat of the still-open connection re-adds it */
    presence_touch(N[0].p, a->room, a->id);
    a->beat = 1;
    sync_all();
    CHECK(count_ev(e0, a->room, "u3", "join") == 2, "rejoin after heal");
    cremove(a);
    sync_all();
    CHECK(count_ev(e0, a->room, "u3", "leave") == 2, "leave after heal");
    /* removing an already-expired entry announces nothing more */
    conn *b = cadd(1, "r3", "u3");
    sync_all();
    b->beat = 0;
    wait_ms(TTL + SWEEP + SLACK);
    int before = count_ev(e0, a->room, "u3", NULL);
    cremove(b);
    sync_all();
    wait_ms(50);
    CHECK(count_ev(e0, a->room, "u3", NULL) == before, "remove after expiry is silent");
    CHECK(before == 6, "join/leave x3, got %d", before);
    teardown_nodes();
}

static void test_list_churn(void)
{
    setup_nodes(2);
    conn *cs[10];
    for (int i = 0; i < 10; i++) {
        char u[16];
        snprintf(u, sizeof u, "v%d", i % 5);
        cs[i] = cadd(i % 2, "r4", u);
    }
    sync_all();
    lres r;
    CHECK(do_list(0, cs[0]->room, &r) == 0 && r.n == 5, "5 users, got %d", r.n);
    /* remove every conn of v0, v1 and one of v2 */
    cremove(cs[0]); cremove(cs[5]); cremove(cs[1]); cremove(cs[6]); cremove(cs[2]);
    cs[0] = cadd(1, "r4", "v9");
    sync_all();
    CHECK(do_list(1, cs[1]->room, &r) == 0 && r.n == 4, "4 users, got %d", r.n);
    CHECK(!has_user(&r, "v0") && !has_user(&r, "v1") && has_user(&r, "v2") == 1 &&
          has_user(&r, "v3") == 1 && has_user(&r, "v4") == 1 && has_user(&r, "v9") == 1,
          "list contents");
    char other[72];
    room_name(other, sizeof other, "r4-other");
    CHECK(do_list(0, other, &r) == 0 && r.n == 0, "other room empty");
    CHECK(presence_list(N[0].p, "bad room!", list_cb, &r) == -1, "invalid room rejected");
    teardown_nodes();
}

/* Seeded churn over 3 nodes; each step's announced transitions are checked
 * against the truth (live connections per (room, user)). */
static int live_count(const char *room, const char *user)
{
    int c = 0;
    for (int i = 0; i < nc; i++)
        if (C[i].live && C[i].beat && !strcmp(C[i].room, room) && !strcmp(C[i].user, user)) c++;
    return c;
}

static void test_churn(unsigned seed, int steps)
{
    /* a longer ttl here: the exact per-step check must not see legitimate
     * expiries caused by a machine too loaded to heartbeat within 300 ms */
    g_ttl = getenv("PRESENCE_CHURN_TTL") ? (uint32_t)atoi(getenv("PRESENCE_CHURN_TTL")) : 1000;
    fprintf(stderr, "  [%s] churn seed %u, %d steps, ttl %u\n", g_url ? "redis" : "mem", seed,
            steps, g_ttl);
    srand(seed);
    setup_nodes(3);
    const char *rooms[] = { "c1", "c2" };
    const char *users[] = { "a", "b", "c", "d", "e" };
    int e0 = nev, nodes_made = 3;
    for (int s = 0; s < steps && !check_failures(); s++) {
        int roll = rand() % 100, e1 = nev;
        hb_max_gap = 0;
        char exp_room[72] = "", exp_user[32] = "";
        int before = 0, after = 0;
        if (roll < 48) {                                     /* add */
            int nd = rand() % 3;
            char room[72];
            room_name(room, sizeof room, rooms[rand() % 2]);
            const char *u = users[rand() % 5];
            before = live_count(room, u);
            conn *c = cadd(nd, room + strlen(g_pfx), u);
            after = before + 1;
            snprintf(exp_room, sizeof exp_room, "%s", c->room);
            snprintf(exp_user, sizeof exp_user, "%s", u);
            sync_node(nd);
        } else if (roll < 94 || roll >= 98) {                /* remove or expire */
            int live[MAXCONNS], nl = 0;
            for (int i = 0; i < nc; i++) if (C[i].live && C[i].beat) live[nl++] = i;
            if (!nl) continue;
            conn *c = &C[live[rand() % nl]];
            snprintf(exp_room, sizeof exp_room, "%s", c->room);
            snprintf(exp_user, sizeof exp_user, "%s", c->user);
            before = live_count(c->room, c->user);
            after = before - 1;
            if (roll < 94) {
                cremove(c);
                sync_node(c->node);
            } else {
                c->beat = 0;                                 /* stops heartbeating */
                wait_ms(g_ttl + SWEEP + SLACK);
                sync_all();
                cremove(c);                                  /* late close: silent */
                sync_node(c->node);
            }
        } else {                                             /* crash a node */
            int nd = rand() % 3;
            int affected = 0;
            for (int i = 0; i < nc; i++) affected += C[i].live && C[i].node == nd;
            /* truth before/after per (room,user) */
            int bef[2][5], aft[2][5];
            for (int r = 0; r < 2; r++) for (int u = 0; u < 5; u++) {
                char room[72];
                room_name(room, sizeof room, rooms[r]);
                bef[r][u] = live_count(room, users[u]);
            }
            node_crash(nd);
            wait_ms(g_ttl + SWEEP + SLACK);
            char id[64];
            snprintf(id, sizeof id, "%sn%d-gen%d", g_pfx, nd, nodes_made++);
            node_new(nd, id);
            int ndv = nd;
            CHECK(wait_until(node_ready_cond, &ndv, 5000), "replacement node ready");
            sync_all();
            for (int r = 0; r < 2; r++) for (int u = 0; u < 5; u++) {
                char room[72];
                room_name(room, sizeof room, rooms[r]);
                aft[r][u] = live_count(room, users[u]);
                int want = (bef[r][u] > 0 && aft[r][u] == 0);
                CHECK(count_ev(e1, room, users[u], "leave") == want &&
                      count_ev(e1, room, users[u], "join") == 0,
                      "step %d crash node %d: %s/%s leaves %d want %d", s, nd, rooms[r], users[u],
                      count_ev(e1, room, users[u], "leave"), want);
            }
            (void)affected;
            continue;
        }
        /* exactly the expected transition for this (room, user), nothing else */
        int want_join = before == 0 && after == 1, want_leave = before == 1 && after == 0;
        CHECK(count_ev(e1, exp_room, exp_user, "join") == want_join &&
              count_ev(e1, exp_room, exp_user, "leave") == want_leave &&
              nev - e1 == want_join + want_leave,
              "step %d (roll %d) %s/%s before %d after %d: got %d events (max loop stall %llu ms)",
              s, roll, exp_room, exp_user, before, after, nev - e1,
              (unsigned long long)hb_max_gap);
    }
    /* everyone leaves */
    for (int i = 0; i < nc; i++) if (C[i].live) cremove(&C[i]);
    sync_all();
    wait_ms(g_ttl + SWEEP + SLACK);
    /* alternation per (room, user) over the whole run, ending absent */
    for (int r = 0; r < 2; r++) for (int u = 0; u < 5; u++) {
        char room[72];
        room_name(room, sizeof room, rooms[r]);
        int present = 0, ok = 1, joins = 0;
        for (int i = e0; i < nev; i++) {
            if (strcmp(EV[i].room, room) || strcmp(EV[i].user, users[u])) continue;
            int j = EV[i].event[0] == 'j';
            if (j == present) ok = 0;
            present = j;
            joins += j;
        }
        CHECK(ok && !present, "alternation %s/%s (joins %d)", rooms[r], users[u], joins);
        lres lr;
        CHECK(do_list(0, room, &lr) == 0 && lr.n == 0, "list empty at end");
    }
    teardown_nodes();
    g_ttl = TTL;
}

static void test_list_on_free(void)
{
    setup_nodes(1);
    lres r;
    memset(&r, 0, sizeof r);
    char room[72];
    room_name(room, sizeof room, "r5");
    CHECK(presence_list(N[0].p, room, list_cb, &r) == 0, "list queued");
    CHECK(r.done == 0, "not synchronous");
    presence_free(N[0].p);
    N[0].p = NULL;
    CHECK(r.done == 1 && r.status == -1, "freed -> -1 once (done %d)", r.done);
    wait_ms(20);
    CHECK(r.done == 1, "exactly once");
    teardown_nodes();
}

/* ---- Redis-only: connection kill and server restart ---- */
static redisContext *redis_sync(void)
{
    const char *u = g_url + (strncmp(g_url, "redis://", 8) ? 0 : 8);
    char host[64] = "127.0.0.1";
    int port = 6379;
    sscanf(u, "%63[^:/]:%d", host, &port);
    redisContext *c = redisConnect(host, port);
    if (c && c->err) { redisFree(c); return NULL; }
    return c;
}

/* Starts redis-server on port (never talks to a server it did not start):
 * its pid, -1 when the port is taken or the server did not come up. */
static pid_t start_redis_on(int port)
{
    redisContext *busy = redisConnect("127.0.0.1", port);
    int taken = busy && !busy->err;
    if (busy) redisFree(busy);
    if (taken) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        char ps[16];
        snprintf(ps, sizeof ps, "%d", port);
        int fd = open("/dev/null", 1);
        if (fd >= 0) { dup2(fd, 1); dup2(fd, 2); }
        execlp("redis-server", "redis-server", "--port", ps, "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", "/tmp", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid) return -1;   /* e.g. lost a bind race */
        redisContext *c = redisConnect("127.0.0.1", port);
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            redisFree(c);
            if (ok) return pid;
        } else if (c) {
            redisFree(c);
        }
        usleep(25000);
    }
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    return -1;
}

/* (Re)start our server: on g_redis_port when set, else the first free port. */
static pid_t start_redis(void)
{
    if (g_redis_port) return start_redis_on(g_redis_port);
    int lo, hi;
    test_port_range(REDIS_PORT_FIRST, REDIS_PORT_LAST, &lo, &hi);
    for (int port = lo; port <= hi; port++) {
        pid_t pid = start_redis_on(port);
        if (pid > 0) { g_redis_port = port; return pid; }
        fprintf(stderr, "port %d busy, trying the next\n", port);
    }
    return -1;
}

static void stop_redis(void)
{
    if (g_redis_pid > 0) {
        kill(g_redis_pid, SIGTERM);
        waitpid(g_redis_pid, NULL, 0);
        g_redis_pid = 0;
    }
}

typedef struct lw { int node; const char *room; int want; } lw;
static int list_has_n(void *ud)
{
    lw *w = ud;
    lres r;
    return do_list(w->node, w->room, &r) == 0 && r.n == w->want;
}

static int leave_w2(void *ud) { return count_ev(0, ud, "w2", "leave") > 0; }

static void test_redis_reconnect(void)
{
    g_ttl = 3000;   /* so a leave cannot come from expiry within the test */
    setup_nodes(2);
    int e0 = nev;
    conn *a = cadd(0, "r6", "w1");
    conn *b = cadd(1, "r6", "w2");
    sync_all();
    CHECK(count_ev(e0, a->room, "w1", "join") == 1 && count_ev(e0, a->room, "w2", "join") == 1,
          "joins");
    redisContext *rc = redis_sync();
    CHECK(rc != NULL, "sync redis");
    if (!rc) { teardown_nodes(); return; }
    redisReply *r = redisCommand(rc, "CLIENT KILL TYPE normal SKIPME yes");
    CHECK(r && r->type == REDIS_REPLY_INTEGER && r->integer >= 2, "killed clients");
    freeReplyObject(r);
    redisFree(rc);
    /* removed before the node noticed the kill: the remove fails with the
     * connection and is retried after the reconnect */
    cremove(b);
    uint64_t t0 = mono_ms();
    CHECK(wait_until(leave_w2, a->room, 2500), "leave w2");
    uint64_t dt = mono_ms() - t0;
    CHECK(dt < 1500, "queued remove took %llu ms (expiry, not the retry?)", (unsigned long long)dt);
    fprintf(stderr, "  [redis] remove during connection loss -> leave in %llu ms\n",
            (unsigned long long)dt);
    lw w = { 0, a->room, 1 };
    CHECK(wait_until(list_has_n, &w, 5000), "list after reconnect");
    int one = 1;
    CHECK(wait_until(node_ready_cond, &one, 8000), "node 1 back");
    sync_all();
    CHECK(count_ev(e0, a->room, "w2", "leave") == 1, "queued remove -> leave after reconnect");
    CHECK(nev == e0 + 3, "no other transitions from a reconnect (got %d)", nev - e0);
    if (g_redis_pid > 0) {
        /* restart: Redis loses everything, the node re-adds its live entry */
        stop_redis();
        wait_ms(300);
        lres lr;
        int st = do_list(0, a->room, &lr);
        CHECK(st == -1, "list unavailable while down (status %d, n %d)", st, lr.n);
        g_redis_pid = start_redis();
        CHECK(g_redis_pid > 0, "redis restarted");
        w.want = 1;
        CHECK(wait_until(list_has_n, &w, 8000), "entry restored after restart");
        CHECK(wait_until(node_ready_cond, &one, 8000), "node 1 back after restart");
        cremove(a);
        sync_all();
        CHECK(count_ev(e0, a->room, "w1", "leave") == 1, "leave after restart");
        CHECK(wait_until(list_has_n, &(lw){ 1, a->room, 0 }, 3000), "empty at end");
    }
    teardown_nodes();
    g_ttl = TTL;
}

/* Heartbeat refreshes of a room's entries, arriving in separate loop turns
 * within a tenth of the TTL, leave as one store batch (one call per room),
 * not one each; a join in the meantime still goes out at once. */
static void test_refreshes_share_a_batch(void)
{
    setup_nodes(1);
    metric_counter *batches = metrics_counter("chat_presence_store_batches_total", NULL, "");
    int e0 = nev;
    conn *cs[10];
    int joins = 0;
    for (int i = 0; i < 10; i++) {
        char u[16];
        snprintf(u, sizeof u, "rb%d", i);
        cs[i] = cadd(0, "r9", u);
        cs[i]->beat = 0;            /* this test beats by hand */
    }
    sync_all();
    for (int i = 0; i < 10; i++) joins += count_ev(e0, cs[i]->room, cs[i]->user, "join");
    CHECK(joins == 10, "10 joins (got %d)", joins);
    wait_ms(TTL / 10 + 20);        /* nothing of the joins still due */
    uint64_t b0 = batches->v;
    uint64_t t0 = mono_ms();
    for (int i = 0; i < 10; i++) {   /* one refresh per loop turn */
        presence_touch(N[0].p, cs[i]->room, cs[i]->id);
        uv_run(L, UV_RUN_NOWAIT);
    }
    uint64_t spread = mono_ms() - t0;
    wait_ms(TTL / 10 + 40);
    uint64_t nb = batches->v - b0;
    if (spread < TTL / 20)          /* a loaded machine may stretch the loop: then 2 */
        CHECK(nb == 1, "10 refreshes in %llu ms: %llu batches (want 1)", (unsigned long long)spread,
              (unsigned long long)nb);
    CHECK(nb >= 1 && nb <= 2, "10 refreshes: %llu batches", (unsigned long long)nb);
    /* a join while a refresh waits: the join's flush goes out at the end of
     * the loop turn and carries the waiting refresh (one batch, none later) */
    presence_touch(N[0].p, cs[0]->room, cs[0]->id);
    uint64_t bj = batches->v;
    conn *late = cadd(0, "r9", "rb-late");
    late->beat = 0;
    uv_run(L, UV_RUN_NOWAIT);      /* the 0-ms flush is due in this turn */
    CHECK(batches->v == bj + 1, "the join flushed in the next loop turn (%llu batches)",
          (unsigned long long)(batches->v - bj));
    uint64_t tj = mono_ms();
    while (count_ev(e0, late->room, "rb-late", "join") == 0 && mono_ms() - tj < 3000) wait_ms(1);
    CHECK(count_ev(e0, late->room, "rb-late", "join") == 1, "late join announced");
    wait_ms(TTL / 10 + 40);
    CHECK(batches->v == bj + 1, "the waiting refresh went with the join (%llu batches)",
          (unsigned long long)(batches->v - bj));
    for (int i = 0; i < 10; i++) cremove(cs[i]);
    cremove(late);
    sync_all();
    teardown_nodes();
}

/* A connection leaves a room and re-joins it (same conn id, so the same
 * store entry) within one batch, several times: nothing to announce. A
 * batch sends upserts before removes, so a queued remove must be taken back
 * by the re-add, else the store drops the entry (false leave) and the next
 * heartbeat re-adds it (second join). */
static void test_rejoin_same_tick(void)
{
    setup_nodes(2);
    int e0 = nev;
    conn *a = cadd(0, "r7", "v1");
    conn *b = cadd(1, "r7", "v2");
    sync_all();
    CHECK(count_ev(e0, a->room, "v1", "join") == 1, "join v1");
    for (int round = 0; round < 3; round++) {
        presence_remove(N[0].p, a->room, a->id);
        presence_add(N[0].p, a->room, a->id, "v1", "N-v1");
        presence_remove(N[1].p, b->room, b->id);
        presence_remove(N[1].p, b->room, b->id);   /* twice: harmless */
        presence_add(N[1].p, b->room, b->id, "v2", "N-v2");
        sync_all();
        wait_ms(60);   /* a heartbeat or so */
    }
    /* remove, add, remove in one tick: a real leave */
    presence_remove(N[1].p, b->room, b->id);
    presence_add(N[1].p, b->room, b->id, "v2", "N-v2");
    cremove(b);
    sync_all();
    wait_ms(TTL + 2 * SWEEP);
    CHECK(count_ev(e0, a->room, "v1", NULL) == 1, "v1: only the first join (got %d events)",
          count_ev(e0, a->room, "v1", NULL));
    CHECK(count_ev(e0, a->room, "v2", "join") == 1 && count_ev(e0, a->room, "v2", "leave") == 1,
          "v2: one join, one leave (got %d, %d)", count_ev(e0, a->room, "v2", "join"),
          count_ev(e0, a->room, "v2", "leave"));
    lres r;
    CHECK(do_list(1, a->room, &r) == 0 && r.n == 1 && has_user(&r, "v1"), "list v1 only");
    teardown_nodes();
}

static redisContext *redis_sync(void);

static long long rcmd_int(redisContext *rc, const char *what, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    long long v = -1;
    CHECK(r && r->type != REDIS_REPLY_ERROR, "%s: %s", what, r && r->str ? r->str : "no reply");
    if (r && r->type == REDIS_REPLY_INTEGER) v = r->integer;
    freeReplyObject(r);
    return v;
}

/* Redis only: the connection leaves and re-joins while its remove is in
 * flight, then the Redis connection drops (the remove never ran, so it is
 * retried): the retry must not remove the re-added entry. Writes are paused
 * in Redis so the remove is surely in flight when the connection is killed. */
static void test_rejoin_remove_in_flight(void)
{
    g_ttl = 3000;
    setup_nodes(1);
    int e0 = nev;
    conn *a = cadd(0, "r9", "x1");
    sync_all();
    CHECK(count_ev(e0, a->room, "x1", "join") == 1, "join x1");
    redisContext *rc = redis_sync();
    CHECK(rc != NULL, "sync redis");
    if (!rc) { teardown_nodes(); g_ttl = TTL; return; }
    rcmd_int(rc, "pause", "CLIENT PAUSE 3000 WRITE");
    presence_remove(N[0].p, a->room, a->id);
    wait_ms(30);                                   /* the remove is sent, held by the pause */
    presence_add(N[0].p, a->room, a->id, "x1", "N-x1");
    wait_ms(30);                                   /* the re-add's upsert is held too */
    CHECK(rcmd_int(rc, "kill", "CLIENT KILL TYPE normal SKIPME yes") >= 1, "killed the node");
    rcmd_int(rc, "unpause", "CLIENT UNPAUSE");
    redisFree(rc);
    int zero = 0;
    CHECK(wait_until(node_ready_cond, &zero, 8000), "node back");
    sync_all();
    wait_ms(300);
    sync_all();
    CHECK(count_ev(e0, a->room, "x1", NULL) == 1, "x1: one join and nothing else (got %d)",
          count_ev(e0, a->room, "x1", NULL));
    lres r;
    CHECK(do_list(0, a->room, &r) == 0 && r.n == 1 && has_user(&r, "x1"), "x1 still listed");
    teardown_nodes();
    g_ttl = TTL;
}

/* Redis only: the shared index lists rooms of other runs (stale entries of a
 * dead node) and a room whose keys are not ours (another type). Sweeps must
 * keep working (the foreign room leaves the index), the stale user's leave
 * is announced once, and ops on the foreign room are skipped without
 * touching the rest of the batch. */
static void test_foreign_data(void)
{
    redisContext *rc = redis_sync();
    CHECK(rc != NULL, "sync redis");
    if (!rc) return;
    char bad[72], bad2[72], stale[72];
    room_name(bad, sizeof bad, "foreign");
    room_name(bad2, sizeof bad2, "foreign2");
    room_name(stale, sizeof stale, "otherrun");
    long long past = (long long)now_ms() - 60000;
    rcmd_int(rc, "set bad", "SET chat:{%s}:presence:conns not-a-zset", bad);
    rcmd_int(rc, "index bad", "ZADD chat:presence:rooms %lld %s", past - 10, bad);
    rcmd_int(rc, "set bad2", "SET chat:{%s}:presence:users not-a-hash", bad2);
    rcmd_int(rc, "stale entry", "ZADD chat:{%s}:presence:conns %lld deadnode|7|ghost", stale, past);
    rcmd_int(rc, "stale count", "HSET chat:{%s}:presence:users ghost 1", stale);
    rcmd_int(rc, "stale name", "HSET chat:{%s}:presence:names ghost Ghost", stale);
    rcmd_int(rc, "index stale", "ZADD chat:presence:rooms %lld %s", past, stale);
    setup_nodes(2);
    int e0 = nev;
    conn *a = cadd(0, "r10", "y1");
    cadd(1, "r10", "y2");
    conn *f = cadd(1, "foreign", "y3");   /* same batch as y2's add */
    conn *f2 = cadd(1, "foreign2", "y4");
    sync_all();
    CHECK(count_ev(e0, f2->room, "y4", NULL) == 0, "nothing announced for foreign2");
    CHECK(rcmd_int(rc, "zcard", "ZCARD chat:{%s}:presence:conns", bad2) == 0,
          "entry of a room with a foreign users key taken back");
    CHECK(count_ev(e0, a->room, "y2", "join") == 1, "y2 joined despite a foreign room in its batch");
    CHECK(count_ev(e0, f->room, "y3", NULL) == 0, "nothing announced for the foreign room");
    node_crash(0);
    uint64_t t0 = mono_ms();
    while (count_ev(e0, a->room, "y1", "leave") == 0 && mono_ms() - t0 < TTL + SWEEP + 3000)
        wait_ms(5);
    CHECK(count_ev(e0, a->room, "y1", "leave") == 1, "crash leave with foreign data in the index");
    CHECK(count_ev(0, stale, "ghost", "leave") == 1, "stale user of another run left once (%d)",
          count_ev(0, stale, "ghost", "leave"));
    redisReply *r = redisCommand(rc, "ZSCORE chat:presence:rooms %s", bad);
    CHECK(r && r->type == REDIS_REPLY_NIL, "foreign room dropped from the index");
    freeReplyObject(r);
    r = redisCommand(rc, "GET chat:{%s}:presence:conns", bad);
    CHECK(r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, "not-a-zset"),
          "foreign key left alone");
    freeReplyObject(r);
    rcmd_int(rc, "cleanup", "DEL chat:{%s}:presence:conns", bad);
    rcmd_int(rc, "cleanup", "DEL chat:{%s}:presence:users", bad2);
    redisFree(rc);
    teardown_nodes();
}

/* Redis Cluster (3 masters started here): the store's per-room apply and
 * per-node sweeps over per-slot indexes keep every property that does not
 * need to stop or inspect one server (rooms spread over the shards) */
static void run_cluster(void)
{
    int first = rp_cluster(0, 2000);
    if (first < 0) {
        fprintf(stderr, "no Redis Cluster (redis-cli --cluster): cluster tests skipped\n");
        return;
    }
    snprintf(g_url_buf, sizeof g_url_buf, "redis+cluster://127.0.0.1:%d", rp_all[first].port);
    g_url = g_url_buf;
    fprintf(stderr, "mode %s\n", g_url);
    check_context = "cluster";
    unsigned seed = (unsigned)(now_ms() % 1000000);
    test_two_nodes_one_user();
    test_crash();
    test_expire_and_heal();
    test_list_churn();
    test_list_on_free();
    test_rejoin_same_tick();
    test_refreshes_share_a_batch();
    test_churn(seed, 100);
    /* the index of a room is its slot's, on that slot */
    setup_nodes(1);
    for (int i = 0; i < 6; i++) {
        char rn[16];
        snprintf(rn, sizeof rn, "idx%d", i);
        cadd(0, rn, "ix");
    }
    sync_all();
    int rooms = 0, right = 0;
    for (int i = first; i < first + 3; i++) {
        redisReply *r = rp_cmd(i, "KEYS chat:{~*}:presence:rooms");
        for (size_t k = 0; r && r->type == REDIS_REPLY_ARRAY && k < r->elements; k++) {
            const char *key = r->element[k]->str;
            const char *tag = key + 6;
            size_t tl = strcspn(tag, "}");
            char t[16];
            snprintf(t, sizeof t, "%.*s", (int)tl, tag);
            int slot = redis_key_slot(key, strlen(key));
            rooms++;
            right += redis_slot_tag(slot) && strcmp(redis_slot_tag(slot), t) == 0;
        }
        if (r) freeReplyObject(r);
    }
    CHECK(rooms > 0 && right == rooms, "%d per-slot indexes, %d named by their slot's tag", rooms,
          right);
    teardown_nodes();
    rp_cleanup();
    g_url = NULL;
}

/* chat_presence_users: (room, user) pairs with a live entry on the node,
 * counted from the entries (a user with two connections in a room is one
 * pair; the same user in two rooms is two); the gauge sums the nodes. */
static double users_gauge(void)
{
    return series("chat_presence_users");
}

static void test_user_count(void)
{
    setup_nodes(2);
    double g0 = users_gauge();
    CHECK(presence_user_count(N[0].p) == 0);
    conn *a = cadd(0, "uc1", "alice");
    conn *a2 = cadd(0, "uc1", "alice");
    conn *b = cadd(0, "uc1", "bob");
    conn *a3 = cadd(0, "uc2", "alice");
    conn *o = cadd(1, "uc1", "alice");
    CHECK(presence_user_count(N[0].p) == 3, "node 0: %zu pairs", presence_user_count(N[0].p));
    CHECK(presence_user_count(N[1].p) == 1);
    CHECK(users_gauge() == g0 + 4, "gauge %g, was %g", users_gauge(), g0);
    cremove(a);
    CHECK(presence_user_count(N[0].p) == 3, "alice keeps uc1 through her other connection");
    cremove(a2);
    CHECK(presence_user_count(N[0].p) == 2);
    cremove(b);
    cremove(a3);
    CHECK(presence_user_count(N[0].p) == 0);
    cremove(o);
    CHECK(users_gauge() == g0, "gauge back to %g: %g", g0, users_gauge());
    sync_all();
    teardown_nodes();
}

/* The pair count is kept with the entries (p->pairs): every way an entry
 * comes and goes moves it, and a node torn down with live pairs leaves
 * the gauge (and nothing leaks, under ASan). */
static void test_user_count_paths(void)
{
    setup_nodes(1);
    presence *p = N[0].p;
    double g0 = users_gauge();
    /* the same connection and room re-added for another user: a new pair */
    conn *a = cadd(0, "ucp", "alice");
    presence_add(p, a->room, a->id, "carol", NULL);
    CHECK(presence_user_count(p) == 1, "alice replaced by carol: one pair (%zu)", presence_user_count(p));
    presence_add(p, a->room, a->id, "carol", NULL);     /* a touch */
    CHECK(presence_user_count(p) == 1, "a re-add of the same user is a touch");
    /* left and re-joined within one batch (the queued remove taken back) */
    sync_all();
    presence_remove(p, a->room, a->id);
    CHECK(presence_user_count(p) == 0, "carol left");
    presence_add(p, a->room, a->id, "carol", NULL);
    CHECK(presence_user_count(p) == 1, "carol back before the remove went out");
    sync_all();
    CHECK(presence_user_count(p) == 1, "after the flush");
    presence_remove(p, a->room, a->id);
    a->live = 0;
    /* 19,000 entries: user i % 5000 in room (i / 5000) % 2, i.e. 10,000
     * pairs, 9,000 of them with two entries (i and i + 10,000) */
    char r0[72], r1[72];
    room_name(r0, sizeof r0, "big0");
    room_name(r1, sizeof r1, "big1");
    uint64_t base = g_conn_id;
    g_conn_id += 19000;
    for (int i = 0; i < 19000; i++) {
        char u[16];
        snprintf(u, sizeof u, "u%d", i % 5000);
        presence_add(p, (i / 5000) % 2 ? r1 : r0, base + (uint64_t)i, u, NULL);
    }
    CHECK(presence_user_count(p) == 10000, "19,000 entries, 10,000 pairs (%zu)", presence_user_count(p));
    CHECK(users_gauge() == g0 + 10000, "gauge %g", users_gauge());
    for (int i = 0; i < 10000; i++) presence_remove(p, (i / 5000) % 2 ? r1 : r0, base + (uint64_t)i);
    CHECK(presence_user_count(p) == 9000, "entries 10,000..18,999 left: 9,000 pairs (%zu)",
          presence_user_count(p));
    sync_all();
    /* torn down with 9,000 live pairs: the gauge drops them */
    teardown_nodes();
    CHECK(users_gauge() == g0, "gauge after the teardown %g, was %g", users_gauge(), g0);
}

/* One node, one user, two connections: the first one's entry holds the
 * user's count and name in the memory store (in the entry's slot); when it
 * goes the count and name move (the list and the final leave still carry
 * the name: under ASan a name left pointing into the freed entry fails). */
static void test_first_conn_leaves(void)
{
    setup_nodes(1);
    int e0 = nev;
    conn *a = cadd(0, "fl", "u9");
    conn *b = cadd(0, "fl", "u9");
    sync_all();
    CHECK(count_ev(e0, a->room, "u9", "join") == 1, "one join");
    cremove(a);
    sync_all();
    lres r;
    CHECK(do_list(0, a->room, &r) == 0 && r.n == 1 && has_user(&r, "u9") == 1 && !strcmp(r.names[0], "N-u9"),
          "still listed with the name after the first connection left");
    CHECK(count_ev(e0, a->room, "u9", "leave") == 0, "no leave while the second stays");
    cremove(b);
    sync_all();
    CHECK(count_ev(e0, a->room, "u9", "leave") == 1 && !strcmp(EV[nev - 1].name, "N-u9"), "one leave, with the name");
    teardown_nodes();
}

static void run_all(void)
{
    fprintf(stderr, "mode %s\n", g_url ? g_url : "memory");
    check_context = g_url ? "redis" : "mem";   /* printed with every failure */
    unsigned seed = getenv("PRESENCE_SEED") ? (unsigned)atoi(getenv("PRESENCE_SEED"))
                                            : (unsigned)(now_ms() % 1000000);
    test_two_nodes_one_user();
    test_user_count();
    test_user_count_paths();
    test_first_conn_leaves();
    test_crash();
    test_expire_and_heal();
    test_list_churn();
    test_list_on_free();
    test_rejoin_same_tick();
    test_refreshes_share_a_batch();
    test_churn(seed, getenv("PRESENCE_STEPS") ? atoi(getenv("PRESENCE_STEPS")) : 200);
    if (g_url) {
        test_rejoin_remove_in_flight();
        test_foreign_data();
        test_redis_reconnect();
    }
}

int main(void)
{
    log_set_level(getenv("PRESENCE_LOG") ? LOG_DEBUG : LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    L = uv_default_loop();
    unsigned rnd = (unsigned)now_ms() ^ ((unsigned)getpid() << 16);
    int ufd = open("/dev/urandom", O_RDONLY);
    if (ufd >= 0) {
        if (read(ufd, &rnd, sizeof rnd) != (ssize_t)sizeof rnd) rnd ^= (unsigned)mono_ms();
        close(ufd);
    }
    snprintf(g_pfx, sizeof g_pfx, "t%d-%08x-", (int)getpid(), rnd);
    uv_timer_init(L, &hb_timer);
    uv_timer_start(&hb_timer, hb_cb, 40, 40);

    g_url = NULL;
    run_all();

    int redis_ran = 0;
    if (getenv("CHATD_TEST_REDIS_URL"))
        fprintf(stderr, "CHATD_TEST_REDIS_URL ignored: this test starts its own redis-server\n");
    g_redis_pid = start_redis();
    if (g_redis_pid > 0) {
        snprintf(g_url_buf, sizeof g_url_buf, "redis://127.0.0.1:%d", g_redis_port);
        g_url = g_url_buf;
        run_all();
        redis_ran = 1;
        stop_redis();
    } else {
        fprintf(stderr, "redis-server unavailable: Redis tests skipped\n");
    }
    if (redis_ran && rp_have_server()) run_cluster();
    uv_close((uv_handle_t *)&hb_timer, NULL);
    uv_run(L, UV_RUN_DEFAULT);
    uv_loop_close(L);
    free(EV);
    metrics_free_all();
    check_context = NULL;
    if (!redis_ran) fprintf(stderr, "memory backend only\n");
    return check_summary("test_presence");
}
