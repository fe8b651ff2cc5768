/* redis_client: the one Redis connection layer of chatd, used by the bus
 * and by presence. One object per user of CHAT_REDIS_URL (redis_url.h):
 *  - standalone (redis://, rediss://): one node (redis_node.c) that owns
 *    every slot;
 *  - cluster (redis+cluster://seed,...): the slot map from CLUSTER SHARDS
 *    (asked of any node that is up, or of a seed), one node per master
 *    (command connection, and a subscription connection when wanted),
 *    routing of a command by the slot of its keys, MOVED (the slot's owner
 *    is updated at once, the map refreshed, the command resent), ASK
 *    (ASKING + the command on the named node, once), TRYAGAIN /
 *    CLUSTERDOWN / LOADING / MASTERDOWN / READONLY (resent with a growing
 *    delay within REDIS_RETRY_WINDOW_MS), at most REDIS_MAX_REDIRECTS
 *    redirects per command, a periodic map refresh (faster while a master
 *    is down: a replica may be promoted). A node that is down fails only the
 *    commands routed to it.
 * Scripts given at creation are loaded on every node at every (re)connect
 * and called by SHA (redis_call.script); NOSCRIPT loads the script again on
 * that connection and resends the call once.
 * Run changes: redis_client_run_gen counts the server processes met (a
 * restart or failover is a new run_id), for users that must know whether
 * the run that answered a call still serves.
 * Readiness: redis_client_ready (something works), redis_client_slot_ready
 * (a slot's owner is up), redis_client_health (everything works, or a
 * sentence that names the node, shard and slots that do not).
 * Owns: the nodes, the slot map, the requests being redirected or retried,
 * the discovery connection, the TLS context and two timers.
 * Callbacks run from the loop, never inside the call that started them,
 * except inside redis_client_free, where every pending callback gets NULL. */
#ifndef CHATD_REDIS_CLIENT_H
#define CHATD_REDIS_CLIENT_H
#include "redis_reply.h"
#include "redis_url.h"
#include <stdint.h>
#include <uv.h>

#define REDIS_MAX_REDIRECTS 5
#define REDIS_RETRY_WINDOW_MS 3000
#define REDIS_REFRESH_MS 10000       /* map refresh while healthy */
#define REDIS_REFRESH_FAST_MS 500    /* while a master is down or slots have none */

typedef struct redis_client redis_client;

/* r NULL: no answer (the node went down, the retry window ran out, the
 * client was freed) */
typedef void (*redis_reply_fn)(void *ud, const redisReply *r);
/* node: where the (un)subscription took effect (0 when r is NULL) */
typedef void (*redis_sub_fn)(void *ud, uint64_t node, const redisReply *r);

typedef struct redis_client_handlers {
    /* a node's session came up / went down (every command and subscription
     * on it failed) */
    void (*on_node)(void *ud, uint64_t node, int up);
    /* the slot map changed (cluster): some slots have another owner */
    void (*on_map)(void *ud);
    /* an unsolicited push on a node's subscription connection: message,
     * smessage, or an (s)unsubscribe the server decided (slot moved) */
    void (*on_push)(void *ud, uint64_t node, const redis_push *p);
} redis_client_handlers;

typedef struct redis_client_opts {
    const char *url;
    const char *who;                 /* "bus", "presence": log module */
    const char *const *scripts;      /* loaded on every node (may be NULL) */
    int nscripts;
    int want_sub;                    /* a subscription connection per node */
    int want_run_id;                 /* read each server's run_id (INFO server) before it is
                                      * up: required by calls with redis_call.run_arg */
    uint32_t linger_ms;              /* commands wait up to this long to share a write
                                      * (CHAT_REDIS_LINGER_MS; 0: one write per loop turn) */
} redis_client_opts;

redis_client *redis_client_new(uv_loop_t *loop, const redis_client_opts *o,
                               const redis_client_handlers *h, void *ud, char *err, size_t errlen);
void redis_client_free(redis_client *c);

int redis_client_is_cluster(const redis_client *c);
/* the database of the URL (standalone: /db, 0 by default; a Cluster: 0) */
int redis_client_db(const redis_client *c);
/* standalone: the node is up; cluster: the map is known and a node is up */
int redis_client_ready(const redis_client *c);
int redis_client_slot_ready(const redis_client *c, int slot);
/* 1 when every node of the map is up; else 0 and a sentence in why */
int redis_client_health(const redis_client *c, char *why, size_t n);
/* The run generation (want_run_id only; else always 0): raised each time a
 * node comes up with a run_id it did not have before (its first one
 * included: a failover's new master too). Unchanged between two moments
 * means every server answering then is the process that answered before
 * (a value that changed may be a false alarm: another shard, a new node).
 * Read it inside a reply callback to name the run that answered. */
uint64_t redis_client_run_gen(const redis_client *c);
/* the node that owns slot (0: none known) */
uint64_t redis_client_slot_node(const redis_client *c, int slot);

typedef struct redis_call {
    int slot;          /* route to the slot's owner; -1: any node that is up */
    uint64_t node;     /* nonzero: this node only, errors returned as they are */
    int script;        /* >= 0: EVALSHA of that script; argv = numkeys, keys, args */
    /* > 0: argv[run_arg] ends with REDIS_RUN_ID_LEN placeholder bytes that
     * every send (first, redirect, retry) overwrites with the run_id of the
     * server it goes to (redis_node_run_id): a script can tell whether data
     * was written by the process running it (argv[0] is never one). */
    int run_arg;
} redis_call;

/* Queues a command (cb may be NULL). 0, or -1 when its node is not up
 * (cb not called). */
int redis_client_call(redis_client *c, const redis_call *how, int argc, const char **argv,
                      const size_t *lens, redis_reply_fn cb, void *ud);

/* SSUBSCRIBE (cluster) or SUBSCRIBE (standalone) of n channels of one slot
 * at the slot's owner, following MOVED. cb once with the node and the last
 * confirmation, an error reply, or NULL. -1 when the owner is not up. */
int redis_client_subscribe(redis_client *c, int slot, int n, const char *const *ch,
                           const size_t *lens, redis_sub_fn cb, void *ud);
/* SUNSUBSCRIBE / UNSUBSCRIBE on the node where they were subscribed. -1
 * when that node is not up (its subscriptions are gone with it). */
int redis_client_unsubscribe(redis_client *c, uint64_t node, int n, const char *const *ch,
                             const size_t *lens, redis_sub_fn cb, void *ud);

/* Calls fn for every node of the map that is up, with the slot ranges it
 * owns (standalone: one node, 0-16383). */
void redis_client_masters(const redis_client *c,
                          void (*fn)(void *ud, uint64_t node, const uint16_t (*ranges)[2],
                                     int nranges),
                          void *ud);
/* Asks for a map refresh soon (cluster; no-op in standalone). */
void redis_client_refresh(redis_client *c);

#endif
