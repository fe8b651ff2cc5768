/* memtrim: see memtrim.h. */
#define _GNU_SOURCE
#include "memtrim.h"
#include "metrics.h"
#include "util.h"
#ifdef __GLIBC__
#include <malloc.h>
#endif

static struct {
    uint64_t interval_ms, last_ms;
    int checked;                    /* last_ms is set */
    size_t low;                     /* least free space seen since the last trim */
    unsigned since;                 /* checks since the last trim */
    metric_counter *runs, *ns;
    metric_gauge *free_bytes;
} T;

static double seconds_fn(void *ud)
{
    (void)ud;
    return T.ns ? (double)T.ns->v / 1e9 : 0;
}

void memtrim_init(uint64_t interval_ms)
{
    T.interval_ms = interval_ms;
    T.last_ms = 0;
    T.checked = 0;
    T.low = 0;
    T.since = 0;
    static unsigned seen;
    if (!metrics_register_due(&seen)) return;
    T.runs = metrics_counter("chat_malloc_trim_total",
                             "malloc_trim runs (CHAT_MALLOC_TRIM_MS): free heap pages given back to the kernel", "");
    /* nanoseconds counted here, exposed in seconds */
    static metric_counter ns;
    T.ns = &ns;
    metrics_counter_fn("chat_malloc_trim_seconds_total", "time spent in malloc_trim", "", seconds_fn, NULL);
    T.free_bytes = metrics_gauge("chat_heap_free_bytes",
                                 "malloc's free space (bytes) at the last trim check", "");
}

int memtrim_tick(uint64_t now)
{
#ifdef __GLIBC__
    if (!T.interval_ms || (T.checked && now - T.last_ms < T.interval_ms)) return 0;
    T.checked = 1;
    T.last_ms = now;
    struct mallinfo2 mi = mallinfo2();
    metric_set(T.free_bytes, (double)mi.fordblks);
    if (mi.fordblks < T.low) T.low = mi.fordblks;
    if (mi.fordblks < T.low + MEMTRIM_STEP &&
        (++T.since < MEMTRIM_REFRESH || mi.fordblks < MEMTRIM_STEP))
        return 0;
    T.since = 0;
    T.low = mi.fordblks;            /* the same free space after the trim (its pages gone) */
    uint64_t t0 = mono_ns();
    malloc_trim(0);
    metric_add(T.ns, mono_ns() - t0);
    metric_inc(T.runs);
    return 1;
#else
    (void)now;
    return 0;
#endif
}

uint64_t memtrim_count(void) { return T.runs ? T.runs->v : 0; }
