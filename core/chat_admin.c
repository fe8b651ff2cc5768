/* chat_admin: see chat_admin.h. */
#define _GNU_SOURCE
#include "chat_admin.h"
#include "adminstore.h"
#include "bans.h"
#include "chat_join.h"
#include "ctl.h"
#include "log.h"
#include "metrics.h"
#include "room.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static metric_counter *m_closed_disconnect, *m_closed_ban, *m_removed_ban;
static adminstore *g_store;

/* A close reason of whole UTF-8 characters that fits a conn's buffer. */
static void close_reason(char *out, size_t cap, const char *reason, const char *dflt)
{
    const char *r = reason && *reason ? reason : dflt;
    size_t l = utf8_cut(r, cap - 1);
    memcpy(out, r, l);
    out[l] = 0;
}

static int is_user(const conn *c, const char *user)
{
    return !conn_is_closing(c) && strcmp(c->ident.user, user) == 0;
}

/* id: the join's, when this answers one */
static void send_banned(conn *c, const char *room, const char *reason, const char *id)
{
    conn_send_error_room(c, "banned", reason && *reason ? reason : "banned from this room", id,
                         room);
}

static long op_disconnect(void *ud, json_t *msg)
{
    (void)ud;
    const char *user = json_string_value(json_object_get(msg, "user"));
    if (!user) return -1;
    char reason[CONN_CLOSE_REASON_MAX];
    close_reason(reason, sizeof reason, json_string_value(json_object_get(msg, "reason")),
                 "disconnected by the server");
    long n = 0;
    for (conn *c = conn_first(); c; c = conn_next(c))
        if (is_user(c, user)) {
            conn_close(c, CHAT_ADMIN_CLOSE, reason);
            metric_inc(m_closed_disconnect);
            n++;
        }
    if (n) LOGI("admin", "user %s: %ld connection(s) closed (server API disconnect)", user, n);
    return n;
}

static long op_ban(void *ud, json_t *msg)
{
    (void)ud;
    const char *user = json_string_value(json_object_get(msg, "user"));
    const char *room = json_string_value(json_object_get(msg, "room"));
    const char *why = json_string_value(json_object_get(msg, "reason"));
    json_t *until = json_object_get(msg, "until");
    if (!user || !json_is_integer(until) || json_integer_value(until) <= 0) return -1;
    if (room && !*room) room = NULL;
    if (bans_put(user, room, (uint64_t)json_integer_value(until), why) < 0) return -1;
    if ((uint64_t)json_integer_value(until) <= now_ms()) return 0; /* expired in transit */
    char reason[CONN_CLOSE_REASON_MAX];
    close_reason(reason, sizeof reason, why, "banned");
    long n = 0;
    for (conn *c = conn_first(); c; c = conn_next(c)) {
        if (!is_user(c, user)) continue;
        if (!room) {
            conn_close(c, CHAT_ADMIN_CLOSE, reason);
            metric_inc(m_closed_ban);
            n++;
            continue;
        }
        for (uint32_t i = 0; i < c->nrooms; i++) {
            if (strcmp(c->rooms[i]->r->name, room) != 0) continue;
            chat_leave(c, i);
            send_banned(c, room, why, NULL);
            metric_inc(m_removed_ban);
            n++;
            break;
        }
    }
    LOGI("admin", "user %s banned from %s until %lld: %ld connection(s) %s", user,
         room ? room : "every room", (long long)json_integer_value(until), n,
         room ? "removed from the room" : "closed");
    return n;
}

static long op_unban(void *ud, json_t *msg)
{
    (void)ud;
    const char *user = json_string_value(json_object_get(msg, "user"));
    const char *room = json_string_value(json_object_get(msg, "room"));
    if (!user) return -1;
    return bans_lift(user, room && *room ? room : NULL, now_ms());
}

static long op_count(void *ud, json_t *msg)
{
    (void)ud;
    const char *name = json_string_value(json_object_get(msg, "room"));
    room *r = name ? room_find(name) : NULL;
    return r ? (long)r->nmembers : 0;
}

/* Bans this node learnt late (a load after its channel was down): applied
 * to its connections as a fresh ban would be. */
static void enforce_all(void)
{
    uint64_t now = now_ms();
    for (conn *c = conn_first(); c; c = conn_next(c)) {
        if (conn_is_closing(c)) continue;
        const ban *b = bans_match(c->ident.user, NULL, now);
        if (b) {
            char reason[CONN_CLOSE_REASON_MAX];
            close_reason(reason, sizeof reason, b->reason, "banned");
            conn_close(c, CHAT_ADMIN_CLOSE, reason);
            metric_inc(m_closed_ban);
            continue;
        }
        for (uint32_t i = 0; i < c->nrooms;) {
            char room[CHAT_ROOM_MAX + 1];
            snprintf(room, sizeof room, "%s", c->rooms[i]->r->name);
            b = bans_match(c->ident.user, room, now);
            if (!b) { i++; continue; }
            char why[BAN_REASON_MAX + 1];
            snprintf(why, sizeof why, "%s", b->reason);
            chat_leave(c, i);
            send_banned(c, room, why, NULL);
            metric_inc(m_removed_ban);
        }
    }
}

static void on_bans(void *ud, int status, const ban_entry *e, size_t n)
{
    (void)ud;
    if (status < 0) {
        bans_load_abort();
        LOGW("admin", "bans could not be read from Redis; this node keeps its copy");
        return;
    }
    bans_load_apply(e, n);
    LOGI("admin", "bans read from Redis: %zu in force", n);
    enforce_all();
}

void chat_admin_resync(void *ud)
{
    (void)ud;
    if (!g_store) return;
    bans_load_begin();
    if (adminstore_bans_load(g_store, on_bans, NULL) != 0) bans_load_abort();
}

void chat_admin_set_store(adminstore *a) { g_store = a; }

void chat_admin_init(void)
{
    bans_init();
    m_closed_disconnect = metrics_counter("chat_admin_actions_total",
                                          "Connections acted on by the server API on this node, by action",
                                          "action=\"disconnect\"");
    m_closed_ban = metrics_counter("chat_admin_actions_total", NULL, "action=\"ban_close\"");
    m_removed_ban = metrics_counter("chat_admin_actions_total", NULL, "action=\"ban_leave\"");
    ctl_on("disconnect", op_disconnect, NULL);
    ctl_on("ban", op_ban, NULL);
    ctl_on("unban", op_unban, NULL);
    ctl_on("count", op_count, NULL);
    ctl_on_resync(chat_admin_resync, NULL);
}

int chat_admin_join_banned(conn *c, const char *room, const char *id)
{
    const ban *b = bans_match(c->ident.user, room, now_ms());
    if (!b) return 0;
    send_banned(c, room, b->reason, id);
    return 1;
}

int chat_admin_open_banned(conn *c)
{
    const ban *b = bans_match(c->ident.user, c->url_room, now_ms());
    if (!b) return 0;
    char reason[CONN_CLOSE_REASON_MAX];
    close_reason(reason, sizeof reason, b->reason, "banned");
    conn_close(c, CHAT_ADMIN_CLOSE, reason);
    return 1;
}
