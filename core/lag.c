/* lag: see lag.h. */
#define _GNU_SOURCE
#include "lag.h"
#include "hash.h"
#include "hmap.h"
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* A receipt is its send time itself, kept in the map's value pointer (no
 * allocation per message); mono_ns is never 0 on a running system. */
_Static_assert(sizeof(void *) >= sizeof(uint64_t), "a receipt fits in a pointer");
static hmap g_receipts;

static void *receipt_val(uint64_t t0) { return (void *)(uintptr_t)(t0 ? t0 : 1); }
static uint64_t receipt_t0(void *v) { return (uint64_t)(uintptr_t)v; }

static void receipt_key(const char *room, const char *tail, size_t len, char key[24])
{
    uint64_t h = hash_bytes_more(hash_bytes_more(hash_str(room), "|", 1), tail, len);
    snprintf(key, 24, "%016" PRIx64, h);
}

void lag_put(const char *room, const char *tail, size_t len, uint64_t t0)
{
    char key[24];
    receipt_key(room, tail, len, key);
    hmap_put(&g_receipts, key, receipt_val(t0));   /* replaces; out of memory: no lag figure */
}

uint64_t lag_take(const char *room, const char *tail, size_t len)
{
    if (!g_receipts.count) return 0;
    char key[24];
    receipt_key(room, tail, len, key);
    return receipt_t0(hmap_del(&g_receipts, key));
}

typedef struct expiry { uint64_t now, max_age; } expiry;

static int expire_fn(void *ud, const char *key, void *val)
{
    const expiry *x = ud;
    return x->now - receipt_t0(val) > x->max_age;
}

void lag_expire(uint64_t now_ns, uint64_t max_age_ns)
{
    expiry x = {now_ns, max_age_ns};
    if (g_receipts.count) hmap_each(&g_receipts, expire_fn, &x);
}

void lag_shutdown(void)
{
    hmap_free(&g_receipts);
}
