/* publish: see publish.h. */
#define _GNU_SOURCE
#include "publish.h"
#include "emoji.h"
#include "frame.h"
#include "climit.h"
#include "lag.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include "wire.h"
#include <inttypes.h>
#include <jansson.h>
#include <stdint.h>
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
    /* the Redis run that answered the publish and when (bus_run_mark):
     * given back to the bus at the commit (bus_id_committed) */
    uint64_t run_mark, published_ns;
    /* message updates (kind != WIRE_MESSAGE) */
    int kind;
    uint64_t target;
    char emoji[EMOJI_MAX_BYTES + 1];
    int on;
    int id_default;          /* publish_update.id_default */
    int64_t count;
    publish_authorize_fn authorize;
    char code[32], reason[256];
    /* a client message's id, body and meta are copied here (publish_start),
     * in the op's own allocation */
    size_t ninl;
    char inl[];
};

/* a publish's user is the sender its client id is keyed under (bus_id_part):
 * the buffer holds every sender the bus takes, and no more */
_Static_assert(sizeof(((publish_op *)0)->user) == BUS_USER_MAX + 1, "publish_op.user is a bus sender");

static struct {
    bus *bus;
    store *store;
    int store_gone;          /* publish_store_gone: P.store is freed, never called */
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

void publish_store_gone(void)
{
    P.store_gone = 1;
}

/* The store to call: NULL once it is freed (shutdown), while `P.store`
 * still says whether the node has durable history at all. */
static store *live_store(void)
{
    return P.store_gone ? NULL : P.store;
}

int publish_ready(void)
{
    if (!bus_ready(P.bus)) return 0;
    return !P.store || (!P.store_gone && store_pending(P.store) < P.pending_max);
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

/* Frees s unless it lives in p->inl. */
static void op_str_free(publish_op *p, char *s)
{
    if (s && (s < p->inl || s >= p->inl + p->ninl)) free(s);
}

static void op_free(publish_op *p)
{
    op_unlink(p);
    op_str_free(p, p->id);
    free(p->tail);
    op_str_free(p, p->body);
    op_str_free(p, p->meta);
    free(p);
}

/* Answers the caller (unless it went away) and frees the operation. */
static void finish(publish_op *p, int status)
{
    if (status == PUBLISH_OK && p->duplicate && p->id_default) {
        /* the id was made up (a moderator delete without one: one per
         * user and target), not a retry's: the update that holds it is
         * another request's, done at once with this one. Answered once
         * that one is durable, as this request answers after it
         * (not_found: deleted already), never as its retry */
        snprintf(p->code, sizeof p->code, "not_found");
        snprintf(p->reason, sizeof p->reason, "that message was deleted");
        status = PUBLISH_NOT_FOUND;
    }
    if (status == PUBLISH_OK) metric_observe(m_ack, (double)(mono_ns() - p->t0) / 1e9);
    publish_cb cb = p->cb;
    void *ud = p->ud;
    publish_result r = {status, p->room, p->id, p->seq, p->duplicate,
                        p->code[0] ? p->code : NULL, p->reason[0] ? p->reason : NULL,
                        status == PUBLISH_OK && !p->duplicate ? p->count : -1, p->kind};
    op_unlink(p);
    if (cb) cb(ud, &r);
    op_free(p);
}

/* ---- publish -> store -> ack --------------------------------------------- */

/* A published row history can never hold (store -3): the bus's sweeper is
 * told not to offer it again. Its client id keeps its seq: the sender got
 * no ack, and a resend with the same id is the duplicate of that seq,
 * written again (refused again, or stored under that seq once the rule
 * that refused it is gone), never broadcast a second time under a new seq
 * (protocol: "the server never stores or broadcasts it twice"). */
static void unstorable(const char *room, uint64_t seq)
{
    bus_mark_stored(P.bus, room, seq);
}

static int bus_op(const publish_op *p);

/* An update history did not take: its own change comes off the bus's
 * state of its target (bus_undo_update; an edit changed none). */
static void undo_update(publish_op *p)
{
    bus_update u = {.target = p->target, .op = bus_op(p), .emoji = p->emoji, .user = p->user};
    bus_undo_update(P.bus, p->room, &u);
}

/* The sender's id names its row at seq, of another kind or target: a
 * client that used one id for two things. Answered as such (bad_request,
 * the API's 409), nothing forgotten: the id still names its first row. */
static void id_reused(publish_op *p, uint64_t seq)
{
    snprintf(p->code, sizeof p->code, "bad_request");
    snprintf(p->reason, sizeof p->reason, "id already used for another of your messages or "
             "updates (seq %" PRIu64 "); send a new id", seq);
    finish(p, PUBLISH_ID_REUSED);
}

static void on_stored(void *ud, int status)
{
    publish_op *p = ud;
    /* 0: durable; -2: another message holds the seq in history (the store
     * logged and counted it): never acked. Either way the seq has a row:
     * the bus's sweeper sees it there (on_check), nothing to mark. -3:
     * Postgres refused this row for good (an operator's constraint or
     * trigger; the store logged and counted it): never acked (unstorable).
     * An update history did not take left its change in the bus's state
     * step (a react "on", a delete): that change alone is undone
     * (undo_update; the other updates of the target stay). Its client id
     * is forgotten too (a resend of an update is acked on its stored row only,
     * so a kept id would answer `unavailable` for the id's whole window):
     * the resend goes through the state step again. -4: the sender's id
     * names another of its rows (id_reused). */
    int upd = p->kind != WIRE_MESSAGE;
    if (status == 0) {
        /* the id back into Redis if it restarted since the publish (no
         * Redis call otherwise): docs/redis.md "A commit after the loss" */
        if (p->id)
            bus_id_committed(P.bus, p->room, p->user, p->id, p->seq, p->run_mark, p->published_ns,
                             upd);
        finish(p, PUBLISH_OK);
    } else if (status == -2) {
        if (p->id) bus_forget_id(P.bus, p->room, p->user, p->id, p->seq); /* a resend gets a new seq */
        if (upd) undo_update(p);
        finish(p, PUBLISH_CONFLICT);
    } else if (status == -4) {
        /* the sender's id names another of its rows (store_write -4): that
         * row keeps the id; nothing new was stored (a duplicate publish
         * changed no state; a fresh update's change comes off) */
        if (upd && !p->duplicate) undo_update(p);
        id_reused(p, p->seq);
    } else if (status == -3) {
        unstorable(p->room, p->seq);
        if (upd && p->id) bus_forget_id(P.bus, p->room, p->user, p->id, p->seq);
        if (upd) undo_update(p);
        finish(p, PUBLISH_UNSTORABLE);
    } else {
        finish(p, PUBLISH_STORE_DOWN);
    }
}

/* The published row goes to the store; on_stored answers. Refused now: the
 * backlog is full (resend), or the row can never be stored (store_write
 * -3: not UTF-8 text, or a number over 2^63-1; input checks refuse such
 * rows first, so this is a bug): logged and forgotten (as
 * publish_bus_unstored does). */
static void stored_write(publish_op *p, store_row *row)
{
    /* its seq is handed out and broadcast: the store takes it even over
     * its pending bound, which publish_ready applied at admission (a
     * burst admitted together overshoots it by the burst; before, the
     * overshoot was broadcast, answered `unavailable` and never stored
     * unless resent: for good in the in-process mode, which has no
     * backfill) */
    row->admitted = 1;
    int rc = store_write(live_store(), row, on_stored, p);
    if (rc == -3) {
        LOGE(MOD, "room %s seq %" PRIu64 ": the message cannot be stored (not UTF-8 text, or a "
             "number over 2^63-1): not stored", p->room, row->seq);
        on_stored(p, -3);
    } else if (rc < 0) {
        finish(p, PUBLISH_BACKLOG);
    }
}

/* The resend's own copy of the message at p->seq (a fresh publish, or a
 * duplicate whose broadcast copy is gone from the recent buffer). */
static void write_own_copy(publish_op *p)
{
    store_row row = {.room = p->room, .seq = p->seq, .client_id = p->id, .user = p->user,
                     .name = p->name, .body = p->body, .body_len = p->body_len, .ts = p->ts,
                     .meta = p->meta, .meta_len = p->meta_len};
    stored_write(p, &row);
}

static int tail_row(const char *rname, uint64_t seq, const char *tail, size_t len,
                    store_row *row, json_t **o, char **buf);

/* The recent buffer's answer for a resend's seq holds its broadcast copy:
 * this sender's row with this id, of the resend's kind and target (a
 * message's is 0). 1 with *row filled (pointing into *o and *buf, which
 * the caller frees in every case), else 0. */
static int broadcast_copy(const publish_op *p, int status, const bus_entry *e, size_t n,
                          store_row *row, json_t **o, char **buf)
{
    *o = NULL;
    *buf = NULL;
    return status == 0 && n > 0 && e[0].seq == p->seq &&
           tail_row(p->room, p->seq, e[0].tail, e[0].len, row, o, buf) == 0 &&
           row->kind == p->kind && row->target == p->target && row->client_id && p->id &&
           strcmp(row->client_id, p->id) == 0 && strcmp(row->user, p->user) == 0;
}

/* The recent buffer's entry of the duplicate's seq: its broadcast
 * copy is stored (the conflict check answers 0 when history holds it
 * already, -2 when another row holds the seq). The same sender and id as
 * the resend, or the resend's copy is written (store -4 / -2 judge it). */
static void dup_replayed(void *ud, int status, const bus_entry *e, size_t n, uint64_t head,
                         const char *epoch)
{
    (void)head; (void)epoch;
    publish_op *p = ud;
    json_t *o;
    char *buf;
    store_row row;
    if (broadcast_copy(p, status, e, n, &row, &o, &buf)) {
        stored_write(p, &row);
    } else {
        write_own_copy(p);
    }
    json_decref(o);
    free(buf);
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
    p->run_mark = bus_run_mark(P.bus, p->room);
    p->published_ns = mono_ns();
    if (!P.store) {
        finish(p, PUBLISH_OK); /* no durable history: chatd said so at start */
        return;
    }
    /* a resend of a message already published: history must hold the
     * message as it was broadcast (its ts, name, body, meta), not the
     * resend's copy, or history and replay from Postgres would disagree
     * with what members received when the first publish's node died
     * before its commit. Its broadcast copy is read from the recent buffer
     * (dup_replayed); the resend's own copy only when the buffer no longer
     * has it */
    if (duplicate && seq > 0 && bus_replay_upto(P.bus, p->room, seq - 1, seq, dup_replayed, p) == 0)
        return;
    write_own_copy(p);
}

/* The op is built: hand it to the bus. 0 or -1 (the op is freed). */
static int go(publish_op *p)
{
    lag_put(p->room, p->tail, p->tail_len, p->t0);
    if (bus_publish(P.bus, p->room, p->user, p->id, p->tail, p->tail_len, on_published, p) < 0) {
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
    size_t idl = m->id ? strlen(m->id) : 0;
    size_t ml = m->meta ? m->meta_len : 0;
    if (m->body_len > SIZE_MAX / 4 || ml > SIZE_MAX / 4) return -1;
    size_t ninl = (m->id ? idl + 1 : 0) + m->body_len + 1 + (ml ? ml + 1 : 0);
    publish_op *p = calloc(1, sizeof *p + ninl);
    if (!p) return -1;
    p->ninl = ninl;
    p->cb = cb;
    p->ud = ud;
    p->t0 = m->t0_ns ? m->t0_ns : mono_ns();
    p->ts = now_ms();
    snprintf(p->room, sizeof p->room, "%s", m->room);
    snprintf(p->user, sizeof p->user, "%s", m->user);
    snprintf(p->name, sizeof p->name, "%s", m->name);
    p->count = -1;
    char *o = p->inl;
    if (m->id) {
        p->id = o;
        memcpy(o, m->id, idl + 1);
        o += idl + 1;
    }
    p->body = o;
    memcpy(o, m->body, m->body_len);
    o[m->body_len] = 0;
    p->body_len = m->body_len;
    o += m->body_len + 1;
    if (ml) {
        p->meta = o;
        memcpy(o, m->meta, ml);
        o[ml] = 0;
        p->meta_len = ml;
    }
    p->tail = wire_message_tail_meta(p->id, p->user, p->name, p->body, p->body_len, p->meta,
                                     p->meta_len, p->ts, &p->tail_len);
    if (!p->tail) {
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

/* ---- message updates: target -> policy -> bus state step -> store ---------
 * (publish.h "message updates"). Every stage checks that the operation
 * still has a caller before doing more than completing what was published:
 * an update whose owner went away before its publish is simply dropped. */


/* store.h's row kinds are wire.h's update kinds */
_Static_assert((int)STORE_MESSAGE == (int)WIRE_MESSAGE && (int)STORE_EDIT == (int)WIRE_EDIT &&
               (int)STORE_DELETE == (int)WIRE_DELETE && (int)STORE_REACT == (int)WIRE_REACT,
               "kinds");

static void upd_publish(publish_op *p, const bus_update *u);
static void upd_seed_read(publish_op *p);

static int bus_op(const publish_op *p)
{
    switch (p->kind) {
    case WIRE_EDIT: return BUS_UPD_EDIT;
    case WIRE_DELETE: return BUS_UPD_DELETE;
    default: return p->on ? BUS_UPD_REACT_ON : BUS_UPD_REACT_OFF;
    }
}

static void refuse(publish_op *p, int status, const char *code, const char *reason)
{
    snprintf(p->code, sizeof p->code, "%s", code);
    snprintf(p->reason, sizeof p->reason, "%s", reason);
    finish(p, status);
}

/* A resend of an update already published: acked once its first publish
 * is durable (stored by its node, or by the backfill), i.e. when the row at
 * its seq is this update (this sender's row with this id, of its kind and
 * target). This sender's row with this id but another kind or target is a
 * client that used one id twice: id_reused, nothing forgotten. Another
 * sender's row, or one without this id (the update lost its seq to a
 * conflict whose forget did not reach Redis, or a backfill of it met a
 * conflict), is never acked: its id is forgotten and its change undone,
 * answered as the conflict it is (the resend after that is a new update).
 * No row yet: its broadcast copy from the recent buffer is stored and
 * acked (upd_dup_replayed; unavailable when the buffer no longer has it:
 * resend). Removed by retention: not_found. */

/* A resent update's broadcast copy, written for it: acked once durable.
 * Anything else (another row holds the seq, the store refused it) is
 * answered unavailable: the next resend finds the row and
 * upd_dup_checked judges it. */
static void on_upd_dup_stored(void *ud, int status)
{
    finish(ud, status == 0 ? PUBLISH_OK : PUBLISH_STORE_DOWN);
}

/* The recent buffer's entry of a resent update's seq, not stored yet:
 * stored as broadcast (as the backfill would, CHAT_BACKFILL_GRACE_MS later)
 * when it is this sender's update with this id, kind and target; else
 * unavailable, as before (resend). */
static void upd_dup_replayed(void *ud, int status, const bus_entry *e, size_t n, uint64_t head,
                             const char *epoch)
{
    (void)head; (void)epoch;
    publish_op *p = ud;
    json_t *o;
    char *buf;
    store_row row;
    int rc = -1;
    if (broadcast_copy(p, status, e, n, &row, &o, &buf)) {
        row.admitted = 1;  /* its seq was broadcast long ago */
        rc = store_write(live_store(), &row, on_upd_dup_stored, p);
    }
    json_decref(o);
    free(buf);
    if (rc != 0) finish(p, PUBLISH_STORE_DOWN);
}

static void upd_dup_checked(void *ud, int status, const store_target_row *row)
{
    publish_op *p = ud;
    int mine = status == STORE_TARGET_ROW && row->author && strcmp(row->author, p->user) == 0 &&
               row->client_id && p->id && strcmp(row->client_id, p->id) == 0;
    if (mine && row->kind == p->kind && row->target == p->target) {
        finish(p, PUBLISH_OK);
    } else if (mine) {
        id_reused(p, p->seq);
    } else if (status == STORE_TARGET_ROW) {
        LOGW(MOD, "room %s seq %" PRIu64 ": the resent update's id names a seq another row "
             "holds (a conflict): not acked, its id forgotten", p->room, p->seq);
        if (p->id) bus_forget_id(P.bus, p->room, p->user, p->id, p->seq);
        undo_update(p);
        finish(p, PUBLISH_CONFLICT);
    } else if (status == STORE_TARGET_GONE) {
        refuse(p, PUBLISH_NOT_FOUND, "not_found", "that message was removed by retention");
    } else if (status != STORE_TARGET_NONE ||
               bus_replay_upto(P.bus, p->room, p->seq - 1, p->seq, upd_dup_replayed, p) != 0) {
        finish(p, PUBLISH_STORE_DOWN);
    }
    /* else not stored yet (its node died before the commit, or the commit
     * is on its way): upd_dup_replayed stores its broadcast copy */
}

static void on_update_published(void *ud, int status, uint64_t seq, int duplicate, int64_t count)
{
    publish_op *p = ud;
    if (status != 0 || duplicate) lag_take(p->room, p->tail, p->tail_len); /* no delivery */
    if (status < 0) { finish(p, PUBLISH_BUS_DOWN); return; }
    if (status == BUS_UPD_NEED_STATE) {
        /* the bus has no state of the target: read it from history, then
         * publish again with it as the seed */
        upd_seed_read(p);
        return;
    }
    if (status == BUS_UPD_GONE) {
        refuse(p, PUBLISH_NOT_FOUND, "not_found", "that message was deleted");
        return;
    }
    if (status == BUS_UPD_NOOP) {
        refuse(p, PUBLISH_NOOP, "rejected", p->on ? "you already reacted with that emoji"
                                                  : "you have not reacted with that emoji");
        return;
    }
    metric_observe(m_publish, (double)(mono_ns() - p->t0) / 1e9);
    p->seq = seq;
    p->duplicate = duplicate;
    p->count = count;
    p->run_mark = bus_run_mark(P.bus, p->room);
    p->published_ns = mono_ns();
    if (!P.store) { finish(p, PUBLISH_OK); return; }
    if (duplicate) {
        if (store_target(live_store(), p->room, seq, NULL, NULL, upd_dup_checked, p) < 0)
            finish(p, PUBLISH_STORE_DOWN);
        return;
    }
    store_row row = {.room = p->room, .seq = seq, .client_id = p->id, .user = p->user,
                     .name = p->name, .body = p->kind == WIRE_EDIT ? p->body : "",
                     .body_len = p->kind == WIRE_EDIT ? p->body_len : 0, .ts = p->ts,
                     .kind = p->kind, .target = p->target,
                     .emoji = p->kind == WIRE_REACT ? p->emoji : NULL, .on = p->on,
                     .count = count};
    stored_write(p, &row);
}

static void on_seed_reactions(void *ud, int status, int deleted, const char *const *emoji,
                              const char *const *user, size_t n)
{
    publish_op *p = ud;
    if (!p->cb) { op_free(p); return; }   /* its caller went away: nothing was published */
    if (status < 0) { finish(p, PUBLISH_STORE_DOWN); return; }
    bus_update u = {p->target, bus_op(p), p->emoji, p->user, BUS_UPD_SEED_GIVEN, deleted,
                    emoji, user, n};
    upd_publish(p, &u);
}

static void upd_seed_read(publish_op *p)
{
    if (!P.store || store_reactions(live_store(), p->room, p->target, on_seed_reactions, p) < 0)
        finish(p, PUBLISH_STORE_DOWN);
}

static void upd_publish(publish_op *p, const bus_update *u)
{
    if (bus_publish_update(P.bus, p->room, p->user, p->id, p->tail, p->tail_len, u,
                           on_update_published, p) < 0)
        finish(p, PUBLISH_BUS_DOWN);
}

/* The target is a message of author: the policy step, then publish. */
static void upd_authorized(publish_op *p, const char *author)
{
    if (!p->cb) { op_free(p); return; }   /* its caller went away: nothing was published */
    if (p->authorize) {
        publish_update u = {p->room, p->id, p->user, p->name, p->kind, p->target, p->body,
                            p->body_len, p->emoji, p->on, p->t0, p->id_default};
        publish_verdict v;
        memset(&v, 0, sizeof v);
        p->authorize(p->ud, &u, author, &v);
        if (v.refuse) {
            free(v.body);
            refuse(p, PUBLISH_REFUSED, v.code[0] ? v.code : "rejected",
                   v.reason[0] ? v.reason : "refused by policy");
            return;
        }
        if (v.body && p->kind == WIRE_EDIT) {
            if (memchr(v.body, 0, v.body_len)) {
                LOGW(MOD, "room %s: the policy's on_edit returned a body containing U+0000: refused",
                     p->room);
                free(v.body);
                refuse(p, PUBLISH_REFUSED, "rejected", "the policy produced a body that cannot be stored");
                return;
            }
            op_str_free(p, p->body);
            p->body = v.body;
            p->body_len = v.body_len;
        } else {
            free(v.body);
        }
    }
    p->tail = wire_update_tail(p->kind, p->id, p->target, p->user, p->name, p->ts, p->body,
                               p->body_len, p->emoji, p->on, -1, &p->tail_len);
    if (!p->tail) { finish(p, PUBLISH_BUS_DOWN); return; }
    if (p->kind != WIRE_REACT) lag_put(p->room, p->tail, p->tail_len, p->t0); /* a react's tail
                                                             * is closed by the bus */
    bus_update u = {p->target, bus_op(p), p->emoji, p->user,
                    P.store ? BUS_UPD_SEED_ASK : BUS_UPD_SEED_NONE, 0, NULL, NULL, 0};
    upd_publish(p, &u);
}

/* The author field of a message tail ("user"), into out; 0 when found. */
static int tail_user(const char *tail, size_t len, char *out, size_t cap)
{
    char *buf = malloc(len + 1);
    if (!buf) return -1;
    buf[0] = '{';
    memcpy(buf + 1, tail, len);
    json_t *o = frame_json_load(buf, len + 1, JSON_ALLOW_NUL, NULL, 0, NULL);   /* meta's numbers */
    free(buf);
    json_t *u = o ? json_object_get(o, "user") : NULL;
    int rc = -1;
    if (json_is_string(u) && json_string_length(u) < cap) {
        snprintf(out, cap, "%s", json_string_value(u));
        rc = 0;
    }
    json_decref(o);
    return rc;
}

/* The target is not in history (yet): the recent buffer. */
static void on_lookup_replay(void *ud, int status, const bus_entry *e, size_t n, uint64_t head,
                             const char *epoch)
{
    publish_op *p = ud;
    (void)head; (void)epoch;
    if (!p->cb) { op_free(p); return; }
    if (status < 0) { finish(p, PUBLISH_BUS_DOWN); return; }
    /* bus_replay_upto answers at most the target's own entry */
    char author[128];
    if (status == 0 && n == 1 && e[0].seq == p->target &&
        !wire_tail_is_update(e[0].tail, e[0].len) &&
        tail_user(e[0].tail, e[0].len, author, sizeof author) == 0) {
        upd_authorized(p, author);
        return;
    }
    refuse(p, PUBLISH_NOT_FOUND, "not_found", "no such message");
}

static int lookup_buffer(publish_op *p)
{
    return bus_replay_upto(P.bus, p->room, p->target - 1, p->target, on_lookup_replay, p);
}

/* A deleted target, or one retention removed: nothing new passes, but a
 * resend of this sender's update of it with its client id (the first ack
 * lost) is answered from its stored row (store_target's id_seq, read
 * with the target): acked with its seq, or id_reused when that id names
 * another kind of update. The bus is not asked (its state of the target
 * can lack the deleted mark after a Redis loss: it is not the authority
 * here, history is). */
static void upd_gone(publish_op *p, const store_target_row *row, const char *why)
{
    if (row && row->id_seq && p->id && !p->id_default) {
        p->duplicate = 1;
        if (row->id_kind == p->kind) {
            p->seq = row->id_seq;
            finish(p, PUBLISH_OK);
        } else {
            id_reused(p, row->id_seq);
        }
        return;
    }
    refuse(p, PUBLISH_NOT_FOUND, "not_found", why);
}

static void on_target(void *ud, int status, const store_target_row *row)
{
    publish_op *p = ud;
    if (!p->cb) { op_free(p); return; }
    if (status < 0) { finish(p, PUBLISH_STORE_DOWN); return; }
    if (status == STORE_TARGET_GONE) {
        upd_gone(p, row, "that message was removed by retention");
        return;
    }
    if (status == STORE_TARGET_NONE) {   /* not stored (yet): published moments ago? */
        if (lookup_buffer(p) < 0) finish(p, PUBLISH_BUS_DOWN);
        return;
    }
    if (row->kind != WIRE_MESSAGE) {
        refuse(p, PUBLISH_NOT_FOUND, "not_found", "that seq is a message update, not a message");
        return;
    }
    if (row->deleted) {
        upd_gone(p, row, "that message was deleted");
        return;
    }
    upd_authorized(p, row->author);
}

int publish_update_start(const publish_update *u, publish_owner *owner,
                         publish_authorize_fn authorize, publish_cb cb, void *ud)
{
    if (!u || !u->room || !u->user || !u->name || !u->target || !bus_ready(P.bus)) return -1;
    if (u->kind != WIRE_EDIT && u->kind != WIRE_DELETE && u->kind != WIRE_REACT) return -1;
    if (u->kind == WIRE_EDIT && (!u->body || memchr(u->body, 0, u->body_len))) return -1;
    if (u->kind == WIRE_REACT && (!u->emoji || !emoji_valid(u->emoji, strlen(u->emoji))))
        return -1;
    publish_op *p = calloc(1, sizeof *p);
    if (!p) return -1;
    p->cb = cb;
    p->ud = ud;
    p->authorize = authorize;
    p->t0 = u->t0_ns ? u->t0_ns : mono_ns();
    p->ts = now_ms();
    p->kind = u->kind;
    p->target = u->target;
    p->on = u->on ? 1 : 0;
    p->id_default = u->id_default;
    p->count = -1;
    snprintf(p->room, sizeof p->room, "%s", u->room);
    snprintf(p->user, sizeof p->user, "%s", u->user);
    snprintf(p->name, sizeof p->name, "%s", u->name);
    if (u->kind == WIRE_REACT) snprintf(p->emoji, sizeof p->emoji, "%s", u->emoji);
    p->id = u->id ? strdup(u->id) : NULL;
    size_t bl = u->kind == WIRE_EDIT ? u->body_len : 0;
    p->body = malloc(bl + 1);
    if (!p->body || (u->id && !p->id)) {
        op_free(p);
        return -1;
    }
    if (bl) memcpy(p->body, u->body, bl);
    p->body[bl] = 0;
    p->body_len = bl;
    /* with history, the target is looked up there first (not ready: -1,
     * the caller answers unavailable); without, the buffer is all there is */
    int rc = P.store ? store_target(live_store(), p->room, p->target, p->id_default ? NULL : p->user,
                                    p->id_default ? NULL : p->id, on_target, p)
                     : lookup_buffer(p);
    if (rc < 0) {
        op_free(p);
        return -1;
    }
    if (owner) {
        p->owner = owner;
        p->next = owner->head;
        if (owner->head) owner->head->prev = p;
        owner->head = p;
    }
    return 0;
}

int publish_delete(const char *room, uint64_t seq, const char *actor, const char *actor_name,
                   const char *id, int id_default, publish_owner *owner, publish_cb cb, void *ud)
{
    publish_update u = {room, id, actor, actor_name ? actor_name : actor, WIRE_DELETE, seq,
                        NULL, 0, NULL, 0, 0, id_default};
    return publish_update_start(&u, owner, NULL, cb, ud);
}

/* ---- backfill: a message another node published and never stored ---------- */

static const char *obj_str(json_t *o, const char *k, size_t *len)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v)) { if (len) *len = 0; return NULL; }
    if (len) *len = json_string_length(v);
    return json_string_value(v);
}

/* The kind of an update tail's "kind" field (WIRE_*), -1 when unknown. */
static int kind_of(const char *k)
{
    for (int i = WIRE_EDIT; i <= WIRE_REACT; i++)
        if (k && strcmp(k, wire_update_kind_name(i)) == 0) return i;
    return -1;
}

/* A backfilled row in the store's queue: what on_backfill_stored needs to
 * mark it when Postgres refuses it (unstorable) and, for an update, to
 * undo its change in the bus's state and forget its id, as on_stored does
 * for a node's own (room, user, id and emoji in s[]). Owned by the store:
 * every write's callback is called once (-1 at store_free). */
typedef struct backfill_row {
    uint64_t seq, target;
    int kind, on;
    size_t user_off, id_off, emoji_off;   /* 0: none */
    char s[];                             /* the room first */
} backfill_row;

/* keep_id: the row at its seq is this sender's with this id (store -4: the
 * id names that row, which must keep it) */
static void backfill_refused(const backfill_row *b, int unstored, int keep_id)
{
    if (unstored) unstorable(b->s, b->seq);
    if (b->kind == WIRE_MESSAGE || !b->user_off) return;
    const char *user = b->s + b->user_off;
    if (b->id_off && !keep_id) bus_forget_id(P.bus, b->s, user, b->s + b->id_off, b->seq);
    int op = b->kind == WIRE_DELETE ? BUS_UPD_DELETE : b->kind == WIRE_REACT
             ? (b->on ? BUS_UPD_REACT_ON : BUS_UPD_REACT_OFF) : BUS_UPD_EDIT;
    bus_update u = {.target = b->target, .op = op, .user = user,
                    .emoji = b->emoji_off ? b->s + b->emoji_off : NULL};
    bus_undo_update(P.bus, b->s, &u);
}

static void on_backfill_stored(void *ud, int status)
{
    backfill_row *b = ud;
    if (status == -3) backfill_refused(b, 1, 0);
    /* another row holds its seq: an update's change and id go, as for the
     * node's own conflict (a message's id is forgotten by the conflict
     * check of its resend: same_message); -4: this sender's row with this
     * id holds it: the change goes, the id stays (it names that row) */
    else if (status == -2) backfill_refused(b, 0, 0);
    else if (status == -4) backfill_refused(b, 0, 1);
    free(b);
}

static void backfill_write(const char *rname, uint64_t seq, const store_row *row)
{
    const char *parts[4] = {rname, row->user, row->client_id, row->emoji};
    size_t need = 0;
    for (int i = 0; i < 4; i++) need += parts[i] ? strlen(parts[i]) + 1 : 0;
    backfill_row *b = malloc(sizeof *b + need);
    if (!b) return; /* not stored: offered again after the lease */
    b->seq = seq;
    b->target = row->target;
    b->kind = row->kind;
    b->on = row->on;
    size_t *offs[4] = {NULL, &b->user_off, &b->id_off, &b->emoji_off}, o = 0;
    for (int i = 0; i < 4; i++) {
        if (offs[i]) *offs[i] = parts[i] ? o : 0;
        if (!parts[i]) continue;
        size_t l = strlen(parts[i]) + 1;
        memcpy(b->s + o, parts[i], l);
        o += l;
    }
    int rc = store_write(live_store(), row, on_backfill_stored, b);
    if (rc == 0) return;
    if (rc == -3) {
        LOGE(MOD, "room %s seq %" PRIu64 ": the message cannot be stored (not UTF-8 text, or a "
             "number over 2^63-1): not stored", rname, seq);
        backfill_refused(b, 1, 0);
    }
    free(b);
}

/* A tail of the recent buffer (a message or an update as broadcast) as the
 * row history keeps of it. 0 with *row pointing into *o and *buf (the
 * caller frees both, also on failure); -1 out of memory, -2 malformed. */
static int tail_row(const char *rname, uint64_t seq, const char *tail, size_t len,
                    store_row *row, json_t **op, char **bufp)
{
    *op = NULL;
    *bufp = NULL;
    if (!len) return -2;
    char *buf = malloc(len + 1);
    if (!buf) return -1;
    *bufp = buf;
    buf[0] = '{';
    memcpy(buf + 1, tail, len);
    /* an API message's meta is kept as given, with integers beyond 64 bits
     * too: the members read as integers come back as such (frame.h) */
    static const char *const ints[] = {"ts", "target", "count"};
    json_t *o = frame_json_load(buf, len + 1, JSON_ALLOW_NUL, ints, 3, NULL);
    *op = o;
    size_t body_len = 0;
    const char *user = o ? obj_str(o, "user", NULL) : NULL;
    const char *body = o ? obj_str(o, "body", &body_len) : NULL;
    json_t *ts = o ? json_object_get(o, "ts") : NULL;
    /* a message update (wire.h): its kind, target and fields */
    const char *kname = o ? obj_str(o, "kind", NULL) : NULL;
    int kind = kname ? kind_of(kname) : WIRE_MESSAGE;
    json_t *target = o ? json_object_get(o, "target") : NULL;
    json_t *count = o ? json_object_get(o, "count") : NULL;
    const char *emoji = o ? obj_str(o, "emoji", NULL) : NULL;
    if (kind == WIRE_DELETE || kind == WIRE_REACT) { body = ""; body_len = 0; }
    int bad = !user || !body || !json_is_integer(ts) || json_integer_value(ts) < 0 || kind < 0 ||
              (kind != WIRE_MESSAGE && (!json_is_integer(target) || json_integer_value(target) < 1)) ||
              (kind == WIRE_REACT && (!emoji || !json_is_integer(count) ||
                                      json_integer_value(count) < 0 ||
                                      !json_is_boolean(json_object_get(o, "on"))));
    if (bad) return -2;
    const char *name = obj_str(o, "name", NULL);
    /* meta (server API) as the text the tail carries, not re-serialized */
    size_t moff = 0, mlen = 0;
    const char *meta = NULL;
    if (json_is_object(json_object_get(o, "meta")) &&
        json_raw_member(buf, len + 1, "meta", &moff, &mlen) == 1)
        meta = buf + moff;
    *row = (store_row){.room = rname, .seq = seq, .client_id = obj_str(o, "id", NULL), .user = user,
                       .name = name ? name : user, .body = body, .body_len = body_len,
                       .ts = (uint64_t)json_integer_value(ts), .kind = kind,
                       .meta = meta, .meta_len = mlen};
    if (kind != WIRE_MESSAGE) row->target = (uint64_t)json_integer_value(target);
    if (kind == WIRE_REACT) {
        row->emoji = emoji;
        row->on = json_is_true(json_object_get(o, "on"));
        row->count = json_integer_value(count);
    }
    return 0;
}

void publish_bus_unstored(void *ud, const char *rname, uint64_t seq, const char *tail, size_t len)
{
    (void)ud;
    if (!P.store || !len) return;
    json_t *o;
    char *buf;
    store_row row;
    int rc = tail_row(rname, seq, tail, len, &row, &o, &buf);
    if (rc == -2) {
        LOGE(MOD, "room %s seq %" PRIu64 ": unstored message has a malformed tail: not stored",
             rname, seq);
        bus_mark_stored(P.bus, rname, seq); /* never offer it again */
    }
    if (rc != 0) {
        json_decref(o);
        free(buf);
        return;
    }
    /* nothing to do when it is stored (or another row holds the seq: logged
     * by the store): the sweeper's next check of it, after the lease, sees
     * the row and forgets it; not stored (backlog full, store down): the
     * check misses it and the sweeper offers it again; a row Postgres can
     * never hold, now (store_write -3) or when its batch is refused
     * (on_backfill_stored): forgotten, or it would be offered every grace
     * for ever */
    backfill_write(rname, seq, &row);
    json_decref(o);
    free(buf);
}

/* ---- check: which unstored messages history holds, for the bus's sweeper ---- */

static void on_store_check(void *ud, int status, const unsigned char *stored)
{
    bus_check_done(ud, status, stored);
}

void publish_bus_check(void *ud, bus_check *req, size_t n, const char *const *rooms,
                       const uint64_t *seqs)
{
    (void)ud;
    if (!P.store || store_check(live_store(), n, rooms, seqs, on_store_check, req) < 0)
        bus_check_done(req, -1, NULL);
}

/* ---- seed: the durable head of a room, for the bus ------------------------ */

/* With the head come the room's stored client ids of the idempotency
 * window (one statement, store_seed): the bus writes them back to Redis
 * before it seeds the head, so that a resend of a stored message after a
 * Redis that lost its id keys is a duplicate again (docs/redis.md). */
static void on_store_seed(void *ud, int status, uint64_t max_seq, const char *epoch, size_t n,
                          const char *const *users, const char *const *ids, const uint64_t *seqs,
                          const uint64_t *ts)
{
    bus_seed *req = ud;
    for (size_t i = 0; status == 0 && i < n; i++)
        if (bus_seed_add_id(req, users[i], ids[i], seqs[i], ts[i]) != 0) status = -1;
    bus_seed_done(req, status, max_seq, epoch);
}

void publish_bus_seed(void *ud, const char *rname, bus_seed *req)
{
    (void)ud;
    if (!P.store || store_seed(live_store(), rname, bus_seed_ids_since_ms(req), BUS_IDS_PER_ROOM,
                               on_store_seed, req) < 0)
        bus_seed_done(req, -1, 0, NULL);
}
