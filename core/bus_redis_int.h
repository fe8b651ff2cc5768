/* bus_redis_int: what the three files of the bus's Redis backend share
 * (bus_redis.c, bus_redis_sub.c, bus_redis_head.c; never included
 * elsewhere). Owns nothing; declares the backend state, the per-room
 * request object, and the functions one file offers the others, whose
 * calls run one way:
 *   bus_redis.c (requests, lifetime) -> bus_redis_sub.c (subscriptions of
 *   the rooms and of the control channel, sync, readiness, retries) ->
 *   bus_redis_head.c (the head script); bus_redis_ids.c (ids written back
 *   after a Redis restart) is called by the first two and calls neither. */
#ifndef CHATD_BUS_REDIS_INT_H
#define CHATD_BUS_REDIS_INT_H
#include "bus_int.h"
#include "redis_client.h"
#include <stdio.h>

typedef struct busr {
    bus *b;
    redis_client *rc;
    int cluster;
    int recovering;          /* one Redis: up, waiting for rooms to catch up */
    int ever_up;
    uint64_t restores;       /* restore calls sent (tests: bus_restore_calls) */
    int retries;             /* rooms (and the control channel) with a retry due */
    uv_timer_t retry_t;      /* room retries (bus_redis_sub.c) */
    /* the control channel's subscription (bus_redis_sub.c) */
    int ctl_state;           /* BUS_SUB_* */
    uint64_t ctl_node, ctl_retry_at;
    uint32_t ctl_retry_ms;
    /* ids committed after a Redis restart, waiting for their room's shard
     * (bus_redis_ids.c) */
    struct idback *idb_head;
    size_t idb_n;
    int idb_logged;          /* the list was full once (logged once) */
    uint64_t idb_writes;     /* write-backs sent (tests: bus_idback_writes) */
    /* the channels' namespace: "chat:", or "chat:db<N>:" for database N > 0
     * (keys are per database, pub/sub channels are not: two deployments on
     * two databases of one Redis would hear each other's rooms) */
    char chan_ns[24];
    char ctl[32];            /* the control channel: chan_ns + "ctl" */
    char tag[BUS_EPOCH_MAX + 1]; /* this node's in a seed ask (random, BUS_TAG_LEN) */
} busr;

/* one request about a room (head read, subscribe, fetch) */
typedef struct room_op {
    busr *R;
    char room[CHAT_ROOM_MAX + 1];
    uint64_t sub_id, from, to, t0;
    int seeded;              /* head read with a seed (resync) */
    int raise;               /* a raise for another node's seed ask (send_head):
                              * the room is synced already, nothing to sync */
} room_op;

static inline double since_s(uint64_t t0) { return (double)(mono_ns() - t0) / 1e9; }

static inline void key(char *out, size_t n, const char *room, const char *suffix)
{
    snprintf(out, n, "chat:{%s}:%s", room, suffix);
}

/* a room's channel: <chan_ns>{room}:<kind> (kind msg, typing, presence) */
#define BUS_CHAN_MAX (24 + CHAT_ROOM_MAX + 16)
static inline void chan(const busr *R, char *out, size_t n, const char *room, const char *kind)
{
    snprintf(out, n, "%s{%s}:%s", R->chan_ns, room, kind);
}

/* chat:{room}:sid:<part>: a client id's idempotency key (publish, forget,
 * restore, write-back), part its sender and id as bus_id_part builds them
 * (bus_types.h: "<len(user)>:<user>:<id>"; the bus hands the backends
 * only parts); BUS_ID_KEY_LEN bytes always hold it */
#define BUS_ID_KEY_LEN (CHAT_ROOM_MAX + 16 + BUS_IDKEY_MAX + 1)
static inline void id_key(char *out, size_t n, const char *room, const char *part)
{
    snprintf(out, n, "chat:{%s}:sid:%s", room, part);
}

/* bus_redis_head.c */
typedef struct head_res {
    int status;              /* 0 ok, 2 needs a seed, 3 no head (peek) */
    uint64_t head, before;
    char epoch[BUS_EPOCH_MAX + 1];
} head_res;

room_op *bus_rop_new(busr *R, const bus_room *room);
int bus_rhead_parse(const redisReply *rp, head_res *h);
/* EVALSHA BUS_HEAD_LUA on the room's shard; 0 or -1 (cb not called) */
int bus_rhead_send(busr *R, redis_reply_fn cb, void *ud, const char *room, uint64_t floor,
                   int mode, uint64_t seed, const char *epoch);
/* the node's floor in a room (0 when it does not hold the room) */
uint64_t bus_rhead_floor(bus *b, const char *name);
void bus_seed_mode_arg(char out[2 + REDIS_RUN_ID_LEN], int mode);

/* bus_redis_ids.c: the write-back of client ids committed after a Redis
 * restart (bus.h bus_id_committed) */
uint64_t bus_ridb_mark(const bus *b);                      /* backend.run_mark */
void bus_ridb_committed(bus *b, const char *room, const char *id, uint64_t seq, uint64_t mark,
                        uint64_t published_ns, int update); /* backend.id_committed */
/* a node came up or the map changed: write back (or drop) what waited */
void bus_ridb_flush(busr *R);
/* after redis_client_free (in-flight writes answered): frees the list */
void bus_ridb_free(busr *R);

/* bus_redis_sub.c */
extern const redis_client_handlers bus_rsub_handlers;   /* ud = busr */
void bus_rsub_reconcile(bus *b, bus_room *room);         /* backend.reconcile */
void bus_rsub_progress(bus *b);                          /* backend.progress */
int bus_rsub_health(const bus *b, char *why, size_t n);  /* backend.health */
void bus_rsub_update_ready(busr *R);
/* sync the room again after a growing delay (and start the retry timer) */
void bus_rsub_retry_later(busr *R, bus_room *room);
void bus_rsub_arm(busr *R);

/* asking a room's holders before a seed (backend.seed_ask, .seed_probe) */
int bus_rsub_seed_ask(bus *b, bus_seed *sd);
int bus_rsub_seed_probe(bus *b, bus_seed *sd);

/* the control channel: PUBLISH / SPUBLISH (backend.control) */
int bus_rctl_publish(bus *b, const char *data, size_t len, bus_control_cb cb, void *ud);

#endif
