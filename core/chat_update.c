/* chat_update: the message-update frames of a connection (edit, delete,
 * react; protocol.md "Message updates (v2)"): membership and readiness
 * checks (chat_answer.c), the policy hooks on_edit / on_delete / on_react
 * as the policy step of publish.c's update path (called with the target's
 * author once the target is found), the contract's default where the
 * policy has no on_edit / on_delete (the author edits and deletes their
 * own messages, a token whose role claim is the policy's admin role
 * deletes any; a missing on_react accepts: anyone in the room reacts),
 * and the answers (chat_answer.c): ack
 * (durable, with the update's own seq), or error not_found / forbidden /
 * rejected / rate_limited / unavailable. The update itself reaches every
 * member through the bus as a message_update frame (wire.h), like a
 * message.
 * Owns nothing across calls: the updates in flight belong to the
 * connection's publish_owner (dropped when it closes). Layer: with chat. */
#define _GNU_SOURCE
#include "chat_update.h"
#include "chat_answer.h"
#include "chat_join.h"
#include "metrics.h"
#include "publish.h"
#include "srv.h"
#include "util.h"
#include "wire.h"
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static metric_counter *m_in[3], *m_refused[3];

void chat_update_init(void)
{
    static const char *kinds[3] = {"edit", "delete", "react"};
    for (int i = 0; i < 3; i++) {
        char l[48];
        snprintf(l, sizeof l, "kind=\"%s\"", kinds[i]);
        m_in[i] = metrics_counter("chat_updates_in_total",
                                  "Message updates accepted for publish, by kind", l);
        m_refused[i] = metrics_counter("chat_updates_refused_total",
                                       "Message updates refused (not found, policy, unavailable), by kind",
                                       l);
    }
}

static int kind_index(int kind) { return kind - WIRE_EDIT; }

/* 1 when the connection's token has the policy's admin role (claim
 * "role"). */
static int is_admin(const conn *c)
{
    if (!c->ident.claims_json) return 0;
    json_t *o = json_loads(c->ident.claims_json, 0, NULL);
    json_t *r = o ? json_object_get(o, "role") : NULL;
    int yes = json_is_string(r) && !strcmp(json_string_value(r), script_admin_role(g_srv.script));
    json_decref(o);
    return yes;
}

/* The contract's default for an edit or delete the policy has no hook
 * for: 0 allowed, else refused (v filled). */
static int default_refuses(const conn *c, int kind, const char *author, publish_verdict *v)
{
    int own = author && !strcmp(author, c->ident.user);
    if (own || (kind == WIRE_DELETE && is_admin(c))) return 0;
    v->refuse = 1;
    snprintf(v->code, sizeof v->code, "forbidden");
    snprintf(v->reason, sizeof v->reason, "%s",
             kind == WIRE_EDIT ? "only the author can edit a message"
                               : "only the author or an admin can delete a message");
    return 1;
}

/* publish.c's policy step: the hook of the update's kind, with its ctx
 * (the contract's default when the policy has no on_edit / on_delete). */
static void authorize(void *ud, const publish_update *u, const char *author, publish_verdict *v)
{
    conn *c = ud;
    if ((u->kind == WIRE_EDIT && !script_has_hook(g_srv.script, "on_edit")) ||
        (u->kind == WIRE_DELETE && !script_has_hook(g_srv.script, "on_delete"))) {
        default_refuses(c, u->kind, author, v);
        return;
    }
    script_ctx x;
    chat_script_ctx(c, u->room, &x);
    script_update su = {u->target, author, u->id, u->body, u->body_len, u->emoji, u->on};
    script_result res;
    memset(&res, 0, sizeof res);
    script_verdict vd = u->kind == WIRE_EDIT ? script_on_edit(g_srv.script, &x, &su, &res)
                      : u->kind == WIRE_DELETE ? script_on_delete(g_srv.script, &x, &su, &res)
                      : script_on_react(g_srv.script, &x, &su, &res);
    if (vd == SCRIPT_REJECT) {
        v->refuse = 1;
        snprintf(v->code, sizeof v->code, "%s", script_reject_code(&res));
        snprintf(v->reason, sizeof v->reason, "%s", res.reason[0] ? res.reason : "refused by policy");
    } else if (vd == SCRIPT_REPLACE && res.body) {
        v->body = res.body;            /* publish takes it */
        v->body_len = res.body_len;
        res.body = NULL;
    }
    script_result_clear(&res);
}

/* The answer of the publish path (the connection is still open:
 * publish_owner_drop detached everything of a closed one). */
static void on_done(void *ud, const publish_result *r)
{
    conn *c = ud;
    if (r->status != PUBLISH_OK && r->kind >= WIRE_EDIT && r->kind <= WIRE_REACT)
        metric_inc(m_refused[kind_index(r->kind)]);
    chat_publish_answer(c, r);
}

void chat_update_frame(conn *c, const client_frame *f)
{
    int kind = f->type == FT_EDIT ? WIRE_EDIT : f->type == FT_DELETE ? WIRE_DELETE : WIRE_REACT;
    char idbuf[FRAME_ID_MAX + 1], room[CHAT_ROOM_MAX + 1], emoji[64] = "";
    const char *id;
    metric_counter *refused = m_refused[kind_index(kind)];
    if (chat_publish_gate(c, f, room, idbuf, &id, refused) != 0) return;
    if (f->emoji) { memcpy(emoji, f->emoji, f->emoji_len); emoji[f->emoji_len] = 0; }
    publish_update u = {room, id, c->ident.user, c->ident.name, kind, f->target,
                        f->body, f->body_len, f->emoji ? emoji : NULL, f->on, mono_ns(), 0};
    if (publish_update_start(&u, &c->pubs, authorize, on_done, c) < 0) {
        metric_inc(refused);
        conn_send_error(c, "unavailable", "temporarily unavailable; resend with the same id", id);
        return;
    }
    metric_inc(m_in[kind_index(kind)]);
}
