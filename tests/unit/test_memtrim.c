/* test_memtrim: the periodic malloc_trim (memtrim.h): off at 0, at most once
 * per interval, only when enough is free, and the pages of freed blocks
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
static char *blk[NBLK];

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
        CHECK(memtrim_tick(51000) == 1 && memtrim_count() == 2, "again after the interval");
        size_t len = 0;
        char *text = metrics_render(&len);
        CHECK_CONTAINS(text, "chat_malloc_trim_total 2");
        CHECK_CONTAINS(text, "chat_malloc_trim_seconds_total ");
        CHECK_CONTAINS(text, "chat_heap_free_bytes ");
        free(text);
    }
    free(blk[NBLK - 1]);
    metrics_free_all();
    return check_summary("test_memtrim");
}
