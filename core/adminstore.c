/* adminstore: see adminstore.h. */
#define _GNU_SOURCE
#include "adminstore.h"
#include "log.h"
#include "redis_client.h"
#include "redis_slot.h"
#include "util.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "admin"
#define BANS_KEY "chat:bans"

/* KEYS[1] bucket; ARGV rate (tokens/s), burst. -> {allowed, retry_ms} */
static const char TAKE_LUA[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local v = redis.call('HMGET', KEYS[1], 'tk', 'ts')\n"
    "local tk, ts = tonumber(v[1]) or burst, tonumber(v[2]) or now\n"
    "if now > ts then tk = math.min(burst, tk + (now - ts) * rate / 1000); ts = now end\n"
    "local ok, wait = 0, 0\n"
    "if tk >= 1 then tk = tk - 1; ok = 1 else wait = math.ceil((1 - tk) * 1000 / rate) end\n"
    "redis.call('HSET', KEYS[1], 'tk', string.format('%.6f', tk), 'ts', ts)\n"
    "redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)\n"
    "return {ok, wait}\n";

/* KEYS[1] bans; ARGV field, value, until_ms */
static const char BAN_PUT_LUA[] =
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "local u = tonumber(ARGV[3])\n"
    "local cur = redis.call('PEXPIRETIME', KEYS[1])\n"
    "if cur < u then redis.call('PEXPIREAT', KEYS[1], u) end\n"
    "return 1\n";

/* KEYS[1] bans; ARGV user, room or '' with ARGV[3] = 'all'. Field names
 * are compared as strings (a user id may hold glob characters). -> how
 * many bans in force it lifted (an expired field is dropped, not counted) */
static const char BAN_LIFT_LUA[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local function lift(f)\n"
    "  local v = redis.call('HGET', KEYS[1], f)\n"
    "  if not v then return 0 end\n"
    "  redis.call('HDEL', KEYS[1], f)\n"
    "  local u = tonumber(string.match(v, '^(%d+)'))\n"
    "  if u and u > now then return 1 end\n"
    "  return 0\n"
    "end\n"
    "if ARGV[3] ~= 'all' then return lift(ARGV[1] .. '\\n' .. ARGV[2]) end\n"
    "local p = ARGV[1] .. '\\n'\n"
    "local n = 0\n"
    "for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do\n"
    "  if string.sub(f, 1, #p) == p then n = n + lift(f) end\n"
    "end\n"
    "return n\n";

/* KEYS[1] bans -> the live fields and values (flat); expired ones dropped */
static const char BAN_LOAD_LUA[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local all = redis.call('HGETALL', KEYS[1])\n"
    "local out = {}\n"
    "for i = 1, #all, 2 do\n"
    "  local u = tonumber(string.match(all[i + 1], '^(%d+)'))\n"
    "  if u and u > now then out[#out + 1] = all[i]; out[#out + 1] = all[i + 1]\n"
    "  else redis.call('HDEL', KEYS[1], all[i]) end\n"
    "end\n"
    "return out\n";

/* The Lua both connection-count scripts share: now (Redis' clock), and
 * put(k, c): this node's count c in hash k, valid for ttl (0: removed);
 * nil, or Redis' error when k is not a hash (nothing written to it). */
#define LUA_CONNS_PUT \
    "local t = redis.call('TIME')\n" \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n" \
    "local function put(k, c)\n" \
    "  local r\n" \
    "  if c > 0 then r = redis.pcall('HSET', k, node, string.format('%d %d', c, now + ttl))\n" \
    "  else r = redis.pcall('HDEL', k, node) end\n" \
    "  if type(r) == 'table' and r.err then return r end\n" \
    "  if c > 0 and redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end\n" \
    "end\n"

/* KEYS[1] a user's connections (hash: node -> "<count> <until_ms>");
 * ARGV node, count, ttl_ms, max. Sets this node's count (0: removes it)
 * valid for ttl_ms; with max > 0 also sums the counts not expired
 * (dropping the expired ones) and, over max, takes this node's newest
 * connection back out (count - 1). -> {allowed, total} */
static const char CONNS_LUA[] =
    "local node, n, ttl, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    LUA_CONNS_PUT
    "local e = put(KEYS[1], n)\n"
    "if e then return e end\n"
    "if max <= 0 then return {1, n} end\n"
    "local sum, all = 0, redis.call('HGETALL', KEYS[1])\n"
    "for i = 1, #all, 2 do\n"
    "  local c, u = string.match(all[i + 1], '^(%d+) (%d+)$')\n"
    "  if c and tonumber(u) > now then sum = sum + tonumber(c)\n"
    "  else redis.call('HDEL', KEYS[1], all[i]) end\n"
    "end\n"
    "if sum > max then put(KEYS[1], n - 1); return {0, sum} end\n"
    "return {1, sum}\n";

/* KEYS users' connection hashes (one slot on a Cluster); ARGV node,
 * ttl_ms, then one count per key. The refresh pass's renewals of many users
 * in one call: one TIME and one script run (and one MULTI/EXEC in the AOF)
 * for them all. A key of another type (not ours) is left as it is and the
 * others are still renewed (one such key must not stop the renewals of the
 * users after it in the batch). -> how many were written, or an error
 * naming the first refusal and how many keys were refused, after writing
 * the others */
static const char CONNS_RENEW_LUA[] =
    "local node, ttl = ARGV[1], tonumber(ARGV[2])\n"
    LUA_CONNS_PUT
    "local bad, first = 0, nil\n"
    "for i = 1, #KEYS do\n"
    "  local e = put(KEYS[i], tonumber(ARGV[i + 2]))\n"
    "  if e then bad = bad + 1; first = first or e.err end\n"
    "end\n"
    "if bad > 0 then\n"
    "  return redis.error_reply(first .. ' (' .. bad .. ' of ' .. #KEYS .. ' keys not renewed)')\n"
    "end\n"
    "return #KEYS\n";

enum { S_TAKE = 0, S_BAN_PUT, S_BAN_LIFT, S_BAN_LOAD, S_CONNS, S_CONNS_RENEW, S_COUNT };
static const char *const SCRIPTS[S_COUNT] = {TAKE_LUA, BAN_PUT_LUA, BAN_LIFT_LUA, BAN_LOAD_LUA,
                                             CONNS_LUA, CONNS_RENEW_LUA};

struct adminstore {
    redis_client *rc;
    void (*on_up)(void *ud);
    void *ud;
};

typedef struct req {
    adminstore_done_cb done;
    adminstore_bans_cb bans;
    adminstore_take_cb take;
    adminstore_conns_cb conns;
    void *ud;
} req;

static void on_node(void *ud, uint64_t node, int up)
{
    adminstore *a = ud;
    (void)node;
    if (up && a->on_up) a->on_up(a->ud);
}

static void on_map(void *ud) { (void)ud; }

static void on_push(void *ud, uint64_t node, const redis_push *p)
{
    (void)ud;
    (void)node;
    (void)p;
}

static const redis_client_handlers HANDLERS = {on_node, on_map, on_push};

adminstore *adminstore_new(uv_loop_t *loop, const char *url, void (*on_up)(void *ud), void *ud,
                           char *err, size_t errlen)
{
    adminstore *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->on_up = on_up;
    a->ud = ud;
    redis_client_opts o = {url, MOD, SCRIPTS, S_COUNT, 0, 0, 0};
    a->rc = redis_client_new(loop, &o, &HANDLERS, a, err, errlen);
    if (!a->rc) {
        free(a);
        return NULL;
    }
    return a;
}

void adminstore_free(adminstore *a)
{
    if (!a) return;
    a->on_up = NULL;
    redis_client_free(a->rc); /* pending callbacks: NULL replies (status -1) */
    free(a);
}

int adminstore_ready(const adminstore *a) { return a && redis_client_ready(a->rc); }

static int call(adminstore *a, int script, int slot, int argc, const char **argv, const size_t *lens,
                redis_reply_fn fn, req *r)
{
    redis_call how = {.slot = slot, .node = 0, .script = script};
    if (!a || redis_client_call(a->rc, &how, argc, argv, lens, fn, r) != 0) {
        free(r);
        return -1;
    }
    return 0;
}

static void done_reply(void *ud, const redisReply *rp)
{
    req *r = ud;
    int st = rp && rp->type == REDIS_REPLY_INTEGER ? (rp->integer > 0 ? 1 : 0) : -1;
    if (rp && rp->type == REDIS_REPLY_ERROR)
        LOGW(MOD, "ban write: %.*s", (int)rp->len, rp->str ? rp->str : "");
    r->done(r->ud, st);
    free(r);
}

int adminstore_ban_put(adminstore *a, const char *user, const char *room, uint64_t until_ms,
                       const char *reason, adminstore_done_cb cb, void *ud)
{
    req *r = calloc(1, sizeof *r);
    if (!r) return -1;
    r->done = cb;
    r->ud = ud;
    char *field = NULL, *value = NULL, u[24];
    int fl = asprintf(&field, "%s\n%s", user, room ? room : "");
    int vl = asprintf(&value, "%" PRIu64 "\n%s", until_ms, reason ? reason : "");
    snprintf(u, sizeof u, "%" PRIu64, until_ms);
    int rc = -1;
    if (fl >= 0 && vl >= 0) {
        const char *argv[] = {"1", BANS_KEY, field, value, u};
        size_t lens[] = {1, sizeof BANS_KEY - 1, (size_t)fl, (size_t)vl, strlen(u)};
        rc = call(a, S_BAN_PUT, redis_key_slot(BANS_KEY, sizeof BANS_KEY - 1), 5, argv, lens, done_reply, r);
    } else {
        free(r);
    }
    if (fl >= 0) free(field);
    if (vl >= 0) free(value);
    return rc;
}

int adminstore_ban_lift(adminstore *a, const char *user, const char *room, adminstore_done_cb cb,
                        void *ud)
{
    req *r = calloc(1, sizeof *r);
    if (!r) return -1;
    r->done = cb;
    r->ud = ud;
    const char *argv[] = {"1", BANS_KEY, user, room ? room : "", room ? "one" : "all"};
    size_t lens[5];
    for (int i = 0; i < 5; i++) lens[i] = strlen(argv[i]);
    return call(a, S_BAN_LIFT, redis_key_slot(BANS_KEY, sizeof BANS_KEY - 1), 5, argv, lens, done_reply, r);
}

static void bans_reply(void *ud, const redisReply *rp)
{
    req *r = ud;
    if (!rp || rp->type != REDIS_REPLY_ARRAY || rp->elements % 2) {
        if (rp && rp->type == REDIS_REPLY_ERROR)
            LOGW(MOD, "bans read: %.*s", (int)rp->len, rp->str ? rp->str : "");
        r->bans(r->ud, -1, NULL, 0);
        free(r);
        return;
    }
    size_t n = rp->elements / 2, k = 0;
    ban_entry *b = n ? calloc(n, sizeof *b) : NULL;
    char **copies = n ? calloc(2 * n, sizeof *copies) : NULL;
    for (size_t i = 0; b && copies && i < n; i++) {
        const redisReply *f = rp->element[2 * i], *v = rp->element[2 * i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
        copies[2 * i] = strndup(f->str, f->len);       /* "user\nroom" */
        copies[2 * i + 1] = strndup(v->str, v->len);   /* "until\nreason" */
        if (!copies[2 * i] || !copies[2 * i + 1]) continue;
        char *nl = strchr(copies[2 * i], '\n'), *vnl = strchr(copies[2 * i + 1], '\n');
        if (!nl || !vnl) continue;
        *nl = 0;
        *vnl = 0;
        b[k].user = copies[2 * i];
        b[k].room = nl + 1;
        b[k].until_ms = strtoull(copies[2 * i + 1], NULL, 10);
        b[k].reason = vnl + 1;
        k++;
    }
    r->bans(r->ud, (n && (!b || !copies)) ? -1 : 0, b, k);
    for (size_t i = 0; copies && i < 2 * n; i++) free(copies[i]);
    free(copies);
    free(b);
    free(r);
}

int adminstore_bans_load(adminstore *a, adminstore_bans_cb cb, void *ud)
{
    req *r = calloc(1, sizeof *r);
    if (!r) return -1;
    r->bans = cb;
    r->ud = ud;
    const char *argv[] = {"1", BANS_KEY};
    size_t lens[] = {1, sizeof BANS_KEY - 1};
    return call(a, S_BAN_LOAD, redis_key_slot(BANS_KEY, sizeof BANS_KEY - 1), 2, argv, lens, bans_reply, r);
}

static void take_reply(void *ud, const redisReply *rp)
{
    req *r = ud;
    uint64_t ok = 0, wait = 0;
    if (rp && rp->type == REDIS_REPLY_ARRAY && rp->elements == 2 &&
        redis_reply_u64(rp->element[0], &ok) == 0 && redis_reply_u64(rp->element[1], &wait) == 0)
        r->take(r->ud, ok ? 1 : 0, wait ? wait : 1);
    else
        r->take(r->ud, -1, 0);
    free(r);
}

int adminstore_take(adminstore *a, const char *scope, const char *key, double rate, double burst,
                    adminstore_take_cb cb, void *ud)
{
    req *r = calloc(1, sizeof *r);
    if (!r) return -1;
    r->take = cb;
    r->ud = ud;
    char *k = NULL, sr[32], sb[32];
    int kl = asprintf(&k, "chat:{%s:%s}:rl", scope, key);
    if (kl < 0) { free(r); return -1; }
    snprintf(sr, sizeof sr, "%.6f", rate);
    snprintf(sb, sizeof sb, "%.6f", burst);
    const char *argv[] = {"1", k, sr, sb};
    size_t lens[] = {1, (size_t)kl, strlen(sr), strlen(sb)};
    int rc = call(a, S_TAKE, redis_key_slot(k, (size_t)kl), 4, argv, lens, take_reply, r);
    free(k);
    return rc;
}

static void conns_reply(void *ud, const redisReply *rp)
{
    req *r = ud;
    uint64_t ok = 0, total = 0;
    int good = rp && rp->type == REDIS_REPLY_ARRAY && rp->elements == 2 &&
               redis_reply_u64(rp->element[0], &ok) == 0 && redis_reply_u64(rp->element[1], &total) == 0;
    if (rp && rp->type == REDIS_REPLY_ERROR)
        LOGW(MOD, "connection count: %.*s", (int)rp->len, rp->str ? rp->str : "");
    if (r->conns) r->conns(r->ud, good ? (ok ? 1 : 0) : -1, good ? (int64_t)total : -1);
    free(r);
}

int adminstore_conns(adminstore *a, const char *user, const char *node, int64_t count, uint64_t ttl_ms,
                     int64_t max, adminstore_conns_cb cb, void *ud)
{
    req *r = calloc(1, sizeof *r);
    if (!r) return -1;
    r->conns = cb;
    r->ud = ud;
    char *k = NULL, sn[24], st[24], sm[24];
    int kl = asprintf(&k, "chat:{conns:%s}:n", user);
    if (kl < 0) { free(r); return -1; }
    snprintf(sn, sizeof sn, "%" PRId64, count < 0 ? 0 : count);
    snprintf(st, sizeof st, "%" PRIu64, ttl_ms ? ttl_ms : 1);
    snprintf(sm, sizeof sm, "%" PRId64, max < 0 ? 0 : max);
    const char *argv[] = {"1", k, node, sn, st, sm};
    size_t lens[] = {1, (size_t)kl, strlen(node), strlen(sn), strlen(st), strlen(sm)};
    int rc = call(a, S_CONNS, redis_key_slot(k, (size_t)kl), 6, argv, lens, conns_reply, r);
    free(k);
    return rc;
}

typedef struct renew_key { int slot; size_t i; } renew_key;

static int renew_cmp(const void *x, const void *y)
{
    const renew_key *a = x, *b = y;
    if (a->slot != b->slot) return a->slot < b->slot ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

/* A renewal's reply: nobody waits for it, but an error (OOM, WRONGTYPE...)
 * means the pass is not renewing, and the cross-node limit stops counting
 * this node's users: logged, at most once per 10 s. */
static void renew_reply(void *ud, const redisReply *rp)
{
    static uint64_t last_ms;
    (void)ud;
    if (!rp || rp->type != REDIS_REPLY_ERROR) return;
    uint64_t now = mono_ms();
    if (last_ms && now - last_ms < 10000) return;
    last_ms = now;
    LOGW(MOD, "connection count renewal: %.*s", (int)rp->len, rp->str ? rp->str : "");
}

/* one CONNS_RENEW_LUA call for keys k[0..n) (one slot) */
static int renew_send(adminstore *a, const char *node, const char *ttl, const renew_key *k, size_t n,
                      char *const *keys, const int64_t *counts)
{
    size_t argc = 1 + n + 2 + n;
    const char **v = malloc(argc * sizeof *v);
    char (*num)[24] = malloc((n + 1) * sizeof *num);
    int rc = -1;
    if (v && num) {
        snprintf(num[n], sizeof num[n], "%zu", n);
        v[0] = num[n];
        for (size_t j = 0; j < n; j++) {
            v[1 + j] = keys[k[j].i];
            snprintf(num[j], sizeof num[j], "%" PRId64, counts[k[j].i] < 0 ? 0 : counts[k[j].i]);
            v[1 + n + 2 + j] = num[j];
        }
        v[1 + n] = node;
        v[1 + n + 1] = ttl;
        redis_call how = {.slot = k[0].slot, .node = 0, .script = S_CONNS_RENEW};
        rc = redis_client_call(a->rc, &how, (int)argc, v, NULL, renew_reply, NULL);
    }
    free(v);
    free(num);
    return rc;
}

int adminstore_conns_renew(adminstore *a, const char *node, uint64_t ttl_ms, size_t n,
                           const char *const *users, const int64_t *counts)
{
    if (!a || !n) return 0;
    char **keys = calloc(n, sizeof *keys);
    renew_key *k = malloc(n * sizeof *k);
    int failed = 0;
    if (!keys || !k) { free(keys); free(k); return 1; }
    int cluster = redis_client_is_cluster(a->rc);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int kl = asprintf(&keys[i], "chat:{conns:%s}:n", users[i]);
        if (kl < 0) { keys[i] = NULL; failed++; continue; }   /* left to the next pass */
        k[m].slot = redis_key_slot(keys[i], (size_t)kl);
        k[m].i = i;
        m++;
    }
    /* a Cluster: one call per slot (a script's keys share one); one Redis:
     * any keys together, routed by the first one's slot */
    if (cluster) qsort(k, m, sizeof *k, renew_cmp);
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%" PRIu64, ttl_ms ? ttl_ms : 1);
    for (size_t j = 0; j < m;) {
        size_t e = j + 1;
        while (e < m && e - j < ADMINSTORE_RENEW_CHUNK && (!cluster || k[e].slot == k[j].slot)) e++;
        if (renew_send(a, node, ttl, k + j, e - j, keys, counts) != 0) failed++;
        j = e;
    }
    for (size_t i = 0; i < n; i++) free(keys[i]);
    free(keys);
    free(k);
    return failed;
}
