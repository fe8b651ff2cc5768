/* redis_reply: see redis_reply.h. */
#define _GNU_SOURCE
#include "redis_reply.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The value of an INFO line ("\nname:value\r\n": up to the line's end,
 * CR or LF, or the reply's), NULL when absent. */
static const char *info_field(const redisReply *r, const char *name, size_t *len)
{
    char key[64];
    int kl = snprintf(key, sizeof key, "\n%s:", name);
    const char *p = memmem(r->str, r->len, key, (size_t)kl);
    if (!p) return NULL;
    p += kl;
    size_t n = 0, left = (size_t)(r->str + r->len - p);
    while (n < left && p[n] != '\r' && p[n] != '\n') n++;
    *len = n;
    return p;
}

/* A policy name as Redis writes them (volatile-lru, allkeys-lfu, ...):
 * 1-32 of a-z and '-'. */
static int policy_word(const char *s, size_t n)
{
    if (n < 1 || n > 32) return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || s[i] == '-')) return 0;
    return 1;
}

int redis_reply_info_evicts(const redisReply *r, uint64_t *maxmemory, const char **policy, size_t *policy_len)
{
    if (!r || r->type != REDIS_REPLY_STRING || !r->str) return 0;
    size_t ml = 0, pl = 0;
    uint64_t max = 0;
    const char *m = info_field(r, "maxmemory", &ml), *pol = info_field(r, "maxmemory_policy", &pl);
    /* garbage (an empty or binary policy, a line cut short) is no warning */
    if (!m || !pol || parse_u64(m, ml, &max) != 0 || max == 0 || !policy_word(pol, pl) ||
        (pl == 10 && memcmp(pol, "noeviction", 10) == 0))
        return 0;
    *maxmemory = max;
    *policy = pol;
    *policy_len = pl;
    return 1;
}

static int starts(const redisReply *r, const char *w)
{
    size_t n = strlen(w);
    return r->str && r->len >= n && strncmp(r->str, w, n) == 0 &&
           (r->len == n || r->str[n] == ' ');
}

/* "<slot> <host>:<port>" after the word; host may be an IPv6 literal
 * without brackets ("::1:7000"): the port is after the last ':' */
static int parse_redirect(const char *s, size_t len, redis_redirect *rd)
{
    size_t i = 0;
    long slot = 0;
    if (i >= len || s[i] < '0' || s[i] > '9') return -1;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
        slot = slot * 10 + (s[i++] - '0');
        if (slot >= 16384) return -1;
    }
    if (i >= len || s[i++] != ' ') return -1;
    const char *a = s + i, *e = s + len;
    const char *colon = NULL;
    for (const char *q = a; q < e; q++) {
        if (*q == ' ' || *q == '\r' || *q == '\n') { e = q; break; }
        if (*q == ':') colon = q;
    }
    if (!colon || colon == a || colon + 1 == e) return -1;
    size_t hl = (size_t)(colon - a);
    if (*a == '[' && colon[-1] == ']') { a++; hl -= 2; }
    if (hl == 0 || hl > REDIS_HOST_MAX || memchr(a, 0, hl)) return -1;   /* a NUL would cut it */
    long port = 0;
    for (const char *q = colon + 1; q < e; q++) {
        if (*q < '0' || *q > '9' || port > 65535) return -1;
        port = port * 10 + (*q - '0');
    }
    if (port < 1 || port > 65535) return -1;
    if (rd) {
        rd->slot = (int)slot;
        memcpy(rd->addr.host, a, hl);
        rd->addr.host[hl] = 0;
        rd->addr.port = (int)port;
    }
    return 0;
}

redis_err_kind redis_reply_error(const redisReply *r, redis_redirect *rd)
{
    if (!r || r->type != REDIS_REPLY_ERROR) return REDIS_E_NONE;
    if (!r->str) return REDIS_E_OTHER;
    if (starts(r, "MOVED") || starts(r, "ASK")) {
        size_t w = r->str[0] == 'M' ? 6 : 4;
        if (r->len <= w || parse_redirect(r->str + w, r->len - w, rd) != 0) return REDIS_E_OTHER;
        return r->str[0] == 'M' ? REDIS_E_MOVED : REDIS_E_ASK;
    }
    if (starts(r, "TRYAGAIN")) return REDIS_E_TRYAGAIN;
    if (starts(r, "CLUSTERDOWN")) return REDIS_E_CLUSTERDOWN;
    if (starts(r, "NOSCRIPT")) return REDIS_E_NOSCRIPT;
    if (starts(r, "LOADING")) return REDIS_E_LOADING;
    if (starts(r, "MASTERDOWN")) return REDIS_E_MASTERDOWN;
    if (starts(r, "READONLY")) return REDIS_E_READONLY;
    return REDIS_E_OTHER;
}

const char *redis_err_name(redis_err_kind k)
{
    switch (k) {
    case REDIS_E_NONE: return "none";
    case REDIS_E_MOVED: return "MOVED";
    case REDIS_E_ASK: return "ASK";
    case REDIS_E_TRYAGAIN: return "TRYAGAIN";
    case REDIS_E_CLUSTERDOWN: return "CLUSTERDOWN";
    case REDIS_E_NOSCRIPT: return "NOSCRIPT";
    case REDIS_E_LOADING: return "LOADING";
    case REDIS_E_MASTERDOWN: return "MASTERDOWN";
    case REDIS_E_READONLY: return "READONLY";
    default: return "error";
    }
}

static int is_str(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) && r->str;
}

static int str_eq(const redisReply *r, const char *w)
{
    size_t n = strlen(w);
    return is_str(r) && r->len == n && strncasecmp(r->str, w, n) == 0;
}

redis_push_kind redis_reply_push(const redisReply *r, redis_push *p)
{
    redis_push tmp;
    if (!p) p = &tmp;
    memset(p, 0, sizeof *p);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !r->element) return REDIS_PUSH_NONE;
    const redisReply *k = r->element[0], *ch = r->element[1];
    if (!is_str(k)) return REDIS_PUSH_NONE;
    if (str_eq(k, "pong")) {
        if (r->elements != 2) return REDIS_PUSH_NONE;
        return p->kind = REDIS_PUSH_PONG;
    }
    if (r->elements != 3 || !is_str(ch)) return REDIS_PUSH_NONE;
    const redisReply *v = r->element[2];
    redis_push_kind kind = REDIS_PUSH_NONE;
    if (str_eq(k, "message")) kind = REDIS_PUSH_MESSAGE;
    else if (str_eq(k, "smessage")) kind = REDIS_PUSH_SMESSAGE;
    else if (str_eq(k, "subscribe")) kind = REDIS_PUSH_SUBSCRIBE;
    else if (str_eq(k, "ssubscribe")) kind = REDIS_PUSH_SSUBSCRIBE;
    else if (str_eq(k, "unsubscribe")) kind = REDIS_PUSH_UNSUBSCRIBE;
    else if (str_eq(k, "sunsubscribe")) kind = REDIS_PUSH_SUNSUBSCRIBE;
    else return REDIS_PUSH_NONE;
    if (kind == REDIS_PUSH_MESSAGE || kind == REDIS_PUSH_SMESSAGE) {
        if (!v || v->type != REDIS_REPLY_STRING || (!v->str && v->len)) return REDIS_PUSH_NONE;
        p->data = v->str ? v->str : "";
        p->data_len = v->len;
    } else {
        if (!v || v->type != REDIS_REPLY_INTEGER) return REDIS_PUSH_NONE;
        p->count = v->integer;
    }
    p->channel = ch->str;
    p->channel_len = ch->len;
    return p->kind = kind;
}

int redis_push_is_subscription(redis_push_kind k)
{
    return k == REDIS_PUSH_SUBSCRIBE || k == REDIS_PUSH_SSUBSCRIBE ||
           k == REDIS_PUSH_UNSUBSCRIBE || k == REDIS_PUSH_SUNSUBSCRIBE;
}

int redis_reply_u64(const redisReply *r, uint64_t *v)
{
    if (!r) return -1;
    if (r->type == REDIS_REPLY_NIL) { *v = 0; return 0; }
    if (r->type == REDIS_REPLY_INTEGER) {
        if (r->integer < 0) return -1;
        *v = (uint64_t)r->integer;
        return 0;
    }
    if (is_str(r)) return parse_u64(r->str, r->len, v);
    return -1;
}

/* ---- CLUSTER SHARDS ---- */

static int set_err(char *err, size_t errlen, const char *m)
{
    if (err && errlen) snprintf(err, errlen, "CLUSTER SHARDS: %s", m);
    return -1;
}

/* value of field name in a flat RESP2 map array, or NULL */
static const redisReply *field(const redisReply *m, const char *name)
{
    if (!m || m->type != REDIS_REPLY_ARRAY || !m->element) return NULL;
    for (size_t i = 0; i + 1 < m->elements; i += 2)
        if (str_eq(m->element[i], name)) return m->element[i + 1];
    return NULL;
}

static int int_of(const redisReply *r, long long *v)
{
    uint64_t u;
    if (r && r->type == REDIS_REPLY_INTEGER) { *v = r->integer; return 0; }
    if (redis_reply_u64(r, &u) == 0 && u <= (uint64_t)INT32_MAX) { *v = (long long)u; return 0; }
    return -1;
}

static int copy_host(const redisReply *r, redis_addr *a)
{
    if (!is_str(r) || r->len == 0 || r->len > REDIS_HOST_MAX || memchr(r->str, 0, r->len) ||
        (r->len == 1 && r->str[0] == '?'))
        return -1;
    memcpy(a->host, r->str, r->len);
    a->host[r->len] = 0;
    return 0;
}

static int shard_cmp(const void *x, const void *y)
{
    const redis_shard_info *a = x, *b = y;
    return (int)a->ranges[0][0] - (int)b->ranges[0][0];
}

static int range_cmp(const void *x, const void *y)
{
    const uint16_t *a = x, *b = y;
    return (int)a[0] - (int)b[0];
}

int redis_reply_shards(const redisReply *r, int tls, redis_shards *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!r || r->type != REDIS_REPLY_ARRAY || (r->elements && !r->element))
        return set_err(err, errlen, r && r->type == REDIS_REPLY_ERROR && r->str ? r->str
                                                                               : "not an array");
    out->s = calloc(r->elements ? r->elements : 1, sizeof *out->s);
    if (!out->s) return set_err(err, errlen, "out of memory");
    uint8_t seen[16384];
    memset(seen, 0, sizeof seen);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *sh = r->element[i];
        const redisReply *slots = field(sh, "slots"), *nodes = field(sh, "nodes");
        if (!slots || slots->type != REDIS_REPLY_ARRAY || !nodes ||
            nodes->type != REDIS_REPLY_ARRAY || (nodes->elements && !nodes->element) ||
            (slots->elements && !slots->element) || slots->elements % 2) {
            redis_shards_free(out);
            return set_err(err, errlen, "malformed shard");
        }
        if (slots->elements == 0) continue; /* a shard without slots */
        /* after a failover the old master can still be listed as a master
         * of the shard (health "failed") until it rejoins as a replica: take
         * a master that is online, the one with the highest replication
         * offset when there are several */
        const redisReply *master = NULL;
        int best_online = -1;
        long long best_off = -1;
        for (size_t j = 0; j < nodes->elements; j++) {
            const redisReply *nd = nodes->element[j];
            if (!str_eq(field(nd, "role"), "master")) continue;
            int online = str_eq(field(nd, "health"), "online");
            long long off = -1;
            if (int_of(field(nd, "replication-offset"), &off) != 0) off = -1;
            if (online > best_online || (online == best_online && off > best_off)) {
                master = nd;
                best_online = online;
                best_off = off;
            }
        }
        if (!master) continue;
        redis_shard_info *s = &out->s[out->n];
        long long port = -1;
        const redisReply *tp = tls ? field(master, "tls-port") : NULL;
        if (tp) int_of(tp, &port);
        if (port <= 0 && int_of(field(master, "port"), &port) != 0) port = -1;
        if (port < 1 || port > 65535 ||
            (copy_host(field(master, "endpoint"), &s->master) != 0 &&
             copy_host(field(master, "ip"), &s->master) != 0)) {
            redis_shards_free(out);
            return set_err(err, errlen, "master without a usable address");
        }
        s->master.port = (int)port;
        s->master_online = str_eq(field(master, "health"), "online");
        s->ranges = calloc(slots->elements / 2, sizeof *s->ranges);
        if (!s->ranges) {
            redis_shards_free(out);
            return set_err(err, errlen, "out of memory");
        }
        out->n++;
        for (size_t j = 0; j < slots->elements; j += 2) {
            long long lo, hi;
            if (int_of(slots->element[j], &lo) != 0 || int_of(slots->element[j + 1], &hi) != 0 ||
                lo < 0 || hi < lo || hi >= 16384) {
                redis_shards_free(out);
                return set_err(err, errlen, "bad slot range");
            }
            for (long long k = lo; k <= hi; k++) {
                if (seen[k]) {
                    redis_shards_free(out);
                    return set_err(err, errlen, "a slot listed twice");
                }
                seen[k] = 1;
            }
            s->ranges[s->nranges][0] = (uint16_t)lo;
            s->ranges[s->nranges][1] = (uint16_t)hi;
            s->nranges++;
        }
        qsort(s->ranges, (size_t)s->nranges, sizeof *s->ranges, range_cmp);
    }
    if (out->n == 0) {
        redis_shards_free(out);
        return set_err(err, errlen, "no shard serves any slot");
    }
    qsort(out->s, (size_t)out->n, sizeof *out->s, shard_cmp);
    return 0;
}

void redis_shards_free(redis_shards *s)
{
    for (int i = 0; s->s && i < s->n; i++) free(s->s[i].ranges);
    free(s->s);
    s->s = NULL;
    s->n = 0;
}
