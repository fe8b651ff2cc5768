/* test_bus: the bus against a real redis-server (started here with
 * redis_procs.h, or CHATD_TEST_REDIS_URL) and in in-process mode.
 * Proves: order across nodes, idempotent resend, recent buffer trim, replay,
 * gap fill and gap loss, recovery after lost subscriptions and after a
 * Redis restart, refcounted subscriptions (PUBSUB CHANNELS), NOSCRIPT
 * recovery, emit, cancellation on bus_free, the backfill of unstored
 * messages (tracking, marks, grace, lease, lost entries, the sweep lock,
 * round limits and their follow-up rounds, failed checks and settles),
 * and that no callback runs inside
 * a bus_* call. Randomised parts print their seed (CHATD_TEST_SEED reuses
 * one). Exit 0 pass, 1 fail, 77 skip (no redis-server: in-process only). */
#define _GNU_SOURCE
#include "bus.h"
#include "bus_int.h"
#include "check.h"
#include "uvwait.h"
#include "redis_url.h"
#include "redis_slot.h"
#include "redis_procs.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static uv_loop_t *loop;
static int in_call; /* set around bus_* calls: callbacks must not see it */
static unsigned seed;
static char nonce[16];


#define WAIT(cond, ms) WAIT_ON(loop, cond, ms)

/* run the loop for ms milliseconds */
static void spin(int ms) { run_on(loop, ms); }

/* ---------------- redis-server management ---------------- */

static int rsrv = -1;   /* our redis-server: rp_all[rsrv] (redis_procs.h) */
static char rurl[128];
static int own_redis;
static redisContext *sc; /* synchronous client for assertions */
static redis_url surl;

static void sc_close(void)
{
    if (sc) redisFree(sc);
    sc = NULL;
}

static int sc_connect(int timeout_ms)
{
    uint64_t until = mono_ms() + (uint64_t)timeout_ms;
    while (mono_ms() < until) {
        sc_close();
        sc = redisConnect(surl.seeds[0].host, surl.seeds[0].port);
        if (sc && !sc->err) {
            redisReply *r;
            if (surl.pass[0]) {
                r = surl.user[0] ? redisCommand(sc, "AUTH %s %s", surl.user, surl.pass)
                                 : redisCommand(sc, "AUTH %s", surl.pass);
                if (r) freeReplyObject(r);
            }
            if (surl.db) {
                r = redisCommand(sc, "SELECT %d", surl.db);
                if (r) freeReplyObject(r);
            }
            r = redisCommand(sc, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            if (r) freeReplyObject(r);
            if (ok) return 0;
        }
        usleep(20000);
    }
    sc_close();
    return -1;
}

/* Starts our redis-server again, in its directory (AOF fsync'd always:
 * every acknowledged write survives a SIGKILL). */
static int redis_start(void)
{
    if (rp_restart(rsrv) != 0 || sc_connect(5000) != 0) {
        fprintf(stderr, "redis-server did not start again\n");
        return -1;
    }
    return 0;
}

static void redis_cleanup(void)
{
    sc_close();
    if (own_redis) rp_cleanup();
}

/* Always our own redis-server when one is installed: the tests kill
 * client connections, stop and restart the server, and would disturb (and
 * be disturbed by) anything else sharing a Redis. CHATD_TEST_REDIS_URL is
 * used only when redis-server is not installed (restart tests skipped). */
static int redis_setup(void)
{
    const char *env = getenv("CHATD_TEST_REDIS_URL");
    char err[128];
    int have_server = system("command -v redis-server >/dev/null 2>&1") == 0;
    if (env && *env && !have_server) {
        snprintf(rurl, sizeof rurl, "%s", env);
        if (redis_url_parse(rurl, &surl, err, sizeof err) != 0) {
            fprintf(stderr, "%s\n", err);
            return -1;
        }
        own_redis = 0;
        return sc_connect(2000);
    }
    if (!have_server) return -1;
    own_redis = 1;
    rsrv = rp_start("--appendonly", "yes", "--appendfsync", "always", (char *)NULL);
    if (rsrv < 0) return -1;
    snprintf(rurl, sizeof rurl, "redis://127.0.0.1:%d", rp_all[rsrv].port);
    if (redis_url_parse(rurl, &surl, err, sizeof err) != 0) return -1;
    return sc_connect(5000);
}

static redisReply *rc(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = sc ? redisvCommand(sc, fmt, ap) : NULL;
    va_end(ap);
    return r;
}

static long long rc_int(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = sc ? redisvCommand(sc, fmt, ap) : NULL;
    va_end(ap);
    long long v = -1;
    if (r && r->type == REDIS_REPLY_INTEGER) v = r->integer;
    else if (r && r->type == REDIS_REPLY_STRING) v = strtoll(r->str, NULL, 10);
    else if (r && r->type == REDIS_REPLY_ARRAY) v = (long long)r->elements;
    else if (r && r->type == REDIS_REPLY_NIL) v = 0;
    if (r) freeReplyObject(r);
    return v;
}

/* ---------------- a test node ---------------- */

#define MAXMSG 8192

typedef struct node {
    const char *name;
    bus *b;
    char room[80];           /* messages of other rooms are counted apart */
    uint64_t seqs[MAXMSG];
    char tails[MAXMSG][48];
    size_t n, other;
    int dup_or_disorder;
    uint64_t gap_from[64], gap_to[64];
    int ngaps;
    int emits;
    char emit_kind[16], emit_data[64];
    int ready_log[64];
    int nready;
    int free_on_message;     /* bus_free from inside on_message */
    /* on_unstored calls: room, seq, tail */
    char uns_room[256][80];
    uint64_t uns_seq[256];
    char uns_tail[256][48];
    int nuns;
    /* the seed provider (nodes made with node_new_seeded) */
    uint64_t seed_max;       /* the "stored" head it answers */
    char seed_epoch[32];
    int seed_fail;           /* answer -1 */
    int seed_hold;           /* keep requests, answered by seed_answer() */
    int nseeds;              /* on_seed calls */
    bus_seed *held_seeds[64];
    int nheld;
    /* the control channel */
    int nctl;
    char ctl_last[64];
    /* the history check (nodes made with node_new_checking): the "stored"
     * (room, seq) pairs it answers with, its calls and the pairs asked */
    char stored_room[32][80];
    uint64_t stored_seq[32];
    int nstored;
    int check_fail;          /* answer -1 */
    int check_hold;          /* keep the request: check_answer_held() answers */
    int check_all_stored;    /* answer "stored" for every pair */
    uint64_t check_missing;  /* ... but this seq (0: none) */
    size_t check_sizes[64];  /* pairs of each check */
    int ncheck_sizes;
    bus_check *held_check;
    size_t held_n;
    int nchecks;
    size_t asked;            /* pairs asked in total */
    char asked_room[256][80];
    uint64_t asked_seq[256];
} node;

static void on_message(void *ud, const char *room, uint64_t seq, const char *tail, size_t len)
{
    node *nd = ud;
    CHECK(!in_call, "%s: on_message inside a bus_* call", nd->name);
    if (strcmp(room, nd->room) != 0) { nd->other++; return; }
    if (nd->free_on_message) {
        nd->free_on_message = 0;
        nd->n++;
        bus_free(nd->b);
        nd->b = NULL;
        return;
    }
    if (nd->n && seq != nd->seqs[nd->n - 1] + 1) {
        /* allowed only right after a reported gap */
        if (!(nd->ngaps && nd->gap_to[nd->ngaps - 1] + 1 == seq)) nd->dup_or_disorder++;
    }
    if (nd->n < MAXMSG) {
        nd->seqs[nd->n] = seq;
        snprintf(nd->tails[nd->n], sizeof nd->tails[0], "%.*s", (int)(len < 47 ? len : 47), tail);
        nd->n++;
    }
}

static void on_gap(void *ud, const char *room, uint64_t from, uint64_t to)
{
    node *nd = ud;
    CHECK(!in_call, "%s: on_gap inside a bus_* call", nd->name);
    if (nd->ngaps < 64) {
        nd->gap_from[nd->ngaps] = from;
        nd->gap_to[nd->ngaps] = to;
        nd->ngaps++;
    }
    (void)room;
}

static void on_emit(void *ud, const char *room, const char *kind, const char *data, size_t len)
{
    node *nd = ud;
    CHECK(!in_call, "%s: on_emit inside a bus_* call", nd->name);
    if (strcmp(room, nd->room) != 0) return;
    nd->emits++;
    snprintf(nd->emit_kind, sizeof nd->emit_kind, "%s", kind);
    snprintf(nd->emit_data, sizeof nd->emit_data, "%.*s", (int)len, data);
}

static void on_ready(void *ud, int ready)
{
    node *nd = ud;
    CHECK(!in_call, "%s: on_ready inside a bus_* call", nd->name);
    if (nd->nready < 64) nd->ready_log[nd->nready++] = ready;
}

static void on_unstored(void *ud, const char *room, uint64_t seq, const char *tail, size_t len)
{
    node *nd = ud;
    CHECK(!in_call, "%s: on_unstored inside a bus_* call", nd->name);
    if (nd->nuns >= 256) return;
    snprintf(nd->uns_room[nd->nuns], sizeof nd->uns_room[0], "%s", room);
    nd->uns_seq[nd->nuns] = seq;
    snprintf(nd->uns_tail[nd->nuns], sizeof nd->uns_tail[0], "%.*s", (int)(len < 47 ? len : 47), tail);
    nd->nuns++;
}

static void on_seed(void *ud, const char *room, bus_seed *req)
{
    node *nd = ud;
    (void)room;
    nd->nseeds++;
    if (nd->seed_hold && nd->nheld < 64) { nd->held_seeds[nd->nheld++] = req; return; }
    /* answered at once, inside on_seed: the bus must not call back from here */
    in_call = 1;
    bus_seed_done(req, nd->seed_fail ? -1 : 0, nd->seed_max, nd->seed_epoch);
    in_call = 0;
}

/* answers every held seed request (bus may already be freed) */
static void seed_answer(node *nd)
{
    for (int i = 0; i < nd->nheld; i++)
        bus_seed_done(nd->held_seeds[i], nd->seed_fail ? -1 : 0, nd->seed_max, nd->seed_epoch);
    nd->nheld = 0;
}

static void on_control(void *ud, const char *data, size_t len)
{
    node *nd = ud;
    CHECK(!in_call, "%s: on_control inside a bus_* call", nd->name);
    nd->nctl++;
    snprintf(nd->ctl_last, sizeof nd->ctl_last, "%.*s", (int)len, data);
}

static void on_check(void *ud, bus_check *req, size_t n, const char *const *rooms,
                     const uint64_t *seqs)
{
    node *nd = ud;
    nd->nchecks++;
    if (nd->ncheck_sizes < 64) nd->check_sizes[nd->ncheck_sizes++] = n;
    unsigned char st[512] = {0};
    CHECK(n <= sizeof st, "%zu pairs", n);
    for (size_t i = 0; i < n && i < sizeof st; i++) {
        if (nd->asked < 256) {
            snprintf(nd->asked_room[nd->asked], sizeof nd->asked_room[0], "%s", rooms[i]);
            nd->asked_seq[nd->asked] = seqs[i];
        }
        nd->asked++;
        if (nd->check_all_stored) st[i] = seqs[i] != nd->check_missing;
        for (int k = 0; k < nd->nstored; k++)
            if (nd->stored_seq[k] == seqs[i] && strcmp(nd->stored_room[k], rooms[i]) == 0) st[i] = 1;
    }
    if (nd->check_hold && !nd->held_check) { /* a slow check: answered later */
        nd->held_check = req;
        nd->held_n = n;
        return;
    }
    /* answered at once, inside on_check: the bus must not call back from here */
    in_call = 1;
    bus_check_done(req, nd->check_fail ? -1 : 0, nd->check_fail ? NULL : st);
    in_call = 0;
}

static const bus_handlers handlers = {on_message, on_gap, on_emit, on_ready, on_unstored, NULL,
                                      on_control, NULL};
static const bus_handlers handlers_checking = {on_message, on_gap, on_emit, on_ready, on_unstored,
                                               NULL, on_control, on_check};
static const bus_handlers handlers_seeded = {on_message, on_gap, on_emit, on_ready, on_unstored,
                                             on_seed, on_control, on_check};

/* Every node: nd (calloc'd, its test fields set) gets its name and a bus
 * with those options and handlers, made as if inside a bus_* call. */
static node *node_start(node *nd, const char *name, bus_opts o, const bus_handlers *h)
{
    nd->name = name;
    char err[128] = "";
    in_call = 1;
    nd->b = bus_new(loop, &o, h, nd, err, sizeof err);
    in_call = 0;
    CHECK(nd->b, "bus_new: %s", err);
    return nd;
}

/* tracking unstored messages needs a history check: refused without one */
static void test_track_needs_check(void)
{
    bus_opts o = {rurl, 1000, 60, 1, 600, 0, 0};
    char err[128] = "";
    bus *b = bus_new(loop, &o, &handlers, NULL, err, sizeof err);
    CHECK(!b && strstr(err, "on_check"), "bus_new refused: %s", err);
    if (b) bus_free(b);
}

/* a node that asks "history" (its stored list) in its sweeper (on_check) */
static node *node_new_checking_opts(const char *name, const char *url, size_t recent_max,
                                    uint32_t grace_ms, uint32_t rooms, uint32_t per_room)
{
    return node_start(calloc(1, sizeof(node)), name,
                      (bus_opts){url, recent_max, 60, 1, grace_ms, rooms, per_room},
                      &handlers_checking);
}

static void stored_add(node *nd, const char *room, uint64_t seq)
{
    snprintf(nd->stored_room[nd->nstored], sizeof nd->stored_room[0], "%s", room);
    nd->stored_seq[nd->nstored++] = seq;
}

/* answers the held check: nothing of it stored (everything with
 * check_all_stored) */
static void check_answer_held(node *nd)
{
    unsigned char st[512] = {0};
    if (nd->check_all_stored) memset(st, 1, sizeof st);
    bus_check *req = nd->held_check;
    nd->held_check = NULL;
    nd->check_hold = 0;
    if (req) bus_check_done(req, 0, st);
}

static int asked_count(const node *nd, const char *room, uint64_t seq)
{
    int c = 0;
    for (size_t i = 0; i < nd->asked && i < 256; i++)
        if (nd->asked_seq[i] == seq && strcmp(nd->asked_room[i], room) == 0) c++;
    return c;
}

static node *node_new_checking_recent(const char *name, const char *url, size_t recent_max,
                                      uint32_t grace_ms)
{
    return node_new_checking_opts(name, url, recent_max, grace_ms, 0, 0);
}

static node *node_new_checking(const char *name, const char *url, uint32_t grace_ms)
{
    return node_new_checking_recent(name, url, 1000, grace_ms);
}

/* a node with a seed provider (as with a database), tracking unstored */
static node *node_new_seeded(const char *name, const char *url, uint64_t seed_max,
                             const char *epoch)
{
    node *nd = calloc(1, sizeof *nd);
    nd->seed_max = seed_max;
    snprintf(nd->seed_epoch, sizeof nd->seed_epoch, "%s", epoch);
    return node_start(nd, name, (bus_opts){url, 1000, 60, url != NULL, 60000, 0, 0},
                      &handlers_seeded);
}

static node *node_new(const char *name, const char *url, size_t recent_max, uint32_t ttl)
{
    return node_start(calloc(1, sizeof(node)), name, (bus_opts){url, recent_max, ttl, 0, 0, 0, 0},
                      &handlers);
}

static void node_free(node *nd)
{
    if (!nd) return;
    if (nd->b) bus_free(nd->b); /* cancels: callbacks with -1 run inside, by contract */
    free(nd);
}

static void settle(void)
{
    /* every bus handle closed: nothing else is active on the loop */
    uv_timer_stop(&uvwait_ticker);
    uv_run(loop, UV_RUN_DEFAULT);
}

static void sub(node *nd, const char *room)
{
    in_call = 1;
    bus_subscribe(nd->b, room);
    in_call = 0;
}

static void unsub(node *nd, const char *room)
{
    in_call = 1;
    bus_unsubscribe(nd->b, room);
    in_call = 0;
}

typedef struct pubres { int done, status, dup; uint64_t seq; } pubres;

static void pub_cb(void *ud, int status, uint64_t seq, int dup)
{
    pubres *p = ud;
    CHECK(!in_call, "publish cb inside a bus_* call");
    CHECK(!p->done, "publish cb called twice");
    p->done++;
    p->status = status;
    p->seq = seq;
    p->dup = dup;
}

static int pub(node *nd, const char *room, const char *id, const char *body, pubres *p)
{
    char tail[128];
    int n = snprintf(tail, sizeof tail, "\"id\":\"%s\",\"body\":\"%s\"}", id ? id : "", body);
    memset(p, 0, sizeof *p);
    in_call = 1;
    int r = bus_publish(nd->b, room, id, tail, (size_t)n, pub_cb, p);
    in_call = 0;
    return r;
}

typedef struct repres {
    int done, status;
    size_t n;
    uint64_t head, first, last;
    int contiguous;
    char epoch[80];
} repres;

static void rep_cb(void *ud, int status, const bus_entry *e, size_t n, uint64_t head,
                   const char *epoch)
{
    repres *r = ud;
    CHECK(!in_call, "replay cb inside a bus_* call");
    CHECK(!r->done, "replay cb called twice");
    r->done++;
    r->status = status;
    r->n = n;
    r->head = head;
    CHECK(status < 0 ? epoch == NULL : epoch != NULL, "epoch given with status %d", status);
    snprintf(r->epoch, sizeof r->epoch, "%s", epoch ? epoch : "");
    r->contiguous = 1;
    for (size_t i = 0; i < n; i++) {
        if (i && e[i].seq != e[i - 1].seq + 1) r->contiguous = 0;
        CHECK(e[i].len > 0 && e[i].tail[0] == '"', "replay entry tail");
    }
    r->first = n ? e[0].seq : 0;
    r->last = n ? e[n - 1].seq : 0;
}

static int replay(node *nd, const char *room, uint64_t since, size_t max, repres *r)
{
    memset(r, 0, sizeof *r);
    in_call = 1;
    int rc_ = bus_replay(nd->b, room, since, max, rep_cb, r);
    in_call = 0;
    return rc_;
}

/* waits until room is subscribed and synced on nd (replay answers then) */
static void synced(node *nd, const char *room)
{
    repres r;
    if (replay(nd, room, UINT64_MAX, 0, &r) != 0) { CHECK(0, "replay barrier refused"); return; }
    WAIT(r.done, 5000);
    CHECK(r.done && r.status == 0, "replay barrier status %d", r.status);
}

static void mkroom(char *out, size_t n, const char *what)
{
    snprintf(out, n, "%s-%s", what, nonce);
}

static int contiguous(const node *nd, uint64_t from, uint64_t to)
{
    if (nd->n != to - from + 1) return 0;
    for (size_t i = 0; i < nd->n; i++)
        if (nd->seqs[i] != from + i) return 0;
    return 1;
}

static uint64_t counter(const char *name)
{
    return metrics_counter(name, NULL, NULL)->v;
}

static uint64_t counter_l(const char *name, const char *labels)
{
    return metrics_counter(name, NULL, labels)->v;
}

/* ---------------- tests: helpers ---------------- */

/* the URL parser itself is tested in test_redis.c; the bus refuses a bad one */
static void test_url(void)
{
    char err[128];
    bus_opts o = {"nope://", 0, 0, 0, 0, 0, 0};
    CHECK(bus_new(loop, &o, &handlers, NULL, err, sizeof err) == NULL && strstr(err, "redis url"),
          "bad url refused: %s", err);
}

/* ---------------- tests: in-process mode ---------------- */

typedef struct ctlres { int calls; long receivers; int seen_before; node *nd; } ctlres;

static void ctl_cb(void *ud, long receivers)
{
    ctlres *c = ud;
    CHECK(!in_call, "control cb inside a bus_* call");
    c->calls++;
    c->receivers = receivers;
    c->seen_before = c->nd ? c->nd->nctl : 0;
}

/* the control channel of the one node: every message reaches on_control
 * once, in order, after the call; then the sender learns 1 receiver; a
 * bus freed with one queued answers -1 */
static void test_local_control(void)
{
    node *a = node_new("ctl", NULL, 5, 0);
    ctlres r[3];
    memset(r, 0, sizeof r);
    const char *msgs[3] = {"{\"op\":\"a\"}", "{\"op\":\"b\"}", "{\"op\":\"c\"}"};
    for (int i = 0; i < 3; i++) {
        r[i].nd = a;
        in_call = 1;
        CHECK(bus_control(a->b, msgs[i], strlen(msgs[i]), ctl_cb, &r[i]) == 0, "control %d", i);
        in_call = 0;
    }
    CHECK(a->nctl == 0 && r[0].calls == 0, "nothing inside bus_control");
    WAIT(r[2].calls == 1, 2000);
    CHECK(a->nctl == 3 && strcmp(a->ctl_last, msgs[2]) == 0, "3 control messages, in order");
    for (int i = 0; i < 3; i++)
        CHECK(r[i].calls == 1 && r[i].receivers == 1 && r[i].seen_before >= i + 1,
              "control %d: one receiver, after its delivery", i);
    CHECK(bus_control(a->b, NULL, 3, NULL, NULL) == -1, "data NULL with a length refused");
    ctlres last = {0};
    in_call = 1;
    CHECK(bus_control(a->b, "{}", 2, ctl_cb, &last) == 0, "queued");
    in_call = 0;
    bus_free(a->b); /* answers inside, by contract */
    a->b = NULL;
    CHECK(last.calls == 1 && last.receivers == -1, "freed: answered -1");
    node_free(a);
    settle();
}

static void test_local_basic(void)
{
    node *a = node_new("local", NULL, 5, 0);
    char room[80];
    mkroom(room, sizeof room, "lb");
    snprintf(a->room, sizeof a->room, "%s", room);
    CHECK(bus_ready(a->b) == 1 && bus_is_redis(a->b) == 0, "local ready");
    sub(a, room);
    pubres p[12];
    for (int i = 0; i < 12; i++) CHECK(pub(a, room, NULL, "x", &p[i]) == 0, "publish %d", i);
    CHECK(!p[0].done && a->n == 0, "nothing delivered inside bus_publish");
    WAIT(p[11].done && a->n == 12, 2000);
    for (int i = 0; i < 12; i++)
        CHECK(p[i].done && p[i].status == 0 && p[i].seq == (uint64_t)i + 1, "seq %d", i);
    CHECK(contiguous(a, 1, 12), "delivered 1..12 (n=%zu)", a->n);
    /* idempotency */
    pubres d1, d2;
    pub(a, room, "cid-1", "once", &d1);
    pub(a, room, "cid-1", "once", &d2);
    WAIT(d1.done && d2.done, 2000);
    CHECK(d1.status == 0 && !d1.dup && d1.seq == 13, "first id publish");
    CHECK(d2.status == 0 && d2.dup && d2.seq == 13, "resend gives the same seq");
    spin(20);
    CHECK(a->n == 13, "one delivery for the id (n=%zu)", a->n);
    /* replay with recent_max 5: buffer holds 9..13 */
    repres r;
    replay(a, room, 8, 100, &r);
    CHECK(!r.done, "replay deferred");
    WAIT(r.done, 2000);
    CHECK(r.status == 0 && r.n == 5 && r.first == 9 && r.last == 13 && r.contiguous && r.head == 13,
          "replay complete st=%d n=%zu", r.status, r.n);
    replay(a, room, 2, 100, &r);
    WAIT(r.done, 2000);
    CHECK(r.status == 1 && r.n == 0 && r.head == 13, "replay beyond the buffer -> 1");
    replay(a, room, 10, 2, &r);
    WAIT(r.done, 2000);
    CHECK(r.status == 1, "replay over max -> 1");
    replay(a, room, UINT64_MAX, 0, &r);
    WAIT(r.done, 2000);
    CHECK(r.status == 0 && r.n == 0 && r.head == 13, "head only");
    replay(a, room, 13, 10, &r);
    WAIT(r.done, 2000);
    CHECK(r.status == 0 && r.n == 0 && r.head == 13, "nothing new");
    /* emit */
    in_call = 1;
    CHECK(bus_emit(a->b, room, "typing", "{\"t\":1}", 7) == 0, "emit");
    CHECK(bus_emit(a->b, room, "bogus", "x", 1) != 0, "emit kind checked");
    in_call = 0;
    WAIT(a->emits == 1, 2000);
    CHECK(a->emits == 1 && strcmp(a->emit_kind, "typing") == 0 &&
              strcmp(a->emit_data, "{\"t\":1}") == 0, "emit delivered");
    /* refcount */
    sub(a, room);
    unsub(a, room);
    pub(a, room, NULL, "still", &p[0]);
    WAIT(p[0].done && a->n == 14, 2000);
    CHECK(a->n == 14, "still subscribed after one unsubscribe");
    unsub(a, room);
    pub(a, room, NULL, "gone", &p[0]);
    WAIT(p[0].done, 2000);
    spin(10);
    CHECK(a->n == 14 && p[0].seq == 15, "no delivery after the last unsubscribe");
    CHECK(a->dup_or_disorder == 0 && a->ngaps == 0, "no disorder");
    /* resubscribe: continues from the head */
    sub(a, room);
    pub(a, room, NULL, "back", &p[0]);
    WAIT(a->n == 15, 2000);
    CHECK(a->n == 15 && a->seqs[14] == 16, "delivery after resubscribe");
    node_free(a);
    settle();
}

static void test_local_free_and_ttl(void)
{
    node *a = node_new("local2", NULL, 100, 1);
    char room[80];
    mkroom(room, sizeof room, "lf");
    pubres p1, p2, p3;
    pub(a, room, "id-x", "a", &p1);
    WAIT(p1.done, 2000);
    pub(a, room, "id-x", "a", &p2);
    WAIT(p2.done, 2000);
    CHECK(p2.dup && p2.seq == p1.seq, "dup within ttl");
    spin(1100);
    pub(a, room, "id-x", "a", &p3);
    WAIT(p3.done, 2000);
    CHECK(p3.status == 0 && !p3.dup && p3.seq == p1.seq + 1, "id expired after ttl");
    /* pending callbacks get -1 on bus_free */
    pubres q[3];
    repres r;
    for (int i = 0; i < 3; i++) pub(a, room, NULL, "q", &q[i]);
    replay(a, room, 0, 10, &r);
    node_free(a);
    for (int i = 0; i < 3; i++) CHECK(q[i].done == 1 && q[i].status == -1, "cancelled publish");
    CHECK(r.done == 1 && r.status == -1, "cancelled replay");
    settle();
}

/* ---------------- tests: Redis mode ---------------- */

static void wait_ready(node *nd)
{
    WAIT(bus_ready(nd->b), 5000);
    CHECK(bus_ready(nd->b), "%s ready", nd->name);
}

/* nd, once ready */
static node *ready(node *nd)
{
    wait_ready(nd);
    return nd;
}

static void test_two_nodes(void)
{
    char room[80];
    mkroom(room, sizeof room, "two");
    node *a = node_new("A", rurl, 1000, 60), *b = node_new("B", rurl, 1000, 60);
    CHECK(bus_is_redis(a->b) && !bus_ready(a->b), "redis mode, not ready before connect");
    snprintf(a->room, sizeof a->room, "%s", room);
    snprintf(b->room, sizeof b->room, "%s", room);
    wait_ready(a);
    wait_ready(b);
    CHECK(a->nready == 1 && a->ready_log[0] == 1, "on_ready(1) once");
    sub(a, room);
    sub(b, room);
    synced(a, room);
    synced(b, room);
    pubres p[100];
    for (int i = 0; i < 100; i++) CHECK(pub(i % 2 ? a : b, room, NULL, "m", &p[i]) == 0, "pub");
    WAIT(a->n == 100 && b->n == 100, 5000);
    CHECK(contiguous(a, 1, 100) && contiguous(b, 1, 100), "A n=%zu B n=%zu", a->n, b->n);
    int seen[101] = {0};
    for (int i = 0; i < 100; i++) {
        CHECK(p[i].done && p[i].status == 0 && p[i].seq >= 1 && p[i].seq <= 100, "pub %d", i);
        if (p[i].seq <= 100) seen[p[i].seq]++;
    }
    for (int i = 1; i <= 100; i++) CHECK(seen[i] == 1, "seq %d assigned once", i);
    for (size_t i = 0; i < 100; i++)
        CHECK(strcmp(a->tails[i], b->tails[i]) == 0, "same tail for seq %zu", i + 1);
    /* emit reaches both nodes */
    in_call = 1;
    CHECK(bus_emit(a->b, room, "presence", "{\"p\":1}", 7) == 0, "emit");
    in_call = 0;
    WAIT(a->emits == 1 && b->emits == 1, 3000);
    CHECK(a->emits == 1 && b->emits == 1 && strcmp(b->emit_kind, "presence") == 0 &&
              strcmp(b->emit_data, "{\"p\":1}") == 0, "emit on both nodes");
    /* idempotent resend: same id -> same seq, one delivery */
    pubres d1, d2, d3;
    pub(a, room, "c-77", "hello", &d1);
    pub(b, room, "c-77", "hello", &d2);
    WAIT(d1.done && d2.done, 3000);
    CHECK(d1.status == 0 && d2.status == 0 && d1.seq == d2.seq && d1.dup + d2.dup == 1,
          "concurrent resend: seq %" PRIu64 "/%" PRIu64 " dup %d/%d", d1.seq, d2.seq, d1.dup, d2.dup);
    pub(a, room, "c-77", "hello", &d3);
    WAIT(d3.done, 3000);
    CHECK(d3.status == 0 && d3.dup == 1 && d3.seq == d1.seq, "later resend");
    CHECK(rc_int("TTL chat:{%s}:id:c-77", room) > 0, "id key has a ttl");
    spin(50);
    CHECK(a->n == 101 && b->n == 101, "one delivery of the id (A %zu B %zu)", a->n, b->n);
    CHECK(counter("chat_messages_published_total") >= 101, "published metric");
    CHECK(a->dup_or_disorder == 0 && b->dup_or_disorder == 0, "no disorder");
    node_free(a);
    node_free(b);
    settle();
}

static void test_trim_replay(void)
{
    char room[80];
    mkroom(room, sizeof room, "trim");
    node *a = node_new("T", rurl, 5, 60);
    wait_ready(a);
    pubres p[12];
    for (int i = 0; i < 12; i++) pub(a, room, NULL, "t", &p[i]);
    WAIT(p[11].done, 3000);
    CHECK(rc_int("ZCARD chat:{%s}:recent", room) == 5, "recent trimmed to 5");
    CHECK(rc_int("GET chat:{%s}:seq", room) == 12, "seq 12");
    repres r;
    CHECK(replay(a, room, 7, 100, &r) == 0, "replay queued");
    WAIT(r.done, 3000);
    CHECK(r.status == 0 && r.n == 5 && r.first == 8 && r.last == 12 && r.contiguous && r.head == 12,
          "complete replay st=%d n=%zu first=%" PRIu64, r.status, r.n, r.first);
    replay(a, room, 3, 100, &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 1 && r.n == 0 && r.head == 12, "beyond the buffer -> 1");
    replay(a, room, 8, 3, &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 1 && r.head == 12, "more than max -> 1");
    replay(a, room, 9, 3, &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 0 && r.n == 3 && r.first == 10, "exactly max");
    replay(a, room, UINT64_MAX, 0, &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 0 && r.n == 0 && r.head == 12, "head only");
    replay(a, room, 12, 10, &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 0 && r.n == 0 && r.head == 12, "up to date");
    char empty[80];
    mkroom(empty, sizeof empty, "never");
    replay(a, empty, 0, 10, &r);
    WAIT(r.done, 3000);
    CHECK(r.status == 0 && r.n == 0 && r.head == 0, "unknown room");
    node_free(a);
    settle();
}

static void test_gap_fill(void)
{
    char room[80];
    mkroom(room, sizeof room, "gap");
    node *a = node_new("G", rurl, 1000, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    synced(a, room);
    pubres p;
    pub(a, room, NULL, "1", &p);
    WAIT(a->n == 1, 3000);
    uint64_t filled0 = counter("chat_bus_gaps_filled_total");
    uint64_t lost0 = counter("chat_bus_gaps_lost_total");
    /* seq 2 and 3 stored but never published (the node missed them) */
    for (int s = 2; s <= 3; s++) {
        CHECK(rc_int("INCR chat:{%s}:seq", room) == s, "incr");
        rc_int("ZADD chat:{%s}:recent %d %d\n\"id\":\"\",\"body\":\"missed\"}", room, s, s);
    }
    pub(a, room, NULL, "4", &p);
    WAIT(a->n == 4, 3000);
    CHECK(contiguous(a, 1, 4), "gap filled in order (n=%zu)", a->n);
    CHECK(a->n >= 2 && strstr(a->tails[1], "missed"), "filled from the buffer");
    CHECK(counter("chat_bus_gaps_filled_total") == filled0 + 1, "gaps filled metric");
    /* seq 5 never stored: lost, reported, delivery continues */
    CHECK(rc_int("INCR chat:{%s}:seq", room) == 5, "incr");
    pub(a, room, NULL, "6", &p);
    WAIT(a->n == 5, 3000);
    CHECK(a->ngaps == 1 && a->gap_from[0] == 5 && a->gap_to[0] == 5, "on_gap(5,5) (%d)", a->ngaps);
    CHECK(a->n == 5 && a->seqs[4] == 6, "continues after the gap");
    CHECK(counter("chat_bus_gaps_lost_total") == lost0 + 1, "gaps lost metric");
    /* a duplicate publish on the channel is dropped */
    rc_int("PUBLISH chat:{%s}:msg %s", room, "6\n\"dup\"}");
    pub(a, room, NULL, "7", &p);
    WAIT(a->n == 6, 3000);
    CHECK(a->n == 6 && a->seqs[5] == 7 && a->dup_or_disorder == 0, "duplicate dropped");
    node_free(a);
    settle();
}

static int channels(const char *room)
{
    return (int)rc_int("PUBSUB CHANNELS chat:{%s}:*", room);
}

static void test_refcount(void)
{
    char room[80];
    mkroom(room, sizeof room, "ref");
    node *a = node_new("R", rurl, 1000, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    sub(a, room);
    synced(a, room);
    CHECK(channels(room) == 3, "3 channels (%d)", channels(room));
    unsub(a, room);
    spin(50);
    CHECK(channels(room) == 3, "still 3 after one unsubscribe");
    unsub(a, room);
    WAIT(channels(room) == 0, 2000);
    CHECK(channels(room) == 0, "none after the last (%d)", channels(room));
    /* flapping: the end state wins and delivery works */
    for (int i = 0; i < 5; i++) { sub(a, room); unsub(a, room); }
    sub(a, room);
    synced(a, room);
    CHECK(channels(room) == 3, "3 after flapping (%d)", channels(room));
    size_t n0 = a->n;
    pubres p;
    pub(a, room, NULL, "after", &p);
    WAIT(a->n == n0 + 1, 3000);
    CHECK(a->n == n0 + 1, "delivery after flapping");
    unsub(a, room);
    WAIT(channels(room) == 0, 2000);
    CHECK(channels(room) == 0, "none at the end");
    node_free(a);
    settle();
}

/* random subscribe/unsubscribe over several rooms: Redis ends with exactly
 * the channels of the rooms that still have subscribers */
static void test_sub_churn(void)
{
    node *a = node_new("C", rurl, 1000, 60);
    wait_ready(a);
    char rooms[8][80];
    int refs[8] = {0};
    for (int i = 0; i < 8; i++) {
        char w[16];
        snprintf(w, sizeof w, "churn%d", i);
        mkroom(rooms[i], sizeof rooms[i], w);
    }
    unsigned s = seed ^ 0x5bd1e995u;
    fprintf(stderr, "sub churn: seed %u\n", seed);
    for (int k = 0; k < 400; k++) {
        s = s * 1103515245u + 12345u;
        int i = (int)((s >> 16) % 8);
        if (((s >> 8) & 1) && refs[i] < 3) { sub(a, rooms[i]); refs[i]++; }
        else if (refs[i] > 0) { unsub(a, rooms[i]); refs[i]--; }
        if ((s >> 4) % 5 == 0) uv_run(loop, UV_RUN_NOWAIT);
        if ((s >> 4) % 37 == 0) spin(2);
    }
    for (int i = 0; i < 8; i++)
        if (refs[i]) synced(a, rooms[i]);
    int want = 0;
    for (int i = 0; i < 8; i++) want += refs[i] ? 3 : 0;
    char pat[64];
    snprintf(pat, sizeof pat, "chat:{churn*-%s}:*", nonce);
    WAIT(rc_int("PUBSUB CHANNELS %s", pat) == want, 3000);
    CHECK(rc_int("PUBSUB CHANNELS %s", pat) == want, "channels %lld want %d",
          rc_int("PUBSUB CHANNELS %s", pat), want);
    for (int i = 0; i < 8; i++) {
        if (!refs[i]) continue;
        snprintf(a->room, sizeof a->room, "%.70s", rooms[i]);
        size_t n0 = a->n;
        pubres p;
        pub(a, rooms[i], NULL, "c", &p);
        WAIT(a->n == n0 + 1, 3000);
        CHECK(a->n == n0 + 1, "delivery in %s", rooms[i]);
    }
    node_free(a);
    settle();
}

static void test_noscript(void)
{
    char room[80];
    mkroom(room, sizeof room, "nos");
    node *a = node_new("N", rurl, 1000, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    synced(a, room);
    redisReply *r = rc("SCRIPT FLUSH");
    CHECK(r && r->type == REDIS_REPLY_STATUS, "script flush");
    if (r) freeReplyObject(r);
    pubres p[3];
    for (int i = 0; i < 3; i++) pub(a, room, NULL, "n", &p[i]);
    WAIT(p[0].done && p[1].done && p[2].done, 3000);
    for (int i = 0; i < 3; i++) CHECK(p[i].status == 0, "publish after SCRIPT FLUSH %d", i);
    WAIT(a->n == 3, 3000);
    CHECK(contiguous(a, 1, 3), "delivered after reload");
    node_free(a);
    settle();
}

static void test_three_nodes(void)
{
    char room[80];
    mkroom(room, sizeof room, "three");
    node *n[3];
    const char *names[3] = {"N1", "N2", "N3"};
    for (int i = 0; i < 3; i++) {
        n[i] = node_new(names[i], rurl, 2000, 60);
        snprintf(n[i]->room, sizeof n[i]->room, "%s", room);
    }
    for (int i = 0; i < 3; i++) wait_ready(n[i]);
    for (int i = 0; i < 3; i++) { sub(n[i], room); synced(n[i], room); }
    unsigned s = seed;
    fprintf(stderr, "three nodes: seed %u\n", seed);
    static pubres p[600];
    int total = 600;
    for (int i = 0; i < total; i++) {
        s = s * 1103515245u + 12345u;
        pub(n[(s >> 16) % 3], room, NULL, "c", &p[i]);
        if ((s >> 8) % 7 == 0) uv_run(loop, UV_RUN_NOWAIT);
    }
    WAIT(n[0]->n == (size_t)total && n[1]->n == (size_t)total && n[2]->n == (size_t)total, 10000);
    for (int i = 0; i < 3; i++)
        CHECK(contiguous(n[i], 1, (uint64_t)total), "%s sees 1..%d (n=%zu)", names[i], total, n[i]->n);
    for (int i = 0; i < total; i++) CHECK(p[i].status == 0, "publish %d", i);
    for (int i = 0; i < 3; i++) node_free(n[i]);
    settle();
}

/* the node misses publishes while its subscription is down: they are
 * recovered from the buffer after the reconnect (or reported lost) */
static void test_missed_while_down(size_t recent_max, int npub)
{
    char room[80];
    mkroom(room, sizeof room, recent_max < 10 ? "lostdown" : "missdown");
    node *a = node_new("M", rurl, recent_max, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    synced(a, room);
    pubres p;
    pub(a, room, NULL, "first", &p);
    WAIT(a->n == 1, 3000);
    uint64_t rec0 = counter("chat_redis_reconnects_total");
    CHECK(rc_int("CLIENT KILL TYPE pubsub") >= 1, "killed the subscription connection");
    WAIT(!bus_ready(a->b), 2000);
    CHECK(!bus_ready(a->b) && a->nready && a->ready_log[a->nready - 1] == 0, "on_ready(0)");
    in_call = 1;
    CHECK(bus_publish(a->b, room, NULL, "\"x\"}", 4, pub_cb, &p) == -1, "publish refused while down");
    CHECK(bus_emit(a->b, room, "typing", "x", 1) == -1, "emit dropped while down");
    in_call = 0;
    char tail[64];
    for (int i = 0; i < npub; i++) {
        /* use the bus script with recent_max of the node */
        char kseq[128], krec[128], kep[128], ch[128];
        snprintf(kseq, sizeof kseq, "chat:{%s}:seq", room);
        snprintf(krec, sizeof krec, "chat:{%s}:recent", room);
        snprintf(kep, sizeof kep, "chat:{%s}:epoch", room);
        snprintf(ch, sizeof ch, "chat:{%s}:msg", room);
        snprintf(tail, sizeof tail, "\"id\":\"\",\"body\":\"oob%d\"}", i);
        char keep[24];
        snprintf(keep, sizeof keep, "%zu", recent_max);
        /* ARGV: tail, recent_max, ttl, channel, floor, track, room, has id,
         * seed mode, seed, epoch (bus_script.c) */
        redisReply *r = rc("EVAL %s 3 %s %s %s %s %s 60 %s 0 0 %s 0 N 0 oobepoch", BUS_PUBLISH_LUA,
                           kseq, krec, kep, tail, keep, ch, room);
        CHECK(r && r->type == REDIS_REPLY_ARRAY, "oob publish: %s / %s", r && r->str ? r->str : "?", sc ? sc->errstr : "no sc");
        if (r) freeReplyObject(r);
    }
    WAIT(bus_ready(a->b), 5000);
    CHECK(bus_ready(a->b) && a->nready && a->ready_log[a->nready - 1] == 1, "on_ready(1) again");
    CHECK(counter("chat_redis_reconnects_total") == rec0 + 1, "reconnect counted");
    uint64_t head = (uint64_t)npub + 1;
    if ((size_t)npub <= recent_max) {
        /* ready means recovered: everything is there already */
        CHECK(contiguous(a, 1, head), "recovered 1..%" PRIu64 " (n=%zu)", head, a->n);
        CHECK(a->ngaps == 0, "no gap");
    } else {
        uint64_t lost_to = head - recent_max;
        CHECK(a->ngaps == 1 && a->gap_from[0] == 2 && a->gap_to[0] == lost_to,
              "gap 2..%" PRIu64 " reported (%d gaps, %" PRIu64 "..%" PRIu64 ")", lost_to, a->ngaps,
              a->ngaps ? a->gap_from[0] : 0, a->ngaps ? a->gap_to[0] : 0);
        CHECK(a->n == 1 + recent_max && a->seqs[a->n - 1] == head, "the buffer's part delivered");
    }
    pub(a, room, NULL, "after", &p);
    WAIT(a->n && a->seqs[a->n - 1] == head + 1, 3000);
    CHECK(p.status == 0 && a->seqs[a->n - 1] == head + 1, "live again");
    CHECK(a->dup_or_disorder == 0, "no disorder");
    node_free(a);
    settle();
}

/* publishing from a timer while the redis-server is killed and restarted */
typedef struct streamer {
    node *nd;
    const char *room;
    uv_timer_t t;
    int sent, refused, failed, ok, stop;
    pubres res[4000];
} streamer;

static void stream_tick(uv_timer_t *t)
{
    streamer *s = t->data;
    if (s->stop || s->sent >= 4000) return;
    pubres *p = &s->res[s->sent];
    if (pub(s->nd, s->room, NULL, "s", p) == 0) s->sent++;
    else s->refused++;
}

static void stream_burst(uv_timer_t *t)
{
    for (int i = 0; i < 8; i++) stream_tick(t);
}

static int all_answered(streamer **ss, int n)
{
    for (int k = 0; k < n; k++)
        for (int j = 0; j < ss[k]->sent; j++)
            if (!ss[k]->res[j].done) return 0;
    return 1;
}

/* ---------------- backfill of unstored messages ---------------- */

/* how many times nd got (room, seq) through on_unstored */
static int uns_count(const node *nd, const char *room, uint64_t seq)
{
    int c = 0;
    for (int i = 0; i < nd->nuns; i++)
        if (nd->uns_seq[i] == seq && strcmp(nd->uns_room[i], room) == 0) c++;
    return c;
}

static void mark(node *nd, const char *room, uint64_t seq)
{
    in_call = 1;
    bus_mark_stored(nd->b, room, seq);
    in_call = 0;
}

static void test_backfill(void)
{
    char room[80], lost[80], locked[80];
    mkroom(room, sizeof room, "bf");
    mkroom(lost, sizeof lost, "bflost");
    mkroom(locked, sizeof locked, "bflock");
    /* A publishes (its own sweeper would only run after 30 s), B sweeps
     * with a 600 ms grace; C keeps a recent buffer of 2 */
    node *a = node_new_checking("A", rurl, 60000);
    node *b = node_new_checking("B", rurl, 600);
    node *c = node_new_checking_recent("C", rurl, 2, 60000);
    node *plain = node_new("P", rurl, 1000, 60);
    wait_ready(a);
    wait_ready(b);
    wait_ready(c);
    wait_ready(plain);
    pubres p1, p2, p3, pd, pp;
    uint64_t t0 = mono_ms();
    pub(a, room, "bf-1", "one", &p1);
    pub(a, room, NULL, "two", &p2);
    WAIT(p1.done && p2.done, 3000); /* two connections: no order between them */
    pub(plain, room, NULL, "untracked", &pp);
    WAIT(p1.done && p2.done && pp.done, 3000);
    CHECK(p1.status == 0 && p1.seq == 1 && p2.seq == 2 && pp.seq == 3, "seqs %" PRIu64 " %" PRIu64,
          p1.seq, p2.seq);
    CHECK(rc_int("ZCARD chat:{%s}:unstored", room) == 2, "two unstored entries (not the untracked one)");
    CHECK(rc_int("ZSCORE chat:{%s}:unstored 1", room) > 1000000000000LL &&
              rc_int("ZSCORE chat:{%s}:unstored 2", room) > 1000000000000LL &&
              rc_int("ZSCORE chat:{%s}:unstored 3", room) == 0, "members 1, 2 scored by time");
    CHECK(rc_int("ZSCORE chat:unstored %s", room) > 1000000000000LL, "room indexed with a ms time");
    /* a duplicate is not recorded again */
    pub(a, room, "bf-1", "one", &pd);
    WAIT(pd.done, 3000);
    CHECK(pd.dup == 1 && rc_int("ZCARD chat:{%s}:unstored", room) == 2, "duplicate not recorded");
    /* marking seq 2 clears it, the room stays indexed (seq 1 is left) */
    mark(a, room, 2);
    WAIT(rc_int("ZCARD chat:{%s}:unstored", room) == 1, 2000);
    CHECK(rc_int("ZCARD chat:{%s}:unstored", room) == 1 && rc_int("EXISTS chat:unstored") == 1,
          "mark cleared seq 2 only");
    /* seq 1 is now older than B's grace; seq 4 is new */
    while (mono_ms() - t0 < 700) spin(10);
    pub(a, room, NULL, "four", &p3);
    WAIT(p3.done, 3000);
    CHECK(p3.seq == 4, "seq 4");
    WAIT(uns_count(b, room, 1) >= 1, 3000);
    CHECK(uns_count(b, room, 1) == 1, "B backfills seq 1 (got %d)", uns_count(b, room, 1));
    CHECK(uns_count(b, room, 4) == 0, "seq 4 is younger than the grace: not offered yet");
    CHECK(uns_count(a, room, 1) == 0, "A's sweeper did not run");
    int k = 0;
    for (; k < b->nuns; k++) if (b->uns_seq[k] == 1 && strcmp(b->uns_room[k], room) == 0) break;
    CHECK(k < b->nuns && strstr(b->uns_tail[k], "\"body\":\"one\"") &&
              strstr(b->uns_tail[k], "\"id\":\"bf-1\""), "tail of seq 1: %s",
          k < b->nuns ? b->uns_tail[k] : "");
    /* the lease: not offered again within the grace */
    spin(350);
    CHECK(uns_count(b, room, 1) == 1, "seq 1 leased (offered %d times)", uns_count(b, room, 1));
    stored_add(b, room, 1); /* B stored it: its next check forgets it */
    WAIT(uns_count(b, room, 4) >= 1, 3000);
    CHECK(uns_count(b, room, 4) == 1 && uns_count(b, room, 1) == 1, "seq 4 offered once, 1 not again");
    stored_add(b, room, 4);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", room) == 0 &&
             rc_int("ZSCORE chat:unstored %s", room) == 0, 2000);
    CHECK(rc_int("EXISTS chat:{%s}:unstored", room) == 0, "set empty");
    CHECK(rc_int("ZSCORE chat:unstored %s", room) == 0, "room left the index");
    CHECK(counter("chat_bus_backfill_total") >= 2, "backfill metric");

    /* entries the recent buffer lost: removed and counted, the rest offered */
    uint64_t lost0 = counter("chat_bus_backfill_lost_total");
    pubres q[4];
    for (int i = 0; i < 4; i++) pub(c, lost, NULL, "x", &q[i]);
    WAIT(q[0].done && q[1].done && q[2].done && q[3].done, 3000);
    WAIT(uns_count(b, lost, 3) && uns_count(b, lost, 4), 3000);
    CHECK(uns_count(b, lost, 3) == 1 && uns_count(b, lost, 4) == 1 && uns_count(b, lost, 1) == 0 &&
              uns_count(b, lost, 2) == 0, "only 3 and 4 offered");
    CHECK(counter("chat_bus_backfill_lost_total") == lost0 + 2, "2 lost (%" PRIu64 ")",
          counter("chat_bus_backfill_lost_total") - lost0);
    CHECK(rc_int("ZCARD chat:{%s}:unstored", lost) == 2, "lost ones removed");
    mark(c, lost, 3);
    mark(c, lost, 4);

    /* the lock: while another node holds the round, B does not sweep */
    node *d = node_new_checking("D", rurl, 600);
    wait_ready(d);
    redisReply *r = rc("SET chat:backfill:lock other PX 1800");
    if (r) freeReplyObject(r);
    uint64_t r0 = bus_backfill_rounds(b->b) + bus_backfill_rounds(d->b), t1 = mono_ms();
    pubres pl;
    pub(a, locked, NULL, "l", &pl);
    WAIT(pl.done, 3000);
    spin(1200);
    CHECK(uns_count(b, locked, 1) + uns_count(d, locked, 1) == 0 &&
              bus_backfill_rounds(b->b) + bus_backfill_rounds(d->b) == r0,
          "no sweep while another node holds the lock");
    WAIT(uns_count(b, locked, 1) + uns_count(d, locked, 1) >= 1, 3000);
    CHECK(mono_ms() - t1 >= 1700, "swept only after the lock expired");
    /* B and D tick every 300 ms; the lock lets one of them sweep a round */
    uint64_t r1 = bus_backfill_rounds(b->b) + bus_backfill_rounds(d->b), t2 = mono_ms();
    int o1 = uns_count(b, locked, 1) + uns_count(d, locked, 1);
    spin(1500);
    int offers = uns_count(b, locked, 1) + uns_count(d, locked, 1) - o1;
    uint64_t rounds = bus_backfill_rounds(b->b) + bus_backfill_rounds(d->b) - r1;
    uint64_t el = mono_ms() - t2;
    CHECK(rounds >= 2 && rounds <= el / 300 + 1, "%" PRIu64 " rounds in %" PRIu64 " ms", rounds, el);
    /* the lease: an offered seq waits another grace, whichever node sweeps */
    CHECK(offers >= 1 && (uint64_t)offers <= el / 600 + 1, "offered %d times in %" PRIu64 " ms",
          offers, el);
    stored_add(b, locked, 1);
    stored_add(d, locked, 1);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", locked) == 0, 3000);
    CHECK(rc_int("ZSCORE chat:unstored %s", locked) == 0, "locked room cleared");
    CHECK(a->dup_or_disorder == 0, "no disorder");
    node_free(a);
    node_free(b);
    node_free(c);
    node_free(d);
    node_free(plain);
    settle();
}

/* the sweeper asks history (on_check) instead of waiting for marks: stored
 * seqs leave the unstored set, the others are backfilled (leased), a failed
 * check changes nothing, a mark still forgets an entry at once */
static void test_backfill_check(void)
{
    char room[80], room2[80];
    mkroom(room, sizeof room, "bfc");
    mkroom(room2, sizeof room2, "bfc2");
    rc_int("DEL chat:backfill:lock");
    /* A publishes (its sweeper would run after 60 s); K checks with a 600 ms grace */
    node *a = ready(node_new_checking("A", rurl, 60000));
    node *k = ready(node_new_checking("K", rurl, 600));
    k->check_fail = 1;
    pubres p[4];
    pub(a, room, "bfc-1", "one", &p[0]);
    pub(a, room, NULL, "two", &p[1]);
    pub(a, room, NULL, "three", &p[2]);
    pub(a, room2, NULL, "other", &p[3]);
    WAIT(p[0].done && p[1].done && p[2].done && p[3].done, 3000);
    CHECK(p[2].seq == 3 && p[3].seq == 1, "seqs");
    CHECK(rc_int("ZCARD chat:{%s}:unstored", room) == 3, "three unstored");
    /* a failing check: asked, nothing changes, nothing offered */
    WAIT(k->nchecks >= 1, 3000);
    CHECK(k->nchecks >= 1 && asked_count(k, room, 1) >= 1 && asked_count(k, room, 2) >= 1 &&
              asked_count(k, room, 3) >= 1 && asked_count(k, room2, 1) >= 1, "all four asked");
    spin(100);
    CHECK(k->nuns == 0 && rc_int("ZCARD chat:{%s}:unstored", room) == 3, "nothing settled");
    /* history holds 1 and 3 of room and room2's 1: those leave, 2 is offered */
    stored_add(k, room, 1);
    stored_add(k, room, 3);
    stored_add(k, room2, 1);
    k->check_fail = 0;
    WAIT(uns_count(k, room, 2) >= 1, 3000);
    CHECK(uns_count(k, room, 2) == 1 && uns_count(k, room, 1) == 0 && uns_count(k, room, 3) == 0 &&
              uns_count(k, room2, 1) == 0, "only seq 2 offered");
    int kk = 0;
    for (; kk < k->nuns; kk++) if (k->uns_seq[kk] == 2 && strcmp(k->uns_room[kk], room) == 0) break;
    CHECK(kk < k->nuns && strstr(k->uns_tail[kk], "\"body\":\"two\""), "tail of seq 2");
    CHECK(rc_int("ZCARD chat:{%s}:unstored", room) == 1 && rc_int("ZSCORE chat:{%s}:unstored 2", room) > 0,
          "1 and 3 forgotten, 2 left");
    CHECK(rc_int("EXISTS chat:{%s}:unstored", room2) == 0 && rc_int("ZSCORE chat:unstored %s", room2) == 0,
          "room2 left the index");
    /* the lease: not offered again within the grace */
    spin(350);
    CHECK(uns_count(k, room, 2) == 1, "seq 2 leased (offered %d times)", uns_count(k, room, 2));
    /* stored now (the core stored the backfill): the next check forgets it */
    stored_add(k, room, 2);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", room) == 0, 3000);
    CHECK(rc_int("EXISTS chat:{%s}:unstored", room) == 0 && rc_int("ZSCORE chat:unstored %s", room) == 0,
          "set empty, room left the index");
    CHECK(uns_count(k, room, 2) == 1, "seq 2 offered once");
    /* a mark still forgets an entry at once (one that can never be stored) */
    pubres p5;
    pub(a, room, NULL, "five", &p5);
    WAIT(p5.done, 3000);
    CHECK(p5.seq == 4 && rc_int("ZCARD chat:{%s}:unstored", room) == 1, "seq 4 unstored");
    mark(k, room, 4);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", room) == 0, 2000);
    CHECK(rc_int("EXISTS chat:{%s}:unstored", room) == 0 && uns_count(k, room, 4) == 0,
          "marked without a check");
    node_free(a);
    node_free(k);
    settle();
}

/* a check slower than the round's lock: K holds its check while the lock
 * expires and K2 takes the next round (offers seq 1 of room, loses 1 and 2
 * of lost); K's late settle must neither offer the leased seq again nor
 * count the lost ones a second time */
static void test_backfill_slow_check(void)
{
    char room[80], lost[80];
    mkroom(room, sizeof room, "bfslow");
    mkroom(lost, sizeof lost, "bfslowl");
    rc_int("DEL chat:backfill:lock");
    node *a = ready(node_new_checking("A", rurl, 60000));
    node *c = ready(node_new_checking_recent("C", rurl, 2, 60000));
    pubres p, q[4];
    pub(a, room, NULL, "one", &p);
    for (int i = 0; i < 4; i++) pub(c, lost, NULL, "x", &q[i]);
    WAIT(p.done && q[0].done && q[1].done && q[2].done && q[3].done, 3000);
    CHECK(p.seq == 1 && q[3].seq == 4, "seqs");
    spin(650); /* older than a 600 ms grace */
    uint64_t lost0 = counter("chat_bus_backfill_lost_total");
    node *k = node_new_checking("K", rurl, 600);
    k->check_hold = 1;
    wait_ready(k);
    WAIT(k->held_check != NULL, 3000);
    CHECK(k->held_check && k->held_n >= 5, "K's round lists the 5 entries (%zu)", k->held_n);
    /* K's lock (270 ms) runs out while its check is slow: K2 sweeps */
    node *k2 = ready(node_new_checking("K2", rurl, 600));
    WAIT(uns_count(k2, room, 1) >= 1 && uns_count(k2, lost, 4) >= 1, 3000);
    CHECK(uns_count(k2, room, 1) == 1 && uns_count(k2, lost, 3) == 1 && uns_count(k2, lost, 4) == 1,
          "K2 offers seq 1, 3, 4");
    CHECK(counter("chat_bus_backfill_lost_total") == lost0 + 2, "K2 counts 2 lost");
    check_answer_held(k);
    spin(200); /* K's settle answers; within the lease K2 offers nothing again */
    CHECK(uns_count(k, room, 1) + uns_count(k2, room, 1) == 1,
          "seq 1 offered once (K %d, K2 %d)", uns_count(k, room, 1), uns_count(k2, room, 1));
    CHECK(uns_count(k, lost, 3) + uns_count(k, lost, 4) == 0, "K offers none of lost");
    CHECK(counter("chat_bus_backfill_lost_total") == lost0 + 2, "lost counted once (%" PRIu64 ")",
          counter("chat_bus_backfill_lost_total") - lost0);
    CHECK(rc_int("ZCARD chat:{%s}:unstored", room) == 1 && rc_int("ZCARD chat:{%s}:unstored", lost) == 2,
          "the offered entries stay (leased) until history holds them");
    node_free(a);
    node_free(c);
    node_free(k);
    node_free(k2);
    settle();
}

/* publishes n messages to room from nd and waits for them */
static void pub_many(node *nd, const char *room, int n)
{
    static pubres p[BUS_SETTLE_CHUNK + 1];
    CHECK(n <= BUS_SETTLE_CHUNK + 1, "%d messages", n);
    int done = 0;
    for (int i = 0; i < n; i++) pub(nd, room, NULL, "m", &p[i]);
    for (uint64_t until = mono_ms() + 10000; mono_ms() < until;) {
        done = 0;
        for (int i = 0; i < n; i++) done += p[i].done && p[i].status == 0;
        if (done == n) break;
        spin(10);
    }
    CHECK(done == n, "%d of %d published", done, n);
}

/* a round's limits (rooms per round, seqs per room): K lists at most 2
 * rooms and 3 seqs of each per round; a round that met a limit is followed
 * by another one; every pair is listed once, counted, and so are the rounds
 * that met each limit */
static void test_backfill_limits(void)
{
    char rx[80], ry[80], rz[80];
    mkroom(rx, sizeof rx, "bflimx");
    mkroom(ry, sizeof ry, "bflimy");
    mkroom(rz, sizeof rz, "bflimz");
    /* this test counts what a round lists: other tests' entries go */
    rc_int("DEL chat:backfill:lock chat:unstored");
    node *a = ready(node_new_checking("A", rurl, 60000));
    pub_many(a, rx, 5);
    spin(5); /* the index lists rooms oldest first: x, y, z */
    pub_many(a, ry, 1);
    spin(5);
    pub_many(a, rz, 1);
    CHECK(rc_int("ZCARD chat:{%s}:unstored", rx) == 5 && rc_int("ZCARD chat:{%s}:unstored", ry) == 1 &&
              rc_int("ZCARD chat:{%s}:unstored", rz) == 1, "5 + 1 + 1 unstored");
    spin(650); /* older than a 600 ms grace */
    uint64_t c0 = counter("chat_bus_backfill_checked_total");
    uint64_t lr0 = counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"");
    uint64_t lp0 = counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"");
    node *k = node_new_checking_opts("K", rurl, 1000, 600, 2, 3);
    k->check_all_stored = 1;
    wait_ready(k);
    WAIT(rc_int("EXISTS chat:unstored") == 0, 5000);
    CHECK(rc_int("EXISTS chat:unstored") == 0, "every entry checked and forgotten");
    CHECK(k->ncheck_sizes >= 2 && k->check_sizes[0] == 4 && k->check_sizes[1] == 3,
          "round 1: x 1-3 and y 1 (2 rooms, 3 per room), round 2: x 4-5 and z 1 (%d checks: %zu %zu)",
          k->ncheck_sizes, k->check_sizes[0], k->check_sizes[1]);
    for (uint64_t s = 1; s <= 5; s++)
        CHECK(asked_count(k, rx, s) == 1, "x seq %" PRIu64 " asked once", s);
    CHECK(asked_count(k, ry, 1) == 1 && asked_count(k, rz, 1) == 1, "y and z asked once");
    CHECK(asked_count(k, rx, 1) && k->asked_seq[0] == 1 && strcmp(k->asked_room[0], rx) == 0,
          "the oldest room first");
    CHECK(counter("chat_bus_backfill_checked_total") - c0 == 7, "7 pairs counted (%" PRIu64 ")",
          counter("chat_bus_backfill_checked_total") - c0);
    CHECK(counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") > lr0 &&
              counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"") > lp0,
          "rounds that met each limit counted");
    CHECK(k->nuns == 0, "nothing offered (all stored)");
    node_free(a);
    node_free(k);
    settle();
}

/* the settle is cut into calls of at most BUS_SETTLE_CHUNK pairs (bounded
 * ARGV): a round of exactly the chunk is one call, one more pair makes two;
 * a room cut between two calls is settled whole (its last seq, missing
 * from history, offered once with its tail) */
static void test_backfill_settle_chunks(void)
{
    char r1[80], r2[80];
    mkroom(r1, sizeof r1, "bfchunk1");
    mkroom(r2, sizeof r2, "bfchunk2");
    rc_int("DEL chat:backfill:lock chat:unstored");
    node *a = ready(node_new_checking("A", rurl, 60000));
    pub_many(a, r1, BUS_SETTLE_CHUNK);
    spin(650);
    node *k1 = node_new_checking_opts("K1", rurl, 1000, 600, 0, 1000);
    k1->check_all_stored = 1;
    wait_ready(k1);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", r1) == 0, 5000);
    CHECK(rc_int("EXISTS chat:{%s}:unstored", r1) == 0 && k1->ncheck_sizes >= 1 &&
              k1->check_sizes[0] == BUS_SETTLE_CHUNK, "one round of %d pairs forgotten (%zu)",
          BUS_SETTLE_CHUNK, k1->ncheck_sizes ? k1->check_sizes[0] : 0);
    CHECK(bus_backfill_settles(k1->b) == 1, "a round of the chunk: one settle (%" PRIu64 ")",
          bus_backfill_settles(k1->b));
    node_free(k1);
    rc_int("DEL chat:backfill:lock");
    pub_many(a, r2, BUS_SETTLE_CHUNK + 1);
    spin(650);
    node *k2 = node_new_checking_opts("K2", rurl, 1000, 600, 0, 1000);
    k2->check_all_stored = 1;
    k2->check_missing = BUS_SETTLE_CHUNK + 1;
    wait_ready(k2);
    WAIT(uns_count(k2, r2, BUS_SETTLE_CHUNK + 1) >= 1, 5000);
    CHECK(k2->ncheck_sizes >= 1 && k2->check_sizes[0] == BUS_SETTLE_CHUNK + 1, "one round of %d pairs",
          BUS_SETTLE_CHUNK + 1);
    CHECK(bus_backfill_settles(k2->b) == 2, "one pair more: two settles (%" PRIu64 ")",
          bus_backfill_settles(k2->b));
    CHECK(uns_count(k2, r2, BUS_SETTLE_CHUNK + 1) == 1 && k2->nuns == 1, "the missing seq offered once");
    CHECK(k2->nuns == 1 && strstr(k2->uns_tail[0], "\"body\":\"m\""), "with its tail");
    CHECK(rc_int("ZCARD chat:{%s}:unstored", r2) == 1 &&
              rc_int("ZSCORE chat:{%s}:unstored %d", r2, BUS_SETTLE_CHUNK + 1) > 0,
          "the stored ones forgotten, the missing one leased");
    node_free(a);
    node_free(k2);
    settle();
}

/* an entry of room recorded as unstored at score (ms since the epoch: 1 is
 * long ago), and the room indexed, without a publish (the recent buffer
 * does not have it: offered, it would be lost) */
static void uns_add(const char *room, long long score, const char *member)
{
    rc_int("ZADD chat:{%s}:unstored %lld %s", room, score, member);
    rc_int("ZADD chat:unstored NX %lld %s", score, room);
}

/* a round that met its room limit but listed no pair (two rooms indexed as
 * old whose sets hold nothing: stale index scores) sends no check and no
 * settle; the next round follows at once (not a tick later), and the
 * unlimited round after it is not followed at once (no "more" left over) */
static void test_backfill_zero_pair_round(void)
{
    char s1[80], s2[80], live[80];
    mkroom(s1, sizeof s1, "bfzero1");
    mkroom(s2, sizeof s2, "bfzero2");
    mkroom(live, sizeof live, "bfzerol");
    rc_int("DEL chat:backfill:lock chat:unstored");
    rc_int("ZADD chat:unstored 1 %s 1 %s", s1, s2);
    uns_add(live, 2, "1");
    /* grace 2000: a tick every 1000 ms; at most 2 rooms per round */
    uint64_t t0 = mono_ms();
    node *k = node_new_checking_opts("K", rurl, 1000, 2000, 2, 0);
    k->check_all_stored = 1;
    WAIT(k->nchecks >= 1, 4000);
    uint64_t el = mono_ms() - t0;
    CHECK(k->nchecks == 1 && k->check_sizes[0] == 1 && asked_count(k, live, 1) == 1,
          "one check, of the live pair only");
    CHECK(bus_backfill_rounds(k->b) == 2, "round 1 listed the stale rooms only (%" PRIu64 " rounds)",
          bus_backfill_rounds(k->b));
    CHECK(el < 1600, "round 2 right after round 1 (at the first tick, 1000 ms), not a tick later: "
          "%" PRIu64 " ms", el);
    WAIT(rc_int("EXISTS chat:unstored") == 0, 2000);
    CHECK(rc_int("EXISTS chat:unstored") == 0, "stale rooms dropped, the live pair forgotten");
    spin(500);
    CHECK(bus_backfill_rounds(k->b) == 2, "round 2 (not limited) not followed at once (%" PRIu64 ")",
          bus_backfill_rounds(k->b));
    node_free(k);
    settle();
}

/* a round that met its room limit and failed (its check failed, or its
 * settle got a Redis error reply) is followed at the next tick, not at
 * once, and leaves no "more" behind: the next round, unlimited and
 * settled, is not followed at once either */
static void test_backfill_failed_round(int settle_error)
{
    char x[80], y[80], z[80];
    mkroom(x, sizeof x, settle_error ? "bffailsx" : "bffailcx");
    mkroom(y, sizeof y, settle_error ? "bffailsy" : "bffailcy");
    mkroom(z, sizeof z, settle_error ? "bffailsz" : "bffailcz");
    rc_int("DEL chat:backfill:lock chat:unstored");
    uns_add(x, 1, "1");
    uns_add(y, 2, "1");
    uns_add(z, 3, "1");
    /* a tick every 1000 ms; 2 rooms per round: round 1 lists x and y, z is more */
    node *k = node_new_checking_opts("K", rurl, 1000, 2000, 2, 0);
    if (settle_error) k->check_hold = 1; else k->check_fail = 1;
    uint64_t lr0 = counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"");
    WAIT(k->nchecks >= 1, 4000);
    CHECK(k->nchecks == 1 && k->check_sizes[0] == 2, "round 1 checks x and y");
    if (settle_error) {
        CHECK(k->held_check != NULL, "check held");
        /* x's set is not a set any more: the settle script fails (WRONGTYPE) */
        rc_int("DEL chat:{%s}:unstored", x);
        rc_int("SET chat:{%s}:unstored garbage", x);
        check_answer_held(k);
        WAIT(bus_backfill_settles(k->b) >= 1, 2000);
        spin(50);
        CHECK(bus_backfill_settles(k->b) == 1 && k->nuns == 0, "the settle was sent and failed");
        rc_int("DEL chat:{%s}:unstored", x);
        uns_add(x, 1, "1");
    }
    uint64_t t1 = mono_ms();
    CHECK(counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") == lr0 + 1,
          "round 1 counted as limited");
    /* only x is left: the next round is not limited */
    rc_int("DEL chat:{%s}:unstored chat:{%s}:unstored", y, z);
    rc_int("ZREM chat:unstored %s %s", y, z);
    k->check_fail = 0;
    k->check_all_stored = 1;
    WAIT(k->nchecks >= 2, 3000);
    CHECK(k->nchecks == 2 && k->check_sizes[1] == 1, "round 2 checks x only");
    CHECK(bus_backfill_rounds(k->b) == 2 && mono_ms() - t1 >= 500,
          "the failed round is followed at the next tick (%" PRIu64 " ms later)", mono_ms() - t1);
    WAIT(rc_int("EXISTS chat:unstored") == 0, 2000);
    CHECK(rc_int("EXISTS chat:unstored") == 0, "x forgotten");
    spin(500);
    CHECK(bus_backfill_rounds(k->b) == 2, "round 2 (not limited) not followed at once (%" PRIu64
          " rounds)", bus_backfill_rounds(k->b));
    CHECK(counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") == lr0 + 1,
          "round 2 not counted as limited");
    node_free(k);
    settle();
}

/* a round is limited only when there really is more: exactly the limits
 * (2 rooms, 3 seqs in one) is one round, not counted as limited and not
 * followed at once; one more room and one more seq (3 rooms, 4 seqs in
 * one) is one limited round of each kind, then one more round for the rest */
static void test_backfill_limit_exact(void)
{
    char x[80], y[80], x2[80], y2[80], z2[80];
    mkroom(x, sizeof x, "bfexactx");
    mkroom(y, sizeof y, "bfexacty");
    mkroom(x2, sizeof x2, "bfexactx2");
    mkroom(y2, sizeof y2, "bfexacty2");
    mkroom(z2, sizeof z2, "bfexactz2");
    rc_int("DEL chat:backfill:lock chat:unstored");
    uns_add(x, 1, "1");
    uns_add(x, 1, "2");
    uns_add(x, 1, "3");
    uns_add(y, 2, "1");
    uint64_t c0 = counter("chat_bus_backfill_checked_total");
    uint64_t lr0 = counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"");
    uint64_t lp0 = counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"");
    node *k = node_new_checking_opts("K", rurl, 1000, 2000, 2, 3);
    k->check_all_stored = 1;
    WAIT(rc_int("EXISTS chat:unstored") == 0, 4000);
    CHECK(rc_int("EXISTS chat:unstored") == 0 && k->nchecks == 1 && k->check_sizes[0] == 4,
          "exactly the limits: one round of 4 pairs");
    spin(500);
    CHECK(bus_backfill_rounds(k->b) == 1, "not followed at once (%" PRIu64 " rounds)",
          bus_backfill_rounds(k->b));
    CHECK(counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") == lr0 &&
              counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"") == lp0,
          "not counted as limited (rooms +%" PRIu64 ", per_room +%" PRIu64 ")",
          counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") - lr0,
          counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"") - lp0);
    CHECK(counter("chat_bus_backfill_checked_total") - c0 == 4, "4 pairs counted");
    /* one more of each */
    for (int s = 1; s <= 4; s++) {
        char m[8];
        snprintf(m, sizeof m, "%d", s);
        uns_add(x2, 1, m);
    }
    uns_add(y2, 2, "1");
    uns_add(z2, 3, "1");
    WAIT(rc_int("EXISTS chat:unstored") == 0, 4000);
    CHECK(rc_int("EXISTS chat:unstored") == 0 && k->nchecks == 3 && k->check_sizes[1] == 4 &&
              k->check_sizes[2] == 2, "x2 1-3 and y2, then x2 4 and z2 (%d checks)", k->nchecks);
    spin(500);
    CHECK(bus_backfill_rounds(k->b) == 3, "3 rounds (%" PRIu64 ")", bus_backfill_rounds(k->b));
    CHECK(counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") == lr0 + 1 &&
              counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"") == lp0 + 1,
          "one limited round of each kind (rooms +%" PRIu64 ", per_room +%" PRIu64 ")",
          counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"rooms\"") - lr0,
          counter_l("chat_bus_backfill_rounds_limited_total", "limit=\"per_room\"") - lp0);
    CHECK(counter("chat_bus_backfill_checked_total") - c0 == 10, "10 pairs counted");
    node_free(k);
    settle();
}

/* chat_bus_backfill_checked_total counts the pairs asked of history: a
 * malformed member listed by the sweep (not a seq) is skipped, not counted;
 * a limited round that listed only malformed members made no progress: it
 * is not followed at once (that would sweep in a loop) */
static void test_backfill_checked_wellformed(void)
{
    char m[80];
    mkroom(m, sizeof m, "bfmal");
    rc_int("DEL chat:backfill:lock chat:unstored");
    uns_add(m, 1, "1");
    uns_add(m, 1, "bogus");
    uns_add(m, 1, "bogus2");
    uint64_t c0 = counter("chat_bus_backfill_checked_total");
    /* a tick every 300 ms, 1 seq per room and round: "1", then "bogus"
     * (limited: "bogus2" is left) for ever */
    node *k = node_new_checking_opts("K", rurl, 1000, 600, 0, 1);
    k->check_all_stored = 1;
    WAIT(rc_int("ZSCORE chat:{%s}:unstored 1", m) == 0, 3000);
    CHECK(k->nchecks == 1 && k->check_sizes[0] == 1 && asked_count(k, m, 1) == 1,
          "the well-formed pair asked");
    CHECK(counter("chat_bus_backfill_checked_total") - c0 == 1, "one pair counted (%" PRIu64 ")",
          counter("chat_bus_backfill_checked_total") - c0);
    uint64_t r0 = bus_backfill_rounds(k->b), t0 = mono_ms();
    spin(700);
    uint64_t rounds = bus_backfill_rounds(k->b) - r0, el = mono_ms() - t0;
    CHECK(rounds <= el / 300 + 2, "rounds of malformed members only: one per tick (%" PRIu64
          " in %" PRIu64 " ms)", rounds, el);
    CHECK(k->nchecks == 1 && counter("chat_bus_backfill_checked_total") - c0 == 1,
          "no check of malformed members, none counted");
    node_free(k);
    rc_int("DEL chat:{%s}:unstored chat:unstored", m);
    settle();
}

/* a settle of two calls (500 pairs of one room, 1 of another): the second
 * fails (a Redis error reply) while the first is applied; the failed one's
 * pair is asked again by the next round, and the sweeper goes on */
static void test_backfill_settle_chunk_fails(void)
{
    char r1[80], r2[80];
    mkroom(r1, sizeof r1, "bfcf1");
    mkroom(r2, sizeof r2, "bfcf2");
    rc_int("DEL chat:backfill:lock chat:unstored");
    for (int s = 1; s <= BUS_SETTLE_CHUNK; s++) {
        char mem[16];
        snprintf(mem, sizeof mem, "%d", s);
        uns_add(r1, 1, mem);
    }
    uns_add(r2, 2, "1");
    node *k = node_new_checking_opts("K", rurl, 1000, 600, 0, 1000);
    k->check_hold = 1;
    k->check_all_stored = 1;
    WAIT(k->held_check != NULL, 3000);
    CHECK(k->held_check && k->held_n == BUS_SETTLE_CHUNK + 1, "one round of %d pairs (%zu)",
          BUS_SETTLE_CHUNK + 1, k->held_n);
    rc_int("DEL chat:{%s}:unstored", r2);
    rc_int("SET chat:{%s}:unstored garbage", r2);
    check_answer_held(k);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", r1) == 0, 2000);
    CHECK(rc_int("EXISTS chat:{%s}:unstored", r1) == 0 && bus_backfill_settles(k->b) == 2,
          "two settles sent, the first applied (%" PRIu64 ")", bus_backfill_settles(k->b));
    spin(50);
    redisReply *g = rc("GET chat:{%s}:unstored", r2);
    CHECK(g && g->type == REDIS_REPLY_STRING && strcmp(g->str, "garbage") == 0,
          "the second failed (nothing changed)");
    if (g) freeReplyObject(g);
    /* r2 recorded again: the next round asks it and settles it */
    rc_int("DEL chat:{%s}:unstored", r2);
    uns_add(r2, 2, "1");
    WAIT(rc_int("EXISTS chat:unstored") == 0, 3000);
    CHECK(rc_int("EXISTS chat:unstored") == 0 && k->nchecks >= 2 && k->check_sizes[1] == 1,
          "the next round settles r2 (%d checks)", k->nchecks);
    CHECK(k->nuns == 0, "nothing offered");
    node_free(k);
    settle();
}

/* a mark that forgets a pair while the round's check is in flight: the
 * settle skips it (neither offered nor counted lost); the other missing
 * pair of the round is offered */
static void test_backfill_settle_after_mark(void)
{
    char room[80];
    mkroom(room, sizeof room, "bfmarked");
    rc_int("DEL chat:backfill:lock chat:unstored");
    node *a = ready(node_new_checking("A", rurl, 60000));
    pub_many(a, room, 2);
    spin(650);
    uint64_t lost0 = counter("chat_bus_backfill_lost_total");
    node *k = node_new_checking("K", rurl, 600);
    k->check_hold = 1;
    WAIT(k->held_check != NULL, 3000);
    CHECK(k->held_check && k->held_n == 2, "the round lists seqs 1 and 2 (%zu)", k->held_n);
    mark(a, room, 1);
    WAIT(rc_int("ZSCORE chat:{%s}:unstored 1", room) == 0, 2000);
    CHECK(rc_int("ZCARD chat:{%s}:unstored", room) == 1, "seq 1 marked meanwhile");
    check_answer_held(k); /* history holds neither */
    WAIT(uns_count(k, room, 2) >= 1, 2000);
    spin(50);
    CHECK(uns_count(k, room, 2) == 1 && uns_count(k, room, 1) == 0 && k->nuns == 1,
          "seq 2 offered, seq 1 skipped");
    CHECK(counter("chat_bus_backfill_lost_total") == lost0, "nothing counted lost");
    mark(a, room, 2);
    WAIT(rc_int("EXISTS chat:{%s}:unstored", room) == 0, 2000);
    node_free(a);
    node_free(k);
    settle();
}

/* in-process mode: no backfill (marks are no-ops, on_unstored never fires) */
static void test_local_backfill_off(void)
{
    node *l = node_new_checking_recent("L", NULL, 10, 200);
    snprintf(l->room, sizeof l->room, "lb");
    sub(l, "lb");
    pubres p;
    pub(l, "lb", NULL, "x", &p);
    WAIT(p.done, 1000);
    mark(l, "lb", p.seq);
    mark(l, "lb", 99);
    spin(300);
    CHECK(p.status == 0 && l->nuns == 0 && bus_backfill_rounds(l->b) == 0, "no backfill in-process");
    node_free(l);
    settle();
}

static void test_restart(void)
{
    if (!own_redis) {
        fprintf(stderr, "skip restart test: CHATD_TEST_REDIS_URL is not ours to kill\n");
        return;
    }
    char room[80];
    mkroom(room, sizeof room, "restart");
    node *a = node_new("RA", rurl, 1000, 60), *b = node_new("RB", rurl, 1000, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    snprintf(b->room, sizeof b->room, "%s", room);
    wait_ready(a);
    wait_ready(b);
    sub(a, room);
    sub(b, room);
    synced(a, room);
    synced(b, room);
    static streamer sa, sb;
    memset(&sa, 0, sizeof sa);
    memset(&sb, 0, sizeof sb);
    streamer *ss[2] = {&sa, &sb};
    node *nn[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        ss[i]->nd = nn[i];
        ss[i]->room = room;
        uv_timer_init(loop, &ss[i]->t);
        ss[i]->t.data = ss[i];
        uv_timer_start(&ss[i]->t, stream_tick, 2, 2);
    }
    spin(150);
    sc_close();
    rp_signal(rsrv, SIGKILL);
    WAIT(!bus_ready(a->b) && !bus_ready(b->b), 3000);
    CHECK(!bus_ready(a->b) && !bus_ready(b->b), "both nodes down");
    spin(300);
    CHECK(redis_start() == 0, "redis restarted");
    WAIT(bus_ready(a->b) && bus_ready(b->b), 8000);
    CHECK(bus_ready(a->b) && bus_ready(b->b), "both nodes ready again");
    spin(150);
    sa.stop = sb.stop = 1;
    for (int i = 0; i < 2; i++) uv_timer_stop(&ss[i]->t);
    /* wait for every publish to be answered */
    WAIT(all_answered(ss, 2), 5000);
    uint64_t head = (uint64_t)rc_int("GET chat:{%s}:seq", room);
    WAIT(a->n && b->n && a->seqs[a->n - 1] == head && b->seqs[b->n - 1] == head, 5000);
    int ok = 0, failed = 0;
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < ss[k]->sent; j++) {
            CHECK(ss[k]->res[j].done == 1, "answered");
            if (ss[k]->res[j].status == 0) ok++; else failed++;
        }
    fprintf(stderr, "restart: %d ok, %d status -1, %d refused (-1), head %" PRIu64 ", A %zu B %zu\n",
            ok, failed, sa.refused + sb.refused, head, a->n, b->n);
    CHECK(sa.refused + sb.refused + failed > 0, "some publishes failed while down");
    CHECK(contiguous(a, 1, head) && contiguous(b, 1, head), "A and B see 1..%" PRIu64, head);
    CHECK(a->ngaps == 0 && b->ngaps == 0 && a->dup_or_disorder == 0 && b->dup_or_disorder == 0,
          "no gap, no duplicate, no disorder");
    CHECK((uint64_t)ok <= head, "every ok publish has its own seq");
    int seenready0 = 0;
    for (int i = 0; i < a->nready; i++) if (a->ready_log[i] == 0) seenready0 = 1;
    CHECK(seenready0 && a->nready && a->ready_log[a->nready - 1] == 1, "ready went 0 then 1");
    for (int i = 0; i < 2; i++) uv_close((uv_handle_t *)&ss[i]->t, NULL);
    node_free(a);
    node_free(b);
    settle();
}

/* Redis restarts EMPTY (data lost): seqs never go back. The subscribed node
 * raises the seq key to what it delivered at the resync, and a publish
 * carries the node's floor, so no acked seq is ever assigned again. */
static void test_restart_empty(void)
{
    if (!own_redis) return;
    char room[80];
    mkroom(room, sizeof room, "empty");
    node *a = node_new("EA", rurl, 1000, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    synced(a, room);
    pubres p[5];
    for (int i = 0; i < 5; i++) pub(a, room, NULL, "before", &p[i]);
    WAIT(a->n == 5, 3000);
    CHECK(contiguous(a, 1, 5), "1..5 before (n=%zu)", a->n);
    sc_close();
    rp_signal(rsrv, SIGKILL);
    WAIT(!bus_ready(a->b), 3000);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'/* 2>/dev/null", rp_all[rsrv].dir);
    CHECK(system(cmd) == 0, "redis data removed");
    CHECK(redis_start() == 0, "redis restarted empty");
    WAIT(bus_ready(a->b), 8000);
    CHECK(bus_ready(a->b), "ready again");
    CHECK(rc_int("GET chat:{%s}:seq", room) == 5, "seq raised to 5 at the resync (%lld)",
          rc_int("GET chat:{%s}:seq", room));
    pubres r1;
    pub(a, room, NULL, "after", &r1);
    WAIT(r1.done && a->n == 6, 3000);
    CHECK(r1.status == 0 && r1.seq == 6, "seq 6 after the empty restart (%" PRIu64 ")", r1.seq);
    CHECK(contiguous(a, 1, 6) && a->ngaps == 0 && a->dup_or_disorder == 0,
          "A sees 1..6 once each (n=%zu)", a->n);
    /* a second node, subscribed after the restart, continues after 6 */
    node *b = node_new("EB", rurl, 1000, 60);
    snprintf(b->room, sizeof b->room, "%s", room);
    wait_ready(b);
    sub(b, room);
    synced(b, room);
    pub(b, room, NULL, "from-b", &r1);
    WAIT(r1.done && a->n == 7 && b->n == 1, 3000);
    CHECK(r1.seq == 7 && a->n == 7 && b->n == 1 && b->seqs[0] == 7, "B publishes 7, both see it");
    node_free(a);
    node_free(b);
    settle();
}

static int is_hex16(const char *s)
{
    if (strlen(s) != 16) return 0;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f'))) return 0;
    return 1;
}

/* replay of the head only, synchronously */
static void head_of(node *nd, const char *room, repres *r)
{
    if (replay(nd, room, UINT64_MAX, 0, r) != 0) { CHECK(0, "head replay refused"); return; }
    WAIT(r->done, 5000);
}

/* With a seed provider (Postgres holds history): a room without a seq key
 * (first use, Redis lost its data) is seeded from the durable head before
 * any seq is handed out or any head reported, atomically; concurrent
 * publishes share one seed request; a failing provider makes publishes
 * answer -1 and creates nothing; a node subscribed to a room with no head
 * takes the first message as its start (no gap reported). */
static void test_seed_redis(void)
{
    char room[80], room2[80], room3[80];
    mkroom(room, sizeof room, "seed");
    mkroom(room2, sizeof room2, "seedsub");
    mkroom(room3, sizeof room3, "seedfail");
    node *a = node_new_seeded("SA", rurl, 41, "epoch-pg-1");
    snprintf(a->room, sizeof a->room, "%s", room2);
    wait_ready(a);
    sub(a, room); /* a publishing node holds the room (its floor counts) */
    /* 20 concurrent publishes to a room Redis knows nothing about */
    pubres p[20];
    for (int i = 0; i < 20; i++) CHECK(pub(a, room, NULL, "s", &p[i]) == 0, "publish queued");
    int done = 0;
    for (int k = 0; k < 300 && done < 20; k++) {
        spin(10);
        done = 0;
        for (int i = 0; i < 20; i++) done += p[i].done;
    }
    uint64_t seen = 0;
    for (int i = 0; i < 20; i++) {
        CHECK(p[i].done && p[i].status == 0 && p[i].seq >= 42 && p[i].seq <= 61,
              "publish %d after the seed: status %d seq %" PRIu64, i, p[i].status, p[i].seq);
        if (p[i].seq >= 42 && p[i].seq <= 61) seen |= 1ull << (p[i].seq - 42);
    }
    CHECK(seen == (1ull << 20) - 1, "seqs 42..61 once each");
    CHECK(a->nseeds == 1, "one seed request for 20 publishes (%d)", a->nseeds);
    char *ep = NULL;
    redisReply *rr = rc("GET chat:{%s}:epoch", room);
    if (rr && rr->type == REDIS_REPLY_STRING) ep = strdup(rr->str);
    freeReplyObject(rr);
    CHECK(ep && strcmp(ep, "epoch-pg-1") == 0, "epoch key from the provider (%s)", ep ? ep : "-");
    free(ep);
    repres r;
    head_of(a, room, &r);
    CHECK(r.status == 0 && r.head == 61 && strcmp(r.epoch, "epoch-pg-1") == 0,
          "head 61, provider epoch (%d %" PRIu64 " %s)", r.status, r.head, r.epoch);
    CHECK(a->nseeds == 1, "a head read with keys present asks nothing");
    /* Redis loses the room's keys: the next publish is seeded again, from
     * what is "stored" now (61), never reusing a seq */
    rc_int("DEL chat:{%s}:seq chat:{%s}:epoch", room, room);
    a->seed_max = 61;
    pubres q;
    pub(a, room, "id-x", "again", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.seq == 62 && !q.dup, "62 after the loss (%d %" PRIu64 ")", q.status, q.seq);
    CHECK(a->nseeds == 2, "seeded again");
    /* the provider's head is below the node's floor (this node was acked 62):
     * the floor wins */
    rc_int("DEL chat:{%s}:seq chat:{%s}:epoch", room, room);
    a->seed_max = 10;
    head_of(a, room, &r);
    CHECK(r.status == 0 && r.head >= 10, "head after a stale seed (%" PRIu64 ")", r.head);
    pub(a, room, NULL, "floor", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.seq > 62, "never below the node's acked 62 (%" PRIu64 ")", q.seq);
    /* a replay with since on a room without keys: seeded first, then the
     * range (empty buffer: status 1, the caller pages history) */
    rc_int("DEL chat:{%s}:seq chat:{%s}:epoch chat:{%s}:recent", room, room, room);
    a->seed_max = 100;
    if (replay(a, room, 90, 50, &r) == 0) WAIT(r.done, 5000);
    CHECK(r.done && r.status == 1 && r.head == 100 && strcmp(r.epoch, "epoch-pg-1") == 0,
          "replay since 90 after the loss: status %d head %" PRIu64, r.status, r.head);
    /* subscribe a room with no head: adopted at the first message */
    a->seed_max = 500;
    sub(a, room2);
    spin(300);
    CHECK(rc_int("EXISTS chat:{%s}:seq", room2) == 0, "the subscription created no key");
    synced(a, room2); /* a head read: seeds (500) */
    node *b = node_new_seeded("SB", rurl, 500, "epoch-pg-2");
    wait_ready(b);
    pub(b, room2, NULL, "first", &q);
    WAIT(q.done && a->n == 1, 5000);
    CHECK(q.status == 0 && q.seq == 501, "first seq of a seeded room (%" PRIu64 ")", q.seq);
    CHECK(a->n == 1 && a->seqs[0] == 501 && a->ngaps == 0,
          "subscriber got 501 with no gap (n=%zu gaps=%d)", a->n, a->ngaps);
    pub(b, room2, NULL, "second", &q);
    WAIT(a->n == 2, 3000);
    CHECK(contiguous(a, 501, 502), "then 502");
    /* a failing provider: -1, nothing created; later it works */
    b->seed_fail = 1;
    pub(b, room3, NULL, "x", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == -1, "publish without a head answers -1 (%d)", q.status);
    head_of(b, room3, &r);
    CHECK(r.status == -1, "head read without a head answers -1 (%d)", r.status);
    CHECK(rc_int("EXISTS chat:{%s}:seq", room3) == 0, "nothing created");
    b->seed_fail = 0;
    b->seed_max = 7;
    pub(b, room3, NULL, "x", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.seq == 8, "then 8 (%d %" PRIu64 ")", q.status, q.seq);
    node_free(a);
    node_free(b);
    settle();
}

/* Redis restarts empty under a subscribed node that has a seed provider:
 * the resync seeds the head from max(durable head, what the node delivered),
 * never from the node's floor alone (other nodes may have stored more), and
 * reports what the node missed as a gap. */
static void test_seed_resync(void)
{
    if (!own_redis) return;
    char room[80];
    mkroom(room, sizeof room, "seedresync");
    node *a = node_new_seeded("SR", rurl, 0, "ep-r");
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    synced(a, room);
    pubres p[3];
    for (int i = 0; i < 3; i++) pub(a, room, NULL, "x", &p[i]);
    WAIT(a->n == 3, 3000);
    CHECK(contiguous(a, 1, 3), "1..3 before");
    sc_close();
    rp_signal(rsrv, SIGKILL);
    WAIT(!bus_ready(a->b), 3000);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'/* 2>/dev/null", rp_all[rsrv].dir);
    CHECK(system(cmd) == 0, "redis data removed");
    a->seed_max = 8; /* another node stored 4..8 before the loss */
    int seeds0 = a->nseeds;
    CHECK(redis_start() == 0, "redis restarted empty");
    WAIT(bus_ready(a->b), 8000);
    CHECK(bus_ready(a->b), "ready again");
    CHECK(a->nseeds == seeds0 + 1, "the resync asked for the durable head (%d)", a->nseeds - seeds0);
    CHECK(rc_int("GET chat:{%s}:seq", room) == 8, "head seeded to 8 (%lld)",
          rc_int("GET chat:{%s}:seq", room));
    pubres q;
    pub(a, room, NULL, "after", &q);
    WAIT(q.done && a->n == 4, 3000);
    CHECK(q.status == 0 && q.seq == 9, "next seq 9 (%" PRIu64 ")", q.seq);
    CHECK(a->n == 4 && a->seqs[3] == 9 && a->ngaps == 1 && a->gap_from[0] == 4 && a->gap_to[0] == 8,
          "delivered 9, gap 4..8 reported (n=%zu gaps=%d)", a->n, a->ngaps);
    node_free(a);
    settle();
}

/* Redis restarts BEHIND (an older snapshot, an AOF fsynced every second
 * and a host crash, a replica promoted before it had the last writes): the
 * seq key is present but below what Postgres stored. Every head written
 * under another Redis run counts as unknown: the next publish, head read or
 * resync asks the provider and raises the head to max(stored, floor) before
 * a seq is handed out. Node B never held the room (floor 0), so only the
 * run check stands between it and handing out seq 4 again. */
static void test_seed_behind(void)
{
    if (!own_redis) return;
    char room[80], url[64];
    mkroom(room, sizeof room, "behind");
    int snap = rp_start((char *)NULL); /* RDB only, saved when told */
    CHECK(snap >= 0, "second redis-server started");
    if (snap < 0) return;
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", rp_all[snap].port);
    node *a = node_new_seeded("BA", url, 0, "ep-b");
    wait_ready(a);
    pubres p[6];
    for (int i = 0; i < 3; i++) { pub(a, room, NULL, "x", &p[i]); WAIT(p[i].done, 3000); }
    CHECK(p[2].status == 0 && p[2].seq == 3, "1..3 (%" PRIu64 ")", p[2].seq);
    redisReply *rr = rp_cmd(snap, "SAVE");
    CHECK(rr && rr->type == REDIS_REPLY_STATUS, "snapshot at seq 3");
    freeReplyObject(rr);
    for (int i = 3; i < 6; i++) { pub(a, room, NULL, "x", &p[i]); WAIT(p[i].done, 3000); }
    CHECK(p[5].status == 0 && p[5].seq == 6, "4..6 after the snapshot (%" PRIu64 ")", p[5].seq);
    node_free(a);
    CHECK(rp_restart(snap) == 0, "redis restarted from the snapshot");
    rr = rp_cmd(snap, "GET chat:{%s}:seq", room);
    CHECK(rr && rr->type == REDIS_REPLY_STRING && strcmp(rr->str, "3") == 0,
          "Redis is behind: its head is 3 (%s)", rr && rr->type == REDIS_REPLY_STRING ? rr->str : "-");
    freeReplyObject(rr);
    /* Postgres stored 1..6 */
    node *b = node_new_seeded("BB", url, 6, "ep-b");
    wait_ready(b);
    repres r;
    head_of(b, room, &r);
    CHECK(r.status == 0 && r.head == 6, "head read: 6, not the stale 3 (%d %" PRIu64 ")", r.status, r.head);
    pubres q;
    pub(b, room, "id-behind", "after", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.seq == 7 && !q.dup, "next seq 7, not 4 again (%d %" PRIu64 ")", q.status, q.seq);
    CHECK(b->nseeds == 1, "one seed for the restarted Redis (%d)", b->nseeds);
    pub(b, room, NULL, "more", &q);
    WAIT(q.done, 5000);
    CHECK(q.status == 0 && q.seq == 8 && b->nseeds == 1, "8, no seed while the run stays (%" PRIu64 " %d)",
          q.seq, b->nseeds);
    node_free(b);
    rp_signal(snap, SIGKILL);
    settle();
}

/* bus_free while a seed request is with the provider: the waiting publish
 * and replay answer -1 once; answering afterwards only frees the request. */
static void test_seed_free_pending(const char *url)
{
    char room[80];
    mkroom(room, sizeof room, url ? "seedfree" : "seedfreel");
    node *a = node_new_seeded("SF", url, 5, "ep");
    if (url) wait_ready(a);
    a->seed_hold = 1;
    pubres p;
    repres r;
    pub(a, room, NULL, "x", &p);
    replay(a, room, 2, 10, &r);
    WAIT(a->nheld >= 1, 3000);
    CHECK(a->nheld == 1 && !p.done && !r.done, "both wait for one seed (%d)", a->nheld);
    bus_free(a->b); /* answers inside, by contract */
    a->b = NULL;
    CHECK(p.done == 1 && p.status == -1 && r.done == 1 && r.status == -1, "answered -1");
    seed_answer(a); /* after the bus is gone */
    settle();
    CHECK(p.done == 1 && r.done == 1, "once");
    free(a);
}

/* Without a provider: a room's epoch is created with its seq key, stays,
 * and changes when Redis loses the keys (the head restarts). */
static void test_epoch_redis(void)
{
    char room[80];
    mkroom(room, sizeof room, "epoch");
    node *a = node_new("EP", rurl, 1000, 60);
    wait_ready(a);
    repres r, r2;
    head_of(a, room, &r);
    CHECK(r.status == 0 && r.head == 0 && is_hex16(r.epoch), "fresh room: head 0, epoch %s", r.epoch);
    pubres p;
    pub(a, room, NULL, "x", &p);
    WAIT(p.done, 3000);
    CHECK(p.seq == 1, "seq 1");
    head_of(a, room, &r2);
    CHECK(r2.head == 1 && strcmp(r.epoch, r2.epoch) == 0, "same epoch after a publish");
    rc_int("DEL chat:{%s}:seq chat:{%s}:epoch", room, room);
    head_of(a, room, &r2);
    CHECK(r2.status == 0 && is_hex16(r2.epoch) && strcmp(r.epoch, r2.epoch) != 0,
          "a lost head shows as a new epoch (%s -> %s)", r.epoch, r2.epoch);
    /* a publish on a room with no keys creates both */
    char room2[80];
    mkroom(room2, sizeof room2, "epoch2");
    pub(a, room2, NULL, "x", &p);
    WAIT(p.done, 3000);
    CHECK(p.seq == 1 && rc_int("EXISTS chat:{%s}:epoch", room2) == 1, "publish creates the epoch");
    node_free(a);
    settle();
}

/* In-process mode: with a provider a room starts at the durable head (its
 * publishes and replays wait for it, in order), a subscriber adopts the
 * first message; without one, every room has the process's epoch. */
static void test_local_seed(void)
{
    char room[80];
    mkroom(room, sizeof room, "lseed");
    node *a = node_new_seeded("LS", NULL, 30, "pg-epoch");
    snprintf(a->room, sizeof a->room, "%s", room);
    sub(a, room);
    repres r0;
    replay(a, room, 30, 10, &r0);
    pubres p[5];
    for (int i = 0; i < 5; i++) pub(a, room, NULL, "l", &p[i]);
    WAIT(p[4].done && a->n == 5, 3000);
    for (int i = 0; i < 5; i++)
        CHECK(p[i].status == 0 && p[i].seq == 31 + (uint64_t)i, "local seq %" PRIu64, p[i].seq);
    CHECK(contiguous(a, 31, 35) && a->ngaps == 0, "subscriber sees 31..35, no gap (n=%zu)", a->n);
    CHECK(a->nseeds == 1, "one seed (%d)", a->nseeds);
    CHECK(r0.done && r0.status == 0 && r0.head == 30 && r0.n == 0 &&
          strcmp(r0.epoch, "pg-epoch") == 0, "replay queued before the publishes: head 30 (%" PRIu64 ")",
          r0.head);
    repres r;
    head_of(a, room, &r);
    CHECK(r.head == 35 && strcmp(r.epoch, "pg-epoch") == 0, "head 35");
    node_free(a);
    node *b = node_new("LN", NULL, 100, 60);
    repres e1, e2;
    head_of(b, "any-room-1", &e1);
    head_of(b, "any-room-2", &e2);
    CHECK(is_hex16(e1.epoch) && strcmp(e1.epoch, e2.epoch) == 0, "one epoch per process start");
    node_free(b);
    node *c = node_new("LN2", NULL, 100, 60);
    head_of(c, "any-room-1", &e2);
    CHECK(strcmp(e1.epoch, e2.epoch) != 0, "a new bus (process) has a new epoch");
    node_free(c);
    settle();
}

/* The core's recovery contract: a replay on a room this node subscribed
 * answers only once the subscription is confirmed and its head read, so
 * every seq after the replay's head reaches on_message (no hole between
 * replay and live), while another node keeps publishing. */
/* (recent buffers large enough that the replay from 0 is always served by
 * the buffer however slow the machine: the streamer may pass 1000 seqs) */
static void test_replay_then_live(void)
{
    node *b = node_new("LB", rurl, 1000000, 60);
    wait_ready(b);
    srand(seed);
    for (int round = 0; round < 6; round++) {
        char room[80], what[16];
        snprintf(what, sizeof what, "rtl%d", round);
        mkroom(room, sizeof room, what);
        static streamer st;
        memset(&st, 0, sizeof st);
        st.nd = b;
        st.room = room;
        uv_timer_init(loop, &st.t);
        st.t.data = &st;
        uv_timer_start(&st.t, stream_burst, 1, 1);
        spin(20 + rand() % 80);
        node *a = node_new("LA", rurl, 1000000, 60);
        snprintf(a->room, sizeof a->room, "%s", room);
        wait_ready(a);
        spin(rand() % 30);
        sub(a, room);
        repres r;
        CHECK(replay(a, room, 0, 100000, &r) == 0, "replay queued");
        WAIT(r.done, 5000);
        spin(30 + rand() % 50);
        st.stop = 1;
        uv_timer_stop(&st.t);
        streamer *ss[1] = {&st};
        WAIT(all_answered(ss, 1), 5000);
        uint64_t head = (uint64_t)rc_int("GET chat:{%s}:seq", room);
        WAIT(a->n && a->seqs[a->n - 1] == head, 3000);
        CHECK(r.done == 1 && r.status == 0 && r.contiguous && r.head >= 1 &&
                  (r.n == 0 || (r.first == 1 && r.last == r.head)),
              "replay 1..head (status %d n %zu first %" PRIu64 " last %" PRIu64 " head %" PRIu64
              ")", r.status, r.n, r.first, r.last, r.head);
        CHECK(head > r.head, "publishing went on after the replay (%" PRIu64 " > %" PRIu64 ")",
              head, r.head);
        CHECK(a->n && a->seqs[0] <= r.head + 1 && contiguous(a, a->seqs[0], head) &&
                  a->ngaps == 0,
              "round %d: live %" PRIu64 "..%" PRIu64 " covers %" PRIu64 "..%" PRIu64 " (n=%zu)",
              round, a->n ? a->seqs[0] : 0, a->n ? a->seqs[a->n - 1] : 0, r.head + 1, head, a->n);
        uv_close((uv_handle_t *)&st.t, NULL);
        node_free(a);
        spin(30); /* b stays up: settle() would wait for it */
    }
    node_free(b);
    settle();
}

/* the last unsubscribe of a room with a replay waiting for its sync: the
 * replay is answered from the loop, never inside bus_unsubscribe */
static void test_unsub_waiting_replay(void)
{
    char room[80];
    mkroom(room, sizeof room, "unsubw");
    node *a = node_new("U", rurl, 1000, 60);
    wait_ready(a);
    sub(a, room);
    repres w;
    CHECK(replay(a, room, 0, 10, &w) == 0, "replay queued");
    unsub(a, room); /* in_call is set: a callback here fails the test */
    WAIT(w.done, 3000);
    CHECK(w.done == 1 && w.status == 0 && w.n == 0, "waiting replay answered (%d, %d)", w.done,
          w.status);
    node_free(a);
    settle();
}

static void test_free_pending(void)
{
    char room[80];
    mkroom(room, sizeof room, "free");
    node *a = node_new("F", rurl, 1000, 60);
    wait_ready(a);
    sub(a, room);
    pubres p[5];
    repres r, w;
    for (int i = 0; i < 5; i++) pub(a, room, NULL, "f", &p[i]);
    replay(a, room, 0, 10, &w); /* waits for the room's sync */
    replay(a, "other", 0, 10, &r);
    node_free(a);
    for (int i = 0; i < 5; i++) CHECK(p[i].done == 1 && p[i].status == -1, "publish %d cancelled", i);
    CHECK(r.done == 1 && r.status == -1 && w.done == 1 && w.status == -1, "replays cancelled");
    settle();
    /* a bus that never reached Redis frees cleanly too */
    char url[64];
    int dead = rp_pick_port();   /* free: nothing listens there */
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", dead);
    node *d = node_new("D", url, 0, 0);
    spin(200);
    CHECK(!bus_ready(d->b) && d->nready == 0, "never ready");
    in_call = 1;
    CHECK(bus_publish(d->b, room, NULL, "x", 1, pub_cb, &p[0]) == -1, "refused");
    in_call = 0;
    node_free(d);
    settle();
}

/* bus_free called from inside on_message, with publishes pending */
static void test_free_in_callback(const char *url)
{
    char room[80];
    mkroom(room, sizeof room, url ? "fcb" : "lfcb");
    node *a = node_new("FC", url, 100, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    if (url) wait_ready(a);
    sub(a, room);
    if (url) synced(a, room);
    a->free_on_message = 1;
    pubres p[4];
    for (int i = 0; i < 4; i++) pub(a, room, NULL, "x", &p[i]);
    WAIT(a->b == NULL, 3000);
    CHECK(a->b == NULL && a->n == 1, "freed from on_message");
    settle();
    for (int i = 0; i < 4; i++) CHECK(p[i].done == 1, "publish %d answered once", i);
    node_free(a);
}

/* a Redis that stops answering (SIGSTOP) is detected by the health PING:
 * pending publishes answer -1, ready goes 0, and 1 again after SIGCONT */
static void test_stalled(void)
{
    if (!own_redis) return;
    char room[80];
    mkroom(room, sizeof room, "stall");
    node *a = node_new("S", rurl, 1000, 60);
    snprintf(a->room, sizeof a->room, "%s", room);
    wait_ready(a);
    sub(a, room);
    synced(a, room);
    rp_signal(rsrv, SIGSTOP);
    pubres p[3];
    for (int i = 0; i < 3; i++) CHECK(pub(a, room, NULL, "st", &p[i]) == 0, "queued");
    WAIT(!bus_ready(a->b) && p[0].done && p[1].done && p[2].done, 12000);
    CHECK(!bus_ready(a->b), "stall detected");
    for (int i = 0; i < 3; i++) CHECK(p[i].done == 1 && p[i].status == -1, "pending publish -1");
    rp_signal(rsrv, SIGCONT);
    WAIT(bus_ready(a->b), 8000);
    CHECK(bus_ready(a->b), "ready after SIGCONT");
    pubres q;
    pub(a, room, NULL, "after", &q);
    WAIT(q.done, 3000);
    WAIT(a->n && a->seqs[a->n - 1] == q.seq, 3000);
    /* the stalled publishes may have run once Redis woke up: delivered once */
    CHECK(q.status == 0 && a->n == q.seq && contiguous(a, 1, q.seq), "in order, n=%zu seq=%" PRIu64,
          a->n, q.seq);
    sc_close();
    CHECK(sc_connect(3000) == 0, "sync client back");
    node_free(a);
    settle();
}

/* ---------------- Redis Cluster (3 masters started here) ---------------- */

static int cl_first = -1;
static char cl_url[128];

/* A room's slot moves to another master while a node publishes into it:
 * the old owner drops the subscriptions (sunsubscribe), the buses
 * resubscribe at the new owner, publishes follow ASK/TRYAGAIN/MOVED; both
 * subscribers see every acked seq once, in order, with no gap. */
static void test_cluster_slot_move(void)
{
    node *a = node_new("CA", cl_url, 1000, 60), *b = node_new("CB", cl_url, 1000, 60);
    wait_ready(a);
    wait_ready(b);
    char room[80];
    mkroom(room, sizeof room, "move");
    snprintf(a->room, sizeof a->room, "%s", room);
    snprintf(b->room, sizeof b->room, "%s", room);
    sub(a, room);
    sub(b, room);
    synced(a, room);
    synced(b, room);
    int slot = redis_room_slot(room);
    int src = rp_slot_owner(cl_first, 3, slot);
    int dst = src == cl_first ? cl_first + 1 : cl_first;
    static streamer st;
    memset(&st, 0, sizeof st);
    st.nd = a;
    st.room = room;
    uv_timer_init(loop, &st.t);
    st.t.data = &st;
    uv_timer_start(&st.t, stream_tick, 1, 1);
    spin(200);
    CHECK(rp_move_slot_step(cl_first, 3, slot, src, dst, 1) == 0, "importing/migrating");
    spin(150);
    int keys = 0;
    while (rp_move_slot_step(cl_first, 3, slot, src, dst, 2) > 0 && keys < 100) {
        keys++;
        spin(20); /* publishes meet a room split between two masters */
    }
    spin(100);
    rp_move_slot_step(cl_first, 3, slot, src, dst, 3);
    spin(400);
    st.stop = 1;
    uv_timer_stop(&st.t);
    streamer *ss[1] = {&st};
    WAIT(all_answered(ss, 1), 8000);
    uint64_t maxseq = 0;
    int acked = 0;
    for (int i = 0; i < st.sent; i++)
        if (st.res[i].done && st.res[i].status == 0) {
            acked++;
            if (st.res[i].seq > maxseq) maxseq = st.res[i].seq;
        }
    WAIT(a->n >= maxseq && b->n >= maxseq, 8000);
    fprintf(stderr, "cluster slot move: slot %d %d->%d, %d keys moved, %d sent, %d acked, "
            "%d refused, B got %zu\n", slot, rp_all[src].port, rp_all[dst].port, keys, st.sent,
            acked, st.refused, b->n);
    CHECK(keys >= 2 && st.sent > 200, "the room had keys and traffic (%d keys, %d sent)", keys,
          st.sent);
    CHECK(acked == st.sent, "every publish acked across the move (%d of %d)", acked, st.sent);
    CHECK(maxseq == (uint64_t)acked, "seqs 1..%d (max %" PRIu64 ")", acked, maxseq);
    for (node *nd = a; nd; nd = nd == a ? b : NULL) {
        CHECK(nd->n == maxseq && contiguous(nd, 1, maxseq) && nd->ngaps == 0 &&
              nd->dup_or_disorder == 0,
              "%s: %zu messages, contiguous 1..%" PRIu64 ", %d gaps, %d dup/disorder", nd->name,
              nd->n, maxseq, nd->ngaps, nd->dup_or_disorder);
    }
    char why[300];
    CHECK(bus_health(a->b, why, sizeof why) == 1, "healthy after the move: %s", why);
    uv_close((uv_handle_t *)&st.t, NULL);
    node_free(a);
    node_free(b);
    settle();
}

/* Issue 11 defect 9: a redis:// URL at a Cluster node. Rooms of other
 * slots answer MOVED: the bus retries them with a growing delay, never
 * reconnects, and says what is wrong. */
static void test_cluster_node_as_standalone(void)
{
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", rp_all[cl_first].port);
    uint64_t rc0 = counter("chat_redis_reconnects_total");
    node *a = node_new("SA", url, 1000, 60);
    WAIT(bus_ready(a->b), 3000);
    char room[80], elsewhere[80] = "";
    for (int i = 0; i < 50 && !elsewhere[0]; i++) {
        char what[16];
        snprintf(what, sizeof what, "mv%d", i);
        mkroom(room, sizeof room, what);
        sub(a, room);
        if (rp_slot_owner(cl_first, 3, redis_room_slot(room)) != cl_first)
            snprintf(elsewhere, sizeof elsewhere, "%s", room);
    }
    pubres p;
    if (pub(a, elsewhere, NULL, "x", &p) == 0) WAIT(p.done, 3000); /* or refused at once */
    spin(1500);
    CHECK(!p.done || p.status == -1, "a publish to a room of another node fails (%d)", p.status);
    CHECK(counter("chat_redis_reconnects_total") == rc0, "no reconnect (%" PRIu64 ")",
          counter("chat_redis_reconnects_total") - rc0);
    char why[400];
    CHECK(bus_health(a->b, why, sizeof why) == 0 && strstr(why, "MOVED") &&
          strstr(why, "redis+cluster://"), "health: %s", why);
    node_free(a);
    settle();
}

int main(void)
{
    const char *s = getenv("CHATD_TEST_SEED");
    seed = s ? (unsigned)strtoul(s, NULL, 10) : (unsigned)(mono_ns() ^ (uint64_t)getpid());
    fprintf(stderr, "test_bus seed %u (CHATD_TEST_SEED=%u to repeat)\n", seed, seed);
    snprintf(nonce, sizeof nonce, "%08x", seed * 2654435761u);
    log_set_level(getenv("CHATD_TEST_DEBUG") ? LOG_DEBUG : LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    uvwait_init(loop);
    uv_unref((uv_handle_t *)&uvwait_ticker);

    test_url();
    test_local_basic();
    test_local_control();
    test_local_free_and_ttl();
    test_free_in_callback(NULL);
    test_local_backfill_off();
    test_local_seed();
    test_seed_free_pending(NULL);
    int have_redis = redis_setup() == 0;
    if (have_redis) {
        fprintf(stderr, "redis at %s\n", rurl);
        test_two_nodes();
        test_trim_replay();
        test_gap_fill();
        test_refcount();
        test_noscript();
        test_sub_churn();
        test_three_nodes();
        test_missed_while_down(1000, 5);
        test_missed_while_down(3, 10);
        test_free_pending();
        test_free_in_callback(rurl);
        test_stalled();
        test_restart();
        test_restart_empty();
        test_replay_then_live();
        test_unsub_waiting_replay();
        test_track_needs_check();
        test_backfill();
        test_backfill_check();
        test_backfill_slow_check();
        test_backfill_limits();
        test_backfill_settle_chunks();
        test_backfill_zero_pair_round();
        test_backfill_failed_round(0);
        test_backfill_failed_round(1);
        test_backfill_limit_exact();
        test_backfill_checked_wellformed();
        test_backfill_settle_chunk_fails();
        test_backfill_settle_after_mark();
        test_seed_redis();
        test_seed_resync();
        test_seed_behind();
        test_seed_free_pending(rurl);
        test_epoch_redis();
        if (rp_have_server() && (cl_first = rp_cluster(0, 2000)) >= 0) {
            snprintf(cl_url, sizeof cl_url, "redis+cluster://127.0.0.1:%d", rp_all[cl_first].port);
            test_cluster_slot_move();
            test_cluster_node_as_standalone();
        } else {
            fprintf(stderr, "no Redis Cluster (redis-cli --cluster): cluster tests skipped\n");
        }
        rp_cleanup();
    } else if (getenv("CHATD_TEST_REDIS_URL") &&
               system("command -v redis-server >/dev/null 2>&1") != 0) {
        CHECK(0, "CHATD_TEST_REDIS_URL is set but not reachable");
    } else {
        fprintf(stderr, "no redis-server: Redis tests skipped\n");
    }
    redis_cleanup();
    uvwait_close();
    uv_run(loop, UV_RUN_DEFAULT);
    int rc_ = uv_loop_close(loop);
    CHECK(rc_ == 0, "loop closed: every handle of the bus was closed (%s)", uv_err_name(rc_));
    metrics_free_all();
    if (check_failures()) fprintf(stderr, "test_bus: seed %u\n", seed);
    if (check_summary("test_bus")) return 1;
    return have_redis ? 0 : 77;
}
