/* memtrim: gives the heap's free pages back to the kernel now and then
 * (CHAT_MALLOC_TRIM_MS; 0: never). glibc keeps the pages of freed blocks
 * that lie between live ones: after a burst of connections (the upgrade's
 * transients, join frames) or after many connections closed, RSS stays
 * where the peak left it. Checked once per interval: when malloc's free
 * space grew by MEMTRIM_STEP bytes or more above its lowest point since
 * the last trim (the low point starts at 0: the first check trims when
 * MEMTRIM_STEP or more is free, e.g. after the start's transients; new
 * free memory, likely in pages still resident),
 * malloc_trim(0) returns the whole free pages (it only madvises them away:
 * nothing moves, a later allocation takes them back with a page fault).
 * A steady heap is trimmed again only every MEMTRIM_REFRESH checks (when
 * MEMTRIM_STEP or more is free): memory reused and freed again between two
 * checks leaves the free space where it was.
 * Metrics: chat_malloc_trim_total (trims run), chat_malloc_trim_seconds_total
 * (time spent in them: seconds_total / total is the cost of one),
 * chat_heap_free_bytes (malloc's free space at the last check).
 * Without glibc it does nothing.
 * Owns: its schedule (driven by the server's 100 ms tick). */
#ifndef CHATD_MEMTRIM_H
#define CHATD_MEMTRIM_H
#include <stdint.h>

#define MEMTRIM_STEP (256 * 1024)
#define MEMTRIM_REFRESH 30

/* interval_ms 0: off. Registers the metrics. */
void memtrim_init(uint64_t interval_ms);
/* The server's tick: trims when the interval passed and enough is free.
 * Returns 1 when it trimmed. */
int memtrim_tick(uint64_t mono_ms);
/* Trims run so far (tests). */
uint64_t memtrim_count(void);

#endif
