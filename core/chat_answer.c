/* chat_answer: see chat_answer.h. */
#define _GNU_SOURCE
#include "chat_answer.h"
#include "wire.h"
#include <stdio.h>
#include <string.h>

void chat_frame_room(const conn *c, const client_frame *f, char room[CHAT_ROOM_MAX + 1])
{
    if (f->room) { memcpy(room, f->room, f->room_len); room[f->room_len] = 0; }
    else snprintf(room, CHAT_ROOM_MAX + 1, "%s", c->url_room);
}

int chat_publish_gate(conn *c, const client_frame *f, char room[CHAT_ROOM_MAX + 1],
                      char idbuf[FRAME_ID_MAX + 1], const char **id, metric_counter *refused)
{
    *id = NULL;
    idbuf[0] = 0;
    if (f->id) {
        memcpy(idbuf, f->id, f->id_len);
        idbuf[f->id_len] = 0;
        *id = idbuf;
    }
    chat_frame_room(c, f, room);
    if (!conn_find_room(c, room)) {
        metric_inc(refused);
        conn_send_error_room(c, "not_member", "join the room first", *id, room);
        return -1;
    }
    if (!publish_ready()) {
        metric_inc(refused);
        conn_send_error(c, "unavailable", "temporarily unavailable; resend with the same id", *id);
        return -1;
    }
    return 0;
}

void chat_publish_answer(conn *c, const publish_result *r)
{
    const char *why = "history store unavailable; resend with the same id";
    switch (r->status) {
    case PUBLISH_OK: {
        char b[128 + CHAT_ROOM_MAX + JSON_ESCAPED_MAX(FRAME_ID_MAX)]; /* wire_ack's bound */
        size_t n = wire_ack(b, sizeof b, r->id, r->room, r->seq);
        if (n) conn_send_text(c, b, n);
        return;
    }
    case PUBLISH_NOT_FOUND:
    case PUBLISH_REFUSED:
    case PUBLISH_NOOP:
    case PUBLISH_ID_REUSED:
        conn_send_error(c, r->code ? r->code : "rejected", r->reason ? r->reason : "refused", r->id);
        return;
    case PUBLISH_RATE_LIMITED:
        conn_send_error(c, "rate_limited", "too many messages, slow down", r->id);
        return;
    case PUBLISH_UNSTORABLE:
        conn_send_error(c, "bad_request", "the message cannot be stored in history; do not resend", r->id);
        return;
    case PUBLISH_BUS_DOWN: why = "message bus unavailable; resend with the same id"; break;
    case PUBLISH_BACKLOG: why = "history store backlog full; resend with the same id"; break;
    case PUBLISH_CONFLICT: why = "seq conflict in history; resend with the same id"; break;
    default: break;
    }
    conn_send_error(c, "unavailable", why, r->id);
}
