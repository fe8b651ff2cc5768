/* test_ratelimit: the policy host's token buckets (core/ratelimit.c):
 * burst and refill, a clock step back, bad arguments, the bounded table
 * (idle buckets dropped, the least recently used evicted when full) and the
 * reuse of an evicted bucket's memory for a new key (it starts full, with
 * its own key, whatever the lengths); evictions of buckets that had not
 * refilled are counted (chat_ratelimit_evictions_total, read with series.h),
 * idle drops are not. */
#define _GNU_SOURCE
#include "check.h"
#include "metrics.h"
#include "ratelimit.h"
#include "series.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EVICTIONS() series("chat_ratelimit_evictions_total")

static int take(ratelimit *rl, const char *k, double rate, double burst, uint64_t now)
{
    return rl_take(rl, k, strlen(k), rate, burst, now);
}

static void test_bucket(void)
{
    ratelimit *rl = rl_new(16);
    CHECK(rl != NULL);
    CHECK(take(rl, "a", 1, 2, 1000) == 1 && take(rl, "a", 1, 2, 1000) == 1, "burst of 2");
    CHECK(take(rl, "a", 1, 2, 1000) == 0, "third limited");
    CHECK(take(rl, "a", 1, 2, 1999) == 0, "not yet refilled");
    CHECK(take(rl, "a", 1, 2, 2000) == 1, "one token after 1 s");
    CHECK(take(rl, "a", 1, 2, 500) == 0, "a clock step back refills nothing");
    CHECK(take(rl, "b", 1, 2, 2000) == 1, "another key has its own bucket");
    CHECK(rl_take(rl, "", 0, 1, 1, 0) == -1 && take(rl, "x", 0, 1, 0) == -1 &&
          take(rl, "x", 1, 0.5, 0) == -1, "bad arguments");
    char big[RL_KEY_MAX + 2];
    memset(big, 'k', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK(rl_take(rl, big, RL_KEY_MAX + 1, 1, 1, 0) == -1, "key too long");
    CHECK(rl_take(rl, big, RL_KEY_MAX, 1, 1, 0) == 1, "longest key");
    rl_free(rl);
}

/* Keys of every length come and go through a table of 16: a new key finds
 * a full bucket, never an evicted one's tokens or key. */
static void test_reuse(void)
{
    ratelimit *rl = rl_new(16);
    double e0 = EVICTIONS();
    char k[RL_KEY_MAX + 1];
    uint64_t now = 1000;
    int bad = 0;
    for (int round = 0; round < 200; round++) {
        size_t len = 1 + (size_t)(round * 37) % RL_KEY_MAX;
        memset(k, 'a' + round % 26, len);
        snprintf(k, len + 1 > 12 ? 12 : len + 1, "%d", round);
        if (len > 11) memset(k + strlen(k), 'z', len - strlen(k));
        k[len] = 0;
        /* burst 3: three allowed, the fourth limited, at one instant */
        for (int i = 0; i < 3; i++) bad += rl_take(rl, k, len, 0.5, 3, now) != 1;
        bad += rl_take(rl, k, len, 0.5, 3, now) != 0;
        now += 10000;   /* every bucket so far is full again: idle */
    }
    CHECK(bad == 0, "%d wrong answers for new keys over evicted buckets", bad);
    CHECK(e0 >= 0 && EVICTIONS() == e0, "idle buckets dropped, none evicted (%g, was %g)",
          EVICTIONS(), e0);
    /* a full table of busy buckets: the least recently used is evicted */
    for (int i = 0; i < 16; i++) {
        snprintf(k, sizeof k, "busy%d", i);
        CHECK(take(rl, k, 0.001, 1, now) == 1, "busy %d", i);
    }
    CHECK(take(rl, "busy0", 0.001, 1, now) == 0, "busy0 empty");
    CHECK(take(rl, "newcomer", 0.001, 1, now) == 1, "a new key in a full table");
    CHECK(take(rl, "busy1", 0.001, 1, now) == 1, "busy1 (least recently used) was evicted");
    CHECK(take(rl, "busy0", 0.001, 1, now) == 0, "busy0 (used since) kept its empty bucket");
    CHECK(EVICTIONS() == e0 + 2, "busy1 and busy2 evicted (%g, was %g)", EVICTIONS(), e0);
    rl_free(rl);
}

/* The metric sums every table's evictions. */
static void test_metric(void)
{
    ratelimit *a = rl_new(16), *b = rl_new(16);
    double e0 = EVICTIONS();
    char k[32];
    for (int i = 0; i < 20; i++) {     /* 4 evictions each (buckets never refill) */
        snprintf(k, sizeof k, "k%d", i);
        take(a, k, 0.001, 1, 1000);
        take(b, k, 0.001, 1, 1000);
    }
    /* test_reuse's table evicted 2 before */
    CHECK(e0 == 2 && EVICTIONS() == 10, "metric %g, was %g", EVICTIONS(), e0);
    rl_free(a);
    rl_free(b);
}

int main(void)
{
    test_bucket();
    test_reuse();
    test_metric();
    metrics_free_all();
    return check_summary("test_ratelimit");
}
