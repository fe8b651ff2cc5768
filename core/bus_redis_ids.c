/* bus_redis_ids: exactly-once across a Redis loss for rows committed after
 * it (docs/redis.md "A commit after the loss"). A seed writes back the
 * client ids history held when its query ran; a row published before the
 * loss and committed after that query is not among them, and Redis lost
 * its id key: its resend would get a new seq. So when such a row commits
 * (bus_id_committed), its id key is written back here, but only when the
 * Redis run that answered its publish (the mark: redis_client_run_gen) is
 * not the run serving now: the normal path costs no Redis call.
 * Owns: the list of ids committed while their room's shard was down (at
 * most BUS_IDBACK_MAX; an id waits until the shard is up again, then is
 * written back or dropped: same run, or its window passed) and the
 * in-flight writes (each answered, NULL included, before the bus is gone:
 * redis_client_free answers them inside be_free). */
#define _GNU_SOURCE
#include "bus_redis_int.h"
#include "log.h"
#include "redis_slot.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "bus"

typedef struct idback {
    struct idback *next;
    busr *R;
    uint64_t seq, mark;
    uint64_t until_ns;       /* mono_ns: the end of the id's window */
    char room[CHAT_ROOM_MAX + 1];
    char id[];
} idback;

uint64_t bus_ridb_mark(const bus *b)
{
    const busr *R = b->impl;
    return redis_client_run_gen(R->rc);
}

uint64_t bus_idback_writes(const bus *b)
{
    return b && b->be == &bus_redis_backend && b->impl ? ((const busr *)b->impl)->idb_writes : 0;
}

size_t bus_idback_waiting(const bus *b)
{
    return b && b->be == &bus_redis_backend && b->impl ? ((const busr *)b->impl)->idb_n : 0;
}

static void wait_push(busr *R, idback *e)
{
    if (R->idb_n >= BUS_IDBACK_MAX) {
        metric_inc(R->b->m.ids_writeback_dropped);
        if (!R->idb_logged)
            LOGE(MOD, "room %s: more than %d client ids committed while Redis was down wait to "
                 "be written back: id %s dropped (a resend of it gets a new seq; logged once, "
                 "counted in chat_bus_ids_writeback_dropped_total)", e->room, BUS_IDBACK_MAX, e->id);
        R->idb_logged = 1;
        free(e);
        return;
    }
    e->next = R->idb_head;
    R->idb_head = e;
    R->idb_n++;
}

static void write_cb(void *ud, const redisReply *rp)
{
    idback *e = ud;
    busr *R = e->R;
    if (R->b->freeing) {
        free(e);
    } else if (!rp) {
        /* no answer (the shard went down): the run of the mark is still not
         * the one that will serve the room, so it is written once up */
        wait_push(R, e);
    } else if (rp->type == REDIS_REPLY_ERROR) {
        metric_inc(R->b->m.ids_writeback_dropped);
        LOGW(MOD, "room %s: writing back client id %s (seq %" PRIu64 ") after a Redis restart: "
             "%.*s (a resend of it gets a new seq)", e->room, e->id, e->seq, (int)rp->len,
             rp->str ? rp->str : "");
        free(e);
    } else {
        /* OK, or nil: NX kept a key a publish or a seed wrote meanwhile */
        metric_inc(R->b->m.ids_written_back);
        free(e);
    }
}

/* SET chat:{room}:sid:<part> <seq> EX <rest of the window> NX on the room's
 * shard: the value and key of the publish script (bus_script.c). 0 sent
 * (e is the call's), 1 dropped (e freed: its window passed), -1 not sent
 * (the shard is not up: the caller keeps e). */
static int write_back(busr *R, idback *e)
{
    uint64_t now = mono_ns();
    if (now >= e->until_ns) {
        free(e);
        return 1;
    }
    uint64_t left = (e->until_ns - now) / 1000000000ull;
    char k[BUS_ID_KEY_LEN], v[24], ttl[24];
    id_key(k, sizeof k, e->room, e->id);
    snprintf(v, sizeof v, "%" PRIu64, e->seq);
    snprintf(ttl, sizeof ttl, "%" PRIu64, left ? left : 1);
    const char *argv[] = {"SET", k, v, "EX", ttl, "NX"};
    redis_call how = {.slot = redis_room_slot(e->room), .node = 0, .script = -1};
    if (redis_client_call(R->rc, &how, 6, argv, NULL, write_cb, e) != 0) return -1;
    R->idb_writes++;
    return 0;
}

void bus_ridb_committed(bus *b, const char *room, const char *id, uint64_t seq, uint64_t mark,
                        uint64_t published_ns, int update)
{
    busr *R = b->impl;
    int ready = redis_client_slot_ready(R->rc, redis_room_slot(room));
    /* the normal path: the run that answered the publish serves the room */
    if (ready && redis_client_run_gen(R->rc) == mark) return;
    uint64_t ttl_s = update ? bus_state_ttl_s(b) : b->id_ttl_s;
    uint64_t until = published_ns + ttl_s * 1000000000ull;
    if (mono_ns() >= until) return;
    size_t il = strlen(id);
    idback *e = malloc(sizeof *e + il + 1);
    if (!e) return;
    e->next = NULL;
    e->R = R;
    e->seq = seq;
    e->mark = mark;
    e->until_ns = until;
    snprintf(e->room, sizeof e->room, "%s", room);
    memcpy(e->id, id, il + 1);
    /* not up: the run it comes back with decides (bus_ridb_flush) */
    if (!ready || write_back(R, e) < 0) wait_push(R, e);
}

void bus_ridb_flush(busr *R)
{
    idback *e = R->idb_head, *keep = NULL;
    size_t nkeep = 0;
    R->idb_head = NULL;
    R->idb_n = 0;
    uint64_t gen = redis_client_run_gen(R->rc), now = mono_ns();
    while (e) {
        idback *next = e->next;
        if (now >= e->until_ns || (redis_client_slot_ready(R->rc, redis_room_slot(e->room)) &&
                                   gen == e->mark)) {
            free(e); /* its window passed, or the same run is back: nothing was lost */
        } else if (!redis_client_slot_ready(R->rc, redis_room_slot(e->room)) ||
                   write_back(R, e) < 0) {
            e->next = keep;
            keep = e;
            nkeep++;
        }
        e = next;
    }
    /* (write_cb never runs inside redis_client_call: nothing was pushed meanwhile) */
    R->idb_head = keep;
    R->idb_n = nkeep;
}

void bus_ridb_free(busr *R)
{
    idback *e = R->idb_head;
    while (e) {
        idback *next = e->next;
        free(e);
        e = next;
    }
    R->idb_head = NULL;
    R->idb_n = 0;
}
