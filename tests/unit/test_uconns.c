/* test_uconns: connections per user across nodes (core/uconns.c over the
 * connection-count script of core/adminstore.c) against a real
 * redis-server: the script's sum, refusal and take-back, expiry of a
 * node's count, removal at 0; the module's admission, cancel, refresh
 * pass (its renewals batched: adminstore_conns_renew, on one Redis and a
 * Cluster) and its fail-open while Redis is down. Other nodes are played by
 * writing their counts with adminstore_conns under their ids. */
#include "check.h"
#include "uvwait.h"
#include "redis_procs.h"
#include "adminstore.h"
#include "connlimit.h"
#include "log.h"
#include "metrics.h"
#include "redis_slot.h"
#include "uconns.h"
#include "util.h"
#include <uv.h>

static uv_loop_t *L;
static redisContext *R;     /* a plain client for assertions */

static void wait_ms(uint64_t ms) { uvwait_ms(L, ms); }

typedef struct ans { int done, allowed; int64_t total; } ans;

static void on_ans(void *ud, int allowed, int64_t total)
{
    ans *a = ud;
    a->done++;
    a->allowed = allowed;
    a->total = total;
}

static int wait_ans(ans *a, uint64_t timeout_ms)
{
    uint64_t end = mono_ms() + timeout_ms;
    while (!a->done && mono_ms() < end) wait_ms(2);
    return a->done;
}

/* one call of the script, waited for */
static ans conns(adminstore *s, const char *user, const char *node, int64_t n, uint64_t ttl, int64_t max)
{
    ans a = {0, 0, 0};
    CHECK(adminstore_conns(s, user, node, n, ttl, max, on_ans, &a) == 0, "sent");
    CHECK(wait_ans(&a, 3000), "answered");
    return a;
}

static long long rint_(const char *fmt, const char *k, const char *f)
{
    redisReply *r = f ? redisCommand(R, fmt, k, f) : redisCommand(R, fmt, k);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -99;
    if (r) freeReplyObject(r);
    return v;
}

static long long field_count(const char *user, const char *node)
{
    char k[128];
    snprintf(k, sizeof k, "chat:{conns:%s}:n", user);
    redisReply *r = redisCommand(R, "HGET %s %s", k, node);
    long long v = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
    if (r) freeReplyObject(r);
    return v;
}

static long long key_exists(const char *user)
{
    char k[128];
    snprintf(k, sizeof k, "chat:{conns:%s}:n", user);
    return rint_("EXISTS %s", k, NULL);
}

static void test_script(adminstore *s)
{
    ans a = conns(s, "sue", "n1", 2, 5000, 3);
    CHECK(a.allowed == 1 && a.total == 2, "n1 with 2 of 3: %d %lld", a.allowed, (long long)a.total);
    a = conns(s, "sue", "n2", 1, 5000, 3);
    CHECK(a.allowed == 1 && a.total == 3, "n2's first: 3 of 3");
    a = conns(s, "sue", "n2", 2, 5000, 3);
    CHECK(a.allowed == 0 && a.total == 4, "n2's second: 4 > 3, refused (%d %lld)", a.allowed,
          (long long)a.total);
    CHECK(field_count("sue", "n2") == 1, "the refused one taken back out");
    a = conns(s, "sue", "n1", 1, 5000, 0);
    CHECK(a.allowed == 1 && a.total == 1, "a plain write answers its count");
    a = conns(s, "sue", "n2", 2, 5000, 3);
    CHECK(a.allowed == 1 && a.total == 3, "after n1's close: admitted");
    /* other users are other keys */
    a = conns(s, "tom", "n1", 3, 5000, 3);
    CHECK(a.allowed == 1 && a.total == 3, "tom has his own count");
    /* a node that stops renewing: its count expires */
    a = conns(s, "sue", "dead", 5, 300, 0);
    a = conns(s, "sue", "n1", 1, 5000, 10);
    CHECK(a.allowed == 1 && a.total == 8, "dead node counted while live (%lld)", (long long)a.total);
    wait_ms(400);
    a = conns(s, "sue", "n1", 1, 5000, 10);
    CHECK(a.total == 3, "dead node's count expired (%lld)", (long long)a.total);
    CHECK(field_count("sue", "dead") == 0, "its field dropped");
    char k[64];
    snprintf(k, sizeof k, "chat:{conns:%s}:n", "sue");
    long long pttl = rint_("PTTL %s", k, NULL);
    CHECK(pttl > 0 && pttl <= 5000, "the key expires (%lld)", pttl);
    /* everything closed: no key left */
    conns(s, "sue", "n1", 0, 5000, 0);
    conns(s, "sue", "n2", 0, 5000, 0);
    CHECK(key_exists("sue") == 0, "no key once every count is 0");
    conns(s, "tom", "n1", 0, 5000, 0);
    /* a whole key expires with its last node */
    conns(s, "ann", "gone", 2, 300, 0);
    wait_ms(400);
    CHECK(key_exists("ann") == 0, "a dead node's last key expires");
}

/* The deadline this node's field of user u carries in Redis (0: none). */
static long long field_deadline(const char *user, const char *node)
{
    char k[128];
    snprintf(k, sizeof k, "chat:{conns:%s}:n", user);
    redisReply *r = redisCommand(R, "HGET %s %s", k, node);
    long long c = 0, d = 0;
    if (r && r->type == REDIS_REPLY_STRING && sscanf(r->str, "%lld %lld", &c, &d) != 2) d = 0;
    if (r) freeReplyObject(r);
    return d;
}

/* EVALSHA calls a server has run (INFO commandstats) */
static long long evalsha_calls(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO commandstats");
    long long n = 0;
    const char *p = r && r->type == REDIS_REPLY_STRING ? r->str : NULL;
    if (p && (p = strstr(p, "cmdstat_evalsha:calls="))) n = atoll(p + strlen("cmdstat_evalsha:calls="));
    if (r) freeReplyObject(r);
    return n;
}

/* adminstore_conns_renew: every user's count written (0: the field
 * removed) with a later deadline and its key's TTL, in one call per
 * ADMINSTORE_RENEW_CHUNK users on one Redis. owner(key) is the server that
 * holds key (its master on a Cluster); calls_out: the EVALSHA calls of the
 * second renewal (one Redis only). */
#define RENEW_USERS 300
static char g_rnames[RENEW_USERS][16];

static long long rb_field(redisContext *(*owner)(const char *key), int i, long long *deadline)
{
    char k[64];
    snprintf(k, sizeof k, "chat:{conns:%.15s}:n", g_rnames[i]);
    redisReply *r = redisCommand(owner(k), "HGET %s rb", k);
    long long c = 0, d = 0;
    if (r && r->type == REDIS_REPLY_STRING && sscanf(r->str, "%lld %lld", &c, &d) != 2) c = d = 0;
    if (r) freeReplyObject(r);
    if (deadline) *deadline = d;
    return c;
}

/* How many of the users hold what phase 1 (counts 1 + i % 4, d1 filled)
 * or phase 2 (a third removed, the rest at 2 with a later deadline than d1
 * and their key's TTL) wrote. */
static int renew_right(redisContext *(*owner)(const char *key), int phase, long long *d1)
{
    int right = 0;
    for (int i = 0; i < RENEW_USERS; i++) {
        long long d = 0, c = rb_field(owner, i, &d);
        if (phase == 1) {
            d1[i] = d;
            right += c == 1 + i % 4 && d > 0;
            continue;
        }
        char k[64];
        snprintf(k, sizeof k, "chat:{conns:%.15s}:n", g_rnames[i]);
        redisReply *t = redisCommand(owner(k), "PTTL %s", k);
        long long pttl = t && t->type == REDIS_REPLY_INTEGER ? t->integer : -99;
        if (t) freeReplyObject(t);
        if (i % 3) right += c == 2 && d > d1[i] && pttl > 0 && pttl <= 5000;
        else right += c == 0 && pttl == -2;   /* its only field removed: no key */
    }
    return right;
}

/* polls until every user holds what the phase wrote, up to 5 s */
static int renew_wait(redisContext *(*owner)(const char *key), int phase, long long *d1)
{
    int right = 0;
    uint64_t end = mono_ms() + 5000;
    while ((right = renew_right(owner, phase, d1)) != RENEW_USERS && mono_ms() < end) wait_ms(50);
    return right;
}

static void check_renew(adminstore *s, redisContext *(*owner)(const char *key),
                        long long *calls_out)
{
    const char *users[RENEW_USERS];
    int64_t counts[RENEW_USERS];
    long long d1[RENEW_USERS];
    for (int i = 0; i < RENEW_USERS; i++) {
        snprintf(g_rnames[i], sizeof g_rnames[i], "rb%03d", i);
        users[i] = g_rnames[i];
        counts[i] = 1 + i % 4;
    }
    CHECK(adminstore_conns_renew(s, "rb", 5000, RENEW_USERS, users, counts) == 0, "sent");
    int right = renew_wait(owner, 1, d1);
    CHECK(right == RENEW_USERS, "every user's count written (%d of %d)", right, RENEW_USERS);
    wait_ms(20);                                  /* the renewal's deadlines come later */
    long long c0 = calls_out ? evalsha_calls(owner("x")) : 0;
    for (int i = 0; i < RENEW_USERS; i++) counts[i] = i % 3 ? 2 : 0;   /* a third closed */
    CHECK(adminstore_conns_renew(s, "rb", 5000, RENEW_USERS, users, counts) == 0, "sent again");
    right = renew_wait(owner, 2, d1);
    if (calls_out) *calls_out = evalsha_calls(owner("x")) - c0;
    CHECK(right == RENEW_USERS, "every user's count renewed (a later deadline, the key's TTL) or "
          "removed (%d of %d)", right, RENEW_USERS);
}

static redisContext *one_redis(const char *key) { (void)key; return R; }

static void test_renew_batch(adminstore *s)
{
    long long calls = 0;
    check_renew(s, one_redis, &calls);
    long long want = (RENEW_USERS + ADMINSTORE_RENEW_CHUNK - 1) / ADMINSTORE_RENEW_CHUNK;
    CHECK(calls == want, "%d renewals in %lld script calls (want %lld)", RENEW_USERS, calls, want);
}

/* A key of another type in a renewal batch (not ours: another program's
 * data) is left as it is, and the users after it in the same call are
 * still renewed (the script used to stop at the first error, so one foreign
 * key left every later user of its batch unrenewed). */
static void test_renew_foreign_key(adminstore *s)
{
    const char *users[] = {"fk_a", "fk_b", "fk_c"};
    int64_t counts[] = {2, 3, 4};
    redisReply *r = redisCommand(R, "SET chat:{conns:fk_b}:n not-a-hash");
    if (r) freeReplyObject(r);
    CHECK(adminstore_conns_renew(s, "fk", 5000, 3, users, counts) == 0, "sent");
    uint64_t end = mono_ms() + 3000;
    while (field_count("fk_c", "fk") == 0 && mono_ms() < end) wait_ms(10);
    CHECK(field_count("fk_a", "fk") == 2, "the user before the foreign key renewed (%lld)",
          field_count("fk_a", "fk"));
    CHECK(field_count("fk_c", "fk") == 4, "the user after it renewed too (%lld)", field_count("fk_c", "fk"));
    /* the admission script (the same put()) answers that key's user "not
     * checked" (-1: fail open, as with Redis down) and writes nothing */
    ans a = conns(s, "fk_b", "fk", 1, 5000, 10);
    CHECK(a.allowed == -1 && a.total == -1, "admission on a foreign key: not checked (%d %lld)",
          a.allowed, (long long)a.total);
    r = redisCommand(R, "GET chat:{conns:fk_b}:n");
    CHECK(r && r->type == REDIS_REPLY_STRING && strcmp(r->str, "not-a-hash") == 0,
          "the foreign key left as it was");
    if (r) freeReplyObject(r);
    r = redisCommand(R, "DEL chat:{conns:fk_a}:n chat:{conns:fk_b}:n chat:{conns:fk_c}:n");
    if (r) freeReplyObject(r);
}

/* The renewal pass is spread over its period: a tick a quarter of the way
 * in renews about a quarter of the users, not none and not all (19k users
 * renewed in one loop turn were 19k Redis calls at once); the pass's end
 * renews the rest. Time is the tick's argument; the deadlines are Redis'. */
#define SPREAD_USERS 200
static void test_renewal_spread(adminstore *s)
{
    connlimit_init(0, 5);
    uconns_init(s, "sp", 1000, 900);              /* a pass every 300 ms */
    char users[SPREAD_USERS][16];
    for (int i = 0; i < SPREAD_USERS; i++) {
        snprintf(users[i], sizeof users[i], "sp%03d", i);
        CHECK(connlimit_acquire("2.2.2.2", users[i]) == LIMIT_OK);
    }
    uint64_t t = mono_ms();
    long long e0 = evalsha_calls(R);
    uconns_tick(t);                               /* the first pass: everyone, at once */
    wait_ms(100);
    int have = 0;
    for (int i = 0; i < SPREAD_USERS; i++) have += field_deadline(users[i], "sp") > 0;
    CHECK(have == SPREAD_USERS, "the first pass wrote every user (%d)", have);
    long long calls = evalsha_calls(R) - e0;
    CHECK(calls == (SPREAD_USERS + ADMINSTORE_RENEW_CHUNK - 1) / ADMINSTORE_RENEW_CHUNK,
          "the pass's users share script calls: %d users, %lld calls", SPREAD_USERS, calls);
    long long d0[SPREAD_USERS];
    for (int i = 0; i < SPREAD_USERS; i++) d0[i] = field_deadline(users[i], "sp");
    wait_ms(20);                                  /* later writes carry later deadlines */
    uconns_tick(t + 75);                          /* a quarter of the period */
    wait_ms(100);
    int moved = 0;
    for (int i = 0; i < SPREAD_USERS; i++) moved += field_deadline(users[i], "sp") != d0[i];
    CHECK(moved > 0 && moved < SPREAD_USERS * 3 / 4,
          "a quarter into the period: %d of %d renewed (want some, not all)", moved, SPREAD_USERS);
    uint64_t p0 = uconns_passes();
    uconns_tick(t + 300);                         /* the period is over: the rest */
    wait_ms(100);
    CHECK(uconns_passes() == p0 + 1, "the pass ended");
    moved = 0;
    for (int i = 0; i < SPREAD_USERS; i++) moved += field_deadline(users[i], "sp") != d0[i];
    CHECK(moved == SPREAD_USERS, "by its end the pass renewed every user (%d)", moved);
    /* the map grows during a pass (its users move to other slots): the
     * next pass's end still renews everyone */
    for (int i = 0; i < SPREAD_USERS; i++) d0[i] = field_deadline(users[i], "sp");
    wait_ms(20);
    uconns_tick(t + 375);                         /* a quarter into the next pass */
    static char more[3 * SPREAD_USERS][16];
    for (int i = 0; i < 3 * SPREAD_USERS; i++) {
        snprintf(more[i], sizeof more[i], "spm%03d", i);
        CHECK(connlimit_acquire("2.2.2.3", more[i]) == LIMIT_OK);
    }
    uconns_tick(t + 450);
    uconns_tick(t + 750);
    wait_ms(100);
    moved = 0;
    for (int i = 0; i < SPREAD_USERS; i++) moved += field_deadline(users[i], "sp") != d0[i];
    CHECK(moved == SPREAD_USERS, "a resize during the pass: every user renewed by the pass's end (%d)",
          moved);
    for (int i = 0; i < 3 * SPREAD_USERS; i++) connlimit_release("2.2.2.3", more[i]);
    for (int i = 0; i < SPREAD_USERS; i++) connlimit_release("2.2.2.2", users[i]);
    uconns_stop();
    connlimit_free();
}

static void test_module(adminstore *s, int redis_idx)
{
    metric_counter *refused = metrics_counter("chat_refused_total", NULL, "reason=\"per_user_cluster\"");
    connlimit_init(0, 2);
    uconns_init(s, "me", 2, 900);
    metric_counter *unchecked = metrics_counter("chat_conn_limit_unchecked_total", NULL, NULL);
    CHECK(uconns_enabled(), "on with a store and a limit");
    uint64_t ref0 = refused->v;
    /* bob: one here, admitted */
    CHECK(connlimit_acquire("1.1.1.1", "bob") == LIMIT_OK);
    ans a = {0, 0, 0};
    uconns_req *rq;
    CHECK(uconns_admit("bob", on_ans, &a, &rq) == UCONNS_PENDING && rq, "pending");
    CHECK(a.done == 0, "never answered inside the call");
    CHECK(wait_ans(&a, 3000) && a.allowed == 1 && a.total == 1, "admitted (%d %lld)", a.allowed,
          (long long)a.total);
    /* another node has one of bob's too: a 2nd here is refused */
    conns(s, "bob", "other", 1, 900, 0);
    CHECK(connlimit_acquire("1.1.1.1", "bob") == LIMIT_OK, "the node's own gate lets a 2nd through");
    a = (ans){0, 0, 0};
    CHECK(uconns_admit("bob", on_ans, &a, &rq) == UCONNS_PENDING);
    CHECK(wait_ans(&a, 3000) && a.allowed == 0 && a.total == 3, "refused across nodes (%d %lld)", a.allowed,
          (long long)a.total);
    CHECK(refused->v == ref0 + 1, "counted in chat_refused_total{reason=per_user_cluster}");
    CHECK(field_count("bob", "me") == 1, "this node's count back to 1");
    connlimit_release("1.1.1.1", "bob");
    uconns_changed("bob");
    /* a cancelled admission: its callback never runs */
    CHECK(connlimit_acquire("1.1.1.1", "bob") == LIMIT_OK);
    a = (ans){0, 0, 0};
    CHECK(uconns_admit("bob", on_ans, &a, &rq) == UCONNS_PENDING);
    uconns_cancel(rq);
    wait_ms(100);
    CHECK(a.done == 0, "cancelled: not called");
    connlimit_release("1.1.1.1", "bob");
    uconns_changed("bob");
    wait_ms(50);
    CHECK(field_count("bob", "me") == 1, "the close wrote this node's count");
    /* the refresh pass renews this node's counts; "other" stops renewing
     * and expires */
    uint64_t p0 = uconns_passes();
    uint64_t t0 = mono_ms();
    while (mono_ms() - t0 < 1200) {
        uconns_tick(mono_ms());
        wait_ms(50);
    }
    CHECK(uconns_passes() >= p0 + 3, "a pass every third of the TTL (%llu)",
          (unsigned long long)(uconns_passes() - p0));
    CHECK(field_count("bob", "me") == 1, "this node's count renewed past its TTL");
    CHECK(field_count("bob", "other") == 1, "the other's field stays until an admission drops it");
    CHECK(connlimit_acquire("1.1.1.1", "bob") == LIMIT_OK);
    a = (ans){0, 0, 0};
    CHECK(uconns_admit("bob", on_ans, &a, &rq) == UCONNS_PENDING);
    CHECK(wait_ans(&a, 3000) && a.allowed == 1 && a.total == 2, "the other node's count expired (%lld)",
          (long long)a.total);
    CHECK(field_count("bob", "other") == 0, "and was dropped");
    /* Redis down: let through at once (the node's own limit holds), counted */
    uint64_t u0 = unchecked->v;
    rp_signal(redis_idx, SIGKILL);
    uint64_t end = mono_ms() + 5000;
    while (adminstore_ready(s) && mono_ms() < end) wait_ms(10);
    CHECK(!adminstore_ready(s), "store down");
    connlimit_release("1.1.1.1", "bob");
    uconns_changed("bob");                 /* nothing sent: the next pass repairs it */
    CHECK(connlimit_acquire("1.1.1.1", "bob") == LIMIT_OK);
    CHECK(uconns_admit("bob", on_ans, &a, &rq) == UCONNS_ALLOW && !rq, "fail open");
    CHECK(unchecked->v == u0 + 1, "counted in chat_conn_limit_unchecked_total");
    CHECK(connlimit_acquire("1.1.1.1", "bob") == LIMIT_USER, "the per-node limit still holds");
    connlimit_release("1.1.1.1", "bob");
    connlimit_release("1.1.1.1", "bob");
    uconns_stop();
    CHECK(!uconns_enabled(), "stopped");
    connlimit_free();
}

/* Redis Cluster (3 masters started here): the renewals of users on many
 * slots go out per slot (a script's keys must share one) and all land */
static int g_first = -1;
static redisContext *g_masters[3];

static redisContext *cluster_owner(const char *key)
{
    int o = rp_slot_owner(g_first, 3, redis_key_slot(key, strlen(key)));
    return g_masters[o < 0 ? 0 : o - g_first];
}

static void run_cluster(void)
{
    g_first = rp_cluster(0, 2000);
    if (g_first < 0) {
        fprintf(stderr, "no Redis Cluster (redis-cli --cluster): cluster test skipped\n");
        return;
    }
    for (int i = 0; i < 3; i++) {
        g_masters[i] = rp_connect(rp_all[g_first + i].port, 5000);
        CHECK(g_masters[i] != NULL, "a client of master %d", i);
        if (!g_masters[i]) return;
    }
    char url[80], err[256];
    snprintf(url, sizeof url, "redis+cluster://127.0.0.1:%d", rp_all[g_first].port);
    adminstore *s = adminstore_new(L, url, NULL, NULL, err, sizeof err);
    CHECK(s != NULL, "cluster store: %s", s ? "" : err);
    if (!s) return;
    uint64_t end = mono_ms() + 5000;
    while (!adminstore_ready(s) && mono_ms() < end) wait_ms(10);
    CHECK(adminstore_ready(s), "cluster store ready");
    check_context = "cluster";
    check_renew(s, cluster_owner, NULL);
    check_context = NULL;
    adminstore_free(s);
    for (int i = 0; i < 3; i++) if (g_masters[i]) redisFree(g_masters[i]);
}

int main(void)
{
    log_set_level(getenv("UCONNS_LOG") ? LOG_DEBUG : LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    if (!rp_have_server()) {
        fprintf(stderr, "redis-server unavailable: skipped\n");
        return 77;
    }
    L = uv_default_loop();
    int i = rp_start(NULL);
    if (i < 0) { fprintf(stderr, "redis-server did not start\n"); return 1; }
    R = rp_connect(rp_all[i].port, 5000);
    char url[64], err[256];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", rp_all[i].port);
    adminstore *s = adminstore_new(L, url, NULL, NULL, err, sizeof err);
    if (!s || !R) { fprintf(stderr, "store: %s\n", err); rp_cleanup(); return 1; }
    uint64_t end = mono_ms() + 5000;
    while (!adminstore_ready(s) && mono_ms() < end) wait_ms(10);
    CHECK(adminstore_ready(s), "store ready");
    test_script(s);
    test_renew_batch(s);
    test_renew_foreign_key(s);
    test_renewal_spread(s);
    test_module(s, i);
    adminstore_free(s);
    run_cluster();
    redisFree(R);
    uv_run(L, UV_RUN_NOWAIT);
    uv_loop_close(L);
    metrics_free_all();
    rp_cleanup();
    return check_summary("test_uconns");
}
