/* bus_harness: the shared harness of the bus unit tests (test_bus.c,
 * test_bus_backfill.c, test_bus_seed.c): a redis-server of their own
 * (redis_procs.h, or CHATD_TEST_REDIS_URL when none is installed) with a
 * synchronous client for assertions (rc, rc_int), the test node (a bus
 * with handlers that record every callback and check that none runs inside
 * a bus_* call, a history check and a seed provider it answers), the
 * publish/replay/subscribe helpers, waits (WAIT, spin, settle, synced),
 * the publishing timer (streamer) and the begin/end of a test's main().
 * Header-only: static (inline) functions, included once by each test
 * executable. */
#ifndef CHATD_TEST_BUS_HARNESS_H
#define CHATD_TEST_BUS_HARNESS_H
#define _GNU_SOURCE
#include "bus.h"
#include "bus_int.h"
#include "check.h"
#include "config.h"
#include "uvwait.h"
#include "redis_url.h"
#include "redis_slot.h"
#include "redis_procs.h"
/* the sender of the harness's publishes (pub) and seed ids (seed_id_users NULL) */
#define PUB_USER "u"
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
static inline void spin(int ms) { run_on(loop, ms); }

/* ---------------- redis-server management ---------------- */

static int rsrv = -1;   /* our redis-server: rp_all[rsrv] (redis_procs.h) */
static char rurl[128];
static int own_redis;
static redisContext *sc; /* synchronous client for assertions */
static redis_url surl;

static inline void sc_close(void)
{
    if (sc) redisFree(sc);
    sc = NULL;
}

static inline int sc_connect(int timeout_ms)
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
static inline int redis_start(void)
{
    if (rp_restart(rsrv) != 0 || sc_connect(5000) != 0) {
        fprintf(stderr, "redis-server did not start again\n");
        return -1;
    }
    return 0;
}

static inline void redis_cleanup(void)
{
    sc_close();
    if (own_redis) rp_cleanup();
}

/* Always our own redis-server when one is installed: the tests kill
 * client connections, stop and restart the server, and would disturb (and
 * be disturbed by) anything else sharing a Redis. CHATD_TEST_REDIS_URL is
 * used only when redis-server is not installed (restart tests skipped). */
static inline int redis_setup(void)
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

static inline redisReply *rc(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = sc ? redisvCommand(sc, fmt, ap) : NULL;
    va_end(ap);
    return r;
}

static inline long long rc_int(const char *fmt, ...)
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
    /* the "stored" rows with a client id it answers with (bus_seed_add_id;
     * the bus drops those older than the window) and the window's start
     * the bus asked for (bus_seed_ids_since_ms) */
    const char *const *seed_ids;
    const char *const *seed_id_users; /* NULL: every id is PUB_USER's */
    const uint64_t *seed_id_seq, *seed_id_ts;
    size_t nseed_ids;
    uint64_t seed_since;
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

static inline void on_message(void *ud, const char *room, uint64_t seq, const char *tail, size_t len)
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

static inline void on_gap(void *ud, const char *room, uint64_t from, uint64_t to)
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

static inline void on_emit(void *ud, const char *room, const char *kind, const char *data, size_t len)
{
    node *nd = ud;
    CHECK(!in_call, "%s: on_emit inside a bus_* call", nd->name);
    if (strcmp(room, nd->room) != 0) return;
    nd->emits++;
    snprintf(nd->emit_kind, sizeof nd->emit_kind, "%s", kind);
    snprintf(nd->emit_data, sizeof nd->emit_data, "%.*s", (int)len, data);
}

static inline void on_ready(void *ud, int ready)
{
    node *nd = ud;
    CHECK(!in_call, "%s: on_ready inside a bus_* call", nd->name);
    if (nd->nready < 64) nd->ready_log[nd->nready++] = ready;
}

static inline void on_unstored(void *ud, const char *room, uint64_t seq, const char *tail, size_t len)
{
    node *nd = ud;
    CHECK(!in_call, "%s: on_unstored inside a bus_* call", nd->name);
    if (nd->nuns >= 256) return;
    snprintf(nd->uns_room[nd->nuns], sizeof nd->uns_room[0], "%s", room);
    nd->uns_seq[nd->nuns] = seq;
    snprintf(nd->uns_tail[nd->nuns], sizeof nd->uns_tail[0], "%.*s", (int)(len < 47 ? len : 47), tail);
    nd->nuns++;
}

/* the provider's answer: the stored ids (as Postgres lists them), then the head */
static inline void seed_reply(node *nd, bus_seed *req)
{
    if (!nd->seed_fail)
        for (size_t i = 0; i < nd->nseed_ids; i++)
            CHECK(bus_seed_add_id(req, nd->seed_id_users ? nd->seed_id_users[i] : PUB_USER,
                                  nd->seed_ids[i], nd->seed_id_seq[i], nd->seed_id_ts[i]) == 0,
                  "seed id added");
    bus_seed_done(req, nd->seed_fail ? -1 : 0, nd->seed_max, nd->seed_epoch);
}

static inline void on_seed(void *ud, const char *room, bus_seed *req)
{
    node *nd = ud;
    (void)room;
    nd->nseeds++;
    nd->seed_since = bus_seed_ids_since_ms(req);
    if (nd->seed_hold && nd->nheld < 64) { nd->held_seeds[nd->nheld++] = req; return; }
    /* answered at once, inside on_seed: the bus must not call back from here */
    in_call = 1;
    seed_reply(nd, req);
    in_call = 0;
}

/* answers every held seed request (bus may already be freed) */
static inline void seed_answer(node *nd)
{
    for (int i = 0; i < nd->nheld; i++) seed_reply(nd, nd->held_seeds[i]);
    nd->nheld = 0;
}

static inline void on_control(void *ud, const char *data, size_t len)
{
    node *nd = ud;
    CHECK(!in_call, "%s: on_control inside a bus_* call", nd->name);
    nd->nctl++;
    snprintf(nd->ctl_last, sizeof nd->ctl_last, "%.*s", (int)len, data);
}

static inline void on_check(void *ud, bus_check *req, size_t n, const char *const *rooms,
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
static inline node *node_start(node *nd, const char *name, bus_opts o, const bus_handlers *h)
{
    nd->name = name;
    char err[128] = "";
    in_call = 1;
    nd->b = bus_new(loop, &o, h, nd, err, sizeof err);
    in_call = 0;
    CHECK(nd->b, "bus_new: %s", err);
    return nd;
}

/* a node that asks "history" (its stored list) in its sweeper (on_check) */
static inline node *node_new_checking_opts(const char *name, const char *url, size_t recent_max,
                                    uint32_t grace_ms, uint32_t rooms, uint32_t per_room)
{
    /* 0: the settings' defaults (the bus itself has none) */
    return node_start(calloc(1, sizeof(node)), name,
                      (bus_opts){url, recent_max, 60, 1, grace_ms,
                                 rooms ? rooms : CONFIG_BACKFILL_CHECK_ROOMS,
                                 per_room ? per_room : CONFIG_BACKFILL_CHECK_PER_ROOM, 0, 0},
                      &handlers_checking);
}

static inline node *node_new_checking_recent(const char *name, const char *url, size_t recent_max,
                                      uint32_t grace_ms)
{
    return node_new_checking_opts(name, url, recent_max, grace_ms, 0, 0);
}

static inline node *node_new_checking(const char *name, const char *url, uint32_t grace_ms)
{
    return node_new_checking_recent(name, url, 1000, grace_ms);
}

/* a node with a seed provider (as with a database), tracking unstored;
 * seed_timeout_ms: bus_opts.seed_timeout_ms (0: no deadline) */
static inline node *node_new_seeded_dl(const char *name, const char *url, uint64_t seed_max,
                                       const char *epoch, uint32_t seed_timeout_ms)
{
    node *nd = calloc(1, sizeof *nd);
    nd->seed_max = seed_max;
    snprintf(nd->seed_epoch, sizeof nd->seed_epoch, "%s", epoch);
    return node_start(nd, name, (bus_opts){url, 1000, 60, url != NULL, 60000, CONFIG_BACKFILL_CHECK_ROOMS,
                                           CONFIG_BACKFILL_CHECK_PER_ROOM, 0, seed_timeout_ms},
                      &handlers_seeded);
}

static inline node *node_new_seeded(const char *name, const char *url, uint64_t seed_max,
                             const char *epoch)
{
    return node_new_seeded_dl(name, url, seed_max, epoch, 0);
}

static inline node *node_new(const char *name, const char *url, size_t recent_max, uint32_t ttl)
{
    return node_start(calloc(1, sizeof(node)), name, (bus_opts){url, recent_max, ttl, 0, 0, 0, 0, 0, 0},
                      &handlers);
}

static inline void node_free(node *nd)
{
    if (!nd) return;
    if (nd->b) bus_free(nd->b); /* cancels: callbacks with -1 run inside, by contract */
    free(nd);
}

static inline void settle(void)
{
    /* every bus handle closed: nothing else is active on the loop */
    uv_timer_stop(&uvwait_ticker);
    uv_run(loop, UV_RUN_DEFAULT);
}

static inline void sub(node *nd, const char *room)
{
    in_call = 1;
    bus_subscribe(nd->b, room);
    in_call = 0;
}

static inline void unsub(node *nd, const char *room)
{
    in_call = 1;
    bus_unsubscribe(nd->b, room);
    in_call = 0;
}

/* mark, at_ns: bus_run_mark and mono_ns inside the callback (status 0), as
 * publish.c takes them for bus_id_committed */
typedef struct pubres { int done, status, dup; uint64_t seq; bus *b; uint64_t mark, at_ns; } pubres;

static inline void pub_cb(void *ud, int status, uint64_t seq, int dup)
{
    pubres *p = ud;
    CHECK(!in_call, "publish cb inside a bus_* call");
    CHECK(!p->done, "publish cb called twice");
    p->done++;
    p->status = status;
    p->seq = seq;
    p->dup = dup;
    if (status == 0 && p->b) {
        p->mark = bus_run_mark(p->b, "");
        p->at_ns = mono_ns();
    }
}

/* a publish by user (its id is user's: bus_id_part) */
static inline int pub_as(node *nd, const char *room, const char *user, const char *id,
                         const char *body, pubres *p)
{
    char tail[2 * BUS_ID_MAX + 128]; /* the longest id fits */
    int n = snprintf(tail, sizeof tail, "\"id\":\"%s\",\"body\":\"%s\"}", id ? id : "", body);
    if (n < 0 || (size_t)n >= sizeof tail) n = (int)strlen(tail); /* cut (a body too long) */
    memset(p, 0, sizeof *p);
    p->b = nd->b;
    in_call = 1;
    int r = bus_publish(nd->b, room, user, id, tail, (size_t)n, pub_cb, p);
    in_call = 0;
    return r;
}

static inline int pub(node *nd, const char *room, const char *id, const char *body, pubres *p)
{
    return pub_as(nd, room, PUB_USER, id, body, p);
}

typedef struct repres {
    int done, status;
    size_t n;
    uint64_t head, first, last;
    int contiguous;
    char epoch[80];
} repres;

static inline void rep_cb(void *ud, int status, const bus_entry *e, size_t n, uint64_t head,
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

/* bus_replay (upto 0: to the head, at most max entries) or bus_replay_upto
 * (max unused), answered into r */
static inline int replay_to(node *nd, const char *room, uint64_t since, size_t max, uint64_t upto,
                            repres *r)
{
    memset(r, 0, sizeof *r);
    in_call = 1;
    int rc_ = upto ? bus_replay_upto(nd->b, room, since, upto, rep_cb, r)
                   : bus_replay(nd->b, room, since, max, rep_cb, r);
    in_call = 0;
    return rc_;
}

static inline int replay(node *nd, const char *room, uint64_t since, size_t max, repres *r)
{
    return replay_to(nd, room, since, max, 0, r);
}

/* waits until room is subscribed and synced on nd (replay answers then) */
static inline void synced(node *nd, const char *room)
{
    repres r;
    if (replay(nd, room, UINT64_MAX, 0, &r) != 0) { CHECK(0, "replay barrier refused"); return; }
    WAIT(r.done, 5000);
    CHECK(r.done && r.status == 0, "replay barrier status %d", r.status);
}

static inline void mkroom(char *out, size_t n, const char *what)
{
    snprintf(out, n, "%s-%s", what, nonce);
}

static inline int contiguous(const node *nd, uint64_t from, uint64_t to)
{
    if (nd->n != to - from + 1) return 0;
    for (size_t i = 0; i < nd->n; i++)
        if (nd->seqs[i] != from + i) return 0;
    return 1;
}

static inline uint64_t counter(const char *name)
{
    return metrics_counter(name, NULL, NULL)->v;
}

static inline uint64_t counter_l(const char *name, const char *labels)
{
    return metrics_counter(name, NULL, labels)->v;
}

/* ---------------- Redis mode: readiness, a publishing timer ---------------- */

static inline void wait_ready(node *nd)
{
    WAIT(bus_ready(nd->b), 5000);
    CHECK(bus_ready(nd->b), "%s ready", nd->name);
}

/* nd, once ready */
static inline node *ready(node *nd)
{
    wait_ready(nd);
    return nd;
}

/* publishing from a timer (while Redis restarts, a slot moves, a node joins) */
typedef struct streamer {
    node *nd;
    const char *room;
    uv_timer_t t;
    int sent, refused, failed, ok, stop;
    pubres res[4000];
} streamer;

static inline void stream_tick(uv_timer_t *t)
{
    streamer *s = t->data;
    if (s->stop || s->sent >= 4000) return;
    pubres *p = &s->res[s->sent];
    if (pub(s->nd, s->room, NULL, "s", p) == 0) s->sent++;
    else s->refused++;
}

static inline void stream_burst(uv_timer_t *t)
{
    for (int i = 0; i < 8; i++) stream_tick(t);
}

static inline int all_answered(streamer **ss, int n)
{
    for (int k = 0; k < n; k++)
        for (int j = 0; j < ss[k]->sent; j++)
            if (!ss[k]->res[j].done) return 0;
    return 1;
}

/* ---------------- a test executable's main() ---------------- */

/* seed (CHATD_TEST_SEED reuses one), room nonce, log level, the loop */
static inline void harness_begin(const char *name)
{
    const char *s = getenv("CHATD_TEST_SEED");
    seed = s ? (unsigned)strtoul(s, NULL, 10) : (unsigned)(mono_ns() ^ (uint64_t)getpid());
    fprintf(stderr, "%s seed %u (CHATD_TEST_SEED=%u to repeat)\n", name, seed, seed);
    snprintf(nonce, sizeof nonce, "%08x", seed * 2654435761u);
    log_set_level(getenv("CHATD_TEST_DEBUG") ? LOG_DEBUG : LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    uvwait_init(loop);
    uv_unref((uv_handle_t *)&uvwait_ticker);
}

/* 1 when a Redis is there for the Redis tests; 0 (skipped, or a failed
 * check when CHATD_TEST_REDIS_URL is set but not reachable) otherwise */
static inline int harness_redis(void)
{
    if (redis_setup() == 0) {
        fprintf(stderr, "redis at %s\n", rurl);
        return 1;
    }
    if (getenv("CHATD_TEST_REDIS_URL") && system("command -v redis-server >/dev/null 2>&1") != 0)
        CHECK(0, "CHATD_TEST_REDIS_URL is set but not reachable");
    else
        fprintf(stderr, "no redis-server: Redis tests skipped\n");
    return 0;
}

/* stops every redis-server started here, closes the loop (every handle of
 * the bus must be closed), prints the summary; the exit status: 0 pass,
 * 1 fail, 77 skip (no Redis: in-process tests only) */
static inline int harness_end(const char *name, int have_redis)
{
    if (have_redis) rp_cleanup();
    redis_cleanup();
    uvwait_close();
    uv_run(loop, UV_RUN_DEFAULT);
    int rc_ = uv_loop_close(loop);
    CHECK(rc_ == 0, "loop closed: every handle of the bus was closed (%s)", uv_err_name(rc_));
    metrics_free_all();
    if (check_failures()) fprintf(stderr, "%s: seed %u\n", name, seed);
    if (check_summary(name)) return 1;
    return have_redis ? 0 : 77;
}

#endif
