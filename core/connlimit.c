/* connlimit: see connlimit.h. Each map is keyed (hmap_init_keyed): a
 * count is one allocation holding its key, deleted when the count returns
 * to 0 (no key copy in the map, 8-byte slots). */
#include "connlimit.h"
#include "client_ip.h"
#include "hmap.h"
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct lcount { int64_t n; char key[]; } lcount;

static hmap g_ip, g_user;
static int64_t g_max_ip, g_max_user;
static int g_init;

void connlimit_init(int64_t max_per_ip, int64_t max_per_user)
{
    if (!g_init) {
        hmap_init_keyed(&g_ip, offsetof(lcount, key));
        hmap_init_keyed(&g_user, offsetof(lcount, key));
        g_init = 1;
    }
    g_max_ip = max_per_ip;
    g_max_user = max_per_user;
}

static int free_fn(void *ud, const char *k, void *v)
{
    (void)ud; (void)k;
    free(v);
    return 1;
}

void connlimit_free(void)
{
    if (!g_init) return;
    hmap_each(&g_ip, free_fn, NULL);
    hmap_each(&g_user, free_fn, NULL);
    hmap_free(&g_ip);
    hmap_free(&g_user);
    g_init = 0;
}

static int64_t get(hmap *m, const char *k)
{
    lcount *c = hmap_get(m, k);
    return c ? c->n : 0;
}

static int add(hmap *m, const char *k, int64_t d)
{
    lcount *c = hmap_get(m, k);
    if (c) {
        c->n += d;
        if (c->n <= 0) { hmap_del(m, k); free(c); }
        return 0;
    }
    if (d <= 0) return 0;
    size_t kl = strlen(k) + 1;
    if (!(c = malloc(sizeof *c + kl))) return -1;
    c->n = d;
    memcpy(c->key, k, kl);
    if (hmap_put(m, c->key, c) < 0) { free(c); return -1; }
    return 0;
}
limit_result connlimit_acquire(const char *ip, const char *user)
{
    if (!g_init) connlimit_init(0, 0);
    int per_ip = !ip_is_loopback(ip);
    if (per_ip && g_max_ip > 0 && get(&g_ip, ip) >= g_max_ip) return LIMIT_IP;
    if (g_max_user > 0 && get(&g_user, user) >= g_max_user) return LIMIT_USER;
    if (per_ip && add(&g_ip, ip, 1) < 0) return LIMIT_OOM;
    if (add(&g_user, user, 1) < 0) { if (per_ip) add(&g_ip, ip, -1); return LIMIT_OOM; }
    return LIMIT_OK;
}

void connlimit_release(const char *ip, const char *user)
{
    if (!g_init) return;
    if (!ip_is_loopback(ip)) add(&g_ip, ip, -1);
    add(&g_user, user, -1);
}

int64_t connlimit_count_ip(const char *ip) { return g_init ? get(&g_ip, ip) : 0; }
int64_t connlimit_count_user(const char *user) { return g_init ? get(&g_user, user) : 0; }

typedef struct each_ctx { void (*fn)(void *ud, const char *user, int64_t n); void *ud; } each_ctx;

static void each_fn(void *ud, const char *k, void *v)
{
    each_ctx *x = ud;
    x->fn(x->ud, k, ((lcount *)v)->n);
}

size_t connlimit_each_user(size_t from, size_t to,
                           void (*fn)(void *ud, const char *user, int64_t n), void *ud)
{
    if (!g_init) return 0;
    each_ctx x = { fn, ud };
    return hmap_range(&g_user, from, to, each_fn, &x);
}
