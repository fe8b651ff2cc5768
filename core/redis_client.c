/* redis_client: see redis_client.h. */
#define _GNU_SOURCE
#include "redis_client.h"
#include "log.h"
#include "redis_node.h"
#include "redis_slot.h"
#include "redis_tls.h"
#include "util.h"
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RETRY_TICK_MS 10

typedef struct cnode {
    redis_client *c;
    redis_node *n;
    uint64_t id;
    int in_map, keep;        /* a master of the current map / of the one being applied */
    int shard;               /* 1-based position in the map (messages) */
    uint16_t (*ranges)[2];
    int nranges;
    int logged_down;
    struct cnode *next;
} cnode;

typedef struct creq {
    redis_client *c;
    char *cmd;
    size_t len;
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
    int want_sub;
    cnode *nodes;
    cnode **owner;           /* REDIS_SLOTS entries */
    int map_known, nshards;
    uv_timer_t refresh_t, retry_t;
    uint64_t refresh_due;
    int open;                /* timers not yet closed */
    int refreshing;
    redis_conn *disc;        /* discovery connection to a seed */
    unsigned disc_next, rr;
    char map_err[300];
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

static int addr_eq(const redis_addr *a, const redis_addr *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

/* "127.0.0.1:7001 (shard 2 of 3, slots 10923-16383)" */
static void describe(const cnode *cn, char *out, size_t n)
{
    char a[REDIS_HOST_MAX + 10];
    redis_addr_format(redis_node_addr(cn->n), a, sizeof a);
    if (!cn->c->url.cluster || !cn->in_map || !cn->nranges) {
        snprintf(out, n, "%s", a);
        return;
    }
    char r[128] = "";
    size_t o = 0;
    for (int i = 0; i < cn->nranges && o + 24 < sizeof r; i++) {
        if (i == 3) { o += (size_t)snprintf(r + o, sizeof r - o, ",..."); break; }
        if (cn->ranges[i][0] == cn->ranges[i][1])
            o += (size_t)snprintf(r + o, sizeof r - o, "%s%u", i ? "," : "", cn->ranges[i][0]);
        else
            o += (size_t)snprintf(r + o, sizeof r - o, "%s%u-%u", i ? "," : "", cn->ranges[i][0],
                                  cn->ranges[i][1]);
    }
    snprintf(out, n, "%s (shard %d of %d, slots %s)", a, cn->shard, cn->c->nshards, r);
}

static cnode *node_by_id(const redis_client *c, uint64_t id)
{
    for (cnode *cn = c->nodes; cn; cn = cn->next)
        if (cn->id == id) return cn;
    return NULL;
}

static cnode *node_find(const redis_client *c, const redis_addr *a)
{
    for (cnode *cn = c->nodes; cn; cn = cn->next)
        if (addr_eq(redis_node_addr(cn->n), a)) return cn;
    return NULL;
}

/* ---- node events ---- */

static void n_up(redis_node *n, void *ud)
{
    cnode *cn = ud;
    redis_client *c = cn->c;
    char d[512];
    describe(cn, d, sizeof d);
    LOGI(c->who, "redis %s %s", d, cn->logged_down ? "reconnected" : "connected");
    cn->logged_down = 0;
    if (c->h.on_node) c->h.on_node(c->ud, cn->id, 1);
    if (c->retry && !c->freeing) retry_now(c); /* requests waiting for this node */
}

static void n_down(redis_node *n, void *ud, int was_up, const char *why)
{
    cnode *cn = ud;
    redis_client *c = cn->c;
    char d[512];
    describe(cn, d, sizeof d);
    if (was_up || !cn->logged_down)
        LOGW(c->who, "redis %s: %s (retrying with backoff)", d, why);
    else
        LOGD(c->who, "redis %s: %s", d, why);
    cn->logged_down = 1;
    if (was_up && c->h.on_node) c->h.on_node(c->ud, cn->id, 0);
    schedule_refresh(c, REDIS_REFRESH_FAST_MS);
}

static void n_push(redis_node *n, void *ud, const redis_push *p)
{
    cnode *cn = ud;
    redis_client *c = cn->c;
    if (c->h.on_push) c->h.on_push(c->ud, cn->id, p);
}

static const redis_node_handlers NODE_H = {n_up, n_down, n_push};

static cnode *node_create(redis_client *c, const redis_addr *a)
{
    cnode *cn = calloc(1, sizeof *cn);
    if (!cn) return NULL;
    cn->c = c;
    redis_node_opts o = {
        .addr = *a,
        .user = c->url.user,
        .pass = c->url.pass,
        .db = c->url.cluster ? 0 : c->url.db,
        .tls = c->tls,
        .want_sub = c->want_sub,
        .scripts = (const char *const *)c->scripts,
        .shas = (const char (*)[41])c->shas,
        .nscripts = c->nscripts,
    };
    cn->n = redis_node_new(c->loop, &o, &NODE_H, cn);
    if (!cn->n) {
        free(cn);
        return NULL;
    }
    cn->id = redis_node_id(cn->n);
    cn->next = c->nodes;
    c->nodes = cn;
    return cn;
}

static cnode *node_get(redis_client *c, const redis_addr *a)
{
    cnode *cn = node_find(c, a);
    return cn ? cn : node_create(c, a);
}

/* Unlinks and frees cn; the consumer hears that it went down first. */
static void node_destroy(redis_client *c, cnode *cn)
{
    cnode **pp = &c->nodes;
    while (*pp && *pp != cn) pp = &(*pp)->next;
    if (*pp) *pp = cn->next;
    for (int s = 0; s < REDIS_SLOTS; s++)
        if (c->owner[s] == cn) c->owner[s] = NULL;
    int was_up = redis_node_up(cn->n);
    if (was_up && !c->freeing && c->h.on_node) c->h.on_node(c->ud, cn->id, 0);
    redis_node_free(cn->n); /* pending callbacks: NULL */
    free(cn->ranges);
    free(cn);
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

static cnode *any_up(redis_client *c)
{
    int n = 0;
    for (cnode *cn = c->nodes; cn; cn = cn->next) n++;
    if (!n) return NULL;
    unsigned start = c->rr++ % (unsigned)n, i = 0;
    cnode *first = NULL;
    for (cnode *cn = c->nodes; cn; cn = cn->next, i++) {
        if (!cn->in_map || !redis_node_up(cn->n)) continue;
        if (i >= start) return cn;
        if (!first) first = cn;
    }
    return first;
}

static cnode *target(redis_client *c, creq *q)
{
    if (q->asking) return node_find(c, &q->ask);
    if (q->pin) return node_by_id(c, q->pin);
    if (q->slot >= 0) return c->owner[q->slot];
    return any_up(c);
}

static int send_req(creq *q)
{
    redis_client *c = q->c;
    if (c->freeing) return -1;
    cnode *cn = target(c, q);
    if (!cn || !redis_node_up(cn->n)) return -1;
    q->node = cn->id;
    if (q->skind) {
        redis_conn *s = redis_node_sub(cn->n);
        return redis_conn_subscribe(s, q->skind, q->nch, (const char *const *)q->ch, q->chl,
                                    req_reply, q);
    }
    redis_conn *conn = redis_node_cmd(cn->n);
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
            cnode *cn = node_get(c, &rd.addr);
            if (k == REDIS_E_MOVED) {
                if (cn) c->owner[rd.slot] = cn;
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
        const char **a = malloc((size_t)(argc + 2) * sizeof *a);
        size_t *l = malloc((size_t)(argc + 2) * sizeof *l);
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
        }
        free(a);
        free(l);
    } else {
        char *cmd = NULL;
        rc = redisFormatCommandArgv(&cmd, argc, argv, lens);
        q->cmd = cmd;
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
    redis_shards sh;
    char err[256];
    if (redis_reply_shards(r, c->url.tls, &sh, err, sizeof err) != 0) {
        if (strcmp(err, c->map_err) != 0) LOGW(c->who, "redis cluster map: %s", err);
        snprintf(c->map_err, sizeof c->map_err, "%s", err);
        return;
    }
    cnode **own = calloc(REDIS_SLOTS, sizeof *own);
    if (!own) {
        redis_shards_free(&sh);
        return;
    }
    for (cnode *cn = c->nodes; cn; cn = cn->next) cn->keep = 0;
    for (int i = 0; i < sh.n; i++) {
        cnode *cn = node_get(c, &sh.s[i].master);
        if (!cn) continue;
        cn->keep = 1;
        cn->shard = i + 1;
        free(cn->ranges);
        cn->ranges = sh.s[i].ranges;
        cn->nranges = sh.s[i].nranges;
        sh.s[i].ranges = NULL;
        for (int k = 0; k < cn->nranges; k++)
            for (int s = cn->ranges[k][0]; s <= cn->ranges[k][1]; s++) own[s] = cn;
    }
    c->nshards = sh.n;
    redis_shards_free(&sh);
    int changed = !c->map_known || memcmp(own, c->owner, REDIS_SLOTS * sizeof *own) != 0;
    memcpy(c->owner, own, REDIS_SLOTS * sizeof *own);
    free(own);
    c->map_known = 1;
    c->map_err[0] = 0;
    for (cnode *cn = c->nodes, *next; cn; cn = next) {
        next = cn->next;
        cn->in_map = cn->keep;
        if (!cn->keep) {
            char d[512];
            describe(cn, d, sizeof d);
            LOGI(c->who, "redis %s left the slot map", d);
            node_destroy(c, cn);
        }
    }
    if (changed) {
        LOGI(c->who, "redis cluster map: %d shard(s)", c->nshards);
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
    snprintf(c->map_err, sizeof c->map_err, "seed %s: %s", a, why);
    LOGD(c->who, "redis cluster map: %s", c->map_err);
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
    cnode *cn = any_up(c);
    if (!cn) /* a node up but not in the map yet (redirect target) */
        for (cnode *x = c->nodes; x && !cn; x = x->next)
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
    for (cnode *x = c->nodes; x; x = x->next) nknown++;
    unsigned i = c->disc_next++ % (unsigned)(c->url.nseeds + nknown);
    redis_addr a;
    if ((int)i < c->url.nseeds) {
        a = c->url.seeds[i];
    } else {
        cnode *x = c->nodes;
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

int redis_client_ready(const redis_client *c)
{
    if (!c || c->freeing || !c->map_known) return 0;
    for (cnode *cn = c->nodes; cn; cn = cn->next)
        if (cn->in_map && redis_node_up(cn->n)) return 1;
    return 0;
}

int redis_client_slot_ready(const redis_client *c, int slot)
{
    if (!c || c->freeing || slot < 0 || slot >= REDIS_SLOTS) return 0;
    return c->owner[slot] && redis_node_up(c->owner[slot]->n);
}

uint64_t redis_client_slot_node(const redis_client *c, int slot)
{
    if (!c || slot < 0 || slot >= REDIS_SLOTS || !c->owner[slot]) return 0;
    return c->owner[slot]->id;
}

int redis_client_node_up(const redis_client *c, uint64_t node)
{
    cnode *cn = c ? node_by_id(c, node) : NULL;
    return cn && redis_node_up(cn->n);
}

int redis_client_health(const redis_client *c, char *why, size_t n)
{
    if (!c || c->freeing) {
        snprintf(why, n, "redis: shutting down");
        return 0;
    }
    if (!c->map_known) {
        char seeds[200] = "";
        size_t o = 0;
        for (int i = 0; i < c->url.nseeds && o + 2 < sizeof seeds; i++) {
            char a[REDIS_HOST_MAX + 10];
            redis_addr_format(&c->url.seeds[i], a, sizeof a);
            o += (size_t)snprintf(seeds + o, sizeof seeds - o, "%s%s", i ? "," : "", a);
        }
        snprintf(why, n, "redis cluster %s: no slot map yet%s%s", seeds, c->map_err[0] ? ": " : "",
                 c->map_err);
        return 0;
    }
    /* every shard that is down, in map order, as far as the buffer goes */
    size_t o = 0;
    int nbad = 0;
    for (int shard = 1; shard <= c->nshards || (!c->url.cluster && shard == 1); shard++) {
        for (const cnode *cn = c->nodes; cn; cn = cn->next) {
            if (!cn->in_map || cn->shard != shard || redis_node_up(cn->n)) continue;
            char d[512];
            describe(cn, d, sizeof d);
            if (o < n)
                o += (size_t)snprintf(why + o, n - o, "%s%s %s unreachable: %s",
                                      nbad ? "; " : "", nbad ? "" : "redis", d,
                                      redis_node_reason(cn->n));
            nbad++;
        }
    }
    if (nbad) return 0;
    if (c->url.cluster) {
        int lo = -1;
        for (int s = 0; s < REDIS_SLOTS; s++) {
            if (!c->owner[s] && lo < 0) lo = s;
            if (c->owner[s] && lo >= 0) {
                snprintf(why, n, "redis cluster: slots %d-%d have no master", lo, s - 1);
                return 0;
            }
        }
        if (lo >= 0) {
            snprintf(why, n, "redis cluster: slots %d-%d have no master", lo, REDIS_SLOTS - 1);
            return 0;
        }
    } else if (c->note[0]) {
        snprintf(why, n, "%s", c->note);
        return 0;
    }
    snprintf(why, n, "ok");
    return 1;
}

void redis_client_masters(const redis_client *c,
                          void (*fn)(void *ud, uint64_t node, const uint16_t (*ranges)[2],
                                     int nranges),
                          void *ud)
{
    if (!c || c->freeing) return;
    /* fn may queue commands; it never frees the client */
    for (cnode *cn = c->nodes; cn; cn = cn->next)
        if (cn->in_map && redis_node_up(cn->n))
            fn(ud, cn->id, (const uint16_t (*)[2])cn->ranges, cn->nranges);
}

/* ---- lifetime ---- */

static void timer_closed(uv_handle_t *h)
{
    redis_client *c = h->data;
    if (--c->open > 0) return;
    for (int i = 0; i < c->nscripts; i++) free(c->scripts[i]);
    free(c->scripts);
    free(c->shas);
    free(c->owner);
    redis_tls_free(c->tls);
    free(c);
}

redis_client *redis_client_new(uv_loop_t *loop, const redis_client_opts *o,
                               const redis_client_handlers *h, void *ud, char *err, size_t errlen)
{
    redis_client *c = calloc(1, sizeof *c);
    if (!c || !(c->owner = calloc(REDIS_SLOTS, sizeof *c->owner))) {
        free(c);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (redis_url_parse(o->url, &c->url, err, errlen) != 0) {
        free(c->owner);
        free(c);
        return NULL;
    }
    if (c->url.tls && !(c->tls = redis_tls_new(&c->url, err, errlen))) {
        free(c->owner);
        free(c);
        return NULL;
    }
    c->loop = loop;
    c->h = *h;
    c->ud = ud;
    c->want_sub = o->want_sub;
    snprintf(c->who, sizeof c->who, "%s", o->who ? o->who : "redis");
    if (o->nscripts > 0) {
        c->scripts = calloc((size_t)o->nscripts, sizeof *c->scripts);
        c->shas = calloc((size_t)o->nscripts, sizeof *c->shas);
        for (int i = 0; c->scripts && c->shas && i < o->nscripts; i++) {
            if (!(c->scripts[i] = strdup(o->scripts[i]))) break;
            sha1_hex(o->scripts[i], c->shas[i]);
            c->nscripts++;
        }
        if (c->nscripts != o->nscripts) {
            snprintf(err, errlen, "out of memory");
            for (int i = 0; i < c->nscripts; i++) free(c->scripts[i]);
            free(c->scripts);
            free(c->shas);
            redis_tls_free(c->tls);
            free(c->owner);
            free(c);
            return NULL;
        }
    }
    uv_timer_init(loop, &c->refresh_t);
    uv_timer_init(loop, &c->retry_t);
    c->refresh_t.data = c->retry_t.data = c;
    c->open = 2;
    if (c->url.cluster) {
        schedule_refresh(c, 0);
    } else {
        cnode *cn = node_create(c, &c->url.seeds[0]);
        if (!cn) {
            snprintf(err, errlen, "out of memory");
            redis_client_free(c);
            return NULL;
        }
        cn->in_map = 1;
        cn->shard = 1;
        cn->ranges = calloc(1, sizeof *cn->ranges);
        if (cn->ranges) {
            cn->ranges[0][0] = 0;
            cn->ranges[0][1] = REDIS_SLOTS - 1;
            cn->nranges = 1;
        }
        c->nshards = 1;
        for (int s = 0; s < REDIS_SLOTS; s++) c->owner[s] = cn;
        c->map_known = 1;
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
    while (c->nodes) node_destroy(c, c->nodes);
    uv_close((uv_handle_t *)&c->refresh_t, timer_closed);
    uv_close((uv_handle_t *)&c->retry_t, timer_closed);
}
