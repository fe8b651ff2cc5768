/* alloc_count: for a benchmark binary (one .c per program includes it):
 * counts libc's malloc, calloc and realloc calls in n_alloc by wrapping
 * the __libc_* entry points (as loadtest/malloc_count.c does for a
 * preloaded process), and reads this process' CPU time in ns. */
#ifndef CHATD_ALLOC_COUNT_H
#define CHATD_ALLOC_COUNT_H
#include <stddef.h>
#include <time.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
static unsigned long long n_alloc;
void *malloc(size_t n) { n_alloc++; return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { n_alloc++; return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { n_alloc++; return __libc_realloc(p, n); }

static inline double cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}
#endif
