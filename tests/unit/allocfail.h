/* allocfail: allocation-failure injection and a leak count for a C unit
 * test, through the linker's --wrap (cmake: chatd_alloc_fail(target) links
 * the test with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=free).
 * Every malloc/calloc/realloc/free call compiled into the test and the core
 * (chatcore is a static library) comes here first; the shared libraries'
 * own calls (libc's strdup, libuv...) do not. Works under ASan (the real
 * functions are ASan's).
 *   af_fail_malloc / af_fail_calloc / af_fail_realloc = n
 *                      the next n calls of that function return NULL
 *                      (then it works again); af_failed counts the NULLs given
 *   af_mark()          starts counting the blocks allocated here from now on
 *   af_live()          how many of them are not freed yet (a leak after the
 *                      code under test freed everything it made)
 * Include it in exactly one translation unit (a test is one). */
#ifndef CHATD_TEST_ALLOCFAIL_H
#define CHATD_TEST_ALLOCFAIL_H
#include <stddef.h>
#include <stdint.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);

static int af_fail_malloc, af_fail_calloc, af_fail_realloc, af_failed;

/* The blocks made since af_mark: an open-addressing set of pointers
 * (deleted slots are tombstones; 1 << 16 slots is plenty for a test). */
#define AF_SLOTS (1u << 16)
#define AF_TOMB ((void *)1)
static void *af_set[AF_SLOTS];
static int af_on;
static size_t af_count;

static inline size_t af_hash(const void *p) { return (size_t)(((uintptr_t)p >> 4) * 2654435761u) & (AF_SLOTS - 1); }

static inline void af_add(void *p)
{
    if (!af_on || !p) return;
    for (size_t i = af_hash(p), k = 0; k < AF_SLOTS; k++, i = (i + 1) & (AF_SLOTS - 1))
        if (!af_set[i] || af_set[i] == AF_TOMB) { af_set[i] = p; af_count++; return; }
}

static inline void af_del(void *p)
{
    if (!p) return;
    for (size_t i = af_hash(p), k = 0; k < AF_SLOTS && af_set[i]; k++, i = (i + 1) & (AF_SLOTS - 1))
        if (af_set[i] == p) { af_set[i] = AF_TOMB; af_count--; return; }
}

static inline void af_mark(void)
{
    for (size_t i = 0; i < AF_SLOTS; i++) af_set[i] = NULL;
    af_count = 0;
    af_on = 1;
}

static inline size_t af_live(void) { return af_count; }

static inline int af_take(int *armed)
{
    if (*armed <= 0) return 0;
    (*armed)--;
    af_failed++;
    return 1;
}

void *__wrap_malloc(size_t n);
void *__wrap_malloc(size_t n)
{
    if (af_take(&af_fail_malloc)) return NULL;
    void *p = __real_malloc(n);
    af_add(p);
    return p;
}

void *__wrap_calloc(size_t k, size_t n);
void *__wrap_calloc(size_t k, size_t n)
{
    if (af_take(&af_fail_calloc)) return NULL;
    void *p = __real_calloc(k, n);
    af_add(p);
    return p;
}

void *__wrap_realloc(void *old, size_t n);
void *__wrap_realloc(void *old, size_t n)
{
    if (af_take(&af_fail_realloc)) return NULL;
    void *p = __real_realloc(old, n);
    if (p || !n) af_del(old);
    af_add(p);
    return p;
}

void __wrap_free(void *p);
void __wrap_free(void *p)
{
    af_del(p);
    __real_free(p);
}

#endif
