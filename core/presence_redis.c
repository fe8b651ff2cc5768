/* presence_redis: the Redis presence store, on the one Redis connection
 * layer (redis_client.h: one Redis or a Redis Cluster alike).
 * Keys per room (hash tag = room): chat:{room}:presence:conns (zset member
 * "<node>|<conn_id>|<user>" -> expiry ms), chat:{room}:presence:users (hash
 * user -> live entry count), chat:{room}:presence:names (hash user -> name);
 * plus an index of rooms (zset room -> a time no later than the earliest
 * expiry of its entries: new entries lower it, refreshes and removes leave
 * it, the sweep resets it exactly): chat:presence:rooms on one Redis, and on
 * a Cluster one per slot, chat:{<slot tag>}:presence:rooms (redis_slot.h),
 * on the same slot as the rooms it lists. A heartbeat costs one ZADD.
 * Every change is a Lua script, so the count and the transition it implies
 * are decided atomically in Redis; expiry uses Redis TIME (no node clock
 * skew). APPLY runs per room (its keys and its index: one slot), pipelined
 * (one call per room and flush); SWEEP runs per node that is up, over the
 * indexes of every slot it owns, under a per-node round lock so that one
 * chatd node sweeps each round. Scripts are loaded on every node and called
 * by SHA (the layer reloads them on NOSCRIPT).
 * Owns: the client, the removes of rooms whose shard is down (replayed when
 * a node comes up), the sweep state. Each reply callback runs exactly once
 * (the layer answers pending ones with NULL on failure or free). */
#define _GNU_SOURCE
#include "presence_store.h"
#include "log.h"
#include "redis_client.h"
#include "redis_slot.h"
#include "util.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MOD "presence"
#define SWEEP_MAX_ROOMS "256"
#define SWEEP_MAX_ENTRIES "4096"
#define APPLY_CHUNK 512
#define MAX_DEFERRED 100000

/* Both scripts refuse foreign data before writing anything to it: Redis
 * does not roll back a script that fails half way, and a half-applied batch
 * would change counts without anyone announcing the transitions (a later
 * second join). A room whose keys have another type (not ours) is skipped
 * and reported as {room, "bad"}; an index of another type fails an apply
 * and is skipped by a sweep. */
#define LUA_COMMON \
    "local function is(k, want)\n" \
    "  local ty = redis.call('TYPE', k)['ok']\n" \
    "  return ty == want or ty == 'none'\n" \
    "end\n" \
    "local function ours(p)\n" \
    "  return is(p .. 'conns', 'zset') and is(p .. 'users', 'hash') and is(p .. 'names', 'hash')\n" \
    "end\n" \
    "local t = redis.call('TIME')\n" \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/* KEYS: index, conns, users, names of one room. ARGV: ttl_ms, room, then
 * groups of op ('u'|'r'), member, user, name (upserts first). Returns flat
 * {room, event, user, name, ...}, event "join", "leave" or "bad". A
 * heartbeat batch is mostly refreshes, which only touch the conns zset: the
 * two hashes are checked only before a count changes (a new entry is taken
 * back if they turn out foreign). */
static const char APPLY_LUA[] =
    "local it = redis.call('TYPE', KEYS[1])['ok']\n"
    "if it ~= 'zset' and it ~= 'none' then\n"
    "  return redis.error_reply('presence index ' .. KEYS[1] .. ' is a ' .. it)\n"
    "end\n"
    LUA_COMMON
    "local exp = now + tonumber(ARGV[1])\n"
    "local room = ARGV[2]\n"
    "local ck, uk, nk = KEYS[2], KEYS[3], KEYS[4]\n"
    "local out = {}\n"
    "local ok, hok = true, nil\n"
    "local function bad()\n"
    "  ok = false\n"
    "  out[#out + 1] = room; out[#out + 1] = 'bad'; out[#out + 1] = ''; out[#out + 1] = ''\n"
    "end\n"
    "local function hashes_ok()\n"
    "  if hok == nil then hok = is(uk, 'hash') and is(nk, 'hash') end\n"
    "  return hok\n"
    "end\n"
    "if not is(ck, 'zset') then bad() end\n"
    "for i = 3, #ARGV, 4 do\n"
    "  local m, u, n = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]\n"
    "  if not ok then\n"
    "  elseif ARGV[i] == 'u' then\n"
    "    if redis.call('ZADD', ck, exp, m) == 1 then\n"
    "      if not hashes_ok() then\n"
    "        redis.call('ZREM', ck, m)\n"
    "        bad()\n"
    "      else\n"
    "        redis.call('ZADD', KEYS[1], 'LT', exp, room)\n"
    "        if redis.call('HINCRBY', uk, u, 1) == 1 then\n"
    "          redis.call('HSET', nk, u, n)\n"
    "          out[#out + 1] = room; out[#out + 1] = 'join'\n"
    "          out[#out + 1] = u; out[#out + 1] = n\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  elseif not hashes_ok() then\n"
    "    bad()\n"
    "  elseif redis.call('ZREM', ck, m) == 1 then\n"
    "    if redis.call('HINCRBY', uk, u, -1) <= 0 then\n"
    "      n = redis.call('HGET', nk, u) or n\n"
    "      redis.call('HDEL', uk, u)\n"
    "      redis.call('HDEL', nk, u)\n"
    "      out[#out + 1] = room; out[#out + 1] = 'leave'\n"
    "      out[#out + 1] = u; out[#out + 1] = n\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

/* KEYS: the node's round lock. ARGV: token, lock ms, max rooms, max
 * entries, then the indexes to sweep (one on one Redis; every slot's on a
 * Cluster: keys not declared, allowed to a script without flags while they
 * are local; an index whose slot just moved is skipped through pcall).
 * Expires entries of the rooms whose earliest expiry has passed (at most
 * max entries per call; a room cut short stays due). Rooms whose keys are
 * not ours leave their index (they would fail every sweep). Returns {0}
 * when another node holds the round, else {more (0|1) + 2, room, user,
 * name, ...} for every user whose last entry expired (more: call again). */
static const char SWEEP_LUA[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur and cur ~= ARGV[1] then return {0} end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
    LUA_COMMON
    "local lim = tonumber(ARGV[3])\n"
    "local budget = tonumber(ARGV[4])\n"
    "local before = string.format('(%d', now)\n"
    "local out = {2}\n"
    "for i = 5, #ARGV do\n"
    "  if lim <= 0 or budget <= 0 then out[1] = 3; break end\n"
    "  local idx = ARGV[i]\n"
    "  local ty = redis.pcall('TYPE', idx)\n"
    "  if type(ty) == 'table' and ty['ok'] == 'zset' then\n"
    "    local rooms = redis.call('ZRANGEBYSCORE', idx, '-inf', before, 'LIMIT', 0, lim)\n"
    "    if #rooms >= lim then out[1] = 3 end\n"
    "    lim = lim - #rooms\n"
    "    for _, room in ipairs(rooms) do\n"
    "      local p = 'chat:{' .. room .. '}:presence:'\n"
    "      local ck, uk, nk = p .. 'conns', p .. 'users', p .. 'names'\n"
    "      if budget <= 0 then out[1] = 3; break end\n"
    "      if not ours(p) then\n"
    "        redis.call('ZREM', idx, room)\n"
    "      else\n"
    "        local ms = redis.call('ZRANGEBYSCORE', ck, '-inf', before, 'LIMIT', 0, budget)\n"
    "        budget = budget - #ms\n"
    "        for _, m in ipairs(ms) do\n"
    "          redis.call('ZREM', ck, m)\n"
    "          local u = string.match(m, '^[^|]*|[^|]*|(.*)$')\n"
    "          if u and redis.call('HINCRBY', uk, u, -1) <= 0 then\n"
    "            local n = redis.call('HGET', nk, u) or u\n"
    "            redis.call('HDEL', uk, u)\n"
    "            redis.call('HDEL', nk, u)\n"
    "            out[#out + 1] = room; out[#out + 1] = u; out[#out + 1] = n\n"
    "          end\n"
    "        end\n"
    "        local f = redis.call('ZRANGE', ck, 0, 0, 'WITHSCORES')\n"
    "        if #f == 0 then redis.call('ZREM', idx, room)\n"
    "        else\n"
    "          redis.call('ZADD', idx, f[2], room)\n"
    "          if tonumber(f[2]) < now then out[1] = 3 end\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

enum { S_APPLY = 0, S_SWEEP, S_COUNT };
static const char *const SCRIPTS[S_COUNT] = {APPLY_LUA, SWEEP_LUA};

typedef struct drem { char *room, *member, *user; } drem;

typedef struct rstore {
    pstore base;
    uv_loop_t *loop;
    redis_client *rc;
    int cluster;
    int freeing;
    int sweeping;            /* sweep calls in flight */
    int more;                /* a sweep said: call again */
    uint64_t bad_logged_ms;  /* last "foreign data" log line */
    char token[96];          /* this node's sweep lock value */
    drem *deferred;          /* removes of rooms whose shard was down */
    size_t ndef, capdef;
} rstore;

/* privdata of an apply call: enough to retry its removes. */
typedef struct apply_req {
    rstore *s;
    size_t nrem;
    char **rem;   /* room, member, user triples */
} apply_req;

static void index_key(const rstore *s, const char *room, char *out, size_t n)
{
    if (s->cluster)
        snprintf(out, n, "chat:{%s}:presence:rooms", redis_slot_tag(redis_room_slot(room)));
    else
        snprintf(out, n, "chat:presence:rooms");
}

/* ---- removes of rooms whose shard is down ---- */

static void defer_remove(rstore *s, const char *room, const char *member, const char *user)
{
    if (s->ndef >= MAX_DEFERRED) return; /* expires by ttl instead */
    if (s->ndef == s->capdef) {
        size_t cap = s->capdef ? s->capdef * 2 : 64;
        drem *n = realloc(s->deferred, cap * sizeof *n);
        if (!n) return;
        s->deferred = n;
        s->capdef = cap;
    }
    drem d = {strdup(room), strdup(member), strdup(user)};
    if (!d.room || !d.member || !d.user) {
        free(d.room); free(d.member); free(d.user);
        return;
    }
    s->deferred[s->ndef++] = d;
}

static void deferred_free(rstore *s)
{
    for (size_t i = 0; i < s->ndef; i++) {
        free(s->deferred[i].room);
        free(s->deferred[i].member);
        free(s->deferred[i].user);
    }
    free(s->deferred);
    s->deferred = NULL;
    s->ndef = s->capdef = 0;
}

/* hands the deferred removes back to presence.c (queued for its next flush) */
static void deferred_replay(rstore *s)
{
    drem *d = s->deferred;
    size_t n = s->ndef;
    s->deferred = NULL;
    s->ndef = s->capdef = 0;
    for (size_t i = 0; i < n; i++) {
        if (!s->freeing) s->base.sink->retry_remove(s->base.ud, d[i].room, d[i].member, d[i].user);
        free(d[i].room);
        free(d[i].member);
        free(d[i].user);
    }
    free(d);
}

/* ---- node events ---- */

static void on_node(void *ud, uint64_t node, int up)
{
    rstore *s = ud;
    (void)node;
    if (s->freeing) return;
    if (up) {
        /* the node may have lost our entries (restart, failover): re-add */
        s->base.sink->ready(s->base.ud, 1);
        deferred_replay(s);
    } else if (!redis_client_ready(s->rc)) {
        s->sweeping = 0;
        s->base.sink->ready(s->base.ud, 0);
    }
}

static void on_map(void *ud)
{
    rstore *s = ud;
    if (s->freeing) return;
    /* slots moved (migration, failover): re-add, and replay removes */
    s->base.sink->ready(s->base.ud, 1);
    deferred_replay(s);
}

static int rs_ready(pstore *b) { return redis_client_ready(((rstore *)b)->rc); }

/* ---- reply interpretation (pure; fuzzed by tests/fuzz/fuzz_resp.c) ----
 * Only groups of strings with a valid room name (and an event join/leave)
 * are taken: the room and the event go into JSON frames as they are, so a
 * reply that does not have the script's shape (foreign data, a proxy, a
 * bug) is skipped group by group. */

static const char *str_of(const redisReply *e)
{
    return e && e->type == REDIS_REPLY_STRING && e->str && !memchr(e->str, 0, e->len) ? e->str
                                                                                      : NULL;
}

static int room_of(const redisReply *e)
{
    return e && e->type == REDIS_REPLY_STRING && e->str && room_name_valid(e->str, e->len);
}

int pstore_redis_apply_reply(const redisReply *rep, pstore_each_fn fn, void *ud, const char **bad)
{
    int n = 0;
    if (bad) *bad = NULL;
    if (!rep || rep->type != REDIS_REPLY_ARRAY) return -1;
    for (size_t i = 0; rep->element && i + 3 < rep->elements; i += 4) {
        const char *ev = str_of(rep->element[i + 1]), *u = str_of(rep->element[i + 2]),
                   *nm = str_of(rep->element[i + 3]);
        if (!room_of(rep->element[i]) || !ev) continue;
        if (strcmp(ev, "bad") == 0) {
            if (bad && !*bad) *bad = rep->element[i]->str;
            continue;
        }
        if ((strcmp(ev, "join") != 0 && strcmp(ev, "leave") != 0) || !u || !u[0] || !nm) continue;
        fn(ud, rep->element[i]->str, ev, u, nm);
        n++;
    }
    return n;
}

int pstore_redis_sweep_reply(const redisReply *rep, pstore_each_fn fn, void *ud, int *more)
{
    *more = 0;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 || !rep->element ||
        rep->element[0]->type != REDIS_REPLY_INTEGER || rep->element[0]->integer < 2)
        return -1;   /* another node sweeps this round */
    *more = rep->element[0]->integer == 3;
    int n = 0;
    for (size_t i = 1; i + 2 < rep->elements; i += 3) {
        const char *u = str_of(rep->element[i + 1]), *nm = str_of(rep->element[i + 2]);
        if (!room_of(rep->element[i]) || !u || !u[0] || !nm) continue;
        if (fn(ud, rep->element[i]->str, "leave", u, nm) != 0) break;
        n++;
    }
    return n;
}

size_t pstore_redis_list_reply(const redisReply *rep, presence_user *u)
{
    size_t n = 0;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || !rep->element) return 0;
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const char *user = str_of(rep->element[i]), *name = str_of(rep->element[i + 1]);
        if (!user || !user[0] || !name) continue;
        u[n].user = user;
        u[n].name = name;
        n++;
    }
    return n;
}

/* ---- apply ---- */

static void apply_req_free(apply_req *q)
{
    for (size_t i = 0; i < 3 * q->nrem; i++) free(q->rem[i]);
    free(q->rem);
    free(q);
}

static void apply_retry(apply_req *q)
{
    rstore *s = q->s;
    for (size_t i = 0; i < q->nrem; i++)
        s->base.sink->retry_remove(s->base.ud, q->rem[3 * i], q->rem[3 * i + 1],
                                   q->rem[3 * i + 2]);
}

static int apply_each(void *ud, const char *room, const char *ev, const char *user,
                      const char *name)
{
    rstore *s = ud;
    s->base.sink->transition(s->base.ud, room, ev, user, name);
    return 0;
}

static void rs_apply_cb(void *ud, const redisReply *rep)
{
    apply_req *q = ud;
    rstore *s = q->s;
    if (!rep) {
        /* connection lost, store freed, or the retry window ran out: the
         * removes may not have run */
        if (!s->freeing) apply_retry(q);
        apply_req_free(q);
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        LOGE(MOD, "presence apply: %.*s", (int)rep->len, rep->str ? rep->str : "");
    } else {
        const char *bad = NULL;
        pstore_redis_apply_reply(rep, apply_each, s, &bad);
        uint64_t now = mono_ms();
        if (bad && (!s->bad_logged_ms || now - s->bad_logged_ms >= 10000)) {
            s->bad_logged_ms = now;          /* at most one log line per 10 s */
            LOGE(MOD, "room %s: presence keys hold foreign data (wrong type); "
                 "its presence is skipped", bad);
        }
    }
    apply_req_free(q);
}

/* One EVALSHA for ops[0..n), all of one room. */
static void rs_apply_room(rstore *s, const pstore_op *ops, size_t n)
{
    const char *room = ops[0].room;
    size_t argc = 7 + 4 * n;
    const char **argv = malloc(argc * sizeof *argv);
    apply_req *q = calloc(1, sizeof *q);
    char ttl[16], kidx[64], ck[CHAT_ROOM_MAX + 40], uk[CHAT_ROOM_MAX + 40], nk[CHAT_ROOM_MAX + 40];
    size_t nrem = 0;
    for (size_t i = 0; i < n; i++) nrem += ops[i].op == 'r';
    if (!argv || !q || (nrem && !(q->rem = calloc(3 * nrem, sizeof *q->rem)))) {
        free(argv);
        free(q);
        LOGE(MOD, "out of memory applying presence of %s", room);
        return;
    }
    q->s = s;
    for (size_t i = 0; i < n; i++) {
        if (ops[i].op != 'r') continue;
        q->rem[3 * q->nrem] = strdup(ops[i].room);
        q->rem[3 * q->nrem + 1] = strdup(ops[i].member);
        q->rem[3 * q->nrem + 2] = strdup(ops[i].user);
        q->nrem++;
    }
    snprintf(ttl, sizeof ttl, "%u", (unsigned)s->base.ttl_ms);
    index_key(s, room, kidx, sizeof kidx);
    snprintf(ck, sizeof ck, "chat:{%s}:presence:conns", room);
    snprintf(uk, sizeof uk, "chat:{%s}:presence:users", room);
    snprintf(nk, sizeof nk, "chat:{%s}:presence:names", room);
    argv[0] = "4"; argv[1] = kidx; argv[2] = ck; argv[3] = uk; argv[4] = nk;
    argv[5] = ttl; argv[6] = room;
    for (size_t i = 0; i < n; i++) {
        const char **a = argv + 7 + 4 * i;
        a[0] = ops[i].op == 'u' ? "u" : "r";
        a[1] = ops[i].member;
        a[2] = ops[i].user;
        a[3] = ops[i].name ? ops[i].name : ops[i].user;
    }
    redis_call how = {.slot = redis_room_slot(room), .node = 0, .script = S_APPLY};
    if (redis_client_call(s->rc, &how, (int)argc, argv, NULL, rs_apply_cb, q) != 0) {
        /* the room's shard is down: its upserts come back with the resync
         * when a node is up again, its removes are kept until then */
        for (size_t i = 0; i < q->nrem; i++)
            defer_remove(s, q->rem[3 * i], q->rem[3 * i + 1], q->rem[3 * i + 2]);
        apply_req_free(q);
    }
    free(argv);
}

/* ops arrive grouped by room, upserts before removes within a room: one
 * call per room (or per APPLY_CHUNK ops of a big room), pipelined. */
static int rs_apply(pstore *b, const pstore_op *ops, size_t n)
{
    rstore *s = (rstore *)b;
    if (!redis_client_ready(s->rc)) return -1;
    size_t i = 0;
    while (i < n) {
        size_t j = i + 1;
        while (j < n && j - i < APPLY_CHUNK && strcmp(ops[j].room, ops[i].room) == 0) j++;
        rs_apply_room(s, ops + i, j - i);
        i = j;
    }
    return 0;
}

/* ---- sweep ---- */

static void rs_sweep(pstore *b);

static int sweep_each(void *ud, const char *room, const char *ev, const char *user,
                      const char *name)
{
    rstore *s = ud;
    s->base.sink->transition(s->base.ud, room, ev, user, name);
    return s->freeing ? -1 : 0;   /* the sink freed the store: stop */
}

static void rs_sweep_cb(void *ud, const redisReply *rep)
{
    rstore *s = ud;
    if (s->sweeping > 0) s->sweeping--;
    if (!rep || s->freeing) return;
    if (rep->type == REDIS_REPLY_ERROR) {
        LOGE(MOD, "presence sweep: %.*s", (int)rep->len, rep->str ? rep->str : "");
        return;
    }
    int more = 0;
    if (pstore_redis_sweep_reply(rep, sweep_each, s, &more) < 0) return; /* another node's round */
    if (more) s->more = 1;
    if (s->freeing) return;
    if (s->sweeping == 0 && s->more) {
        s->more = 0;
        rs_sweep(&s->base);
    }
}

static void sweep_node(void *ud, uint64_t node, const uint16_t (*ranges)[2], int nranges)
{
    rstore *s = ud;
    char lockms[16];
    /* the slot indexes of this master, and the round's lock at its first slot */
    size_t nidx, nl;
    char **idx = redis_slot_keys(s->cluster, ranges, nranges, "presence:rooms", &nidx);
    const uint16_t first[1][2] = {{nranges ? ranges[0][0] : 0, nranges ? ranges[0][0] : 0}};
    char **klock = idx ? redis_slot_keys(s->cluster, first, 1, "presence:sweeplock", &nl) : NULL;
    const char **v = klock ? malloc((6 + nidx) * sizeof *v) : NULL;
    if (!v) {
        free(idx);
        free(klock);
        return;
    }
    /* a round: an eighth of the ttl (the core sweeps every ttl/6 by default) */
    snprintf(lockms, sizeof lockms, "%u", (unsigned)(s->base.ttl_ms / 8 ? s->base.ttl_ms / 8 : 1));
    v[0] = "1";
    v[1] = klock[0];
    v[2] = s->token;
    v[3] = lockms;
    v[4] = SWEEP_MAX_ROOMS;
    v[5] = SWEEP_MAX_ENTRIES;
    for (size_t i = 0; i < nidx; i++) v[6 + i] = idx[i];
    redis_call how = {.slot = -1, .node = node, .script = S_SWEEP};
    if (redis_client_call(s->rc, &how, (int)(6 + nidx), v, NULL, rs_sweep_cb, s) == 0) s->sweeping++;
    free(v);
    free(idx);
    free(klock);
}

static void rs_sweep(pstore *b)
{
    rstore *s = (rstore *)b;
    if (s->freeing || s->sweeping) return;
    redis_client_masters(s->rc, sweep_node, s);
}

/* ---- list ---- */

typedef struct list_req { rstore *s; void *req; } list_req;

static void rs_list_cb(void *ud, const redisReply *rep)
{
    list_req *l = ud;
    rstore *s = l->s;
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        if (rep && rep->type == REDIS_REPLY_ERROR)
            LOGE(MOD, "presence list: %.*s", (int)rep->len, rep->str ? rep->str : "");
        s->base.sink->list_done(s->base.ud, l->req, -1, NULL, 0);
        free(l);
        return;
    }
    size_t n = rep->elements / 2;
    presence_user *u = calloc(n ? n : 1, sizeof *u);
    if (!u) {
        s->base.sink->list_done(s->base.ud, l->req, -1, NULL, 0);
        free(l);
        return;
    }
    size_t k = pstore_redis_list_reply(rep, u);
    s->base.sink->list_done(s->base.ud, l->req, 0, u, k);
    free(u);
    free(l);
}

static int rs_list(pstore *b, const char *room, void *req)
{
    rstore *s = (rstore *)b;
    list_req *l = malloc(sizeof *l);
    if (!l) return -1;
    l->s = s;
    l->req = req;
    char key[CHAT_ROOM_MAX + 40];
    snprintf(key, sizeof key, "chat:{%s}:presence:names", room);
    const char *argv[] = {"HGETALL", key};
    redis_call how = {.slot = redis_room_slot(room), .node = 0, .script = -1};
    if (redis_client_call(s->rc, &how, 2, argv, NULL, rs_list_cb, l) != 0) {
        free(l);
        return -1;
    }
    return 0;
}

/* ---- lifetime ---- */

static void rs_free(pstore *b)
{
    rstore *s = (rstore *)b;
    s->freeing = 1;
    /* pending callbacks run now with NULL; list_done(-1) for lists */
    redis_client_free(s->rc);
    deferred_free(s);
    free(s);
}

static const pstore_vt redis_vt = { rs_ready, rs_apply, rs_sweep, rs_list, rs_free, NULL, 0 };
static const redis_client_handlers CLIENT_H = {on_node, on_map, NULL};

pstore *pstore_redis_new(uv_loop_t *loop, const char *url, uint32_t ttl_ms, uint32_t linger_ms,
                         const pstore_sink *sink, void *ud, char *err, size_t errlen)
{
    rstore *s = calloc(1, sizeof *s);
    if (!s) { snprintf(err, errlen, "out of memory"); return NULL; }
    s->base.vt = &redis_vt;
    s->base.sink = sink;
    s->base.ud = ud;
    s->base.ttl_ms = ttl_ms;
    s->loop = loop;
    char host[64] = "node";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    snprintf(s->token, sizeof s->token, "%s-%d-%" PRIx64, host, (int)getpid(),
             mono_ns() ^ (uint64_t)(uintptr_t)s);
    redis_client_opts o = {url, MOD, SCRIPTS, S_COUNT, 0, 0, linger_ms};
    s->rc = redis_client_new(loop, &o, &CLIENT_H, s, err, errlen);
    if (!s->rc) {
        free(s);
        return NULL;
    }
    s->cluster = redis_client_is_cluster(s->rc);
    return &s->base;
}
