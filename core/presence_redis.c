/* presence_redis: the Redis presence store (hiredis async on the caller's
 * libuv loop, its own command connection).
 * Keys per room (hash tag = room): chat:{room}:presence:conns (zset member
 * "<node>|<conn_id>|<user>" -> expiry ms), chat:{room}:presence:users (hash
 * user -> live entry count), chat:{room}:presence:names (hash user -> name);
 * plus one global index chat:presence:rooms (zset room -> a time no later
 * than the earliest expiry of its entries: new entries lower it, refreshes
 * and removes leave it, the sweep resets it exactly) so every node's sweeper
 * finds rooms of dead nodes and a heartbeat costs one ZADD. Every
 * change is one of two Lua scripts, so the count and the transition it
 * implies are decided atomically in Redis; expiry uses Redis TIME (no node
 * clock skew). Scripts are loaded on every connect and called by SHA; a
 * NOSCRIPT answer reloads them and triggers a resync.
 * Owns: the connection, reconnect backoff timer, watchdog timer (hiredis'
 * libuv adapter never reports a poll error, so a stuck connect or a silent
 * socket is detected by time), in-flight requests (each reply callback runs
 * exactly once: hiredis calls pending ones with NULL on free/disconnect). */
#define _GNU_SOURCE
#include "presence_store.h"
#include "backoff.h"
#include "log.h"
#include "util.h"
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define MOD "presence"
#define INDEX_KEY "chat:presence:rooms"
#define SWEEP_MAX_ROOMS "256"
#define SWEEP_MAX_ENTRIES "4096"
#define APPLY_CHUNK 512
#define CONNECT_TIMEOUT_MS 2000
#define REPLY_TIMEOUT_MS 5000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

/* Both scripts refuse foreign data before writing anything to it: Redis
 * does not roll back a script that fails half way, and a half-applied batch
 * would change counts without anyone announcing the transitions (a later
 * second join). A room whose keys have another type (not ours) is skipped
 * and reported as {room, "bad"}; an index of another type fails the call. */
#define LUA_PRELUDE \
    "local it = redis.call('TYPE', KEYS[1])['ok']\n" \
    "if it ~= 'zset' and it ~= 'none' then\n" \
    "  return redis.error_reply('presence index ' .. KEYS[1] .. ' is a ' .. it)\n" \
    "end\n" \
    "local function is(k, want)\n" \
    "  local ty = redis.call('TYPE', k)['ok']\n" \
    "  return ty == want or ty == 'none'\n" \
    "end\n" \
    "local function ours(p)\n" \
    "  return is(p .. 'conns', 'zset') and is(p .. 'users', 'hash') and is(p .. 'names', 'hash')\n" \
    "end\n" \
    "local t = redis.call('TIME')\n" \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/* KEYS: index. ARGV: ttl_ms, then groups of room, op ('u'|'r'), member,
 * user, name (grouped by room, upserts first). Returns flat
 * {room, event, user, name, ...}, event "join", "leave" or "bad". One call
 * carries the ops of many rooms, so room keys are built here (standalone
 * Redis / one shard, see docs). A heartbeat batch is mostly refreshes, which
 * only touch the conns zset: its type is checked once per room and call,
 * the two hashes only before a count changes (a new entry is taken back if
 * they turn out foreign). */
static const char APPLY_LUA[] =
    LUA_PRELUDE
    "local exp = now + tonumber(ARGV[1])\n"
    "local out = {}\n"
    "local room, ck, uk, nk, ok, hok\n"
    "local function bad()\n"
    "  ok = false\n"
    "  out[#out + 1] = room; out[#out + 1] = 'bad'; out[#out + 1] = ''; out[#out + 1] = ''\n"
    "end\n"
    "local function hashes_ok()\n"
    "  if hok == nil then hok = is(uk, 'hash') and is(nk, 'hash') end\n"
    "  return hok\n"
    "end\n"
    "for i = 2, #ARGV, 5 do\n"
    "  if ARGV[i] ~= room then\n"
    "    room = ARGV[i]\n"
    "    local p = 'chat:{' .. room .. '}:presence:'\n"
    "    ck, uk, nk = p .. 'conns', p .. 'users', p .. 'names'\n"
    "    ok, hok = true, nil\n"
    "    if not is(ck, 'zset') then bad() end\n"
    "  end\n"
    "  local m, u, n = ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]\n"
    "  if not ok then\n"
    "  elseif ARGV[i + 1] == 'u' then\n"
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

/* KEYS: index. ARGV: max rooms, max entries. Expires entries of the rooms
 * whose earliest expiry has passed (at most max entries per call; a room
 * cut short stays due). Rooms whose keys are not ours leave the index (they
 * would fail every sweep). Returns {more (0|1), room, user, name, ...} for
 * every user whose last entry expired. */
static const char SWEEP_LUA[] =
    LUA_PRELUDE
    "local lim = tonumber(ARGV[1])\n"
    "local budget = tonumber(ARGV[2])\n"
    "local before = string.format('(%d', now)\n"
    "local rooms = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', before, 'LIMIT', 0, lim)\n"
    "local out = {#rooms >= lim and 1 or 0}\n"
    "for _, room in ipairs(rooms) do\n"
    "  local p = 'chat:{' .. room .. '}:presence:'\n"
    "  local ck, uk, nk = p .. 'conns', p .. 'users', p .. 'names'\n"
    "  if budget <= 0 then out[1] = 1; break end\n"
    "  if not ours(p) then\n"
    "    redis.call('ZREM', KEYS[1], room)\n"
    "  else\n"
    "    local ms = redis.call('ZRANGEBYSCORE', ck, '-inf', before, 'LIMIT', 0, budget)\n"
    "    budget = budget - #ms\n"
    "    for _, m in ipairs(ms) do\n"
    "      redis.call('ZREM', ck, m)\n"
    "      local u = string.match(m, '^[^|]*|[^|]*|(.*)$')\n"
    "      if u and redis.call('HINCRBY', uk, u, -1) <= 0 then\n"
    "        local n = redis.call('HGET', nk, u) or u\n"
    "        redis.call('HDEL', uk, u)\n"
    "        redis.call('HDEL', nk, u)\n"
    "        out[#out + 1] = room; out[#out + 1] = u; out[#out + 1] = n\n"
    "      end\n"
    "    end\n"
    "    local f = redis.call('ZRANGE', ck, 0, 0, 'WITHSCORES')\n"
    "    if #f == 0 then redis.call('ZREM', KEYS[1], room)\n"
    "    else\n"
    "      redis.call('ZADD', KEYS[1], f[2], room)\n"
    "      if tonumber(f[2]) < now then out[1] = 1 end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

typedef struct rstore {
    pstore base;
    uv_loop_t *loop;
    char host[256];
    int port, db;
    char *password;
    redisAsyncContext *ac;
    int connected;           /* connect callback succeeded, scripts queued */
    int freeing;
    int sweeping;            /* a sweep is in flight */
    uv_timer_t retry, watchdog;
    int nclosing;
    backoff bo;
    uint64_t connect_started_ms;
    uint64_t busy_since_ms;  /* last progress while replies are outstanding */
    unsigned inflight;
    uint64_t bad_logged_ms;  /* last "foreign data" log line */
    char sha_apply[41], sha_sweep[41];
} rstore;

/* privdata of an apply call: enough to retry its removes. */
typedef struct apply_req {
    rstore *s;
    size_t nrem;
    char **rem;   /* room, member, user triples */
} apply_req;

static void rs_connect(rstore *s);
static void rs_retry_cb(uv_timer_t *t) { rs_connect(t->data); }

static void sha1_hex(const char *src, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(src, strlen(src), md, &len, EVP_sha1(), NULL);
    for (unsigned i = 0; i < len && i < 20; i++) sprintf(out + 2 * i, "%02x", md[i]);
    out[40] = 0;
}

static int parse_url(rstore *s, const char *url, char *err, size_t errlen)
{
    const char *p = url;
    s->port = 6379;
    s->db = 0;
    if (strncmp(p, "redis://", 8) == 0) p += 8;
    const char *at = strchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        s->password = strndup(pw, (size_t)(at - pw));
        p = at + 1;
    }
    size_t hl = strcspn(p, ":/");
    if (hl == 0 || hl >= sizeof s->host) { snprintf(err, errlen, "bad redis url host"); return -1; }
    memcpy(s->host, p, hl);
    s->host[hl] = 0;
    p += hl;
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (port <= 0 || port > 65535) { snprintf(err, errlen, "bad redis url port"); return -1; }
        s->port = (int)port;
        p = end;
    }
    if (*p == '/' && p[1]) s->db = atoi(p + 1);
    return 0;
}

static void rs_note_sent(rstore *s)
{
    if (s->inflight++ == 0) s->busy_since_ms = mono_ms();
}

static void rs_note_reply(rstore *s)
{
    if (s->inflight) s->inflight--;
    s->busy_since_ms = mono_ms();
}

static void rs_schedule_retry(rstore *s)
{
    if (s->freeing) return;
    uint32_t delay = backoff_next(&s->bo);
    uv_timer_start(&s->retry, rs_retry_cb, delay, 0);
}

/* The connection is gone (already freed by hiredis or by us). */
static void rs_lost(rstore *s, const char *why)
{
    int was = s->connected;
    s->ac = NULL;
    s->connected = 0;
    s->sweeping = 0;
    s->inflight = 0;
    if (s->freeing) return;
    LOGW(MOD, "redis %s:%d %s; reconnecting", s->host, s->port, why);
    if (was) s->base.sink->ready(s->base.ud, 0);
    rs_schedule_retry(s);
}

static void rs_generic_cb(redisAsyncContext *ac, void *r, void *priv)
{
    rstore *s = ac->data;
    redisReply *rep = r;
    if (!s) return;
    if (rep) rs_note_reply(s);
    if (rep && rep->type == REDIS_REPLY_ERROR)
        LOGE(MOD, "redis %s: %s", (const char *)priv, rep->str);
}

static int rs_cmd(rstore *s, redisCallbackFn *cb, void *priv, int argc, const char **argv,
                  const size_t *lens)
{
    if (!s->ac || redisAsyncCommandArgv(s->ac, cb, priv, argc, argv, lens) != REDIS_OK)
        return -1;
    rs_note_sent(s);
    return 0;
}

static void rs_load_scripts(rstore *s)
{
    const char *a1[] = { "SCRIPT", "LOAD", APPLY_LUA };
    const char *a2[] = { "SCRIPT", "LOAD", SWEEP_LUA };
    rs_cmd(s, rs_generic_cb, "SCRIPT LOAD", 3, a1, NULL);
    rs_cmd(s, rs_generic_cb, "SCRIPT LOAD", 3, a2, NULL);
}

static void rs_on_connect(const redisAsyncContext *ac, int status)
{
    rstore *s = ac->data;
    if (!s || ac != s->ac) return;
    if (status != REDIS_OK) {
        rs_lost(s, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    backoff_reset(&s->bo);
    if (s->password) {
        const char *a[] = { "AUTH", s->password };
        rs_cmd(s, rs_generic_cb, "AUTH", 2, a, NULL);
    }
    if (s->db) {
        char db[16];
        snprintf(db, sizeof db, "%d", s->db);
        const char *a[] = { "SELECT", db };
        rs_cmd(s, rs_generic_cb, "SELECT", 2, a, NULL);
    }
    rs_load_scripts(s);
    s->connected = 1;
    LOGI(MOD, "redis %s:%d connected", s->host, s->port);
    s->base.sink->ready(s->base.ud, 1);
}

static void rs_on_disconnect(const redisAsyncContext *ac, int status)
{
    rstore *s = ac->data;
    if (!s || ac != s->ac) return;
    rs_lost(s, status == REDIS_OK ? "disconnected" : (ac->errstr[0] ? ac->errstr : "error"));
}

static void rs_connect(rstore *s)
{
    if (s->freeing || s->ac) return;
    redisAsyncContext *ac = redisAsyncConnect(s->host, s->port);
    if (!ac) { rs_lost(s, "out of memory"); return; }
    if (ac->err) {
        char e[128];
        snprintf(e, sizeof e, "%s", ac->errstr);
        redisAsyncFree(ac);
        rs_lost(s, e);
        return;
    }
    if (redisLibuvAttach(ac, s->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        rs_lost(s, "libuv attach failed");
        return;
    }
    ac->data = s;
    s->ac = ac;
    s->connect_started_ms = mono_ms();
    redisAsyncSetConnectCallback(ac, rs_on_connect);
    redisAsyncSetDisconnectCallback(ac, rs_on_disconnect);
}

/* Drop the current connection (stuck) and reconnect. */
static void rs_force_reconnect(rstore *s, const char *why)
{
    redisAsyncContext *ac = s->ac;
    s->ac = NULL;            /* callbacks of ac now see a foreign context */
    if (ac) redisAsyncFree(ac);
    rs_lost(s, why);
}

static void rs_watchdog(uv_timer_t *t)
{
    rstore *s = t->data;
    if (!s->ac) return;
    uint64_t now = mono_ms();
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (s->ac->c.fd >= 0 &&
        getsockopt(s->ac->c.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr) {
        /* e.g. connection refused: the adapter swallows the poll error */
        rs_force_reconnect(s, strerror(soerr));
    } else if (!s->connected && now - s->connect_started_ms > CONNECT_TIMEOUT_MS)
        rs_force_reconnect(s, "connect timed out");
    else if (s->connected && s->inflight && now - s->busy_since_ms > REPLY_TIMEOUT_MS)
        rs_force_reconnect(s, "reply timed out");
}

static int rs_ready(pstore *b) { return ((rstore *)b)->connected; }

static int reply_is_noscript(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* Scripts vanished (SCRIPT FLUSH or a restart behind a proxy): load them
 * again and have the core re-add everything. */
static void rs_noscript(rstore *s)
{
    LOGW(MOD, "redis lost the presence scripts; reloading");
    rs_load_scripts(s);
    s->base.sink->ready(s->base.ud, 1);
}

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

static void rs_apply_cb(redisAsyncContext *ac, void *r, void *priv)
{
    apply_req *q = priv;
    rstore *s = q->s;
    redisReply *rep = r;
    if (!rep) {
        /* connection lost or store freed: the removes may not have run. */
        if (!s->freeing) apply_retry(q);
        apply_req_free(q);
        return;
    }
    rs_note_reply(s);
    if (reply_is_noscript(rep)) {
        apply_retry(q);
        rs_noscript(s);
    } else if (rep->type == REDIS_REPLY_ERROR) {
        LOGE(MOD, "presence apply: %s", rep->str);
    } else if (rep->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 3 < rep->elements; i += 4) {
            const char *room = rep->element[i]->str, *ev = rep->element[i + 1]->str;
            if (!room || !ev) continue;
            if (strcmp(ev, "bad") == 0) {   /* at most one log line per 10 s */
                uint64_t now = mono_ms();
                if (!s->bad_logged_ms || now - s->bad_logged_ms >= 10000) {
                    s->bad_logged_ms = now;
                    LOGE(MOD, "room %s: presence keys hold foreign data (wrong type); "
                         "its presence is skipped", room);
                }
                continue;
            }
            s->base.sink->transition(s->base.ud, room, ev, rep->element[i + 2]->str,
                                     rep->element[i + 3]->str);
        }
    }
    apply_req_free(q);
}

/* One EVALSHA for ops[0..n). */
static int rs_apply_chunk(rstore *s, const pstore_op *ops, size_t n)
{
    size_t argc = 5 + 5 * n;
    const char **argv = malloc(argc * sizeof *argv);
    apply_req *q = calloc(1, sizeof *q);
    char ttl[16];
    if (!argv || !q) { free(argv); free(q); return -1; }
    q->s = s;
    snprintf(ttl, sizeof ttl, "%u", (unsigned)s->base.ttl_ms);
    argv[0] = "EVALSHA"; argv[1] = s->sha_apply; argv[2] = "1"; argv[3] = INDEX_KEY;
    argv[4] = ttl;
    size_t nrem = 0;
    for (size_t i = 0; i < n; i++) {
        const char **a = argv + 5 + 5 * i;
        a[0] = ops[i].room;
        a[1] = ops[i].op == 'u' ? "u" : "r";
        a[2] = ops[i].member;
        a[3] = ops[i].user;
        a[4] = ops[i].name ? ops[i].name : ops[i].user;
        if (ops[i].op == 'r') nrem++;
    }
    if (nrem && !(q->rem = calloc(3 * nrem, sizeof *q->rem))) { free(argv); free(q); return -1; }
    for (size_t i = 0; nrem && i < n; i++) {
        if (ops[i].op != 'r') continue;
        q->rem[3 * q->nrem] = strdup(ops[i].room);
        q->rem[3 * q->nrem + 1] = strdup(ops[i].member);
        q->rem[3 * q->nrem + 2] = strdup(ops[i].user);
        q->nrem++;
    }
    int rc = rs_cmd(s, rs_apply_cb, q, (int)argc, argv, NULL);
    free(argv);
    if (rc < 0) { apply_req_free(q); return -1; }
    return 0;
}

/* Chunks keep each script short (Redis runs one script at a time); a chunk
 * ends at a room boundary when possible so a room's upserts stay before its
 * removes. */
static int rs_apply(pstore *b, const pstore_op *ops, size_t n)
{
    rstore *s = (rstore *)b;
    if (!s->connected) return -1;
    size_t i = 0;
    while (i < n) {
        size_t j = i + APPLY_CHUNK < n ? i + APPLY_CHUNK : n;
        if (j < n) {
            size_t k = j;
            while (k > i && strcmp(ops[k].room, ops[k - 1].room) == 0) k--;
            if (k > i) j = k;
        }
        if (rs_apply_chunk(s, ops + i, j - i) < 0) return -1;
        i = j;
    }
    return 0;
}

static void rs_sweep_cb(redisAsyncContext *ac, void *r, void *priv)
{
    rstore *s = priv;
    redisReply *rep = r;
    if (!rep) return;
    rs_note_reply(s);
    s->sweeping = 0;
    if (reply_is_noscript(rep)) { rs_noscript(s); return; }
    if (rep->type == REDIS_REPLY_ERROR) { LOGE(MOD, "presence sweep: %s", rep->str); return; }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1) return;
    int more = rep->element[0]->type == REDIS_REPLY_INTEGER && rep->element[0]->integer;
    for (size_t i = 1; i + 2 < rep->elements; i += 3)
        s->base.sink->transition(s->base.ud, rep->element[i]->str, "leave",
                                 rep->element[i + 1]->str, rep->element[i + 2]->str);
    if (more && !s->freeing) s->base.vt->sweep(&s->base);
}

static void rs_sweep(pstore *b)
{
    rstore *s = (rstore *)b;
    if (!s->connected || s->sweeping) return;
    const char *argv[] = { "EVALSHA", s->sha_sweep, "1", INDEX_KEY, SWEEP_MAX_ROOMS,
                           SWEEP_MAX_ENTRIES };
    if (rs_cmd(s, rs_sweep_cb, s, 6, argv, NULL) == 0) s->sweeping = 1;
}

typedef struct list_req { rstore *s; void *req; } list_req;

static void rs_list_cb(redisAsyncContext *ac, void *r, void *priv)
{
    list_req *l = priv;
    rstore *s = l->s;
    redisReply *rep = r;
    if (rep) rs_note_reply(s);
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        if (rep && rep->type == REDIS_REPLY_ERROR) LOGE(MOD, "presence list: %s", rep->str);
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
    for (size_t i = 0; i < n; i++) {
        u[i].user = rep->element[2 * i]->str;
        u[i].name = rep->element[2 * i + 1]->str;
    }
    s->base.sink->list_done(s->base.ud, l->req, 0, u, n);
    free(u);
    free(l);
}

static int rs_list(pstore *b, const char *room, void *req)
{
    rstore *s = (rstore *)b;
    if (!s->connected) return -1;
    list_req *l = malloc(sizeof *l);
    if (!l) return -1;
    l->s = s;
    l->req = req;
    char key[CHAT_ROOM_MAX + 40];
    snprintf(key, sizeof key, "chat:{%s}:presence:names", room);
    const char *argv[] = { "HGETALL", key };
    if (rs_cmd(s, rs_list_cb, l, 2, argv, NULL) < 0) { free(l); return -1; }
    return 0;
}

static void rs_closed(uv_handle_t *h)
{
    rstore *s = h->data;
    if (--s->nclosing == 0) {
        free(s->password);
        free(s);
    }
}

static void rs_free(pstore *b)
{
    rstore *s = (rstore *)b;
    s->freeing = 1;
    s->connected = 0;
    redisAsyncContext *ac = s->ac;
    s->ac = NULL;
    if (ac) redisAsyncFree(ac);   /* pending callbacks run now, reply NULL */
    s->nclosing = 2;
    uv_close((uv_handle_t *)&s->retry, rs_closed);
    uv_close((uv_handle_t *)&s->watchdog, rs_closed);
}

static const pstore_vt redis_vt = { rs_ready, rs_apply, rs_sweep, rs_list, rs_free };

pstore *pstore_redis_new(uv_loop_t *loop, const char *url, uint32_t ttl_ms,
                         const pstore_sink *sink, void *ud, char *err, size_t errlen)
{
    rstore *s = calloc(1, sizeof *s);
    if (!s) { snprintf(err, errlen, "out of memory"); return NULL; }
    if (parse_url(s, url, err, errlen) < 0) { free(s->password); free(s); return NULL; }
    s->base.vt = &redis_vt;
    s->base.sink = sink;
    s->base.ud = ud;
    s->base.ttl_ms = ttl_ms;
    s->loop = loop;
    backoff_init(&s->bo, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
    sha1_hex(APPLY_LUA, s->sha_apply);
    sha1_hex(SWEEP_LUA, s->sha_sweep);
    uv_timer_init(loop, &s->retry);
    uv_timer_init(loop, &s->watchdog);
    s->retry.data = s;
    s->watchdog.data = s;
    uv_timer_start(&s->watchdog, rs_watchdog, 250, 250);
    rs_connect(s);
    return &s->base;
}
