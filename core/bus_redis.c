/* bus_redis: the Redis backend of the bus, on the one Redis connection
 * layer (redis_client.h), for one Redis or a Redis Cluster alike.
 * Owns: the client (with the bus scripts loaded on every node, and a
 * subscription connection per node), the per-room channel subscriptions
 * (SUBSCRIBE on one Redis, SSUBSCRIBE on a Cluster: one command per room
 * with its three channels, all on the room's slot, at the slot's owner;
 * one transition in flight per room), the publish script calls, replay,
 * range fetches for gap fills, the backfill (bus_backfill.c, started here
 * with track_unstored), room retries (a subscribe or head read that failed
 * with an error answer is retried with a per-room growing delay from one
 * timer: an answer we cannot use never makes us reconnect) and readiness.
 * Subscriptions are lost when their node goes down (on_node) or when the
 * server drops them because the slot moved (an unsolicited sunsubscribe):
 * the room then resubscribes at the slot's owner and its head read + gap
 * fill (bus_order.c) close the gap: no loss, no duplicate, order kept.
 * Readiness: one Redis: up and every room caught up after a reconnect
 * (as before the layer existed); a Cluster: the map is known and a shard is
 * up (a room whose shard is down answers -1 by itself). */
#define _GNU_SOURCE
#include "bus_int.h"
#include "log.h"
#include "redis_client.h"
#include "redis_slot.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "bus"
#define RETRY_TICK_MS 100
#define ROOM_RETRY_MIN_MS 100
#define ROOM_RETRY_MAX_MS 5000

typedef struct busr {
    bus *b;
    redis_client *rc;
    int cluster;
    int recovering;          /* one Redis: up, waiting for rooms to catch up */
    int ever_up;
    int retries;             /* rooms with a retry due */
    uv_timer_t retry_t;
} busr;

typedef struct room_op {
    busr *R;
    char room[CHAT_ROOM_MAX + 1];
    uint64_t sub_id, from, to, t0;
    int seeded;              /* head read with a seed (resync) */
} room_op;

static void reconcile(bus *b, bus_room *room);

static double since_s(uint64_t t0) { return (double)(mono_ns() - t0) / 1e9; }

static void key(char *out, size_t n, const char *room, const char *suffix)
{
    snprintf(out, n, "chat:{%s}:%s", room, suffix);
}

/* "chat:{room}:kind" -> room, kind; -1 when not ours */
static int parse_channel(const char *s, size_t len, char *room, char *kind, size_t kn)
{
    if (len < 9 || strncmp(s, "chat:{", 6) != 0) return -1;
    const char *rb = memchr(s + 6, '}', len - 6);
    if (!rb) return -1;
    size_t rl = (size_t)(rb - (s + 6));
    if (rl < 1 || rl > CHAT_ROOM_MAX || rb + 1 >= s + len || rb[1] != ':') return -1;
    size_t kl = len - (size_t)(rb + 2 - s);
    if (kl == 0 || kl >= kn) return -1;
    memcpy(room, s + 6, rl);
    room[rl] = 0;
    memcpy(kind, rb + 2, kl);
    kind[kl] = 0;
    return 0;
}

static room_op *op_new(busr *R, const bus_room *room)
{
    room_op *op = calloc(1, sizeof *op);
    if (!op) return NULL;
    op->R = R;
    snprintf(op->room, sizeof op->room, "%s", room->name);
    op->sub_id = room->sub_id;
    op->t0 = mono_ns();
    return op;
}

/* ---- readiness ---- */

static void update_ready(busr *R)
{
    bus *b = R->b;
    if (b->freeing) return;
    int up = redis_client_ready(R->rc);
    if (!R->cluster) {
        if (!up) R->recovering = 0;
        if (up && R->recovering && bus_order_all_caught_up(b)) R->recovering = 0;
        up = up && !R->recovering;
    }
    bus_set_ready(b, up);
}

static void be_progress(bus *b) { update_ready(b->impl); }

static int be_health(const bus *b, char *why, size_t n)
{
    busr *R = b->impl;
    if (!redis_client_health(R->rc, why, n)) return 0;
    if (!b->ready) {
        snprintf(why, n, "redis: resubscribing the rooms after a reconnect");
        return 0;
    }
    return 1;
}

/* ---- room retries ---- */

static void send_head(busr *R, bus_room *room);

static void retry_later(busr *R, bus_room *room)
{
    room->retry_ms = room->retry_ms ? room->retry_ms * 2 : ROOM_RETRY_MIN_MS;
    if (room->retry_ms > ROOM_RETRY_MAX_MS) room->retry_ms = ROOM_RETRY_MAX_MS;
    if (!room->retry_at) R->retries++;
    room->retry_at = mono_ms() + room->retry_ms;
}

static void retry_clear(busr *R, bus_room *room)
{
    if (room->retry_at) R->retries--;
    room->retry_at = 0;
}

typedef struct walk { busr *R; uint64_t now; bus_room **due; size_t n, cap; } walk;

static int collect_due(void *arg, const char *k, void *val)
{
    walk *w = arg;
    bus_room *room = val;
    (void)k;
    if (room->retry_at && room->retry_at <= w->now && w->n < w->cap) w->due[w->n++] = room;
    return 0;
}

static void retry_cb(uv_timer_t *t)
{
    busr *R = t->data;
    bus *b = R->b;
    if (b->freeing) return;
    if (R->retries <= 0) {
        R->retries = 0;
        uv_timer_stop(t);
        return;
    }
    walk w = {R, mono_ms(), NULL, 0, b->rooms.count};
    w.due = w.cap ? malloc(w.cap * sizeof *w.due) : NULL;
    if (!w.due) return;
    hmap_each(&b->rooms, collect_due, &w);
    for (size_t i = 0; i < w.n && !b->freeing; i++) {
        bus_room *room = w.due[i];
        retry_clear(R, room);
        if (room->sub_state == BUS_SUB_SUBSCRIBED && room->refs > 0 && !room->synced)
            send_head(R, room);
        else if (room->sub_state == BUS_SUB_NONE && room->refs > 0)
            reconcile(b, room);
        bus_room_maybe_free(b, room);
    }
    free(w.due);
}

static void arm_retries(busr *R)
{
    if (R->retries > 0 && !uv_is_active((uv_handle_t *)&R->retry_t))
        uv_timer_start(&R->retry_t, retry_cb, RETRY_TICK_MS, RETRY_TICK_MS);
}

/* ---- the head script (sync, replay) ---- */

typedef struct head_res {
    int status;              /* 0 ok, 2 needs a seed, 3 no head (peek) */
    uint64_t head, before;
    char epoch[BUS_EPOCH_MAX + 1];
} head_res;

static int parse_head(const redisReply *rp, head_res *h)
{
    memset(h, 0, sizeof *h);
    if (!rp || rp->type != REDIS_REPLY_ARRAY || rp->elements < 1 || !rp->element ||
        rp->element[0]->type != REDIS_REPLY_INTEGER)
        return -1;
    h->status = (int)rp->element[0]->integer;
    if (h->status == 2 || h->status == 3) return 0;
    if (h->status != 0 || rp->elements != 4 || redis_reply_u64(rp->element[1], &h->head) != 0 ||
        redis_reply_u64(rp->element[3], &h->before) != 0 ||
        rp->element[2]->type != REDIS_REPLY_STRING || rp->element[2]->len < 1 ||
        rp->element[2]->len > BUS_EPOCH_MAX)
        return -1;
    memcpy(h->epoch, rp->element[2]->str, rp->element[2]->len);
    h->epoch[rp->element[2]->len] = 0;
    return 0;
}

/* EVALSHA BUS_HEAD_LUA on the room's shard; 0 or -1 (cb not called) */
static int send_head_script(busr *R, redis_reply_fn cb, void *ud, const char *room,
                            uint64_t floor, int mode, uint64_t seed, const char *epoch)
{
    char kseq[CHAT_ROOM_MAX + 32], kep[CHAT_ROOM_MAX + 32], fl[24], sd[24];
    char md[2] = {(char)mode, 0};
    key(kseq, sizeof kseq, room, "seq");
    key(kep, sizeof kep, room, "epoch");
    snprintf(fl, sizeof fl, "%" PRIu64, floor);
    snprintf(sd, sizeof sd, "%" PRIu64, seed);
    const char *a[] = {"2", kseq, kep, fl, md, sd, epoch};
    redis_call how = {redis_room_slot(room), 0, BUS_S_HEAD};
    return redis_client_call(R->rc, &how, 7, a, NULL, cb, ud);
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

static void channels(const char *room, char c[3][CHAT_ROOM_MAX + 32], const char *out[3])
{
    key(c[0], sizeof c[0], room, "msg");
    key(c[1], sizeof c[1], room, "typing");
    key(c[2], sizeof c[2], room, "presence");
    for (int i = 0; i < 3; i++) out[i] = c[i];
}

static void sync_seeded(void *arg, int status, uint64_t max_seq, const char *epoch);

static void head_cb(void *ud, const redisReply *rp)
{
    room_op *op = ud;
    busr *R = op->R;
    bus *b = R->b;
    bus_room *room = b->freeing ? NULL : bus_room_get(b, op->room);
    if (!room || room->sub_id != op->sub_id || room->sub_state != BUS_SUB_SUBSCRIBED) {
        free(op); /* the subscription it served is gone */
        return;
    }
    head_res h;
    if (rp && parse_head(rp, &h) == 0 && h.status == 2 && !op->seeded) {
        /* a resync whose key is gone (Redis lost data): raise it to
         * max(durable head, what this node delivered), never to the
         * floor alone (other nodes may have stored more) */
        LOGW(MOD, "room %s: Redis has no head at the resync (it lost data): seeding it from the "
             "durable head and this node's %" PRIu64, op->room, op->from);
        if (bus_seed_get(b, op->room, sync_seeded, op) == 0) return; /* op moves */
        char name[CHAT_ROOM_MAX + 1];
        snprintf(name, sizeof name, "%s", op->room);
        uint64_t sub = op->sub_id;
        free(op);
        bus_order_synced(b, name, sub, 0, 0);
        return;
    }
    if (!rp || parse_head(rp, &h) != 0 || h.status == 2) {
        /* no answer (its shard is going down: on_node resets the room) or
         * an answer we cannot use: read it again later */
        if (rp) LOGE(MOD, "head of chat:{%s}:seq: %.*s", op->room,
                     rp->type == REDIS_REPLY_ERROR ? (int)rp->len : 16,
                     rp->type == REDIS_REPLY_ERROR ? rp->str : "unexpected reply");
        retry_later(R, room);
        arm_retries(R);
        free(op);
        return;
    }
    metric_observe(b->m.op_head, since_s(op->t0));
    room->retry_ms = 0;
    char name[CHAT_ROOM_MAX + 1];
    snprintf(name, sizeof name, "%s", op->room);
    uint64_t sub = op->sub_id;
    if (h.status == 3) {
        /* no head (and a seed provider): nothing published since the
         * subscription; the first message starts the delivery */
        free(op);
        bus_order_synced(b, name, sub, 0, 0);
        return;
    }
    if (h.before < op->from) {
        /* the script raised the key to our floor (op->from) */
        LOGE(MOD, "room %s: Redis seq was %" PRIu64 ", below the %" PRIu64
             " this node delivered (Redis lost data): raised to %" PRIu64,
             op->room, h.before, op->from, op->from);
    }
    free(op);
    bus_order_synced(b, name, sub, h.head, 1);
}

/* The durable head for a resync (see head_cb): send the head script again
 * with the seed; without one, keep the last delivered seq (known = 0). */
static void sync_seeded(void *arg, int status, uint64_t max_seq, const char *epoch)
{
    room_op *op = arg;
    busr *R = op->R;
    bus *b = R->b;
    bus_room *room = b->freeing ? NULL : bus_room_get(b, op->room);
    if (!room || room->sub_id != op->sub_id || room->sub_state != BUS_SUB_SUBSCRIBED) {
        free(op);
        return;
    }
    if (status != 0) {
        free(op);
        bus_order_synced(b, room->name, room->sub_id, 0, 0);
        return;
    }
    op->seeded = 1;
    if (send_head_script(R, head_cb, op, op->room, op->from, BUS_SEED_GIVEN,
                         max_seq > op->from ? max_seq : op->from, epoch) != 0) {
        free(op);
        retry_later(R, room);
        arm_retries(R);
    }
}

/* Reads the room's head after its subscription is confirmed (nothing
 * published after the confirmation is missed). A resubscription raises the
 * head to what this node already delivered, so a Redis that restarted empty
 * never assigns those seqs again; with a seed provider a missing key is
 * only reported (the next publish or replay seeds it). */
static void send_head(busr *R, bus_room *room)
{
    room_op *op = op_new(R, room);
    char ep[BUS_EPOCH_MAX + 1];
    if (!op) { retry_later(R, room); arm_retries(R); return; }
    op->from = room->have_last ? room->last : 0;
    bus_epoch_new(R->b, ep);
    if (send_head_script(R, head_cb, op, room->name, op->from,
                         bus_has_seed(R->b) ? BUS_SEED_PEEK : BUS_SEED_NONE, 0, ep) != 0) {
        free(op);
        retry_later(R, room);
        arm_retries(R);
    }
}

static void sub_done(void *ud, uint64_t node, const redisReply *rp)
{
    room_op *op = ud;
    busr *R = op->R;
    bus *b = R->b;
    bus_room *room = b->freeing ? NULL : bus_room_get(b, op->room);
    free(op);
    if (!room || room->sub_state != BUS_SUB_SUBSCRIBING) return;
    if (!rp || rp->type == REDIS_REPLY_ERROR) {
        room->sub_state = BUS_SUB_NONE;
        if (rp) LOGW(MOD, "subscribe %s: %.*s", room->name, (int)rp->len, rp->str ? rp->str : "");
        if (room->refs > 0) {
            retry_later(R, room);
            arm_retries(R);
        }
        bus_room_maybe_free(b, room);
        return;
    }
    room->sub_state = BUS_SUB_SUBSCRIBED;
    room->sub_node = node;
    if (room->refs == 0) {
        reconcile(b, room);
        bus_room_maybe_free(b, room);
        return;
    }
    send_head(R, room);
}

static void unsub_done(void *ud, uint64_t node, const redisReply *rp)
{
    room_op *op = ud;
    busr *R = op->R;
    bus *b = R->b;
    bus_room *room = b->freeing ? NULL : bus_room_get(b, op->room);
    (void)node;
    (void)rp; /* an error or no answer: the subscription is gone either way
               * (a node that stays up answers UNSUBSCRIBE) */
    free(op);
    if (!room || room->sub_state != BUS_SUB_UNSUBSCRIBING) return;
    room->sub_state = BUS_SUB_NONE;
    room->sub_node = 0;
    if (room->refs > 0) reconcile(b, room);
    bus_room_maybe_free(b, room);
}

/* Never frees room (callers may still hold it). */
static void reconcile(bus *b, bus_room *room)
{
    busr *R = b->impl;
    if (b->freeing) return;
    char c[3][CHAT_ROOM_MAX + 32];
    const char *ch[3];
    channels(room->name, c, ch);
    if (room->sub_state == BUS_SUB_NONE && room->refs > 0) {
        int slot = redis_room_slot(room->name);
        if (!redis_client_slot_ready(R->rc, slot)) return; /* on_node/on_map come back */
        room_op *op = op_new(R, room);
        if (!op) return;
        if (redis_client_subscribe(R->rc, slot, 3, ch, NULL, sub_done, op) == 0) {
            room->sub_state = BUS_SUB_SUBSCRIBING;
            retry_clear(R, room);
        } else {
            free(op);
        }
    } else if (room->sub_state == BUS_SUB_SUBSCRIBED && room->refs == 0) {
        room_op *op = op_new(R, room);
        if (op && redis_client_unsubscribe(R->rc, room->sub_node, 3, ch, NULL, unsub_done, op) == 0) {
            room->sub_state = BUS_SUB_UNSUBSCRIBING;
        } else {
            free(op);
            room->sub_state = BUS_SUB_NONE; /* its node is gone, and the channels with it */
            room->sub_node = 0;
        }
        retry_clear(R, room);
    }
}

/* The room's subscription is gone (its node went down, or the server
 * dropped it): back to NONE, keeping the last delivered seq, so the next
 * subscription's head read and fill recover what was missed. */
static void sub_lost(busr *R, bus_room *room, int fail_waiting)
{
    bus *b = R->b;
    room->sub_state = BUS_SUB_NONE;
    room->sub_node = 0;
    bus_order_reset(b, room, 1);
    if (fail_waiting) bus_room_run_waiting(b, room, 1);
}

static void on_push(void *ud, uint64_t node, const redis_push *p)
{
    busr *R = ud;
    bus *b = R->b;
    char name[CHAT_ROOM_MAX + 1], kind[32];
    if (b->freeing || parse_channel(p->channel, p->channel_len, name, kind, sizeof kind) != 0)
        return;
    bus_room *room = bus_room_get(b, name);
    if (p->kind == REDIS_PUSH_MESSAGE || p->kind == REDIS_PUSH_SMESSAGE) {
        if (!room || room->refs == 0) return;
        if (strcmp(kind, "msg") == 0) {
            bus_entry e;
            if (bus_parse_entry(p->data, p->data_len, &e) != 0) {
                LOGW(MOD, "room %s: malformed bus message dropped", name);
                return;
            }
            bus_order_incoming(b, name, e.seq, e.tail, e.len);
        } else if (b->h.on_emit) {
            b->h.on_emit(b->ud, name, kind, p->data, p->data_len);
        }
        return;
    }
    if ((p->kind == REDIS_PUSH_SUNSUBSCRIBE || p->kind == REDIS_PUSH_UNSUBSCRIBE) && room &&
        room->sub_state == BUS_SUB_SUBSCRIBED && room->sub_node == node) {
        /* the server dropped the room's channels: its slot moved */
        LOGI(MOD, "room %s: Redis dropped its subscription (slot moved): resubscribing", name);
        sub_lost(R, room, 0);
        redis_client_refresh(R->rc);
        if (room->refs > 0) reconcile(b, room);
        bus_room_maybe_free(b, room);
        update_ready(R);
    }
}

typedef struct node_walk { busr *R; uint64_t node; } node_walk;

static int rooms_of_node(void *arg, const char *k, void *val)
{
    node_walk *w = arg;
    bus_room *room = val;
    (void)k;
    if (room->sub_state == BUS_SUB_SUBSCRIBED && room->sub_node == w->node)
        sub_lost(w->R, room, 1);
    else if (!room->synced &&
             redis_client_slot_node(w->R->rc, redis_room_slot(room->name)) == w->node)
        bus_room_run_waiting(w->R->b, room, 1); /* would wait for a shard that is down */
    return 0;
}

/* Subscribes every room that wants it and whose shard is up. */
static void reconcile_all(busr *R)
{
    bus *b = R->b;
    size_t n = b->rooms.count;
    bus_room **rooms = n ? malloc(n * sizeof *rooms) : NULL;
    n = rooms ? hmap_values(&b->rooms, (void **)rooms, n) : 0;
    for (size_t i = 0; i < n && !b->freeing; i++) {
        if (rooms[i]->sub_state == BUS_SUB_NONE) reconcile(b, rooms[i]);
        bus_room_maybe_free(b, rooms[i]);
    }
    free(rooms);
}

static void on_node(void *ud, uint64_t node, int up)
{
    busr *R = ud;
    bus *b = R->b;
    if (b->freeing) return;
    if (up) {
        if (!R->cluster) {
            if (R->ever_up) metric_inc(b->m.reconnects);
            R->recovering = 1;
        } else if (R->ever_up) {
            metric_inc(b->m.reconnects);
        }
        R->ever_up = 1;
        reconcile_all(R);
    } else {
        node_walk w = {R, node};
        hmap_each(&b->rooms, rooms_of_node, &w);
        /* rooms left without subscribers nor state can go */
        size_t n = b->rooms.count;
        bus_room **rooms = n ? malloc(n * sizeof *rooms) : NULL;
        n = rooms ? hmap_values(&b->rooms, (void **)rooms, n) : 0;
        for (size_t i = 0; i < n; i++) bus_room_maybe_free(b, rooms[i]);
        free(rooms);
    }
    update_ready(R);
}

static void on_map(void *ud)
{
    busr *R = ud;
    if (R->b->freeing) return;
    reconcile_all(R);
    update_ready(R);
}

/* ---- publish ---- */

static void pub_seeded(void *arg, int status, uint64_t max_seq, const char *epoch);
static int send_publish(busr *R, bus_req *r);

static void pub_cb(void *ud, const redisReply *rp)
{
    bus_req *r = ud;
    bus *b = r->b;
    uint64_t seq = 0, dup = 0;
    if (!rp) {
        bus_req_unhold(r);
        return;
    }
    if (rp->type == REDIS_REPLY_ERROR) {
        LOGW(MOD, "publish to %s: %.*s", r->room, (int)rp->len, rp->str ? rp->str : "");
        bus_req_unhold(r);
        return;
    }
    if (bus_redis_publish_reply(rp, &seq, &dup) != 0 ||
        (dup == 2 && r->seed_mode != BUS_SEED_ASK)) {
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

int bus_redis_publish_reply(const redisReply *rp, uint64_t *seq, uint64_t *dup)
{
    if (!rp || rp->type != REDIS_REPLY_ARRAY || rp->elements != 2 || !rp->element ||
        redis_reply_u64(rp->element[0], seq) != 0 || redis_reply_u64(rp->element[1], dup) != 0 ||
        *dup > 2 || (*dup == 2) != (*seq == 0))
        return -1;
    return 0;
}

static void pub_seeded(void *arg, int status, uint64_t max_seq, const char *epoch)
{
    bus_req *r = arg;
    bus *b = r->b;
    busr *R = b->impl;
    if (status != 0 || b->freeing) {
        bus_req_unhold(r); /* -1: unavailable */
        return;
    }
    uint64_t floor = room_floor(b, r->room);
    r->seed_mode = BUS_SEED_GIVEN;
    r->seed = max_seq > floor ? max_seq : floor;
    snprintf(r->epoch, sizeof r->epoch, "%s", epoch);
    if (send_publish(R, r) != 0) bus_req_unhold(r);
}

/* EVALSHA BUS_PUBLISH_LUA on the room's shard (see bus_script.c) */
static int send_publish(busr *R, bus_req *r)
{
    bus *b = R->b;
    int slot = redis_room_slot(r->room);
    char kseq[CHAT_ROOM_MAX + 32], krec[CHAT_ROOM_MAX + 32], ch[CHAT_ROOM_MAX + 32];
    char kid[CHAT_ROOM_MAX + 200], nmax[24], nttl[16], nfloor[24], nseed[24], nkeys[4];
    char kuns[CHAT_ROOM_MAX + 32], kidx[48], kep[CHAT_ROOM_MAX + 32], mode[2];
    int track = b->track_unstored;
    key(kseq, sizeof kseq, r->room, "seq");
    key(krec, sizeof krec, r->room, "recent");
    key(kep, sizeof kep, r->room, "epoch");
    key(ch, sizeof ch, r->room, "msg");
    key(kuns, sizeof kuns, r->room, "unstored");
    bus_unstored_index(kidx, sizeof kidx, R->cluster, r->room);
    snprintf(nmax, sizeof nmax, "%zu", b->recent_max);
    snprintf(nttl, sizeof nttl, "%u", (unsigned)b->id_ttl_s);
    snprintf(nfloor, sizeof nfloor, "%" PRIu64, room_floor(b, r->room));
    /* seeding (see bus_script.c): ask first, then the provider's answer */
    if (!r->seed_mode) r->seed_mode = bus_has_seed(b) ? BUS_SEED_ASK : BUS_SEED_NONE;
    if (r->seed_mode == BUS_SEED_NONE) bus_epoch_new(b, r->epoch);
    mode[0] = (char)r->seed_mode;
    mode[1] = 0;
    snprintf(nseed, sizeof nseed, "%" PRIu64, r->seed);
    snprintf(nkeys, sizeof nkeys, "%d", 3 + (track ? 2 : 0) + (r->id ? 1 : 0));
    const char *argv[24];
    size_t lens[24];
    int argc = 0;
#define ARG(s, l) (argv[argc] = (s), lens[argc] = (l), argc++)
    ARG(nkeys, strlen(nkeys));
    ARG(kseq, strlen(kseq));
    ARG(krec, strlen(krec));
    ARG(kep, strlen(kep));
    if (track) {
        /* the unstored set and the room's index (one slot) */
        ARG(kuns, strlen(kuns));
        ARG(kidx, strlen(kidx));
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
    ARG(R->cluster ? "spublish" : "publish", R->cluster ? 8 : 7);
#undef ARG
    redis_call how = {slot, 0, BUS_S_PUBLISH};
    return redis_client_call(R->rc, &how, argc, argv, lens, pub_cb, r);
}

static int be_publish(bus *b, bus_req *r)
{
    busr *R = b->impl;
    if (!redis_client_slot_ready(R->rc, redis_room_slot(r->room))) return -1;
    if (send_publish(R, r) != 0) return -1;
    r->hold = 1;
    return 0;
}

/* ---- replay ----
 * The head script and the range read are pipelined to the room's shard;
 * when the head needs a seed, the range reply of that round is skipped and
 * both are sent again with the provider's answer. */

static int send_replay(busr *R, bus_req *r);

static void replay_seeded(void *arg, int status, uint64_t max_seq, const char *epoch)
{
    bus_req *r = arg;
    bus *b = r->b;
    busr *R = b->impl;
    if (status != 0 || b->freeing) {
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

static void replay_head_cb(void *ud, const redisReply *rp)
{
    bus_req *r = ud;
    head_res h;
    if (!rp) {
        /* no answer: the hold below fails r */
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

static void replay_range_cb(void *ud, const redisReply *rp)
{
    bus_req *r = ud;
    if (rp && r->skip_ranges) { /* its head needed a seed: a later round answers */
        r->skip_ranges--;
        bus_req_unhold(r);
        return;
    }
    if (!rp || !r->have_head || rp->type != REDIS_REPLY_ARRAY) {
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
    if (!r->seed_mode) r->seed_mode = bus_has_seed(R->b) ? BUS_SEED_ASK : BUS_SEED_NONE;
    if (r->seed_mode == BUS_SEED_NONE) bus_epoch_new(R->b, r->epoch);
    if (send_head_script(R, replay_head_cb, r, r->room, room_floor(R->b, r->room), r->seed_mode,
                         r->seed, r->epoch) != 0)
        return -1;
    r->hold++;
    if (r->since == UINT64_MAX) return 0;
    key(krec, sizeof krec, r->room, "recent");
    snprintf(min, sizeof min, "(%" PRIu64, r->since);
    snprintf(lim, sizeof lim, "%zu", r->max < SIZE_MAX ? r->max + 1 : r->max);
    const char *z[] = {"ZRANGEBYSCORE", krec, min, "+inf", "LIMIT", "0", lim};
    redis_call how = {redis_room_slot(r->room), 0, -1};
    if (redis_client_call(R->rc, &how, 7, z, NULL, replay_range_cb, r) == 0) r->hold++;
    return 0;
}

static int be_replay(bus *b, bus_req *r)
{
    return send_replay(b->impl, r);
}

/* ---- gap fill ---- */

static void fetch_cb(void *ud, const redisReply *rp)
{
    room_op *op = ud;
    busr *R = op->R;
    bus *b = R->b;
    if (b->freeing) { free(op); return; }
    if (!rp || rp->type != REDIS_REPLY_ARRAY) {
        bus_order_fetched(b, op->room, op->sub_id, 0, op->from, op->to, NULL, 0);
        bus_room *room = bus_room_get(b, op->room);
        if (rp) LOGE(MOD, "fetch %s: %.*s", op->room, rp->type == REDIS_REPLY_ERROR ? (int)rp->len : 1,
                     rp->type == REDIS_REPLY_ERROR ? rp->str : "?");
        /* (when its shard went down, the room was reset already: other sub_id) */
        if (room && room->sub_id == op->sub_id && room->sub_state == BUS_SUB_SUBSCRIBED) {
            /* not a gap: do not report loss; sync the room again later */
            bus_order_reset(b, room, 1);
            retry_later(R, room);
            arm_retries(R);
        }
        free(op);
        return;
    }
    metric_observe(b->m.op_fetch, since_s(op->t0));
    bus_entry *e = rp->elements ? malloc(rp->elements * sizeof *e) : NULL;
    size_t n = 0;
    for (size_t i = 0; e && i < rp->elements; i++) {
        redisReply *el = rp->element[i];
        if (el->type == REDIS_REPLY_STRING && bus_parse_entry(el->str, el->len, &e[n]) == 0) n++;
    }
    if (rp->elements && !e) {
        bus_order_fetched(b, op->room, op->sub_id, 0, op->from, op->to, NULL, 0);
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
    room_op *op = op_new(R, room);
    if (!op) return -1;
    op->from = from;
    op->to = to;
    key(krec, sizeof krec, room->name, "recent");
    snprintf(a, sizeof a, "%" PRIu64, from);
    snprintf(z, sizeof z, "%" PRIu64, to);
    const char *argv[] = {"ZRANGEBYSCORE", krec, a, z};
    redis_call how = {redis_room_slot(room->name), 0, -1};
    if (redis_client_call(R->rc, &how, 4, argv, NULL, fetch_cb, op) != 0) {
        free(op);
        return -1;
    }
    return 0;
}

/* ---- emit, mark, lifetime ---- */

static int be_emit(bus *b, const char *room, const char *kind, const char *data, size_t len)
{
    busr *R = b->impl;
    char ch[CHAT_ROOM_MAX + 32];
    key(ch, sizeof ch, room, kind);
    const char *argv[] = {R->cluster ? "SPUBLISH" : "PUBLISH", ch, data};
    size_t lens[] = {strlen(argv[0]), strlen(ch), len};
    redis_call how = {redis_room_slot(room), 0, -1};
    return redis_client_call(R->rc, &how, 3, argv, lens, NULL, NULL);
}

/* a client id whose seq could not be stored (a history conflict) */
static void be_forget_id(bus *b, const char *room, const char *id, uint64_t seq)
{
    busr *R = b->impl;
    char kid[CHAT_ROOM_MAX + 200], sq[24];
    snprintf(kid, sizeof kid, "chat:{%s}:id:%s", room, id);
    snprintf(sq, sizeof sq, "%" PRIu64, seq);
    const char *a[] = {"1", kid, sq};
    redis_call how = {redis_room_slot(room), 0, BUS_S_FORGET};
    redis_client_call(R->rc, &how, 3, a, NULL, NULL, NULL); /* no-op while its shard is down */
}

static void be_mark(bus *b, const char *room, uint64_t seq)
{
    if (b->bf) bus_backfill_mark(b, room, seq);
}

static void timer_closed(uv_handle_t *h)
{
    busr *R = h->data;
    bus *b = R->b;
    free(R);
    bus_handle_closed(b);
}

static const redis_client_handlers CLIENT_H = {on_node, on_map, on_push};

static int be_init(bus *b, const bus_opts *o, char *err, size_t errlen)
{
    busr *R = calloc(1, sizeof *R);
    if (!R) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    R->b = b;
    redis_client_opts co = {o->redis_url, MOD, BUS_SCRIPTS, BUS_S_COUNT, 1};
    R->rc = redis_client_new(b->loop, &co, &CLIENT_H, R, err, errlen);
    if (!R->rc) {
        free(R);
        return -1;
    }
    R->cluster = redis_client_is_cluster(R->rc);
    if (o->track_unstored) {
        b->track_unstored = 1;
        /* fails before it opens anything; nothing is pending on the client */
        if (bus_backfill_init(b, R->rc, o->backfill_grace_ms, err, errlen) != 0) {
            redis_client_free(R->rc);
            free(R);
            return -1;
        }
    }
    uv_timer_init(b->loop, &R->retry_t);
    R->retry_t.data = R;
    b->handles++;
    b->impl = R;
    return 0;
}

static void be_free(bus *b)
{
    busr *R = b->impl;
    bus_backfill_free(b);
    redis_client_free(R->rc); /* pending callbacks: NULL (answered -1) */
    R->rc = NULL;
    uv_close((uv_handle_t *)&R->retry_t, timer_closed);
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
    .mark = be_mark,
    .health = be_health,
    .free = be_free,
};
