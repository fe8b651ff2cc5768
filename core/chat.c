/* chat: see chat.h. */
#define _GNU_SOURCE
#include "chat.h"
#include "chat_admin.h"
#include "chat_admit.h"
#include "chat_answer.h"
#include "chat_hold.h"
#include "chat_join.h"
#include "chat_update.h"
#include "frame.h"
#include "lag.h"
#include "httpd.h"
#include "log.h"
#include "metrics.h"
#include "publish.h"
#include "readstate.h"
#include "srv.h"
#include "util.h"
#include "wire.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(FRAME_ID_MAX <= BUS_ID_MAX, "the bus takes every id a client may send (bus_types.h)");
_Static_assert(AUTH_CLAIM_MAX <= BUS_USER_MAX, "a token's sub is a sender the bus keys ids under");

static metric_counter *m_frames[FT_COUNT + 1], *m_msgs_in, *m_rejected, *m_typing_dropped;
static void process_frame(conn *c, const char *data, size_t len);

void chat_init(void)
{
    static const char *types[FT_COUNT + 1] = {"invalid", "message", "typing", "heartbeat", "join",
                                              "leave", "refresh", "read", "edit", "delete",
                                              "react"};
    for (int i = 0; i <= FT_COUNT; i++) {
        char l[48];
        snprintf(l, sizeof l, "type=\"%s\"", types[i]);
        m_frames[i] = metrics_counter("chat_frames_in_total", "Client frames received, by type", l);
    }
    m_msgs_in = metrics_counter("chat_messages_in_total", "Client message frames accepted for publish", NULL);
    m_rejected = metrics_counter("chat_messages_rejected_total", "Client messages refused (policy, limits, unavailable)", NULL);
    m_typing_dropped = metrics_counter("chat_typing_dropped_total", "Typing frames dropped by policy", NULL);
    chat_hold_init(process_frame, chat_admit_pending);
    publish_init();
    chat_update_init();
}

void chat_shutdown(void)
{
    chat_hold_shutdown();
    chat_admit_shutdown();
    lag_shutdown();
}

void chat_conn_open(conn *c)
{
    if (chat_admin_open_banned(c)) return;
    /* epoch= of the URL (with since=): read here, while lws still has the
     * request's headers (the ESTABLISHED callback) */
    char epoch[BUS_EPOCH_MAX + 1] = "";
    if (c->has_since && httpd_arg(c->wsi, "epoch", epoch, sizeof epoch) != 1) epoch[0] = 0;
    /* the cluster-wide count of the user's connections first (uconns.h) */
    chat_admit_start(c, epoch[0] ? epoch : NULL);
}

void chat_conn_closed(conn *c)
{
    chat_hold_conn_closed(c);
    chat_admit_conn_closed(c);
    while (c->nrooms) chat_leave(c, c->nrooms - 1);
    publish_owner_drop(&c->pubs); /* they complete (durability), unanswered */
    readstate_drop(c);            /* read marks too */
    script_ctx x;
    chat_script_ctx(c, NULL, &x);
    script_on_disconnect(g_srv.script, &x);
    conn_destroy(c);
}

/* ---- message: policy, then the publish path (publish.c) -------------------- */

/* The answer of the publish path for a client message (its connection is
 * still open: publish_owner_drop detached everything of a closed one). */
static void on_publish_done(void *ud, const publish_result *r)
{
    conn *c = ud;
    if (r->status == PUBLISH_BUS_DOWN || r->status == PUBLISH_RATE_LIMITED) metric_inc(m_rejected);
    chat_publish_answer(c, r);
}

static void handle_message(conn *c, client_frame *f)
{
    char idbuf[FRAME_ID_MAX + 1], room[CHAT_ROOM_MAX + 1];
    const char *id;
    if (chat_publish_gate(c, f, room, idbuf, &id, m_rejected) != 0) return;
    uint64_t t0 = mono_ns();
    script_ctx x;
    chat_script_ctx(c, room, &x);
    script_result res;
    memset(&res, 0, sizeof res);
    script_verdict v = script_on_message(g_srv.script, &x, f->body, f->body_len, id, &res);
    const char *body = f->body;
    size_t body_len = f->body_len;
    if (v == SCRIPT_REJECT) {
        metric_inc(m_rejected);
        conn_send_error(c, script_reject_code(&res), res.reason[0] ? res.reason : "rejected by policy", id);
        script_result_clear(&res);
        return;
    }
    if (v == SCRIPT_REPLACE && res.body) { body = res.body; body_len = res.body_len; }
    if (memchr(body, 0, body_len)) {
        /* only a policy can get here (frame_parse refuses a NUL body): it
         * could not be stored, so it gets no seq */
        LOGW("chat", "room %s: the policy's on_message returned a body containing U+0000: refused",
             room);
        metric_inc(m_rejected);
        conn_send_error(c, "rejected", "the policy produced a body that cannot be stored", id);
        script_result_clear(&res);
        return;
    }
    publish_msg pm = {room, id, c->ident.user, c->ident.name, body, body_len, t0,
                      .user_rate = 1};
    int rc = publish_start(&pm, &c->pubs, on_publish_done, c);
    script_result_clear(&res);
    if (rc == -2) {
        metric_inc(m_rejected);
        conn_send_error(c, "rate_limited", "too many messages, slow down", id);
        return;
    }
    if (rc < 0) {
        metric_inc(m_rejected);
        conn_send_error(c, "unavailable", "message bus unavailable; resend with the same id", id);
        return;
    }
    metric_inc(m_msgs_in);
}

/* ---- other frames -------------------------------------------------------- */

static void handle_typing(conn *c, client_frame *f)
{
    char room[CHAT_ROOM_MAX + 1];
    chat_frame_room(c, f, room);
    if (!conn_find_room(c, room)) { conn_send_error_room(c, "not_member", "join the room first", NULL, room); return; }
    script_ctx x;
    chat_script_ctx(c, room, &x);
    script_result res;
    memset(&res, 0, sizeof res);
    script_verdict v = script_on_typing(g_srv.script, &x, &res);
    script_result_clear(&res);
    if (v == SCRIPT_REJECT) { metric_inc(m_typing_dropped); return; }
    char b[JSON_IDENT_MAX + 512]; /* the user prefix, room, escaped claims */
    size_t o = (size_t)snprintf(b, sizeof b, "%s\n{\"type\":\"typing\",\"room\":\"%s\",\"user\":", c->ident.user, room);
    o += (size_t)json_escape(b + o, sizeof b - o, c->ident.user, strlen(c->ident.user));
    memcpy(b + o, ",\"name\":", 8); o += 8;
    o += (size_t)json_escape(b + o, sizeof b - o, c->ident.name, strlen(c->ident.name));
    o += (size_t)snprintf(b + o, sizeof b - o, ",\"ttl_ms\":%lld}", (long long)g_srv.typing_ttl_ms);
    bus_emit(g_srv.bus, room, "typing", b, o);
}

/* ---- read: read state (protocol.md "Read state and unread counts") ------- */

static void on_read_stored(void *ud, int status, uint64_t stored);

/* The answer of a read mark: room and connection (the connection is alive:
 * readstate_drop(c) at close cancels the callback). */
typedef struct read_wait { conn *c; char room[CHAT_ROOM_MAX + 1]; } read_wait;

static void on_read_stored(void *ud, int status, uint64_t stored)
{
    read_wait *w = ud;
    if (status == 0) {
        char b[160];
        int n = snprintf(b, sizeof b, "{\"type\":\"read_ack\",\"room\":\"%s\",\"seq\":%" PRIu64 "}",
                         w->room, stored);
        conn_send_text(w->c, b, (size_t)n);
    } else {
        conn_send_error_room(w->c, "unavailable", "read state not stored; send read again", NULL,
                             w->room);
    }
    free(w);
}

/* {"type":"read","room","seq"}: the user read the room up to seq. A member
 * only; a seq beyond what the room has delivered to this connection (its
 * head as the connection knows it) is clamped to it (docs/architecture.md
 * "Choices"). Stored (batched, monotonic) before read_ack; receipts per
 * policy: M.config.read_receipts (default true) and on_read(ctx, {seq}). */
static void handle_read(conn *c, client_frame *f)
{
    char room[CHAT_ROOM_MAX + 1];
    chat_frame_room(c, f, room);
    conn_room *cr = conn_find_room(c, room);
    if (!cr) { conn_send_error_room(c, "not_member", "join the room first", NULL, room); return; }
    if (!readstate_ready()) {
        conn_send_error_room(c, "unavailable",
                             g_srv.store ? "read state store unavailable; send read again"
                                         : "read state needs a database (CHAT_DATABASE_URL)",
                             NULL, room);
        return;
    }
    uint64_t seq = f->seq < cr->last_seq ? f->seq : cr->last_seq;
    int receipt = script_setting(g_srv.script, "read_receipts", 1) != 0;
    if (receipt) {
        script_ctx x;
        chat_script_ctx(c, room, &x);
        script_result res;
        memset(&res, 0, sizeof res);
        receipt = script_on_read(g_srv.script, &x, seq, &res) != SCRIPT_REJECT;
        script_result_clear(&res);
    }
    read_wait *w = malloc(sizeof *w);
    if (!w) { conn_send_error_room(c, "unavailable", "out of memory", NULL, room); return; }
    w->c = c;
    snprintf(w->room, sizeof w->room, "%s", room);
    if (readstate_mark(c->ident.user, c->ident.name, room, seq, receipt, c, on_read_stored, w) < 0) {
        free(w);
        conn_send_error_room(c, "unavailable", "read state store unavailable; send read again", NULL,
                             room);
    }
}

static void handle_refresh(conn *c, client_frame *f)
{
    char *tok = strndup(f->token, f->token_len);
    identity nid;
    char reason[160];
    memset(&nid, 0, sizeof nid);
    int ok = tok && auth_verify(g_srv.auth, tok, (int64_t)(now_ms() / 1000), &nid, reason, sizeof reason) == 0;
    free(tok);
    if (!ok) { conn_send_error(c, "unauthorized", reason, NULL); return; }
    if (strcmp(nid.user, c->ident.user) != 0) {
        identity_clear(&nid);
        conn_send_error(c, "unauthorized", "refresh token is for another user", NULL);
        return;
    }
    if (nid.exp <= c->ident.exp) {
        identity_clear(&nid);
        conn_send_error(c, "unauthorized", "refresh token must expire later than the current one", NULL);
        return;
    }
    conn_set_identity(c, &nid);   /* its 4001 deadline moves too */
}

static void process_frame(conn *c, const char *data, size_t len)
{
    client_frame f;
    char code[32], emsg[160];
    char *eid = NULL;
    if (frame_parse(data, len, &f, code, emsg, sizeof emsg, &eid) < 0) {
        metric_inc(m_frames[0]);
        conn_send_error_room(c, code, emsg, eid, f.err_room);   /* a join's/leave's room */
        free(eid);
        return;
    }
    if (f.type >= 1 && f.type <= FT_COUNT) metric_inc(m_frames[f.type]);
    char room[CHAT_ROOM_MAX + 1] = "";
    if (f.room) { memcpy(room, f.room, f.room_len); room[f.room_len] = 0; }
    switch (f.type) {
    case FT_MESSAGE: handle_message(c, &f); break;
    case FT_TYPING: handle_typing(c, &f); break;
    case FT_HEARTBEAT:
        conn_send_text(c, "{\"type\":\"heartbeat_ack\"}", 24);
        for (uint32_t i = 0; i < c->nrooms; i++)
            presence_touch(g_srv.presence, c->rooms[i]->r->name, c->id);
        break;
    case FT_JOIN: {
        /* every error answering the join names its room and echoes its id */
        char jid[FRAME_ID_MAX + 1];
        const char *id = NULL;
        if (f.id) { memcpy(jid, f.id, f.id_len); jid[f.id_len] = 0; id = jid; }
        if (conn_find_room(c, room)) {   /* idempotent */
            conn_send_error_room(c, "already_member", "already joined", id, room);
            break;
        }
        if (chat_admin_join_banned(c, room, id)) break;
        script_ctx x;
        chat_script_ctx(c, room, &x);
        script_result res;
        memset(&res, 0, sizeof res);
        script_verdict v = script_on_join(g_srv.script, &x, &res);
        if (v == SCRIPT_REJECT)
            conn_send_error_room(c, script_reject_code(&res),
                                 res.reason[0] ? res.reason : "join refused by policy", id, room);
        else
        {
            char ep[FRAME_EPOCH_MAX + 1] = "";
            if (f.epoch) { memcpy(ep, f.epoch, f.epoch_len); ep[f.epoch_len] = 0; }
            chat_join(c, room, f.has_since, f.since, ep[0] ? ep : NULL, 0, id);
        }
        script_result_clear(&res);
        break;
    }
    case FT_LEAVE: {
        uint32_t i;
        for (i = 0; i < c->nrooms; i++)
            if (strcmp(c->rooms[i]->r->name, room) == 0) break;
        if (i == c->nrooms) {
            char lid[FRAME_ID_MAX + 1];
            if (f.id) { memcpy(lid, f.id, f.id_len); lid[f.id_len] = 0; }
            conn_send_error_room(c, "not_member", "not a member of that room", f.id ? lid : NULL, room);
        }
        else chat_leave(c, i);
        break;
    }
    case FT_REFRESH: handle_refresh(c, &f); break;
    case FT_READ: handle_read(c, &f); break;
    case FT_EDIT:
    case FT_DELETE:
    case FT_REACT: chat_update_frame(c, &f); break;   /* chat_update.c */
    }
    frame_free(&f);
}

/* A frame that arrives while a join of c is in progress waits for it
 * (chat_hold.c; docs/architecture.md "Choices"). */
void chat_conn_frame(conn *c, const char *data, size_t len)
{
    if (chat_hold_frame(c, data, len)) return;
    process_frame(c, data, len);
}

/* ---- drain and expiry ---------------------------------------------------- */

void chat_drain_all(void)
{
    /* one hint frame, shared by every queue (out of memory: none) */
    static const char hint[] = "{\"type\":\"error\",\"code\":\"server_restart\","
                               "\"message\":\"server is restarting; reconnect with since=\"}";
    msg *m = msg_new(hint, sizeof hint - 1);
    for (conn *c = conn_first(); c; c = conn_next(c)) {
        if (conn_is_closing(c)) continue;
        /* a queue with no room left for the hint still closes 1001 (the
         * contract's drain code) after what it holds: queued over the
         * bounds the hint would close it 1008 "slow consumer" instead */
        if (m && outq_fits(&c->q, 1, msg_wire_len(m))) conn_send(c, m);
        conn_close_after_flush(c, 1001, "server restart");
    }
    if (m) msg_unref(m);
}

void chat_expire_tokens(int64_t now_s)
{
    /* O(expired): the connections come out of conn.c's deadline heap */
    for (conn *c; (c = conn_next_expired(now_s));)
        if (!conn_is_closing(c)) conn_close(c, 4001, "token expired");
}
