/* redis_node: one Redis server of a redis_client (the standalone server, or
 * one master of a Cluster) and its session: a command connection, a
 * subscription connection when the client wants one, the scripts loaded on
 * the command connection (SCRIPT LOAD of each, SHA checked), and the
 * reconnection with the core's backoff (backoff.h): after a failure the
 * next attempt waits a jittered delay that doubles up to the cap, and goes
 * back to the minimum only when the session that failed had stayed up for
 * REDIS_NODE_STABLE_MS (a server that accepts the handshake and then drops
 * the connection is not retried in a tight loop).
 * The node is up when every connection finished its handshake, every
 * script is loaded and, when asked (want_run_id), the server's run_id is
 * known (INFO server on the command connection: it names the Redis
 * process, new at every restart or failover; redis_client writes it into
 * calls that ask for it). When one connection fails, the node drops both (their
 * pending callbacks get NULL), calls on_down once with the reason (kept for
 * readiness), and retries.
 * Owns: its connections, its retry timer, its last failure reason. */
#ifndef CHATD_REDIS_NODE_H
#define CHATD_REDIS_NODE_H
#include "redis_conn.h"
#include <stdint.h>

#define REDIS_NODE_STABLE_MS 5000

typedef struct redis_node redis_node;

typedef struct redis_node_handlers {
    void (*on_up)(redis_node *n, void *ud);
    /* the session failed (or an attempt failed: was_up 0) */
    void (*on_down)(redis_node *n, void *ud, int was_up, const char *why);
    void (*on_push)(redis_node *n, void *ud, const redis_push *p);
} redis_node_handlers;

typedef struct redis_node_opts {
    redis_addr addr;
    const char *user, *pass;
    int db;                       /* SELECT (standalone only) */
    redis_tls *tls;
    int want_sub;                 /* keep a subscription connection */
    int want_run_id;              /* INFO server on connect: up only with the run_id */
    const char *const *scripts;   /* loaded on every (re)connect */
    const char (*shas)[41];       /* their SHA1, hex */
    int nscripts;
    uint32_t backoff_min_ms, backoff_max_ms;
    uint32_t linger_ms;           /* the command connection's (redis_conn_opts) */
} redis_node_opts;

redis_node *redis_node_new(uv_loop_t *loop, const redis_node_opts *o, const redis_node_handlers *h,
                           void *ud);
/* Closes the connections (pending callbacks get NULL inside this call; no
 * on_down) and the timer; memory is released when the timer is closed. */
void redis_node_free(redis_node *n);

int redis_node_up(const redis_node *n);
uint64_t redis_node_id(const redis_node *n);   /* unique in the process, never reused */
const redis_addr *redis_node_addr(const redis_node *n);
/* why the node is not up ("connecting" before the first failure) */
const char *redis_node_reason(const redis_node *n);
redis_conn *redis_node_cmd(redis_node *n);     /* NULL unless up */
/* the run_id (REDIS_RUN_ID_LEN hex, redis_reply.h) of the server process
 * the command connection reaches; "" unless up and opts.want_run_id */
const char *redis_node_run_id(const redis_node *n);
redis_conn *redis_node_sub(redis_node *n);     /* NULL unless up or not wanted */

#endif
