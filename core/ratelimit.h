/* ratelimit: per-key token buckets for the policy host (chat.ratelimit).
 * Owns: the bucket table. Buckets live in C, not in a lua_State, so they
 * survive script reloads. The table is bounded: when full, the least
 * recently used bucket is evicted, and buckets that have refilled completely
 * (idle: indistinguishable from a fresh one) are dropped on the way.
 * Evicting a bucket that had not refilled resets its key's limit: counted
 * in chat_ratelimit_evictions_total (over every table; nothing else reads
 * the count). */
#ifndef CHATD_RATELIMIT_H
#define CHATD_RATELIMIT_H
#include <stddef.h>
#include <stdint.h>

typedef struct ratelimit ratelimit;

#define RL_KEY_MAX 256

ratelimit *rl_new(size_t max_keys);
void rl_free(ratelimit *rl);
/* Take one token from bucket `key` (refilled at rate tokens/s up to burst).
 * Returns 1 allowed, 0 limited, -1 on a bad argument or out of memory. */
int rl_take(ratelimit *rl, const char *key, size_t klen, double rate, double burst,
            uint64_t now_ms);

#endif
