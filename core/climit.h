/* climit: rate limits that hold across nodes ("cluster limits"): one token
 * bucket per key (a user's messages, an API key's requests) shared by every
 * node. In-process mode (no Redis) the buckets are this process' own
 * (ratelimit.h), which is the whole cluster; with Redis they live in Redis
 * (one small script per take, the key's slot in a Cluster), so a user on
 * N nodes gets the rate once, not N times.
 * Owns: its bucket table (in-process), its pending takes (each callback
 * called exactly once; status CLIMIT_ERROR when freed first).
 * Layer: beside bus and store (below publish and the server API). */
#ifndef CHATD_CLIMIT_H
#define CHATD_CLIMIT_H
#include <stddef.h>
#include <stdint.h>

typedef struct climit climit;

enum {
    CLIMIT_ERROR = -1,      /* cannot tell (out of memory, Redis down): callers let it pass */
    CLIMIT_DENY = 0,
    CLIMIT_ALLOW = 1,
    CLIMIT_PENDING = 2,     /* the answer comes through the callback */
};

/* allowed: CLIMIT_ALLOW / CLIMIT_DENY / CLIMIT_ERROR; retry_ms: with DENY,
 * how long until one token is back (at least 1). */
typedef void (*climit_cb)(void *ud, int allowed, uint64_t retry_ms);

/* max_keys bounds the in-process table (least recently used dropped). */
climit *climit_new(size_t max_keys);
void climit_free(climit *l);
struct adminstore;
/* With Redis: the buckets live there (adminstore.h), the in-process ones
 * serve only while it is unreachable. NULL: in-process only. */
void climit_set_store(climit *l, struct adminstore *a);

/* Takes one token from bucket key (scope "msg", "api", ...: keys of
 * different scopes never meet) refilled at rate tokens/s up to burst.
 * Returns CLIMIT_ALLOW or CLIMIT_DENY (*retry_ms set) when known now, or
 * CLIMIT_PENDING (cb later, never from inside this call), or CLIMIT_ERROR. */
int climit_take(climit *l, const char *scope, const char *key, double rate, double burst,
                uint64_t *retry_ms, climit_cb cb, void *ud);

#endif
