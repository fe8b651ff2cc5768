/* chat_join: a connection's memberships — join (subscribe the room on the
 * bus, add presence, replay seq > since from the recent buffer or Postgres,
 * welcome for the URL room, presence_state, then live), leave, and delivery
 * to one membership in seq order (replay/live overlap never duplicates; a
 * live frame that arrives while joining waits on the membership).
 * Owns: the join operations in flight (join_op), one per joining
 * membership, and each one's timer (store_wait's steps and the deadline of
 * its Postgres read in flight, then the late read state lookup's retries);
 * leave or close cancels it (a pending bus/store/read state callback then
 * only frees it; a pending step or deadline is stopped and the op freed at
 * once, or when the read's late answer comes). The replay's Postgres part
 * ends within srv_read_deadline_ms() of its first read (op_read_begin):
 * past it, the join answers unavailable and the late answer only frees.
 * A replay that failed because the bus's seed timed out (Postgres did not
 * give the durable head in time) reads no head from Postgres again.
 * A join answered with "read_seq":0,"read_seq_pending":true (its lookup
 * did not answer in time: the 0 is a placeholder, never stored) keeps its
 * op on the membership until a later lookup tells the connection its
 * read_seq (late_read_seq).
 * Layer: with chat (uses conn, room, bus, store, presence, script). */
#define _GNU_SOURCE
#include "chat_join.h"
#include "chat_hold.h"
#include "backoff.h"
#include "hmap.h"
#include "room.h"
#include "log.h"
#include "readstate.h"
#include "srv.h"
#include "util.h"
#include "wire.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How a join's replay ended: each end of the replay chain passes its own to
 * join_stage2, and join_judge alone decides from it what the client is told
 * (gap_too_large and its reason, unavailable) and where live delivery
 * starts. */
typedef enum {
    END_REPLAYED,       /* every seq after since replayed (or no since) */
    END_PAST_BUFFER,    /* the recent buffer no longer reaches since, or more than
                         * CHAT_REPLAY_MAX after it: the client pages history */
    END_OTHER_EPOCH,    /* a since of another epoch or above the head */
    END_UNSTORED,       /* seqs after the replayed ones still not stored (store_wait) */
    END_UNAVAILABLE,    /* Postgres failed; or Redis down and the since not answered */
    END_RESUMED,        /* Redis down (head_fallback) with a known head, the since
                         * answered from Postgres (or none): live delivery must
                         * follow on (resume_delivery_after) */
    END_RESUMED_PAST_BUFFER,   /* the same, more than CHAT_REPLAY_MAX after since */
} join_end;

/* gap_too_large's reasons (gap_text) */
typedef enum { GAP_NONE, GAP_BUFFER, GAP_EPOCH, GAP_RETENTION, GAP_QUEUE } join_gap;

typedef struct join_op {
    conn_room *cr;          /* NULL once cancelled */
    int first;              /* the URL room at connect: send welcome */
    int has_since;
    uint64_t since;
    int tried_store;
    uint64_t wait_from;     /* mono ms the wait for seqs not stored yet began
                             * (store_wait; 0: not yet) */
    uint64_t pg_from;       /* mono ms of the replay's first Postgres read (0: none
                             * yet): its reads and wait end by srv_read_deadline_ms()
                             * after it (op_pg_left) */
    int reading;            /* a Postgres read of the replay is in flight, its
                             * deadline armed on wait (op_read_begin) */
    join_end read_end;      /* how the replay ends if that read is late */
    uv_timer_t wait;        /* store_wait's step or the deadline of the read in
                             * flight (either holds the replay chain's reference),
                             * then late_read_seq's retry: the op's own (wait_init:
                             * initialized, then the op is freed through its
                             * uv_close) */
    int wait_init;
    int late;               /* the join was answered read_seq_pending: looking it up again */
    backoff late_bo;        /* late_read_seq's delays */
    uint64_t head;
    msg **msgs;             /* replayed frames, in seq order */
    uint32_t n, cap;
    join_end end;           /* how the replay ended (join_stage2) */
    join_gap gap;           /* decided by join_judge (join_finish: GAP_QUEUE) */
    int unavailable;        /* decided by join_judge */
    uint64_t delivered;     /* head_fallback: the highest seq this node delivered in the
                             * room (bus_known_head; 0: it does not hold it, or none yet) */
    int head_known;         /* head_fallback: op->head is a known head (held, or Postgres') */
    int checked;            /* since/epoch compared with the room's head */
    char epoch[BUS_EPOCH_MAX + 1];        /* the room's, "" when unknown */
    char want_epoch[BUS_EPOCH_MAX + 1];   /* the client's (with since), "" when none */
    /* read state (readstate.c): the user's read_seq and the room's oldest
     * kept seq, looked up in parallel with the replay; welcome / the join
     * answer wait for it */
    int refs;               /* the replay chain + a pending lookup + a Postgres
                             * read in flight (op_read_begin) */
    int rs_pending;         /* lookup not answered yet */
    int rs_known;           /* read_seq below is known (else left out) */
    int stage2_waiting;     /* the replay finished first: stage 2 runs on the answer
                             * (holding the chain's reference meanwhile) */
    uint64_t read_seq, kept_from;
    uint64_t since0;        /* the client's since (op->since moves while replaying) */
    uint64_t gone_max;      /* the highest replayed seq left out (drop_gone_updates) */
    char *id;               /* the join frame's id (NULL: none): its errors echo it */
} join_op;

void chat_script_ctx(conn *c, const char *room, script_ctx *x)
{
    x->user = c->ident.user;
    x->name = c->ident.name;
    x->claims_json = c->ident.claims_json;
    x->room = room;
    x->node = g_srv.cfg.node_id;
    x->now_ms = now_ms();
    x->source = "ws";
}

/* ---- membership -------------------------------------------------------- */

static void op_wait_closed(uv_handle_t *h) { free(h->data); }

static void join_op_free(join_op *op)
{
    for (uint32_t i = 0; i < op->n; i++) msg_unref(op->msgs[i]);
    free(op->msgs);
    free(op->id);
    if (op->wait_init) uv_close((uv_handle_t *)&op->wait, op_wait_closed);
    else free(op);
}

/* Drops one reference (the replay chain's or the lookup's). */
static void op_release(join_op *op)
{
    if (--op->refs <= 0) join_op_free(op);
}

/* ", \"read_seq\":N". When the lookup did not answer in time: 0 and
 * "read_seq_pending":true (the value is unknown; an integer all the same, as
 * the contract types it, so that strictly typed clients still decode the
 * frame; the connection is told the value later: late_read_seq). The 0 is
 * only written here: op->read_seq stays unset and nothing is stored. */
static void read_seq_field(char *b, size_t n, const join_op *op)
{
    if (op->rs_known) snprintf(b, n, ",\"read_seq\":%" PRIu64, op->read_seq);
    else snprintf(b, n, ",\"read_seq\":0,\"read_seq_pending\":true");
}

/* Starts the op's timer (store_wait, late_read_seq). 0, or -1 when it
 * cannot be initialized. */
static int op_timer_start(join_op *op, uv_timer_cb cb, uint64_t ms)
{
    if (!op->wait_init) {
        if (uv_timer_init(g_srv.loop, &op->wait) != 0) return -1;
        op->wait.data = op;
        op->wait_init = 1;
    }
    uv_timer_start(&op->wait, cb, ms, 0);
    return 0;
}

/* The ms left before the replay's Postgres part must end (the HTTP reads'
 * bound, counted from its first read): 0 once it passed. */
static uint64_t op_pg_left(join_op *op)
{
    uint64_t now = mono_ms(), end;
    if (!op->pg_from) op->pg_from = now;
    end = op->pg_from + srv_read_deadline_ms();
    return end > now ? end - now : 0;
}

static void join_stage2(join_op *op, join_end end);

/* The Postgres read in flight did not answer in time (the store's
 * connection stuck: a statement blocked by a lock, or reads queued behind
 * one): the replay ends without it (op->read_end), never a join left
 * waiting; its late answer only drops its reference (op_read_done). */
static void on_read_deadline(uv_timer_t *t)
{
    join_op *op = t->data;
    op->reading = 0;
    LOGW("chat", "conn %llu room %s: Postgres did not answer the join's replay in time",
         (unsigned long long)op->cr->c->id, op->cr->r->name);
    join_stage2(op, op->read_end);
}

/* Before a Postgres read of the replay chain: the op's timer becomes its
 * deadline (holding the chain's reference, as a step does) and the read
 * holds a reference of its own. late: the replay's end if it does not
 * answer in time. 0, or -1 (no read: the time is up). */
static int op_read_begin(join_op *op, join_end late)
{
    uint64_t left = op_pg_left(op);
    if (!left || op_timer_start(op, on_read_deadline, left) < 0) return -1;
    op->reading = 1;
    op->read_end = late;
    op->refs++;
    return 0;
}

/* The read was refused at once (its callback never comes). */
static void op_read_refused(join_op *op)
{
    uv_timer_stop(&op->wait);
    op->reading = 0;
    op->refs--;
}

/* A Postgres read of the chain answered: 1 when the replay goes on with it
 * (the deadline stopped, the chain's reference back to the caller); 0 when
 * it came too late or the member is gone. The read's reference is dropped
 * either way. */
static int op_read_done(join_op *op)
{
    int go_on = op->reading && op->cr;
    if (go_on) {
        uv_timer_stop(&op->wait);
        op->reading = 0;
    }
    op_release(op);
    return go_on;
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

void chat_deliver(conn_room *cr, msg *m)
{
    if (m->seq && m->seq <= cr->last_seq) return;   /* replayed already */
    if (m->seq) cr->last_seq = m->seq;
    conn_send(cr->c, m);
}

static void send_presence_state(conn_room *cr, const presence_user *u, size_t n, uint64_t head,
                                const char *epoch, const char *rs)
{
    char head_json[768], ep[BUS_EPOCH_MAX * 6 + 16];
    wire_epoch_field(ep, sizeof ep, epoch);
    snprintf(head_json, sizeof head_json, "{\"type\":\"presence_state\",\"room\":\"%s\",\"seq\":%" PRIu64 "%s%s,",
             cr->r->name, head, ep, rs);
    size_t len;
    char *b = wire_users_json(head_json, u, n, &len);
    if (!b) return;
    conn_send_text(cr->c, b, len);
    free(b);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* A replayed message (or edit of one) whose delete is in the same replay
 * or among the live frames held meanwhile goes out erased, as history
 * shows it ("deleted":true, no body), wherever it was replayed from: the
 * recent buffer still holds the original body, and Postgres rows read
 * before the delete was stored too. */
static void erase_deleted(join_op *op, conn_room *cr)
{
    size_t total = (size_t)op->n + cr->nheld, nd = 0;
    if (!op->n) return;   /* nothing replayed: live frames go out as they came */
    uint64_t *content = malloc(op->n * sizeof *content + 1), *del = malloc(total * sizeof *del);
    if (!content || !del) {   /* never an erased body sent as it was: no replay at all */
        free(content);
        free(del);
        conn_close_oom(cr->c);
        return;
    }
    for (size_t i = 0; i < total; i++) {
        uint64_t d;
        uint64_t c = wire_frame_content_of(i < op->n ? op->msgs[i] : cr->held[i - op->n], &d);
        if (i < op->n) content[i] = c;
        if (d) del[nd++] = d;
    }
    if (nd) qsort(del, nd, sizeof *del, cmp_u64);
    for (uint32_t i = 0; nd && i < op->n; i++) {
        if (!content[i] || !bsearch(&content[i], del, nd, sizeof *del, cmp_u64)) continue;
        msg *e = wire_erased_frame(cr->r->name, op->msgs[i]);
        if (!e) {   /* out of memory: closed (1011), nothing more is sent */
            conn_close_oom(cr->c);
            break;
        }
        msg_unref(op->msgs[i]);
        op->msgs[i] = e;
    }
    free(content);
    free(del);
}

/* A replayed update (edit, delete, react) whose target retention removed
 * (below the room's kept_from) is left out, wherever the replay read it
 * (the recent buffer, or a Postgres row stored above the boundary): the
 * client cannot have that message (history ends above it), the update
 * would name a message it never sees. Its seq still counts as replayed
 * (op->gone_max: live delivery resumes after it, never sends it). */
static void drop_gone_updates(join_op *op)
{
    uint32_t k = 0;
    if (!op->kept_from) return;   /* retention removed nothing (or unknown) */
    for (uint32_t i = 0; i < op->n; i++) {
        msg *m = op->msgs[i];
        uint64_t t = wire_update_target(m);
        if (t && t < op->kept_from) {
            if (m->seq > op->gone_max) op->gone_max = m->seq;
            msg_unref(m);
            continue;
        }
        op->msgs[k++] = m;
    }
    op->n = k;
}

/* The replay and the live frames held during it fit the connection's
 * queue beside what it holds: counted as chat_deliver will queue them (a
 * held frame the replay covers is dropped, not queued), with the error
 * frames sent before them. */
static int replay_fits(const join_op *op, const conn_room *cr)
{
    size_t frames = (op->gap ? 1 : 0) + (op->unavailable ? 1 : 0), bytes = 0;
    uint64_t last = cr->last_seq;
    for (uint32_t k = 0; k < op->n + cr->nheld; k++) {
        const msg *m = k < op->n ? op->msgs[k] : cr->held[k - op->n];
        if (m->seq && m->seq <= last) continue;
        if (m->seq) last = m->seq;
        frames++;
        bytes += msg_wire_len(m);
    }
    return outq_fits(&cr->c->q, frames, bytes);
}

/* Live delivery starts after the head the join announces (a since that
 * is not honoured: the client pages history up to that head). */
static void start_after_head(join_op *op, conn_room *cr)
{
    cr->last_seq = op->head;
    /* the head_fallback's head can be above what this node delivered
     * (its floor, the Postgres head): the seqs between reach the member
     * by ordered delivery once Redis is back, so it starts after the
     * delivered one (it may get a seq at or below the welcome's: the
     * client drops it by seq), never skipping one */
    if (op->delivered > 0 && cr->last_seq > op->delivered)
        cr->last_seq = op->delivered;
}

static const char *gap_text(join_gap g)
{
    switch (g) {
    case GAP_NONE: break;
    case GAP_BUFFER: return "the recovery buffer no longer reaches since; page history over HTTP";
    case GAP_EPOCH: return "since is not a seq of this room's current epoch; page history over HTTP";
    case GAP_RETENTION:
        return "messages after since were deleted (history retention); page history over HTTP";
    case GAP_QUEUE:
        return "the messages after since do not fit this connection's queue "
               "(CHAT_MAX_QUEUE / CHAT_MAX_QUEUE_BYTES); page history over HTTP";
    }
    return NULL;
}

static void on_read_lookup(void *ud, int status, uint64_t read_seq, uint64_t kept_from);
static int late_read_seq(join_op *op);

/* A retry of late_read_seq: the op's reference goes to the lookup. */
static void on_late_timer(uv_timer_t *t)
{
    join_op *op = t->data;
    conn_room *cr = op->cr;
    op->rs_pending = 1;
    if (readstate_lookup(cr->c->ident.user, cr->r->name, on_read_lookup, op) == 0) return;
    op->rs_pending = 0;
    if (!late_read_seq(op)) {
        cr->op = NULL;
        op_release(op);
    }
}

/* The join was answered with "read_seq_pending":true (the database did
 * not answer its lookup in time): the membership keeps the op, which looks
 * the read state up again after a delay (the core backoff, 0.5 s growing to 30 s)
 * until it answers, then tells the connection as the user's own read
 * receipt ({"type":"read",...,"user":<self>}: what a client already applies
 * to its read position), or until the member leaves (join_cancel). 1 when
 * a retry is armed. */
static int late_read_seq(join_op *op)
{
    if (!g_srv.store) return 0;
    if (!op->late) {
        op->late = 1;
        backoff_init(&op->late_bo, 1000, 30000);
    }
    return op_timer_start(op, on_late_timer, backoff_next(&op->late_bo)) == 0;
}

/* The late lookup answered: 1 when the op goes on (a retry armed). */
static int late_answer(join_op *op, int status, uint64_t read_seq)
{
    conn_room *cr = op->cr;
    if (status != 0) return late_read_seq(op);
    char b[JSON_IDENT_MAX + 256];
    size_t len = readstate_receipt_json(b, sizeof b, cr->r->name, cr->c->ident.user,
                                        cr->c->ident.name, read_seq);
    if (len) conn_send_text(cr->c, b, len);
    return 0;
}

static void join_finish(join_op *op, const presence_user *u, size_t n)
{
    conn_room *cr = op->cr;
    char rs[48];
    read_seq_field(rs, sizeof rs, op);
    send_presence_state(cr, u, n, op->head, op->epoch, rs);
    drop_gone_updates(op);
    erase_deleted(op, cr);
    if (op->n && !replay_fits(op, cr)) {
        /* the replay is bounded by the connection's queue as well as by
         * CHAT_REPLAY_MAX: queued at once over the bounds it would close a
         * client that reads as a slow consumer (1008) before its first
         * frame. It pages history instead; live delivery goes on. */
        LOGI("chat", "conn %llu room %s: a replay of %u messages does not fit the queue: gap_too_large",
             (unsigned long long)cr->c->id, cr->r->name, op->n);
        for (uint32_t i = 0; i < op->n; i++) msg_unref(op->msgs[i]);
        op->n = 0;
        op->gap = GAP_QUEUE;
        /* like every refused since: live after the announced head (the
         * held frames at or below it are in the history the client pages) */
        start_after_head(op, cr);
    }
    const char *gap = gap_text(op->gap);
    if (gap) conn_send_error_room(cr->c, "gap_too_large", gap, op->id, cr->r->name);
    if (op->unavailable)   /* after a partial replay (Redis down): for what follows it */
        conn_send_error_room(cr->c, "unavailable",
                             op->n ? "recovery past the replayed messages is unavailable right now"
                                   : "recovery is unavailable right now",
                             op->id, cr->r->name);
    for (uint32_t i = 0; i < op->n; i++) chat_deliver(cr, op->msgs[i]);
    if (!op->gap && op->gone_max > cr->last_seq) cr->last_seq = op->gone_max;
    for (uint32_t i = 0; i < cr->nheld; i++) {
        chat_deliver(cr, cr->held[i]);
        msg_unref(cr->held[i]);
    }
    free(cr->held);
    cr->held = NULL;
    cr->nheld = cr->capheld = 0;
    cr->live = 1;
    for (uint32_t i = 0; i < op->n; i++) msg_unref(op->msgs[i]);
    op->n = 0;
    if (op->rs_known || !late_read_seq(op)) {
        cr->op = NULL;
        op_release(op);
    }
    chat_hold_join_done(cr->c);
}

static const char *conn_user_key(const void *c)
{
    return ((const conn *)c)->ident.user;
}

/* The presence store cannot answer (Redis down): the users this node
 * itself has in the room (its members, each user once) rather than an
 * empty list — a lower bound, like the head of a welcome then. The set of
 * users seen finds each key in its connection (no key copies: its slots
 * are its only allocation). */
static void join_finish_local_presence(join_op *op)
{
    room *r = op->cr->r;
    presence_user *u = r->nmembers ? malloc(sizeof *u * r->nmembers) : NULL;
    size_t n = 0;
    hmap seen;
    hmap_init_keyfn(&seen, conn_user_key);
    for (uint32_t i = 0; u && i < r->nmembers; i++) {
        conn *mc = r->members[i]->c;
        if (conn_is_closing(mc) || hmap_get(&seen, mc->ident.user)) continue;
        if (hmap_put(&seen, mc->ident.user, mc) != 0) break;
        u[n].user = mc->ident.user;
        u[n].name = mc->ident.name;
        n++;
    }
    hmap_free(&seen);
    join_finish(op, u, n);
    free(u);
}

static void on_presence_list(void *ud, int status, const presence_user *u, size_t n)
{
    join_op *op = ud;
    if (!op->cr) { op_release(op); return; }
    if (status != 0) { join_finish_local_presence(op); return; }
    join_finish(op, u, n);
}

static void send_welcome(conn *c, uint64_t head, const char *epoch, const char *rs)
{
    char b[JSON_IDENT_MAX + 1024], ep[BUS_EPOCH_MAX * 6 + 16];
    wire_epoch_field(ep, sizeof ep, epoch);
    size_t o = (size_t)snprintf(b, sizeof b, "{\"type\":\"welcome\",\"user\":");
    o += (size_t)json_escape(b + o, sizeof b - o, c->ident.user, strlen(c->ident.user));
    memcpy(b + o, ",\"name\":", 8); o += 8;
    o += (size_t)json_escape(b + o, sizeof b - o, c->ident.name, strlen(c->ident.name));
    o += (size_t)snprintf(b + o, sizeof b - o,
                          ",\"node\":\"%s\",\"room\":\"%s\",\"heartbeat_ms\":%lld,\"presence_ttl_ms\":%lld,\"seq\":%" PRIu64 "%s%s}",
                          g_srv.cfg.node_id, c->url_room, (long long)g_srv.heartbeat_ms,
                          (long long)g_srv.presence_ttl_ms, head, ep, rs);
    conn_send_text(c, b, o);
}

/* Makes the room's ordered delivery on this node resume after c where it
 * has no last seq yet (bus_resume_after: a room it does not hold, or holds
 * by a publish ack alone, resumes after c at the first sync, fetching the
 * rest like a resync — before, it started after the head Redis had then,
 * and the seqs between were skipped silently), and says whether every seq
 * above c then reaches the member cr live (docs/redis.md "Recovery while
 * Redis is down"): 1 when delivery goes on after c, or went past c while cr
 * was a member (those seqs wait in cr->held, which then starts at or below
 * c+1); 0 when a seq above c was delivered here before the join and will
 * not come again (broadcast, not stored yet), or the room synced meanwhile
 * at a later head. */
static int resume_delivery_after(conn_room *cr, uint64_t c)
{
    if (bus_resume_after(g_srv.bus, cr->r->name, c)) return 1;
    return cr->nheld > 0 && cr->held[0]->seq <= c + 1;
}

/* The one place that decides, from how the replay ended, what the join
 * tells the client (join_finish adds the queue's bound) and where live
 * delivery starts. */
static void join_judge(join_op *op)
{
    conn_room *cr = op->cr;
    join_end e = op->end;
    op->gap = e == END_PAST_BUFFER || e == END_RESUMED_PAST_BUFFER ? GAP_BUFFER
              : e == END_OTHER_EPOCH ? GAP_EPOCH : GAP_NONE;
    /* a since below the oldest kept message: those messages are gone
     * (retention), also when the recent buffer still has some */
    if (op->has_since && !op->gap && op->kept_from > 0 && op->since0 + 1 < op->kept_from)
        op->gap = GAP_RETENTION;
    /* seqs not stored yet ended the replay (store_wait), unless retention
     * deleted them (gone, not late: the gap above) */
    op->unavailable = e == END_UNAVAILABLE || (e == END_UNSTORED && !op->gap);
    /* live delivery starts after the head unless since was honoured (a
     * refused since is not a seq of this room's numbering) */
    if (!op->has_since || op->gap) start_after_head(op, cr);
    /* a join while Redis is down (head_fallback) with a known head: the
     * member has every seq up to c (its replay's last, or the announced
     * head): live delivery must go on right after it
     * (resume_delivery_after) or the member is told (unavailable), never a
     * silent jump in seq */
    if (e == END_RESUMED || e == END_RESUMED_PAST_BUFFER) {
        uint64_t c = op->has_since && !op->gap ? op->since : cr->last_seq;
        op->unavailable = !resume_delivery_after(cr, c);
    }
}

/* The replay chain ended (end: how); welcome and presence_state follow once
 * the read state lookup answered too. */
static void join_stage2(join_op *op, join_end end)
{
    conn_room *cr = op->cr;
    op->end = end;
    if (op->rs_pending) {   /* the read state lookup answers later */
        op->stage2_waiting = 1;
        return;
    }
    join_judge(op);
    if (op->first) {        /* the URL room's join at connect: once per connection */
        char rs[48];
        read_seq_field(rs, sizeof rs, op);
        send_welcome(cr->c, op->head, op->epoch, rs);
        op->first = 0;
    }
    if (presence_list(g_srv.presence, cr->r->name, on_presence_list, op) < 0)
        join_finish_local_presence(op);
}

static void on_replay(void *ud, int status, const bus_entry *e, size_t n, uint64_t head,
                      const char *epoch);

/* Pushes the rows that continue the replay (a contiguous run from
 * op->since + 1: a hole in history, a row not stored yet, must come from
 * the recent buffer or be reported, never skipped) and moves op->since to
 * the last one. Returns how many. */
static size_t push_store_rows(join_op *op, const store_row *rows, size_t n)
{
    if (n == 0 || rows[0].seq != op->since + 1) return 0;
    const char *room = op->cr->r->name;
    size_t run = 1;
    while (run < n && rows[run].seq == rows[run - 1].seq + 1) run++;
    for (size_t i = 0; i < run; i++) {
        /* messages and message updates alike, each as it was broadcast,
         * but a deleted message and its edits (erased in Postgres: body
         * "") as history shows them: "deleted":true, no body (the delete
         * follows in the same replay) */
        size_t tl;
        const store_row *w = &rows[i];
        char *t = w->deleted && (w->kind == STORE_MESSAGE || w->kind == STORE_EDIT)
                      ? wire_erased_tail(w->kind == STORE_MESSAGE ? WIRE_MESSAGE : WIRE_EDIT,
                                         w->client_id, w->target, w->user, w->name, w->ts, &tl)
                  : w->kind == STORE_MESSAGE
                      ? wire_message_tail_meta(w->client_id, w->user, w->name, w->body,
                                               w->body_len, w->meta, w->meta_len, w->ts, &tl)
                      : wire_update_tail(w->kind, w->client_id, w->target, w->user, w->name,
                                         w->ts, w->body, w->body_len, w->emoji, w->on,
                                         w->count < 0 ? 0 : w->count, &tl);
        if (!t) continue;
        op_push(op, wire_message_frame(room, rows[i].seq, t, tl));
        free(t);
    }
    op->since = rows[run - 1].seq;
    return run;
}

static void on_fallback_rows(void *ud, int status, const store_row *rows, size_t n)
{
    join_op *op = ud;
    if (!op_read_done(op)) return;
    if (status == 0) push_store_rows(op, rows, n);
    join_stage2(op, status == 0 ? END_RESUMED : END_UNAVAILABLE);
}

/* Redis cannot replay, Postgres answered its head (op->head is the best
 * known head, op->epoch the room's): replay seq > since from Postgres as
 * far as it is stored, bounded like any replay (CHAT_REPLAY_MAX here, the
 * queue in join_finish). A since that cannot be checked without Redis (of
 * another epoch than Postgres', or above every head known here) keeps
 * unavailable. 1 when the range read is on its way, else 0 and *end. */
static int fallback_replay(join_op *op, join_end *end)
{
    *end = END_UNAVAILABLE;
    if (op->want_epoch[0] && strcmp(op->want_epoch, op->epoch) != 0) return 0;
    if (op->since > op->head) return 0;
    if (op->head - op->since + op->n > (uint64_t)g_srv.cfg.replay_max) {
        /* the client pages history; live delivery resumes as without since */
        for (uint32_t i = 0; i < op->n; i++) msg_unref(op->msgs[i]);
        op->n = 0;
        op->since = op->head;
        *end = END_RESUMED_PAST_BUFFER;
        return 0;
    }
    if (op->since == op->head) {   /* nothing stored after since */
        *end = END_RESUMED;
        return 0;
    }
    if (op_read_begin(op, END_UNAVAILABLE) < 0) return 0;
    if (store_range(g_srv.store, op->cr->r->name, op->since, UINT64_MAX,
                    (int)(g_srv.cfg.replay_max - op->n), 0, on_fallback_rows, op) == 0)
        return 1;
    op_read_refused(op);
    return 0;
}

/* Redis down and Postgres could not answer: a since is unavailable;
 * without one, only the handover to live delivery is judged, when a head is
 * known. */
static join_end unanswered_end(const join_op *op)
{
    return op->has_since ? END_UNAVAILABLE : op->head_known ? END_RESUMED : END_REPLAYED;
}

static void on_fallback_head(void *ud, int status, uint64_t max_seq, const char *epoch)
{
    join_op *op = ud;
    if (!op_read_done(op)) return;
    if (status != 0) {
        join_stage2(op, unanswered_end(op));
        return;
    }
    op->head_known = 1;
    if (max_seq > op->head) op->head = max_seq;
    if (epoch && *epoch && !op->epoch[0]) snprintf(op->epoch, sizeof op->epoch, "%s", epoch);
    join_end end = END_RESUMED;   /* without since: the handover alone */
    if (op->has_since && fallback_replay(op, &end)) return;
    join_stage2(op, end);
}

/* The bus cannot replay (Redis down, or the room's shard): welcome and the
 * join answer still carry the best head known (docs/redis.md "Joining
 * while Redis is down"): this node's own (bus_known_head), raised to the
 * durable head and its epoch from Postgres when there is a database. Never
 * above the real head; seqs above it are delivered once Redis is back.
 * With since, seq > since is replayed from Postgres (fallback_replay);
 * unavailable when Postgres cannot answer either, or when what follows the
 * replay may not reach the member (join_judge: resume_delivery_after). */
static void head_fallback(join_op *op, int head_late)
{
    uint64_t h;
    if (bus_known_head(g_srv.bus, op->cr->r->name, &h, &op->delivered)) {
        op->head_known = 1;
        if (h > op->head) op->head = h;
    }
    /* head_late: the replay failed because the bus's seed did not get this
     * very head from Postgres in time (BUS_HEAD_LATE): asking again would
     * wait a second deadline for the same stuck read (the join answers
     * within one) */
    if (g_srv.store && !head_late &&
        op_read_begin(op, unanswered_end(op)) == 0) {
        if (store_head(g_srv.store, op->cr->r->name, on_fallback_head, op) == 0) return;
        op_read_refused(op);
    }
    join_stage2(op, unanswered_end(op));
}

/* The seqs after op->since are the room's (its head is above) but the
 * recent buffer no longer has them and Postgres not yet: broadcast, not
 * stored yet (a slow or stalled store, a dead node's rows before the
 * backfill). The range is read again every JOIN_UNSTORED_STEP_MS for up to
 * JOIN_UNSTORED_WAIT_MS of elapsed time (live frames wait on the membership
 * meanwhile; a read that does not answer, or the replay's Postgres
 * deadline, ends it sooner: op_read_begin), then the join says unavailable
 * for what it could not replay. Never
 * gap_too_large: within CHAT_REPLAY_MAX that tells the client to page a
 * history that lacks those seqs too (a silent gap); retention's gap
 * (kept_from) is the exception: deleted, not late. 1 when waiting. */
#define JOIN_UNSTORED_STEP_MS 100
#define JOIN_UNSTORED_WAIT_MS 2000

static void on_store_rows(void *ud, int status, const store_row *rows, size_t n);

/* A step of the wait (never after a leave or close: join_cancel stops it). */
static void on_unstored_timer(uv_timer_t *t)
{
    join_op *op = t->data;
    if (g_srv.store && op_read_begin(op, END_UNAVAILABLE) == 0) {
        if (store_range(g_srv.store, op->cr->r->name, op->since, UINT64_MAX,
                        (int)(g_srv.cfg.replay_max - op->n), 0, on_store_rows, op) == 0)
            return;
        op_read_refused(op);
    }
    join_stage2(op, END_UNSTORED);
}

static int store_wait(join_op *op)
{
    uint64_t now = mono_ms();
    if (!op->wait_from) op->wait_from = now;
    if (now - op->wait_from >= JOIN_UNSTORED_WAIT_MS) return 0;
    if (!op->rs_pending && op->kept_from > op->since + 1) return 0;   /* retention: gone */
    if (op_pg_left(op) <= JOIN_UNSTORED_STEP_MS) return 0;             /* no time for a step */
    return op_timer_start(op, on_unstored_timer, JOIN_UNSTORED_STEP_MS) == 0;
}

static void on_store_rows(void *ud, int status, const store_row *rows, size_t n)
{
    join_op *op = ud;
    if (!op_read_done(op)) return;
    if (status < 0 || push_store_rows(op, rows, n) == 0) {
        if (status >= 0 && store_wait(op)) return;
        join_stage2(op, status >= 0 ? END_UNSTORED : END_UNAVAILABLE);
        return;
    }
    /* the rest (newer than what Postgres had) from the recent buffer; when
     * Redis cannot answer now, as a replay without it (head_fallback) */
    if (bus_replay(g_srv.bus, op->cr->r->name, op->since, (size_t)g_srv.cfg.replay_max, on_replay,
                   op) < 0)
        head_fallback(op, 0);
}

static void on_replay(void *ud, int status, const bus_entry *e, size_t n, uint64_t head,
                      const char *epoch)
{
    join_op *op = ud;
    if (!op->cr) { op_release(op); return; }
    if (head > op->head) op->head = head;
    if (status >= 0 && epoch && *epoch) snprintf(op->epoch, sizeof op->epoch, "%s", epoch);
    if (status >= 0 && !op->checked && op->has_since) {
        /* a since of another epoch (the room's seqs restarted: Redis lost
         * its data without a database) or beyond the head cannot be
         * honoured: the client pages history instead (gap_too_large) */
        op->checked = 1;
        if ((op->want_epoch[0] && strcmp(op->want_epoch, op->epoch) != 0) || op->since > head) {
            join_stage2(op, END_OTHER_EPOCH);
            return;
        }
    }
    join_end end = END_REPLAYED;
    if (status == 0) {
        for (size_t i = 0; i < n; i++)
            op_push(op, wire_message_frame(op->cr->r->name, e[i].seq, e[i].tail, e[i].len));
    } else if (status == 1) {
        uint64_t need = head > op->since ? head - op->since : 0;
        if (g_srv.store && need <= (uint64_t)g_srv.cfg.replay_max) {
            /* Postgres, then (its rows stopped below the buffer) again
             * while the rest is being stored */
            if (!op->tried_store) {
                op->tried_store = 1;
                if (op_read_begin(op, END_UNAVAILABLE) == 0) {
                    if (store_range(g_srv.store, op->cr->r->name, op->since, UINT64_MAX,
                                    (int)g_srv.cfg.replay_max, 0, on_store_rows, op) == 0)
                        return;
                    op_read_refused(op);
                }
            } else if (store_wait(op)) {
                return;
            }
            end = END_UNSTORED;
        } else {
            end = END_PAST_BUFFER;
        }
    } else {
        head_fallback(op, status == BUS_HEAD_LATE);
        return;
    }
    join_stage2(op, end);
}

/* The user's read_seq and the room's oldest kept seq, in parallel with
 * the replay (readstate.c batches the lookups of many joins). */
static void on_read_lookup(void *ud, int status, uint64_t read_seq, uint64_t kept_from)
{
    join_op *op = ud;
    op->rs_pending = 0;
    if (op->cr && op->late) {
        if (late_answer(op, status, read_seq)) return;
        op->cr->op = NULL;   /* done: the op's last reference goes below */
    } else if (op->cr) {
        if (status == 0) {
            op->rs_known = 1;
            op->read_seq = read_seq;
            op->kept_from = kept_from;
        }
        if (op->stage2_waiting) {
            op->stage2_waiting = 0;
            join_stage2(op, op->end);
        }
    }
    op_release(op);
}

static void start_read_lookup(conn *c, join_op *op)
{
    if (!g_srv.store) {             /* no database: nothing was ever read */
        op->rs_known = 1;
        return;
    }
    op->rs_pending = 1;
    op->refs++;
    if (readstate_lookup(c->ident.user, op->cr->r->name, on_read_lookup, op) < 0) {
        op->rs_pending = 0;         /* store not ready: read_seq pending (told later) */
        op->refs--;
    }
}

int chat_join(conn *c, const char *name, int has_since, uint64_t since, const char *epoch,
                     int first, const char *id)
{
    conn_room *cr = conn_find_room(c, name);
    if (cr) return 0;    /* already a member: nothing to do */
    if (c->nrooms >= (uint32_t)g_srv.max_rooms) {
        conn_send_error_room(c, "too_many_rooms", "joined rooms limit reached", id, name);
        return -1;
    }
    if (c->nrooms == c->caprooms) {
        uint32_t nc = c->caprooms ? c->caprooms * 2 : 2;
        conn_room **nr = realloc(c->rooms, sizeof *nr * nc);
        if (!nr) { conn_send_error_room(c, "unavailable", "out of memory", id, name); return -1; }
        c->rooms = nr;
        c->caprooms = nc;
    }
    cr = calloc(1, sizeof *cr);
    join_op *op = calloc(1, sizeof *op);
    char *idc = id ? strdup(id) : NULL;
    int created;
    room *r = cr && op && (idc || !id) ? room_get(name, &created) : NULL;
    if (!r || room_add_member(r, cr) < 0) {
        if (r && !r->nmembers) room_remove_member(r, cr);
        free(cr);
        free(op);
        free(idc);
        conn_send_error_room(c, "unavailable", "out of memory", id, name);
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
    op->id = idc;
    op->first = first;
    op->has_since = has_since;
    op->since = op->since0 = since;
    op->refs = 1;
    start_read_lookup(c, op);
    if (has_since && epoch) snprintf(op->want_epoch, sizeof op->want_epoch, "%s", epoch);
    if (bus_replay(g_srv.bus, r->name, has_since ? since : UINT64_MAX, (size_t)g_srv.cfg.replay_max,
                   on_replay, op) < 0)
        head_fallback(op, 0);
    return 0;
}

/* The member left (or its connection closed) while joining: a pending
 * callback of the replay chain, of a Postgres read or of the read state
 * lookup only drops its reference; the op's armed timer (a store_wait
 * step, a read's deadline: either holds the chain's reference) is stopped
 * here and the chain's reference dropped (no orphaned timer, no Postgres
 * read for a member that is gone); so is a stage 2 that waits for the read
 * state lookup (before: its reference was never dropped, the op leaked). */
static void join_cancel(join_op *op)
{
    op->cr = NULL;
    if (op->wait_init && uv_is_active((uv_handle_t *)&op->wait)) {
        uv_timer_stop(&op->wait);
        op_release(op);
    } else if (op->stage2_waiting) {   /* the chain ended: its reference waited
                                        * for the lookup, which holds its own */
        op->stage2_waiting = 0;
        op_release(op);
    }
}

void chat_leave(conn *c, uint32_t idx)
{
    conn_room *cr = c->rooms[idx];
    char name[CHAT_ROOM_MAX + 1];
    snprintf(name, sizeof name, "%s", cr->r->name);
    if (cr->op) join_cancel(cr->op);
    for (uint32_t i = 0; i < cr->nheld; i++) msg_unref(cr->held[i]);
    free(cr->held);
    if (room_remove_member(cr->r, cr)) bus_unsubscribe(g_srv.bus, name);
    presence_remove(g_srv.presence, name, c->id);
    c->rooms[idx] = c->rooms[--c->nrooms];
    free(cr);
    script_ctx x;
    chat_script_ctx(c, name, &x);
    script_on_leave(g_srv.script, &x);
}

void chat_join_buffer(conn_room *cr, msg *m)
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

