/* bus: the public API of bus.h, common to both modes.
 * Owns: the bus object and its lifetime (freed after its last uv handle is
 * closed), the room registry (refcounted subscriptions), the pending request
 * list (every publish/replay callback called exactly once) and the metrics
 * series. The backfill of unstored messages is bus_backfill.c. Mode-specific work is delegated to a backend (bus_redis.c,
 * bus_local.c); ordered delivery lives in bus_order.c. */
#define _GNU_SOURCE
#include "bus_int.h"
#include "log.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    hmap_init(&b->rooms);
    register_metrics(b);
    b->be = opts && opts->redis_url ? &bus_redis_backend : &bus_local_backend;
    if (b->be->init(b, opts, err, errlen) != 0) {
        hmap_free(&b->rooms);
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

void bus_req_replay_done(bus_req *r, int status, const bus_entry *e, size_t n, uint64_t head)
{
    if (r->called) return;
    r->called = 1;
    if (r->rcb) r->rcb(r->ud, status, e, n, head);
}

static void req_fail(bus_req *r)
{
    if (r->kind == BUS_REQ_PUBLISH) bus_req_publish_done(r, -1, 0, 0);
    else bus_req_replay_done(r, -1, NULL, 0, 0);
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
