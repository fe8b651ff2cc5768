/* presence_map: see presence_map.h. FNV-1a hashing, doubling at load 1. */
#define _GNU_SOURCE
#include "presence_map.h"
#include <stdlib.h>
#include <string.h>

static unsigned pm_hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++) { h ^= (unsigned char)*s; h *= 16777619u; }
    return h;
}

void pmap_init(pmap *m) { m->b = NULL; m->nb = 0; m->n = 0; }

void pmap_clear(pmap *m)
{
    for (size_t i = 0; i < m->nb; i++) {
        pmap_node *x = m->b[i];
        while (x) { pmap_node *nx = x->next; free(x->key); free(x); x = nx; }
    }
    free(m->b);
    pmap_init(m);
}

static pmap_node **pm_slot(const pmap *m, const char *key, unsigned h)
{
    pmap_node **pp = &m->b[h & (m->nb - 1)];
    while (*pp && ((*pp)->hash != h || strcmp((*pp)->key, key) != 0)) pp = &(*pp)->next;
    return pp;
}

void *pmap_get(const pmap *m, const char *key)
{
    if (!m->nb) return NULL;
    pmap_node **pp = pm_slot(m, key, pm_hash(key));
    return *pp ? (*pp)->val : NULL;
}

static int pm_grow(pmap *m)
{
    size_t nb = m->nb ? m->nb * 2 : 16;
    pmap_node **b = calloc(nb, sizeof *b);
    if (!b) return -1;
    for (size_t i = 0; i < m->nb; i++) {
        pmap_node *x = m->b[i];
        while (x) {
            pmap_node *nx = x->next;
            x->next = b[x->hash & (nb - 1)];
            b[x->hash & (nb - 1)] = x;
            x = nx;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
    return 0;
}

int pmap_put(pmap *m, const char *key, void *val)
{
    if (m->n >= m->nb && pm_grow(m) < 0) return -1;
    unsigned h = pm_hash(key);
    pmap_node **pp = pm_slot(m, key, h);
    if (*pp) { (*pp)->val = val; return 0; }
    pmap_node *x = malloc(sizeof *x);
    if (!x) return -1;
    x->key = strdup(key);
    if (!x->key) { free(x); return -1; }
    x->val = val;
    x->hash = h;
    x->next = NULL;
    *pp = x;
    m->n++;
    return 0;
}

void *pmap_del(pmap *m, const char *key)
{
    if (!m->nb) return NULL;
    pmap_node **pp = pm_slot(m, key, pm_hash(key));
    pmap_node *x = *pp;
    if (!x) return NULL;
    void *v = x->val;
    *pp = x->next;
    free(x->key);
    free(x);
    m->n--;
    return v;
}

void pmap_each(pmap *m, int (*fn)(void *ud, const char *key, void *val), void *ud)
{
    for (size_t i = 0; i < m->nb; i++) {
        pmap_node **pp = &m->b[i];
        while (*pp) {
            pmap_node *x = *pp;
            if (fn(ud, x->key, x->val)) {
                *pp = x->next;
                free(x->key);
                free(x);
                m->n--;
            } else {
                pp = &x->next;
            }
        }
    }
}
