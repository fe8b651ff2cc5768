/* retention: see retention.h.
 *
 * Pass: LOCK (pg_try_advisory_lock: another node holds it -> this pass is
 * skipped) -> ROOMS page (50 rooms after the last one) -> the policy gives
 * each room's days -> MARK (one statement for the page's rooms with a
 * retention: head and kept_from recorded; returns the oldest stored seq)
 * -> DELETE batches for every room whose oldest seq is below kept_from ->
 * next page ... -> UNLOCK. One statement per tick. The lock is a session
 * lock of the store's connection: a new connection (store_conn_gen) means
 * it is gone, so the pass stops and the next one starts over. */
#define _GNU_SOURCE
#include "retention.h"
#include "log.h"
#include "metrics.h"
#include "store_schema.h"
#include "util.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "retention"
#define PAGE_ROOMS 50
#define DAY_MS 86400000.0

enum { S_IDLE, S_LOCK, S_ROOMS, S_MARK, S_DELETE, S_UNLOCK };

typedef struct work { char room[CHAT_ROOM_MAX + 1]; uint64_t lo, hi; } work;

static struct {
    uv_loop_t *loop;
    store *store;
    script_host *script;
    int64_t interval_ms, batch, batch_ms;
    uv_timer_t *timer;
    int state, busy, up;
    unsigned long gen;
    char after[CHAT_ROOM_MAX + 1];
    int last_page;          /* the rooms page just read was the last one */
    work w[PAGE_ROOMS];
    int nw, iw;
    uint64_t pass_rows;
    uint64_t pass_t0;
    metric_counter *m_deleted, *m_done, *m_locked, *m_error;
} T;

static void step(void);
static void on_timer(uv_timer_t *t) { (void)t; step(); }

static void schedule(int64_t ms)
{
    if (!T.up || !T.timer) return;
    uv_timer_start(T.timer, on_timer, (uint64_t)(ms < 0 ? 0 : ms), 0);
}

static void pass_end(int result)
{
    T.state = S_IDLE;
    if (result == 0) {
        metric_inc(T.m_done);
        if (T.pass_rows)
            LOGI(MOD, "pass done: %" PRIu64 " old messages deleted in %.1f s", T.pass_rows,
                 (double)(mono_ms() - T.pass_t0) / 1000.0);
    } else if (result == 1) {
        metric_inc(T.m_locked);
    } else {
        metric_inc(T.m_error);
    }
    schedule(T.interval_ms);
}

double retention_days(script_host *h, const char *room, const char *node)
{
    script_ctx x = {NULL, NULL, NULL, room, node, now_ms(), NULL};
    double d = 0;
    int r = script_on_retention(h, &x, &d);
    if (r < 0) return -1;
    if (r == 0) d = script_setting_num(h, "history_days", 0);
    return d > 0 ? d : 0;
}

static int configured(void)
{
    return script_has_hook(T.script, "on_retention") ||
           script_setting_num(T.script, "history_days", 0) > 0;
}

/* ---- statements ---------------------------------------------------------- */

static void on_result(void *ud, int status, const store_result *res);

static int query(int state, const char *sql, int n, const char *const *p)
{
    T.state = state;
    T.busy = 1;
    if (store_query(T.store, sql, n, p, on_result, NULL) < 0) {
        T.busy = 0;
        return -1;
    }
    return 0;
}

/* A statement failed, or the connection changed under the pass. */
static void abort_pass(const char *why)
{
    LOGW(MOD, "pass stopped: %s", why);
    if (T.state != S_LOCK && T.state != S_UNLOCK && store_conn_gen(T.store) == T.gen &&
        store_query(T.store, STORE_SQL_RETENTION_UNLOCK, 0, NULL, on_result, NULL) == 0) {
        T.busy = 1;
        T.state = S_UNLOCK;
        T.nw = -1;     /* marks the unlock of an aborted pass */
        return;
    }
    pass_end(-1);
}

static void next_page(void)
{
    if (T.last_page) {
        T.nw = 0;
        if (query(S_UNLOCK, STORE_SQL_RETENTION_UNLOCK, 0, NULL) < 0) pass_end(-1);
        return;
    }
    char lim[16];
    snprintf(lim, sizeof lim, "%d", PAGE_ROOMS);
    const char *p[2] = {T.after, lim};
    if (query(S_ROOMS, STORE_SQL_RETENTION_ROOMS, 2, p) < 0) abort_pass("store not ready");
}

static void send_delete(void)
{
    while (T.iw < T.nw && T.w[T.iw].lo >= T.w[T.iw].hi) T.iw++;
    if (T.iw >= T.nw) { next_page(); return; }
    work *w = &T.w[T.iw];
    uint64_t to = w->lo + (uint64_t)T.batch;
    if (to > w->hi || to < w->lo) to = w->hi;
    char a[24], b[24];
    snprintf(a, sizeof a, "%" PRIu64, w->lo);
    snprintf(b, sizeof b, "%" PRIu64, to);
    const char *p[3] = {w->room, a, b};
    w->lo = to;
    if (query(S_DELETE, STORE_SQL_RETENTION_DELETE, 3, p) < 0) abort_pass("store not ready");
}

/* The rooms of a page: their days from the policy, then one MARK. */
static void got_rooms(const store_result *res)
{
    int n = store_result_rows(res);
    T.last_page = n < PAGE_ROOMS;
    if (n == 0) { next_page(); return; }
    char *rooms = NULL, *cuts = NULL;
    size_t rl = 0, cl = 0;
    FILE *fr = open_memstream(&rooms, &rl), *fc = open_memstream(&cuts, &cl);
    if (!fr || !fc) {
        if (fr) fclose(fr);
        if (fc) fclose(fc);
        free(rooms);
        free(cuts);
        abort_pass("out of memory");
        return;
    }
    int k = 0;
    uint64_t now = now_ms();
    for (int i = 0; i < n; i++) {
        const char *room = store_result_value(res, i, 0);
        if (!room) continue;
        snprintf(T.after, sizeof T.after, "%s", room);
        if (!room_name_valid(room, strlen(room))) continue;
        double days = retention_days(T.script, room, NULL);
        if (days <= 0) continue;
        double keep_ms = days * DAY_MS;
        if (keep_ms >= (double)now) continue;
        uint64_t cut = now - (uint64_t)keep_ms;
        fprintf(fr, "%s\"%s\"", k ? "," : "{", room);   /* room names need no escaping */
        fprintf(fc, "%s%" PRIu64, k ? "," : "{", cut);
        k++;
    }
    fputs("}", fr);
    fputs("}", fc);
    fclose(fr);
    fclose(fc);
    if (k == 0) {
        free(rooms);
        free(cuts);
        next_page();
        return;
    }
    const char *p[2] = {rooms, cuts};
    int rc = query(S_MARK, STORE_SQL_RETENTION_MARK, 2, p);
    free(rooms);
    free(cuts);
    if (rc < 0) abort_pass("store not ready");
}

static void got_marks(const store_result *res)
{
    int n = store_result_rows(res);
    T.nw = T.iw = 0;
    for (int i = 0; i < n && T.nw < PAGE_ROOMS; i++) {
        const char *room = store_result_value(res, i, 0), *kf = store_result_value(res, i, 1);
        const char *old = store_result_value(res, i, 2);
        uint64_t kept = 0, oldest = 0;
        if (!room || !kf || !old) continue;   /* no rows at all */
        if (seq_parse(kf, strlen(kf), &kept) != 0 || seq_parse(old, strlen(old), &oldest) != 0)
            continue;                         /* not seqs (util.h's rule): left alone */
        if (oldest >= kept) continue;
        work *w = &T.w[T.nw++];
        snprintf(w->room, sizeof w->room, "%s", room);
        w->lo = oldest;
        w->hi = kept;
    }
}

static void on_result(void *ud, int status, const store_result *res)
{
    (void)ud;
    T.busy = 0;
    if (!T.up) return;
    int st = T.state;
    if (st == S_UNLOCK) {
        if (T.nw < 0) pass_end(-1);
        else pass_end(0);
        return;
    }
    if (status < 0) { abort_pass("a statement failed (see the store's log)"); return; }
    if (st != S_LOCK && store_conn_gen(T.store) != T.gen) {
        pass_end(-1);   /* the session (and its lock) is gone */
        return;
    }
    switch (st) {
    case S_LOCK: {
        const char *v = store_result_value(res, 0, 0);
        if (!v || strcmp(v, "t") != 0) { pass_end(1); return; }
        T.gen = store_conn_gen(T.store);
        T.after[0] = 0;
        T.last_page = 0;
        T.pass_rows = 0;
        T.pass_t0 = mono_ms();
        T.state = S_ROOMS;
        break;
    }
    case S_ROOMS:
        got_rooms(res);
        return;
    case S_MARK:
        got_marks(res);
        T.state = S_DELETE;
        break;
    case S_DELETE: {
        const char *v = store_result_value(res, 0, 0);
        uint64_t d = v ? strtoull(v, NULL, 10) : 0;
        metric_add(T.m_deleted, d);
        T.pass_rows += d;
        break;
    }
    }
    schedule(T.batch_ms);    /* the next statement of the pass, one per tick */
}

/* The timer: start a pass, or the next statement of the running one. */
static void step(void)
{
    if (!T.up || T.busy) return;
    switch (T.state) {
    case S_IDLE:
        if (!store_ready(T.store) || !configured()) { schedule(T.interval_ms); return; }
        if (query(S_LOCK, STORE_SQL_RETENTION_LOCK, 0, NULL) < 0) schedule(T.interval_ms);
        return;
    case S_ROOMS: next_page(); return;
    case S_DELETE: send_delete(); return;
    default: return;
    }
}

static void timer_closed(uv_handle_t *h) { free(h); }

void retention_init(uv_loop_t *loop, store *s, script_host *h, const retention_opts *o)
{
    memset(&T, 0, sizeof T);
    T.m_deleted = metrics_counter("chat_retention_deleted_total",
                                  "History rows deleted by retention (older than the policy keeps)", NULL);
    T.m_done = metrics_counter("chat_retention_passes_total", "Retention passes, by result",
                               "result=\"done\"");
    T.m_locked = metrics_counter("chat_retention_passes_total", NULL, "result=\"locked\"");
    T.m_error = metrics_counter("chat_retention_passes_total", NULL, "result=\"error\"");
    if (!s) return;
    T.loop = loop;
    T.store = s;
    T.script = h;
    T.interval_ms = o && o->interval_ms > 0 ? o->interval_ms : 60000;
    T.batch = o && o->batch > 0 ? o->batch : 500;
    T.batch_ms = o && o->batch_ms >= 0 ? o->batch_ms : 100;
    T.timer = malloc(sizeof *T.timer);
    if (!T.timer) return;
    uv_timer_init(loop, T.timer);
    T.up = 1;
    schedule(T.interval_ms < 5000 ? T.interval_ms : 5000);   /* a first pass soon after start */
}

void retention_shutdown(void)
{
    if (!T.up) return;
    T.up = 0;
    if (T.timer) uv_close((uv_handle_t *)T.timer, timer_closed);
    T.timer = NULL;
}
