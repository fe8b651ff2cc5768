/* publish: the one path from "a message the policy accepted" to "a seq, a
 * durable row and an ack" — for client messages, the server API and
 * message updates (edit, delete, react: publish_update_start, which first
 * finds the target and asks the caller's policy step).
 *   caller -> publish_start -> bus (seq, fan-out) -> store (group commit)
 *          -> the caller's callback (ack or error)
 * The path runs one way: this module never calls the layers above it; it
 * answers through the callback it was given.
 * Also the durable side that the bus asks for: storing a message another
 * node published and never stored (its node died between publish and
 * commit: publish_bus_unstored) and a room's durable head when Redis has
 * none (publish_bus_seed).
 * Owns: the publish operations in flight. Each belongs to an owner list
 * (a connection, an HTTP request); publish_owner_drop detaches them when
 * the owner goes away: the operation still completes — a message that got
 * a seq is stored — but nobody is called. The callback runs exactly once
 * otherwise, never from inside publish_start. Layer: above bus and store,
 * below chat (it uses neither conn nor room). */
#ifndef CHATD_PUBLISH_H
#define CHATD_PUBLISH_H
#include <stddef.h>
#include <stdint.h>
#include "publish_owner.h"
#include "bus.h"
#include "store.h"
#include "wire.h"

struct climit;

enum {
    PUBLISH_OK = 0,           /* durably stored (without a database: published) */
    PUBLISH_BUS_DOWN = -1,    /* no seq was assigned: resend with the same id */
    PUBLISH_STORE_DOWN = -2,  /* a seq was assigned, the store failed for good */
    PUBLISH_BACKLOG = -3,     /* a seq was assigned, the store's backlog is full */
    PUBLISH_CONFLICT = -4,    /* another message holds the seq in history */
    /* message updates only; no seq was assigned: */
    PUBLISH_NOT_FOUND = -5,   /* no such message (unknown seq, an update's seq, deleted) */
    PUBLISH_REFUSED = -6,     /* the policy step said no: result code and reason */
    PUBLISH_NOOP = -7,        /* a react that changes nothing (already on / not on) */
    PUBLISH_RATE_LIMITED = -8,/* the user's cluster-wide message rate (no seq) */
    PUBLISH_UNSTORABLE = -9,  /* a seq was assigned, but history can never hold the row
                               * (store_write -3: not UTF-8, a number over 2^63-1): never
                               * acked; a resend would meet the same (answer bad_request) */
    PUBLISH_ID_REUSED = -10,  /* the sender's id names another of its messages or updates
                               * (another kind, or another target): nothing new was stored
                               * and the id keeps what it names (answer bad_request; the
                               * server API 409). reason says what the id names */
};

typedef struct publish_msg {
    const char *room;
    const char *id;           /* client id (idempotency), may be NULL */
    const char *user, *name;
    const char *body; size_t body_len;   /* no NUL inside (the caller checks) */
    uint64_t t0_ns;           /* receipt time (mono_ns): lag, durations */
    const char *meta; size_t meta_len;   /* server API: a JSON object's text, or NULL */
    int user_rate;            /* count it against the user's message rate (climit.h) */
} publish_msg;

typedef struct publish_result {
    int status;               /* PUBLISH_* */
    const char *room, *id;    /* id NULL when the message had none */
    uint64_t seq;             /* when a seq was assigned */
    int duplicate;            /* the id was published before: seq is the first one's */
    /* message updates: */
    const char *code, *reason;/* PUBLISH_REFUSED: the policy's code and reason */
    int64_t count;            /* a react's count after it (-1 otherwise, or a duplicate) */
    int kind;                 /* WIRE_MESSAGE, or the update's kind */
} publish_result;

typedef void (*publish_cb)(void *ud, const publish_result *r);

typedef struct publish_op publish_op;

/* Metrics (at start, before any traffic). */
void publish_init(void);
/* The bus and (optional) store to use; pending_max bounds the store's
 * backlog (publish_ready says no beyond it). */
void publish_attach(bus *b, store *s, size_t pending_max);
/* The store is about to be freed (shutdown, before the bus): what the bus
 * answers after that (-1 to a pending read) calls it no more: such an
 * operation is answered unavailable. */
void publish_store_gone(void);
/* 1 when a publish can be accepted now (bus ready, store backlog below its
 * bound). */
int publish_ready(void);
/* Starts a publish owned by owner (may be NULL: nobody to detach). Returns
 * 0 when started (cb later), -1 when refused now (bus not ready, out of
 * memory), -2 when m->user_rate and the user is over the cluster-wide
 * message rate (known now): cb is not called. When the rate is known only
 * later, cb gets PUBLISH_RATE_LIMITED. */
int publish_start(const publish_msg *m, publish_owner *owner, publish_cb cb, void *ud);
/* The per-user message rate counted across nodes (CHAT_USER_MSG_RATE /
 * CHAT_USER_MSG_BURST; rate 0 = off), checked before a seq is handed out
 * for publishes with user_rate set. */
void publish_set_user_rate(struct climit *l, double rate, double burst);
/* The owner goes away: its operations complete without calling back. */
void publish_owner_drop(publish_owner *o);

/* ---- message updates (v2; docs/architecture.md "Message updates") ----
 * An edit, delete or react of message `target`: the target is looked up
 * (history, else the recent buffer: it must be a message, not an update,
 * and not deleted), the caller's policy step decides with the target's
 * author, then the update is published through the bus's state step (a
 * delete by a lower seq refuses it; a react's count is decided with its
 * seq), stored and answered like a message (PUBLISH_OK with its seq, the
 * same id again: the first seq, duplicate). */
typedef struct publish_update {
    const char *room;
    const char *id;           /* client id (idempotency, shared with messages), may be NULL */
    const char *user, *name;  /* who edits, deletes, reacts */
    int kind;                 /* WIRE_EDIT, WIRE_DELETE, WIRE_REACT (wire.h) */
    uint64_t target;          /* seq of the message */
    const char *body; size_t body_len;   /* edit: no NUL inside (the caller checks) */
    const char *emoji;        /* react: emoji_valid() */
    int on;                   /* react: 1 adds, 0 removes */
    uint64_t t0_ns;           /* receipt time (mono_ns) */
    int id_default;           /* id was made up by the caller (the API's "api-delete-<seq>"),
                               * not sent by a client: a deleted target answers not_found at
                               * once; with a client's id it first looks for a resend (its
                               * first ack may have been lost) */
} publish_update;

/* The caller's policy step, called once with the target's author (never
 * after its owner was dropped). Leave v->refuse 0 to go on; an edit may
 * set v->body (malloc'd; publish frees it) to publish another body. */
typedef struct publish_verdict {
    int refuse;               /* 1: refused; code ("forbidden", "rejected", ...) and reason */
    char code[32], reason[256];
    char *body; size_t body_len;
} publish_verdict;
typedef void (*publish_authorize_fn)(void *ud, const publish_update *u, const char *author,
                                     publish_verdict *v);

/* Starts an update (authorize NULL: no policy step, e.g. a moderator).
 * Returns 0 when started (cb later, exactly once unless the owner is
 * dropped), -1 when refused now (bus not ready, bad fields, out of
 * memory): cb is not called. */
int publish_update_start(const publish_update *u, publish_owner *owner,
                         publish_authorize_fn authorize, publish_cb cb, void *ud);

/* "Delete message (room, seq) as actor": the one delete both the client
 * frame (after its policy step) and the server API's moderator delete
 * (DELETE /api/rooms/{room}/messages/{seq}, no policy: the API key is the
 * authority) use. actor/actor_name appear as the update's user and name;
 * id (may be NULL) makes a retry idempotent. Answers like
 * publish_update_start: PUBLISH_OK (seq of the delete event),
 * PUBLISH_NOT_FOUND (no such message, or deleted already), or the
 * unavailable statuses. */
int publish_delete(const char *room, uint64_t seq, const char *actor, const char *actor_name,
                   const char *id, int id_default, publish_owner *owner, publish_cb cb, void *ud);

/* Bus handlers (server.c wires them): on_unstored, on_seed, on_check (the
 * backfill sweeper asks history which unstored messages it holds: one
 * store_check per round replaces a mark per commit). */
void publish_bus_unstored(void *ud, const char *room, uint64_t seq, const char *tail, size_t len);
void publish_bus_seed(void *ud, const char *room, bus_seed *req);
void publish_bus_check(void *ud, bus_check *req, size_t n, const char *const *rooms,
                       const uint64_t *seqs);

#endif
