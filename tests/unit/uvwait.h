/* uvwait: running a C unit test's libuv loop until something happened.
 *   WAIT_ON(loop, cond, ms)  runs loop until cond holds or ms passed; a 1 ms
 *                            ticker runs meanwhile, so uv_run(UV_RUN_ONCE)
 *                            never sleeps past the deadline
 *   run_on(loop, ms)         runs loop for ms
 *   uvwait_ms(loop, ms)      runs loop for ms with a timer of its own that
 *                            stops it (no ticker: returns early when
 *                            nothing on the loop is active)
 * uvwait_init(loop) before the first wait, uvwait_close() before the loop is
 * closed; the ticker is stopped between waits (uvwait_ticker: a test that
 * runs the loop to its end stops it first).
 *   uvwait_cases(loop, cases, n, skip)  runs a table of test cases on the
 *                            loop (CHATD_TEST_CASE=name runs one), each
 *                            followed by 10 ms of loop for closing handles;
 *                            prints ok/FAIL/SKIP and the time of each;
 *                            returns how many failed (needs check.h)
 * Header-only. */
#ifndef CHATD_TEST_UVWAIT_H
#define CHATD_TEST_UVWAIT_H
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static uv_timer_t uvwait_ticker __attribute__((unused));
static inline void uvwait_tick(uv_timer_t *t) { (void)t; }
static inline void uvwait_init(uv_loop_t *loop) { uv_timer_init(loop, &uvwait_ticker); }
static inline void uvwait_close(void) { uv_close((uv_handle_t *)&uvwait_ticker, NULL); }

#define WAIT_ON(loop, cond, ms)                                                 \
    do {                                                                        \
        uint64_t until_ = mono_ms() + (ms);                                     \
        uv_timer_start(&uvwait_ticker, uvwait_tick, 1, 1);                      \
        while (!(cond) && mono_ms() < until_) uv_run((loop), UV_RUN_ONCE);      \
        uv_timer_stop(&uvwait_ticker);                                          \
    } while (0)

static inline void run_on(uv_loop_t *loop, int ms) { WAIT_ON(loop, 0, ms); }

static inline void uvwait_stop(uv_timer_t *t) { uv_stop(t->loop); }

static inline void uvwait_ms(uv_loop_t *loop, uint64_t ms)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, uvwait_stop, ms, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

#ifdef CHATD_TEST_CHECK_H
typedef struct uvwait_case {
    const char *name;
    void (*fn)(void);
} uvwait_case;

/* skip(name) returns a reason to skip that case, or NULL (skip may be NULL) */
static inline int uvwait_cases(uv_loop_t *loop, const uvwait_case *cases, size_t n,
                               const char *(*skip)(const char *name))
{
    const char *only = getenv("CHATD_TEST_CASE");
    int nfail = 0;
    for (size_t i = 0; i < n; i++) {
        if (only && *only && strcmp(only, cases[i].name) != 0) continue;
        const char *why = skip ? skip(cases[i].name) : NULL;
        if (why) { fprintf(stderr, "SKIP %s (%s)\n", cases[i].name, why); continue; }
        int f0 = check_failures();
        uint64_t t0 = mono_ms();
        cases[i].fn();
        run_on(loop, 10);
        int failed = check_failures() > f0;
        fprintf(stderr, "%s %s (%llu ms)\n", failed ? "FAIL" : "ok  ", cases[i].name,
                (unsigned long long)(mono_ms() - t0));
        nfail += failed;
    }
    return nfail;
}
#endif

#endif
