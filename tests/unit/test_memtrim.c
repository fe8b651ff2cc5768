/* test_memtrim: the periodic malloc_trim (memtrim.h): off at 0, at most once
 * per interval, only when more became free, and the pages of freed blocks
 * pinned below a live one go back to the kernel (RSS falls). */
#define _GNU_SOURCE
#include "check.h"
#include "memtrim.h"
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

static long rss_kib(void)
{
    long pages = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = -1;
    fclose(f);
    return res < 0 ? -1 : res * (sysconf(_SC_PAGESIZE) / 1024);
}

#define NBLK 40000
static char *blk[NBLK], *more[2 * NBLK];

int main(void)
{
    memtrim_init(0);
    CHECK(memtrim_tick(1000) == 0 && memtrim_tick(100000) == 0, "0: never trims");
    CHECK(memtrim_count() == 0);

    /* 40,000 blocks of 200 bytes (~8 MB) touched, then all freed but the
     * last: the heap's top is pinned, so only malloc_trim can give the
     * pages in between back. */
    for (int i = 0; i < NBLK; i++) {
        if (!(blk[i] = malloc(200))) { check_fail("out of memory"); return 1; }
        memset(blk[i], 0x5a, 200);
    }
    for (int i = 0; i < NBLK - 1; i++) free(blk[i]);
    long before = rss_kib();

    memtrim_init(1000);
    int first = memtrim_tick(50000);
    if (SANITIZED) {
        /* the sanitizer's allocator reports no glibc free space: never trims */
        CHECK(first == 0 && memtrim_count() == 0);
    } else {
        CHECK(first == 1, "8 MB free: trims at the first check");
        CHECK(memtrim_count() == 1);
        long after = rss_kib();
        CHECK(before > 0 && after > 0 && before - after >= 4096,
              "RSS fell by at least 4 MiB (%ld -> %ld KiB)", before, after);
        CHECK(memtrim_tick(50500) == 0 && memtrim_count() == 1, "not again within the interval");
        CHECK(memtrim_tick(51000) == 0 && memtrim_count() == 1, "not again while nothing more was freed");
        /* twice as much allocated (the heap grows past what was free),
         * all but the last freed: trimmed at the next check */
        for (int i = 0; i < 2 * NBLK; i++)
            if ((more[i] = malloc(200))) memset(more[i], 0x6b, 200);
        for (int i = 0; i < 2 * NBLK - 1; i++) free(more[i]);
        long b2 = rss_kib();
        CHECK(memtrim_tick(52000) == 1 && memtrim_count() == 2, "again once more was freed");
        long a2 = rss_kib();
        CHECK(b2 - a2 >= 4096, "RSS fell again (%ld -> %ld KiB)", b2, a2);
        /* the same memory reused and freed again between two checks: the
         * free space looks unchanged, trimmed by the refresh only */
        for (int i = 0; i < 2 * NBLK - 1; i++)
            if ((more[i] = malloc(200))) memset(more[i], 0x6b, 200);
        for (int i = 0; i < 2 * NBLK - 1; i++) free(more[i]);
        int n = 0;
        for (int t = 1; t < MEMTRIM_REFRESH; t++) n += memtrim_tick(52000 + 1000 * (uint64_t)t);
        CHECK(n == 0 && memtrim_count() == 2, "no trim while the free space does not grow (%d)", n);
        long b3 = rss_kib();
        CHECK(memtrim_tick(52000 + 1000 * (uint64_t)MEMTRIM_REFRESH) == 1 && memtrim_count() == 3,
              "the refresh trims after MEMTRIM_REFRESH checks");
        long a3 = rss_kib();
        CHECK(b3 - a3 >= 4096, "RSS fell at the refresh (%ld -> %ld KiB)", b3, a3);
        free(more[2 * NBLK - 1]);
        size_t len = 0;
        char *text = metrics_render(&len);
        CHECK_CONTAINS(text, "chat_malloc_trim_total 3\n");
        CHECK_CONTAINS(text, "chat_malloc_trim_seconds_total ");
        CHECK_CONTAINS(text, "chat_heap_free_bytes ");
        free(text);
    }
    free(blk[NBLK - 1]);
    metrics_free_all();
    return check_summary("test_memtrim");
}
