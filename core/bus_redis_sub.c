/* bus_redis_sub: the per-room subscriptions of the Redis backend and what
 * depends on them.
 * Owns: the channel subscriptions of each room (SUBSCRIBE on one Redis,
 * SSUBSCRIBE on a Cluster: one command per room with its three channels,
 * all on the room's slot, at the slot's owner; one transition in flight per
 * room), the sync after a subscription (the head read, a resync's seeding),
 * room retries (a subscribe or head read that got an answer we cannot use
 * is retried with a per-room growing delay from one timer: an answer never
 * makes us reconnect), the pushes (messages to bus_order.c, emits to the
 * user), the node and map events of the client (a subscription is lost when
 * its node goes down or when the server drops it because the slot moved:
 * the room resubscribes at the slot's owner and its head read + gap fill
 * close the gap: no loss, no duplicate, order kept), and readiness (one
 * Redis: up and every room caught up after a reconnect; a Cluster: the map
 * is known and a shard is up); and the one control channel (chat:ctl), a
 * subscription like a room's, on the same node/map/push events and the same
 * retry tick, with its publishes. */
#define _GNU_SOURCE
#include "bus_redis_int.h"
#include "log.h"
#include "redis_slot.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "bus"
#define RETRY_TICK_MS 100
#define ROOM_RETRY_MIN_MS 100
#define ROOM_RETRY_MAX_MS 5000

static void send_head(busr *R, bus_room *room, int raise);

/* ---- readiness ---- */

void bus_rsub_update_ready(busr *R)
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

void bus_rsub_progress(bus *b) { bus_rsub_update_ready(b->impl); }

int bus_rsub_health(const bus *b, char *why, size_t n)
{
    busr *R = b->impl;
    if (!redis_client_health(R->rc, why, n)) return 0;
    if (!b->ready) {
        snprintf(why, n, "redis: resubscribing the rooms after a reconnect");
        return 0;
    }
    return 1;
}


/* ---- the control channel (bus_control and on_control; docs/api.md
 * "Control channel", docs/redis.md) ----
 * The one channel chat:ctl: SUBSCRIBE on one Redis; on a Cluster the
 * sharded SSUBSCRIBE at the owner of the channel's slot, where every node
 * subscribes. Made again when its node went down, the slot map changed or
 * the server dropped it (slot moved), and retried on the retry tick when a
 * subscribe got no usable answer. Publishes: PUBLISH / SPUBLISH on the
 * channel's slot, whose integer reply is the number of subscribed nodes
 * (the receivers the asker waits for). After every (re)subscription
 * on_control is called with data NULL: what was published meanwhile was
 * missed, the upper layer resynchronises. */

#define CTL_RETRY_MIN_MS 100
#define CTL_RETRY_MAX_MS 5000

/* R->ctl: "chat:ctl" ("chat:db<N>:ctl" on database N > 0, busr.chan_ns) */
static int ctl_slot(const busr *R) { return redis_key_slot(R->ctl, strlen(R->ctl)); }

static void ctl_retry_later(busr *R)
{
    R->ctl_retry_ms = R->ctl_retry_ms ? R->ctl_retry_ms * 2 : CTL_RETRY_MIN_MS;
    if (R->ctl_retry_ms > CTL_RETRY_MAX_MS) R->ctl_retry_ms = CTL_RETRY_MAX_MS;
    if (!R->ctl_retry_at) R->retries++;
    R->ctl_retry_at = mono_ms() + R->ctl_retry_ms;
    bus_rsub_arm(R);
}

static void ctl_retry_clear(busr *R)
{
    if (R->ctl_retry_at) R->retries--;
    R->ctl_retry_at = 0;
}

static void ctl_sub_done(void *ud, uint64_t node, const redisReply *rp)
{
    busr *R = ud;
    bus *b = R->b;
    if (b->freeing || R->ctl_state != BUS_SUB_SUBSCRIBING) return;
    if (!rp || rp->type == REDIS_REPLY_ERROR) {
        if (rp) LOGW(MOD, "subscribe %s: %.*s", R->ctl, (int)rp->len, rp->str ? rp->str : "");
        R->ctl_state = BUS_SUB_NONE;
        ctl_retry_later(R);
        return;
    }
    R->ctl_state = BUS_SUB_SUBSCRIBED;
    R->ctl_node = node;
    R->ctl_retry_ms = 0;
    LOGD(MOD, "control channel subscribed");
    /* whatever was sent while we were not subscribed is lost to us */
    if (b->h.on_control) b->h.on_control(b->ud, NULL, 0);
}

static void ctl_reconcile(busr *R)
{
    bus *b = R->b;
    if (b->freeing || !b->h.on_control || R->ctl_state != BUS_SUB_NONE) return;
    int slot = ctl_slot(R);
    if (!redis_client_slot_ready(R->rc, slot)) return; /* on_node / on_map come back */
    const char *ch[1] = {R->ctl};
    if (redis_client_subscribe(R->rc, slot, 1, ch, NULL, ctl_sub_done, R) == 0) {
        R->ctl_state = BUS_SUB_SUBSCRIBING;
        ctl_retry_clear(R);
    } else {
        ctl_retry_later(R);
    }
}

static void ctl_retry(busr *R, uint64_t now_ms)
{
    if (!R->ctl_retry_at || R->ctl_retry_at > now_ms) return;
    ctl_retry_clear(R);
    ctl_reconcile(R);
}

static void ctl_node(busr *R, uint64_t node, int up)
{
    if (!up && R->ctl_state == BUS_SUB_SUBSCRIBED && R->ctl_node == node) {
        R->ctl_state = BUS_SUB_NONE;
        R->ctl_node = 0;
    }
    ctl_reconcile(R);
}

static int ctl_push(busr *R, uint64_t node, const redis_push *p)
{
    bus *b = R->b;
    if (p->channel_len != strlen(R->ctl) || memcmp(p->channel, R->ctl, p->channel_len) != 0)
        return 0;
    if (p->kind == REDIS_PUSH_MESSAGE || p->kind == REDIS_PUSH_SMESSAGE) {
        if (b->h.on_control && p->data_len) b->h.on_control(b->ud, p->data, p->data_len);
    } else if ((p->kind == REDIS_PUSH_SUNSUBSCRIBE || p->kind == REDIS_PUSH_UNSUBSCRIBE) &&
               R->ctl_state == BUS_SUB_SUBSCRIBED && R->ctl_node == node) {
        /* the server dropped it: the channel's slot moved */
        LOGI(MOD, "Redis dropped the control channel subscription (slot moved): resubscribing");
        R->ctl_state = BUS_SUB_NONE;
        R->ctl_node = 0;
        redis_client_refresh(R->rc);
        ctl_reconcile(R);
    }
    return 1;
}

typedef struct ctl_pub { bus_control_cb cb; void *ud; busr *R; } ctl_pub;

static void ctl_pub_done(void *ud, const redisReply *rp)
{
    ctl_pub *c = ud;
    long n = -1;
    if (rp && rp->type == REDIS_REPLY_INTEGER && rp->integer >= 0) n = (long)rp->integer;
    else if (rp && rp->type == REDIS_REPLY_ERROR)
        LOGW(MOD, "publish on %s: %.*s", c->R->ctl, (int)rp->len, rp->str ? rp->str : "");
    if (c->cb) c->cb(c->ud, n);
    free(c);
}

int bus_rctl_publish(bus *b, const char *data, size_t len, bus_control_cb cb, void *ud)
{
    busr *R = b->impl;
    ctl_pub *c = malloc(sizeof *c);
    if (!c) return -1;
    c->cb = cb;
    c->ud = ud;
    c->R = R;
    const char *argv[] = {R->cluster ? "SPUBLISH" : "PUBLISH", R->ctl, data};
    size_t lens[] = {strlen(argv[0]), strlen(R->ctl), len};
    redis_call how = {.slot = ctl_slot(R), .node = 0, .script = -1};
    if (redis_client_call(R->rc, &how, 3, argv, lens, ctl_pub_done, c) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

/* ---- room retries ---- */

void bus_rsub_retry_later(busr *R, bus_room *room)
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

typedef struct walk { uint64_t now; bus_room **due; size_t n, cap; } walk;

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
    ctl_retry(R, mono_ms());
    if (b->freeing || R->retries <= 0) return;
    walk w = {mono_ms(), NULL, 0, b->rooms.count};
    w.due = w.cap ? malloc(w.cap * sizeof *w.due) : NULL;
    if (!w.due) return;
    hmap_each(&b->rooms, collect_due, &w);
    for (size_t i = 0; i < w.n && !b->freeing; i++) {
        bus_room *room = w.due[i];
        retry_clear(R, room);
        if (room->sub_state == BUS_SUB_SUBSCRIBED && room->refs > 0 && !room->synced)
            send_head(R, room, 0);
        else if (room->sub_state == BUS_SUB_NONE && room->refs > 0)
            bus_rsub_reconcile(b, room);
        bus_room_maybe_free(b, room);
    }
    free(w.due);
}

void bus_rsub_arm(busr *R)
{
    if (R->retries > 0 && !uv_is_active((uv_handle_t *)&R->retry_t))
        uv_timer_start(&R->retry_t, retry_cb, RETRY_TICK_MS, RETRY_TICK_MS);
}

/* ---- subscriptions ---- */

static void channels(const busr *R, const char *room, char c[3][BUS_CHAN_MAX],
                     const char *out[3])
{
    chan(R, c[0], sizeof c[0], room, "msg");
    chan(R, c[1], sizeof c[1], room, "typing");
    chan(R, c[2], sizeof c[2], room, "presence");
    for (int i = 0; i < 3; i++) out[i] = c[i];
}

static void sync_seeded(void *arg, int status, uint64_t max_seq, const char *epoch, int given);

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
    head_res h = {0};
    if (rp && bus_rhead_parse(rp, &h) == 0 && h.status == 2 && !op->seeded) {
        /* a resync whose key is gone (Redis lost data): raise it to
         * max(durable head, what this node delivered), never to the
         * floor alone (other nodes may have stored more) */
        LOGW(MOD, "room %s: Redis has no head at the %s, or one another Redis run wrote "
             "(it restarted, failed over or lost its keys): seeding it from the durable head and "
             "this node's %" PRIu64, op->room, op->raise ? "raise another node asked for" : "resync",
             op->from);
        if (bus_seed_get(b, op->room, 0, sync_seeded, op) == 0) return; /* op moves */
        char name[CHAT_ROOM_MAX + 1];
        snprintf(name, sizeof name, "%s", op->room);
        uint64_t sub = op->sub_id;
        int raise = op->raise;
        free(op);
        if (!raise) bus_order_synced(b, name, sub, 0, 0);
        return;
    }
    if (op->raise) {
        /* the raise is done (or failed: the asker falls back on its own
         * after its bound); the room's delivery is not touched: it was
         * synced, and a push newer than this answer may have been
         * delivered already (syncing again would log a false "seq went
         * back") */
        if (!rp || bus_rhead_parse(rp, &h) != 0 || h.status == 2)
            LOGW(MOD, "room %s: raising its head for another node's seed failed", op->room);
        else if (h.before < op->from)
            LOGE(MOD, "room %s: Redis seq was %" PRIu64 ", below the %" PRIu64 " this node "
                 "delivered or was acked (Redis lost data): raised to %" PRIu64 " before another "
                 "node's seed", op->room, h.before, op->from, h.head);
        free(op);
        return;
    }
    if (!rp || bus_rhead_parse(rp, &h) != 0 || h.status == 2) {
        /* no answer (its shard is going down: on_node resets the room) or
         * an answer we cannot use: read it again later */
        if (rp && h.status == 2)   /* after a seed: its ids went to an earlier Redis run */
            LOGW(MOD, "head of chat:{%s}:seq: still needs a seed (Redis restarted during the "
                 "seed), again later", op->room);
        else if (rp)
            LOGE(MOD, "head of chat:{%s}:seq: %.*s", op->room,
                 rp->type == REDIS_REPLY_ERROR ? (int)rp->len : 16,
                 rp->type == REDIS_REPLY_ERROR ? rp->str : "unexpected reply");
        bus_rsub_retry_later(R, room);
        bus_rsub_arm(R);
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
static void sync_seeded(void *arg, int status, uint64_t max_seq, const char *epoch, int given)
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
        int raise = op->raise;
        free(op);
        if (!raise) bus_order_synced(b, room->name, room->sub_id, 0, 0);
        return;
    }
    op->seeded = 1;
    if (bus_rhead_send(R, head_cb, op, op->room, op->from, given,
                         max_seq > op->from ? max_seq : op->from, epoch) != 0) {
        int raise = op->raise;
        free(op);
        if (!raise) {
            bus_rsub_retry_later(R, room);
            bus_rsub_arm(R);
        }
    }
}

/* Reads the room's head after its subscription is confirmed (nothing
 * published after the confirmation is missed). A resubscription raises the
 * head to what this node already delivered, so a Redis that restarted empty
 * never assigns those seqs again; with a seed provider a missing key is
 * only reported (the next publish or replay seeds it). raise: another node
 * is about to seed the head (a seed ask, below): a missing key is seeded
 * now, from max(durable head, what this node delivered), as by a resync. */
static void send_head(busr *R, bus_room *room, int raise)
{
    room_op *op = bus_rop_new(R, room);
    char ep[BUS_EPOCH_MAX + 1];
    if (!op) {
        if (!raise) { bus_rsub_retry_later(R, room); bus_rsub_arm(R); }
        return;
    }
    /* a raise: its floor (bus_rhead_floor), which also covers a seq acked
     * to this node's publish whose push has not been delivered yet */
    op->from = raise ? bus_rhead_floor(R->b, room->name) : room->have_last ? room->last : 0;
    op->raise = raise;
    bus_epoch_new(R->b, ep);
    int mode = !bus_has_seed(R->b) ? BUS_SEED_NONE : raise ? BUS_SEED_ASK : BUS_SEED_PEEK;
    if (bus_rhead_send(R, head_cb, op, room->name, op->from, mode, 0, ep) != 0) {
        free(op);
        if (!raise) {
            bus_rsub_retry_later(R, room);
            bus_rsub_arm(R);
        }
    }
}

/* ---- asking a room's holders before a seed (docs/redis.md "Heads, seeds
 * and epochs") ----
 * A node about to seed a room's head from history (a publish or replay
 * found no head: first use, or Redis lost it without dropping the
 * connections: FLUSHALL, an evicted key) first publishes "!seed <tag>" on
 * the room's msg channel. Every node that holds the room gets it and seeds
 * the head as its resync does (send_head with raise: max(durable head, what
 * it delivered), which history may not hold yet); the asker counts them
 * from the PUBLISH reply and the bus (bus_core.c) probes the head until it
 * is there, or gives up after a bound. Only the "needs seed" path; an entry
 * never starts with '!'. */

typedef struct seed_ask_op { bus_seed *sd; int self; } seed_ask_op;

static void seed_ask_cb(void *ud, const redisReply *rp)
{
    seed_ask_op *a = ud;
    long n = rp && rp->type == REDIS_REPLY_INTEGER && rp->integer >= 0 ? (long)rp->integer : -1;
    if (rp && rp->type == REDIS_REPLY_ERROR)
        LOGW(MOD, "room %s: asking its holders: %.*s", bus_seed_room(a->sd), (int)rp->len,
             rp->str ? rp->str : "");
    if (n > 0) n -= a->self;   /* this node's own subscription got it too */
    bus_seed *sd = a->sd;
    free(a);
    bus_seed_asked(sd, n);
}

int bus_rsub_seed_ask(bus *b, bus_seed *sd)
{
    busr *R = b->impl;
    const char *name = bus_seed_room(sd);
    char ch[BUS_CHAN_MAX], msg[8 + BUS_TAG_LEN];
    seed_ask_op *a = malloc(sizeof *a);
    if (!a) return -1;
    a->sd = sd;
    /* a confirmed subscription was in place before this PUBLISH reaches
     * Redis: the reply counts it */
    bus_room *room = bus_room_get(b, name);
    a->self = room && room->sub_state == BUS_SUB_SUBSCRIBED;
    chan(R, ch, sizeof ch, name, "msg");
    int ml = snprintf(msg, sizeof msg, "!seed %s", R->tag);
    const char *argv[] = {R->cluster ? "SPUBLISH" : "PUBLISH", ch, msg};
    size_t lens[] = {strlen(argv[0]), strlen(ch), (size_t)ml};
    redis_call how = {.slot = redis_room_slot(name), .node = 0, .script = -1};
    if (redis_client_call(R->rc, &how, 3, argv, lens, seed_ask_cb, a) != 0) {
        free(a);
        return -1;
    }
    return 0;
}

static void seed_probe_cb(void *ud, const redisReply *rp)
{
    head_res h;
    bus_seed_probed(ud, rp && bus_rhead_parse(rp, &h) == 0 && h.status == 0);
}

/* the head script in peek mode with no floor: changes nothing; {0, ...}
 * only for a head valid in this Redis run */
int bus_rsub_seed_probe(bus *b, bus_seed *sd)
{
    return bus_rhead_send(b->impl, seed_probe_cb, sd, bus_seed_room(sd), 0, BUS_SEED_PEEK, 0, "-");
}

/* a room's control message (on_push): a holder raises the head for the
 * asker; unknown ones (a newer node's) are ignored */
static void room_control(busr *R, bus_room *room, const char *data, size_t len)
{
    char tag[BUS_TAG_LEN + 1];
    if (bus_reply_room_control(data, len, tag) != BUS_CTL_SEED_ASK || strcmp(tag, R->tag) == 0)
        return; /* (its own ask: the asker's floor is in its seed already) */
    /* an unsynced room's own head read is on its way */
    if (room->sub_state != BUS_SUB_SUBSCRIBED || !room->synced) return;
    LOGI(MOD, "room %s: another node is about to seed its head: raising it first", room->name);
    send_head(R, room, 1);
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
            bus_rsub_retry_later(R, room);
            bus_rsub_arm(R);
        }
        bus_room_maybe_free(b, room);
        return;
    }
    room->sub_state = BUS_SUB_SUBSCRIBED;
    room->sub_node = node;
    if (room->refs == 0) {
        bus_rsub_reconcile(b, room);
        bus_room_maybe_free(b, room);
        return;
    }
    send_head(R, room, 0);
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
    if (room->refs > 0) bus_rsub_reconcile(b, room);
    bus_room_maybe_free(b, room);
}

/* Never frees room (callers may still hold it). */
void bus_rsub_reconcile(bus *b, bus_room *room)
{
    busr *R = b->impl;
    if (b->freeing) return;
    char c[3][BUS_CHAN_MAX];
    const char *ch[3];
    channels(R, room->name, c, ch);
    if (room->sub_state == BUS_SUB_NONE && room->refs > 0) {
        int slot = redis_room_slot(room->name);
        if (!redis_client_slot_ready(R->rc, slot)) return; /* on_node/on_map come back */
        room_op *op = bus_rop_new(R, room);
        if (!op) return;
        if (redis_client_subscribe(R->rc, slot, 3, ch, NULL, sub_done, op) == 0) {
            room->sub_state = BUS_SUB_SUBSCRIBING;
            retry_clear(R, room);
        } else {
            free(op);
        }
    } else if (room->sub_state == BUS_SUB_SUBSCRIBED && room->refs == 0) {
        room_op *op = bus_rop_new(R, room);
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
    if (b->freeing || ctl_push(R, node, p) ||
        bus_reply_channel(R->chan_ns, p->channel, p->channel_len, name, kind, sizeof kind) != 0)
        return;
    bus_room *room = bus_room_get(b, name);
    if (p->kind == REDIS_PUSH_MESSAGE || p->kind == REDIS_PUSH_SMESSAGE) {
        if (!room || room->refs == 0) return;
        if (strcmp(kind, "msg") == 0) {
            bus_entry e;
            if (bus_parse_entry(p->data, p->data_len, &e) != 0) {
                if (p->data_len && p->data[0] == '!') room_control(R, room, p->data, p->data_len);
                else LOGW(MOD, "room %s: malformed bus message dropped", name);
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
        if (room->refs > 0) bus_rsub_reconcile(b, room);
        bus_room_maybe_free(b, room);
        bus_rsub_update_ready(R);
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
        if (rooms[i]->sub_state == BUS_SUB_NONE) bus_rsub_reconcile(b, rooms[i]);
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
    ctl_node(R, node, up);
    if (up && R->idb_head) bus_ridb_flush(R);
    bus_rsub_update_ready(R);
}

static void on_map(void *ud)
{
    busr *R = ud;
    if (R->b->freeing) return;
    reconcile_all(R);
    ctl_reconcile(R);
    if (R->idb_head) bus_ridb_flush(R);
    bus_rsub_update_ready(R);
}


const redis_client_handlers bus_rsub_handlers = {on_node, on_map, on_push};
