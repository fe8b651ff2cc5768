/* wire: see wire.h. */
#define _GNU_SOURCE
#include "wire.h"
#include "frame.h"
#include "util.h"
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *wire_message_tail(const char *id, const char *user, const char *name,
                        const char *body, size_t body_len, uint64_t ts, size_t *len)
{
    return wire_message_tail_meta(id, user, name, body, body_len, NULL, 0, ts, len);
}

char *wire_message_tail_meta(const char *id, const char *user, const char *name,
                             const char *body, size_t body_len, const char *meta,
                             size_t meta_len, uint64_t ts, size_t *len)
{
    if (!meta) meta_len = 0;
    size_t cap = 6 * (body_len + strlen(user) + strlen(name) + (id ? strlen(id) : 0)) +
                 meta_len + 136;
    char *t = malloc(cap);
    if (!t) return NULL;
    size_t o = 0;
    if (id) {
        memcpy(t, "\"id\":", 5); o = 5;
        o += (size_t)json_escape(t + o, cap - o, id, strlen(id));
        t[o++] = ',';
    }
    memcpy(t + o, "\"user\":", 7); o += 7;
    o += (size_t)json_escape(t + o, cap - o, user, strlen(user));
    memcpy(t + o, ",\"name\":", 8); o += 8;
    o += (size_t)json_escape(t + o, cap - o, name, strlen(name));
    memcpy(t + o, ",\"body\":", 8); o += 8;
    o += (size_t)json_escape(t + o, cap - o, body, body_len);
    if (meta_len) { /* raw JSON object, validated by whoever accepted it */
        memcpy(t + o, ",\"meta\":", 8); o += 8;
        memcpy(t + o, meta, meta_len); o += meta_len;
    }
    o += (size_t)snprintf(t + o, cap - o, ",\"ts\":%" PRIu64 "}", ts);
    *len = o;
    return t;
}

/* ---- message updates ----------------------------------------------------- */

const char *wire_update_kind_name(int kind)
{
    switch (kind) {
    case WIRE_EDIT: return "edit";
    case WIRE_DELETE: return "delete";
    case WIRE_REACT: return "react";
    default: return NULL;
    }
}

int wire_tail_is_update(const char *tail, size_t len)
{
    return tail && len >= 7 && memcmp(tail, "\"kind\":", 7) == 0;
}

char *wire_update_tail(int kind, const char *id, uint64_t target, const char *user,
                       const char *name, uint64_t ts, const char *body, size_t body_len,
                       const char *emoji, int on, int64_t count, size_t *len)
{
    const char *kn = wire_update_kind_name(kind);
    if (!kn) return NULL;
    if (kind != WIRE_EDIT) body_len = 0;
    size_t cap = 6 * (body_len + strlen(user) + strlen(name) + (id ? strlen(id) : 0) +
                      (emoji ? strlen(emoji) : 0)) + 200;
    char *t = malloc(cap);
    if (!t) return NULL;
    size_t o = (size_t)snprintf(t, cap, "\"kind\":\"%s\",", kn);
    if (id) {
        memcpy(t + o, "\"id\":", 5); o += 5;
        o += (size_t)json_escape(t + o, cap - o, id, strlen(id));
        t[o++] = ',';
    }
    o += (size_t)snprintf(t + o, cap - o, "\"target\":%" PRIu64 ",\"user\":", target);
    o += (size_t)json_escape(t + o, cap - o, user, strlen(user));
    memcpy(t + o, ",\"name\":", 8); o += 8;
    o += (size_t)json_escape(t + o, cap - o, name, strlen(name));
    o += (size_t)snprintf(t + o, cap - o, ",\"ts\":%" PRIu64, ts);
    if (kind == WIRE_EDIT) {
        memcpy(t + o, ",\"body\":", 8); o += 8;
        o += (size_t)json_escape(t + o, cap - o, body ? body : "", body_len);
        t[o++] = '}';
    } else if (kind == WIRE_DELETE) {
        t[o++] = '}';
    } else {
        memcpy(t + o, ",\"emoji\":", 9); o += 9;
        o += (size_t)json_escape(t + o, cap - o, emoji ? emoji : "", emoji ? strlen(emoji) : 0);
        o += (size_t)snprintf(t + o, cap - o, ",\"on\":%s,\"count\":", on ? "true" : "false");
        if (count >= 0) o += (size_t)snprintf(t + o, cap - o, "%" PRId64 "}", count);
    }
    t[o] = 0;
    *len = o;
    return t;
}

char *wire_erased_tail(int kind, const char *id, uint64_t target, const char *user,
                       const char *name, uint64_t ts, size_t *len)
{
    if (kind != WIRE_MESSAGE && kind != WIRE_EDIT) return NULL;
    size_t cap = 6 * (strlen(user) + strlen(name) + (id ? strlen(id) : 0)) + 160;
    char *t = malloc(cap);
    if (!t) return NULL;
    size_t o = 0;
    if (kind == WIRE_EDIT) { memcpy(t, "\"kind\":\"edit\",", 14); o = 14; }
    if (id) {
        memcpy(t + o, "\"id\":", 5); o += 5;
        o += (size_t)json_escape(t + o, cap - o, id, strlen(id));
        t[o++] = ',';
    }
    if (kind == WIRE_EDIT) o += (size_t)snprintf(t + o, cap - o, "\"target\":%" PRIu64 ",", target);
    memcpy(t + o, "\"user\":", 7); o += 7;
    o += (size_t)json_escape(t + o, cap - o, user, strlen(user));
    memcpy(t + o, ",\"name\":", 8); o += 8;
    o += (size_t)json_escape(t + o, cap - o, name, strlen(name));
    if (kind == WIRE_EDIT)
        o += (size_t)snprintf(t + o, cap - o, ",\"ts\":%" PRIu64 ",\"deleted\":true}", ts);
    else
        o += (size_t)snprintf(t + o, cap - o, ",\"deleted\":true,\"ts\":%" PRIu64 "}", ts);
    *len = o;
    return t;
}

/* A frame of wire_message_frame, parsed (NULL when it is not one). A
 * \u0000 in a string (the API's meta held one) is no reason to fail, nor
 * an integer beyond 64 bits in meta (frame.h frame_json_load). */
static json_t *frame_json(const msg *m)
{
    if (m->kind != MSG_MESSAGE || !m->seq) return NULL;
    static const char *const ints[] = {"target", "ts"};
    json_t *o = frame_json_load((const char *)msg_payload((msg *)m), m->len, JSON_ALLOW_NUL, ints, 2, NULL);
    if (o && !json_is_object(o)) { json_decref(o); o = NULL; }
    return o;
}

static const char *str_of(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static uint64_t uint_of(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

static const char msg_pfx[] = "{\"type\":\"message\",", upd_pfx[] = "{\"type\":\"message_update\",";

/* An update frame's kind (the raw JSON string, quotes included) and
 * target: 1, else 0 (not an update frame of wire_message_frame). chatd
 * built the frame (wire_update_tail): its members are read in place
 * (json_raw_member), no parse per replayed update. */
static int update_of(const msg *m, const char **kind, size_t *kind_len, uint64_t *target)
{
    const char *s = (const char *)msg_payload((msg *)m);
    size_t ko, to, tl;
    if (m->kind != MSG_MESSAGE || !m->seq) return 0;
    if (m->len < sizeof upd_pfx - 1 || memcmp(s, upd_pfx, sizeof upd_pfx - 1) != 0) return 0;
    if (json_raw_member(s, m->len, "kind", &ko, kind_len) != 1 ||
        json_raw_member(s, m->len, "target", &to, &tl) != 1 || seq_parse(s + to, tl, target) != 0)
        return 0;
    *kind = s + ko;
    return 1;
}

uint64_t wire_frame_content_of(const msg *m, uint64_t *deletes)
{
    const unsigned char *p = msg_payload((msg *)m);
    const char *k;
    size_t kl;
    uint64_t target = 0;
    *deletes = 0;
    if (m->kind != MSG_MESSAGE || !m->seq) return 0;
    if (m->len >= sizeof msg_pfx - 1 && !memcmp(p, msg_pfx, sizeof msg_pfx - 1)) return m->seq;
    if (!update_of(m, &k, &kl, &target)) return 0;
    if (kl == 8 && !memcmp(k, "\"delete\"", 8)) *deletes = target;
    else if (kl == 6 && !memcmp(k, "\"edit\"", 6)) return target;
    return 0;
}

uint64_t wire_update_target(const msg *m)
{
    const char *k;
    size_t kl;
    uint64_t target = 0;
    return update_of(m, &k, &kl, &target) ? target : 0;
}

msg *wire_erased_frame(const char *room, const msg *m)
{
    /* a frame that cannot be read back (it never happens to frames chatd
     * built; if it did) still goes out erased, as a message with no
     * identity: never the original body */
    json_t *o = frame_json(m);
    const char *type = o ? str_of(o, "type") : NULL, *kn = o ? str_of(o, "kind") : NULL;
    const char *user = o ? str_of(o, "user") : NULL, *name = o ? str_of(o, "name") : NULL;
    int kind = !o || (type && !strcmp(type, "message")) ? WIRE_MESSAGE
             : type && !strcmp(type, "message_update") && kn && !strcmp(kn, "edit") ? WIRE_EDIT : -1;
    if (kind < 0) { json_decref(o); return NULL; }   /* a delete, a react: nothing to erase */
    msg *out = NULL;
    size_t tl;
    char *t = wire_erased_tail(kind, o ? str_of(o, "id") : NULL, o ? uint_of(o, "target") : 0,
                               user ? user : "", name ? name : "", o ? uint_of(o, "ts") : 0, &tl);
    if (t) out = wire_message_frame(room, m->seq, t, tl);
    free(t);
    json_decref(o);
    return out;
}

msg *wire_message_frame(const char *room, uint64_t seq, const char *tail, size_t len)
{
    char head[160];
    int hl = snprintf(head, sizeof head, "{\"type\":\"%s\",\"room\":\"%s\",\"seq\":%" PRIu64 ",",
                      wire_tail_is_update(tail, len) ? "message_update" : "message", room, seq);
    msg *m = msg_alloc((size_t)hl + len);
    if (!m) return NULL;
    memcpy(msg_payload(m), head, (size_t)hl);
    memcpy(msg_payload(m) + hl, tail, len);
    msg_seal(m, (size_t)hl + len);
    m->kind = MSG_MESSAGE;
    m->seq = seq;
    m->born_ns = mono_ns();
    return m;
}

char *wire_users_json(const char *prefix, const presence_user *u, size_t n, size_t *len)
{
    size_t cap = strlen(prefix) + 32 + n * (JSON_IDENT_MAX + 32);
    char *b = malloc(cap);
    if (!b) return NULL;
    size_t o = (size_t)snprintf(b, cap, "%s\"users\":[", prefix);
    for (size_t i = 0; i < n; i++) {
        o += (size_t)snprintf(b + o, cap - o, "%s{\"user\":", i ? "," : "");
        o += (size_t)json_escape(b + o, cap - o, u[i].user, strnlen(u[i].user, 127));
        memcpy(b + o, ",\"name\":", 8);
        o += 8;
        o += (size_t)json_escape(b + o, cap - o, u[i].name, strnlen(u[i].name, 127));
        b[o++] = '}';
    }
    memcpy(b + o, "]}", 2);
    *len = o + 2;
    return b;
}

size_t wire_epoch_field(char *b, size_t cap, const char *epoch)
{
    if (!epoch || !*epoch || cap < 16) { if (cap) b[0] = 0; return 0; }
    size_t o = (size_t)snprintf(b, cap, ",\"epoch\":");
    long w = json_escape(b + o, cap - o, epoch, strlen(epoch));
    if (w < 0) { b[0] = 0; return 0; }
    o += (size_t)w;
    b[o] = 0;
    return o;
}

size_t wire_ack(char *b, size_t cap, const char *id, const char *room, uint64_t seq)
{
    if (cap < 64 + 6 * (id ? strlen(id) : 0) + strlen(room)) return 0;
    size_t o = (size_t)snprintf(b, cap, "{\"type\":\"ack\",");
    if (id) {
        memcpy(b + o, "\"id\":", 5); o += 5;
        o += (size_t)json_escape(b + o, cap - o, id, strlen(id));
        b[o++] = ',';
    }
    o += (size_t)snprintf(b + o, cap - o, "\"room\":\"%s\",\"seq\":%" PRIu64 "}", room, seq);
    return o;
}
