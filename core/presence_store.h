/* presence_store: the storage backend under presence.c (internal).
 * A store decides transitions atomically: for each upsert that creates a
 * user's first entry in a room it reports "join", for each remove or expiry
 * that drops the last one it reports "leave", always to the instance whose
 * call made the change. Two stores exist with the same semantics:
 * presence_redis.c (Lua scripts on Redis, shared by every node) and
 * presence_mem.c (one table per process, shared by every memory instance).
 * Owns: its connection/state; never calls back from inside apply/list for
 * Redis, and synchronously for memory (presence.c only calls the store from
 * its own timers, so user callbacks are never reentrant). */
#ifndef CHATD_PRESENCE_STORE_H
#define CHATD_PRESENCE_STORE_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <uv.h>
#include "presence.h"

/* An operation on one entry of room: 'u' upsert (add or refresh, expiry =
 * now+ttl), 'r' remove. member is "<node>|<conn_id>|<user>".
 * slot (upserts, may be NULL): vt->slot_size bytes (8-aligned) that the
 * caller keeps for the entry in the same allocation as member, user and
 * name, which stay as they are until the caller calls vt->release for it:
 * a store may keep its record of the entry there and point at the caller's
 * strings instead of copying them (presence_mem.c does). */
typedef struct pstore_op {
    const char *room;
    char op;
    const char *member;
    const char *user;
    const char *name;
    void *slot;
} pstore_op;

/* The user at the tail of member (ml, ul: their lengths): member + ml - ul
 * when member ends with "|" user (presence.c's members always do), else
 * NULL. A store keeps the user there instead of a copy. */
static inline const char *pstore_user_tail(const char *member, size_t ml, const char *user, size_t ul)
{
    if (ml <= ul || member[ml - ul - 1] != '|' || memcmp(member + ml - ul, user, ul) != 0) return NULL;
    return member + ml - ul;
}

typedef struct pstore_sink {
    void (*transition)(void *ud, const char *room, const char *event,
                       const char *user, const char *name);
    /* A remove could not be applied (connection lost): retry it later. */
    void (*retry_remove)(void *ud, const char *room, const char *member, const char *user);
    /* 1: the store is (again) usable and may have lost entries: re-add every
     * live local entry. 0: it went away. */
    void (*ready)(void *ud, int ready);
    /* Answer to pstore list (exactly once per request). */
    void (*list_done)(void *ud, void *req, int status, const presence_user *u, size_t n);
} pstore_sink;

typedef struct pstore pstore;
typedef struct pstore_vt {
    int (*ready)(pstore *s);
    /* Ops grouped by room, upserts before removes within a room (so a user
     * moving between connections never flickers). 0 sent, -1 not ready. */
    int (*apply)(pstore *s, const pstore_op *ops, size_t n);
    /* Expire entries of every room (all nodes' entries). */
    void (*sweep)(pstore *s);
    /* 0 queued (list_done later), -1 not ready (list_done not called). */
    int (*list)(pstore *s, const char *room, void *req);
    /* Pending lists get list_done(-1); handles close asynchronously. */
    void (*free)(pstore *s);
    /* The slot given with an upsert of (room, member) is going away (the
     * caller frees its entry): the store stops using it (copies what it
     * still needs). A slot the store no longer holds is a no-op. Never
     * called from inside the store's apply or sweep (presence.c frees an
     * entry a transition handler removed after the call returns), nor
     * does it call the sink. NULL when slot_size is 0. */
    void (*release)(pstore *s, const char *room, const char *member, void *slot);
    size_t slot_size;          /* 0: the store takes no slots */
} pstore_vt;

struct pstore {
    const pstore_vt *vt;
    const pstore_sink *sink;
    void *ud;
    uint32_t ttl_ms;
};

/* presence_redis.c, reply interpretation (pure; fuzzed by
 * tests/fuzz/fuzz_resp.c). fn gets every well-formed transition (a valid
 * room, event join/leave, a non-empty user, a name; strings without NUL)
 * and returns 0, or -1 to stop. */
struct redisReply;
typedef int (*pstore_each_fn)(void *ud, const char *room, const char *event,
                              const char *user, const char *name);
/* apply script {room, "join"|"leave"|"bad", user, name, ...}: fn per
 * join/leave, *bad = the first room reported "bad" (or NULL); returns how
 * many transitions, -1 when rep is not an array */
int pstore_redis_apply_reply(const struct redisReply *rep, pstore_each_fn fn, void *ud,
                             const char **bad);
/* sweep script {2|3, room, user, name, ...} (3: more is due): fn(room,
 * "leave", user, name) per triple; returns how many, -1 when it is not this
 * node's round (or not the script's shape) */
int pstore_redis_sweep_reply(const struct redisReply *rep, pstore_each_fn fn, void *ud,
                             int *more);
/* HGETALL of the names hash: fills u (room for elements/2) with the string
 * pairs; returns how many */
size_t pstore_redis_list_reply(const struct redisReply *rep, presence_user *u);

/* linger_ms: redis_client_opts.linger_ms */
pstore *pstore_redis_new(uv_loop_t *loop, const char *url, uint32_t ttl_ms, uint32_t linger_ms,
                         const pstore_sink *sink, void *ud, char *err, size_t errlen);
pstore *pstore_mem_new(uint32_t ttl_ms, const pstore_sink *sink, void *ud,
                       char *err, size_t errlen);

#endif
