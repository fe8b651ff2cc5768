/* bus_redis_head: the head script of the Redis backend (BUS_HEAD_LUA):
 * reading, and seeding or creating, a room's head and epoch on the room's
 * shard, for the subscription sync (bus_redis_sub.c) and replay
 * (bus_redis.c); the node's floor in a room; the per-room request object
 * both use. Owns nothing. */
#define _GNU_SOURCE
#include "bus_redis_int.h"
#include "redis_slot.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

room_op *bus_rop_new(busr *R, const bus_room *room)
{
    room_op *op = calloc(1, sizeof *op);
    if (!op) return NULL;
    op->R = R;
    snprintf(op->room, sizeof op->room, "%s", room->name);
    op->sub_id = room->sub_id;
    op->t0 = mono_ns();
    return op;
}

int bus_rhead_parse(const redisReply *rp, head_res *h)
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
        rp->element[2]->len > BUS_EPOCH_MAX || memchr(rp->element[2]->str, 0, rp->element[2]->len))
        return -1;   /* (an epoch is text: a NUL would cut it short) */
    memcpy(h->epoch, rp->element[2]->str, rp->element[2]->len);
    h->epoch[rp->element[2]->len] = 0;
    return 0;
}

/* EVALSHA BUS_HEAD_LUA on the room's shard; 0 or -1 (cb not called) */
int bus_rhead_send(busr *R, redis_reply_fn cb, void *ud, const char *room,
                            uint64_t floor, int mode, uint64_t seed, const char *epoch)
{
    char kseq[CHAT_ROOM_MAX + 32], kep[CHAT_ROOM_MAX + 32], krun[CHAT_ROOM_MAX + 32], fl[24], sd[24];
    char md[2 + REDIS_RUN_ID_LEN];
    bus_seed_mode_arg(md, mode);
    key(kseq, sizeof kseq, room, "seq");
    key(kep, sizeof kep, room, "epoch");
    key(krun, sizeof krun, room, "run");
    snprintf(fl, sizeof fl, "%" PRIu64, floor);
    snprintf(sd, sizeof sd, "%" PRIu64, seed);
    const char *a[] = {"3", kseq, kep, krun, fl, md, sd, epoch};
    redis_call how = {.slot = redis_room_slot(room), .node = 0, .script = BUS_S_HEAD,
                      .run_arg = mode == BUS_SEED_NONE ? 0 : 5};
    return redis_client_call(R->rc, &how, 8, a, NULL, cb, ud);
}

/* The seed-mode argument of the publish and head scripts: the mode, and
 * with a seed provider a placeholder that redis_client overwrites at every
 * send with the run_id of the Redis process the call goes to (redis_call
 * .run_arg; the scripts compare it with the room's run key, bus_script.c). */
void bus_seed_mode_arg(char out[2 + REDIS_RUN_ID_LEN], int mode)
{
    out[0] = (char)mode;
    size_t n = mode == BUS_SEED_NONE ? 0 : REDIS_RUN_ID_LEN;
    memset(out + 1, '-', n);
    out[1 + n] = 0;
}

/* The floor of a node in a room: never below a seq this node delivered or
 * was acked (0 when it does not hold the room). */
uint64_t bus_rhead_floor(bus *b, const char *name)
{
    bus_room *room = bus_room_get(b, name);
    uint64_t floor = room && room->have_last ? room->last : 0;
    if (room && room->floor > floor) floor = room->floor;
    return floor;
}

