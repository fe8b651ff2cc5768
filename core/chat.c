/* chat: see chat.h. */
#define _GNU_SOURCE
#include "chat.h"
#include "chat_hold.h"
#include "frame.h"
#include "hash.h"
#include "hmap.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "util.h"
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct join_op {
    conn_room *cr;          /* NULL once cancelled */
    int first;              /* the URL room at connect: send welcome */
    int has_since;
    uint64_t since;
    int tried_store;
    uint64_t head;
    msg **msgs;             /* replayed frames, in seq order */
    uint32_t n, cap;
    int gap;                /* tell the client gap_too_large */
    int unavailable;
    int checked;            /* since/epoch compared with the room's head */
    char epoch[BUS_EPOCH_MAX + 1];        /* the room's, "" when unknown */
    char want_epoch[BUS_EPOCH_MAX + 1];   /* the client's (with since), "" when none */
} join_op;

typedef struct pub_op {
    conn *c;                /* NULL once the connection went away */
    struct pub_op *next, *prev;
    char room[CHAT_ROOM_MAX + 1];
    char *id;
    char *tail; size_t tail_len;
    char *body; size_t body_len;
    char user[128], name[128];
    uint64_t ts, seq, t0;
} pub_op;

static metric_counter *m_frames[8], *m_msgs_in, *m_rejected, *m_typing_dropped;
static void process_frame(conn *c, const char *data, size_t len);
static metric_hist *m_publish, *m_ack;

void chat_init(void)
{
    static const char *types[] = {"invalid", "message", "typing", "heartbeat", "join", "leave", "refresh"};
    for (int i = 0; i < 7; i++) {
        char l[48];
        snprintf(l, sizeof l, "type=\"%s\"", types[i]);
        m_frames[i] = metrics_counter("chat_frames_in_total", "Client frames received, by type", l);
    }
    m_msgs_in = metrics_counter("chat_messages_in_total", "Client message frames accepted for publish", NULL);
    m_rejected = metrics_counter("chat_messages_rejected_total", "Client messages refused (policy, limits, unavailable)", NULL);
    m_typing_dropped = metrics_counter("chat_typing_dropped_total", "Typing frames dropped by policy", NULL);
    chat_hold_init(process_frame);
    m_publish = metrics_histogram("chat_publish_duration_seconds", "Client frame received -> seq assigned",
                                  NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    m_ack = metrics_histogram("chat_ack_duration_seconds", "Client frame received -> ack sent (durable)",
                              NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
}

/* ---- frame builders ---------------------------------------------------- */

char *chat_build_tail(const char *id, const char *user, const char *name,
                      const char *body, size_t body_len, uint64_t ts, size_t *len)
{
    size_t cap = 6 * (body_len + strlen(user) + strlen(name) + (id ? strlen(id) : 0)) + 128;
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
    o += (size_t)snprintf(t + o, cap - o, ",\"ts\":%" PRIu64 "}", ts);
    *len = o;
    return t;
}

msg *chat_message_frame(const char *room, uint64_t seq, const char *tail, size_t len)
{
    char head[160];
    int hl = snprintf(head, sizeof head, "{\"type\":\"message\",\"room\":\"%s\",\"seq\":%" PRIu64 ",",
                      room, seq);
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

static void script_ctx_of(conn *c, const char *room, script_ctx *x)
{
    x->user = c->ident.user;
    x->name = c->ident.name;
    x->claims_json = c->ident.claims_json;
    x->room = room;
    x->node = g_srv.cfg.node_id;
    x->now_ms = now_ms();
}

static const char *reject_code(const script_result *res)
{
    if (!res->code[0] || strcmp(res->code, "script_error") == 0) return "rejected";
    return res->code;
}

char *chat_users_json(const char *prefix, const presence_user *u, size_t n, size_t *len)
{
    size_t cap = strlen(prefix) + 32 + n * 800;
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

/* The room a frame is about: its "room" field, else the URL's room. */
static void frame_room(const conn *c, const client_frame *f, char room[CHAT_ROOM_MAX + 1])
{
    if (f->room) { memcpy(room, f->room, f->room_len); room[f->room_len] = 0; }
    else snprintf(room, CHAT_ROOM_MAX + 1, "%s", c->url_room);
}

/* ---- membership -------------------------------------------------------- */

static void join_op_free(join_op *op)
{
    for (uint32_t i = 0; i < op->n; i++) msg_unref(op->msgs[i]);
    free(op->msgs);
    free(op);
}

static void op_push(join_op *op, msg *m)
{
    if (!m) return;
    if (op->n == op->cap) {
        uint32_t nc = op->cap ? op->cap * 2 : 16;
        msg **nm = realloc(op->msgs, sizeof *nm * nc);
        if (!nm) { msg_unref(m); return; }
        op->msgs = nm;
        op->cap = nc;
    }
    op->msgs[op->n++] = m;
}

static void deliver(conn_room *cr, msg *m)
{
    if (m->seq && m->seq <= cr->last_seq) return;   /* replayed already */
    if (m->seq) cr->last_seq = m->seq;
    conn_send(cr->c, m);
}

/* An error about one room (gap_too_large): carries "room" so a client with
 * several rooms knows which one to page. */
static void send_room_error(conn *c, const char *room, const char *code, const char *text)
{
    char b[512];
    int n = snprintf(b, sizeof b, "{\"type\":\"error\",\"code\":\"%s\",\"room\":\"%s\",\"message\":\"%s\"}",
                     code, room, text);
    conn_send_text(c, b, (size_t)n);
}

/* ',"epoch":"<epoch>"' into b (empty when unknown); returns its length. */
static size_t epoch_json(char *b, size_t cap, const char *epoch)
{
    if (!epoch || !*epoch || cap < 16) { if (cap) b[0] = 0; return 0; }
    size_t o = (size_t)snprintf(b, cap, ",\"epoch\":");
    long w = json_escape(b + o, cap - o, epoch, strlen(epoch));
    if (w < 0) { b[0] = 0; return 0; }
    o += (size_t)w;
    b[o] = 0;
    return o;
}

static void send_presence_state(conn_room *cr, const presence_user *u, size_t n, uint64_t head,
                                const char *epoch)
{
    char head_json[768], ep[BUS_EPOCH_MAX * 6 + 16];
    epoch_json(ep, sizeof ep, epoch);
    snprintf(head_json, sizeof head_json, "{\"type\":\"presence_state\",\"room\":\"%s\",\"seq\":%" PRIu64 "%s,",
             cr->r->name, head, ep);
    size_t len;
    char *b = chat_users_json(head_json, u, n, &len);
    if (!b) return;
    conn_send_text(cr->c, b, len);
    free(b);
}

static void join_finish(join_op *op, const presence_user *u, size_t n)
{
    conn_room *cr = op->cr;
    send_presence_state(cr, u, n, op->head, op->epoch);
    if (op->gap == 2)
        send_room_error(cr->c, cr->r->name, "gap_too_large",
                        "since is not a seq of this room's current epoch; page history over HTTP");
    else if (op->gap)
        send_room_error(cr->c, cr->r->name, "gap_too_large", "the recovery buffer no longer reaches since; page history over HTTP");
    if (op->unavailable) conn_send_error(cr->c, "unavailable", "recovery is unavailable right now", NULL);
    for (uint32_t i = 0; i < op->n; i++) deliver(cr, op->msgs[i]);
    for (uint32_t i = 0; i < cr->nheld; i++) {
        deliver(cr, cr->held[i]);
        msg_unref(cr->held[i]);
    }
    free(cr->held);
    cr->held = NULL;
    cr->nheld = cr->capheld = 0;
    cr->live = 1;
    cr->op = NULL;
    join_op_free(op);
    chat_hold_join_done(cr->c);
}

static void on_presence_list(void *ud, int status, const presence_user *u, size_t n)
{
    join_op *op = ud;
    if (!op->cr) { join_op_free(op); return; }
    join_finish(op, status == 0 ? u : NULL, status == 0 ? n : 0);
}

static void send_welcome(conn *c, uint64_t head, const char *epoch)
{
    char b[1536], ep[BUS_EPOCH_MAX * 6 + 16];
    epoch_json(ep, sizeof ep, epoch);
    size_t o = (size_t)snprintf(b, sizeof b, "{\"type\":\"welcome\",\"user\":");
    o += (size_t)json_escape(b + o, sizeof b - o, c->ident.user, strlen(c->ident.user));
    memcpy(b + o, ",\"name\":", 8); o += 8;
    o += (size_t)json_escape(b + o, sizeof b - o, c->ident.name, strlen(c->ident.name));
    o += (size_t)snprintf(b + o, sizeof b - o,
                          ",\"node\":\"%s\",\"room\":\"%s\",\"heartbeat_ms\":%lld,\"presence_ttl_ms\":%lld,\"seq\":%" PRIu64 "%s}",
                          g_srv.cfg.node_id, c->url_room, (long long)g_srv.heartbeat_ms,
                          (long long)g_srv.presence_ttl_ms, head, ep);
    conn_send_text(c, b, o);
}

static void join_stage2(join_op *op)
{
    conn_room *cr = op->cr;
    if (!cr->c->welcomed && op->first) {
        send_welcome(cr->c, op->head, op->epoch);
        cr->c->welcomed = 1;
    }
    /* live delivery starts after the head unless since was honoured (a
     * refused since is not a seq of this room's numbering) */
    if (!op->has_since || op->gap) cr->last_seq = op->head;
    if (presence_list(g_srv.presence, cr->r->name, on_presence_list, op) < 0)
        join_finish(op, NULL, 0);
}

static void on_replay(void *ud, int status, const bus_entry *e, size_t n, uint64_t head,
                      const char *epoch);

static void on_store_rows(void *ud, int status, const store_row *rows, size_t n)
{
    join_op *op = ud;
    if (!op->cr) { join_op_free(op); return; }
    if (status < 0 || n == 0 || rows[0].seq != op->since + 1) {
        op->gap = status >= 0;
        op->unavailable = status < 0;
        join_stage2(op);
        return;
    }
    const char *room = op->cr->r->name;
    /* only a contiguous run counts: a hole in history (a row not stored yet)
     * must come from the recent buffer or be reported, never skipped */
    size_t run = 1;
    while (run < n && rows[run].seq == rows[run - 1].seq + 1) run++;
    n = run;
    for (size_t i = 0; i < n; i++) {
        size_t tl;
        char *t = chat_build_tail(rows[i].client_id, rows[i].user, rows[i].name, rows[i].body,
                                  rows[i].body_len, rows[i].ts, &tl);
        if (!t) continue;
        op_push(op, chat_message_frame(room, rows[i].seq, t, tl));
        free(t);
    }
    op->since = rows[n - 1].seq;
    /* the rest (newer than what Postgres had) from the recent buffer */
    if (bus_replay(g_srv.bus, room, op->since, (size_t)g_srv.cfg.replay_max, on_replay, op) < 0) {
        op->unavailable = 1;
        join_stage2(op);
    }
}

static void on_replay(void *ud, int status, const bus_entry *e, size_t n, uint64_t head,
                      const char *epoch)
{
    join_op *op = ud;
    if (!op->cr) { join_op_free(op); return; }
    if (head > op->head) op->head = head;
    if (status >= 0 && epoch && *epoch) snprintf(op->epoch, sizeof op->epoch, "%s", epoch);
    if (status >= 0 && !op->checked && op->has_since) {
        /* a since of another epoch (the room's seqs restarted: Redis lost
         * its data without a database) or beyond the head cannot be
         * honoured: the client pages history instead (gap_too_large) */
        op->checked = 1;
        if ((op->want_epoch[0] && strcmp(op->want_epoch, op->epoch) != 0) || op->since > head) {
            op->gap = 2;
            join_stage2(op);
            return;
        }
    }
    if (status == 0) {
        for (size_t i = 0; i < n; i++)
            op_push(op, chat_message_frame(op->cr->r->name, e[i].seq, e[i].tail, e[i].len));
    } else if (status == 1) {
        uint64_t need = head > op->since ? head - op->since : 0;
        if (g_srv.store && !op->tried_store && need <= (uint64_t)g_srv.cfg.replay_max) {
            op->tried_store = 1;
            if (store_range(g_srv.store, op->cr->r->name, op->since, UINT64_MAX,
                            (int)g_srv.cfg.replay_max, 0, on_store_rows, op) == 0)
                return;
        }
        op->gap = 1;
    } else {
        op->unavailable = op->has_since;
    }
    join_stage2(op);
}

static int join_room(conn *c, const char *name, int has_since, uint64_t since, const char *epoch,
                     int first)
{
    conn_room *cr = conn_find_room(c, name);
    if (cr) return 0;    /* already a member: nothing to do */
    if (c->nrooms >= (uint32_t)g_srv.max_rooms) {
        conn_send_error(c, "too_many_rooms", "joined rooms limit reached", NULL);
        return -1;
    }
    if (c->nrooms == c->caprooms) {
        uint32_t nc = c->caprooms ? c->caprooms * 2 : 2;
        conn_room **nr = realloc(c->rooms, sizeof *nr * nc);
        if (!nr) return -1;
        c->rooms = nr;
        c->caprooms = nc;
    }
    cr = calloc(1, sizeof *cr);
    join_op *op = calloc(1, sizeof *op);
    int created;
    room *r = cr && op ? room_get(name, &created) : NULL;
    if (!r || room_add_member(r, cr) < 0) {
        if (r && !r->nmembers) room_remove_member(r, cr);
        free(cr);
        free(op);
        conn_send_error(c, "unavailable", "out of memory", NULL);
        return -1;
    }
    if (created) bus_subscribe(g_srv.bus, r->name);
    cr->c = c;
    cr->r = r;
    cr->op = op;
    cr->last_seq = has_since ? since : 0;
    c->rooms[c->nrooms++] = cr;
    presence_add(g_srv.presence, r->name, c->id, c->ident.user, c->ident.name);
    op->cr = cr;
    op->first = first;
    op->has_since = has_since;
    op->since = since;
    if (has_since && epoch) snprintf(op->want_epoch, sizeof op->want_epoch, "%s", epoch);
    if (bus_replay(g_srv.bus, r->name, has_since ? since : UINT64_MAX, (size_t)g_srv.cfg.replay_max,
                   on_replay, op) < 0) {
        op->unavailable = has_since;
        join_stage2(op);
    }
    return 0;
}

static void leave_room(conn *c, uint32_t idx)
{
    conn_room *cr = c->rooms[idx];
    char name[CHAT_ROOM_MAX + 1];
    snprintf(name, sizeof name, "%s", cr->r->name);
    if (cr->op) cr->op->cr = NULL;     /* the pending callback frees it */
    for (uint32_t i = 0; i < cr->nheld; i++) msg_unref(cr->held[i]);
    free(cr->held);
    if (room_remove_member(cr->r, cr)) bus_unsubscribe(g_srv.bus, name);
    presence_remove(g_srv.presence, name, c->id);
    c->rooms[idx] = c->rooms[--c->nrooms];
    free(cr);
    script_ctx x;
    script_ctx_of(c, name, &x);
    script_on_leave(g_srv.script, &x);
}

/* The value of a query argument of the upgrade request ("" when absent
 * or longer than n - 1). */
static void url_arg(struct lws *wsi, const char *name, char *out, size_t n)
{
    char frag[256];
    size_t nl = strlen(name);
    out[0] = 0;
    for (int i = 0; i < 32; i++) {
        int len = lws_hdr_copy_fragment(wsi, frag, sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (len < 0) break;
        if ((size_t)len > nl && strncmp(frag, name, nl) == 0 && frag[nl] == '=') {
            if (strlen(frag + nl + 1) < n) snprintf(out, n, "%s", frag + nl + 1);
            return;
        }
    }
}

void chat_conn_open(conn *c)
{
    /* epoch= of the URL (with since=): read here, while lws still has the
     * request's headers (the ESTABLISHED callback) */
    char epoch[BUS_EPOCH_MAX + 1] = "";
    if (c->has_since) url_arg(c->wsi, "epoch", epoch, sizeof epoch);
    join_room(c, c->url_room, c->has_since, c->since, epoch[0] ? epoch : NULL, 1);
}

void chat_conn_closed(conn *c)
{
    c->closed = 1;
    chat_hold_conn_closed(c);
    while (c->nrooms) leave_room(c, c->nrooms - 1);
    for (pub_op *p = c->pubs; p; p = p->next) p->c = NULL;
    c->pubs = NULL;
    script_ctx x;
    script_ctx_of(c, NULL, &x);
    script_on_disconnect(g_srv.script, &x);
    conn_destroy(c);
}

/* ---- receipt times ------------------------------------------------------
 * Broadcast lag is measured from the moment this node received a message
 * from its client. The message comes back from the bus (its own one path)
 * as the same tail bytes, so the receipt time is kept under a hash of the
 * room and tail until the delivery arrives (or the publish fails). Messages
 * published on another node are timed from their delivery on this node. */

typedef struct receipt { uint64_t t0; } receipt;
static hmap g_receipts;

static void receipt_key(const char *room, const char *tail, size_t len, char key[24])
{
    uint64_t h = hash_bytes_more(hash_bytes_more(hash_str(room), "|", 1), tail, len);
    snprintf(key, 24, "%016" PRIx64, h);
}

static void receipt_put(const char *room, const char *tail, size_t len, uint64_t t0)
{
    char key[24];
    receipt_key(room, tail, len, key);
    receipt *r = malloc(sizeof *r);
    if (!r) return;
    r->t0 = t0;
    free(hmap_get(&g_receipts, key));
    if (hmap_put(&g_receipts, key, r) < 0) free(r);
}

/* Returns the receipt time (0 when unknown) and forgets it. */
static uint64_t receipt_take(const char *room, const char *tail, size_t len)
{
    if (!g_receipts.count) return 0;
    char key[24];
    receipt_key(room, tail, len, key);
    receipt *r = hmap_del(&g_receipts, key);
    uint64_t t0 = r ? r->t0 : 0;
    free(r);
    return t0;
}

void chat_shutdown(void)
{
    chat_hold_shutdown();
    for (size_t i = 0; i < g_receipts.cap; i++)
        if (hmap_live(&g_receipts, i)) free(g_receipts.slots[i].val);
    hmap_free(&g_receipts);
}

/* Forgets receipts older than max_age_ns (deliveries that never came:
 * publish failed, room unsubscribed meanwhile). Called from the tick. */
static void receipts_expire(uint64_t now, uint64_t max_age_ns)
{
    for (size_t i = 0; i < g_receipts.cap; i++) {
        if (!hmap_live(&g_receipts, i)) continue;
        receipt *r = g_receipts.slots[i].val;
        if (now - r->t0 > max_age_ns) {
            char key[24];
            snprintf(key, sizeof key, "%s", g_receipts.slots[i].key);
            free(hmap_del(&g_receipts, key));
        }
    }
}

/* ---- publish ------------------------------------------------------------ */

static void pub_unlink(pub_op *p)
{
    if (!p->c) return;
    if (p->prev) p->prev->next = p->next; else p->c->pubs = p->next;
    if (p->next) p->next->prev = p->prev;
    p->c = NULL;
}

static void pub_free(pub_op *p)
{
    pub_unlink(p);
    free(p->id);
    free(p->tail);
    free(p->body);
    free(p);
}

static void send_ack(pub_op *p)
{
    if (!p->c) return;
    char b[512];
    size_t o = (size_t)snprintf(b, sizeof b, "{\"type\":\"ack\",");
    if (p->id) {
        memcpy(b + o, "\"id\":", 5); o += 5;
        o += (size_t)json_escape(b + o, sizeof b - o, p->id, strlen(p->id));
        b[o++] = ',';
    }
    o += (size_t)snprintf(b + o, sizeof b - o, "\"room\":\"%s\",\"seq\":%" PRIu64 "}", p->room, p->seq);
    conn_send_text(p->c, b, o);
    metric_observe(m_ack, (double)(mono_ns() - p->t0) / 1e9);
}

static void on_stored(void *ud, int status)
{
    pub_op *p = ud;
    /* 0: durable, not a hole; -2: another message holds the seq in history
     * (the store logged and counted it): never acked, and the seq is not
     * offered to the backfill again (it has a row) */
    if (status == 0 || status == -2) bus_mark_stored(g_srv.bus, p->room, p->seq);
    if (status == 0) send_ack(p);
    else if (status == -2) {
        if (p->id) bus_forget_id(g_srv.bus, p->room, p->id, p->seq); /* a resend gets a new seq */
        if (p->c) conn_send_error(p->c, "unavailable", "seq conflict in history; resend with the same id", p->id);
    } else if (p->c) conn_send_error(p->c, "unavailable", "history store unavailable; resend with the same id", p->id);
    pub_free(p);
}

static void on_published(void *ud, int status, uint64_t seq, int duplicate)
{
    pub_op *p = ud;
    if (status < 0 || duplicate) receipt_take(p->room, p->tail, p->tail_len);  /* no delivery comes */
    if (status < 0) {
        metric_inc(m_rejected);
        if (p->c) conn_send_error(p->c, "unavailable", "message bus unavailable; resend with the same id", p->id);
        pub_free(p);
        return;
    }
    metric_observe(m_publish, (double)(mono_ns() - p->t0) / 1e9);
    p->seq = seq;
    if (g_srv.store) {
        store_row row = {p->room, seq, p->id, p->user, p->name, p->body, p->body_len, p->ts};
        if (store_write(g_srv.store, &row, on_stored, p) < 0) {
            if (p->c) conn_send_error(p->c, "unavailable", "history store backlog full; resend with the same id", p->id);
            pub_free(p);
        }
        return;
    }
    send_ack(p);
    pub_free(p);
}

static void handle_message(conn *c, client_frame *f)
{
    char idbuf[FRAME_ID_MAX + 1] = "";
    const char *id = NULL;
    if (f->id) {
        memcpy(idbuf, f->id, f->id_len);
        idbuf[f->id_len] = 0;
        id = idbuf;
    }
    char room[CHAT_ROOM_MAX + 1];
    frame_room(c, f, room);
    if (!conn_find_room(c, room)) {
        metric_inc(m_rejected);
        conn_send_error(c, "not_member", "join the room first", id);
        return;
    }
    if (!bus_ready(g_srv.bus) ||
        (g_srv.store && store_pending(g_srv.store) >= (size_t)g_srv.cfg.pending_max)) {
        metric_inc(m_rejected);
        conn_send_error(c, "unavailable", "temporarily unavailable; resend with the same id", id);
        return;
    }
    script_ctx x;
    script_ctx_of(c, room, &x);
    script_result res;
    memset(&res, 0, sizeof res);
    script_verdict v = script_on_message(g_srv.script, &x, f->body, f->body_len, id, &res);
    const char *body = f->body;
    size_t body_len = f->body_len;
    if (v == SCRIPT_REJECT) {
        metric_inc(m_rejected);
        conn_send_error(c, reject_code(&res), res.reason[0] ? res.reason : "rejected by policy", id);
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
    pub_op *p = calloc(1, sizeof *p);
    if (!p) { script_result_clear(&res); return; }
    p->t0 = mono_ns();
    p->ts = now_ms();
    snprintf(p->room, sizeof p->room, "%s", room);
    snprintf(p->user, sizeof p->user, "%s", c->ident.user);
    snprintf(p->name, sizeof p->name, "%s", c->ident.name);
    p->id = id ? strdup(id) : NULL;
    p->body = malloc(body_len + 1);
    if (p->body) { memcpy(p->body, body, body_len); p->body[body_len] = 0; }
    p->body_len = body_len;
    script_result_clear(&res);
    p->tail = p->body ? chat_build_tail(id, p->user, p->name, p->body, body_len, p->ts, &p->tail_len) : NULL;
    if (!p->tail) { pub_free(p); return; }
    p->c = c;
    p->next = c->pubs;
    if (c->pubs) c->pubs->prev = p;
    c->pubs = p;
    receipt_put(room, p->tail, p->tail_len, p->t0);
    if (bus_publish(g_srv.bus, room, id, p->tail, p->tail_len, on_published, p) < 0) {
        receipt_take(room, p->tail, p->tail_len);
        metric_inc(m_rejected);
        conn_send_error(c, "unavailable", "message bus unavailable; resend with the same id", id);
        pub_free(p);
        return;
    }
    metric_inc(m_msgs_in);
}

/* ---- other frames -------------------------------------------------------- */

static void handle_typing(conn *c, client_frame *f)
{
    char room[CHAT_ROOM_MAX + 1];
    frame_room(c, f, room);
    if (!conn_find_room(c, room)) { conn_send_error(c, "not_member", "join the room first", NULL); return; }
    script_ctx x;
    script_ctx_of(c, room, &x);
    script_result res;
    memset(&res, 0, sizeof res);
    script_verdict v = script_on_typing(g_srv.script, &x, &res);
    script_result_clear(&res);
    if (v == SCRIPT_REJECT) { metric_inc(m_typing_dropped); return; }
    char b[1024];
    size_t o = (size_t)snprintf(b, sizeof b, "%s\n{\"type\":\"typing\",\"room\":\"%s\",\"user\":", c->ident.user, room);
    o += (size_t)json_escape(b + o, sizeof b - o, c->ident.user, strlen(c->ident.user));
    memcpy(b + o, ",\"name\":", 8); o += 8;
    o += (size_t)json_escape(b + o, sizeof b - o, c->ident.name, strlen(c->ident.name));
    o += (size_t)snprintf(b + o, sizeof b - o, ",\"ttl_ms\":%lld}", (long long)g_srv.typing_ttl_ms);
    bus_emit(g_srv.bus, room, "typing", b, o);
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
    identity_clear(&c->ident);
    c->ident = nid;
}

static void process_frame(conn *c, const char *data, size_t len)
{
    client_frame f;
    char code[32], emsg[160];
    char *eid = NULL;
    if (frame_parse(data, len, &f, code, emsg, sizeof emsg, &eid) < 0) {
        metric_inc(m_frames[0]);
        conn_send_error(c, code, emsg, eid);
        free(eid);
        return;
    }
    if (f.type >= 1 && f.type <= 6) metric_inc(m_frames[f.type]);
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
        if (conn_find_room(c, room)) {   /* idempotent */
            conn_send_error(c, "already_member", "already joined", NULL);
            break;
        }
        script_ctx x;
        script_ctx_of(c, room, &x);
        script_result res;
        memset(&res, 0, sizeof res);
        script_verdict v = script_on_join(g_srv.script, &x, &res);
        if (v == SCRIPT_REJECT)
            conn_send_error(c, reject_code(&res), res.reason[0] ? res.reason : "join refused by policy", NULL);
        else
        {
            char ep[FRAME_EPOCH_MAX + 1] = "";
            if (f.epoch) { memcpy(ep, f.epoch, f.epoch_len); ep[f.epoch_len] = 0; }
            join_room(c, room, f.has_since, f.since, ep[0] ? ep : NULL, 0);
        }
        script_result_clear(&res);
        break;
    }
    case FT_LEAVE: {
        uint32_t i;
        for (i = 0; i < c->nrooms; i++)
            if (strcmp(c->rooms[i]->r->name, room) == 0) break;
        if (i == c->nrooms) conn_send_error(c, "not_member", "not a member of that room", NULL);
        else leave_room(c, i);
        break;
    }
    case FT_REFRESH: handle_refresh(c, &f); break;
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

/* ---- bus and presence deliveries -------------------------------------------- */

static void hold(conn_room *cr, msg *m)
{
    if (cr->nheld >= (uint32_t)g_srv.cfg.max_queue) { conn_close(cr->c, 1008, "slow consumer"); return; }
    if (cr->nheld == cr->capheld) {
        uint32_t nc = cr->capheld ? cr->capheld * 2 : 8;
        msg **nh = realloc(cr->held, sizeof *nh * nc);
        if (!nh) return;
        cr->held = nh;
        cr->capheld = nc;
    }
    cr->held[cr->nheld++] = msg_ref(m);
}

void chat_bus_message(void *ud, const char *rname, uint64_t seq, const char *tail, size_t len)
{
    room *r = room_find(rname);
    if (!r) return;
    msg *m = chat_message_frame(rname, seq, tail, len);
    if (!m) return;
    uint64_t t0 = receipt_take(rname, tail, len);
    if (t0) m->born_ns = t0;       /* received by this node: lag from receipt */
    for (uint32_t i = 0; i < r->nmembers; i++) {
        conn_room *cr = r->members[i];
        if (cr->live) deliver(cr, m);
        else hold(cr, m);
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
        send_room_error(r->members[i]->c, rname, "gap_too_large", "messages were missed; page history over HTTP");
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

/* ---- backfill: a message another node published and never stored ---------- */

typedef struct backfill_op {
    uint64_t seq;
    char room[CHAT_ROOM_MAX + 1];
} backfill_op;

static void on_backfill_stored(void *ud, int status)
{
    backfill_op *op = ud;
    /* -2: another row holds the seq (logged by the store): nothing to redo */
    if ((status == 0 || status == -2) && g_srv.bus) bus_mark_stored(g_srv.bus, op->room, op->seq);
    free(op);
}

static const char *obj_str(json_t *o, const char *k, size_t *len)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v)) { if (len) *len = 0; return NULL; }
    if (len) *len = json_string_length(v);
    return json_string_value(v);
}

void chat_bus_unstored(void *ud, const char *rname, uint64_t seq, const char *tail, size_t len)
{
    (void)ud;
    if (!g_srv.store || !len) return;
    char *buf = malloc(len + 1);
    if (!buf) return;
    buf[0] = '{';
    memcpy(buf + 1, tail, len);
    json_error_t je;
    json_t *o = json_loadb(buf, len + 1, JSON_ALLOW_NUL, &je);
    free(buf);
    size_t body_len = 0;
    const char *user = o ? obj_str(o, "user", NULL) : NULL;
    const char *body = o ? obj_str(o, "body", &body_len) : NULL;
    json_t *ts = o ? json_object_get(o, "ts") : NULL;
    if (!user || !body || !json_is_integer(ts) || json_integer_value(ts) < 0) {
        LOGE("chat", "room %s seq %" PRIu64 ": unstored message has a malformed tail: not stored",
             rname, seq);
        bus_mark_stored(g_srv.bus, rname, seq); /* never offer it again */
        json_decref(o);
        return;
    }
    const char *name = obj_str(o, "name", NULL);
    store_row row = {rname, seq, obj_str(o, "id", NULL), user, name ? name : user, body, body_len,
                     (uint64_t)json_integer_value(ts)};
    backfill_op *op = calloc(1, sizeof *op);
    if (op) {
        op->seq = seq;
        snprintf(op->room, sizeof op->room, "%s", rname);
        /* backlog full: left unstored, the next sweep offers it again */
        if (store_write(g_srv.store, &row, on_backfill_stored, op) < 0) free(op);
    }
    json_decref(o);
}

/* ---- seed: the durable head of a room, for the bus ------------------------ */

static void on_store_head(void *ud, int status, uint64_t max_seq, const char *epoch)
{
    bus_seed_done(ud, status, max_seq, epoch);
}

void chat_bus_seed(void *ud, const char *rname, bus_seed *req)
{
    (void)ud;
    if (!g_srv.store || store_head(g_srv.store, rname, on_store_head, req) < 0)
        bus_seed_done(req, -1, 0, NULL);
}

void chat_bus_ready(void *ud, int ready)
{
    LOGI("chat", "message bus %s", ready ? "ready" : "NOT ready (publishes answer unavailable)");
}

void chat_presence_transition(void *ud, const char *rname, const char *event,
                              const char *user, const char *name)
{
    script_ctx x = {user, name, NULL, rname, g_srv.cfg.node_id, now_ms()};
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
    char b[1024];
    size_t o = (size_t)snprintf(b, sizeof b, "{\"type\":\"presence\",\"room\":\"%s\",\"event\":\"%s\",\"user\":",
                                rname, event);
    o += (size_t)json_escape(b + o, sizeof b - o, user, strnlen(user, 127));
    memcpy(b + o, ",\"name\":", 8); o += 8;
    o += (size_t)json_escape(b + o, sizeof b - o, name, strnlen(name, 127));
    b[o++] = '}';
    bus_emit(g_srv.bus, rname, "presence", b, o);
}

/* ---- drain and expiry ---------------------------------------------------- */

void chat_drain_all(void)
{
    for (conn *c = conn_first(); c; c = c->all_next) {
        if (c->closing || c->closed) continue;
        conn_send_error(c, "server_restart", "server is restarting; reconnect with since=", NULL);
        c->closing = 1;
        c->close_after_flush = 1;
        c->close_code = 1001;
        snprintf(c->close_reason, sizeof c->close_reason, "server restart");
        lws_callback_on_writable(c->wsi);
    }
}

void chat_expire_tokens(int64_t now_s)
{
    receipts_expire(mono_ns(), 10ull * 1000000000ull);
    for (conn *c = conn_first(); c; c = c->all_next)
        if (!c->closing && !c->closed && c->ident.exp <= now_s)
            conn_close(c, 4001, "token expired");
}
