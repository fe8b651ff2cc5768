/* store: see store.h. One libpq connection per store, driven without blocking
 * from the caller's libuv loop: a uv_poll on PQsocket (re-created when libpq
 * switches sockets while connecting), one statement in flight at a time.
 *
 * Connection life: IDLE (retry timer armed) -> CONNECTING (PQconnectPoll) ->
 * SETUP (migrations under an advisory lock, then PREPARE of the paging
 * statements) -> READY. Any error resets to IDLE: the in-flight batch goes
 * back to the head of the write queue (retried after reconnect, idempotent
 * thanks to ON CONFLICT DO NOTHING), range queries fail with -1. Except a
 * batch Postgres refused because of a row in it (batch_refused): bisected
 * on the same connection down to that row, which alone gets -3.
 *
 * Timers: `wake` flushes batches (batch_ms after the first queued row, or at
 * once when batch_max rows are queued / when draining) and runs deferred work;
 * `guard` is the reconnect backoff while IDLE, the connect timeout while
 * CONNECTING/SETUP and the statement watchdog while READY.
 *
 * Re-entrancy: user callbacks may call any store function, store_free too.
 * Every entry from libuv bumps `depth`; store_free with depth > 0 tears
 * everything down but leaves the struct to the outermost entry to free.
 *
 * Why one file of ~1,350 lines (over the ~700 of the rest of core/): it is
 * one concept, a Postgres connection with one statement in flight. The
 * batch write path, the history reads, the backfill check and the other
 * modules' statements (read state, retention) all share that one slot, the
 * reconnect that puts the in-flight batch back at the head of the queue,
 * the watchdog and the depth guard above; split apart they would have to
 * export the struct, its queue and its state machine to each other. What
 * is not the connection already lives apart: the schema and migrations
 * (store_schema.c), the SQL of other modules (their own files, run through
 * store_query). Sections: helpers, connection, the batch write path,
 * libuv callbacks, public API, statements of other modules, the backfill
 * check. */
#define _GNU_SOURCE
#include "store.h"
#include "store_schema.h"
#include "backoff.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "store"
#define BACKOFF_MIN_MS 100u
#define BACKOFF_MAX_MS 5000u
#define CONNECT_TIMEOUT_MS 10000u
#define STATEMENT_TIMEOUT_MS 30000u
#define RANGE_QUEUE_MAX 10000u

enum { ST_IDLE, ST_CONNECTING, ST_SETUP, ST_READY };
enum { OP_NONE, OP_LOCK, OP_UPGRADE, OP_PREP_DESC, OP_PREP_ASC, OP_PREP_HEAD, OP_PREP_HIST,
       OP_PREP_TARGET, OP_PREP_REACT, OP_PREP_VERIFY, OP_PREP_SEED, OP_PREP_INSERT, OP_BATCH, OP_VERIFY, OP_RANGE, OP_HEAD,
       OP_QUERY, OP_PREP_QUERY };
#define QUERY_PREPARED_MAX 16   /* named statements of store_query per connection */
enum { Q_RANGE = 0, Q_HEAD, Q_SEED, Q_QUERY, Q_HISTORY, Q_TARGET, Q_REACTIONS };

/* One queued row; strings live in data[] after the struct. */
typedef struct wnode {
    struct wnode *next;
    store_write_cb cb;
    void *ud;
    uint64_t t_enq;             /* mono_ns when queued */
    int status;                 /* for the callback: 0, -2 (conflict), -3 (refused) or -4
                                 * (the id names another kind of row) */
    const char *val[STORE_INSERT_NCOLS];
    char seq_txt[24], ts_txt[24], kind_txt[8], target_txt[24], count_txt[24];
    char data[];
} wnode;

/* One queued read: a range (Q_RANGE), a history page (Q_HISTORY), a room
 * head (Q_HEAD), a room's seed (Q_SEED: the head and the client ids of the
 * idempotency window, after = since ms), an update's target (Q_TARGET, seq in after), a message's
 * reactions (Q_REACTIONS, target in after) or a statement of another
 * module (Q_QUERY: sql and its parameters live in room[], after the room
 * name's place). */
typedef struct rnode {
    struct rnode *next;
    int kind;
    store_rows_cb cb;
    store_head_cb hcb;
    store_seed_cb scb;
    store_query_cb qcb;
    store_target_cb tcb;
    store_reactions_cb xcb;
    void *ud;
    int newest;
    int has_id;             /* Q_TARGET: a user and a client id follow the room */
    char after[24], before[24], limit[16];
    const char *sql;
    const char *name;       /* Q_QUERY: prepared under this name, or NULL */
    int nparams;
    const char **params;
    char room[];
} rnode;

typedef struct dnode {
    struct dnode *next;
    void (*cb)(void *ud);
    void *ud;
} dnode;

struct store {
    uv_loop_t *loop;
    char *conninfo;
    int batch_max, batch_ms;
    size_t pending_max;

    PGconn *pg;
    uv_poll_t *poll;
    int poll_fd, poll_events;
    uv_timer_t *wake, *guard;
    uint64_t wake_due;          /* mono ms the wake timer fires at */
    int wake_armed;

    int state, op;
    int ins_prepared;           /* STORE_STMT_INSERT exists on this connection */
    const char *q_prepared[QUERY_PREPARED_MAX]; /* store_query names prepared on it */
    int nq_prepared;
    uint64_t op_t0;
    PGresult *op_res;           /* last tuples result of the current op */
    int op_failed;
    long op_rows;               /* rows affected (batch) */
    long batch_inserted;        /* rows the in-flight batch inserted */
    char op_err[256];
    char op_state[6];           /* the failed op's SQLSTATE ("" when none) */
    char op_primary[256];       /* and its primary message */
    int schema_from;

    wnode *q_head, *q_tail;     /* queued writes, oldest first */
    size_t q_len;
    wnode *fl_head, *fl_tail;   /* the in-flight batch */
    size_t fl_len;
    size_t suspect;             /* rows at the head of the queue (or in flight) known
                                 * to hold a row Postgres refuses: bisected */
    int refused_check;          /* the in-flight row, refused alone, is being looked up */
    char ref_state[6], ref_primary[256];   /* why it was refused (for the log) */
    rnode *r_head, *r_tail, *r_cur;
    size_t r_len;
    dnode *drains;
    int draining, last_was_batch;

    backoff bo;
    unsigned long connects;
    int dead, depth;

    metric_hist *m_batch_dur, *m_range_dur, *m_batch_rows;
    metric_gauge *m_pending;
    metric_counter *m_reconnects, *m_rows_written, *m_conflicts, *m_refused;
    metric_hist *m_query_dur;
};

/* store_query keeps its parameter pointers at the start of room[] */
_Static_assert(offsetof(rnode, room) % _Alignof(char *) == 0, "rnode.room must be pointer-aligned");

static const double BATCH_ROW_BUCKETS[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000};

static void on_io(uv_poll_t *h, int status, int events);
static void on_wake(uv_timer_t *t);
static void on_guard(uv_timer_t *t);
static void dispatch(store *s);
static void sent(store *s, int op, int ok);

/* ---------- small helpers ---------- */

static void free_handle(uv_handle_t *h) { free(h); }

static void close_handle(void *h)
{
    if (h && !uv_is_closing((uv_handle_t *)h)) uv_close((uv_handle_t *)h, free_handle);
}

static void guard_start(store *s, uint64_t ms)
{
    uv_timer_start(s->guard, on_guard, ms, 0);
}

/* Fire the wake timer in `ms` unless it already fires sooner. */
static void wake_in(store *s, uint64_t ms)
{
    uint64_t due = mono_ms() + ms;
    if (s->wake_armed && s->wake_due <= due) return;
    s->wake_due = due;
    s->wake_armed = 1;
    uv_timer_start(s->wake, on_wake, ms, 0);
}

static void pending_add(store *s, double d) { metric_gadd(s->m_pending, d); }

/* Entry/exit of every libuv callback; returns 1 when the store is gone. */
static void enter(store *s) { s->depth++; }
static int leave(store *s)
{
    if (--s->depth == 0 && s->dead) {
        free(s);
        return 1;
    }
    return 0;
}

/* ---------- connection ---------- */

static void teardown(store *s)
{
    if (s->poll) {
        close_handle(s->poll); /* stops watching the fd before libpq closes it */
        s->poll = NULL;
    }
    s->poll_fd = -1;
    s->poll_events = 0;
    if (s->op_res) { PQclear(s->op_res); s->op_res = NULL; }
    if (s->pg) { PQfinish(s->pg); s->pg = NULL; }
    s->op = OP_NONE;
    s->ins_prepared = 0;
    s->nq_prepared = 0;
}

static int query_prepared(const store *s, const char *name)
{
    for (int i = 0; i < s->nq_prepared; i++)
        if (strcmp(s->q_prepared[i], name) == 0) return 1;
    return 0;
}

/* Sends r_cur (a Q_QUERY): prepared first when it has a name this
 * connection does not know yet (then again from op_done). */
static void send_query(store *s)
{
    rnode *r = s->r_cur;
    if (r->name && !query_prepared(s, r->name) && s->nq_prepared < QUERY_PREPARED_MAX) {
        sent(s, OP_PREP_QUERY, PQsendPrepare(s->pg, r->name, r->sql, 0, NULL));
        return;
    }
    if (r->name && query_prepared(s, r->name))
        sent(s, OP_QUERY, PQsendQueryPrepared(s->pg, r->name, r->nparams, r->params, NULL, NULL, 0));
    else
        sent(s, OP_QUERY, PQsendQueryParams(s->pg, r->sql, r->nparams, NULL, r->params, NULL, NULL, 0));
}

/* Answers a read with its failure. */
static void fail_read(rnode *r)
{
    switch (r->kind) {
    case Q_HEAD: r->hcb(r->ud, -1, 0, NULL); break;
    case Q_SEED: r->scb(r->ud, -1, 0, NULL, 0, NULL, NULL, NULL, NULL); break;
    case Q_QUERY: r->qcb(r->ud, -1, NULL); break;
    case Q_TARGET: r->tcb(r->ud, -1, NULL); break;
    case Q_REACTIONS: r->xcb(r->ud, -1, 0, NULL, NULL, 0); break;
    default: r->cb(r->ud, -1, NULL, 0); break;
    }
}

static void fail_ranges(store *s)
{
    rnode *list = s->r_head;
    if (s->r_cur) { s->r_cur->next = list; list = s->r_cur; }
    s->r_cur = NULL;
    s->r_head = s->r_tail = NULL;
    s->r_len = 0;
    while (list) {
        rnode *r = list;
        list = r->next;
        fail_read(r);
        free(r);
    }
}

/* The in-flight batch back to the head of the queue, in its order. */
static void requeue_inflight(store *s)
{
    if (!s->fl_head) return;
    s->fl_tail->next = s->q_head;
    s->q_head = s->fl_head;
    if (!s->q_tail) s->q_tail = s->fl_tail;
    s->q_len += s->fl_len;
    s->fl_head = s->fl_tail = NULL;
    s->fl_len = 0;
}

/* Drop the connection, put the in-flight batch back, retry with backoff. */
static void reset_conn(store *s, const char *why)
{
    char msg[256];
    snprintf(msg, sizeof msg, "%s", why ? why : "unknown error");
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\t' || *p == '\r') *p = ' ';
    size_t l = strlen(msg);
    while (l && (msg[l - 1] == '\n' || msg[l - 1] == ' ')) msg[--l] = 0;
    uint32_t delay = backoff_next(&s->bo);
    LOGW(MOD, "postgres connection reset: %s (retry in %u ms, %zu rows pending)",
         msg, (unsigned)delay, s->q_len + s->fl_len);
    requeue_inflight(s);   /* suspect, if set, still counts the same head rows */
    s->refused_check = 0;  /* the row is refused alone again, and looked up again */
    teardown(s);
    s->state = ST_IDLE;
    guard_start(s, delay);
    fail_ranges(s);
}

static void notice_cb(void *arg, const char *message)
{
    (void)arg;
    LOGD(MOD, "postgres notice: %s", message);
}

/* Watch PQsocket for `events` (a new handle if the socket changed). */
static int poll_set(store *s, int events)
{
    int fd = PQsocket(s->pg);
    if (fd < 0) return -1;
    if (s->poll && s->poll_fd != fd) {
        close_handle(s->poll);
        s->poll = NULL;
    }
    if (!s->poll) {
        s->poll = malloc(sizeof *s->poll);
        if (!s->poll) return -1;
        if (uv_poll_init(s->loop, s->poll, fd) != 0) {
            free(s->poll);
            s->poll = NULL;
            return -1;
        }
        s->poll->data = s;
        s->poll_fd = fd;
        s->poll_events = 0;
    }
    if (events != s->poll_events) {
        if (uv_poll_start(s->poll, events, on_io) != 0) return -1;
        s->poll_events = events;
    }
    return 0;
}

static void start_connect(store *s)
{
    if (s->connects++ > 0) metric_inc(s->m_reconnects);
    s->pg = PQconnectStart(s->conninfo);
    if (!s->pg) { reset_conn(s, "out of memory"); return; }
    if (PQstatus(s->pg) == CONNECTION_BAD) { reset_conn(s, PQerrorMessage(s->pg)); return; }
    PQsetNoticeProcessor(s->pg, notice_cb, s);
    s->state = ST_CONNECTING;
    guard_start(s, CONNECT_TIMEOUT_MS);
    if (poll_set(s, UV_WRITABLE) != 0) reset_conn(s, "cannot poll the postgres socket");
}

/* After queueing a statement: flush what we can, watch for the rest. */
static void sent(store *s, int op, int ok)
{
    if (!ok) { reset_conn(s, PQerrorMessage(s->pg)); return; }
    s->op = op;
    s->op_t0 = mono_ns();
    s->op_failed = 0;
    s->op_rows = 0;
    s->op_err[0] = 0;
    s->op_state[0] = 0;
    s->op_primary[0] = 0;
    guard_start(s, s->state == ST_READY ? STATEMENT_TIMEOUT_MS : CONNECT_TIMEOUT_MS);
    int r = PQflush(s->pg);
    if (r < 0) { reset_conn(s, PQerrorMessage(s->pg)); return; }
    if (poll_set(s, r == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE) != 0)
        reset_conn(s, "cannot poll the postgres socket");
}

static void on_connected(store *s)
{
    if (PQsetnonblocking(s->pg, 1) != 0) { reset_conn(s, PQerrorMessage(s->pg)); return; }
    /* every text chatd stores is UTF-8 checked before a seq is given
     * (docs/architecture.md): a database of another encoding could refuse
     * a stored row for ever (an emoji in LATIN1) and stall every later
     * write behind it, so it is never used: not ready, the reason logged */
    const char *enc = PQparameterStatus(s->pg, "server_encoding");
    if (!enc || strcmp(enc, "UTF8") != 0) {
        char why[160];
        snprintf(why, sizeof why, "the database's encoding is %s: chatd needs UTF8 "
                 "(CREATE DATABASE ... ENCODING 'UTF8')", enc ? enc : "unknown");
        reset_conn(s, why);
        return;
    }
    s->state = ST_SETUP;
    sent(s, OP_LOCK, PQsendQuery(s->pg, store_schema_lock_sql()));
}

static void connect_poll(store *s)
{
    /* libpq may close its socket and open another (next address or host),
     * possibly with the same fd number: watch afresh after every step */
    if (s->poll) {
        close_handle(s->poll);
        s->poll = NULL;
    }
    switch (PQconnectPoll(s->pg)) {
    case PGRES_POLLING_READING:
        if (poll_set(s, UV_READABLE) != 0) reset_conn(s, "cannot poll the postgres socket");
        break;
    case PGRES_POLLING_WRITING:
        if (poll_set(s, UV_WRITABLE) != 0) reset_conn(s, "cannot poll the postgres socket");
        break;
    case PGRES_POLLING_OK:
        on_connected(s);
        break;
    default:
        reset_conn(s, PQerrorMessage(s->pg));
        break;
    }
}

/* ---------- statements ---------- */

/* ---------- the batch write path ---------- */

/* store_text_array's length (its NUL included) and its writing at o
 * (returns the byte after the NUL), so a batch's columns share one buffer. */
static size_t text_array_len(const char *const *v, size_t n, size_t stride)
{
    size_t len = 3;
    for (size_t i = 0; i < n; i++) {
        const char *x = v[i * stride];
        if (!x) { len += 5; continue; }
        len += 3;
        for (const char *q = x; *q; q++) len += (*q == '"' || *q == '\\') ? 2 : 1;
    }
    return len;
}

static char *text_array_put(char *o, const char *const *v, size_t n, size_t stride)
{
    *o++ = '{';
    for (size_t i = 0; i < n; i++) {
        const char *x = v[i * stride];
        if (i) *o++ = ',';
        if (!x) { memcpy(o, "NULL", 4); o += 4; continue; }
        *o++ = '"';
        for (const char *q = x; *q; q++) {
            if (*q == '"' || *q == '\\') *o++ = '\\';
            *o++ = *q;
        }
        *o++ = '"';
    }
    *o++ = '}';
    *o++ = 0;
    return o;
}

char *store_text_array(const char *const *v, size_t n, size_t stride)
{
    char *out = malloc(text_array_len(v, n, stride));
    if (out) text_array_put(out, v, n, stride);
    return out;
}

/* One batch = one prepared statement (STORE_SQL_INSERT, prepared once per
 * connection) whatever its size: its STORE_INSERT_NCOLS parameters are the
 * batch's columns as arrays. A single autocommit statement: its own transaction. */
static void send_batch(store *s)
{
    if (!s->ins_prepared) { /* rows stay queued until it is prepared */
        Oid types[STORE_INSERT_NCOLS] = {0};
        sent(s, OP_PREP_INSERT, PQsendPrepare(s->pg, STORE_STMT_INSERT, STORE_SQL_INSERT,
                                              STORE_INSERT_NCOLS, types));
        return;
    }
    size_t n = s->q_len < (size_t)s->batch_max ? s->q_len : (size_t)s->batch_max;
    if (s->suspect) { /* bisecting a refused batch: its first half alone */
        size_t half = s->suspect > 1 ? s->suspect / 2 : 1;
        if (n > half) n = half;
    }
    const char **vals = malloc(n * STORE_INSERT_NCOLS * sizeof *vals);
    const char *cols[STORE_INSERT_NCOLS] = {0};
    char *buf = NULL;
    wnode *w = s->q_head, *last = NULL;
    for (size_t i = 0; vals && i < n; i++, last = w, w = w->next)
        memcpy(&vals[i * STORE_INSERT_NCOLS], w->val, sizeof w->val);
    if (vals) {   /* the columns' array literals, one after the other in one buffer */
        size_t len = 0;
        for (size_t c = 0; c < STORE_INSERT_NCOLS; c++)
            len += text_array_len(vals + c, n, STORE_INSERT_NCOLS);
        if ((buf = malloc(len))) {
            char *o = buf;
            for (size_t c = 0; c < STORE_INSERT_NCOLS; c++) {
                cols[c] = o;
                o = text_array_put(o, vals + c, n, STORE_INSERT_NCOLS);
            }
        }
    }
    free(vals);
    if (!buf) {
        wake_in(s, 1); /* try again shortly */
        return;
    }
    /* move the first n rows to the in-flight list */
    s->fl_head = s->q_head;
    s->fl_tail = last;
    s->q_head = w;
    last->next = NULL;
    if (!s->q_head) s->q_tail = NULL;
    s->fl_len = n;
    s->q_len -= n;
    s->last_was_batch = 1;
    int ok = PQsendQueryPrepared(s->pg, STORE_STMT_INSERT, STORE_INSERT_NCOLS, cols, NULL, NULL, 0);
    free(buf); /* libpq copied them */
    sent(s, OP_BATCH, ok);
}

static void send_range(store *s)
{
    rnode *r = s->r_head;
    s->r_head = r->next;
    if (!s->r_head) s->r_tail = NULL;
    s->r_len--;
    r->next = NULL;
    s->r_cur = r;
    s->last_was_batch = 0;
    if (r->kind == Q_SEED) {
        const char *hv[3] = {r->room, r->after, r->limit};
        sent(s, OP_HEAD, PQsendQueryPrepared(s->pg, STORE_STMT_SEED, 3, hv, NULL, NULL, 0));
        return;
    }
    if (r->kind == Q_HEAD) {
        const char *hv[1] = {r->room};
        sent(s, OP_HEAD, PQsendQueryPrepared(s->pg, STORE_STMT_HEAD, 1, hv, NULL, NULL, 0));
        return;
    }
    if (r->kind == Q_QUERY) {
        send_query(s);
        return;
    }
    if (r->kind == Q_TARGET || r->kind == Q_REACTIONS) {
        const char *tv[4] = {r->room, r->after, NULL, NULL};
        if (r->kind == Q_TARGET && r->has_id) {   /* the user and client id (store_target) */
            tv[2] = r->room + strlen(r->room) + 1;
            tv[3] = tv[2] + strlen(tv[2]) + 1;
        }
        sent(s, OP_RANGE, PQsendQueryPrepared(s->pg, r->kind == Q_TARGET ? STORE_STMT_TARGET
                                                                           : STORE_STMT_REACTIONS,
                                              r->kind == Q_TARGET ? 4 : 2, tv, NULL, NULL, 0));
        return;
    }
    const char *vals[4] = {r->room, r->after, r->before, r->limit};
    const char *stmt = r->kind == Q_HISTORY ? STORE_STMT_HISTORY
                     : r->newest ? STORE_STMT_RANGE_DESC : STORE_STMT_RANGE_ASC;
    sent(s, OP_RANGE, PQsendQueryPrepared(s->pg, stmt, 4, vals, NULL, NULL, 0));
}

static void dispatch(store *s)
{
    if (s->dead || s->state != ST_READY || s->op != OP_NONE) return;
    int due = 0;
    uint64_t wait_ms = 0;
    if (s->q_len) {
        uint64_t age_ms = (mono_ns() - s->q_head->t_enq) / 1000000u;
        due = s->q_len >= (size_t)s->batch_max || s->draining || age_ms >= (uint64_t)s->batch_ms;
        if (!due) wait_ms = (uint64_t)s->batch_ms - age_ms;
    }
    if (due && (!s->r_head || !s->last_was_batch)) send_batch(s);
    else if (s->r_head) send_range(s);
    else if (s->q_len) wake_in(s, wait_ms);
}

static void check_drain(store *s)
{
    if (!s->drains || s->q_len || s->fl_len) return;
    dnode *list = s->drains;
    s->drains = NULL;
    s->draining = 0;
    while (list) {
        dnode *d = list;
        list = d->next;
        d->cb(d->ud);
        free(d);
        if (s->dead) { /* store_free ran inside the callback: finish the list */
            while (list) { d = list; list = d->next; d->cb(d->ud); free(d); }
            return;
        }
    }
}

static void batch_done(store *s)
{
    backoff_reset(&s->bo);   /* a batch went through: the next failure starts small */
    /* a bisected batch's first rows went in: the rest of it holds the refused row */
    s->suspect = s->suspect > s->fl_len ? s->suspect - s->fl_len : 0;
    double dt = (double)(mono_ns() - s->op_t0) / 1e9;
    metric_observe(s->m_batch_dur, dt);
    metric_observe(s->m_batch_rows, (double)s->fl_len);
    metric_add(s->m_rows_written, (uint64_t)(s->batch_inserted > 0 ? s->batch_inserted : 0));
    pending_add(s, -(double)s->fl_len);
    wnode *list = s->fl_head;
    s->fl_head = s->fl_tail = NULL;
    s->fl_len = 0;
    while (list) { /* committed (or a conflict, -2) even if a callback frees the store */
        wnode *w = list;
        list = w->next;
        if (w->cb) w->cb(w->ud, w->status);
        free(w);
    }
    if (s->dead) return;
    check_drain(s);
    if (s->dead) return;
    dispatch(s);
}

/* The batch inserted fewer rows than it had: read the stored rows of its
 * keys and compare. The same message (a retried batch that had committed,
 * a backfill of a row its node stored after all, a resend with the same
 * client id: see same_message) is fine: status 0. Another message, or
 * none, under the same (room, seq) is a conflict: the new row was NOT
 * stored; its callback gets -2, never a silent success. */
static void send_verify(store *s)
{
    size_t n = s->fl_len;
    const char **keys = malloc(2 * n * sizeof *keys);
    size_t i = 0;
    for (wnode *w = s->fl_head; keys && w; w = w->next, i++) {
        keys[2 * i] = w->val[0];
        keys[2 * i + 1] = w->val[1];
    }
    char *rooms = keys ? store_text_array(keys, n, 2) : NULL;
    char *seqs = keys ? store_text_array(keys + 1, n, 2) : NULL;
    free(keys);
    if (!rooms || !seqs) {
        free(rooms); free(seqs);
        reset_conn(s, "out of memory verifying a batch"); /* the batch is sent again */
        return;
    }
    const char *params[2] = {rooms, seqs};
    int ok = PQsendQueryPrepared(s->pg, STORE_STMT_VERIFY, 2, params, NULL, NULL, 0);
    free(rooms); free(seqs); /* libpq copied them */
    sent(s, OP_VERIFY, ok);
}

/* A seq column (seq_parse's rule; "0" for an empty room's head): 0, or -1
 * for NULL or anything else. */
static int pg_seq(const PGresult *res, int row, int col, uint64_t *out)
{
    if (PQgetisnull(res, row, col)) return -1;
    return seq_parse(PQgetvalue(res, row, col), (size_t)PQgetlength(res, row, col), out);
}

static int same_text(const PGresult *res, int row, int col, const char *v)
{
    if (PQgetisnull(res, row, col)) return v == NULL;
    return v && strcmp(PQgetvalue(res, row, col), v) == 0;
}

/* Is the stored row (res, t) the same message as w? With a client id on
 * both: the same id from the same user and the same kind (a resend with
 * the same id is the same message, whatever its new ts). Otherwise every
 * column must match (a retried batch, a backfill from the Redis copy),
 * except the body of a row a delete erased (deleted, body ""): its user,
 * ts, kind and target must. */
static int same_message(const PGresult *res, int t, const wnode *w)
{
    if (!PQgetisnull(res, t, 2) && w->val[2])
        return same_text(res, t, 2, w->val[2]) && same_text(res, t, 3, w->val[3]) &&
               same_text(res, t, 7, w->val[7]);
    int erased = same_text(res, t, STORE_INSERT_NCOLS, "t");
    for (int c = 2; c < STORE_INSERT_NCOLS; c++) {
        if (erased && c != 3 && c != 6 && c != 7 && c != 8) continue;
        if (!same_text(res, t, c, w->val[c])) return 0;
    }
    return 1;
}

static void refuse_row(store *s);

static void verify_done(store *s)
{
    PGresult *res = s->op_res;
    s->op_res = NULL;
    if (s->op_failed || !res) {
        char why[320];
        snprintf(why, sizeof why, "verify batch: %s", s->op_err);
        if (res) PQclear(res);
        reset_conn(s, why); /* the batch goes again: idempotent */
        return;
    }
    int nt = PQntuples(res);
    if (s->refused_check) {
        /* the one row Postgres refused: is it there already (a resend, a
         * retried batch, a backfill of a stored row: an operator's CHECK
         * or BEFORE trigger runs before ON CONFLICT can skip it)? */
        s->refused_check = 0;
        s->suspect = 0; /* the refused row is answered here: the rows after it go whole again */
        wnode *w = s->fl_head;
        int found = -1;
        for (int t = 0; t < nt && found < 0; t++)
            if (same_text(res, t, 0, w->val[0]) && same_text(res, t, 1, w->val[1])) found = t;
        if (found < 0) {
            PQclear(res);
            refuse_row(s);
            return;
        }
        if (same_message(res, found, w))
            LOGW(MOD, "room %s seq %s: postgres refused the row again (%s, SQLSTATE %s), but it "
                 "is stored already: answered as stored", w->val[0], w->val[1], s->ref_primary,
                 s->ref_state);
    }
    for (wnode *w = s->fl_head; w; w = w->next) {
        int found = -1;
        for (int t = 0; t < nt && found < 0; t++)
            if (same_text(res, t, 0, w->val[0]) && same_text(res, t, 1, w->val[1])) found = t;
        if (found >= 0 && same_message(res, found, w)) continue;
        if (found >= 0 && w->val[2] && same_text(res, found, 2, w->val[2]) &&
            same_text(res, found, 3, w->val[3])) {
            /* this sender's row with this client id, of another kind: a
             * client that used one id for two things (not a conflict) */
            w->status = -4;
            LOGD(MOD, "room %s seq %s: client id %s of user %s names a %s row, not this one: "
                 "not stored", w->val[0], w->val[1], w->val[2], w->val[3],
                 PQgetvalue(res, found, 7));
            continue;
        }
        w->status = -2;
        metric_inc(s->m_conflicts);
        LOGE(MOD, "CONFLICT: room %s seq %s is already stored with another message (stored id %s "
             "user %s, new id %s user %s): the new one is NOT stored and not acked",
             w->val[0], w->val[1],
             found < 0 ? "(gone)" : PQgetisnull(res, found, 2) ? "-" : PQgetvalue(res, found, 2),
             found < 0 ? "-" : PQgetvalue(res, found, 3), w->val[2] ? w->val[2] : "-", w->val[3]);
    }
    PQclear(res);
    batch_done(s);
}

/* A seed's answer (STORE_SQL_SEED): the head (max, read from the first
 * row), the ids of every row that has one. */
static void seed_answer(rnode *r, PGresult *res, uint64_t max)
{
    int n = PQntuples(res);
    const char **ids = calloc((size_t)n + 1, sizeof *ids);
    const char **users = calloc((size_t)n + 1, sizeof *users);
    uint64_t *seqs = calloc((size_t)n + 1, sizeof *seqs), *ts = calloc((size_t)n + 1, sizeof *ts);
    size_t k = 0;
    if (!ids || !users || !seqs || !ts) {
        LOGW(MOD, "room head query: out of memory");
        r->scb(r->ud, -1, 0, NULL, 0, NULL, NULL, NULL, NULL);
    } else {
        for (int i = 0; i < n; i++) {
            if (PQgetisnull(res, i, 2) || pg_seq(res, i, 3, &seqs[k]) != 0 || seqs[k] == 0 ||
                PQgetisnull(res, i, 4) || PQgetisnull(res, i, 5) ||
                parse_u64(PQgetvalue(res, i, 4), (size_t)PQgetlength(res, i, 4), &ts[k]) != 0)
                continue;
            users[k] = PQgetvalue(res, i, 5);
            ids[k++] = PQgetvalue(res, i, 2);
        }
        r->scb(r->ud, 0, max, PQgetvalue(res, 0, 0), k, users, ids, seqs, ts);
    }
    free(users);
    free(ids);
    free(seqs);
    free(ts);
}

/* A head's or a seed's answer (OP_HEAD). */
static void head_done(store *s)
{
    rnode *r = s->r_cur;
    s->r_cur = NULL;
    PGresult *res = s->op_res;
    uint64_t max = 0;
    s->op_res = NULL;
    int ok = !s->op_failed && res && PQntuples(res) >= 1 && !PQgetisnull(res, 0, 0) &&
             PQnfields(res) == (r->kind == Q_SEED ? 6 : 2) &&
             (r->kind == Q_SEED || PQntuples(res) == 1) && pg_seq(res, 0, 1, &max) == 0;
    if (!ok) {
        LOGW(MOD, "room head query failed: %s", s->op_failed ? s->op_err : "unexpected result");
        fail_read(r);
    } else if (r->kind == Q_SEED) {
        seed_answer(r, res, max);
    } else {
        r->hcb(r->ud, 0, max, PQgetvalue(res, 0, 0));
    }
    if (res) PQclear(res);
    free(r);
    if (!s->dead) dispatch(s);
}

/* The result of a store_query: handed to its callback as is. */
static void query_done(store *s)
{
    rnode *r = s->r_cur;
    s->r_cur = NULL;
    metric_observe(s->m_query_dur, (double)(mono_ns() - s->op_t0) / 1e9);
    PGresult *res = s->op_res;
    s->op_res = NULL;
    if (s->op_failed) {
        LOGW(MOD, "query failed: %s", s->op_err);
        if (res) PQclear(res);
        r->qcb(r->ud, -1, NULL);
    } else {
        r->qcb(r->ud, 0, (const store_result *)res); /* NULL: a statement without rows */
        if (res) PQclear(res);
    }
    free(r);
    if (!s->dead) dispatch(s);
}

/* The answer of a target lookup (Q_TARGET) or a reactions read (Q_REACTIONS). */
static void update_read_done(rnode *r, PGresult *res)
{
    int n = PQntuples(res);
    if (r->kind == Q_TARGET) {
        if (n < 1 || PQnfields(res) < 8) {
            r->tcb(r->ud, -1, NULL);
            return;
        }
        store_target_row row = {0};
        if (!PQgetisnull(res, 0, 6) && pg_seq(res, 0, 6, &row.id_seq) == 0)
            row.id_kind = atoi(PQgetvalue(res, 0, 7));
        else
            row.id_seq = 0;
        if (PQgetvalue(res, 0, 5)[0] == 't') {
            r->tcb(r->ud, STORE_TARGET_GONE, &row);
        } else if (PQgetisnull(res, 0, 0)) {
            r->tcb(r->ud, STORE_TARGET_NONE, NULL);
        } else {
            row.kind = atoi(PQgetvalue(res, 0, 0));
            row.author = PQgetvalue(res, 0, 1);
            row.deleted = PQgetvalue(res, 0, 2)[0] == 't';
            row.client_id = PQgetisnull(res, 0, 3) ? NULL : PQgetvalue(res, 0, 3);
            if (!PQgetisnull(res, 0, 4)) pg_seq(res, 0, 4, &row.target);
            r->tcb(r->ud, STORE_TARGET_ROW, &row);
        }
        return;
    }
    const char **em = n ? calloc((size_t)n, sizeof *em) : NULL;
    const char **us = n ? calloc((size_t)n, sizeof *us) : NULL;
    if (n && (!em || !us)) {
        free(em);
        free(us);
        r->xcb(r->ud, -1, 0, NULL, NULL, 0);
        return;
    }
    size_t k = 0;
    int deleted = 0;
    for (int i = 0; i < n; i++) {
        if (PQgetvalue(res, i, 0)[0] == 'd') { deleted = 1; continue; }
        em[k] = PQgetvalue(res, i, 1);
        us[k] = PQgetvalue(res, i, 2);
        k++;
    }
    r->xcb(r->ud, 0, deleted, em, us, k);
    free(em);
    free(us);
}

static void range_done(store *s)
{
    rnode *r = s->r_cur;
    s->r_cur = NULL;
    metric_observe(s->m_range_dur, (double)(mono_ns() - s->op_t0) / 1e9);
    PGresult *res = s->op_res;
    s->op_res = NULL;
    if (s->op_failed || !res) {
        LOGW(MOD, "history query failed: %s", s->op_err);
        if (res) PQclear(res);
        fail_read(r);
        free(r);
        if (!s->dead) dispatch(s);
        return;
    }
    if (r->kind == Q_TARGET || r->kind == Q_REACTIONS) {
        update_read_done(r, res);
        PQclear(res);
        free(r);
        if (!s->dead) dispatch(s);
        return;
    }
    int n = PQntuples(res);
    store_row *rows = n ? calloc((size_t)n, sizeof *rows) : NULL;
    if (n && !rows) {
        PQclear(res);
        fail_read(r);
        free(r);
        if (!s->dead) dispatch(s);
        return;
    }
    int hist = r->kind == Q_HISTORY;
    for (int i = 0; i < n; i++) {
        int t = (r->newest || hist) ? n - 1 - i : i; /* deliver oldest first */
        store_row *o = &rows[i];
        o->room = r->room;
        /* seq and target: the one seq rule (util.h); a bigint column holds
         * nothing else, but a row that breaks it fails the read rather than
         * hand a wrapped seq on */
        if (pg_seq(res, t, 0, &o->seq) != 0 || o->seq < 1 ||
            (!PQgetisnull(res, t, 7) && pg_seq(res, t, 7, &o->target) != 0)) {
            LOGE(MOD, "history row of room %s with a seq or target out of range: read failed", r->room);
            free(rows);
            PQclear(res);
            fail_read(r);
            free(r);
            if (!s->dead) dispatch(s);
            return;
        }
        o->client_id = PQgetisnull(res, t, 1) ? NULL : PQgetvalue(res, t, 1);
        o->user = PQgetvalue(res, t, 2);
        o->name = PQgetvalue(res, t, 3);
        o->body = PQgetvalue(res, t, 4);
        o->body_len = (size_t)PQgetlength(res, t, 4);
        o->ts = strtoull(PQgetvalue(res, t, 5), NULL, 10);
        o->kind = atoi(PQgetvalue(res, t, 6));
        o->emoji = PQgetisnull(res, t, 8) ? NULL : PQgetvalue(res, t, 8);
        o->on = !PQgetisnull(res, t, 9) && PQgetvalue(res, t, 9)[0] == 't';
        o->count = PQgetisnull(res, t, 10) ? -1 : strtoll(PQgetvalue(res, t, 10), NULL, 10);
        o->deleted = PQgetvalue(res, t, 11)[0] == 't';
        if (hist) {
            o->edited_ts = PQgetisnull(res, t, 13) ? 0 : strtoull(PQgetvalue(res, t, 13), NULL, 10);
            o->reactions = PQgetisnull(res, t, 14) ? NULL : PQgetvalue(res, t, 14);
        }
        o->meta = PQgetisnull(res, t, 12) ? NULL : PQgetvalue(res, t, 12);
        o->meta_len = o->meta ? (size_t)PQgetlength(res, t, 12) : 0;
    }
    r->cb(r->ud, 0, rows, (size_t)n);
    free(rows);
    PQclear(res);
    free(r);
    if (!s->dead) dispatch(s);
}

static void setup_done(store *s, int op)
{
    if (s->op_failed) {
        char why[320];
        snprintf(why, sizeof why, "schema setup: %s", s->op_err);
        reset_conn(s, why);
        return;
    }
    switch (op) {
    case OP_LOCK: {
        int from = 0, to = 0;
        if (s->op_res && PQntuples(s->op_res) == 1) from = atoi(PQgetvalue(s->op_res, 0, 0));
        if (from > store_schema_version())
            LOGW(MOD, "schema version %d is newer than this build's %d", from, store_schema_version());
        char *sql = store_schema_upgrade_sql(from, &to);
        if (!sql) { reset_conn(s, "out of memory"); return; }
        if (to != from) LOGI(MOD, "migrating schema from version %d to %d", from, to);
        s->schema_from = from;
        sent(s, OP_UPGRADE, PQsendQuery(s->pg, sql));
        free(sql);
        break;
    }
    case OP_UPGRADE:
        sent(s, OP_PREP_DESC, PQsendPrepare(s->pg, STORE_STMT_RANGE_DESC, STORE_SQL_RANGE_DESC, 0, NULL));
        break;
    case OP_PREP_DESC:
        sent(s, OP_PREP_ASC, PQsendPrepare(s->pg, STORE_STMT_RANGE_ASC, STORE_SQL_RANGE_ASC, 0, NULL));
        break;
    case OP_PREP_ASC:
        sent(s, OP_PREP_HEAD, PQsendPrepare(s->pg, STORE_STMT_HEAD, STORE_SQL_HEAD, 0, NULL));
        break;
    case OP_PREP_HEAD:
        sent(s, OP_PREP_HIST, PQsendPrepare(s->pg, STORE_STMT_HISTORY, STORE_SQL_HISTORY, 0, NULL));
        break;
    case OP_PREP_HIST:
        sent(s, OP_PREP_TARGET, PQsendPrepare(s->pg, STORE_STMT_TARGET, STORE_SQL_TARGET, 0, NULL));
        break;
    case OP_PREP_TARGET:
        sent(s, OP_PREP_REACT, PQsendPrepare(s->pg, STORE_STMT_REACTIONS, STORE_SQL_REACTIONS, 0,
                                             NULL));
        break;
    case OP_PREP_REACT:
        sent(s, OP_PREP_VERIFY, PQsendPrepare(s->pg, STORE_STMT_VERIFY, STORE_SQL_VERIFY, 0, NULL));
        break;
    case OP_PREP_VERIFY:
        sent(s, OP_PREP_SEED, PQsendPrepare(s->pg, STORE_STMT_SEED, STORE_SQL_SEED, 0, NULL));
        break;
    case OP_PREP_SEED:
        s->state = ST_READY;
        /* rows waiting may be what failed (a batch Postgres keeps refusing
         * for a reason other than a row: a privilege, a trigger's transient
         * error): the backoff starts again only once a batch commits
         * (batch_done), not at every ready */
        if (!s->q_len) backoff_reset(&s->bo);
        uv_timer_stop(s->guard);
        LOGI(MOD, "postgres ready (schema version %d, %zu rows pending)",
             store_schema_version() > s->schema_from ? store_schema_version() : s->schema_from,
             s->q_len);
        dispatch(s);
        break;
    }
}

/* Is a failed batch's SQLSTATE a refusal of (one of) its rows for good?
 * Class 22 (data exception: a value the column or a cast refuses), class
 * 23 (integrity constraint violation: an operator's CHECK, NOT NULL,
 * unique index, foreign key...; the (room, seq) unique conflict never
 * raises, ON CONFLICT absorbs it) and P0001 (RAISE EXCEPTION in an
 * operator's trigger): sent again, the same row fails again. Anything
 * else (connection, shutdown, serialization, resources, timeout, a
 * privilege) is retried as it is (docs/storage.md "A row Postgres refuses"). */
static int row_refused(const char *st)
{
    if (strlen(st) != 5) return 0;
    return (st[0] == '2' && (st[1] == '2' || st[1] == '3')) || strcmp(st, "P0001") == 0;
}

/* The in-flight batch failed because of a row in it, on a healthy
 * connection: bisect. A batch of more rows goes back to the head of the
 * queue, in its order, and send_batch sends its first half alone (suspect);
 * the half that fails is halved again, a half that commits leaves the rest
 * to be halved. A batch of one row is looked up first (STORE_STMT_VERIFY,
 * as a batch that inserted fewer rows: verify_done): a row stored already
 * (the same message sent again: an operator's CHECK or BEFORE trigger runs
 * before ON CONFLICT skips it) is answered 0, another message under its
 * (room, seq) -2; only a row that is not there gets the final answer -3
 * (refuse_row). Up to 2 log2(batch) statements per refused row, plus the
 * look-up; none when nothing is refused. */
static void batch_refused(store *s)
{
    if (s->fl_len > 1) {
        LOGD(MOD, "batch of %zu rows refused (%s, SQLSTATE %s): bisecting", s->fl_len,
             s->op_primary, s->op_state);
        s->suspect = s->fl_len;
        requeue_inflight(s);
        dispatch(s);
        return;
    }
    snprintf(s->ref_state, sizeof s->ref_state, "%s", s->op_state);
    snprintf(s->ref_primary, sizeof s->ref_primary, "%s", s->op_primary);
    s->refused_check = 1;
    s->batch_inserted = 0;
    send_verify(s);
}

/* The in-flight row, refused alone and not stored: -3 (never retried),
 * logged, counted. */
static void refuse_row(store *s)
{
    wnode *w = s->fl_head;
    s->fl_head = s->fl_tail = NULL;
    s->fl_len = 0;
    s->suspect = 0; /* the rows after it go in whole batches again */
    pending_add(s, -1);
    metric_inc(s->m_refused);
    LOGE(MOD, "REFUSED: room %s seq %s (client id %s): postgres refuses the row for good: %s "
         "(SQLSTATE %s): not stored, never acked, not retried", w->val[0], w->val[1],
         w->val[2] ? w->val[2] : "-", s->ref_primary, s->ref_state);
    if (w->cb) w->cb(w->ud, -3);
    free(w);
    if (s->dead) return;
    check_drain(s);
    if (s->dead) return;
    dispatch(s);
}

static void op_done(store *s)
{
    int op = s->op;
    s->op = OP_NONE;
    if (s->state == ST_READY) uv_timer_stop(s->guard);
    if (op == OP_BATCH) {
        if (s->op_failed && row_refused(s->op_state) && PQstatus(s->pg) == CONNECTION_OK &&
            PQtransactionStatus(s->pg) == PQTRANS_IDLE) {
            batch_refused(s);
            return;
        }
        if (s->op_failed) {
            char why[320];
            snprintf(why, sizeof why, "batch insert: %s", s->op_err);
            reset_conn(s, why); /* the batch is retried after reconnect */
            return;
        }
        s->batch_inserted = s->op_rows;
        if (s->op_rows < (long)s->fl_len) send_verify(s);
        else batch_done(s);
    } else if (op == OP_VERIFY) {
        verify_done(s);
    } else if (op == OP_PREP_INSERT) {
        if (s->op_failed) {
            char why[320];
            snprintf(why, sizeof why, "prepare insert: %s", s->op_err);
            reset_conn(s, why);
            return;
        }
        s->ins_prepared = 1;
        dispatch(s);
    } else if (op == OP_PREP_QUERY) {
        if (s->op_failed) {
            if (PQstatus(s->pg) == CONNECTION_BAD) { reset_conn(s, s->op_err); return; }
            query_done(s);   /* answers -1 (op_failed) */
            return;
        }
        s->q_prepared[s->nq_prepared++] = s->r_cur->name;
        send_query(s);
    } else if (op == OP_RANGE || op == OP_HEAD || op == OP_QUERY) {
        if (s->op_failed && PQstatus(s->pg) == CONNECTION_BAD) {
            reset_conn(s, s->op_err); /* fails r_cur too */
            return;
        }
        if (op == OP_HEAD) head_done(s);
        else if (op == OP_QUERY) query_done(s);
        else range_done(s);
    } else {
        setup_done(s, op);
    }
}

static void collect(store *s, PGresult *res)
{
    switch (PQresultStatus(res)) {
    case PGRES_TUPLES_OK:
        if (s->op_res) PQclear(s->op_res);
        s->op_res = res;
        return;
    case PGRES_COMMAND_OK:
        if (s->op == OP_BATCH) s->op_rows += atol(PQcmdTuples(res));
        break;
    default:
        if (!s->op_failed) {
            const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            const char *pm = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
            s->op_failed = 1;
            snprintf(s->op_err, sizeof s->op_err, "%s", PQresultErrorMessage(res));
            snprintf(s->op_state, sizeof s->op_state, "%s", st ? st : "");
            snprintf(s->op_primary, sizeof s->op_primary, "%s", pm ? pm : s->op_err);
        }
        break;
    }
    PQclear(res);
}

/* Read every complete result; an op ends at the NULL result. */
static void read_results(store *s)
{
    while (!s->dead && s->pg && s->op != OP_NONE && !PQisBusy(s->pg)) {
        PGresult *res = PQgetResult(s->pg);
        if (res) collect(s, res);
        else op_done(s);
    }
    if (!s->dead && s->pg && PQstatus(s->pg) == CONNECTION_BAD)
        reset_conn(s, PQerrorMessage(s->pg));
}

/* ---------- libuv callbacks ---------- */

static void on_io(uv_poll_t *h, int status, int events)
{
    store *s = h->data;
    enter(s);
    if (s->state == ST_CONNECTING) {
        connect_poll(s);
    } else if (status < 0) {
        reset_conn(s, uv_strerror(status));
    } else {
        if (events & UV_WRITABLE) {
            int r = PQflush(s->pg);
            if (r < 0) reset_conn(s, PQerrorMessage(s->pg));
            else if (r == 0 && poll_set(s, UV_READABLE) != 0) reset_conn(s, "cannot poll");
        }
        if (s->pg && (events & UV_READABLE)) {
            if (!PQconsumeInput(s->pg)) reset_conn(s, PQerrorMessage(s->pg));
            else read_results(s);
        }
    }
    leave(s);
}

static void on_wake(uv_timer_t *t)
{
    store *s = t->data;
    enter(s);
    s->wake_armed = 0;
    check_drain(s);
    if (!s->dead) dispatch(s);
    leave(s);
}

static void on_guard(uv_timer_t *t)
{
    store *s = t->data;
    enter(s);
    if (s->state == ST_IDLE) start_connect(s);
    else if (s->state == ST_READY) reset_conn(s, "statement timed out");
    else reset_conn(s, "connect or schema setup timed out");
    leave(s);
}

/* ---------- public API ---------- */

store *store_new(uv_loop_t *loop, const store_opts *o, char *err, size_t errlen)
{
    if (!o || !o->conninfo) {
        snprintf(err, errlen, "store: no conninfo");
        return NULL;
    }
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(o->conninfo, &perr);
    if (!opts) {
        snprintf(err, errlen, "store: bad conninfo: %s", perr ? perr : "out of memory");
        if (perr) PQfreemem(perr);
        return NULL;
    }
    PQconninfoFree(opts);
    store *s = calloc(1, sizeof *s);
    if (!s || !(s->conninfo = strdup(o->conninfo)) ||
        !(s->wake = malloc(sizeof *s->wake)) || !(s->guard = malloc(sizeof *s->guard))) {
        if (s) { free(s->conninfo); free(s->wake); free(s->guard); }
        free(s);
        snprintf(err, errlen, "store: out of memory");
        return NULL;
    }
    s->loop = loop;
    s->batch_max = o->batch_max > 0 ? o->batch_max : 500;
    if (s->batch_max > STORE_BATCH_HARD_MAX) s->batch_max = STORE_BATCH_HARD_MAX;
    s->batch_ms = o->batch_ms > 0 ? o->batch_ms : 4;
    s->pending_max = o->pending_max > 0 ? (size_t)o->pending_max : 100000;
    s->poll_fd = -1;
    backoff_init(&s->bo, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
    uv_timer_init(loop, s->wake);
    uv_timer_init(loop, s->guard);
    s->wake->data = s->guard->data = s;

    s->m_batch_dur = metrics_histogram("chat_pg_op_duration_seconds",
                                       "Duration of Postgres operations", "op=\"batch\"",
                                       METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    s->m_range_dur = metrics_histogram("chat_pg_op_duration_seconds", NULL, "op=\"range\"",
                                       METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    s->m_query_dur = metrics_histogram("chat_pg_op_duration_seconds", NULL, "op=\"query\"",
                                       METRICS_LAG_BUCKETS, METRICS_LAG_NBUCKETS);
    s->m_batch_rows = metrics_histogram("chat_pg_batch_rows", "Rows per committed insert batch",
                                        NULL, BATCH_ROW_BUCKETS,
                                        (int)(sizeof BATCH_ROW_BUCKETS / sizeof BATCH_ROW_BUCKETS[0]));
    s->m_pending = metrics_gauge("chat_pg_pending_writes",
                                 "History rows queued or in flight, not yet committed", NULL);
    s->m_reconnects = metrics_counter("chat_pg_reconnects_total",
                                      "Postgres reconnect attempts after a lost or failed connection", NULL);
    s->m_rows_written = metrics_counter("chat_pg_rows_written_total",
                                        "History rows inserted (duplicates not counted)", NULL);
    s->m_conflicts = metrics_counter("chat_store_conflicts_total",
                                     "History rows refused because another row holds their (room, seq)",
                                     NULL);
    s->m_refused = metrics_counter("chat_store_rows_refused_total",
                                   "History rows Postgres refused for good (a row-caused error: an "
                                   "operator's constraint or trigger), never stored nor acked", NULL);
    start_connect(s);
    return s;
}

void store_free(store *s)
{
    if (!s || s->dead) return;
    s->dead = 1;
    s->depth++; /* callbacks below may call back into the store */
    teardown(s);
    close_handle(s->wake);
    close_handle(s->guard);
    pending_add(s, -(double)(s->q_len + s->fl_len));
    wnode *wl[2] = {s->fl_head, s->q_head};
    s->fl_head = s->fl_tail = s->q_head = s->q_tail = NULL;
    s->fl_len = s->q_len = 0;
    for (int i = 0; i < 2; i++)
        while (wl[i]) {
            wnode *w = wl[i];
            wl[i] = w->next;
            if (w->cb) w->cb(w->ud, -1);
            free(w);
        }
    fail_ranges(s);
    dnode *dl = s->drains;
    s->drains = NULL;
    while (dl) {
        dnode *d = dl;
        dl = d->next;
        d->cb(d->ud);
        free(d);
    }
    free(s->conninfo);
    s->conninfo = NULL;
    leave(s);
}

int store_ready(const store *s)
{
    return s && !s->dead && s->state == ST_READY;
}

size_t store_pending(const store *s)
{
    return s ? s->q_len + s->fl_len : 0;
}

int store_write(store *s, const store_row *row, store_write_cb cb, void *ud)
{
    if (!s || s->dead || !row || !row->room || !row->user || !row->name || !row->body) return -1;
    if (!row->admitted && s->q_len + s->fl_len >= s->pending_max) return -1;
    if (row->seq > INT64_MAX || row->ts > INT64_MAX || row->target > INT64_MAX) return -3;
    if (row->kind < STORE_MESSAGE || row->kind > STORE_REACT ||
        (row->kind != STORE_MESSAGE && !row->target) ||
        (row->kind == STORE_REACT && (!row->emoji || row->count < 0 || row->count > INT32_MAX)))
        return -3;
    size_t lr = strlen(row->room), lc = row->client_id ? strlen(row->client_id) : 0;
    size_t lu = strlen(row->user), ln = strlen(row->name), lb = row->body_len;
    const char *emoji = row->kind == STORE_REACT ? row->emoji : NULL;
    size_t le = emoji ? strlen(emoji) : 0;
    size_t lm = row->meta ? row->meta_len : 0;
    if (!utf8_valid(row->room, lr) || !utf8_valid(row->user, lu) || !utf8_valid(row->name, ln) ||
        (row->client_id && !utf8_valid(row->client_id, lc)) || !utf8_valid(row->body, lb) ||
        (emoji && !utf8_valid(emoji, le)) || (row->meta && !utf8_valid(row->meta, lm)))
        return -3; /* Postgres text refuses NUL bytes and invalid UTF-8 */
    wnode *w = malloc(sizeof *w + lr + lc + lu + ln + lb + le + lm + 7);
    if (!w) return -1;
    w->next = NULL;
    w->cb = cb;
    w->ud = ud;
    w->status = 0;
    w->t_enq = mono_ns();
    char *p = w->data;
#define PUT(i, src, n) do { w->val[i] = p; memcpy(p, src, n); p[n] = 0; p += (n) + 1; } while (0)
    PUT(0, row->room, lr);
    if (row->client_id) PUT(2, row->client_id, lc); else w->val[2] = NULL;
    PUT(3, row->user, lu);
    PUT(4, row->name, ln);
    PUT(5, row->body, lb);
    if (emoji) PUT(9, emoji, le); else w->val[9] = NULL;
    if (row->meta) PUT(12, row->meta, lm); else w->val[12] = NULL;
#undef PUT
    snprintf(w->seq_txt, sizeof w->seq_txt, "%" PRIu64, row->seq);
    snprintf(w->ts_txt, sizeof w->ts_txt, "%" PRIu64, row->ts);
    snprintf(w->kind_txt, sizeof w->kind_txt, "%d", row->kind);
    w->val[1] = w->seq_txt;
    w->val[6] = w->ts_txt;
    w->val[7] = w->kind_txt;
    w->val[8] = w->val[10] = w->val[11] = NULL;
    if (row->kind != STORE_MESSAGE) {
        snprintf(w->target_txt, sizeof w->target_txt, "%" PRIu64, row->target);
        w->val[8] = w->target_txt;
    }
    if (row->kind == STORE_REACT) {
        snprintf(w->count_txt, sizeof w->count_txt, "%" PRId64, row->count);
        w->val[10] = row->on ? "t" : "f";
        w->val[11] = w->count_txt;
    }
    if (s->q_tail) s->q_tail->next = w; else s->q_head = w;
    s->q_tail = w;
    s->q_len++;
    pending_add(s, 1);
    if (s->state == ST_READY && s->op == OP_NONE) {
        if (s->q_len >= (size_t)s->batch_max) wake_in(s, 0);
        else if (s->q_len == 1) wake_in(s, (uint64_t)s->batch_ms);
    }
    return 0;
}

int store_range(store *s, const char *room, uint64_t after, uint64_t before,
                int limit, int newest, store_rows_cb cb, void *ud)
{
    if (!s || s->dead || !room || !cb || s->state != ST_READY) return -1;
    if (s->r_len >= RANGE_QUEUE_MAX) return -1;
    size_t lr = strlen(room);
    if (!utf8_valid(room, lr)) return -1;
    rnode *r = malloc(sizeof *r + lr + 1);
    if (!r) return -1;
    r->next = NULL;
    r->kind = Q_RANGE;
    r->cb = cb;
    r->hcb = NULL;
    r->ud = ud;
    r->newest = newest != 0;
    memcpy(r->room, room, lr + 1);
    if (before > INT64_MAX) before = INT64_MAX;
    if (after > INT64_MAX) after = INT64_MAX;
    if (limit < 0) limit = 0;
    snprintf(r->after, sizeof r->after, "%" PRIu64, after);
    snprintf(r->before, sizeof r->before, "%" PRIu64, before);
    snprintf(r->limit, sizeof r->limit, "%d", limit);
    if (s->r_tail) s->r_tail->next = r; else s->r_head = r;
    s->r_tail = r;
    s->r_len++;
    if (s->op == OP_NONE) wake_in(s, 0);
    return 0;
}

void store_drain(store *s, void (*cb)(void *ud), void *ud)
{
    if (!s || s->dead || !cb) return;
    dnode *d = malloc(sizeof *d);
    if (!d) { cb(ud); return; }
    d->cb = cb;
    d->ud = ud;
    d->next = s->drains;
    s->drains = d;
    s->draining = 1;
    wake_in(s, 0);
}

/* Queues a read of kind k (Q_HISTORY, Q_TARGET, Q_REACTIONS). */
/* extra: bytes after the room's text in the same allocation (the target
 * read's user and client id) */
static rnode *read_new_x(store *s, int k, const char *room, void *ud, size_t extra)
{
    if (!s || s->dead || !room || s->state != ST_READY || s->r_len >= RANGE_QUEUE_MAX) return NULL;
    size_t lr = strlen(room);
    if (!lr || !utf8_valid(room, lr)) return NULL;
    rnode *r = calloc(1, sizeof *r + lr + 1 + extra);
    if (!r) return NULL;
    r->kind = k;
    r->ud = ud;
    memcpy(r->room, room, lr + 1);
    return r;
}

static rnode *read_new(store *s, int k, const char *room, void *ud)
{
    return read_new_x(s, k, room, ud, 0);
}

static void read_queue(store *s, rnode *r)
{
    if (s->r_tail) s->r_tail->next = r; else s->r_head = r;
    s->r_tail = r;
    s->r_len++;
    if (s->op == OP_NONE) wake_in(s, 0);
}

int store_history(store *s, const char *room, uint64_t before, int limit, store_rows_cb cb,
                  void *ud)
{
    if (!cb) return -1;
    rnode *r = read_new(s, Q_HISTORY, room, ud);
    if (!r) return -1;
    r->cb = cb;
    if (before > INT64_MAX) before = INT64_MAX;
    if (limit < 0) limit = 0;
    snprintf(r->after, sizeof r->after, "0");
    snprintf(r->before, sizeof r->before, "%" PRIu64, before);
    snprintf(r->limit, sizeof r->limit, "%d", limit);
    read_queue(s, r);
    return 0;
}

int store_target(store *s, const char *room, uint64_t seq, const char *user, const char *id,
                 store_target_cb cb, void *ud)
{
    if (!cb || seq > INT64_MAX) return -1;
    if (!user || !id) user = id = NULL;
    size_t lu = user ? strlen(user) : 0, li = id ? strlen(id) : 0;
    if (user && (!utf8_valid(user, lu) || !utf8_valid(id, li))) return -1;
    rnode *r = read_new_x(s, Q_TARGET, room, ud, user ? lu + li + 2 : 0);
    if (!r) return -1;
    r->tcb = cb;
    snprintf(r->after, sizeof r->after, "%" PRIu64, seq);
    if (user) {   /* after the room: user, then id (read_new_x's extra) */
        char *x = r->room + strlen(r->room) + 1;
        memcpy(x, user, lu + 1);
        memcpy(x + lu + 1, id, li + 1);
        r->has_id = 1;
    }
    read_queue(s, r);
    return 0;
}

int store_reactions(store *s, const char *room, uint64_t target, store_reactions_cb cb,
                    void *ud)
{
    if (!cb || target > INT64_MAX) return -1;
    rnode *r = read_new(s, Q_REACTIONS, room, ud);
    if (!r) return -1;
    r->xcb = cb;
    snprintf(r->after, sizeof r->after, "%" PRIu64, target);
    read_queue(s, r);
    return 0;
}

static int head_queue(store *s, const char *room, store_head_cb cb, store_seed_cb scb,
                      uint64_t since_ms, uint64_t max_ids, void *ud);

int store_head(store *s, const char *room, store_head_cb cb, void *ud)
{
    if (!cb) return -1;
    return head_queue(s, room, cb, NULL, 0, 0, ud);
}

int store_seed(store *s, const char *room, uint64_t since_ms, uint64_t max_ids, store_seed_cb cb,
               void *ud)
{
    if (!cb) return -1;
    return head_queue(s, room, NULL, cb, since_ms, max_ids, ud);
}

static int head_queue(store *s, const char *room, store_head_cb cb, store_seed_cb scb,
                      uint64_t since_ms, uint64_t max_ids, void *ud)
{
    if (!s || s->dead || !room || s->state != ST_READY) return -1;
    if (s->r_len >= RANGE_QUEUE_MAX) return -1;
    size_t lr = strlen(room);
    if (!lr || !utf8_valid(room, lr)) return -1;
    rnode *r = calloc(1, sizeof *r + lr + 1);
    if (!r) return -1;
    r->kind = scb ? Q_SEED : Q_HEAD;
    r->hcb = cb;
    r->scb = scb;
    r->ud = ud;
    /* since_ms 0: no ids (a window that starts after every ts, and none below the head) */
    snprintf(r->after, sizeof r->after, "%" PRIu64, since_ms ? since_ms : UINT64_MAX >> 1);
    snprintf(r->limit, sizeof r->limit, "%" PRIu64, since_ms ? max_ids : 0);
    memcpy(r->room, room, lr + 1);
    if (s->r_tail) s->r_tail->next = r; else s->r_head = r;
    s->r_tail = r;
    s->r_len++;
    if (s->op == OP_NONE) wake_in(s, 0);
    return 0;
}

/* ---------- statements of other modules (read state, retention) ---------- */

int store_query(store *s, const char *sql, int nparams, const char *const *params,
                store_query_cb cb, void *ud)
{
    return store_query_named(s, NULL, sql, nparams, params, cb, ud);
}

int store_query_named(store *s, const char *name, const char *sql, int nparams,
                      const char *const *params, store_query_cb cb, void *ud)
{
    if (!s || s->dead || !sql || !cb || s->state != ST_READY || nparams < 0) return -1;
    if (s->r_len >= RANGE_QUEUE_MAX) return -1;
    size_t need = 0;
    for (int i = 0; i < nparams; i++) {
        if (!params[i]) continue;
        size_t l = strlen(params[i]);
        if (!utf8_valid(params[i], l)) return -1;
        need += l + 1;
    }
    /* rnode, then the parameter pointers, then their text */
    size_t ptrs = (size_t)nparams * sizeof(char *);
    rnode *r = calloc(1, sizeof *r + ptrs + need + 1);
    if (!r) return -1;
    r->kind = Q_QUERY;
    r->qcb = cb;
    r->ud = ud;
    r->sql = sql;
    r->name = name;
    r->nparams = nparams;
    r->params = (const char **)(void *)r->room;
    char *p = r->room + ptrs;
    for (int i = 0; i < nparams; i++) {
        if (!params[i]) { r->params[i] = NULL; continue; }
        size_t l = strlen(params[i]);
        memcpy(p, params[i], l + 1);
        r->params[i] = p;
        p += l + 1;
    }
    if (s->r_tail) s->r_tail->next = r; else s->r_head = r;
    s->r_tail = r;
    s->r_len++;
    if (s->op == OP_NONE) wake_in(s, 0);
    return 0;
}

int store_result_rows(const store_result *r)
{
    return r ? PQntuples((const PGresult *)r) : 0;
}

const char *store_result_value(const store_result *r, int row, int col)
{
    const PGresult *res = (const PGresult *)r;
    if (!res || row < 0 || col < 0 || row >= PQntuples(res) || col >= PQnfields(res)) return NULL;
    if (PQgetisnull(res, row, col)) return NULL;
    return PQgetvalue(res, row, col);
}

unsigned long store_conn_gen(const store *s)
{
    return s ? s->connects : 0;
}

/* ---- the backfill sweeper's check (on store_query_named) ----
 * Sent in chunks of CHECK_CHUNK pairs, one after the other (the next when
 * the previous answered): each a short statement, so that the write batches
 * and the history reads interleave with them, no ack or page waits for a
 * whole round's check, and a big round never fills the read queue. The
 * caller's arrays live until its callback (store.h). */

#define CHECK_CHUNK 200

typedef struct chk_group {
    store *s;
    store_check_cb cb;
    void *ud;
    const char *const *rooms;
    const uint64_t *seqs;
    size_t n, next;          /* pairs; the first not yet sent */
    size_t off, len;         /* the chunk in flight */
    unsigned char stored[];
} chk_group;

static int check_send(chk_group *g);

static void check_finish(chk_group *g, int status)
{
    g->cb(g->ud, status, status == 0 ? g->stored : NULL);
    free(g);
}

static void check_cb(void *ud, int status, const store_result *res)
{
    chk_group *g = ud;
    if (status != 0) { check_finish(g, -1); return; }
    int nt = store_result_rows(res);
    for (int t = 0; t < nt; t++) {
        const char *v = store_result_value(res, t, 0);
        unsigned long long i = v ? strtoull(v, NULL, 10) : 0;
        if (i >= 1 && i <= g->len) g->stored[g->off + i - 1] = 1;
    }
    if (g->next >= g->n) { check_finish(g, 0); return; }
    if (check_send(g) != 0) check_finish(g, -1);
}

/* queues the next chunk: 0, or -1 (nothing queued) */
static int check_send(chk_group *g)
{
    size_t off = g->next, n = g->n - off < CHECK_CHUNK ? g->n - off : CHECK_CHUNK;
    char *rl = store_text_array(g->rooms + off, n, 1);
    char *sl = malloc(n * 21 + 3), *o = sl;
    int rc = -1;
    if (rl && sl) {
        *o++ = '{';
        for (size_t i = off; i < off + n; i++)
            o += sprintf(o, "%s%" PRIu64, i > off ? "," : "",
                         g->seqs[i] > INT64_MAX ? (uint64_t)INT64_MAX : g->seqs[i]);
        *o++ = '}';
        *o = 0;
        const char *params[2] = {rl, sl};
        rc = store_query_named(g->s, STORE_STMT_STORED, STORE_SQL_STORED, 2, params, check_cb, g);
    }
    if (rc == 0) {
        g->off = off;
        g->len = n;
        g->next = off + n;
    }
    free(rl);
    free(sl);
    return rc;
}

int store_check(store *s, size_t n, const char *const *rooms, const uint64_t *seqs,
                store_check_cb cb, void *ud)
{
    if (!s || s->dead || !cb || !n || s->state != ST_READY) return -1;
    chk_group *g = calloc(1, sizeof *g + n);
    if (!g) return -1;
    *g = (chk_group){s, cb, ud, rooms, seqs, n, 0, 0, 0};
    if (check_send(g) != 0) {
        free(g);
        return -1;
    }
    return 0;
}
