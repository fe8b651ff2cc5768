/* bus_map: a small string-keyed hash map (separate chaining, FNV-1a,
 * doubling) used by the bus for rooms, in-process room stores and client
 * ids. Owns its nodes and key copies; values belong to the caller. */
#define _GNU_SOURCE
#include "bus_int.h"
#include <stdlib.h>
#include <string.h>

static size_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) { h ^= (unsigned char)*s; h *= 1099511628211ull; }
    return (size_t)h;
}

void bus_map_init(bus_map *m)
{
    m->slots = NULL;
    m->nslots = 0;
    m->count = 0;
}

static bus_map_node **find(const bus_map *m, const char *key)
{
    if (!m->nslots) return NULL;
    bus_map_node **pp = &m->slots[hash_str(key) & (m->nslots - 1)];
    while (*pp && strcmp((*pp)->key, key) != 0) pp = &(*pp)->next;
    return pp;
}

void *bus_map_get(const bus_map *m, const char *key)
{
    bus_map_node **pp = find(m, key);
    return pp && *pp ? (*pp)->val : NULL;
}

static int grow(bus_map *m)
{
    size_t n = m->nslots ? m->nslots * 2 : 16;
    bus_map_node **s = calloc(n, sizeof *s);
    if (!s) return -1;
    for (size_t i = 0; i < m->nslots; i++) {
        bus_map_node *nd = m->slots[i], *next;
        for (; nd; nd = next) {
            next = nd->next;
            size_t j = hash_str(nd->key) & (n - 1);
            nd->next = s[j];
            s[j] = nd;
        }
    }
    free(m->slots);
    m->slots = s;
    m->nslots = n;
    return 0;
}

int bus_map_put(bus_map *m, const char *key, void *val)
{
    bus_map_node **pp = find(m, key);
    if (pp && *pp) { (*pp)->val = val; return 0; }
    if (m->count + 1 > m->nslots * 3 / 4 && grow(m) != 0) return -1;
    bus_map_node *nd = malloc(sizeof *nd);
    if (!nd) return -1;
    nd->key = strdup(key);
    if (!nd->key) { free(nd); return -1; }
    nd->val = val;
    size_t j = hash_str(key) & (m->nslots - 1);
    nd->next = m->slots[j];
    m->slots[j] = nd;
    m->count++;
    return 0;
}

void *bus_map_del(bus_map *m, const char *key)
{
    bus_map_node **pp = find(m, key);
    if (!pp || !*pp) return NULL;
    bus_map_node *nd = *pp;
    void *v = nd->val;
    *pp = nd->next;
    free(nd->key);
    free(nd);
    m->count--;
    return v;
}

void bus_map_each(const bus_map *m, void (*fn)(void *val, void *arg), void *arg)
{
    for (size_t i = 0; i < m->nslots; i++)
        for (bus_map_node *nd = m->slots[i]; nd; nd = nd->next) fn(nd->val, arg);
}

size_t bus_map_values(const bus_map *m, void **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nslots; i++)
        for (bus_map_node *nd = m->slots[i]; nd && n < cap; nd = nd->next) out[n++] = nd->val;
    return n;
}

void bus_map_clear(bus_map *m)
{
    for (size_t i = 0; i < m->nslots; i++) {
        bus_map_node *nd = m->slots[i], *next;
        for (; nd; nd = next) { next = nd->next; free(nd->key); free(nd); }
    }
    free(m->slots);
    bus_map_init(m);
}
