/* arena: see arena.h. */
#include "arena.h"

#if defined(__SANITIZE_ADDRESS__)
#define ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_ASAN 1
#endif
#endif
#ifdef ARENA_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

void arena_init(arena *a, void *buf, size_t cap)
{
    a->buf = buf;
    a->cap = cap;
    a->top = 0;
    POISON(buf, cap);
}

void *arena_alloc(arena *a, size_t n)
{
    size_t r = (n + 15) & ~(size_t)15;
    if (n == 0 || r < n || r > a->cap - a->top) return NULL;
    void *p = a->buf + a->top;
    a->top += r;
    UNPOISON(p, n);
    return p;
}

void arena_release(arena *a, size_t to)
{
    if (to >= a->top) return;
    POISON(a->buf + to, a->top - to);
    a->top = to;
}

void arena_forget(arena *a, size_t from, size_t to)
{
    if (to > a->top) to = a->top;
    if (from < to) POISON(a->buf + from, to - from);
}
