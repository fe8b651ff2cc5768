/* presence: who is in which room, exact across nodes.
 * A user is present in a room while at least one of their connections (on
 * any node) has heartbeated within ttl_ms. Transitions (user becomes present
 * / stops being present) are decided atomically in the store so exactly one
 * node announces each: the node whose add made the user's first live entry
 * announces "join"; the node whose removal or expiry sweep removed the last
 * entry announces "leave".
 * Redis mode: per room a sorted set chat:{room}:presence:conns of
 * "<node>|<conn_id>|<user>" scored by expiry ms plus a hash
 * chat:{room}:presence:users user -> live entry count, with names in
 * chat:{room}:presence:names; all updates are Lua scripts, batched per loop
 * tick and pipelined; a sweeper on every node expires dead entries every
 * sweep_ms. Memory mode (url NULL): the same semantics in process.
 * Owns: its own Redis command connection (reconnect with backoff), the
 * per-tick batch, the sweep timer, pending list requests (callbacks called
 * exactly once, status -1 when freed). */
#ifndef CHATD_PRESENCE_H
#define CHATD_PRESENCE_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct presence presence;

typedef struct presence_opts {
    const char *redis_url;   /* NULL: memory mode */
    const char *node_id;
    uint32_t ttl_ms;         /* default 30000 */
    uint32_t sweep_ms;       /* default ttl_ms / 6, at least 100 */
    uint32_t redis_linger_ms; /* redis_client_opts.linger_ms */
} presence_opts;

typedef struct presence_user { const char *user; const char *name; } presence_user;

typedef struct presence_handlers {
    /* This node must announce a transition: event is "join" or "leave".
     * It may call this instance's functions (an entry it removes is freed
     * once the store call returns); not presence_free of another instance. */
    void (*on_transition)(void *ud, const char *room, const char *event,
                          const char *user, const char *name);
} presence_handlers;

presence *presence_new(uv_loop_t *loop, const presence_opts *o, const presence_handlers *h,
                       void *ud, char *err, size_t errlen);
void presence_free(presence *p);   /* handles closed asynchronously */

/* A connection (conn_id unique per node) entered / left a room. */
void presence_add(presence *p, const char *room, uint64_t conn_id, const char *user,
                  const char *name);
void presence_remove(presence *p, const char *room, uint64_t conn_id);
/* The connection heartbeated: refresh its entry in room. */
void presence_touch(presence *p, const char *room, uint64_t conn_id);

/* A new TTL (policy reload): every later upsert of this node (add,
 * heartbeat) expires ttl_ms after it; entries already written keep their
 * expiry until their next heartbeat. The sweep interval follows when it was
 * derived from the TTL (sweep_ms 0 at presence_new). */
void presence_set_ttl(presence *p, uint32_t ttl_ms);

/* Present users of room (each once). cb may run later; never synchronously
 * from inside the call. status -1 when unavailable. */
typedef void (*presence_list_cb)(void *ud, int status, const presence_user *users, size_t n);
int presence_list(presence *p, const char *room, presence_list_cb cb, void *ud);

/* (room, user) pairs with at least one live connection entry on this
 * instance (the chat_presence_users gauge, summed over instances):
 * counted from the entries, O(n log n). */
size_t presence_user_count(const presence *p);

#endif
