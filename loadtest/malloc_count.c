/* malloc_count: an LD_PRELOAD allocation counter for profiling a server
 * under load (loadtest/scenarios/dm.sh MALLOC=1). Owns: process-wide
 * counters of malloc / calloc / realloc / free / posix_memalign calls, bytes
 * requested, and live heap bytes (malloc_usable_size), and a writer thread
 * that rewrites them into $MALLOC_COUNT_FILE every 20 ms as one line:
 *   malloc calloc realloc free memalign bytes_requested live_bytes live_blocks
 * so a script can take deltas over any window (e.g. the steady phase) while
 * the process runs. Forwards to glibc's __libc_* entry points (no dlsym, so
 * no bootstrap allocation problem). Not for production: a measurement tool. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);

enum { C_MALLOC, C_CALLOC, C_REALLOC, C_FREE, C_MEMALIGN, C_BYTES, C_LIVE, C_BLOCKS, C_N };
static _Atomic long long cnt[C_N];

#define ADD(i, v) atomic_fetch_add_explicit(&cnt[i], (long long)(v), memory_order_relaxed)

static void track_new(void *p, size_t req)
{
    if (!p)
        return;
    ADD(C_BYTES, req);
    ADD(C_LIVE, malloc_usable_size(p));
    ADD(C_BLOCKS, 1);
}

static void track_gone(void *p)
{
    if (!p)
        return;
    ADD(C_LIVE, -(long long)malloc_usable_size(p));
    ADD(C_BLOCKS, -1);
}

void *malloc(size_t n)
{
    void *p = __libc_malloc(n);
    ADD(C_MALLOC, 1);
    track_new(p, n);
    return p;
}

void *calloc(size_t a, size_t b)
{
    void *p = __libc_calloc(a, b);
    ADD(C_CALLOC, 1);
    track_new(p, a * b);
    return p;
}

void *realloc(void *old, size_t n)
{
    long long before = old ? (long long)malloc_usable_size(old) : 0;
    void *p = __libc_realloc(old, n);
    ADD(C_REALLOC, 1);
    if (p) {
        ADD(C_BYTES, n);
        ADD(C_LIVE, (long long)malloc_usable_size(p) - before);
        if (!old)
            ADD(C_BLOCKS, 1);
    } else if (old && n == 0) {
        ADD(C_LIVE, -before);
        ADD(C_BLOCKS, -1);
    }
    return p;
}

void free(void *p)
{
    if (!p)
        return;
    ADD(C_FREE, 1);
    track_gone(p);
    __libc_free(p);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    void *p = __libc_memalign(align, n);
    ADD(C_MEMALIGN, 1);
    if (!p)
        return ENOMEM;
    track_new(p, n);
    *out = p;
    return 0;
}

void *aligned_alloc(size_t align, size_t n)
{
    void *p = __libc_memalign(align, n);
    ADD(C_MEMALIGN, 1);
    track_new(p, n);
    return p;
}

void *memalign(size_t align, size_t n)
{
    return aligned_alloc(align, n);
}

static void *writer(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char line[256];
    const struct timespec tick = {0, 20 * 1000 * 1000};
    for (;;) {
        int n = snprintf(line, sizeof line, "%lld %lld %lld %lld %lld %lld %lld %lld\n",
                         (long long)cnt[C_MALLOC], (long long)cnt[C_CALLOC], (long long)cnt[C_REALLOC],
                         (long long)cnt[C_FREE], (long long)cnt[C_MEMALIGN], (long long)cnt[C_BYTES],
                         (long long)cnt[C_LIVE], (long long)cnt[C_BLOCKS]);
        /* fixed width would need padding; truncate then write: readers retry an empty read */
        if (ftruncate(fd, 0) == 0 && pwrite(fd, line, (size_t)n, 0) < 0)
            break;
        nanosleep(&tick, NULL);
    }
    return NULL;
}

__attribute__((constructor)) static void mc_init(void)
{
    const char *path = getenv("MALLOC_COUNT_FILE");
    if (!path || !*path)
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &a, writer, (void *)(intptr_t)fd) != 0)
        close(fd);
    pthread_attr_destroy(&a);
}
