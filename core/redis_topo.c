/* redis_topo: see redis_topo.h. */
#define _GNU_SOURCE
#include "redis_topo.h"
#include "log.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int addr_eq(const redis_addr *a, const redis_addr *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

int redis_topo_init(redis_topo *t, uv_loop_t *loop, const redis_node_opts *tmpl,
                    const redis_node_handlers *h, int cluster, int tls)
{
    memset(t, 0, sizeof *t);
    t->owner = calloc(REDIS_SLOTS, sizeof *t->owner);
    if (!t->owner) return -1;
    t->loop = loop;
    t->tmpl = *tmpl;
    t->h = *h;
    t->cluster = cluster;
    t->tls = tls;
    return 0;
}

redis_tnode *redis_topo_by_id(const redis_topo *t, uint64_t id)
{
    for (redis_tnode *tn = t->nodes; tn; tn = tn->next)
        if (tn->id == id) return tn;
    return NULL;
}

redis_tnode *redis_topo_find(const redis_topo *t, const redis_addr *a)
{
    for (redis_tnode *tn = t->nodes; tn; tn = tn->next)
        if (addr_eq(redis_node_addr(tn->n), a)) return tn;
    return NULL;
}

static redis_tnode *node_create(redis_topo *t, const redis_addr *a)
{
    redis_tnode *tn = calloc(1, sizeof *tn);
    if (!tn) return NULL;
    tn->t = t;
    redis_node_opts o = t->tmpl;
    o.addr = *a;
    tn->n = redis_node_new(t->loop, &o, &t->h, tn);
    if (!tn->n) {
        free(tn);
        return NULL;
    }
    tn->id = redis_node_id(tn->n);
    tn->next = t->nodes;
    t->nodes = tn;
    return tn;
}

redis_tnode *redis_topo_get(redis_topo *t, const redis_addr *a)
{
    redis_tnode *tn = redis_topo_find(t, a);
    return tn ? tn : node_create(t, a);
}

/* Unlinks and frees tn; its user hears that it is gone first. */
static void node_destroy(redis_topo *t, redis_tnode *tn)
{
    redis_tnode **pp = &t->nodes;
    while (*pp && *pp != tn) pp = &(*pp)->next;
    if (*pp) *pp = tn->next;
    for (int s = 0; s < REDIS_SLOTS; s++)
        if (t->owner[s] == tn) t->owner[s] = NULL;
    if (redis_node_up(tn->n) && !t->freeing && t->on_gone) t->on_gone(t->ud, tn);
    redis_node_free(tn->n); /* pending callbacks: NULL */
    free(tn->ranges);
    free(tn);
}

void redis_topo_free(redis_topo *t)
{
    t->freeing = 1;
    while (t->nodes) node_destroy(t, t->nodes);
    free(t->owner);
    t->owner = NULL;
}

redis_tnode *redis_topo_standalone(redis_topo *t, const redis_addr *a)
{
    redis_tnode *tn = node_create(t, a);
    if (!tn) return NULL;
    tn->in_map = 1;
    tn->shard = 1;
    tn->ranges = calloc(1, sizeof *tn->ranges);
    if (tn->ranges) {
        tn->ranges[0][0] = 0;
        tn->ranges[0][1] = REDIS_SLOTS - 1;
        tn->nranges = 1;
    }
    t->nshards = 1;
    for (int s = 0; s < REDIS_SLOTS; s++) t->owner[s] = tn;
    t->map_known = 1;
    return tn;
}

redis_tnode *redis_topo_any_up(redis_topo *t)
{
    int n = 0;
    for (redis_tnode *tn = t->nodes; tn; tn = tn->next) n++;
    if (!n) return NULL;
    unsigned start = t->rr++ % (unsigned)n, i = 0;
    redis_tnode *first = NULL;
    for (redis_tnode *tn = t->nodes; tn; tn = tn->next, i++) {
        if (!tn->in_map || !redis_node_up(tn->n)) continue;
        if (i >= start) return tn;
        if (!first) first = tn;
    }
    return first;
}

int redis_topo_apply(redis_topo *t, const redisReply *r)
{
    redis_shards sh;
    char err[256];
    if (redis_reply_shards(r, t->tls, &sh, err, sizeof err) != 0) {
        snprintf(t->map_err, sizeof t->map_err, "%s", err);
        return -1;
    }
    redis_tnode **own = calloc(REDIS_SLOTS, sizeof *own);
    if (!own) {
        redis_shards_free(&sh);
        snprintf(t->map_err, sizeof t->map_err, "out of memory");
        return -1;
    }
    for (redis_tnode *tn = t->nodes; tn; tn = tn->next) tn->keep = 0;
    for (int i = 0; i < sh.n; i++) {
        redis_tnode *tn = redis_topo_get(t, &sh.s[i].master);
        if (!tn) continue;
        tn->keep = 1;
        tn->shard = i + 1;
        free(tn->ranges);
        tn->ranges = sh.s[i].ranges;
        tn->nranges = sh.s[i].nranges;
        sh.s[i].ranges = NULL;
        for (int k = 0; k < tn->nranges; k++)
            for (int s = tn->ranges[k][0]; s <= tn->ranges[k][1]; s++) own[s] = tn;
    }
    t->nshards = sh.n;
    redis_shards_free(&sh);
    int changed = !t->map_known || memcmp(own, t->owner, REDIS_SLOTS * sizeof *own) != 0;
    memcpy(t->owner, own, REDIS_SLOTS * sizeof *own);
    free(own);
    t->map_known = 1;
    t->map_err[0] = 0;
    for (redis_tnode *tn = t->nodes, *next; tn; tn = next) {
        next = tn->next;
        tn->in_map = tn->keep;
        if (!tn->keep) node_destroy(t, tn);
    }
    return changed;
}

void redis_topo_describe(const redis_tnode *tn, char *out, size_t n)
{
    char a[REDIS_HOST_MAX + 10];
    redis_addr_format(redis_node_addr(tn->n), a, sizeof a);
    if (!tn->t->cluster || !tn->in_map || !tn->nranges) {
        snprintf(out, n, "%s", a);
        return;
    }
    char r[128] = "";
    size_t o = 0;
    for (int i = 0; i < tn->nranges && o + 24 < sizeof r; i++) {
        if (i == 3) {
            snprintf(r + o, sizeof r - o, ",...");
            break;
        }
        if (tn->ranges[i][0] == tn->ranges[i][1])
            o += (size_t)snprintf(r + o, sizeof r - o, "%s%u", i ? "," : "", tn->ranges[i][0]);
        else
            o += (size_t)snprintf(r + o, sizeof r - o, "%s%u-%u", i ? "," : "", tn->ranges[i][0],
                                  tn->ranges[i][1]);
    }
    snprintf(out, n, "%s (shard %d of %d, slots %s)", a, tn->shard, tn->t->nshards, r);
}

int redis_topo_health(const redis_topo *t, const redis_addr *seeds, int nseeds, char *why,
                      size_t n)
{
    if (!t->map_known) {
        char list[200] = "";
        size_t o = 0;
        for (int i = 0; i < nseeds && o + 2 < sizeof list; i++) {
            char a[REDIS_HOST_MAX + 10];
            redis_addr_format(&seeds[i], a, sizeof a);
            o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? "," : "", a);
        }
        snprintf(why, n, "redis cluster %s: no slot map yet%s%s", list, t->map_err[0] ? ": " : "",
                 t->map_err);
        return 0;
    }
    /* every shard that is down, in map order, as far as the buffer goes */
    size_t o = 0;
    int nbad = 0;
    for (int shard = 1; shard <= t->nshards; shard++) {
        for (const redis_tnode *tn = t->nodes; tn; tn = tn->next) {
            if (!tn->in_map || tn->shard != shard || redis_node_up(tn->n)) continue;
            char d[512];
            redis_topo_describe(tn, d, sizeof d);
            if (o < n)
                o += (size_t)snprintf(why + o, n - o, "%s%s %s unreachable: %s",
                                      nbad ? "; " : "", nbad ? "" : "redis", d,
                                      redis_node_reason(tn->n));
            nbad++;
        }
    }
    if (nbad) return 0;
    int lo = -1;
    for (int s = 0; s <= REDIS_SLOTS; s++) {
        int has = s < REDIS_SLOTS && t->owner[s];
        if (!has && s < REDIS_SLOTS && lo < 0) lo = s;
        if ((has || s == REDIS_SLOTS) && lo >= 0) {
            snprintf(why, n, "redis cluster: slots %d-%d have no master", lo, s - 1);
            return 0;
        }
    }
    snprintf(why, n, "ok");
    return 1;
}
