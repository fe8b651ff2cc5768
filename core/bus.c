/* bus: the public API of bus.h, common to both modes.
 * Owns: the bus object and its lifetime (freed after its last uv handle is
 * closed), the room registry (refcounted subscriptions), the pending request
 * list (every publish/replay callback called exactly once) and the metrics
 * series, the seed requests to the upper layer (one per room in flight,
 * answered waiters run from the defer timer) and epoch generation.
 * The backfill of unstored messages is bus_backfill.c. Mode-specific work
 * is delegated to a backend (bus_redis.c, bus_local.c); ordered delivery
 * lives in bus_order.c. */
#define _GNU_SOURCE
#include "bus_int.h"
#include "log.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define MOD "bus"
#define BUS_ID_MAX 128

static void set_err(char *err, size_t n, const char *msg)
{
    if (err && n) {
        strncpy(err, msg, n - 1);
        err[n - 1] = 0;
    }
}

static void register_metrics(bus *b)
{
    const char *dh = "Duration of Redis operations of the bus";
    b->m.op_publish = metrics_histogram("chat_redis_op_duration_seconds", dh, "op=\"publish\"",
                                        METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    b->m.op_replay = metrics_histogram("chat_redis_op_duration_seconds", dh, "op=\"replay\"",
                                       METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    b->m.op_fetch = metrics_histogram("chat_redis_op_duration_seconds", dh, "op=\"fetch\"",
                                      METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    b->m.op_head = metrics_histogram("chat_redis_op_duration_seconds", dh, "op=\"head\"",
                                     METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    b->m.reconnects = metrics_counter("chat_redis_reconnects_total",
                                      "Redis sessions re-established after a loss", NULL);
    b->m.gaps_filled = metrics_counter("chat_bus_gaps_filled_total",
                                       "Gaps in a room's seq filled from the recent buffer", NULL);
    b->m.gaps_lost = metrics_counter("chat_bus_gaps_lost_total",
                                     "Gaps the recent buffer no longer covered (on_gap)", NULL);
    b->m.published = metrics_counter("chat_messages_published_total",
                                     "Messages given a seq and published on the bus", NULL);
    b->m.backfilled = metrics_counter("chat_bus_backfill_total",
                                      "Unstored messages of another node handed to the core to store",
                                      NULL);
    b->m.backfill_lost = metrics_counter("chat_bus_backfill_lost_total",
                                         "Unstored messages the recent buffer no longer had", NULL);
}

bus *bus_new(uv_loop_t *loop, const bus_opts *opts, const bus_handlers *h, void *ud,
             char *err, size_t errlen)
{
    if (!loop || !h) {
        set_err(err, errlen, "bus_new: loop and handlers are required");
        return NULL;
    }
    bus *b = calloc(1, sizeof *b);
    if (!b) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    b->loop = loop;
    b->h = *h;
    b->ud = ud;
    b->recent_max = opts && opts->recent_max ? opts->recent_max : 1000;
    b->id_ttl_s = opts && opts->id_ttl_s ? opts->id_ttl_s : 86400;
    if (getrandom(&b->rng, sizeof b->rng, 0) != (ssize_t)sizeof b->rng)
        b->rng = mono_ns() ^ (uint64_t)(uintptr_t)b;
    b->rng |= 1;
    bus_epoch_new(b, b->epoch);
    hmap_init(&b->seeds);
    hmap_init(&b->rooms);
    register_metrics(b);
    b->be = opts && opts->redis_url ? &bus_redis_backend : &bus_local_backend;
    if (b->be->init(b, opts, err, errlen) != 0) {
        hmap_free(&b->rooms);
        hmap_free(&b->seeds);
        free(b);
        return NULL;
    }
    uv_timer_init(loop, &b->defer);
    b->defer.data = b;
    b->handles++;
    if (bus_is_redis(b) && opts->track_unstored) {
        b->track_unstored = 1;
        if (bus_backfill_init(b, opts->backfill_grace_ms, err, errlen) != 0) {
            bus_free(b); /* freed once its handles are closed */
            return NULL;
        }
    }
    return b;
}

static void req_unlink(bus_req *r)
{
    bus *b = r->b;
    if (r->prev) r->prev->next = r->next; else b->pending = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void req_free(bus_req *r)
{
    req_unlink(r);
    free(r->id);
    free(r->tail);
    free(r);
}

static bus_req *req_new(bus *b, int kind, const char *room)
{
    bus_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->kind = kind;
    r->b = b;
    r->t0 = mono_ns();
    snprintf(r->room, sizeof r->room, "%s", room);
    r->next = b->pending;
    if (b->pending) b->pending->prev = r;
    b->pending = r;
    return r;
}

void bus_req_publish_done(bus_req *r, int status, uint64_t seq, int dup)
{
    if (r->called) return;
    r->called = 1;
    if (r->pcb) r->pcb(r->ud, status, seq, dup);
}

void bus_req_replay_done(bus_req *r, int status, const bus_entry *e, size_t n, uint64_t head,
                         const char *epoch)
{
    if (r->called) return;
    r->called = 1;
    if (r->rcb) r->rcb(r->ud, status, e, n, head, status < 0 ? NULL : epoch ? epoch : "");
}

static void req_fail(bus_req *r)
{
    if (r->kind == BUS_REQ_PUBLISH) bus_req_publish_done(r, -1, 0, 0);
    else bus_req_replay_done(r, -1, NULL, 0, 0, NULL);
}

void bus_req_unhold(bus_req *r)
{
    if (--r->hold > 0) return;
    req_fail(r);
    req_free(r);
}

static void room_free(bus_room *room)
{
    bus_held *h = room->held, *n;
    for (; h; h = n) { n = h->next; free(h); }
    free(room);
}

static int room_free_cb(void *arg, const char *key, void *val)
{
    (void)arg;
    room_free(val);
    return 0;
}

static int room_forget_waiting(void *arg, const char *key, void *val)
{
    (void)arg;
    ((bus_room *)val)->waiting = NULL; /* answered and freed below */
    return 0;
}

/* ---- seeds: the durable head of a room, from the upper layer ---- */

typedef struct seed_wait {
    bus_seed_fn fn;
    void *arg;
    struct seed_wait *next;
} seed_wait;

struct bus_seed {
    bus *b;                  /* NULL once the bus is freed: done only frees */
    seed_wait *waiters;      /* in arrival order */
    struct bus_seed *dnext;  /* answered list */
    int status;
    uint64_t max_seq;
    char epoch[BUS_EPOCH_MAX + 1];
    char room[CHAT_ROOM_MAX + 1];
};

static void defer_cb(uv_timer_t *t);

void bus_epoch_new(bus *b, char out[BUS_EPOCH_MAX + 1])
{
    b->rng ^= b->rng << 13;
    b->rng ^= b->rng >> 7;
    b->rng ^= b->rng << 17;
    snprintf(out, BUS_EPOCH_MAX + 1, "%016llx", (unsigned long long)(b->rng * 0x2545F4914F6CDD1Dull));
}

int bus_has_seed(const bus *b) { return b && b->h.on_seed != NULL; }

int bus_seed_get(bus *b, const char *room, bus_seed_fn fn, void *arg)
{
    if (!b || b->freeing || !b->h.on_seed) return -1;
    seed_wait *w = calloc(1, sizeof *w);
    if (!w) return -1;
    w->fn = fn;
    w->arg = arg;
    bus_seed *sd = hmap_get(&b->seeds, room);
    if (sd) {
        seed_wait **pp = &sd->waiters;
        while (*pp) pp = &(*pp)->next;
        *pp = w;
        return 0;
    }
    sd = calloc(1, sizeof *sd);
    if (!sd || hmap_put(&b->seeds, room, sd) != 0) {
        free(sd);
        free(w);
        return -1;
    }
    sd->b = b;
    sd->waiters = w;
    snprintf(sd->room, sizeof sd->room, "%s", room);
    LOGD(MOD, "room %s: no head in the bus, asking for the durable one", room);
    b->h.on_seed(b->ud, sd->room, sd); /* may answer at once: deferred below */
    return 0;
}

static void seed_run_waiters(bus_seed *sd, int status)
{
    seed_wait *w = sd->waiters;
    sd->waiters = NULL;
    while (w) {
        seed_wait *n = w->next;
        w->fn(w->arg, status, sd->max_seq, sd->epoch);
        free(w);
        w = n;
    }
}

void bus_seed_done(bus_seed *sd, int status, uint64_t max_seq, const char *epoch)
{
    if (!sd) return;
    bus *b = sd->b;
    if (!b) { free(sd); return; } /* the bus is gone: its waiters were answered */
    if (status == 0 && (!epoch || !*epoch || strlen(epoch) > BUS_EPOCH_MAX)) {
        LOGE(MOD, "room %s: the durable head came without a valid epoch", sd->room);
        status = -1;
    }
    sd->status = status;
    sd->max_seq = status == 0 ? max_seq : 0;
    snprintf(sd->epoch, sizeof sd->epoch, "%s", status == 0 ? epoch : "");
    /* stays in the map until its waiters run: who asks meanwhile shares it */
    if (status != 0) LOGW(MOD, "room %s: durable head unavailable", sd->room);
    sd->dnext = b->seeds_done;
    b->seeds_done = sd;
    if (!uv_is_active((uv_handle_t *)&b->defer)) uv_timer_start(&b->defer, defer_cb, 0, 0);
}

/* bus_free: every waiter gets -1 now (b->freeing is set); requests still
 * with the provider are left to it (bus_seed_done then frees them). */
static void seeds_cancel(bus *b)
{
    /* answered ones first: they are in the map too, and freed here */
    while (b->seeds_done) {
        bus_seed *sd = b->seeds_done;
        b->seeds_done = sd->dnext;
        if (hmap_get(&b->seeds, sd->room) == sd) hmap_del(&b->seeds, sd->room);
        seed_run_waiters(sd, -1);
        free(sd);
    }
    for (size_t i = 0; i < b->seeds.cap; i++) {
        if (!hmap_live(&b->seeds, i)) continue;
        bus_seed *sd = b->seeds.slots[i].val;
        sd->b = NULL; /* the provider still has it: bus_seed_done frees it */
        seed_run_waiters(sd, -1);
    }
    hmap_free(&b->seeds);
}

/* Everything of the bus stays allocated until its last handle is closed:
 * bus_free may run inside a callback whose caller still walks a room. */
static void final_free(bus *b)
{
    while (b->pending) req_free(b->pending);
    hmap_each(&b->rooms, room_free_cb, NULL);
    hmap_free(&b->rooms);
    free(b);
}

static void defer_closed(uv_handle_t *h) { bus_handle_closed(h->data); }

void bus_free(bus *b)
{
    if (!b || b->freeing) return;
    b->freeing = 1;
    b->ready = 0;
    b->deferred = NULL; /* still in the pending list: answered below */
    seeds_cancel(b);
    uv_close((uv_handle_t *)&b->defer, defer_closed);
    bus_backfill_free(b);
    /* the backend answers what it holds (-1) and closes its handles */
    b->be->free(b);
    /* replays waiting for a sync are held by nobody but their room */
    hmap_each(&b->rooms, room_forget_waiting, NULL);
    for (bus_req *r = b->pending, *n; r; r = n) {
        n = r->next;
        req_fail(r);
        if (r->hold <= 0) req_free(r);
    }
    if (b->handles == 0) final_free(b);
}

void bus_handle_closed(bus *b)
{
    if (--b->handles > 0 || !b->freeing) return;
    /* requests still held by a backend are gone by now (hiredis answers
     * every pending callback while freeing its context) */
    final_free(b);
}

int bus_ready(const bus *b) { return b && !b->freeing && b->ready; }
int bus_is_redis(const bus *b) { return b && b->be == &bus_redis_backend; }

void bus_set_ready(bus *b, int ready)
{
    if (b->ready == ready) return;
    b->ready = ready;
    LOGI(MOD, "bus %s", ready ? "ready" : "unavailable");
    if (!b->freeing && b->h.on_ready) b->h.on_ready(b->ud, ready);
}

bus_room *bus_room_get(bus *b, const char *name)
{
    return hmap_get(&b->rooms, name);
}

void bus_room_maybe_free(bus *b, bus_room *room)
{
    if (room->refs > 0 || room->sub_state != BUS_SUB_NONE || room->busy > 0 || room->waiting)
        return;
    hmap_del(&b->rooms, room->name);
    room_free(room);
}

static void defer_cb(uv_timer_t *t)
{
    bus *b = t->data;
    /* answered seeds: oldest first */
    bus_seed *sl = b->seeds_done, *rev = NULL;
    b->seeds_done = NULL;
    while (sl) { bus_seed *n = sl->dnext; sl->dnext = rev; rev = sl; sl = n; }
    while (rev) {
        bus_seed *sd = rev;
        rev = sd->dnext;
        if (hmap_get(&b->seeds, sd->room) == sd) hmap_del(&b->seeds, sd->room);
        if (!b->freeing) seed_run_waiters(sd, sd->status);
        else seed_run_waiters(sd, -1);
        free(sd);
    }
    bus_req *d = b->deferred;
    b->deferred = NULL;
    while (d && !b->freeing) {
        bus_req *r = d;
        d = d->wnext;
        r->wnext = NULL;
        req_fail(r);
        req_free(r);
    }
}

/* r (held by nobody) is answered -1 from the loop, not from this call */
static void req_fail_later(bus *b, bus_req *r)
{
    r->wnext = b->deferred;
    b->deferred = r;
    if (!uv_is_active((uv_handle_t *)&b->defer)) uv_timer_start(&b->defer, defer_cb, 0, 0);
}

void bus_room_run_waiting(bus *b, bus_room *room, int fail)
{
    bus_req *w = room->waiting;
    room->waiting = NULL;
    while (w) {
        bus_req *r = w;
        w = w->wnext;
        r->wnext = NULL;
        if (b->freeing) continue; /* bus_free answers every pending request */
        if (fail || b->be->replay(b, r) != 0) req_fail_later(b, r);
    }
}

void bus_subscribe(bus *b, const char *room)
{
    if (!b || b->freeing || !room || !room_name_valid(room, strlen(room))) return;
    bus_room *r = bus_room_get(b, room);
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) { LOGE(MOD, "out of memory subscribing %s", room); return; }
        snprintf(r->name, sizeof r->name, "%s", room);
        r->sub_id = ++b->sub_counter;
        if (hmap_put(&b->rooms, r->name, r) != 0) {
            free(r);
            LOGE(MOD, "out of memory subscribing %s", room);
            return;
        }
    }
    if (++r->refs == 1) {
        bus_order_reset(b, r, 0);
        b->be->reconcile(b, r);
    }
}

void bus_unsubscribe(bus *b, const char *room)
{
    if (!b || b->freeing || !room) return;
    bus_room *r = bus_room_get(b, room);
    if (!r || r->refs == 0) return;
    if (--r->refs > 0) return;
    bus_order_reset(b, r, 0);
    /* nobody waits for this room's live messages any more */
    bus_room_run_waiting(b, r, 0);
    b->be->reconcile(b, r);
    bus_room_maybe_free(b, r);
}

int bus_publish(bus *b, const char *room, const char *client_id, const char *tail,
                size_t tail_len, bus_publish_cb cb, void *ud)
{
    if (!bus_ready(b) || !room || !room_name_valid(room, strlen(room)) || (!tail && tail_len))
        return -1;
    if (client_id && (!*client_id || strlen(client_id) > BUS_ID_MAX)) return -1;
    bus_req *r = req_new(b, BUS_REQ_PUBLISH, room);
    if (!r) return -1;
    r->pcb = cb;
    r->ud = ud;
    r->tail = malloc(tail_len + 1);
    if (!r->tail || (client_id && !(r->id = strdup(client_id)))) {
        req_free(r);
        return -1;
    }
    if (tail_len) memcpy(r->tail, tail, tail_len);
    r->tail[tail_len] = 0;
    r->tail_len = tail_len;
    if (b->be->publish(b, r) != 0) {
        req_free(r);
        return -1;
    }
    return 0;
}

int bus_replay(bus *b, const char *room, uint64_t since, size_t max, bus_replay_cb cb,
               void *ud)
{
    if (!bus_ready(b) || !room || !room_name_valid(room, strlen(room))) return -1;
    bus_req *r = req_new(b, BUS_REQ_REPLAY, room);
    if (!r) return -1;
    r->rcb = cb;
    r->ud = ud;
    r->since = since;
    r->max = max;
    bus_room *rm = bus_room_get(b, room);
    if (rm && rm->refs > 0 && !rm->synced) {
        /* answer after the subscription's head is known, so that every seq
         * after `since` is either replayed or delivered live */
        bus_req **pp = &rm->waiting;
        while (*pp) pp = &(*pp)->wnext;
        *pp = r;
        return 0;
    }
    if (b->be->replay(b, r) != 0) {
        req_free(r);
        return -1;
    }
    return 0;
}

void bus_forget_id(bus *b, const char *room, const char *client_id, uint64_t seq)
{
    if (!b || b->freeing || !room || !client_id || !*client_id || strlen(client_id) > BUS_ID_MAX ||
        !room_name_valid(room, strlen(room)))
        return;
    b->be->forget_id(b, room, client_id, seq);
}

void bus_mark_stored(bus *b, const char *room, uint64_t seq)
{
    if (!b || b->freeing || !b->bf) return;
    bus_backfill_mark(b, room, seq);
}

int bus_emit(bus *b, const char *room, const char *kind, const char *data, size_t len)
{
    if (!bus_ready(b) || !room || !kind || !room_name_valid(room, strlen(room))) return -1;
    if (strcmp(kind, "typing") != 0 && strcmp(kind, "presence") != 0) return -1;
    if (!data && len) return -1;
    return b->be->emit(b, room, kind, data ? data : "", len);
}
