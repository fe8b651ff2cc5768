/* bus_redis: the Redis backend of the bus (hiredis async on the caller's
 * libuv loop).
 * Owns: the two connections of one session (commands; subscriptions), the
 * session handshake (AUTH, SELECT, SCRIPT LOAD / PING), reconnection with
 * capped jittered exponential backoff (one uv timer), the per-room channel
 * subscriptions (SUBSCRIBE/UNSUBSCRIBE, one transition in flight per room),
 * the publish script calls (EVALSHA, SCRIPT LOAD + retry on NOSCRIPT),
 * replay, range fetches for gap fills, and readiness (ready only once the
 * session is up, every room resubscribed and caught up). The backfill
 * (bus_backfill.c) borrows the command connection (bus_redis_cmd).
 * When either connection is lost the whole session is dropped (both
 * connections freed, every pending command answered with -1) and rebuilt. */
#define _GNU_SOURCE
#include "bus_int.h"
#include "backoff.h"
#include "log.h"
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "bus"
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
#define CONNECT_TIMEOUT_MS 3000  /* connect + handshake */
#define PING_EVERY_MS 1000       /* health check of the command connection */
#define PING_TIMEOUT_MS 5000

enum { ST_WAIT = 0, ST_CONNECTING, ST_UP };

typedef struct busr {
    bus *b;
    bus_url url;
    redisAsyncContext *cmd, *sub;
    int state;
    int cmd_ok, sub_ok;      /* handshake of each connection done */
    int ever_up;
    int recovering;          /* up, waiting for rooms to catch up */
    int logged_down;
    char sha[41];
    uv_timer_t retry;        /* reconnect backoff, then connect deadline */
    uv_timer_t ping;         /* health check while up */
    uint64_t ping_sent;      /* mono ms of the outstanding PING, 0: none */
    int open_handles;
    backoff bo;
} busr;

/* internal (non-user) requests */
typedef struct room_op {
    char room[CHAT_ROOM_MAX + 1];
    uint64_t sub_id, from, to, t0;
    bus *b;
    int seeded;              /* head read with a seed (resync) */
} room_op;

static void session_start(busr *R);
static void session_fail(busr *R, const redisAsyncContext *dying, const char *why);
static void reconcile(bus *b, bus_room *room);

static busr *R_of(const redisAsyncContext *ac) { return ac->data; }

static double since_s(uint64_t t0) { return (double)(mono_ns() - t0) / 1e9; }

static int is_current(busr *R, const redisAsyncContext *ac)
{
    return ac && (ac == R->cmd || ac == R->sub);
}

/* A NULL reply means hiredis is freeing ac: forget it, drop the session. */
static void on_dead_reply(busr *R, const redisAsyncContext *ac)
{
    if (R->b->freeing || !is_current(R, ac)) return;
    if (ac == R->cmd) R->cmd = NULL;
    if (ac == R->sub) R->sub = NULL;
    session_fail(R, ac, ac->errstr[0] ? ac->errstr : "connection lost");
}

static int reply_err(const redisReply *rp, const char *prefix)
{
    return rp->type == REDIS_REPLY_ERROR &&
           strncmp(rp->str, prefix, strlen(prefix)) == 0;
}

/* ---- keys and channels ---- */

static void key(char *out, size_t n, const char *room, const char *suffix)
{
    snprintf(out, n, "chat:{%s}:%s", room, suffix);
}

/* "chat:{room}:kind" -> room, kind; -1 when not ours */
static int parse_channel(const char *s, size_t len, char *room, const char **kind)
{
    if (len < 9 || strncmp(s, "chat:{", 6) != 0) return -1;
    const char *rb = memchr(s + 6, '}', len - 6);
    if (!rb) return -1;
    size_t rl = (size_t)(rb - (s + 6));
    if (rl < 1 || rl > CHAT_ROOM_MAX || rb + 1 >= s + len || rb[1] != ':') return -1;
    memcpy(room, s + 6, rl);
    room[rl] = 0;
    *kind = rb + 2;
    return 0;
}

static int reply_u64(const redisReply *rp, uint64_t *v)
{
    if (rp->type == REDIS_REPLY_NIL) { *v = 0; return 0; }
    if (rp->type == REDIS_REPLY_INTEGER) { *v = (uint64_t)rp->integer; return 0; }
    if (rp->type == REDIS_REPLY_STRING) {
        char *e;
        *v = strtoull(rp->str, &e, 10);
        return e == rp->str ? -1 : 0;
    }
    return -1;
}

/* ---- readiness ---- */

static void check_ready(bus *b)
{
    busr *R = b->impl;
    if (b->freeing || R->state != ST_UP || !R->recovering) return;
    if (!bus_order_all_caught_up(b)) return;
    R->recovering = 0;
    bus_set_ready(b, 1);
}

/* ---- session: connect, handshake, fail, backoff ---- */

static void retry_cb(uv_timer_t *t)
{
    busr *R = t->data;
    if (R->b->freeing) return;
    if (R->state == ST_CONNECTING) session_fail(R, NULL, "connect/handshake timeout");
    else if (R->state == ST_WAIT) session_start(R);
}

static void ping_reply_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    busr *R = R_of(ac);
    (void)priv;
    if (!reply) { on_dead_reply(R, ac); return; }
    if (ac == R->cmd) R->ping_sent = 0;
}

/* A Redis that stops answering without closing (stopped, partitioned)
 * would leave publishes pending forever: drop the session instead. */
static void ping_cb(uv_timer_t *t)
{
    busr *R = t->data;
    if (R->b->freeing || R->state != ST_UP || !R->cmd) return;
    uint64_t now = mono_ms();
    if (R->ping_sent) {
        if (now - R->ping_sent > PING_TIMEOUT_MS) session_fail(R, NULL, "no reply to PING");
        return;
    }
    if (redisAsyncCommand(R->cmd, ping_reply_cb, NULL, "PING") == REDIS_OK) R->ping_sent = now;
}

static void schedule_retry(busr *R)
{
    uint64_t d = backoff_next(&R->bo);
    R->state = ST_WAIT;
    LOGD(MOD, "redis reconnect in %" PRIu64 " ms (attempt %u)", d, R->bo.attempts);
    uv_timer_start(&R->retry, retry_cb, d, 0);
}

static void session_up(busr *R)
{
    bus *b = R->b;
    if (R->state != ST_CONNECTING || !R->cmd_ok || !R->sub_ok) return;
    R->state = ST_UP;
    backoff_reset(&R->bo);
    R->ping_sent = 0;
    uv_timer_stop(&R->retry);
    uv_timer_start(&R->ping, ping_cb, PING_EVERY_MS, PING_EVERY_MS);
    R->recovering = 1;
    if (R->ever_up) metric_inc(b->m.reconnects);
    LOGI(MOD, "redis %s:%d %s", R->url.host, R->url.port,
         R->ever_up ? "reconnected, resubscribing" : "connected");
    R->ever_up = 1;
    R->logged_down = 0;
    size_t n = b->rooms.count;
    bus_room **rooms = n ? malloc(n * sizeof *rooms) : NULL;
    if (n && !rooms) {
        session_fail(R, NULL, "out of memory");
        return;
    }
    n = hmap_values(&b->rooms, (void **)rooms, n);
    for (size_t i = 0; i < n; i++) reconcile(b, rooms[i]);
    free(rooms);
    check_ready(b);
}

static void handshake_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    busr *R = R_of(ac);
    redisReply *rp = reply;
    const char *step = priv;
    if (!rp) { on_dead_reply(R, ac); return; }
    if (R->b->freeing || !is_current(R, ac)) return;
    if (rp->type == REDIS_REPLY_ERROR) {
        char why[300];
        snprintf(why, sizeof why, "%s: %s", step, rp->str);
        session_fail(R, NULL, why);
        return;
    }
    if (strcmp(step, "SCRIPT LOAD") == 0) {
        if (rp->type != REDIS_REPLY_STRING || rp->len != 40) {
            session_fail(R, NULL, "SCRIPT LOAD: unexpected reply");
            return;
        }
        memcpy(R->sha, rp->str, 40);
        R->sha[40] = 0;
        R->cmd_ok = 1;
    } else if (strcmp(step, "PING") == 0) {
        R->sub_ok = 1;
    }
    session_up(R);
}

static void connect_cb(const redisAsyncContext *ac, int status)
{
    busr *R = R_of(ac);
    if (status == REDIS_OK || R->b->freeing || !is_current(R, ac)) return;
    /* hiredis frees ac after this callback */
    if (ac == R->cmd) R->cmd = NULL;
    if (ac == R->sub) R->sub = NULL;
    session_fail(R, ac, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void disconnect_cb(const redisAsyncContext *ac, int status)
{
    busr *R = R_of(ac);
    (void)status;
    if (R->b->freeing || !is_current(R, ac)) return;
    if (ac == R->cmd) R->cmd = NULL;
    if (ac == R->sub) R->sub = NULL;
    session_fail(R, ac, ac->errstr[0] ? ac->errstr : "disconnected");
}

/* The 0.14.1 libuv adapter drops poll errors (status < 0: a refused
 * connect, a reset socket), and libuv stops the poll on them, so hiredis
 * would never learn that the connection failed. We keep the adapter's
 * attach and cleanup (its handle, its close) and route its events through
 * this callback, which hands errors to hiredis as read/write readiness:
 * hiredis then sees the socket error and fails the context properly. */
static void poll_cb(uv_poll_t *h, int status, int events)
{
    redisLibuvEvents *p = h->data;
    if (status < 0) events = p->events ? p->events : UV_READABLE;
    if (p->context && (events & UV_READABLE)) redisAsyncHandleRead(p->context);
    if (p->context && (events & UV_WRITABLE)) redisAsyncHandleWrite(p->context);
    if (status < 0 && p->context) {
        /* libuv stopped this poll for good; if hiredis did not see the
         * error (the read would block), the connection would hang silently
         * (the subscription connection has no health check): drop the
         * session instead */
        redisAsyncContext *ac = p->context;
        busr *R = R_of(ac);
        if (!R->b->freeing && is_current(R, ac)) session_fail(R, NULL, uv_strerror(status));
    }
}

static void ev_update(redisLibuvEvents *p)
{
    if (p->events) uv_poll_start(&p->handle, p->events, poll_cb);
    else uv_poll_stop(&p->handle);
}

static void ev_add_read(void *d) { redisLibuvEvents *p = d; p->events |= UV_READABLE; ev_update(p); }
static void ev_del_read(void *d) { redisLibuvEvents *p = d; p->events &= ~UV_READABLE; ev_update(p); }
static void ev_add_write(void *d) { redisLibuvEvents *p = d; p->events |= UV_WRITABLE; ev_update(p); }
static void ev_del_write(void *d) { redisLibuvEvents *p = d; p->events &= ~UV_WRITABLE; ev_update(p); }

static redisAsyncContext *connect_one(busr *R, const char **why)
{
    redisAsyncContext *ac = redisAsyncConnect(R->url.host, R->url.port);
    if (!ac) { *why = "out of memory"; return NULL; }
    if (ac->err) {
        static char buf[160];
        snprintf(buf, sizeof buf, "%s", ac->errstr);
        *why = buf;
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = R;
    if (redisLibuvAttach(ac, R->b->loop) != REDIS_OK) {
        *why = "cannot attach to the loop";
        redisAsyncFree(ac);
        return NULL;
    }
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    redisAsyncSetConnectCallback(ac, connect_cb);
    redisAsyncSetDisconnectCallback(ac, disconnect_cb);
    return ac;
}

static int send_auth(busr *R, redisAsyncContext *ac)
{
    if (!R->url.pass[0]) return 0;
    if (R->url.user[0])
        return redisAsyncCommand(ac, handshake_cb, (void *)"AUTH", "AUTH %s %s", R->url.user,
                                 R->url.pass) == REDIS_OK ? 0 : -1;
    return redisAsyncCommand(ac, handshake_cb, (void *)"AUTH", "AUTH %s", R->url.pass) == REDIS_OK
               ? 0 : -1;
}

static void session_start(busr *R)
{
    const char *why = NULL;
    R->state = ST_CONNECTING;
    R->cmd_ok = R->sub_ok = 0;
    R->cmd = connect_one(R, &why);
    if (R->cmd) R->sub = connect_one(R, &why);
    if (!R->cmd || !R->sub) {
        session_fail(R, NULL, why ? why : "connect failed");
        return;
    }
    int rc = send_auth(R, R->cmd);
    if (!rc && R->url.db)
        rc = redisAsyncCommand(R->cmd, handshake_cb, (void *)"SELECT", "SELECT %d", R->url.db) ==
                     REDIS_OK ? 0 : -1;
    if (!rc)
        rc = redisAsyncCommand(R->cmd, handshake_cb, (void *)"SCRIPT LOAD", "SCRIPT LOAD %s",
                               BUS_PUBLISH_LUA) == REDIS_OK ? 0 : -1;
    if (!rc) rc = send_auth(R, R->sub);
    if (!rc)
        rc = redisAsyncCommand(R->sub, handshake_cb, (void *)"PING", "PING") == REDIS_OK ? 0 : -1;
    if (rc) {
        session_fail(R, NULL, "cannot queue the handshake");
        return;
    }
    redisEnableKeepAlive(&R->cmd->c);
    redisEnableKeepAlive(&R->sub->c);
    if (R->state == ST_CONNECTING) uv_timer_start(&R->retry, retry_cb, CONNECT_TIMEOUT_MS, 0);
}

static int reset_room_cb(void *arg, const char *key, void *val)
{
    bus_room *room = val;
    bus *b = arg;
    room->sub_state = BUS_SUB_NONE;
    room->sub_pending = 0;
    bus_order_reset(b, room, 1);
    return 0;
}

/* Drops the session: every room back to unsubscribed (keeping its last
 * delivered seq), both connections freed (their pending commands answer
 * -1), replays waiting for a sync failed, on_ready(0), retry scheduled.
 * dying: a connection hiredis is already freeing (not freed again). */
static void session_fail(busr *R, const redisAsyncContext *dying, const char *why)
{
    bus *b = R->b;
    if (b->freeing) return;
    if (R->state == ST_WAIT && !R->cmd && !R->sub) return; /* already down */
    int was_ready = b->ready;
    b->ready = 0;
    R->state = ST_WAIT;
    R->cmd_ok = R->sub_ok = 0;
    R->recovering = 0;
    R->ping_sent = 0;
    uv_timer_stop(&R->ping);
    uv_timer_stop(&R->retry);
    if (!R->logged_down || was_ready) {
        LOGW(MOD, "redis %s:%d: %s", R->url.host, R->url.port, why);
        R->logged_down = 1;
    } else {
        LOGD(MOD, "redis %s:%d: %s", R->url.host, R->url.port, why);
    }
    /* 1. state only, no user callback */
    hmap_each(&b->rooms, reset_room_cb, b);
    bus_req *waiting = NULL;
    size_t n = b->rooms.count;
    bus_room **rooms = n ? malloc(n * sizeof *rooms) : NULL;
    n = rooms ? hmap_values(&b->rooms, (void **)rooms, n) : 0;
    for (size_t i = 0; i < n; i++) {
        bus_req *w = rooms[i]->waiting;
        rooms[i]->waiting = NULL;
        while (w) {
            bus_req *next = w->wnext;
            w->wnext = waiting;
            w->hold = 1; /* ours until answered below */
            waiting = w;
            w = next;
        }
        bus_room_maybe_free(b, rooms[i]);
    }
    free(rooms);
    /* 2. free the connections (pending publishes/replays answer -1) */
    redisAsyncContext *c = R->cmd;
    R->cmd = NULL;
    if (c && c != dying) redisAsyncFree(c);
    c = R->sub;
    R->sub = NULL;
    if (c && c != dying) redisAsyncFree(c);
    /* 3. replays that waited for a sync */
    while (waiting) {
        bus_req *w = waiting;
        waiting = w->wnext;
        w->wnext = NULL;
        bus_req_unhold(w);
    }
    /* 4. tell, then retry */
    if (was_ready && !b->freeing && b->h.on_ready) b->h.on_ready(b->ud, 0);
    if (!b->freeing && R->state == ST_WAIT && !R->cmd && !R->sub &&
        !uv_is_active((uv_handle_t *)&R->retry))
        schedule_retry(R);
}

/* ---- head script (sync, replay) ---- */

typedef struct head_res {
    int status;              /* 0 ok, 2 needs a seed, 3 no head (peek) */
    uint64_t head, before;
    char epoch[BUS_EPOCH_MAX + 1];
} head_res;

static int parse_head(const redisReply *rp, head_res *h)
{
    memset(h, 0, sizeof *h);
    if (rp->type != REDIS_REPLY_ARRAY || rp->elements < 1 ||
        rp->element[0]->type != REDIS_REPLY_INTEGER)
        return -1;
    h->status = (int)rp->element[0]->integer;
    if (h->status == 2 || h->status == 3) return 0;
    if (h->status != 0 || rp->elements != 4 || reply_u64(rp->element[1], &h->head) != 0 ||
        reply_u64(rp->element[3], &h->before) != 0 || rp->element[2]->type != REDIS_REPLY_STRING ||
        rp->element[2]->len < 1 || rp->element[2]->len > BUS_EPOCH_MAX)
        return -1;
    memcpy(h->epoch, rp->element[2]->str, rp->element[2]->len);
    h->epoch[rp->element[2]->len] = 0;
    return 0;
}

static int send_head_script(busr *R, redisCallbackFn *cb, void *priv, const char *room,
                            uint64_t floor, int mode, uint64_t seed, const char *epoch)
{
    char kseq[CHAT_ROOM_MAX + 32], kep[CHAT_ROOM_MAX + 32], fl[24], sd[24], md[2] = {(char)mode, 0};
    key(kseq, sizeof kseq, room, "seq");
    key(kep, sizeof kep, room, "epoch");
    snprintf(fl, sizeof fl, "%" PRIu64, floor);
    snprintf(sd, sizeof sd, "%" PRIu64, seed);
    if (!R->cmd) return REDIS_ERR;
    return redisAsyncCommand(R->cmd, cb, priv, "EVAL %s 2 %s %s %s %s %s %s", BUS_HEAD_LUA, kseq,
                             kep, fl, md, sd, epoch);
}

/* The floor of a node in a room: never below a seq this node delivered or
 * was acked (0 when it does not hold the room). */
static uint64_t room_floor(bus *b, const char *name)
{
    bus_room *room = bus_room_get(b, name);
    uint64_t floor = room && room->have_last ? room->last : 0;
    if (room && room->floor > floor) floor = room->floor;
    return floor;
}

/* ---- subscriptions ---- */

static void sync_seeded(void *arg, int status, uint64_t max_seq, const char *epoch);

static void head_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    busr *R = R_of(ac);
    room_op *op = priv;
    redisReply *rp = reply;
    if (!rp) {
        on_dead_reply(R, ac);
        free(op);
        return;
    }
    if (!R->b->freeing && is_current(R, ac)) {
        metric_observe(R->b->m.op_head, since_s(op->t0));
        head_res h;
        if (parse_head(rp, &h) != 0 || (h.status == 2 && op->seeded)) {
            LOGE(MOD, "head of chat:{%s}:seq: %s", op->room,
                 rp->type == REDIS_REPLY_ERROR ? rp->str : "unexpected reply");
            session_fail(R, NULL, "bad seq reply");
        } else if (h.status == 2) {
            /* a resync whose key is gone (Redis lost data): raise it to
             * max(durable head, what this node delivered), never to the
             * floor alone (other nodes may have stored more) */
            LOGW(MOD, "room %s: Redis has no head at the resync (it lost data): seeding it from the "
                 "durable head and this node's %" PRIu64, op->room, op->from);
            if (bus_seed_get(R->b, op->room, sync_seeded, op) == 0) return; /* op moves */
            bus_order_synced(R->b, op->room, op->sub_id, 0, 0);
        } else if (h.status == 3) {
            /* no head (and a seed provider): nothing published since the
             * subscription; the first message starts the delivery */
            bus_order_synced(R->b, op->room, op->sub_id, 0, 0);
        } else {
            if (h.before < op->from) {
                /* the script raised the key to our floor (op->from) */
                LOGE(MOD, "room %s: Redis seq was %" PRIu64 ", below the %" PRIu64
                     " this node delivered (Redis lost data): raised to %" PRIu64,
                     op->room, h.before, op->from, op->from);
            }
            bus_order_synced(R->b, op->room, op->sub_id, h.head, 1);
        }
    }
    free(op);
}

/* The durable head for a resync (see head_cb): send the head script again
 * with the seed; without one, keep the last delivered seq (known = 0). */
static void sync_seeded(void *arg, int status, uint64_t max_seq, const char *epoch)
{
    room_op *op = arg;
    bus *b = op->b;
    busr *R = b->impl;
    bus_room *room = b->freeing ? NULL : bus_room_get(b, op->room);
    if (!room || room->sub_id != op->sub_id || R->state != ST_UP) { free(op); return; }
    if (status != 0) {
        free(op);
        bus_order_synced(b, room->name, room->sub_id, 0, 0);
        return;
    }
    op->seeded = 1;
    if (send_head_script(R, head_cb, op, op->room, op->from, BUS_SEED_GIVEN,
                         max_seq > op->from ? max_seq : op->from, epoch) != REDIS_OK) {
        free(op);
        session_fail(R, NULL, "cannot queue the head read");
    }
}

static void send_head(busr *R, bus_room *room)
{
    room_op *op = calloc(1, sizeof *op);
    if (!op) { session_fail(R, NULL, "out of memory"); return; }
    snprintf(op->room, sizeof op->room, "%s", room->name);
    op->b = R->b;
    op->sub_id = room->sub_id;
    op->t0 = mono_ns();
    /* a resubscription after a reconnect raises the head to what this node
     * already delivered, so a Redis that restarted empty never assigns
     * those seqs again; with a seed provider a missing key is only
     * reported (the next publish or replay seeds it) */
    op->from = room->have_last ? room->last : 0;
    char ep[BUS_EPOCH_MAX + 1];
    bus_epoch_new(R->b, ep);
    int rc = send_head_script(R, head_cb, op, room->name, op->from,
                              bus_has_seed(R->b) ? BUS_SEED_PEEK : BUS_SEED_NONE, 0, ep);
    if (rc != REDIS_OK) {
        free(op);
        /* the room would never sync (and the bus never become ready) */
        session_fail(R, NULL, "cannot queue the head read");
    }
}

static void sub_message(busr *R, redisReply *rp)
{
    bus *b = R->b;
    if (rp->type != REDIS_REPLY_ARRAY || rp->elements < 3) return;
    redisReply *t = rp->element[0], *ch = rp->element[1], *v = rp->element[2];
    if (t->type != REDIS_REPLY_STRING || ch->type != REDIS_REPLY_STRING) return;
    char name[CHAT_ROOM_MAX + 1];
    const char *kind;
    if (parse_channel(ch->str, ch->len, name, &kind) != 0) return;
    bus_room *room = bus_room_get(b, name);
    if (strcmp(t->str, "message") == 0) {
        if (v->type != REDIS_REPLY_STRING || !room || room->refs == 0) return;
        if (strcmp(kind, "msg") == 0) {
            bus_entry e;
            if (bus_parse_entry(v->str, v->len, &e) != 0) {
                LOGW(MOD, "room %s: malformed bus message dropped", name);
                return;
            }
            bus_order_incoming(b, name, e.seq, e.tail, e.len);
        } else if (b->h.on_emit) {
            b->h.on_emit(b->ud, name, kind, v->str, v->len);
        }
    } else if (strcmp(t->str, "subscribe") == 0) {
        if (!room || room->sub_state != BUS_SUB_SUBSCRIBING || --room->sub_pending > 0) return;
        room->sub_state = BUS_SUB_SUBSCRIBED;
        if (room->refs == 0) reconcile(b, room);
        else send_head(R, room); /* read the head only now: nothing falls between */
    } else if (strcmp(t->str, "unsubscribe") == 0) {
        if (!room || room->sub_state != BUS_SUB_UNSUBSCRIBING || --room->sub_pending > 0) return;
        room->sub_state = BUS_SUB_NONE;
        if (room->refs > 0) reconcile(b, room);
        else bus_room_maybe_free(b, room);
    }
}

static void sub_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    busr *R = R_of(ac);
    (void)priv;
    if (!reply) { on_dead_reply(R, ac); return; }
    if (R->b->freeing || ac != R->sub) return;
    sub_message(R, reply);
}

static void reconcile(bus *b, bus_room *room)
{
    busr *R = b->impl;
    if (b->freeing || R->state != ST_UP || !R->sub) return;
    char c1[CHAT_ROOM_MAX + 32], c2[CHAT_ROOM_MAX + 32], c3[CHAT_ROOM_MAX + 32];
    key(c1, sizeof c1, room->name, "msg");
    key(c2, sizeof c2, room->name, "typing");
    key(c3, sizeof c3, room->name, "presence");
    if (room->sub_state == BUS_SUB_NONE && room->refs > 0) {
        if (redisAsyncCommand(R->sub, sub_cb, NULL, "SUBSCRIBE %s %s %s", c1, c2, c3) ==
            REDIS_OK) {
            room->sub_state = BUS_SUB_SUBSCRIBING;
            room->sub_pending = 3;
        }
    } else if (room->sub_state == BUS_SUB_SUBSCRIBED && room->refs == 0) {
        if (redisAsyncCommand(R->sub, sub_cb, NULL, "UNSUBSCRIBE %s %s %s", c1, c2, c3) ==
            REDIS_OK) {
            room->sub_state = BUS_SUB_UNSUBSCRIBING;
            room->sub_pending = 3;
        }
    }
}

/* ---- publish ---- */

static void pub_cb(redisAsyncContext *ac, void *reply, void *priv);
static void pub_seeded(void *arg, int status, uint64_t max_seq, const char *epoch);

static int send_publish(busr *R, bus_req *r)
{
    char kseq[CHAT_ROOM_MAX + 32], krec[CHAT_ROOM_MAX + 32], ch[CHAT_ROOM_MAX + 32];
    char kid[CHAT_ROOM_MAX + 200], nmax[24], nttl[16], nfloor[24], nseed[24], nkeys[4];
    char kuns[CHAT_ROOM_MAX + 32], kep[CHAT_ROOM_MAX + 32], mode[2];
    int track = R->b->track_unstored;
    key(kseq, sizeof kseq, r->room, "seq");
    key(kep, sizeof kep, r->room, "epoch");
    key(kuns, sizeof kuns, r->room, "unstored");
    key(krec, sizeof krec, r->room, "recent");
    key(ch, sizeof ch, r->room, "msg");
    snprintf(nmax, sizeof nmax, "%zu", R->b->recent_max);
    snprintf(nttl, sizeof nttl, "%u", (unsigned)R->b->id_ttl_s);
    snprintf(nfloor, sizeof nfloor, "%" PRIu64, room_floor(R->b, r->room));
    /* seeding (see bus_script.c): ask first, then the provider's answer */
    if (!r->seed_mode) r->seed_mode = bus_has_seed(R->b) ? BUS_SEED_ASK : BUS_SEED_NONE;
    if (r->seed_mode == BUS_SEED_NONE) bus_epoch_new(R->b, r->epoch);
    mode[0] = (char)r->seed_mode;
    mode[1] = 0;
    snprintf(nseed, sizeof nseed, "%" PRIu64, r->seed);
    snprintf(nkeys, sizeof nkeys, "%d", 3 + (track ? 2 : 0) + (r->id ? 1 : 0));
    const char *argv[24];
    size_t lens[24];
    int argc = 0;
#define ARG(s, l) (argv[argc] = (s), lens[argc] = (l), argc++)
    ARG("EVALSHA", 7);
    ARG(R->sha, 40);
    ARG(nkeys, strlen(nkeys));
    ARG(kseq, strlen(kseq));
    ARG(krec, strlen(krec));
    ARG(kep, strlen(kep));
    if (track) {
        /* see bus_script.c: the unstored set and the room index */
        ARG(kuns, strlen(kuns));
        ARG("chat:unstored", 13);
    }
    if (r->id) {
        snprintf(kid, sizeof kid, "chat:{%s}:id:%s", r->room, r->id);
        ARG(kid, strlen(kid));
    }
    ARG(r->tail, r->tail_len);
    ARG(nmax, strlen(nmax));
    ARG(nttl, strlen(nttl));
    ARG(ch, strlen(ch));
    ARG(nfloor, strlen(nfloor));
    ARG(track ? "1" : "0", 1);
    ARG(r->room, strlen(r->room));
    ARG(r->id ? "1" : "0", 1);
    ARG(mode, 1);
    ARG(nseed, strlen(nseed));
    ARG(r->epoch, strlen(r->epoch));
#undef ARG
    if (!R->cmd || redisAsyncCommandArgv(R->cmd, pub_cb, r, argc, argv, lens) != REDIS_OK)
        return -1;
    return 0;
}

static void reload_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *rp = reply;
    (void)priv;
    (void)ac;
    if (rp && rp->type == REDIS_REPLY_ERROR) LOGW(MOD, "SCRIPT LOAD: %s", rp->str);
}

static void pub_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    busr *R = R_of(ac);
    bus_req *r = priv;
    redisReply *rp = reply;
    bus *b = r->b;
    if (!rp) {
        on_dead_reply(R, ac);
        bus_req_unhold(r);
        return;
    }
    if (rp->type == REDIS_REPLY_ERROR) {
        if (reply_err(rp, "NOSCRIPT") && !r->retried && !b->freeing && ac == R->cmd) {
            r->retried = 1;
            LOGI(MOD, "publish script missing (NOSCRIPT): loading it again");
            if (redisAsyncCommand(ac, reload_cb, NULL, "SCRIPT LOAD %s", BUS_PUBLISH_LUA) ==
                    REDIS_OK &&
                send_publish(R, r) == 0)
                return; /* the hold moves to the retried EVALSHA */
        } else {
            LOGW(MOD, "publish to %s: %s", r->room, rp->str);
        }
        bus_req_unhold(r);
        return;
    }
    uint64_t seq = 0, dup = 0;
    if (rp->type != REDIS_REPLY_ARRAY || rp->elements != 2 ||
        reply_u64(rp->element[0], &seq) != 0 || reply_u64(rp->element[1], &dup) != 0 ||
        dup > 2 || (dup == 2 && r->seed_mode != BUS_SEED_ASK)) {
        LOGW(MOD, "publish to %s: unexpected reply", r->room);
        bus_req_unhold(r);
        return;
    }
    if (dup == 2) {
        /* no head in Redis: ask for the durable one, then publish again
         * (the hold moves to the seed request) */
        if (b->freeing || bus_seed_get(b, r->room, pub_seeded, r) != 0) bus_req_unhold(r);
        return;
    }
    metric_observe(b->m.op_publish, since_s(r->t0));
    if (!dup) metric_inc(b->m.published);
    bus_room *room = bus_room_get(b, r->room);
    if (room && seq > room->floor) room->floor = seq;
    bus_req_publish_done(r, 0, seq, dup ? 1 : 0);
    bus_req_unhold(r);
}

static void pub_seeded(void *arg, int status, uint64_t max_seq, const char *epoch)
{
    bus_req *r = arg;
    bus *b = r->b;
    busr *R = b->impl;
    if (status != 0 || b->freeing || R->state != ST_UP) {
        bus_req_unhold(r); /* -1: unavailable */
        return;
    }
    uint64_t floor = room_floor(b, r->room);
    r->seed_mode = BUS_SEED_GIVEN;
    r->seed = max_seq > floor ? max_seq : floor;
    snprintf(r->epoch, sizeof r->epoch, "%s", epoch);
    if (send_publish(R, r) != 0) bus_req_unhold(r);
}

static int be_publish(bus *b, bus_req *r)
{
    busr *R = b->impl;
    if (R->state != ST_UP || send_publish(R, r) != 0) return -1;
    r->hold = 1;
    return 0;
}

/* ---- replay ----
 * The head script and the range read are pipelined; when the head needs a
 * seed, the range reply of that round is skipped and both are sent again
 * with the provider's answer. */

static int send_replay(busr *R, bus_req *r);

static void replay_seeded(void *arg, int status, uint64_t max_seq, const char *epoch)
{
    bus_req *r = arg;
    bus *b = r->b;
    busr *R = b->impl;
    if (status != 0 || b->freeing || R->state != ST_UP) {
        bus_req_unhold(r);
        return;
    }
    uint64_t floor = room_floor(b, r->room);
    r->seed_mode = BUS_SEED_GIVEN;
    r->seed = max_seq > floor ? max_seq : floor;
    snprintf(r->epoch, sizeof r->epoch, "%s", epoch);
    send_replay(R, r);  /* holds r once per queued command */
    bus_req_unhold(r);  /* the seed's hold: at zero (nothing queued) r answers -1 */
}

static void replay_head_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    busr *R = R_of(ac);
    bus_req *r = priv;
    redisReply *rp = reply;
    head_res h;
    if (!rp) {
        on_dead_reply(R, ac);
    } else if (parse_head(rp, &h) == 0 && h.status == 2 && r->seed_mode == BUS_SEED_ASK) {
        if (r->since != UINT64_MAX) r->skip_ranges++;
        r->hold++; /* the seed's */
        if (r->b->freeing || bus_seed_get(r->b, r->room, replay_seeded, r) != 0) r->hold--;
    } else if (parse_head(rp, &h) == 0 && h.status == 0) {
        r->have_head = 1;
        r->head = h.head;
        snprintf(r->epoch, sizeof r->epoch, "%s", h.epoch);
        if (r->since == UINT64_MAX) {
            metric_observe(r->b->m.op_replay, since_s(r->t0));
            bus_req_replay_done(r, 0, NULL, 0, r->head, r->epoch);
        }
    } else {
        LOGW(MOD, "replay %s: bad head reply", r->room);
    }
    bus_req_unhold(r);
}

static void replay_range_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    busr *R = R_of(ac);
    bus_req *r = priv;
    redisReply *rp = reply;
    if (!rp) {
        on_dead_reply(R, ac);
        bus_req_unhold(r);
        return;
    }
    if (r->skip_ranges) { /* its head needed a seed: a later round answers */
        r->skip_ranges--;
        bus_req_unhold(r);
        return;
    }
    if (!r->have_head || rp->type != REDIS_REPLY_ARRAY) {
        bus_req_unhold(r);
        return;
    }
    uint64_t head = r->head, since = r->since;
    metric_observe(r->b->m.op_replay, since_s(r->t0));
    if (since >= head) {
        bus_req_replay_done(r, 0, NULL, 0, head, r->epoch);
    } else if (head - since > r->max) {
        bus_req_replay_done(r, 1, NULL, 0, head, r->epoch);
    } else {
        size_t want = (size_t)(head - since), n = 0;
        bus_entry *e = malloc(want * sizeof *e);
        for (size_t i = 0; e && i < rp->elements && n < want; i++) {
            redisReply *el = rp->element[i];
            bus_entry x;
            if (el->type != REDIS_REPLY_STRING || bus_parse_entry(el->str, el->len, &x) != 0)
                break;
            if (x.seq != since + 1 + n) break;
            e[n++] = x;
        }
        if (e && n == want) bus_req_replay_done(r, 0, e, n, head, r->epoch);
        else if (e) bus_req_replay_done(r, 1, NULL, 0, head, r->epoch);
        free(e);
    }
    bus_req_unhold(r);
}

/* Queues the head script and (unless only the head is asked) the range;
 * r->hold counts each. 0, or -1 when nothing could be queued. */
static int send_replay(busr *R, bus_req *r)
{
    char krec[CHAT_ROOM_MAX + 32], min[24], lim[24];
    if (R->state != ST_UP || !R->cmd) return -1;
    if (!r->seed_mode) r->seed_mode = bus_has_seed(R->b) ? BUS_SEED_ASK : BUS_SEED_NONE;
    if (r->seed_mode == BUS_SEED_NONE) bus_epoch_new(R->b, r->epoch);
    if (send_head_script(R, replay_head_cb, r, r->room, room_floor(R->b, r->room), r->seed_mode,
                         r->seed, r->epoch) != REDIS_OK)
        return -1;
    r->hold++;
    if (r->since == UINT64_MAX) return 0;
    key(krec, sizeof krec, r->room, "recent");
    snprintf(min, sizeof min, "(%" PRIu64, r->since);
    snprintf(lim, sizeof lim, "%zu", r->max < SIZE_MAX ? r->max + 1 : r->max);
    if (redisAsyncCommand(R->cmd, replay_range_cb, r, "ZRANGEBYSCORE %s %s +inf LIMIT 0 %s",
                          krec, min, lim) == REDIS_OK)
        r->hold++;
    return 0;
}

static int be_replay(bus *b, bus_req *r)
{
    return send_replay(b->impl, r);
}

/* ---- gap fill ---- */

static void fetch_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    busr *R = R_of(ac);
    room_op *op = priv;
    redisReply *rp = reply;
    bus *b = R->b;
    if (!rp) {
        on_dead_reply(R, ac);
        bus_order_fetched(b, op->room, op->sub_id, 0, op->from, op->to, NULL, 0);
        free(op);
        return;
    }
    if (b->freeing || !is_current(R, ac)) { free(op); return; }
    if (rp->type != REDIS_REPLY_ARRAY) {
        /* not a gap: do not report loss, rebuild the session and retry */
        LOGE(MOD, "fetch %s: %s", op->room, rp->type == REDIS_REPLY_ERROR ? rp->str : "?");
        session_fail(R, NULL, "recent buffer read failed");
        free(op);
        return;
    }
    metric_observe(b->m.op_fetch, since_s(op->t0));
    bus_entry *e = rp->elements ? malloc(rp->elements * sizeof *e) : NULL;
    size_t n = 0;
    for (size_t i = 0; e && i < rp->elements; i++) {
        redisReply *el = rp->element[i];
        if (el->type == REDIS_REPLY_STRING && bus_parse_entry(el->str, el->len, &e[n]) == 0)
            n++;
    }
    if (rp->elements && !e) {
        session_fail(R, NULL, "out of memory");
    } else {
        LOGI(MOD, "room %s: filling seq %" PRIu64 "..%" PRIu64 " from the recent buffer (%zu found)",
             op->room, op->from, op->to, n);
        bus_order_fetched(b, op->room, op->sub_id, 1, op->from, op->to, e, n);
    }
    free(e);
    free(op);
}

static int be_fetch(bus *b, bus_room *room, uint64_t from, uint64_t to)
{
    busr *R = b->impl;
    char krec[CHAT_ROOM_MAX + 32], a[24], z[24];
    if (!R->cmd || (R->state != ST_UP)) return -1;
    room_op *op = calloc(1, sizeof *op);
    if (!op) return -1;
    snprintf(op->room, sizeof op->room, "%s", room->name);
    op->sub_id = room->sub_id;
    op->from = from;
    op->to = to;
    op->t0 = mono_ns();
    key(krec, sizeof krec, room->name, "recent");
    snprintf(a, sizeof a, "%" PRIu64, from);
    snprintf(z, sizeof z, "%" PRIu64, to);
    if (redisAsyncCommand(R->cmd, fetch_cb, op, "ZRANGEBYSCORE %s %s %s", krec, a, z) !=
        REDIS_OK) {
        free(op);
        return -1;
    }
    return 0;
}

/* ---- forget an id (store conflict) ---- */

static const char FORGET_LUA[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

static void be_forget_id(bus *b, const char *room, const char *id, uint64_t seq)
{
    busr *R = b->impl;
    char kid[CHAT_ROOM_MAX + 200], sq[24];
    if (R->state != ST_UP || !R->cmd) return;
    snprintf(kid, sizeof kid, "chat:{%s}:id:%s", room, id);
    snprintf(sq, sizeof sq, "%" PRIu64, seq);
    redisAsyncCommand(R->cmd, NULL, NULL, "EVAL %s 1 %s %s", FORGET_LUA, kid, sq);
}

/* ---- emit, progress, lifetime ---- */

static int be_emit(bus *b, const char *room, const char *kind, const char *data, size_t len)
{
    busr *R = b->impl;
    char ch[CHAT_ROOM_MAX + 32];
    if (R->state != ST_UP || !R->cmd) return -1;
    key(ch, sizeof ch, room, kind);
    return redisAsyncCommand(R->cmd, NULL, NULL, "PUBLISH %s %b", ch, data, len) == REDIS_OK
               ? 0 : -1;
}

static void be_progress(bus *b) { check_ready(b); }

redisAsyncContext *bus_redis_cmd(bus *b)
{
    if (!b || b->freeing || b->be != &bus_redis_backend) return NULL;
    busr *R = b->impl;
    return R->state == ST_UP ? R->cmd : NULL;
}

static void timer_closed(uv_handle_t *h)
{
    busr *R = h->data;
    bus *b = R->b;
    if (--R->open_handles == 0) free(R);
    bus_handle_closed(b);
}

static int be_init(bus *b, const bus_opts *o, char *err, size_t errlen)
{
    busr *R = calloc(1, sizeof *R);
    if (!R) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (bus_url_parse(o->redis_url, &R->url, err, errlen) != 0) {
        free(R);
        return -1;
    }
    R->b = b;
    backoff_init(&R->bo, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
    uv_timer_init(b->loop, &R->retry);
    uv_timer_init(b->loop, &R->ping);
    R->retry.data = R;
    R->ping.data = R;
    R->open_handles = 2;
    b->handles += 2;
    b->impl = R;
    session_start(R);
    return 0;
}

static void be_free(bus *b)
{
    busr *R = b->impl;
    uv_close((uv_handle_t *)&R->retry, timer_closed);
    uv_close((uv_handle_t *)&R->ping, timer_closed);
    redisAsyncContext *c = R->cmd;
    R->cmd = NULL;
    if (c) redisAsyncFree(c);
    c = R->sub;
    R->sub = NULL;
    if (c) redisAsyncFree(c);
}

const bus_backend bus_redis_backend = {
    .init = be_init,
    .publish = be_publish,
    .replay = be_replay,
    .emit = be_emit,
    .reconcile = reconcile,
    .fetch = be_fetch,
    .forget_id = be_forget_id,
    .progress = be_progress,
    .free = be_free,
};
