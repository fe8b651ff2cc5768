/* redis_node: see redis_node.h. */
#define _GNU_SOURCE
#include "redis_node.h"
#include "backoff.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_DOWN = 0, N_CONNECTING, N_UP, N_FREED };

struct redis_node {
    uv_loop_t *loop;
    redis_node_opts o;
    char *user, *pass;
    redis_node_handlers h;
    void *ud;
    uint64_t id;
    int state;
    redis_conn *cmd, *sub;
    int cmd_ok, sub_ok, scripts_left, info_left;
    char run_id[REDIS_RUN_ID_LEN + 1];   /* of the server behind cmd ("" until INFO answered) */
    uv_timer_t retry;
    backoff bo;
    char reason[300];
};

static uint64_t next_id = 1;

static void start(redis_node *n);

static void retry_cb(uv_timer_t *t)
{
    redis_node *n = t->data;
    if (n->state == N_DOWN) start(n);
}

static void drop_conns(redis_node *n)
{
    redis_conn *c = n->cmd, *s = n->sub;
    n->cmd = n->sub = NULL;
    n->cmd_ok = n->sub_ok = 0;
    n->run_id[0] = 0;
    redis_conn_close(c);
    redis_conn_close(s);
}

static void node_fail(redis_node *n, const char *why)
{
    if (n->state == N_DOWN || n->state == N_FREED) return;
    int was_up = n->state == N_UP;
    n->state = N_DOWN;
    snprintf(n->reason, sizeof n->reason, "%s", why);
    /* a session that stayed up long enough starts the backoff over */
    backoff_stable(&n->bo, mono_ms(), REDIS_NODE_STABLE_MS);
    uint32_t d = backoff_next(&n->bo);
    uv_timer_start(&n->retry, retry_cb, d, 0);
    if (n->h.on_down) n->h.on_down(n, n->ud, was_up, n->reason);
    /* after on_down: the owner has forgotten the session when the pending
     * callbacks of its connections get their NULL replies */
    if (n->state != N_FREED) drop_conns(n);
}


static void maybe_up(redis_node *n)
{
    if (n->state != N_CONNECTING || !n->cmd_ok || n->scripts_left > 0 || n->info_left > 0 ||
        (n->o.want_sub && !n->sub_ok))
        return;
    n->state = N_UP;
    n->reason[0] = 0;
    backoff_up(&n->bo, mono_ms());
    if (n->h.on_up) n->h.on_up(n, n->ud);
}

typedef struct script_op { redis_node *n; int idx; } script_op;

static void script_loaded(redis_conn *c, const redisReply *r, void *ud)
{
    script_op *op = ud;
    redis_node *n = op->n;
    int idx = op->idx;
    free(op);
    if (!r || n->cmd != c || n->state != N_CONNECTING) return;
    if (r->type != REDIS_REPLY_STRING || r->len != 40 || memcmp(r->str, n->o.shas[idx], 40) != 0) {
        char why[300];
        snprintf(why, sizeof why, "SCRIPT LOAD: %.*s", r->type == REDIS_REPLY_ERROR ? (int)r->len : 18,
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        node_fail(n, why);
        return;
    }
    n->scripts_left--;
    maybe_up(n);
}

/* INFO server: the run_id line ("run_id:" and 40 hex digits) */
static void info_cb(redis_conn *c, const redisReply *r, void *ud)
{
    redis_node *n = ud;
    if (!r || n->cmd != c || n->state != N_CONNECTING) return;
    const char *p = NULL;
    if (r->type == REDIS_REPLY_STRING)
        p = memmem(r->str, r->len, "\nrun_id:", 8);
    int ok = p && (size_t)(r->str + r->len - (p + 8)) >= REDIS_RUN_ID_LEN;
    for (int i = 0; ok && i < REDIS_RUN_ID_LEN; i++) ok = strchr("0123456789abcdef", p[8 + i]) && p[8 + i];
    if (ok) {
        memcpy(n->run_id, p + 8, REDIS_RUN_ID_LEN);
        n->run_id[REDIS_RUN_ID_LEN] = 0;
        n->info_left = 0;
        maybe_up(n);
        return;
    }
    char why[300];
    snprintf(why, sizeof why, "INFO server (chatd needs the run_id): %.*s",
             r->type == REDIS_REPLY_ERROR ? (int)r->len : 14,
             r->type == REDIS_REPLY_ERROR ? r->str : "no run_id line");
    node_fail(n, why);
}

static void conn_up(redis_conn *c, void *ud)
{
    redis_node *n = ud;
    if (c == n->sub) {
        n->sub_ok = 1;
        maybe_up(n);
        return;
    }
    n->cmd_ok = 1;
    n->info_left = n->o.want_run_id;
    if (n->o.want_run_id &&
        redis_conn_command(c, 2, (const char *[]){"INFO", "server"}, NULL, info_cb, n) != 0) {
        node_fail(n, "cannot queue INFO");
        return;
    }
    n->scripts_left = n->o.nscripts;
    for (int i = 0; i < n->o.nscripts; i++) {
        script_op *op = malloc(sizeof *op);
        const char *a[3] = {"SCRIPT", "LOAD", n->o.scripts[i]};
        if (!op) { node_fail(n, "out of memory"); return; }
        op->n = n;
        op->idx = i;
        if (redis_conn_command(c, 3, a, NULL, script_loaded, op) != 0) {
            free(op);
            node_fail(n, "cannot queue SCRIPT LOAD");
            return;
        }
    }
    maybe_up(n);
}

static void conn_down(redis_conn *c, void *ud, const char *why)
{
    redis_node *n = ud;
    int was_sub = c == n->sub;
    if (c == n->cmd) n->cmd = NULL;
    else if (was_sub) n->sub = NULL;
    else return;
    char buf[300];
    if (was_sub) {
        snprintf(buf, sizeof buf, "subscription connection: %s", why);
        why = buf;
    }
    node_fail(n, why);
}

static void conn_push(redis_conn *c, void *ud, const redis_push *p)
{
    redis_node *n = ud;
    if (c != n->sub || n->state != N_UP) return;
    if (n->h.on_push) n->h.on_push(n, n->ud, p);
}

static const redis_conn_handlers CONN_H = {conn_up, conn_down, conn_push};

static void start(redis_node *n)
{
    redis_conn_opts co = {
        .addr = n->o.addr, .user = n->user, .pass = n->pass, .db = n->o.db, .tls = n->o.tls,
        .linger_ms = n->o.linger_ms,
    };
    n->state = N_CONNECTING;
    n->cmd_ok = n->sub_ok = 0;
    n->cmd = redis_conn_new(n->loop, &co, &CONN_H, n);
    if (n->o.want_sub && n->cmd) {
        co.db = 0; /* channels are not per database */
        co.linger_ms = 0; /* (un)subscribes: a join waits for them */
        n->sub = redis_conn_new(n->loop, &co, &CONN_H, n);
    }
    if (!n->cmd || (n->o.want_sub && !n->sub)) node_fail(n, "out of memory");
}

static void timer_closed(uv_handle_t *h)
{
    redis_node *n = h->data;
    free(n->user);
    free(n->pass);
    free(n);
}

redis_node *redis_node_new(uv_loop_t *loop, const redis_node_opts *o, const redis_node_handlers *h,
                           void *ud)
{
    redis_node *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->loop = loop;
    n->o = *o;
    n->h = *h;
    n->ud = ud;
    n->id = next_id++;
    if ((o->user && !(n->user = strdup(o->user))) || (o->pass && !(n->pass = strdup(o->pass)))) {
        free(n->user);
        free(n);
        return NULL;
    }
    n->o.user = n->o.pass = NULL;
    backoff_init(&n->bo, o->backoff_min_ms ? o->backoff_min_ms : 50,
                 o->backoff_max_ms ? o->backoff_max_ms : 2000);
    snprintf(n->reason, sizeof n->reason, "connecting");
    uv_timer_init(loop, &n->retry);
    n->retry.data = n;
    start(n);
    return n;
}

void redis_node_free(redis_node *n)
{
    if (!n || n->state == N_FREED) return;
    n->state = N_FREED;
    drop_conns(n);
    uv_close((uv_handle_t *)&n->retry, timer_closed);
}

int redis_node_up(const redis_node *n) { return n && n->state == N_UP; }
uint64_t redis_node_id(const redis_node *n) { return n->id; }
const redis_addr *redis_node_addr(const redis_node *n) { return &n->o.addr; }
const char *redis_node_reason(const redis_node *n) { return n->reason; }
redis_conn *redis_node_cmd(redis_node *n) { return n && n->state == N_UP ? n->cmd : NULL; }
redis_conn *redis_node_sub(redis_node *n) { return n && n->state == N_UP ? n->sub : NULL; }
const char *redis_node_run_id(const redis_node *n) { return n && n->state == N_UP ? n->run_id : ""; }
