/* publish: see publish.h. */
#define _GNU_SOURCE
#include "publish.h"
#include "climit.h"
#include "lag.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include "wire.h"
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "publish"

struct publish_op {
    publish_owner *owner;    /* NULL once detached (or never owned) */
    publish_op *prev, *next; /* the owner's list */
    publish_cb cb;
    void *ud;
    char room[CHAT_ROOM_MAX + 1];
    char *id;
    char *tail; size_t tail_len;
    char *body; size_t body_len;
    char *meta; size_t meta_len;
    char user[128], name[128];
    uint64_t ts, seq, t0;
    int duplicate;
};

static struct {
    bus *bus;
    store *store;
    size_t pending_max;
    climit *limits;
    double user_rate, user_burst;
} P;

static metric_hist *m_publish, *m_ack;
static metric_counter *m_user_limited;

void publish_init(void)
{
    m_publish = metrics_histogram("chat_publish_duration_seconds", "Client frame received -> seq assigned",
                                  NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    m_ack = metrics_histogram("chat_ack_duration_seconds", "Client frame received -> ack sent (durable)",
                              NULL, METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    m_user_limited = metrics_counter("chat_rate_limited_total",
                                     "Requests refused by a cluster-wide rate limit, by limit",
                                     "limit=\"user_messages\"");
}

void publish_set_user_rate(climit *l, double rate, double burst)
{
    P.limits = l;
    P.user_rate = rate;
    P.user_burst = burst;
}

void publish_attach(bus *b, store *s, size_t pending_max)
{
    P.bus = b;
    P.store = s;
    P.pending_max = pending_max;
}

int publish_ready(void)
{
    if (!bus_ready(P.bus)) return 0;
    return !P.store || store_pending(P.store) < P.pending_max;
}

/* ---- operations and their owners ---------------------------------------- */

static void op_unlink(publish_op *p)
{
    publish_owner *o = p->owner;
    if (!o) return;
    if (p->prev) p->prev->next = p->next; else o->head = p->next;
    if (p->next) p->next->prev = p->prev;
    p->prev = p->next = NULL;
    p->owner = NULL;
}

void publish_owner_drop(publish_owner *o)
{
    while (o && o->head) {
        publish_op *p = o->head;
        op_unlink(p);
        p->cb = NULL;
    }
}

static void op_free(publish_op *p)
{
    op_unlink(p);
    free(p->id);
    free(p->tail);
    free(p->body);
    free(p->meta);
    free(p);
}

/* Answers the caller (unless it went away) and frees the operation. */
static void finish(publish_op *p, int status)
{
    if (status == PUBLISH_OK) metric_observe(m_ack, (double)(mono_ns() - p->t0) / 1e9);
    publish_cb cb = p->cb;
    void *ud = p->ud;
    publish_result r = {status, p->room, p->id, p->seq, p->duplicate};
    op_unlink(p);
    if (cb) cb(ud, &r);
    op_free(p);
}

/* ---- publish -> store -> ack --------------------------------------------- */

static void on_stored(void *ud, int status)
{
    publish_op *p = ud;
    /* 0: durable, not a hole; -2: another message holds the seq in history
     * (the store logged and counted it): never acked, and the seq is not
     * offered to the backfill again (it has a row) */
    if (status == 0 || status == -2) bus_mark_stored(P.bus, p->room, p->seq);
    if (status == 0) {
        finish(p, PUBLISH_OK);
    } else if (status == -2) {
        if (p->id) bus_forget_id(P.bus, p->room, p->id, p->seq); /* a resend gets a new seq */
        finish(p, PUBLISH_CONFLICT);
    } else {
        finish(p, PUBLISH_STORE_DOWN);
    }
}

static void on_published(void *ud, int status, uint64_t seq, int duplicate)
{
    publish_op *p = ud;
    if (status < 0 || duplicate) lag_take(p->room, p->tail, p->tail_len); /* no delivery comes */
    if (status < 0) {
        finish(p, PUBLISH_BUS_DOWN);
        return;
    }
    metric_observe(m_publish, (double)(mono_ns() - p->t0) / 1e9);
    p->seq = seq;
    p->duplicate = duplicate;
    if (!P.store) {
        finish(p, PUBLISH_OK); /* no durable history: chatd said so at start */
        return;
    }
    store_row row = {p->room, seq, p->id, p->user, p->name, p->body, p->body_len, p->ts,
                     p->meta, p->meta_len};
    if (store_write(P.store, &row, on_stored, p) < 0) finish(p, PUBLISH_BACKLOG);
}

/* The op is built: hand it to the bus. 0 or -1 (the op is freed). */
static int go(publish_op *p)
{
    lag_put(p->room, p->tail, p->tail_len, p->t0);
    if (bus_publish(P.bus, p->room, p->id, p->tail, p->tail_len, on_published, p) < 0) {
        lag_take(p->room, p->tail, p->tail_len);
        return -1;
    }
    return 0;
}

/* The user's rate, answered later (Redis): go on or refuse. */
static void on_user_rate(void *ud, int allowed, uint64_t retry_ms)
{
    (void)retry_ms;
    publish_op *p = ud;
    if (allowed == CLIMIT_DENY) {
        metric_inc(m_user_limited);
        finish(p, PUBLISH_RATE_LIMITED);
    } else if (go(p) < 0) {
        finish(p, PUBLISH_BUS_DOWN);
    }
}

int publish_start(const publish_msg *m, publish_owner *owner, publish_cb cb, void *ud)
{
    if (!bus_ready(P.bus)) return -1;
    publish_op *p = calloc(1, sizeof *p);
    if (!p) return -1;
    p->cb = cb;
    p->ud = ud;
    p->t0 = m->t0_ns ? m->t0_ns : mono_ns();
    p->ts = now_ms();
    snprintf(p->room, sizeof p->room, "%s", m->room);
    snprintf(p->user, sizeof p->user, "%s", m->user);
    snprintf(p->name, sizeof p->name, "%s", m->name);
    p->id = m->id ? strdup(m->id) : NULL;
    if (m->meta && m->meta_len) {
        p->meta = malloc(m->meta_len + 1);
        if (p->meta) {
            memcpy(p->meta, m->meta, m->meta_len);
            p->meta[m->meta_len] = 0;
            p->meta_len = m->meta_len;
        }
    }
    p->body = malloc(m->body_len + 1);
    if (p->body) {
        memcpy(p->body, m->body, m->body_len);
        p->body[m->body_len] = 0;
        p->body_len = m->body_len;
        p->tail = wire_message_tail_meta(p->id, p->user, p->name, p->body, p->body_len,
                                         p->meta, p->meta_len, p->ts, &p->tail_len);
    }
    if (!p->body || !p->tail || (m->id && !p->id) || (m->meta && m->meta_len && !p->meta)) {
        op_free(p);
        return -1;
    }
    int pending_rate = 0;
    if (m->user_rate && P.limits && P.user_rate > 0) {
        int r = climit_take(P.limits, "msg", p->user, P.user_rate, P.user_burst, NULL,
                            on_user_rate, p);
        if (r == CLIMIT_DENY) {
            metric_inc(m_user_limited);
            op_free(p);
            return -2;
        }
        pending_rate = r == CLIMIT_PENDING; /* CLIMIT_ERROR: let it pass */
    }
    if (owner) {
        p->owner = owner;
        p->next = owner->head;
        if (owner->head) owner->head->prev = p;
        owner->head = p;
    }
    if (pending_rate) return 0; /* on_user_rate goes on */
    if (go(p) < 0) {
        op_free(p);
        return -1;
    }
    return 0;
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
    if ((status == 0 || status == -2) && P.bus) bus_mark_stored(P.bus, op->room, op->seq);
    free(op);
}

static const char *obj_str(json_t *o, const char *k, size_t *len)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v)) { if (len) *len = 0; return NULL; }
    if (len) *len = json_string_length(v);
    return json_string_value(v);
}

void publish_bus_unstored(void *ud, const char *rname, uint64_t seq, const char *tail, size_t len)
{
    (void)ud;
    if (!P.store || !len) return;
    char *buf = malloc(len + 1);
    if (!buf) return;
    buf[0] = '{';
    memcpy(buf + 1, tail, len);
    json_error_t je;
    json_t *o = json_loadb(buf, len + 1, JSON_ALLOW_NUL, &je);
    size_t body_len = 0;
    const char *user = o ? obj_str(o, "user", NULL) : NULL;
    const char *body = o ? obj_str(o, "body", &body_len) : NULL;
    json_t *ts = o ? json_object_get(o, "ts") : NULL;
    if (!user || !body || !json_is_integer(ts) || json_integer_value(ts) < 0) {
        LOGE(MOD, "room %s seq %" PRIu64 ": unstored message has a malformed tail: not stored",
             rname, seq);
        bus_mark_stored(P.bus, rname, seq); /* never offer it again */
        json_decref(o);
        free(buf);
        return;
    }
    const char *name = obj_str(o, "name", NULL);
    /* meta (server API) as the text the tail carries, not re-serialized */
    size_t moff = 0, mlen = 0;
    const char *meta = NULL;
    if (json_is_object(json_object_get(o, "meta")) &&
        json_raw_member(buf, len + 1, "meta", &moff, &mlen) == 1)
        meta = buf + moff;
    store_row row = {rname, seq, obj_str(o, "id", NULL), user, name ? name : user, body, body_len,
                     (uint64_t)json_integer_value(ts), meta, mlen};
    backfill_op *op = calloc(1, sizeof *op);
    if (op) {
        op->seq = seq;
        snprintf(op->room, sizeof op->room, "%s", rname);
        /* backlog full: left unstored, the next sweep offers it again */
        if (store_write(P.store, &row, on_backfill_stored, op) < 0) free(op);
    }
    json_decref(o);
    free(buf);
}

/* ---- seed: the durable head of a room, for the bus ------------------------ */

static void on_store_head(void *ud, int status, uint64_t max_seq, const char *epoch)
{
    bus_seed_done(ud, status, max_seq, epoch);
}

void publish_bus_seed(void *ud, const char *rname, bus_seed *req)
{
    (void)ud;
    if (!P.store || store_head(P.store, rname, on_store_head, req) < 0)
        bus_seed_done(req, -1, 0, NULL);
}
