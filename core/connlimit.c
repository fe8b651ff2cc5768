/* connlimit: see connlimit.h. Counts are stored as pointer-sized integers in
 * two hmaps; a key is deleted when its count returns to 0. */
#include "connlimit.h"
#include "hmap.h"
#include <stdint.h>

static hmap g_ip, g_user;
static int64_t g_max_ip, g_max_user;
static int g_init;

void connlimit_init(int64_t max_per_ip, int64_t max_per_user)
{
    if (!g_init) {
        hmap_init(&g_ip);
        hmap_init(&g_user);
        g_init = 1;
    }
    g_max_ip = max_per_ip;
    g_max_user = max_per_user;
}

void connlimit_free(void)
{
    if (!g_init) return;
    hmap_free(&g_ip);
    hmap_free(&g_user);
    g_init = 0;
}

static int64_t get(hmap *m, const char *k)
{
    return (int64_t)(intptr_t)hmap_get(m, k);
}

static int add(hmap *m, const char *k, int64_t d)
{
    int64_t v = get(m, k) + d;
    if (v <= 0) { hmap_del(m, k); return 0; }
    return hmap_put(m, k, (void *)(intptr_t)v);
}

limit_result connlimit_acquire(const char *ip, const char *user)
{
    if (!g_init) connlimit_init(0, 0);
    if (g_max_ip > 0 && get(&g_ip, ip) >= g_max_ip) return LIMIT_IP;
    if (g_max_user > 0 && get(&g_user, user) >= g_max_user) return LIMIT_USER;
    if (add(&g_ip, ip, 1) < 0) return LIMIT_OOM;
    if (add(&g_user, user, 1) < 0) { add(&g_ip, ip, -1); return LIMIT_OOM; }
    return LIMIT_OK;
}

void connlimit_release(const char *ip, const char *user)
{
    if (!g_init) return;
    add(&g_ip, ip, -1);
    add(&g_user, user, -1);
}

int64_t connlimit_count_ip(const char *ip) { return g_init ? get(&g_ip, ip) : 0; }
int64_t connlimit_count_user(const char *user) { return g_init ? get(&g_user, user) : 0; }

size_t connlimit_each_user(size_t from, size_t to,
                           void (*fn)(void *ud, const char *user, int64_t n), void *ud)
{
    if (!g_init) return 0;
    if (to > g_user.cap) to = g_user.cap;
    for (size_t i = from; i < to; i++)
        if (hmap_live(&g_user, i))
            fn(ud, g_user.slots[i].key, (int64_t)(intptr_t)g_user.slots[i].val);
    return g_user.cap;
}
