/* redis_client: see redis_client.h. The nodes and the slot map are
 * redis_topo.c; this file routes requests (redirects, retries, NOSCRIPT),
 * asks for the map (refresh timer, discovery connection to a seed), turns
 * node events into the user's events, and says how ready it all is.
 * Why one file of ~720 lines: it is one concept, a request's way to the
 * node that owns its slot. The map refresh, the node events and the
 * readiness answers all act on the same pending requests (the retry list,
 * the requests pinned to a node, those parked until the map is known); a
 * split would export the request struct and the retry list to a second
 * file. The nodes and the map itself are already apart (redis_topo.c,
 * redis_node.c, redis_conn.c). */
#define _GNU_SOURCE
#include "redis_client.h"
#include "log.h"
#include "redis_topo.h"
#include "redis_tls.h"
#include "util.h"
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RETRY_TICK_MS 10

typedef struct creq {
    redis_client *c;
    char *cmd;
    size_t len;
    size_t run_off;          /* nonzero: where the run_id goes in cmd (redis_call.run_arg) */
    int slot, script;
    uint64_t pin;            /* only this node */
    int redirects, reloaded, tries;
    int asking;
    redis_addr ask;
    uint64_t deadline, due;
    redis_reply_fn cb;
    redis_sub_fn scb;
    void *ud;
    redis_push_kind skind;   /* a (un)subscribe */
    int nch;
    char **ch;
    size_t *chl;
    uint64_t node;           /* where it was sent last */
    struct creq *next;       /* retry list */
} creq;

struct redis_client {
    uv_loop_t *loop;
    redis_url url;
    redis_tls *tls;
    redis_client_handlers h;
    void *ud;
    char who[16];
    int nscripts;
    char **scripts;
    char (*shas)[41];
    int want_sub, want_run_id;
    uint64_t run_gen;        /* redis_client_run_gen */
    redis_topo topo;
    uv_timer_t refresh_t, retry_t;
    uint64_t refresh_due;
    int open;                /* timers not yet closed */
    int refreshing;
    redis_conn *disc;        /* discovery connection to a seed */
    unsigned disc_next;
    creq *retry;
    int freeing;
    char note[700];          /* standalone: what the server answered that we cannot use */
};

static void schedule_refresh(redis_client *c, uint32_t ms);
static void req_reply(redis_conn *conn, const redisReply *r, void *ud);
static void retry_tick(uv_timer_t *t);
static void retry_now(redis_client *c);

/* ---- helpers ---- */

static void sha1_hex(const char *src, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(src, strlen(src), md, &len, EVP_sha1(), NULL);
    for (unsigned i = 0; i < len && i < 20; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
    out[40] = 0;
}

/* ---- node events ---- */

static redis_client *client_of(const redis_tnode *tn)
{
    return tn->t->ud;
}

/* A Redis that evicts keys (maxmemory set, a policy other than
 * noeviction) breaks what chatd's keys hold, silently: an evicted client id
 * makes the resend of an acked message a new message (a second seq, a
 * second row), an evicted head is seeded again below what another node
 * broadcast (docs/operations.md). Said at each connection of a client that
 * keeps them (want_run_id: with a database). */
static void memory_info_cb(redis_conn *conn, const redisReply *r, void *ud)
{
    redis_tnode *tn = ud;
    (void)conn;
    if (!r) return;   /* closed: tn may be gone */
    size_t pl = 0;
    uint64_t max = 0;
    const char *pol = NULL;
    if (!redis_reply_info_evicts(r, &max, &pol, &pl)) return;
    char d[512];
    redis_topo_describe(tn, d, sizeof d);
    LOGW(client_of(tn)->who, "redis %s evicts keys (maxmemory %" PRIu64 ", maxmemory-policy %.*s): "
         "an evicted client id or seq breaks exactly-once and the seq order; set maxmemory-policy "
         "noeviction (docs/operations.md)", d, max, (int)(pl < 40 ? pl : 40), pol);
}

static void n_up(redis_node *n, void *ud)
{
    redis_tnode *tn = ud;
    redis_client *c = client_of(tn);
    char d[512];
    redis_topo_describe(tn, d, sizeof d);
    LOGI(c->who, "redis %s %s", d, tn->logged_down ? "reconnected" : "connected");
    tn->logged_down = 0;
    /* a run_id this node had not (the first one included): a new server
     * process may have lost what the last one held (redis_client_run_gen) */
    const char *rid = redis_node_run_id(n);
    if (rid[0] && strcmp(rid, tn->run_id) != 0) {
        snprintf(tn->run_id, sizeof tn->run_id, "%s", rid);
        c->run_gen++;
    }
    if (c->want_run_id)
        redis_conn_command(redis_node_cmd(n), 2, (const char *[]){"INFO", "memory"}, NULL,
                           memory_info_cb, tn);
    if (c->h.on_node) c->h.on_node(c->ud, tn->id, 1);
    if (c->retry && !c->freeing) retry_now(c); /* requests waiting for this node */
}

static void n_down(redis_node *n, void *ud, int was_up, const char *why)
{
    redis_tnode *tn = ud;
    redis_client *c = client_of(tn);
    char d[512];
    (void)n;
    redis_topo_describe(tn, d, sizeof d);
    if (was_up || !tn->logged_down)
        LOGW(c->who, "redis %s: %s (retrying with backoff)", d, why);
    else
        LOGD(c->who, "redis %s: %s", d, why);
    tn->logged_down = 1;
    if (was_up && c->h.on_node) c->h.on_node(c->ud, tn->id, 0);
    schedule_refresh(c, REDIS_REFRESH_FAST_MS);
}

static void n_push(redis_node *n, void *ud, const redis_push *p)
{
    redis_tnode *tn = ud;
    redis_client *c = client_of(tn);
    (void)n;
    if (c->h.on_push) c->h.on_push(c->ud, tn->id, p);
}

static const redis_node_handlers NODE_H = {n_up, n_down, n_push};

/* a node that was up leaves the map (it is freed next) */
static void t_gone(void *ud, redis_tnode *tn)
{
    redis_client *c = ud;
    char d[512];
    redis_topo_describe(tn, d, sizeof d);
    LOGI(c->who, "redis %s left the slot map", d);
    if (c->h.on_node) c->h.on_node(c->ud, tn->id, 0);
}

/* ---- requests ---- */

static void req_free(creq *q)
{
    for (int i = 0; i < q->nch; i++) free(q->ch[i]);
    free(q->ch);
    free(q->chl);
    free(q->cmd);
    free(q);
}

static void deliver(creq *q, const redisReply *r)
{
    if (q->skind) {
        if (q->scb) q->scb(q->ud, r ? q->node : 0, r);
    } else if (q->cb) {
        q->cb(q->ud, r);
    }
    req_free(q);
}

static redis_tnode *target(redis_client *c, creq *q)
{
    if (q->asking) return redis_topo_find(&c->topo, &q->ask);
    if (q->pin) return redis_topo_by_id(&c->topo, q->pin);
    if (q->slot >= 0) return c->topo.owner[q->slot];
    return redis_topo_any_up(&c->topo);
}

static int send_req(creq *q)
{
    redis_client *c = q->c;
    if (c->freeing) return -1;
    redis_tnode *cn = target(c, q);
    if (!cn || !redis_node_up(cn->n)) return -1;
    q->node = cn->id;
    if (q->skind) {
        redis_conn *s = redis_node_sub(cn->n);
        return redis_conn_subscribe(s, q->skind, q->nch, (const char *const *)q->ch, q->chl,
                                    req_reply, q);
    }
    redis_conn *conn = redis_node_cmd(cn->n);
    if (q->run_off) {
        const char *rid = redis_node_run_id(cn->n);
        if (!*rid) return -1;   /* "" or exactly REDIS_RUN_ID_LEN digits (redis_node) */
        memcpy(q->cmd + q->run_off, rid, REDIS_RUN_ID_LEN);
    }
    if (q->asking) {
        const char *a[1] = {"ASKING"};
        if (redis_conn_command(conn, 1, a, NULL, NULL, NULL) != 0) return -1;
    }
    return redis_conn_send(conn, q->cmd, q->len, req_reply, q);
}

/* resend after delay_ms (or when its node is up), within the window */
static void later(creq *q, uint32_t delay_ms, const redisReply *r)
{
    redis_client *c = q->c;
    uint64_t now = mono_ms();
    if (c->freeing || now + delay_ms > q->deadline) {
        deliver(q, r);
        return;
    }
    q->due = now + delay_ms;
    q->next = c->retry;
    c->retry = q;
    if (!uv_is_active((uv_handle_t *)&c->retry_t))
        uv_timer_start(&c->retry_t, retry_tick, RETRY_TICK_MS, RETRY_TICK_MS);
}

static void redirect(creq *q)
{
    if (send_req(q) != 0) later(q, RETRY_TICK_MS, NULL);
}

static void retry_tick(uv_timer_t *t)
{
    redis_client *c = t->data;
    creq *list = c->retry, *keep = NULL;
    c->retry = NULL;
    uint64_t now = mono_ms();
    while (list) {
        creq *q = list;
        list = q->next;
        q->next = NULL;
        if (c->freeing) {
            deliver(q, NULL);
            continue;
        }
        if (q->due > now) {
            q->next = keep;
            keep = q;
        } else if (send_req(q) != 0) {
            if (now >= q->deadline) {
                deliver(q, NULL);
            } else {
                q->due = now + RETRY_TICK_MS * 2;
                q->next = keep;
                keep = q;
            }
        }
    }
    if (c->freeing) {
        while (keep) { creq *q = keep; keep = q->next; deliver(q, NULL); }
        return;
    }
    /* requests queued meanwhile stay in c->retry */
    while (keep) {
        creq *q = keep;
        keep = q->next;
        q->next = c->retry;
        c->retry = q;
    }
    if (!c->retry) uv_timer_stop(&c->retry_t);
}

static void retry_now(redis_client *c)
{
    for (creq *q = c->retry; q; q = q->next) q->due = 0;
    if (c->retry) uv_timer_start(&c->retry_t, retry_tick, 0, RETRY_TICK_MS);
}

static void note_standalone(redis_client *c, const redis_conn *conn, const redisReply *r)
{
    char a[REDIS_HOST_MAX + 10];
    redis_addr_format(redis_conn_addr(conn), a, sizeof a);
    int first = !c->note[0];
    snprintf(c->note, sizeof c->note,
             "redis %s answers %.*s: it is a Redis Cluster node, use redis+cluster://%s", a,
             (int)(r->len > 60 ? 60 : r->len), r->str ? r->str : "", a);
    if (first) LOGE(c->who, "%s", c->note);
}

static void req_reply(redis_conn *conn, const redisReply *r, void *ud)
{
    creq *q = ud;
    redis_client *c = q->c;
    if (!r || c->freeing) {
        deliver(q, r);
        return;
    }
    redis_redirect rd;
    redis_err_kind k = redis_reply_error(r, &rd);
    switch (k) {
    case REDIS_E_MOVED:
    case REDIS_E_ASK:
        if (!c->url.cluster) {
            note_standalone(c, conn, r);
            break;
        }
        if (q->pin || (k == REDIS_E_ASK && q->skind)) break;
        if (++q->redirects > REDIS_MAX_REDIRECTS) {
            LOGW(c->who, "giving up after %d redirects: %.*s", REDIS_MAX_REDIRECTS, (int)r->len,
                 r->str);
            break;
        }
        if (strcmp(rd.addr.host, "?") == 0)
            snprintf(rd.addr.host, sizeof rd.addr.host, "%s", redis_conn_addr(conn)->host);
        {
            redis_tnode *cn = redis_topo_get(&c->topo, &rd.addr);
            if (k == REDIS_E_MOVED) {
                if (cn) c->topo.owner[rd.slot] = cn;
                q->asking = 0;
                schedule_refresh(c, 0);
            } else {
                q->asking = 1;
                q->ask = rd.addr;
            }
        }
        redirect(q);
        return;
    case REDIS_E_TRYAGAIN:
    case REDIS_E_CLUSTERDOWN:
    case REDIS_E_LOADING:
    case REDIS_E_MASTERDOWN:
    case REDIS_E_READONLY:
        if (q->pin) break;
        if (k != REDIS_E_TRYAGAIN && k != REDIS_E_LOADING) schedule_refresh(c, REDIS_REFRESH_FAST_MS);
        q->tries++;
        later(q, (uint32_t)(q->tries > 5 ? 500 : 15u << q->tries), r);
        return;
    case REDIS_E_NOSCRIPT:
        if (q->script < 0 || q->reloaded) break;
        q->reloaded = 1;
        LOGI(c->who, "script missing on the server (NOSCRIPT): loading it again");
        {
            const char *a[3] = {"SCRIPT", "LOAD", c->scripts[q->script]};
            if (redis_conn_command((redis_conn *)conn, 3, a, NULL, NULL, NULL) == 0 &&
                redis_conn_send((redis_conn *)conn, q->cmd, q->len, req_reply, q) == 0)
                return;
        }
        deliver(q, NULL);
        return;
    default:
        break;
    }
    deliver(q, r);
}

static creq *req_new(redis_client *c, redis_reply_fn cb, void *ud)
{
    creq *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->c = c;
    q->cb = cb;
    q->ud = ud;
    q->slot = -1;
    q->script = -1;
    q->deadline = mono_ms() + REDIS_RETRY_WINDOW_MS;
    return q;
}

/* The offset in a command formatted from n words of lengths l (RESP:
 * "*n\r\n", then "$len\r\n" word "\r\n" each) of the last
 * REDIS_RUN_ID_LEN bytes of word k; 0 when word k is shorter. */
static size_t run_offset(int n, const size_t *l, int k)
{
    if (l[k] < REDIS_RUN_ID_LEN) return 0;
    char b[32];
    size_t off = (size_t)snprintf(b, sizeof b, "*%d\r\n", n);
    for (int i = 0; i <= k; i++) off += (size_t)snprintf(b, sizeof b, "$%zu\r\n", l[i]) + (i < k ? l[i] + 2 : 0);
    return off + l[k] - REDIS_RUN_ID_LEN;
}

int redis_client_call(redis_client *c, const redis_call *how, int argc, const char **argv,
                      const size_t *lens, redis_reply_fn cb, void *ud)
{
    if (!c || c->freeing || argc < 1) return -1;
    int slot = how ? how->slot : -1, script = how ? how->script : -1;
    if (slot >= REDIS_SLOTS || script >= c->nscripts) return -1;
    creq *q = req_new(c, cb, ud);
    if (!q) return -1;
    q->slot = slot;
    q->pin = how ? how->node : 0;
    q->script = script;
    int rc;
    if (script >= 0) {
        /* EVALSHA sha argv...: on the stack up to 32 arguments */
        const char *a_st[32];
        size_t l_st[32];
        int heap = argc + 2 > 32;
        const char **a = heap ? malloc((size_t)(argc + 2) * sizeof *a) : a_st;
        size_t *l = heap ? malloc((size_t)(argc + 2) * sizeof *l) : l_st;
        if (!a || !l) rc = -1;
        else {
            a[0] = "EVALSHA";
            l[0] = 7;
            a[1] = c->shas[script];
            l[1] = 40;
            for (int i = 0; i < argc; i++) {
                a[i + 2] = argv[i];
                l[i + 2] = lens ? lens[i] : strlen(argv[i]);
            }
            char *cmd = NULL;
            rc = redisFormatCommandArgv(&cmd, argc + 2, a, l);
            q->cmd = cmd;
            if (how->run_arg > 0 && how->run_arg < argc) {
                q->run_off = run_offset(argc + 2, l, how->run_arg + 2);
                if (!q->run_off) rc = -1;
            }
        }
        if (heap) {
            free(a);
            free(l);
        }
    } else {
        char *cmd = NULL;
        rc = redisFormatCommandArgv(&cmd, argc, argv, lens);
        q->cmd = cmd;
        if (rc >= 0 && how && how->run_arg > 0 && how->run_arg < argc) {
            size_t *l = malloc((size_t)argc * sizeof *l);
            for (int i = 0; l && i < argc; i++) l[i] = lens ? lens[i] : strlen(argv[i]);
            q->run_off = l ? run_offset(argc, l, how->run_arg) : 0;
            free(l);
            if (!q->run_off) rc = -1;
        }
    }
    if (rc < 0 || !q->cmd) {
        req_free(q);
        return -1;
    }
    q->len = (size_t)rc;
    if (send_req(q) != 0) {
        req_free(q);
        return -1;
    }
    return 0;
}

static creq *sub_req(redis_client *c, redis_push_kind kind, int n, const char *const *ch,
                     const size_t *lens, redis_sub_fn cb, void *ud)
{
    if (!c || c->freeing || n < 1 || !c->want_sub) return NULL;
    creq *q = req_new(c, NULL, ud);
    if (!q) return NULL;
    q->scb = cb;
    q->skind = kind;
    q->ch = calloc((size_t)n, sizeof *q->ch);
    q->chl = calloc((size_t)n, sizeof *q->chl);
    if (!q->ch || !q->chl) {
        req_free(q);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        size_t l = lens ? lens[i] : strlen(ch[i]);
        q->ch[i] = malloc(l + 1);
        if (!q->ch[i]) {
            req_free(q);
            return NULL;
        }
        memcpy(q->ch[i], ch[i], l);
        q->ch[i][l] = 0;
        q->chl[i] = l;
        q->nch++;
    }
    return q;
}

int redis_client_subscribe(redis_client *c, int slot, int n, const char *const *ch,
                           const size_t *lens, redis_sub_fn cb, void *ud)
{
    if (!c || slot < 0 || slot >= REDIS_SLOTS) return -1;
    creq *q = sub_req(c, c->url.cluster ? REDIS_PUSH_SSUBSCRIBE : REDIS_PUSH_SUBSCRIBE, n, ch, lens,
                      cb, ud);
    if (!q) return -1;
    q->slot = slot;
    if (send_req(q) != 0) {
        req_free(q);
        return -1;
    }
    return 0;
}

int redis_client_unsubscribe(redis_client *c, uint64_t node, int n, const char *const *ch,
                             const size_t *lens, redis_sub_fn cb, void *ud)
{
    if (!c || !node) return -1;
    creq *q = sub_req(c, c->url.cluster ? REDIS_PUSH_SUNSUBSCRIBE : REDIS_PUSH_UNSUBSCRIBE, n, ch,
                      lens, cb, ud);
    if (!q) return -1;
    q->pin = node;
    if (send_req(q) != 0) {
        req_free(q);
        return -1;
    }
    return 0;
}

/* ---- the slot map ---- */

static void map_apply(redis_client *c, const redisReply *r)
{
    char before[300];
    snprintf(before, sizeof before, "%s", c->topo.map_err);
    int changed = redis_topo_apply(&c->topo, r);
    if (changed < 0) {
        if (strcmp(before, c->topo.map_err) != 0)
            LOGW(c->who, "redis cluster map: %s", c->topo.map_err);
        return;
    }
    if (changed) {
        LOGI(c->who, "redis cluster map: %d shard(s)", c->topo.nshards);
        if (c->h.on_map && !c->freeing) c->h.on_map(c->ud);
    }
}

static uint32_t next_refresh_ms(redis_client *c)
{
    char why[8];
    return redis_client_health(c, why, sizeof why) ? REDIS_REFRESH_MS : REDIS_REFRESH_FAST_MS;
}

static void shards_reply(redis_conn *conn, const redisReply *r, void *ud)
{
    redis_client *c = ud;
    c->refreshing = 0;
    if (c->freeing) return;
    if (conn == c->disc) { /* a seed's connection serves one question */
        c->disc = NULL;
        redis_conn_close(conn);
    }
    if (r) map_apply(c, r);
    schedule_refresh(c, r ? next_refresh_ms(c) : REDIS_REFRESH_FAST_MS);
}

static void disc_up(redis_conn *conn, void *ud)
{
    redis_client *c = ud;
    const char *a[2] = {"CLUSTER", "SHARDS"};
    if (redis_conn_command(conn, 2, a, NULL, shards_reply, c) != 0) {
        c->disc = NULL;
        redis_conn_close(conn);
        c->refreshing = 0;
        schedule_refresh(c, REDIS_REFRESH_FAST_MS);
    }
}

static void disc_down(redis_conn *conn, void *ud, const char *why)
{
    redis_client *c = ud;
    char a[REDIS_HOST_MAX + 10];
    redis_addr_format(redis_conn_addr(conn), a, sizeof a);
    snprintf(c->topo.map_err, sizeof c->topo.map_err, "seed %s: %s", a, why);
    LOGD(c->who, "redis cluster map: %s", c->topo.map_err);
    c->disc = NULL;
    /* shards_reply (NULL) resets refreshing when a command was pending;
     * without one, reset it here */
    c->refreshing = 0;
    schedule_refresh(c, REDIS_REFRESH_FAST_MS);
}

static const redis_conn_handlers DISC_H = {disc_up, disc_down, NULL};

static void refresh_cb(uv_timer_t *t)
{
    redis_client *c = t->data;
    if (c->freeing || !c->url.cluster || c->refreshing) return;
    redis_tnode *cn = redis_topo_any_up(&c->topo);
    if (!cn) /* a node up but not in the map yet (redirect target) */
        for (redis_tnode *x = c->topo.nodes; x && !cn; x = x->next)
            if (redis_node_up(x->n)) cn = x;
    c->refreshing = 1;
    if (cn) {
        const char *a[2] = {"CLUSTER", "SHARDS"};
        if (redis_conn_command(redis_node_cmd(cn->n), 2, a, NULL, shards_reply, c) == 0) return;
        c->refreshing = 0;
        schedule_refresh(c, REDIS_REFRESH_FAST_MS);
        return;
    }
    /* nothing is up: ask a seed (or a known master) on a connection of its own */
    int nknown = 0;
    for (redis_tnode *x = c->topo.nodes; x; x = x->next) nknown++;
    unsigned i = c->disc_next++ % (unsigned)(c->url.nseeds + nknown);
    redis_addr a;
    if ((int)i < c->url.nseeds) {
        a = c->url.seeds[i];
    } else {
        redis_tnode *x = c->topo.nodes;
        for (unsigned k = (unsigned)c->url.nseeds; x && k < i; k++) x = x->next;
        a = x ? *redis_node_addr(x->n) : c->url.seeds[0];
    }
    redis_conn_opts co = {.addr = a, .user = c->url.user, .pass = c->url.pass, .tls = c->tls};
    c->disc = redis_conn_new(c->loop, &co, &DISC_H, c);
    if (!c->disc) {
        c->refreshing = 0;
        schedule_refresh(c, REDIS_REFRESH_FAST_MS);
    }
}

static void schedule_refresh(redis_client *c, uint32_t ms)
{
    if (!c->url.cluster || c->freeing) return;
    uint64_t due = mono_ms() + ms;
    if (uv_is_active((uv_handle_t *)&c->refresh_t) && c->refresh_due <= due) return;
    c->refresh_due = due;
    uv_timer_start(&c->refresh_t, refresh_cb, ms, 0);
}

void redis_client_refresh(redis_client *c)
{
    if (c) schedule_refresh(c, 0);
}

/* ---- readiness ---- */

int redis_client_is_cluster(const redis_client *c) { return c && c->url.cluster; }

int redis_client_db(const redis_client *c) { return c && !c->url.cluster ? c->url.db : 0; }

int redis_client_ready(const redis_client *c)
{
    if (!c || c->freeing || !c->topo.map_known) return 0;
    for (redis_tnode *tn = c->topo.nodes; tn; tn = tn->next)
        if (tn->in_map && redis_node_up(tn->n)) return 1;
    return 0;
}

int redis_client_slot_ready(const redis_client *c, int slot)
{
    if (!c || c->freeing || slot < 0 || slot >= REDIS_SLOTS) return 0;
    return c->topo.owner[slot] && redis_node_up(c->topo.owner[slot]->n);
}

uint64_t redis_client_run_gen(const redis_client *c) { return c ? c->run_gen : 0; }

uint64_t redis_client_slot_node(const redis_client *c, int slot)
{
    if (!c || c->freeing || slot < 0 || slot >= REDIS_SLOTS || !c->topo.owner[slot]) return 0;
    return c->topo.owner[slot]->id;
}

int redis_client_health(const redis_client *c, char *why, size_t n)
{
    if (!c || c->freeing) {
        snprintf(why, n, "redis: shutting down");
        return 0;
    }
    if (!redis_topo_health(&c->topo, c->url.seeds, c->url.nseeds, why, n)) return 0;
    if (c->note[0]) {
        snprintf(why, n, "%s", c->note);
        return 0;
    }
    return 1;
}

void redis_client_masters(const redis_client *c,
                          void (*fn)(void *ud, uint64_t node, const uint16_t (*ranges)[2],
                                     int nranges),
                          void *ud)
{
    if (!c || c->freeing) return;
    /* fn may queue commands; it never frees the client */
    for (redis_tnode *tn = c->topo.nodes; tn; tn = tn->next)
        if (tn->in_map && redis_node_up(tn->n))
            fn(ud, tn->id, (const uint16_t (*)[2])tn->ranges, tn->nranges);
}

/* ---- lifetime ---- */

static void client_release(redis_client *c);

static void timer_closed(uv_handle_t *h)
{
    redis_client *c = h->data;
    if (--c->open > 0) return;
    client_release(c);
}

static void client_release(redis_client *c)
{
    for (int i = 0; i < c->nscripts; i++) free(c->scripts[i]);
    free(c->scripts);
    free(c->shas);
    redis_tls_free(c->tls);
    free(c);
}

redis_client *redis_client_new(uv_loop_t *loop, const redis_client_opts *o,
                               const redis_client_handlers *h, void *ud, char *err, size_t errlen)
{
    redis_client *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (redis_url_parse(o->url, &c->url, err, errlen) != 0) {
        free(c);
        return NULL;
    }
    if (c->url.tls && !(c->tls = redis_tls_new(&c->url, err, errlen))) {
        free(c);
        return NULL;
    }
    c->loop = loop;
    c->h = *h;
    c->ud = ud;
    c->want_sub = o->want_sub;
    c->want_run_id = o->want_run_id;
    snprintf(c->who, sizeof c->who, "%s", o->who ? o->who : "redis");
    if (o->nscripts > 0) {
        c->scripts = calloc((size_t)o->nscripts, sizeof *c->scripts);
        c->shas = calloc((size_t)o->nscripts, sizeof *c->shas);
        for (int i = 0; c->scripts && c->shas && i < o->nscripts; i++) {
            if (!(c->scripts[i] = strdup(o->scripts[i]))) break;
            sha1_hex(o->scripts[i], c->shas[i]);
            c->nscripts++;
        }
    }
    redis_node_opts tmpl = {
        .user = c->url.user,
        .pass = c->url.pass,
        .db = c->url.cluster ? 0 : c->url.db,
        .tls = c->tls,
        .want_sub = c->want_sub,
        .want_run_id = c->want_run_id,
        .scripts = (const char *const *)c->scripts,
        .shas = (const char (*)[41])c->shas,
        .nscripts = c->nscripts,
        .linger_ms = o->linger_ms,
    };
    if (c->nscripts != (o->nscripts > 0 ? o->nscripts : 0) ||
        redis_topo_init(&c->topo, loop, &tmpl, &NODE_H, c->url.cluster, c->url.tls) != 0) {
        snprintf(err, errlen, "out of memory");
        client_release(c);
        return NULL;
    }
    c->topo.on_gone = t_gone;
    c->topo.ud = c;
    uv_timer_init(loop, &c->refresh_t);
    uv_timer_init(loop, &c->retry_t);
    c->refresh_t.data = c->retry_t.data = c;
    c->open = 2;
    if (c->url.cluster) {
        schedule_refresh(c, 0);
    } else if (!redis_topo_standalone(&c->topo, &c->url.seeds[0])) {
        snprintf(err, errlen, "out of memory");
        redis_client_free(c);
        return NULL;
    }
    return c;
}

void redis_client_free(redis_client *c)
{
    if (!c || c->freeing) return;
    c->freeing = 1;
    while (c->retry) {
        creq *q = c->retry;
        c->retry = q->next;
        deliver(q, NULL);
    }
    if (c->disc) {
        redis_conn *d = c->disc;
        c->disc = NULL;
        redis_conn_close(d);
    }
    redis_topo_free(&c->topo);
    uv_close((uv_handle_t *)&c->refresh_t, timer_closed);
    uv_close((uv_handle_t *)&c->retry_t, timer_closed);
}
