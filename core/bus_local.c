/* bus_local: the in-process backend of the bus (no Redis; one node).
 * Owns: per room a seq counter, a bounded recent buffer (ring of
 * recent_max entries) and the client ids seen within id_ttl_s (bounded per
 * room, oldest dropped first); the queue of deferred operations and the uv
 * idle handle that runs it, so no callback ever runs inside a bus_* call.
 * Messages reach subscribers through the same ordered-delivery path as in
 * Redis mode (bus_order_incoming). Control messages go through the same
 * queue to this node's on_control (the only node). Room stores live as long as the bus.
 * Heads: with a seed provider (a database) a room's counter starts at the
 * durable head, asked the first time the room is used; its publishes and
 * replays wait (parked on the room, in order) until the answer. Without
 * one every room starts at 0 and carries the bus's epoch, one per process
 * start: a restart shows as a new epoch. */
#define _GNU_SOURCE
#include "bus_int.h"
#include "log.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "bus"

typedef struct lentry { uint64_t seq; char *tail; size_t len; } lentry;

typedef struct lid {
    uint64_t seq, exp_ms;
    struct lid *next;
    char id[];
} lid;

struct lop;

typedef struct lroom {
    uint64_t seq;
    int seeded;              /* seq is the room's head (see the header) */
    int seeding;             /* asked the provider */
    struct lop *parked, *parked_tail; /* publishes/replays waiting for the seed */
    char epoch[BUS_EPOCH_MAX + 1];
    lentry *ring;            /* recent_max slots, seq % recent_max */
    hmap ids;             /* id -> lid */
    lid *ids_head, *ids_tail;/* insertion (= expiry) order */
    size_t nids;
    bus_upd_states *upd;     /* message updates' target states (bus_update.c) */
} lroom;

enum { OP_PUBLISH = 1, OP_REPLAY, OP_EMIT, OP_FETCH, OP_CONTROL };

typedef struct lop {
    int kind;
    struct lop *next;
    bus_req *r;
    char room[CHAT_ROOM_MAX + 1];
    char kind_s[16];
    uint64_t sub_id, from, to;
    bus_control_cb ccb;      /* OP_CONTROL */
    void *cud;
    size_t len;
    char data[];
} lop;

typedef struct busl {
    bus *b;
    hmap rooms;           /* name -> lroom */
    lop *head, *tail;
    size_t nops;
    uv_idle_t idle;
} busl;

static lroom *lroom_get(busl *L, const char *name, int create)
{
    lroom *lr = hmap_get(&L->rooms, name);
    if (lr || !create) return lr;
    lr = calloc(1, sizeof *lr);
    if (!lr) return NULL;
    lr->ring = calloc(L->b->recent_max, sizeof *lr->ring);
    hmap_init(&lr->ids);
    lr->upd = bus_upd_states_new();
    if (!bus_has_seed(L->b)) {
        lr->seeded = 1;
        snprintf(lr->epoch, sizeof lr->epoch, "%s", L->b->epoch);
    }
    if (!lr->ring || !lr->upd || hmap_put(&L->rooms, name, lr) != 0) {
        bus_upd_states_free(lr->upd);
        free(lr->ring);
        free(lr);
        return NULL;
    }
    return lr;
}

static void ids_drop_head(lroom *lr)
{
    lid *d = lr->ids_head;
    lr->ids_head = d->next;
    if (!lr->ids_head) lr->ids_tail = NULL;
    if (hmap_get(&lr->ids, d->id) == d) hmap_del(&lr->ids, d->id);
    free(d);
    lr->nids--;
}

static void ids_expire(lroom *lr)
{
    uint64_t now = mono_ms();
    while (lr->ids_head && (lr->ids_head->exp_ms <= now || lr->nids > BUS_IDS_PER_ROOM))
        ids_drop_head(lr);
}

static int lroom_free(void *arg, const char *key, void *val)
{
    lroom *lr = val;
    busl *L = arg;
    for (size_t i = 0; i < L->b->recent_max; i++) free(lr->ring[i].tail);
    free(lr->ring);
    while (lr->ids_head) ids_drop_head(lr);
    hmap_free(&lr->ids);
    bus_upd_states_free(lr->upd);
    free(lr);
    return 0;
}

/* ---- the deferred queue ---- */

static void run_queue(uv_idle_t *h);

static int enqueue(busl *L, lop *op)
{
    if (!L->head && uv_idle_start(&L->idle, run_queue) != 0) return -1;
    if (L->tail) L->tail->next = op; else L->head = op;
    L->tail = op;
    L->nops++;
    return 0;
}

static lop *op_new(int kind, const char *room, const void *data, size_t len)
{
    lop *op = calloc(1, sizeof *op + len + 1);
    if (!op) return NULL;
    op->kind = kind;
    snprintf(op->room, sizeof op->room, "%s", room);
    if (len) memcpy(op->data, data, len);
    op->len = len;
    return op;
}

static void do_publish(busl *L, bus_req *r)
{
    bus *b = L->b;
    lroom *lr = lroom_get(L, r->room, 1);
    if (!lr) {
        LOGE(MOD, "out of memory publishing to %s", r->room);
        return; /* unhold answers -1 */
    }
    ids_expire(lr);
    if (r->id) {
        lid *d = hmap_get(&lr->ids, r->id);
        if (d) {
            bus_req_publish_done(r, 0, d->seq, 1);
            return;
        }
    }
    uint64_t seq = lr->seq + 1;
    lentry *e = &lr->ring[seq % b->recent_max];
    size_t tail_len = r->tail_len;
    char *copy = malloc(r->tail_len + 32);
    if (!copy) {
        LOGE(MOD, "out of memory publishing to %s", r->room);
        return;
    }
    memcpy(copy, r->tail, r->tail_len + 1);
    if (r->upd) {
        /* a message update: its target's state step (bus_update.c), then
         * a react's tail is closed with the count */
        int64_t count = -1;
        int st = bus_upd_local_apply(lr->upd, r, (uint64_t)bus_state_ttl_s(b) * 1000u, &count);
        if (st != 0) {
            free(copy);
            if (st > 0) bus_req_publish_done(r, st, 0, 0);
            return; /* -1: unhold answers -1 */
        }
        if (count >= 0) tail_len += (size_t)snprintf(copy + tail_len, 32, "%" PRId64 "}", count);
        r->count = count;
    }
    if (r->id) {
        size_t il = strlen(r->id);
        lid *d = malloc(sizeof *d + il + 1);
        if (!d || hmap_put(&lr->ids, r->id, NULL) != 0) {
            free(d);
            free(copy);
            LOGE(MOD, "out of memory publishing to %s", r->room);
            return;
        }
        memcpy(d->id, r->id, il + 1);
        d->seq = seq;
        d->exp_ms = mono_ms() + (uint64_t)b->id_ttl_s * 1000u;
        d->next = NULL;
        hmap_put(&lr->ids, r->id, d); /* replaces the NULL placed above */
        if (lr->ids_tail) lr->ids_tail->next = d; else lr->ids_head = d;
        lr->ids_tail = d;
        lr->nids++;
        ids_expire(lr);
    }
    free(e->tail);
    e->seq = seq;
    e->tail = copy;
    e->len = tail_len;
    lr->seq = seq;
    metric_inc(b->m.published);
    /* delivered to local subscribers through the one ordered path, BEFORE
     * the publish is answered: the sender's own frame, then its ack (with
     * Redis the broadcast reaches the node before the script's answer;
     * without a database the ack is sent inside this answer) */
    if (!b->freeing) bus_order_incoming(b, r->room, seq, e->tail, e->len);
    bus_req_publish_done(r, 0, seq, 0);
}

/* entries [from, to] present in the ring, ascending; returns how many */
static size_t ring_range(busl *L, lroom *lr, uint64_t from, uint64_t to, bus_entry *out)
{
    size_t n = 0;
    for (uint64_t s = from; lr && s <= to && s != 0; s++) {
        lentry *e = &lr->ring[s % L->b->recent_max];
        if (e->seq != s || !e->tail) continue;
        out[n].seq = s;
        out[n].tail = e->tail;
        out[n].len = e->len;
        n++;
        if (s == UINT64_MAX) break;
    }
    return n;
}

static void do_replay(busl *L, bus_req *r)
{
    lroom *lr = lroom_get(L, r->room, 0);
    uint64_t head = lr ? lr->seq : 0;
    const char *epoch = lr ? lr->epoch : L->b->epoch;
    size_t want = 0;
    int span = bus_replay_span(r, head, r->max < L->b->recent_max ? r->max : L->b->recent_max, &want);
    if (span <= 0) {
        bus_req_replay_done(r, span < 0, NULL, 0, head, epoch);
        return;
    }
    bus_entry *e = malloc(want * sizeof *e);
    if (!e) return; /* -1 */
    size_t n = ring_range(L, lr, r->since + 1, r->since + want, e);
    if (n == want) bus_req_replay_done(r, 0, e, n, head, epoch);
    else bus_req_replay_done(r, 1, NULL, 0, head, epoch);
    free(e);
}

/* ---- seeding (with a provider) ---- */

typedef struct lseed {
    busl *L;
    char room[CHAT_ROOM_MAX + 1];
} lseed;

static void run_op(busl *L, lop *op);

static void seeded_cb(void *arg, int status, uint64_t max_seq, const char *epoch, int given)
{
    (void)given;   /* no script: nothing was written back */
    lseed *a = arg;
    busl *L = a->L;
    bus *b = L->b;
    lroom *lr = lroom_get(L, a->room, 0);
    free(a);
    if (!lr) return;
    lr->seeding = 0;
    lop *p = lr->parked;
    lr->parked = lr->parked_tail = NULL;
    if (status == 0 && !b->freeing) {
        if (max_seq > lr->seq) lr->seq = max_seq;
        snprintf(lr->epoch, sizeof lr->epoch, "%s", epoch);
        lr->seeded = 1;
    }
    while (p) { /* in arrival order; failed (-1, a replay -2 when the head came late) when
                 * there is no head */
        lop *op = p;
        p = p->next;
        op->next = NULL;
        if (lr->seeded && !b->freeing) { run_op(L, op); continue; }
        if (status == BUS_HEAD_LATE) op->r->fail = status;
        bus_req_unhold(op->r);
        free(op);
    }
}

/* 1 when op waits for the room's seed (parked; asked if needed). */
static int park(busl *L, lop *op)
{
    lroom *lr = lroom_get(L, op->room, bus_has_seed(L->b));
    if (!lr || lr->seeded) return 0;
    op->next = NULL;
    if (lr->parked_tail) lr->parked_tail->next = op; else lr->parked = op;
    lr->parked_tail = op;
    if (lr->seeding) return 1;
    lseed *a = calloc(1, sizeof *a);
    if (a) {
        a->L = L;
        snprintf(a->room, sizeof a->room, "%s", op->room);
    }
    if (a && bus_seed_get(L->b, op->room, 0, seeded_cb, a) == 0) {
        lr->seeding = 1;
        return 1;
    }
    free(a);
    /* cannot ask: everything parked fails now */
    lop *p = lr->parked;
    lr->parked = lr->parked_tail = NULL;
    while (p) { lop *n = p->next; bus_req_unhold(p->r); free(p); p = n; }
    return 1;
}

static void do_fetch(busl *L, lop *op)
{
    lroom *lr = lroom_get(L, op->room, 0);
    uint64_t span = op->to - op->from + 1;
    if (span > L->b->recent_max) span = L->b->recent_max;
    bus_entry *e = malloc((size_t)span * sizeof *e);
    size_t n = 0;
    if (e) {
        uint64_t from = op->to - span + 1; /* older ones cannot be in the ring */
        n = ring_range(L, lr, from, op->to, e);
    }
    bus_order_fetched(L->b, op->room, op->sub_id, e != NULL, op->from, op->to, e, n);
    free(e);
}

static void run_queue(uv_idle_t *h)
{
    busl *L = h->data;
    bus *b = L->b;
    size_t n = L->nops; /* what is queued now; later ops run next turn */
    while (n-- > 0 && L->head && !b->freeing) {
        lop *op = L->head;
        L->head = op->next;
        if (!L->head) L->tail = NULL;
        L->nops--;
        if ((op->kind == OP_PUBLISH || op->kind == OP_REPLAY) && park(L, op)) continue;
        run_op(L, op);
    }
    if (!L->head && !b->freeing) uv_idle_stop(&L->idle);
}

/* Runs and frees one op. */
static void run_op(busl *L, lop *op)
{
    bus *b = L->b;
    switch (op->kind) {
    case OP_PUBLISH: do_publish(L, op->r); bus_req_unhold(op->r); break;
    case OP_REPLAY: do_replay(L, op->r); bus_req_unhold(op->r); break;
    case OP_FETCH: do_fetch(L, op); break;
    case OP_CONTROL:
        /* the one node: it receives its own message, then learns it did */
        if (b->h.on_control) b->h.on_control(b->ud, op->data, op->len);
        if (op->ccb && !b->freeing) op->ccb(op->cud, 1);
        break;
    case OP_EMIT: {
        bus_room *room = bus_room_get(b, op->room);
        if (room && room->refs > 0 && b->h.on_emit)
            b->h.on_emit(b->ud, op->room, op->kind_s, op->data, op->len);
        break;
    }
    }
    free(op);
}

/* ---- backend operations ---- */

static int be_publish(bus *b, bus_req *r)
{
    busl *L = b->impl;
    lop *op = op_new(OP_PUBLISH, r->room, NULL, 0);
    if (!op) return -1;
    op->r = r;
    if (enqueue(L, op) != 0) { free(op); return -1; }
    r->hold = 1;
    return 0;
}

static int be_replay(bus *b, bus_req *r)
{
    busl *L = b->impl;
    lop *op = op_new(OP_REPLAY, r->room, NULL, 0);
    if (!op) return -1;
    op->r = r;
    if (enqueue(L, op) != 0) { free(op); return -1; }
    r->hold = 1;
    return 0;
}

static int be_emit(bus *b, const char *room, const char *kind, const char *data, size_t len)
{
    busl *L = b->impl;
    lop *op = op_new(OP_EMIT, room, data, len);
    if (!op) return -1;
    snprintf(op->kind_s, sizeof op->kind_s, "%s", kind);
    if (enqueue(L, op) != 0) { free(op); return -1; }
    return 0;
}

static int be_control(bus *b, const char *data, size_t len, bus_control_cb cb, void *ud)
{
    busl *L = b->impl;
    lop *op = op_new(OP_CONTROL, "", data, len);
    if (!op) return -1;
    op->ccb = cb;
    op->cud = ud;
    if (enqueue(L, op) != 0) { free(op); return -1; }
    return 0;
}

static int be_fetch(bus *b, bus_room *room, uint64_t from, uint64_t to)
{
    busl *L = b->impl;
    lop *op = op_new(OP_FETCH, room->name, NULL, 0);
    if (!op) return -1;
    op->sub_id = room->sub_id;
    op->from = from;
    op->to = to;
    if (enqueue(L, op) != 0) { free(op); return -1; }
    return 0;
}

static void be_forget_id(bus *b, const char *room, const char *id, uint64_t seq)
{
    busl *L = b->impl;
    lroom *lr = lroom_get(L, room, 0);
    lid *d = lr ? hmap_get(&lr->ids, id) : NULL;
    /* the entry stays in the expiry list, which checks the map first */
    if (d && d->seq == seq) hmap_del(&lr->ids, id);
}

static void be_undo_update(bus *b, const char *room, const struct bus_upd *u)
{
    busl *L = b->impl;
    lroom *lr = lroom_get(L, room, 0);
    if (lr) bus_upd_states_undo(lr->upd, u);
}

/* Subscribing is immediate here: the head is read now, so everything
 * published after this call reaches the room. No user callback runs. */
static void be_reconcile(bus *b, bus_room *room)
{
    busl *L = b->impl;
    if (room->refs > 0 && room->sub_state == BUS_SUB_NONE) {
        room->sub_state = BUS_SUB_SUBSCRIBED;
        lroom *lr = lroom_get(L, room->name, 0);
        /* a room not seeded yet has handed out no seq: its first message
         * starts the delivery (known = 0) */
        int known = lr ? lr->seeded : !bus_has_seed(b);
        bus_order_synced(b, room->name, room->sub_id, lr ? lr->seq : 0, known);
    } else if (room->refs == 0) {
        room->sub_state = BUS_SUB_NONE;
    }
}

static void idle_closed(uv_handle_t *h)
{
    busl *L = h->data;
    bus *b = L->b;
    hmap_each(&L->rooms, lroom_free, L);
    hmap_free(&L->rooms);
    free(L);
    bus_handle_closed(b);
}

static int be_init(bus *b, const bus_opts *o, char *err, size_t errlen)
{
    (void)o;
    busl *L = calloc(1, sizeof *L);
    if (!L) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    L->b = b;
    hmap_init(&L->rooms);
    uv_idle_init(b->loop, &L->idle);
    L->idle.data = L;
    b->handles++;
    b->impl = L;
    b->ready = 1;
    return 0;
}

static void be_free(bus *b)
{
    busl *L = b->impl;
    while (L->head) {
        lop *op = L->head;
        L->head = op->next;
        if (op->r) bus_req_unhold(op->r); /* answers -1 */
        if (op->ccb) op->ccb(op->cud, -1);
        free(op);
    }
    L->tail = NULL;
    L->nops = 0;
    /* room stores are freed with the handle: a caller up the stack may
     * still point into a ring */
    uv_idle_stop(&L->idle);
    uv_close((uv_handle_t *)&L->idle, idle_closed);
}

const bus_backend bus_local_backend = {
    .init = be_init,
    .publish = be_publish,
    .replay = be_replay,
    .emit = be_emit,
    .reconcile = be_reconcile,
    .fetch = be_fetch,
    .control = be_control,
    .forget_id = be_forget_id,
    .undo_update = be_undo_update,
    .progress = NULL,
    .free = be_free,
};
