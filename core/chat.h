/* chat: the protocol's client side, between the transport (ws.c) and the
 * modules: a connection opens (join its URL room, welcome first), its
 * frames come in (message, typing, heartbeat, join, leave, refresh, edit,
 * delete, react) and it
 * closes (leave every room, detach its publishes). The pieces:
 *   chat.c         frame dispatch and the handlers (policy calls, answers)
 *   chat_hold.c    frames that wait while a join is in progress
 *   chat_join.c    joins with replay/recovery, leave, in-order delivery
 *   chat_fanout.c  bus and presence deliveries to local members
 *   chat_update.c  message updates: edit, delete, react (v2)
 * and below them publish.c (message -> seq -> durable row -> ack), wire.c
 * (outbound JSON) and lag.c (receipt times).
 * Owns: nothing across calls itself; a connection's publishes are in its
 * publish_owner (conn.pubs), its joins on its memberships. */
#ifndef CHATD_CHAT_H
#define CHATD_CHAT_H
#include <stddef.h>
#include <stdint.h>
#include "conn.h"

void chat_init(void);
/* Frees what chat keeps node-wide (at exit). */
void chat_shutdown(void);
/* A connection finished its upgrade: join its URL room (welcome first). */
void chat_conn_open(conn *c);
/* A complete client text frame. */
void chat_conn_frame(conn *c, const char *data, size_t len);
/* lws CLOSED: leave every room, cancel pending work, free the conn. */
void chat_conn_closed(conn *c);

/* SIGTERM: tell every client server_restart and close with 1001 after its
 * queue drained. */
void chat_drain_all(void);
/* Tick: close connections whose token expired (4001). */
void chat_expire_tokens(int64_t now_s);

#endif
