/* bus: the public API of bus.h, common to both modes.
 * Owns: creating and freeing the bus object, the choice of its backend
 * (bus_redis.c with a Redis URL, bus_local.c without), the refcounted room
 * subscriptions, the validation of every call, and the metrics series.
 * Shared internals (requests, room registry, lifetime end) are bus_core.c;
 * ordered delivery is bus_order.c; the backfill of unstored messages lives
 * inside the Redis backend (bus_backfill.c). */
#define _GNU_SOURCE
#include "bus.h"
#include "bus_int.h"
#include "log.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define MOD "bus"

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
    b->m.seeds = metrics_counter("chat_bus_seeds_total",
                                 "Durable heads of rooms asked of history: a room's first use, or "
                                 "a head Redis lost or that another Redis run wrote (restart, "
                                 "failover)", NULL);
    b->m.seed_failures = metrics_counter("chat_bus_seed_failures_total",
                                         "Seeds of a room's head that failed: history could not "
                                         "answer, or the room's client ids could not be written "
                                         "back to Redis (the operations waiting answer unavailable)",
                                         NULL);
    b->m.seed_late_uses = metrics_counter("chat_bus_seed_late_uses_total",
                                          "Requests for a room's head (publish, replay) answered "
                                          "unavailable at once because its seed was past its deadline and "
                                          "history had still not answered (no second query)", NULL);
    b->m.seed_unraised = metrics_counter("chat_bus_seed_unraised_total",
                                         "Seeds that waited for the nodes holding the room to "
                                         "raise its head and went on from history alone (none did "
                                         "in time: frozen, or too old to answer)", NULL);
    b->m.backfilled = metrics_counter("chat_bus_backfill_total",
                                      "Unstored messages of another node handed to the core to store",
                                      NULL);
    b->m.backfill_lost = metrics_counter("chat_bus_backfill_lost_total",
                                         "Unstored messages the recent buffer no longer had", NULL);
    b->m.backfill_checked = metrics_counter("chat_bus_backfill_checked_total",
                                            "Unstored (room, seq) older than the grace listed by "
                                            "this node's sweep rounds and asked of history", NULL);
    b->m.backfill_dropped = metrics_counter("chat_bus_backfill_dropped_total",
                                            "Malformed unstored entries (a member that is not a "
                                            "seq, an index room that is not a valid room name) "
                                            "the backfill sweep removed", NULL);
    const char *lh = "Backfill sweep rounds a limit cut short (old entries left unlisted; another "
                     "round follows as soon as this one completed)";
    b->m.ids_written_back = metrics_counter("chat_bus_ids_written_back_total",
                                            "Client ids of rows committed after Redis restarted "
                                            "(published under an earlier Redis run) written back "
                                            "to Redis", NULL);
    b->m.ids_writeback_dropped = metrics_counter("chat_bus_ids_writeback_dropped_total",
                                                 "Client ids that could not be written back after "
                                                 "a Redis restart (the waiting list was full, or "
                                                 "Redis refused the write)", NULL);
    b->m.backfill_limit_rooms = metrics_counter("chat_bus_backfill_rounds_limited_total", lh,
                                                "limit=\"rooms\"");
    b->m.backfill_limit_per_room = metrics_counter("chat_bus_backfill_rounds_limited_total", lh,
                                                   "limit=\"per_room\"");
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
    b->id_ttl_s = opts && opts->id_ttl_s ? opts->id_ttl_s : 600;
    b->seed_timeout_ms = opts ? opts->seed_timeout_ms : 0;
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
    bus_core_init(b);
    return b;
}

void bus_free(bus *b)
{
    if (!b || b->freeing) return;
    b->freeing = 1;
    b->ready = 0;
    bus_core_cancel(b); /* seed waiters answered -1 */
    /* the backend answers what it holds (-1) and closes its handles */
    b->be->free(b);
    bus_core_close(b);
    bus_core_release(b);
}

int bus_ready(const bus *b) { return b && !b->freeing && b->ready; }
int bus_is_redis(const bus *b) { return b && b->be == &bus_redis_backend; }

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

/* A publish, plain (u NULL: pcb) or an update (ucb). */
static int publish_req(bus *b, const char *room, const char *user, const char *client_id,
                       const char *tail, size_t tail_len, const bus_update *u,
                       bus_publish_cb pcb, bus_update_cb ucb, void *ud)
{
    if (!bus_ready(b) || !room || !room_name_valid(room, strlen(room)) || (!tail && tail_len))
        return -1;
    /* the id's key part (sender and id): what the backend keys it by */
    char part[BUS_IDKEY_MAX + 1];
    if (client_id && bus_id_part(part, sizeof part, user, client_id) < 0) return -1;
    size_t idl = client_id ? strlen(part) : 0;
    if (tail_len > SIZE_MAX / 2) return -1;
    bus_req *r = bus_req_new(b, BUS_REQ_PUBLISH, room, tail_len + 1 + (client_id ? idl + 1 : 0));
    if (!r) return -1;
    r->pcb = pcb;
    r->ucb = ucb;
    r->ud = ud;
    r->count = -1;
    r->tail = r->inl;
    if (tail_len) memcpy(r->tail, tail, tail_len);
    r->tail[tail_len] = 0;
    r->tail_len = tail_len;
    if (client_id) {
        r->id = r->inl + tail_len + 1;
        memcpy(r->id, part, idl + 1);
    }
    if (u && !(r->upd = bus_upd_copy(u))) {
        bus_req_free(r);
        return -1;
    }
    if (b->be->publish(b, r) != 0) {
        bus_req_free(r);
        return -1;
    }
    return 0;
}

int bus_publish(bus *b, const char *room, const char *user, const char *client_id,
                const char *tail, size_t tail_len, bus_publish_cb cb, void *ud)
{
    return publish_req(b, room, user, client_id, tail, tail_len, NULL, cb, NULL, ud);
}

int bus_publish_update(bus *b, const char *room, const char *user, const char *client_id,
                       const char *tail, size_t tail_len, const bus_update *u, bus_update_cb cb,
                       void *ud)
{
    if (!u || !cb) return -1;
    return publish_req(b, room, user, client_id, tail, tail_len, u, NULL, cb, ud);
}

static int replay_req(bus *b, const char *room, uint64_t since, size_t max, uint64_t upto,
                      bus_replay_cb cb, void *ud)
{
    if (!bus_ready(b) || !room || !room_name_valid(room, strlen(room))) return -1;
    bus_req *r = bus_req_new(b, BUS_REQ_REPLAY, room, 0);
    if (!r) return -1;
    r->rcb = cb;
    r->ud = ud;
    r->since = since;
    r->max = max;
    r->upto = upto;
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
        bus_req_free(r);
        return -1;
    }
    return 0;
}

int bus_replay(bus *b, const char *room, uint64_t since, size_t max, bus_replay_cb cb,
               void *ud)
{
    return replay_req(b, room, since, max, 0, cb, ud);
}

int bus_replay_upto(bus *b, const char *room, uint64_t since, uint64_t upto,
                    bus_replay_cb cb, void *ud)
{
    if (since == UINT64_MAX || upto <= since) return -1;
    return replay_req(b, room, since, (size_t)(upto - since), upto, cb, ud);
}

int bus_known_head(const bus *b, const char *room, uint64_t *head, uint64_t *delivered)
{
    if (!b || b->freeing || !room) return 0;
    const bus_room *rm = hmap_get(&b->rooms, room);
    if (!rm || (!rm->have_last && !rm->floor)) return 0;
    uint64_t h = rm->have_last ? rm->last : 0;
    *head = rm->floor > h ? rm->floor : h;
    *delivered = h;
    return 1;
}

int bus_resume_after(bus *b, const char *room, uint64_t seq)
{
    if (!b || b->freeing || !room) return 0;
    bus_room *rm = hmap_get(&b->rooms, room);
    if (!rm || rm->refs == 0) return 0;
    if (rm->have_last) return rm->last <= seq;
    if (rm->synced) return 0;   /* adopt: the first message sets last */
    rm->have_last = 1;
    rm->last = rm->target = seq;
    return 1;
}

void bus_forget_id(bus *b, const char *room, const char *user, const char *client_id,
                   uint64_t seq)
{
    char part[BUS_IDKEY_MAX + 1];
    if (!b || b->freeing || !room || !room_name_valid(room, strlen(room)) ||
        bus_id_part(part, sizeof part, user, client_id) < 0)
        return;
    b->be->forget_id(b, room, part, seq);
}

void bus_undo_update(bus *b, const char *room, const bus_update *in)
{
    if (!b || b->freeing || !b->be->undo_update || !room || !in || in->op == BUS_UPD_EDIT ||
        !room_name_valid(room, strlen(room)))
        return;
    struct bus_upd *u = bus_upd_copy(in);
    if (!u) return;
    b->be->undo_update(b, room, u);
    bus_upd_free(u);
}

uint64_t bus_run_mark(const bus *b, const char *room)
{
    (void)room; /* one mark for every room: a run change anywhere counts (false alarms only
                 * cost a write) */
    return b && !b->freeing && b->be->run_mark ? b->be->run_mark(b) : 0;
}

void bus_id_committed(bus *b, const char *room, const char *user, const char *client_id,
                      uint64_t seq, uint64_t mark, uint64_t published_ns, int update)
{
    char part[BUS_IDKEY_MAX + 1];
    if (!b || b->freeing || !b->be->id_committed || !mark || !seq || !room ||
        !room_name_valid(room, strlen(room)) || bus_id_part(part, sizeof part, user, client_id) < 0)
        return;
    b->be->id_committed(b, room, part, seq, mark, published_ns, update);
}

int bus_control(bus *b, const char *data, size_t len, bus_control_cb cb, void *ud)
{
    if (!bus_ready(b) || !b->be->control || (!data && len)) return -1;
    return b->be->control(b, data ? data : "", len, cb, ud);
}

void bus_mark_stored(bus *b, const char *room, uint64_t seq)
{
    if (!b || b->freeing || !b->be->mark || !room || !room_name_valid(room, strlen(room))) return;
    b->be->mark(b, room, seq);
}

int bus_health(const bus *b, char *why, size_t n)
{
    if (!b || b->freeing) {
        snprintf(why, n, "bus: shutting down");
        return 0;
    }
    if (b->be->health) return b->be->health(b, why, n);
    snprintf(why, n, "ok");
    return 1;
}

int bus_emit(bus *b, const char *room, const char *kind, const char *data, size_t len)
{
    if (!bus_ready(b) || !room || !kind || !room_name_valid(room, strlen(room))) return -1;
    if (strcmp(kind, "typing") != 0 && strcmp(kind, "presence") != 0) return -1;
    if (!data && len) return -1;
    return b->be->emit(b, room, kind, data ? data : "", len);
}
