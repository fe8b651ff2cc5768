/* chat_join: see chat_join.c's header: joins with replay/recovery, leave,
 * in-order delivery to one membership. */
#ifndef CHATD_CHAT_JOIN_H
#define CHATD_CHAT_JOIN_H
#include <stddef.h>
#include <stdint.h>
#include "conn.h"
#include "script.h"

/* Joins room (first: the URL room at connect, which gets welcome). since /
 * epoch: resume after since (epoch may be NULL). id: the join frame's id
 * (NULL: none), echoed by the errors answering it. Answers errors to the
 * client itself (too_many_rooms, unavailable, gap_too_large: each with
 * "room"). 0 started, -1 refused. */
int chat_join(conn *c, const char *room, int has_since, uint64_t since, const char *epoch,
              int first, const char *id);
/* Leaves c->rooms[idx] (cancels its join, unsubscribes, presence). */
void chat_leave(conn *c, uint32_t idx);
/* A frame of the member's room: sent unless its seq was delivered already. */
void chat_deliver(conn_room *cr, msg *m);
/* A live frame while the member is still joining: kept (referenced) until
 * the join finishes; beyond CHAT_MAX_QUEUE the connection is closed 1008. */
void chat_join_buffer(conn_room *cr, msg *m);
/* The policy context of c in room (room may be NULL). */
void chat_script_ctx(conn *c, const char *room, script_ctx *x);

#endif
