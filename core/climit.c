/* climit: see climit.h. In-process: core/ratelimit.c (the one token bucket
 * of the core). With Redis: the bucket script of adminstore.c, one round
 * trip per take; while Redis is unreachable the in-process bucket answers
 * (a node alone gets the rate, not a free pass). */
#define _GNU_SOURCE
#include "climit.h"
#include "adminstore.h"
#include "ratelimit.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct climit {
    ratelimit *rl;
    adminstore *store;
};

void climit_set_store(climit *l, adminstore *a)
{
    if (l) l->store = a;
}

climit *climit_new(size_t max_keys)
{
    climit *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->rl = rl_new(max_keys);
    if (!l->rl) { free(l); return NULL; }
    return l;
}

void climit_free(climit *l)
{
    if (!l) return;
    rl_free(l->rl);
    free(l);
}

int climit_take(climit *l, const char *scope, const char *key, double rate, double burst,
                uint64_t *retry_ms, climit_cb cb, void *ud)
{
    if (!l || !scope || !key || !(rate > 0)) return CLIMIT_ERROR;
    if (burst < 1) burst = 1;
    /* adminstore_take_cb has climit_cb's meaning: 1 allow, 0 deny, -1 error */
    if (l->store && cb && adminstore_ready(l->store) &&
        adminstore_take(l->store, scope, key, rate, burst, cb, ud) == 0)
        return CLIMIT_PENDING;
    char k[RL_KEY_MAX + 1];
    int n = snprintf(k, sizeof k, "%s:%s", scope, key);
    if (n <= 0 || (size_t)n >= sizeof k) return CLIMIT_ERROR;
    int r = rl_take(l->rl, k, (size_t)n, rate, burst, mono_ms());
    if (r < 0) return CLIMIT_ERROR;
    if (r == 0) {
        /* the bucket holds less than one token: one is back within 1/rate */
        if (retry_ms) {
            double ms = ceil(1000.0 / rate);
            *retry_ms = ms < 1 ? 1 : (uint64_t)ms;
        }
        return CLIMIT_DENY;
    }
    return CLIMIT_ALLOW;
}
