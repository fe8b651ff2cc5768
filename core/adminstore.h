/* adminstore: the server API's state that every node shares through Redis
 * (docs/redis.md "Control channel and the server API's keys"):
 *  - the bans, one hash chat:bans, field "<user>\n<room>" (room empty: every
 *    room), value "<until_ms>\n<reason>"; the key expires with its last ban
 *    (PEXPIREAT), expired fields are dropped when the bans are read;
 *  - the cluster-wide token buckets, one small hash per bucket,
 *    chat:{<scope>:<key>}:rl (the bucket's own slot on a Cluster), refilled
 *    from Redis' clock (TIME) so the nodes' clocks do not matter, expiring
 *    once full again;
 *  - the connections of each user on every node (CHAT_MAX_CONNS_PER_USER
 *    across nodes), one hash per user, chat:{conns:<user>}:n (the user's
 *    own slot), field node id -> "<count> <until_ms>": each node writes its
 *    own count, valid for a TTL it renews (a dead node's count expires);
 *    Redis' clock again.
 * On a connection-layer client of its own (redis_client.h; no
 * subscription connection), scripts loaded on every node.
 * Owns: the client and the requests in flight (each callback called
 * exactly once; status -1 when the store is freed first, inside
 * adminstore_free). Layer: beside bus and presence. */
#ifndef CHATD_ADMINSTORE_H
#define CHATD_ADMINSTORE_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "bans.h"

typedef struct adminstore adminstore;

/* on_up: the client's connection (a node of it) came up: a good time to
 * read the bans again (may be NULL). */
adminstore *adminstore_new(uv_loop_t *loop, const char *url, void (*on_up)(void *ud), void *ud,
                           char *err, size_t errlen);
void adminstore_free(adminstore *a);
int adminstore_ready(const adminstore *a);

/* status 0 or 1 done, -1 failed (Redis unreachable, freed); a lift: 1
 * when it lifted a ban in force, 0 when there was none */
typedef void (*adminstore_done_cb)(void *ud, int status);
/* Stores the user's ban of room ("" = every room) until until_ms. 0 when
 * sent (cb later), -1 when it cannot be sent now (cb not called). */
int adminstore_ban_put(adminstore *a, const char *user, const char *room, uint64_t until_ms,
                       const char *reason, adminstore_done_cb cb, void *ud);
/* Lifts the user's ban of room; room NULL: every ban of the user (cb's
 * status 1: a ban in force was lifted). */
int adminstore_ban_lift(adminstore *a, const char *user, const char *room, adminstore_done_cb cb,
                        void *ud);

/* Every ban in force (entries valid during the callback only). */
typedef void (*adminstore_bans_cb)(void *ud, int status, const ban_entry *b, size_t n);
int adminstore_bans_load(adminstore *a, adminstore_bans_cb cb, void *ud);

/* Takes a token of bucket (scope, key): allowed 1 / 0 (retry_ms: until a
 * token is back), or -1 (failed: the caller decides). */
typedef void (*adminstore_take_cb)(void *ud, int allowed, uint64_t retry_ms);
int adminstore_take(adminstore *a, const char *scope, const char *key, double rate, double burst,
                    adminstore_take_cb cb, void *ud);

/* Sets this node's count of user's connections to count (0: none) for
 * ttl_ms. With max > 0 it is also an admission: the counts of every node
 * not expired are summed; over max, this node's count is set back to
 * count - 1 (the newcomer is refused). cb (may be NULL): allowed 1 / 0 and
 * the sum (with max 0: 1 and count), or -1, -1 (failed). 0 when sent, -1
 * when it cannot be sent now (cb not called). */
typedef void (*adminstore_conns_cb)(void *ud, int allowed, int64_t total);
int adminstore_conns(adminstore *a, const char *user, const char *node, int64_t count, uint64_t ttl_ms,
                     int64_t max, adminstore_conns_cb cb, void *ud);

/* The refresh pass's renewals: sets this node's count of each of n users
 * (counts[i] for users[i]; 0: removed) for ttl_ms, as adminstore_conns with
 * max 0 and no answer, in one script call per ADMINSTORE_RENEW_CHUNK users
 * (a Cluster: per slot, since a script's keys share one). Returns how many
 * calls (or users, out of memory) could not be sent; the next pass writes
 * them again. An error reply is logged (at most once per 10 s). */
#define ADMINSTORE_RENEW_CHUNK 128
int adminstore_conns_renew(adminstore *a, const char *node, uint64_t ttl_ms, size_t n,
                           const char *const *users, const int64_t *counts);

#endif
