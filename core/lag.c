/* lag: see lag.h. */
#define _GNU_SOURCE
#include "lag.h"
#include "hash.h"
#include "hmap.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct receipt { uint64_t t0; } receipt;
static hmap g_receipts;

static void receipt_key(const char *room, const char *tail, size_t len, char key[24])
{
    uint64_t h = hash_bytes_more(hash_bytes_more(hash_str(room), "|", 1), tail, len);
    snprintf(key, 24, "%016" PRIx64, h);
}

void lag_put(const char *room, const char *tail, size_t len, uint64_t t0)
{
    char key[24];
    receipt_key(room, tail, len, key);
    receipt *r = malloc(sizeof *r);
    if (!r) return;
    r->t0 = t0;
    free(hmap_get(&g_receipts, key));
    if (hmap_put(&g_receipts, key, r) < 0) free(r);
}

uint64_t lag_take(const char *room, const char *tail, size_t len)
{
    if (!g_receipts.count) return 0;
    char key[24];
    receipt_key(room, tail, len, key);
    receipt *r = hmap_del(&g_receipts, key);
    uint64_t t0 = r ? r->t0 : 0;
    free(r);
    return t0;
}

typedef struct expiry { uint64_t now, max_age; } expiry;

static int expire_fn(void *ud, const char *key, void *val)
{
    const expiry *x = ud;
    receipt *r = val;
    if (x->now - r->t0 <= x->max_age) return 0;
    free(r);
    return 1;
}

void lag_expire(uint64_t now_ns, uint64_t max_age_ns)
{
    expiry x = {now_ns, max_age_ns};
    if (g_receipts.count) hmap_each(&g_receipts, expire_fn, &x);
}

static int free_fn(void *ud, const char *key, void *val)
{
    free(val);
    return 1;
}

void lag_shutdown(void)
{
    hmap_each(&g_receipts, free_fn, NULL);
    hmap_free(&g_receipts);
}
