/* chat_answer: what a connection is told around a frame that publishes (a
 * message, an edit, a delete, a react): the checks before (the frame's
 * client id and room, membership, the publish path ready) and the answer
 * after (publish.h's result: the ack, or the error frame of its status).
 * Owns nothing; no state. Layer: with chat, under chat.c and
 * chat_update.c, which both publish from a connection. */
#ifndef CHATD_CHAT_ANSWER_H
#define CHATD_CHAT_ANSWER_H
#include "conn.h"
#include "frame.h"
#include "metrics.h"
#include "publish.h"

/* The room a frame is about: its "room" field, else the URL's room. */
void chat_frame_room(const conn *c, const client_frame *f, char room[CHAT_ROOM_MAX + 1]);
/* Before a publish: copies the frame's client id into idbuf (*id = idbuf,
 * or NULL without one) and its room into room; 0 when c is a member of the
 * room and the publish path is ready, else -1 after answering the error
 * frame (not_member, unavailable) and counting it in refused. */
int chat_publish_gate(conn *c, const client_frame *f, char room[CHAT_ROOM_MAX + 1],
                      char idbuf[FRAME_ID_MAX + 1], const char **id, metric_counter *refused);
/* After a publish: the ack, or the error frame of r->status (the policy's
 * code and reason for a refusal). */
void chat_publish_answer(conn *c, const publish_result *r);

#endif
