/* readstate: read state per (user, room) in Postgres (protocol.md "Read
 * state and unread counts"): marks (the `read` frame) batched into one
 * statement per batch (group commit, coalesced per (user, room), never
 * moving backwards), answered after the commit; read receipts broadcast to
 * the room's members on every node after a mark moved forward; batched
 * lookups of a user's read_seq (and the room's oldest kept seq) for joins;
 * the unread counts of GET /rooms/unread.
 * Owns: the queued and in-flight marks and lookups, their timers. Every
 * callback runs exactly once, never from inside the call that queued it,
 * unless its owner was dropped (readstate_drop) or it was refused (-1
 * returned). Layer: above store and bus, below chat and http. */
#ifndef CHATD_READSTATE_H
#define CHATD_READSTATE_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "bus.h"
#include "store.h"

typedef struct readstate_opts {
    int batch_ms;           /* wait for company before a batch (default 5) */
    int batch_max;          /* entries per statement (default 500) */
    int lookup_timeout_ms;  /* a join waits this long for its read_seq (default 2000) */
} readstate_opts;

/* s NULL: no database (every call answers -1 at once). */
void readstate_init(uv_loop_t *loop, store *s, bus *b, const readstate_opts *o);
/* Answers everything pending with -1 (before store_free: in-flight
 * statements then finish against a freed module safely). */
void readstate_shutdown(void);
/* 1 when marks and lookups can be served (a store, ready). */
int readstate_ready(void);

/* (user, room) has been read up to seq. cb(ud, 0, stored) once the batch
 * holding it committed: stored is the value in the database (>= seq unless
 * a larger one was there: then the larger one); cb(ud, -1, 0) when it could
 * not be stored. receipt: after the commit, when the stored value moved
 * forward, {"type":"read","room","user","name","seq"} goes to every member
 * of the room (the room's presence channel of the bus). Returns -1 (cb not
 * called) without a ready store or out of memory. owner: any pointer that
 * readstate_drop(owner) uses to cancel the callback. */
typedef void (*readstate_mark_cb)(void *ud, int status, uint64_t stored);
int readstate_mark(const char *user, const char *name, const char *room, uint64_t seq,
                   int receipt, void *owner, readstate_mark_cb cb, void *ud);
/* The callbacks of owner's marks are never called. */
void readstate_drop(void *owner);

/* The read receipt {"type":"read","room","user","name","seq"} into b (cap
 * at least JSON_IDENT_MAX + 256): its length, 0 when cap is smaller. room
 * is a valid room name (no escaping); user and name are escaped. */
size_t readstate_receipt_json(char *b, size_t cap, const char *room, const char *user,
                              const char *name, uint64_t seq);

/* The user's read_seq in room (0 when never read; marks not committed yet
 * count) and the room's kept_from (the oldest seq retention keeps, 0 =
 * everything). cb(ud, -1, 0, 0) when the database did not answer within
 * lookup_timeout_ms. Returns -1 (cb not called) without a ready store. */
typedef void (*readstate_lookup_cb)(void *ud, int status, uint64_t read_seq, uint64_t kept_from);
int readstate_lookup(const char *user, const char *room, readstate_lookup_cb cb, void *ud);

/* GET /rooms/unread: cb(ud, 0, json, len) with the malloc'd body
 * {"rooms":[{"room","seq","read_seq","unread"}...]} (the callee frees it),
 * cb(ud, -1, NULL, 0) on failure. Returns -1 without a ready store. */
typedef void (*readstate_unread_cb)(void *ud, int status, char *json, size_t len);
int readstate_unread(const char *user, readstate_unread_cb cb, void *ud);

#endif
