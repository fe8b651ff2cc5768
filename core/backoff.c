/* backoff: see backoff.h. */
#include "backoff.h"
#include "util.h"

void backoff_init(backoff *b, uint32_t min_ms, uint32_t max_ms)
{
    b->min_ms = min_ms ? min_ms : 1;
    b->max_ms = max_ms < b->min_ms ? b->min_ms : max_ms;
    b->base_ms = b->min_ms;
    b->attempts = 0;
    b->up_since_ms = 0;
    b->rng = mono_ns() ^ (uint64_t)(uintptr_t)b ^ 0x9E3779B97F4A7C15ull;
    if (!b->rng) b->rng = 1;
}

uint32_t backoff_next(backoff *b)
{
    b->rng ^= b->rng << 13;
    b->rng ^= b->rng >> 7;
    b->rng ^= b->rng << 17;
    uint32_t base = b->base_ms;
    uint32_t d = base / 2 + (uint32_t)(b->rng % (base / 2 + 1));
    b->base_ms = base > b->max_ms / 2 ? b->max_ms : base * 2;
    b->attempts++;
    b->up_since_ms = 0;
    return d ? d : 1;
}

void backoff_reset(backoff *b)
{
    b->base_ms = b->min_ms;
    b->attempts = 0;
}

void backoff_up(backoff *b, uint64_t now_ms)
{
    b->up_since_ms = now_ms ? now_ms : 1;
}

int backoff_stable(backoff *b, uint64_t now_ms, uint32_t stable_ms)
{
    if (!b->up_since_ms || b->attempts == 0 || now_ms - b->up_since_ms < stable_ms) return 0;
    backoff_reset(b);
    return 1;
}
