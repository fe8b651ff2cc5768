/* readstate: see readstate.h.
 *
 * Marks: readstate_mark puts (user, room, seq) into a map keyed
 * "user\nroom" (room names never hold '\n'), keeping the highest seq and
 * every waiter, plus a FIFO of the keys in arrival order. A timer flushes
 * batch_ms after the first queued mark: up to batch_max entries move to the
 * in-flight map and go out as ONE statement (STORE_SQL_READ_MARK: unnest of
 * three arrays, INSERT ... ON CONFLICT DO UPDATE SET read_seq =
 * GREATEST(...) RETURNING the stored and the previous value). One mark
 * batch is in flight at a time; marks arriving meanwhile wait for the next.
 * Lookups: queued the same way, one STORE_SQL_READ_LOOKUP per batch, each
 * batch with its own timeout (a stalled database must not stall joins).
 * A lookup answers max(stored, queued mark, in-flight mark): a join right
 * after a read sees it even before its batch committed.
 * Every statement is a store_query (the store's one connection, FIFO with
 * history reads). */
#define _GNU_SOURCE
#include "readstate.h"
#include "hmap.h"
#include "log.h"
#include "metrics.h"
#include "store_schema.h"
#include "util.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "readstate"

typedef struct waiter {
    struct waiter *next;
    void *owner;
    readstate_mark_cb cb;   /* NULL once dropped */
    void *ud;
} waiter;

typedef struct mark {
    struct mark *next;      /* FIFO of queued marks */
    char *key;              /* "user\nroom" (owned) */
    const char *user, *room; /* point into names[] */
    char name[128];
    uint64_t seq;
    int receipt;
    int answered;           /* in a finished batch: answered, freed at its end */
    waiter *waiters;
    char names[];
} mark;

/* One in-flight mark batch. */
typedef struct mbatch {
    mark **m;
    size_t n;
    int abandoned;          /* the module shut down: the callback only frees */
} mbatch;

typedef struct lookup {
    struct lookup *next;
    char user[128], room[CHAT_ROOM_MAX + 1];
    readstate_lookup_cb cb;
    void *ud;
} lookup;

typedef struct lbatch {
    lookup *list;           /* answered and freed by done or timeout */
    size_t n;
    uv_timer_t *timer;
    int answered;           /* timed out (or shut down): the result is ignored */
    int in_store;           /* the store still owes the callback */
} lbatch;

typedef struct unread_req {
    readstate_unread_cb cb;
    void *ud;
} unread_req;

static struct {
    uv_loop_t *loop;
    store *store;
    bus *bus;
    int batch_ms, batch_max, lookup_timeout_ms;
    uv_timer_t *timer;
    int timer_armed;
    hmap queued;            /* key -> mark, waiting */
    mark *q_head, *q_tail;
    size_t q_len;
    hmap inflight;          /* key -> mark, in the batch being written */
    mbatch *mb;             /* the in-flight batch (NULL when none) */
    lookup *l_head, *l_tail;
    size_t l_len;
    lbatch *lb;             /* the in-flight lookup batch (NULL when none) */
    int up;
    metric_counter *m_marks, *m_receipts, *m_failed, *m_lookup_timeouts;
    metric_hist *m_batch_rows;
} R;

static const double ROW_BUCKETS[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000};

static void flush(void);

/* ---- helpers ------------------------------------------------------------ */

/* A growable text buffer (the seq array literal, the unread answer). */
typedef struct buf { char *p; size_t len, cap; int oom; } buf;

static void b_put(buf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 256;
        while (nc < b->len + n + 1) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) { b->oom = 1; return; }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

/* The users and rooms of n items as two Postgres text[] literals (the
 * store's one builder, store_text_array): uv/rv point into pairs, which
 * holds user, room for each item. Returns 0, or -1 out of memory. */
static int user_room_arrays(const char **pairs, size_t n, char **users, char **rooms)
{
    *users = store_text_array(pairs, n, 2);
    *rooms = store_text_array(pairs + 1, n, 2);
    if (*users && *rooms) return 0;
    free(*users);
    free(*rooms);
    *users = *rooms = NULL;
    return -1;
}

static char *make_key(const char *user, const char *room)
{
    char *k = NULL;
    if (asprintf(&k, "%s\n%s", user, room) < 0) return NULL;
    return k;
}

static void on_timer(uv_timer_t *t)
{
    (void)t;
    R.timer_armed = 0;
    flush();
}

/* Flush in ms unless a flush is already due. */
static void arm(int ms)
{
    if (!R.timer || R.timer_armed) return;
    R.timer_armed = 1;
    uv_timer_start(R.timer, on_timer, (uint64_t)ms, 0);
}

static void mark_free(mark *m)
{
    while (m->waiters) {
        waiter *w = m->waiters;
        m->waiters = w->next;
        free(w);
    }
    free(m->key);
    free(m);
}

/* Answers every waiter of m (status, value). */
static void mark_notify(mark *m, int status, uint64_t stored)
{
    waiter *w = m->waiters;
    m->waiters = NULL;
    m->answered = 1;
    while (w) {
        waiter *n = w->next;
        if (w->cb) w->cb(w->ud, status, stored);
        free(w);
        w = n;
    }
}

static void mark_answer(mark *m, int status, uint64_t stored)
{
    mark_notify(m, status, stored);
    mark_free(m);
}

/* ---- marks -------------------------------------------------------------- */

size_t readstate_receipt_json(char *b, size_t cap, const char *room, const char *user,
                              const char *name, uint64_t seq)
{
    if (cap < JSON_IDENT_MAX + 256) return 0;
    size_t o = (size_t)snprintf(b, cap, "{\"type\":\"read\",\"room\":\"%s\",\"user\":", room);
    o += (size_t)json_escape(b + o, cap - o, user, strlen(user));
    memcpy(b + o, ",\"name\":", 8);
    o += 8;
    o += (size_t)json_escape(b + o, cap - o, name, strlen(name));
    o += (size_t)snprintf(b + o, cap - o, ",\"seq\":%" PRIu64 "}", seq);
    return o;
}

static void emit_receipt(const mark *m, uint64_t seq)
{
    char b[JSON_IDENT_MAX + 256];
    size_t o = readstate_receipt_json(b, sizeof b, m->room, m->user, m->name, seq);
    /* the room's channel of ephemeral room frames (presence): delivered
     * verbatim to the live members on every node (docs/architecture.md) */
    if (bus_emit(R.bus, m->room, "presence", b, o) == 0) metric_inc(R.m_receipts);
}

static void on_mark_batch(void *ud, int status, const store_result *res)
{
    mbatch *b = ud;
    if (b->abandoned) { free(b->m); free(b); return; }
    R.mb = NULL;
    size_t nrows = status == 0 ? (size_t)store_result_rows(res) : 0;
    if (status == 0) metric_observe(R.m_batch_rows, (double)b->n);
    /* the rows come back in any order: match each to its mark by key */
    for (size_t i = 0; i < nrows; i++) {
        const char *u = store_result_value(res, (int)i, 0), *r = store_result_value(res, (int)i, 1);
        const char *sv = store_result_value(res, (int)i, 2), *ov = store_result_value(res, (int)i, 3);
        uint64_t stored = 0, old = 0;
        /* seqs by the one rule (util.h seq_parse); a row that breaks it
         * leaves its mark unanswered: failed below */
        if (!u || !r || !sv || seq_parse(sv, strlen(sv), &stored) != 0 ||
            (ov && seq_parse(ov, strlen(ov), &old) != 0))
            continue;
        char *k = make_key(u, r);
        mark *m = k ? hmap_del(&R.inflight, k) : NULL;
        free(k);
        if (!m) continue;
        metric_inc(R.m_marks);
        if (m->receipt && stored > old) emit_receipt(m, stored);
        mark_notify(m, 0, stored);
    }
    /* anything left (an error, a row missing) failed */
    for (size_t i = 0; i < b->n; i++) {
        mark *m = b->m[i];
        if (!m->answered) {
            hmap_del(&R.inflight, m->key);
            metric_inc(R.m_failed);
            mark_notify(m, -1, 0);
        }
        mark_free(m);
    }
    free(b->m);
    free(b);
    if (R.q_len || R.l_len) arm(0);
}

static void send_marks(void)
{
    size_t n = R.q_len < (size_t)R.batch_max ? R.q_len : (size_t)R.batch_max;
    mbatch *b = calloc(1, sizeof *b);
    mark **arr = calloc(n, sizeof *arr);
    buf seqs = {0};
    const char **pairs = malloc((n ? n : 1) * 2 * sizeof *pairs);
    if (!b || !arr || !pairs) { free(b); free(arr); free(pairs); arm(R.batch_ms); return; }
    for (size_t i = 0; i < n; i++) {
        mark *m = R.q_head;
        R.q_head = m->next;
        if (!R.q_head) R.q_tail = NULL;
        R.q_len--;
        m->next = NULL;
        hmap_del(&R.queued, m->key);
        if (hmap_put(&R.inflight, m->key, m) < 0) { mark_answer(m, -1, 0); continue; }
        arr[b->n++] = m;
    }
    b->m = arr;
    b_put(&seqs, "{", 1);
    for (size_t i = 0; i < b->n; i++) {
        char s[24];
        pairs[2 * i] = arr[i]->user;
        pairs[2 * i + 1] = arr[i]->room;
        int l = snprintf(s, sizeof s, "%s%" PRIu64, i ? "," : "", arr[i]->seq);
        b_put(&seqs, s, (size_t)l);
    }
    b_put(&seqs, "}", 1);
    char *users = NULL, *rooms = NULL;
    int rc = -1;
    if (b->n && !seqs.oom && user_room_arrays(pairs, b->n, &users, &rooms) == 0) {
        const char *p[3] = {users, rooms, seqs.p};
        rc = store_query(R.store, STORE_SQL_READ_MARK, 3, p, on_mark_batch, b);
    }
    free(pairs);
    free(users);
    free(rooms);
    free(seqs.p);
    if (rc == 0) { R.mb = b; return; }
    /* refused now (store not ready): answer the batch at once */
    on_mark_batch(b, -1, NULL);
}

int readstate_mark(const char *user, const char *name, const char *room, uint64_t seq,
                   int receipt, void *owner, readstate_mark_cb cb, void *ud)
{
    if (!readstate_ready() || !user || !room || !cb || seq > INT64_MAX) return -1;
    char *k = make_key(user, room);
    if (!k) return -1;
    waiter *w = calloc(1, sizeof *w);
    if (!w) { free(k); return -1; }
    w->owner = owner;
    w->cb = cb;
    w->ud = ud;
    mark *m = hmap_get(&R.queued, k);
    if (!m) {
        size_t lu = strlen(user), lr = strlen(room);
        m = calloc(1, sizeof *m + lu + lr + 2);
        if (!m) { free(k); free(w); return -1; }
        m->key = k;
        memcpy(m->names, user, lu + 1);
        memcpy(m->names + lu + 1, room, lr + 1);
        m->user = m->names;
        m->room = m->names + lu + 1;
        if (hmap_put(&R.queued, k, m) < 0) { free(w); mark_free(m); return -1; }
        if (R.q_tail) R.q_tail->next = m; else R.q_head = m;
        R.q_tail = m;
        R.q_len++;
    } else {
        free(k);
    }
    if (seq > m->seq) m->seq = seq;
    if (receipt) m->receipt = 1;
    snprintf(m->name, sizeof m->name, "%s", name ? name : user);
    w->next = m->waiters;
    m->waiters = w;
    if (R.q_len >= (size_t)R.batch_max && !R.mb) arm(0);
    else arm(R.batch_ms);
    return 0;
}

static void drop_in(hmap *map, void *owner)
{
    for (size_t i = 0; i < map->cap; i++) {
        if (!hmap_live(map, i)) continue;
        for (waiter *w = ((mark *)map->slots[i].val)->waiters; w; w = w->next)
            if (w->owner == owner) w->cb = NULL;
    }
}

void readstate_drop(void *owner)
{
    if (!owner || !R.up) return;
    drop_in(&R.queued, owner);
    drop_in(&R.inflight, owner);
}

/* ---- lookups ------------------------------------------------------------ */

static uint64_t pending_seq(const char *user, const char *room)
{
    char *k = make_key(user, room);
    if (!k) return 0;
    uint64_t v = 0;
    mark *m = hmap_get(&R.queued, k);
    if (m) v = m->seq;
    m = hmap_get(&R.inflight, k);
    if (m && m->seq > v) v = m->seq;
    free(k);
    return v;
}

static void lbatch_closed(uv_handle_t *h) { free(h); }

/* Frees b once nobody owes it anything (its answers given, the store's
 * callback returned). */
static void lbatch_maybe_free(lbatch *b)
{
    if (!b->answered || b->in_store) return;
    if (b->timer) uv_close((uv_handle_t *)b->timer, lbatch_closed);
    free(b);
}

static void lbatch_answer(lbatch *b, const store_result *res, int status)
{
    b->answered = 1;
    if (b->timer) uv_timer_stop(b->timer);
    int i = 0;
    lookup *l = b->list;
    b->list = NULL;
    if (R.lb == b) R.lb = NULL;
    while (l) {
        lookup *n = l->next;
        if (status == 0) {
            const char *rv = store_result_value(res, i, 0), *kv = store_result_value(res, i, 1);
            uint64_t rs = 0, kf = 0;
            if ((rv && seq_parse(rv, strlen(rv), &rs) != 0) || (kv && seq_parse(kv, strlen(kv), &kf) != 0)) {
                l->cb(l->ud, -1, 0, 0);   /* not a seq (util.h's rule): no answer */
            } else {
                uint64_t p = R.up ? pending_seq(l->user, l->room) : 0;
                l->cb(l->ud, 0, rs > p ? rs : p, kf);
            }
        } else {
            l->cb(l->ud, -1, 0, 0);
        }
        free(l);
        l = n;
        i++;
    }
}

static void on_lookup_batch(void *ud, int status, const store_result *res)
{
    lbatch *b = ud;
    b->in_store = 0;
    if (!b->answered) {
        if (status == 0 && store_result_rows(res) != (int)b->n) status = -1;
        lbatch_answer(b, res, status);
    }
    lbatch_maybe_free(b);
    if (R.up && (R.q_len || R.l_len)) arm(0);
}

static void on_lookup_timeout(uv_timer_t *t)
{
    lbatch *b = t->data;
    if (b->answered) return;
    LOGW(MOD, "read state lookup of %zu joins got no answer within %d ms: joins go on with read_seq pending",
         b->n, R.lookup_timeout_ms);
    metric_inc(R.m_lookup_timeouts);
    lbatch_answer(b, NULL, -1);
    lbatch_maybe_free(b);
    if (R.up && (R.q_len || R.l_len)) arm(0);
}

static void send_lookups(void)
{
    lbatch *b = calloc(1, sizeof *b);
    if (!b) { arm(R.batch_ms); return; }
    size_t cap = R.l_len < (size_t)R.batch_max ? R.l_len : (size_t)R.batch_max;
    const char **pairs = malloc((cap ? cap : 1) * 2 * sizeof *pairs);
    if (!pairs) { free(b); arm(R.batch_ms); return; }
    lookup **tail = &b->list;
    while (R.l_head && b->n < (size_t)R.batch_max) {
        lookup *l = R.l_head;
        R.l_head = l->next;
        if (!R.l_head) R.l_tail = NULL;
        R.l_len--;
        l->next = NULL;
        *tail = l;
        tail = &l->next;
        pairs[2 * b->n] = l->user;
        pairs[2 * b->n + 1] = l->room;
        b->n++;
    }
    b->timer = malloc(sizeof *b->timer);
    if (b->timer) {
        uv_timer_init(R.loop, b->timer);
        b->timer->data = b;
    }
    char *users = NULL, *rooms = NULL;
    int rc = -1;
    if (b->timer && user_room_arrays(pairs, b->n, &users, &rooms) == 0) {
        const char *p[2] = {users, rooms};
        rc = store_query(R.store, STORE_SQL_READ_LOOKUP, 2, p, on_lookup_batch, b);
    }
    free(pairs);
    free(users);
    free(rooms);
    if (rc == 0) {
        b->in_store = 1;
        R.lb = b;
        uv_timer_start(b->timer, on_lookup_timeout, (uint64_t)R.lookup_timeout_ms, 0);
        return;
    }
    lbatch_answer(b, NULL, -1);
    lbatch_maybe_free(b);
}

int readstate_lookup(const char *user, const char *room, readstate_lookup_cb cb, void *ud)
{
    if (!readstate_ready() || !user || !room || !cb) return -1;
    if (strlen(user) >= sizeof ((lookup *)0)->user || strlen(room) > CHAT_ROOM_MAX) return -1;
    lookup *l = calloc(1, sizeof *l);
    if (!l) return -1;
    snprintf(l->user, sizeof l->user, "%s", user);
    snprintf(l->room, sizeof l->room, "%s", room);
    l->cb = cb;
    l->ud = ud;
    if (R.l_tail) R.l_tail->next = l; else R.l_head = l;
    R.l_tail = l;
    R.l_len++;
    arm(R.l_len >= (size_t)R.batch_max ? 0 : R.batch_ms);
    return 0;
}

/* ---- the flush ------------------------------------------------------------ */

static void flush(void)
{
    if (!R.up) return;
    if (R.q_len && !R.mb) send_marks();
    if (R.l_len && !R.lb) send_lookups();
}

/* ---- unread counts ---------------------------------------------------------- */

static void on_unread(void *ud, int status, const store_result *res)
{
    unread_req *q = ud;
    if (status < 0) {
        q->cb(q->ud, -1, NULL, 0);
        free(q);
        return;
    }
    int n = store_result_rows(res);
    buf b = {0};
    b_put(&b, "{\"rooms\":[", 10);
    for (int i = 0; i < n; i++) {
        const char *room = store_result_value(res, i, 0);
        const char *seq = store_result_value(res, i, 1), *rs = store_result_value(res, i, 2);
        const char *un = store_result_value(res, i, 3);
        if (!room || !seq || !rs || !un) continue;
        char e[CHAT_ROOM_MAX * 6 + 16];
        long el = json_escape(e, sizeof e, room, strlen(room));
        if (el < 0) continue;
        char t[128];
        b_put(&b, b.len > 10 ? ",{\"room\":" : "{\"room\":", b.len > 10 ? 9 : 8);
        b_put(&b, e, (size_t)el);
        int tl = snprintf(t, sizeof t, ",\"seq\":%s,\"read_seq\":%s,\"unread\":%s}", seq, rs, un);
        b_put(&b, t, (size_t)tl);
    }
    b_put(&b, "]}", 2);
    if (b.oom) {
        free(b.p);
        q->cb(q->ud, -1, NULL, 0);
    } else {
        q->cb(q->ud, 0, b.p, b.len);
    }
    free(q);
}

int readstate_unread(const char *user, readstate_unread_cb cb, void *ud)
{
    if (!readstate_ready() || !user || !cb) return -1;
    unread_req *q = calloc(1, sizeof *q);
    if (!q) return -1;
    q->cb = cb;
    q->ud = ud;
    const char *p[1] = {user};
    if (store_query_named(R.store, STORE_STMT_UNREAD, STORE_SQL_UNREAD, 1, p, on_unread, q) < 0) { free(q); return -1; }
    return 0;
}

/* ---- life ------------------------------------------------------------------------ */

static void timer_closed(uv_handle_t *h) { free(h); }

void readstate_init(uv_loop_t *loop, store *s, bus *b, const readstate_opts *o)
{
    memset(&R, 0, sizeof R);
    R.loop = loop;
    R.store = s;
    R.bus = b;
    R.batch_ms = o && o->batch_ms > 0 ? o->batch_ms : 5;
    R.batch_max = o && o->batch_max > 0 ? o->batch_max : 500;
    R.lookup_timeout_ms = o && o->lookup_timeout_ms > 0 ? o->lookup_timeout_ms : 2000;
    hmap_init(&R.queued);
    hmap_init(&R.inflight);
    R.m_marks = metrics_counter("chat_read_marks_total", "Read marks committed (one per (user, room) per batch)", NULL);
    R.m_failed = metrics_counter("chat_read_marks_failed_total", "Read marks that could not be stored (answered unavailable)", NULL);
    R.m_receipts = metrics_counter("chat_read_receipts_total", "Read receipts broadcast by this node", NULL);
    R.m_lookup_timeouts = metrics_counter("chat_read_lookup_timeouts_total",
                                          "Join read-state lookups not answered in time: joins answered read_seq_pending (database too slow)", NULL);
    R.m_batch_rows = metrics_histogram("chat_read_batch_rows", "Read marks per committed batch", NULL,
                                       ROW_BUCKETS, (int)(sizeof ROW_BUCKETS / sizeof ROW_BUCKETS[0]));
    R.timer = malloc(sizeof *R.timer);
    if (R.timer) uv_timer_init(loop, R.timer);
    R.up = 1;
}

int readstate_ready(void)
{
    return R.up && R.store && R.timer && store_ready(R.store);
}

static int free_queued(void *ud, const char *key, void *val)
{
    (void)ud; (void)key;
    mark_answer(val, -1, 0);
    return 1;
}

void readstate_shutdown(void)
{
    if (!R.up) return;
    R.up = 0;
    if (R.timer) uv_close((uv_handle_t *)R.timer, timer_closed);
    R.timer = NULL;
    R.q_head = R.q_tail = NULL;
    R.q_len = 0;
    hmap_each(&R.queued, free_queued, NULL);
    hmap_each(&R.inflight, free_queued, NULL);
    hmap_free(&R.queued);
    hmap_free(&R.inflight);
    if (R.mb) { R.mb->abandoned = 1; R.mb = NULL; }
    if (R.lb) { lbatch *b = R.lb; lbatch_answer(b, NULL, -1); lbatch_maybe_free(b); }
    lookup *l = R.l_head;
    R.l_head = R.l_tail = NULL;
    R.l_len = 0;
    while (l) {
        lookup *n = l->next;
        l->cb(l->ud, -1, 0, 0);
        free(l);
        l = n;
    }
}
