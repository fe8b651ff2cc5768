/* publish: the one path from "a message the policy accepted" to "a seq, a
 * durable row and an ack" — for client messages today, for the server API
 * and message updates as they land.
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
#include "bus.h"
#include "store.h"

struct climit;

enum {
    PUBLISH_OK = 0,           /* durably stored (without a database: published) */
    PUBLISH_BUS_DOWN = -1,    /* no seq was assigned: resend with the same id */
    PUBLISH_STORE_DOWN = -2,  /* a seq was assigned, the store failed for good */
    PUBLISH_BACKLOG = -3,     /* a seq was assigned, the store's backlog is full */
    PUBLISH_CONFLICT = -4,    /* another message holds the seq in history */
    PUBLISH_RATE_LIMITED = -5,/* the user's cluster-wide message rate (no seq) */
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
} publish_result;

typedef void (*publish_cb)(void *ud, const publish_result *r);

typedef struct publish_op publish_op;
typedef struct publish_owner { publish_op *head; } publish_owner;

/* Metrics (at start, before any traffic). */
void publish_init(void);
/* The bus and (optional) store to use; pending_max bounds the store's
 * backlog (publish_ready says no beyond it). */
void publish_attach(bus *b, store *s, size_t pending_max);
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

/* Bus handlers (server.c wires them): on_unstored, on_seed. */
void publish_bus_unstored(void *ud, const char *room, uint64_t seq, const char *tail, size_t len);
void publish_bus_seed(void *ud, const char *room, bus_seed *req);

#endif
