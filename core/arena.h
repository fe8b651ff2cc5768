/* arena: a bump allocator over one fixed block, for short-lived trees that
 * a library would otherwise build with many small mallocs (a client frame's
 * jansson tree, frame.c; a Redis reply, redis_alloc.c). An allocation moves
 * a pointer; a free inside the block does nothing; space is taken back in
 * one step (arena_release), by the owner's rule of when nothing it handed
 * out is alive. What does not fit gets NULL: the caller falls back to malloc
 * and tells the two apart with arena_owns(). Under ASan the part of the
 * block not handed out is poisoned, and so is a span its owner forgot
 * (arena_forget) below the top, so a pointer kept past its release or its
 * free still faults. One loop thread per process: no locking.
 * Owns: the bookkeeping of a block its caller provides. */
#ifndef CHATD_ARENA_H
#define CHATD_ARENA_H
#include <stddef.h>
#include <stdint.h>

typedef struct arena {
    unsigned char *buf;
    size_t cap, top;   /* bytes in the block, bytes handed out */
} arena;

/* buf: 16-byte aligned, cap bytes. */
void arena_init(arena *a, void *buf, size_t cap);
/* n bytes, 16-byte aligned, not zeroed; NULL when they do not fit (or n == 0). */
void *arena_alloc(arena *a, size_t n);
/* Gives back everything handed out above `to` (arena_release(a, 0): all). */
void arena_release(arena *a, size_t to);
/* A span [from, to) below the top whose owner is done with it: nothing is
 * given back (the space returns with a release that covers it), but under
 * ASan the span is poisoned at once, so a late use of it faults. */
void arena_forget(arena *a, size_t from, size_t to);

static inline int arena_owns(const arena *a, const void *p)
{
    return (uintptr_t)p - (uintptr_t)a->buf < a->cap;
}

#endif
