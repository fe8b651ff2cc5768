/* redis_reply: pure interpreters of Redis replies (no I/O, no state), so
 * that the connection layer, the bus, presence and the fuzz targets read a
 * reply one way:
 *  - errors: which kind (MOVED/ASK with slot and address, TRYAGAIN,
 *    CLUSTERDOWN, NOSCRIPT, LOADING, ...);
 *  - pushed messages of a subscription connection (message, smessage,
 *    (s)subscribe, (s)unsubscribe, pong);
 *  - the slot map of CLUSTER SHARDS (Redis 7);
 *  - integers given as integer, bulk string or nil;
 *  - INFO memory: whether the server evicts keys.
 * Every function accepts any reply tree (wrong types, missing elements,
 * NULL strings) and answers "not that" rather than crashing.
 * Owns: the arrays of a redis_shards it filled (redis_shards_free). */
#ifndef CHATD_REDIS_REPLY_H
#define CHATD_REDIS_REPLY_H
#include "redis_url.h"
#include <hiredis/hiredis.h>

/* a server's run_id (INFO server): 40 hex digits, new at every process start */
#define REDIS_RUN_ID_LEN 40
#include <stddef.h>
#include <stdint.h>

typedef enum {
    REDIS_E_NONE = 0,     /* not an error reply */
    REDIS_E_MOVED,        /* the slot lives elsewhere for good: refresh the map */
    REDIS_E_ASK,          /* the key is migrating: ASKING + the command, once */
    REDIS_E_TRYAGAIN,     /* multi-key op during a migration: retry later */
    REDIS_E_CLUSTERDOWN,  /* the cluster cannot serve the slot now */
    REDIS_E_NOSCRIPT,     /* script cache empty (restart, failover, SCRIPT FLUSH) */
    REDIS_E_LOADING,      /* the server loads its dataset */
    REDIS_E_MASTERDOWN,   /* replica without a master */
    REDIS_E_READONLY,     /* a replica (failover in progress) */
    REDIS_E_OTHER
} redis_err_kind;

typedef struct redis_redirect {
    int slot;
    redis_addr addr;      /* host "?" (unknown endpoint): the answering node's host */
} redis_redirect;

/* Kind of r (REDIS_E_NONE when r is NULL or not an error); for MOVED/ASK
 * fills rd when rd is not NULL (REDIS_E_OTHER if the redirect is garbled). */
redis_err_kind redis_reply_error(const redisReply *r, redis_redirect *rd);
const char *redis_err_name(redis_err_kind k);

typedef enum {
    REDIS_PUSH_NONE = 0,
    REDIS_PUSH_MESSAGE, REDIS_PUSH_SMESSAGE,
    REDIS_PUSH_SUBSCRIBE, REDIS_PUSH_SSUBSCRIBE,
    REDIS_PUSH_UNSUBSCRIBE, REDIS_PUSH_SUNSUBSCRIBE,
    REDIS_PUSH_PONG       /* the answer to PING on a subscribed connection */
} redis_push_kind;

typedef struct redis_push {
    redis_push_kind kind;
    const char *channel; size_t channel_len;
    const char *data; size_t data_len;   /* message payload */
    long long count;                      /* (un)subscribe: channels left */
} redis_push;

/* Classifies r as a message of a subscription connection (RESP2 arrays
 * ["message", ch, data], ["smessage", ch, data], ["subscribe", ch, n], ...,
 * ["pong", x]). Returns the kind (REDIS_PUSH_NONE for anything else). The
 * pointers point into r. */
redis_push_kind redis_reply_push(const redisReply *r, redis_push *p);
/* 1 for subscribe/ssubscribe/unsubscribe/sunsubscribe */
int redis_push_is_subscription(redis_push_kind k);

/* An unsigned integer: integer reply, decimal bulk/status string, or nil
 * (0). 0 on success, -1 otherwise. */
int redis_reply_u64(const redisReply *r, uint64_t *v);

/* An INFO memory reply of a Redis that evicts keys: "maxmemory:" a
 * decimal above 0 and a "maxmemory_policy:" other than noeviction, a word
 * of a-z and '-' (lines "\nname:value\r\n"). 1 with *maxmemory and the
 * policy (pointing into r, not NUL-terminated) set; 0 for anything else,
 * garbage included (fuzz_resp, test_parse). */
int redis_reply_info_evicts(const redisReply *r, uint64_t *maxmemory, const char **policy, size_t *policy_len);

/* ---- the slot map (CLUSTER SHARDS) ---- */
typedef struct redis_shard_info {
    redis_addr master;
    int master_online;     /* health "online" */
    int nranges;
    uint16_t (*ranges)[2]; /* [lo, hi] inclusive */
} redis_shard_info;

typedef struct redis_shards {
    int n;
    redis_shard_info *s;
} redis_shards;

/* Reads a CLUSTER SHARDS reply (tls: take the master's tls-port when the
 * shard lists one). Shards without a master or without slots are left out.
 * 0 and out filled (sorted by first slot; free with redis_shards_free), or
 * -1 with a reason in err. */
int redis_reply_shards(const redisReply *r, int tls, redis_shards *out, char *err, size_t errlen);
void redis_shards_free(redis_shards *s);

#endif
