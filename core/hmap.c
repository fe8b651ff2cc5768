#define _GNU_SOURCE
/* hmap: see hmap.h. Deleted slots become tombstones (key == TOMB) and are
 * dropped on the next resize. */
#include "hmap.h"
#include "hash.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static char tomb_key;
#define TOMB (&tomb_key)

void hmap_init(hmap *m) { memset(m, 0, sizeof *m); }

void hmap_init_borrowed(hmap *m)
{
    memset(m, 0, sizeof *m);
    m->borrowed = 1;
}

static void free_key(const hmap *m, char *k)
{
    if (!m->borrowed) free(k);
}

int hmap_live(const hmap *m, size_t i) { return m->slots[i].key && m->slots[i].key != TOMB; }

static hmap_slot *find(const hmap *m, const char *key)
{
    if (!m->cap) return NULL;
    size_t i = hash_str(key) & (m->cap - 1);
    for (;;) {
        hmap_slot *s = &m->slots[i];
        if (!s->key) return NULL;
        if (s->key != TOMB && strcmp(s->key, key) == 0) return s;
        i = (i + 1) & (m->cap - 1);
    }
}

void *hmap_get(const hmap *m, const char *key)
{
    hmap_slot *s = find(m, key);
    return s ? s->val : NULL;
}

static int resize(hmap *m, size_t ncap)
{
    hmap_slot *ns = calloc(ncap, sizeof *ns);
    if (!ns) return -1;
    for (size_t i = 0; i < m->cap; i++) {
        if (!hmap_live(m, i)) continue;
        size_t j = hash_str(m->slots[i].key) & (ncap - 1);
        while (ns[j].key) j = (j + 1) & (ncap - 1);
        ns[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    m->tombs = 0;
    return 0;
}

int hmap_put(hmap *m, const char *key, void *val)
{
    hmap_slot *s = find(m, key);
    if (s) {
        if (m->borrowed) s->key = (char *)key;
        s->val = val;
        return 0;
    }
    if ((m->count + m->tombs + 1) * 4 >= m->cap * 3) {
        size_t ncap = m->cap ? m->cap : 16;
        while ((m->count + 1) * 2 >= ncap) ncap *= 2;
        if (resize(m, ncap) < 0) return -1;
    }
    char *k = m->borrowed ? (char *)key : strdup(key);
    if (!k) return -1;
    size_t i = hash_str(key) & (m->cap - 1);
    while (m->slots[i].key && m->slots[i].key != TOMB) i = (i + 1) & (m->cap - 1);
    if (m->slots[i].key == TOMB) m->tombs--;
    m->slots[i].key = k;
    m->slots[i].val = val;
    m->count++;
    return 0;
}

void *hmap_del(hmap *m, const char *key)
{
    hmap_slot *s = find(m, key);
    if (!s) return NULL;
    void *v = s->val;
    free_key(m, s->key);
    s->key = TOMB;
    s->val = NULL;
    m->count--;
    m->tombs++;
    return v;
}

void hmap_free(hmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        if (hmap_live(m, i)) free_key(m, m->slots[i].key);
    free(m->slots);
    int borrowed = m->borrowed;
    memset(m, 0, sizeof *m);
    m->borrowed = borrowed;
}

void hmap_each(hmap *m, int (*fn)(void *ud, const char *key, void *val), void *ud)
{
    for (size_t i = 0; i < m->cap; i++) {
        hmap_slot *s = &m->slots[i];
        if (!hmap_live(m, i)) continue;
        if (fn(ud, s->key, s->val) == 1) {   /* a borrowed key may be gone now */
            free_key(m, s->key);
            s->key = TOMB;
            s->val = NULL;
            m->count--;
            m->tombs++;
        }
    }
}

size_t hmap_values(const hmap *m, void **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < m->cap && n < cap; i++)
        if (hmap_live(m, i)) out[n++] = m->slots[i].val;
    return n;
}
