/* backoff: the one reconnect backoff of the core (capped exponential with
 * jitter), used by the Redis connection layer and the Postgres store.
 * Owns nothing but its small state; the caller owns the timer.
 * Delays: the first is in [min/2, min], each failure doubles the base up to
 * max, a reset returns to min. backoff_stable() lets a caller reset only
 * after a connection has stayed healthy for a while, so a server that
 * accepts the handshake and then fails every command is not retried in a
 * tight loop. */
#ifndef CHATD_BACKOFF_H
#define CHATD_BACKOFF_H
#include <stdint.h>

typedef struct backoff {
    uint32_t min_ms, max_ms;
    uint32_t base_ms;        /* base of the next delay */
    uint32_t attempts;       /* failures since the last reset */
    uint64_t rng;            /* xorshift state (jitter) */
    uint64_t up_since_ms;    /* mono ms the current session came up, 0: down */
} backoff;

void backoff_init(backoff *b, uint32_t min_ms, uint32_t max_ms);
/* The delay to wait before the next attempt; counts one failure. */
uint32_t backoff_next(backoff *b);
/* Back to the minimum delay. */
void backoff_reset(backoff *b);
/* A session came up at now_ms (it is not reset yet). */
void backoff_up(backoff *b, uint64_t now_ms);
/* Resets when the session that came up has stayed up for stable_ms; call
 * it from a periodic health check. Returns 1 when it reset. */
int backoff_stable(backoff *b, uint64_t now_ms, uint32_t stable_ms);

#endif
