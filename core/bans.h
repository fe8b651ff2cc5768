/* bans: who may not connect to or join which room until when (the server
 * API's PUT/DELETE /api/users/{user}/ban). A ban is for one room or for
 * every room, and expires at a wall-clock time (ms), so every node agrees
 * on it. This table is each node's copy: the upgrade gate and joins check
 * it synchronously. Every node fills it from the control channel (ctl.h,
 * ops "ban"/"unban"); with Redis the bans are also stored there with their
 * expiry, and a node reads them all when it starts or its Redis link comes
 * back (docs/api.md "Bans").
 * Owns: the ban entries (copies of user, room, reason). */
#ifndef CHATD_BANS_H
#define CHATD_BANS_H
#include <stddef.h>
#include <stdint.h>
#include "util.h"

#define BAN_USER_MAX 127
#define BAN_REASON_MAX 200

typedef struct ban {
    char room[CHAT_ROOM_MAX + 1];   /* "" = every room */
    uint64_t until_ms;              /* wall clock */
    char reason[BAN_REASON_MAX + 1];
} ban;

void bans_init(void);
void bans_free(void);
/* Adds or replaces the user's ban of room (NULL or "": every room). 0 or
 * -1 (out of memory, bad argument). */
int bans_put(const char *user, const char *room, uint64_t until_ms, const char *reason);
/* Lifts the user's ban of room; room NULL: every ban of the user. Returns
 * how many were lifted that were in force at now_ms (expired ones are
 * dropped, not counted). */
int bans_lift(const char *user, const char *room, uint64_t now_ms);
/* The ban that keeps user out of room at now_ms: the every-room ban first,
 * else room's; room NULL: the every-room ban only. NULL when none. Valid
 * until the next bans_* call. */
const ban *bans_match(const char *user, const char *room, uint64_t now_ms);
/* Drops expired bans; returns how many are active. */
size_t bans_prune(uint64_t now_ms);

/* Every ban as a shared store has it (adminstore.h), to replace this
 * node's copy after its control channel was down. A load races with the
 * changes that keep arriving on the channel meanwhile: between
 * bans_load_begin and bans_load_apply/abort, bans_put/bans_lift note what
 * they touch, and the snapshot neither re-adds a ban lifted since nor
 * removes one put since; everything else becomes the snapshot. */
typedef struct ban_entry {
    const char *user, *room;        /* room "" = every room */
    uint64_t until_ms;
    const char *reason;
} ban_entry;
void bans_load_begin(void);
void bans_load_apply(const ban_entry *e, size_t n);
void bans_load_abort(void);

#endif
