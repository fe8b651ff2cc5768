/* hash: the one string/byte hash of the core (64-bit FNV-1a).
 * Used by the hash map (hmap), the rate limiter's buckets and the lag
 * receipts. Not for anything an attacker could exploit by collisions at
 * scale: keys are room names, user ids and tails the core bounds. */
#ifndef CHATD_HASH_H
#define CHATD_HASH_H
#include <stddef.h>
#include <stdint.h>

#define HASH_FNV_INIT 1469598103934665603ull

/* Continues hash h over n bytes (start with HASH_FNV_INIT). */
static inline uint64_t hash_bytes_more(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static inline uint64_t hash_bytes(const void *p, size_t n)
{
    return hash_bytes_more(HASH_FNV_INIT, p, n);
}

static inline uint64_t hash_str(const char *s)
{
    uint64_t h = HASH_FNV_INIT;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

#endif
