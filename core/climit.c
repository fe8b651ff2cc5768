/* climit: see climit.h. In-process buckets today (core/ratelimit.c, the one
 * token bucket of the core); the Redis buckets join with the Redis
 * connection layer (docs/api.md "Limits"). */
#define _GNU_SOURCE
#include "climit.h"
#include "ratelimit.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct climit {
    ratelimit *rl;
};

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
    (void)cb;
    (void)ud;
    if (!l || !scope || !key || !(rate > 0)) return CLIMIT_ERROR;
    if (burst < 1) burst = 1;
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
