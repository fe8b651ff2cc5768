/* chat_fanout: what the bus and presence deliver to this node, handed to
 * the local members of a room: messages (in seq order, one frame built once
 * and referenced by every member's queue), gaps (gap_too_large), typing
 * (not to its author), presence events (after a member's presence_state),
 * and presence transitions this node must announce (through the policy's
 * on_presence, then the bus). Owns nothing across calls. Layer: with chat. */
#define _GNU_SOURCE
#include "chat_fanout.h"
#include "chat_join.h"
#include "lag.h"
#include "log.h"
#include "room.h"
#include "srv.h"
#include "util.h"
#include "wire.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void chat_bus_message(void *ud, const char *rname, uint64_t seq, const char *tail, size_t len)
{
    room *r = room_find(rname);
    if (!r) return;
    msg *m = wire_message_frame(rname, seq, tail, len);
    if (!m) return;
    uint64_t t0 = lag_take(rname, tail, len);
    if (t0) m->born_ns = t0;       /* received by this node: lag from receipt */
    for (uint32_t i = 0; i < r->nmembers; i++) {
        conn_room *cr = r->members[i];
        if (cr->live) chat_deliver(cr, m);
        else chat_join_buffer(cr, m);
    }
    msg_unref(m);
}

void chat_bus_gap(void *ud, const char *rname, uint64_t from, uint64_t to)
{
    LOGW("chat", "room %s: seqs %" PRIu64 "..%" PRIu64 " were lost to this node; members told gap_too_large",
         rname, from, to);
    room *r = room_find(rname);
    if (!r) return;
    for (uint32_t i = 0; i < r->nmembers; i++)
        conn_send_error_room(r->members[i]->c, "gap_too_large",
                             "messages were missed; page history over HTTP", NULL, rname);
}

void chat_bus_emit(void *ud, const char *rname, const char *kind, const char *data, size_t len)
{
    room *r = room_find(rname);
    if (!r) return;
    const char *frame = data;
    size_t flen = len;
    char skip_user[128] = "";
    if (strcmp(kind, "typing") == 0) {
        const char *nl = memchr(data, '\n', len);
        if (!nl || (size_t)(nl - data) >= sizeof skip_user) return;
        memcpy(skip_user, data, (size_t)(nl - data));
        skip_user[nl - data] = 0;
        frame = nl + 1;
        flen = len - (size_t)(nl + 1 - data);
    }
    msg *m = msg_new(frame, flen);
    if (!m) return;
    for (uint32_t i = 0; i < r->nmembers; i++) {
        conn_room *cr = r->members[i];
        /* typing goes to joining members too (they may see it before their
         * presence_state); presence events wait for presence_state */
        if (!cr->live && !skip_user[0]) continue;
        if (skip_user[0] && strcmp(cr->c->ident.user, skip_user) == 0) continue;
        conn_send(cr->c, m);
    }
    msg_unref(m);
}

void chat_bus_ready(void *ud, int ready)
{
    LOGI("chat", "message bus %s", ready ? "ready" : "NOT ready (publishes answer unavailable)");
}

void chat_presence_transition(void *ud, const char *rname, const char *event,
                              const char *user, const char *name)
{
    script_ctx x = {user, name, NULL, rname, g_srv.cfg.node_id, now_ms(), NULL};
    /* claims of the subject when a local connection has them */
    room *r = room_find(rname);
    for (uint32_t i = 0; r && i < r->nmembers; i++)
        if (strcmp(r->members[i]->c->ident.user, user) == 0) {
            x.claims_json = r->members[i]->c->ident.claims_json;
            break;
        }
    script_result res;
    memset(&res, 0, sizeof res);
    script_verdict v = script_on_presence(g_srv.script, &x, event, user, name, &res);
    script_result_clear(&res);
    if (v == SCRIPT_REJECT) return;
    char b[JSON_IDENT_MAX + 256];
    size_t o = (size_t)snprintf(b, sizeof b, "{\"type\":\"presence\",\"room\":\"%s\",\"event\":\"%s\",\"user\":",
                                rname, event);
    o += (size_t)json_escape(b + o, sizeof b - o, user, strnlen(user, 127));
    memcpy(b + o, ",\"name\":", 8); o += 8;
    o += (size_t)json_escape(b + o, sizeof b - o, name, strnlen(name, 127));
    b[o++] = '}';
    bus_emit(g_srv.bus, rname, "presence", b, o);
}

