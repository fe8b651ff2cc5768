/* chat: the room semantics of the protocol, between the transport (ws.c,
 * http.c) and the modules: client frames in (message, typing, heartbeat,
 * join, leave, refresh), joins with replay/recovery, publish -> seq ->
 * durable write -> ack, node-level fan-out of bus deliveries to local
 * members, typing and presence frames.
 * Owns: join operations (join_op) and publish operations (pub_op) in flight;
 * both are cancelled by their connection's close (the callbacks then only
 * free them). */
#ifndef CHATD_CHAT_H
#define CHATD_CHAT_H
#include <stddef.h>
#include <stdint.h>
#include "bus.h"
#include "conn.h"
#include "presence.h"

void chat_init(void);
/* Frees what chat keeps node-wide (at exit). */
void chat_shutdown(void);
/* A connection finished its upgrade: join its URL room (welcome first). */
void chat_conn_open(conn *c);
/* A complete client text frame. */
void chat_conn_frame(conn *c, const char *data, size_t len);
/* lws CLOSED: leave every room, cancel pending work, free the conn. */
void chat_conn_closed(conn *c);

/* bus handlers */
void chat_bus_message(void *ud, const char *room, uint64_t seq, const char *tail, size_t len);
void chat_bus_gap(void *ud, const char *room, uint64_t from, uint64_t to);
void chat_bus_emit(void *ud, const char *room, const char *kind, const char *data, size_t len);
void chat_bus_ready(void *ud, int ready);
/* A message another node published but never stored: store it (backfill). */
void chat_bus_unstored(void *ud, const char *room, uint64_t seq, const char *tail, size_t len);
/* The durable head of a room (Postgres: max stored seq and the room's
 * epoch), asked by the bus when Redis has none. Set only with a database. */
void chat_bus_seed(void *ud, const char *room, bus_seed *req);
/* presence handler */
void chat_presence_transition(void *ud, const char *room, const char *event,
                              const char *user, const char *name);

/* Builds the message frame tail ("id":..,"user":..,"name":..,"body":..,"ts":..}).
 * Returns malloc'd string, *len set. */
char *chat_build_tail(const char *id, const char *user, const char *name,
                      const char *body, size_t body_len, uint64_t ts, size_t *len);
/* '{"type":"message","room":R,"seq":N,' + tail into a new frame */
msg *chat_message_frame(const char *room, uint64_t seq, const char *tail, size_t len);

/* prefix + '"users":[{"user":..,"name":..},...]}' (prefix opens the object and
 * ends with a comma, e.g. '{"room":"r",'). malloc'd; *len set. */
char *chat_users_json(const char *prefix, const presence_user *u, size_t n, size_t *len);

/* SIGTERM: tell every client server_restart and close with 1001 after its
 * queue drained. */
void chat_drain_all(void);
/* Tick: close connections whose token expired (4001). */
void chat_expire_tokens(int64_t now_s);

#endif
