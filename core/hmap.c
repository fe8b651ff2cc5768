#define _GNU_SOURCE
/* hmap: see hmap.h. Deleted slots become tombstones and are dropped on the
 * next resize. Two layouts: an ordinary map's slots are (key copy, value)
 * pairs; a keyed map's slots are the values alone (8 bytes), each value
 * holding its key at key_off (or giving it through key_fn). A tombstone is
 * the key TOMB (ordinary) or the value TOMB (keyed). */
#include "hmap.h"
#include "hash.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static char tomb_key;
#define TOMB (&tomb_key)
#define VSLOTS(m) ((void **)(void *)(m)->slots)

void hmap_init(hmap *m) { memset(m, 0, sizeof *m); }

void hmap_init_keyed(hmap *m, size_t key_off)
{
    memset(m, 0, sizeof *m);
    m->keyed = 1;
    m->key_off = key_off;
}

void hmap_init_keyfn(hmap *m, hmap_key_fn key_fn)
{
    memset(m, 0, sizeof *m);
    m->keyed = 1;
    m->key_fn = key_fn;
}

/* What slot i holds: NULL (empty), TOMB, or a live key / value. */
static const void *mark(const hmap *m, size_t i)
{
    return m->keyed ? VSLOTS(m)[i] : (const void *)m->slots[i].key;
}

int hmap_live(const hmap *m, size_t i)
{
    const void *k = mark(m, i);
    return k && k != TOMB;
}

static const char *key_of(const hmap *m, size_t i)
{
    if (!m->keyed) return m->slots[i].key;
    return m->key_fn ? m->key_fn(VSLOTS(m)[i]) : (const char *)VSLOTS(m)[i] + m->key_off;
}

static void *val_of(const hmap *m, size_t i)
{
    return m->keyed ? VSLOTS(m)[i] : m->slots[i].val;
}

/* Index of key's live slot, or (size_t)-1. */
static size_t find(const hmap *m, const char *key)
{
    if (!m->cap) return (size_t)-1;
    size_t i = hash_str(key) & (m->cap - 1);
    for (;;) {
        const void *k = mark(m, i);
        if (!k) return (size_t)-1;
        if (k != TOMB && strcmp(key_of(m, i), key) == 0) return i;
        i = (i + 1) & (m->cap - 1);
    }
}

void *hmap_get(const hmap *m, const char *key)
{
    size_t i = find(m, key);
    return i == (size_t)-1 ? NULL : val_of(m, i);
}

/* Slot i becomes a tombstone (its key copy freed). */
static void bury(hmap *m, size_t i)
{
    if (m->keyed) {
        VSLOTS(m)[i] = TOMB;
    } else {
        free(m->slots[i].key);
        m->slots[i].key = TOMB;
        m->slots[i].val = NULL;
    }
    m->count--;
    m->tombs++;
}

static int resize(hmap *m, size_t ncap)
{
    size_t w = m->keyed ? sizeof(void *) : sizeof(hmap_slot);
    void *mem = calloc(ncap, w);
    if (!mem) return -1;
    hmap n = *m;
    n.slots = mem;
    n.cap = ncap;
    for (size_t i = 0; i < m->cap; i++) {
        if (!hmap_live(m, i)) continue;
        size_t j = hash_str(key_of(m, i)) & (ncap - 1);
        while (mark(&n, j)) j = (j + 1) & (ncap - 1);
        if (m->keyed) VSLOTS(&n)[j] = VSLOTS(m)[i];
        else n.slots[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = mem;
    m->cap = ncap;
    m->tombs = 0;
    return 0;
}

int hmap_put(hmap *m, const char *key, void *val)
{
    size_t i = find(m, key);
    if (i != (size_t)-1) {
        if (m->keyed) VSLOTS(m)[i] = val;
        else m->slots[i].val = val;
        return 0;
    }
    if ((m->count + m->tombs + 1) * 4 >= m->cap * 3) {
        size_t ncap = m->cap ? m->cap : 16;
        while ((m->count + 1) * 2 >= ncap) ncap *= 2;
        if (resize(m, ncap) < 0) return -1;
    }
    char *k = NULL;
    if (!m->keyed && !(k = strdup(key))) return -1;
    i = hash_str(key) & (m->cap - 1);
    while (hmap_live(m, i)) i = (i + 1) & (m->cap - 1);
    if (mark(m, i) == TOMB) m->tombs--;
    if (m->keyed) {
        VSLOTS(m)[i] = val;
    } else {
        m->slots[i].key = k;
        m->slots[i].val = val;
    }
    m->count++;
    return 0;
}

void *hmap_del(hmap *m, const char *key)
{
    size_t i = find(m, key);
    if (i == (size_t)-1) return NULL;
    void *v = val_of(m, i);
    bury(m, i);
    return v;
}

void hmap_free(hmap *m)
{
    if (!m->keyed)
        for (size_t i = 0; i < m->cap; i++)
            if (hmap_live(m, i)) free(m->slots[i].key);
    free(m->slots);
    int keyed = m->keyed;
    size_t off = m->key_off;
    hmap_key_fn fn = m->key_fn;
    memset(m, 0, sizeof *m);
    m->keyed = keyed;
    m->key_off = off;
    m->key_fn = fn;
}

void hmap_each(hmap *m, int (*fn)(void *ud, const char *key, void *val), void *ud)
{
    for (size_t i = 0; i < m->cap; i++) {
        if (!hmap_live(m, i)) continue;
        /* fn may free a keyed map's value (and its key) when it returns 1 */
        if (fn(ud, key_of(m, i), val_of(m, i)) == 1) bury(m, i);
    }
}

size_t hmap_values(const hmap *m, void **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < m->cap && n < cap; i++)
        if (hmap_live(m, i)) out[n++] = val_of(m, i);
    return n;
}

size_t hmap_range(const hmap *m, size_t from, size_t to,
                  void (*fn)(void *ud, const char *key, void *val), void *ud)
{
    if (to > m->cap) to = m->cap;
    for (size_t i = from; i < to; i++)
        if (hmap_live(m, i)) fn(ud, key_of(m, i), val_of(m, i));
    return m->cap;
}
