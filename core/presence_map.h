/* presence_map: a small string-keyed hash map (chained, power-of-two
 * buckets) used inside the presence module only.
 * Owns: its buckets and a copy of every key; values belong to the caller. */
#ifndef CHATD_PRESENCE_MAP_H
#define CHATD_PRESENCE_MAP_H
#include <stddef.h>

typedef struct pmap_node {
    char *key;
    void *val;
    unsigned hash;
    struct pmap_node *next;
} pmap_node;

typedef struct pmap {
    pmap_node **b;
    size_t nb, n;
} pmap;

void pmap_init(pmap *m);
/* Frees the nodes and keys (not the values). */
void pmap_clear(pmap *m);
void *pmap_get(const pmap *m, const char *key);
/* Inserts or replaces; returns 0, -1 on allocation failure. */
int pmap_put(pmap *m, const char *key, void *val);
/* Removes key; returns its value (NULL when absent). */
void *pmap_del(pmap *m, const char *key);
/* Calls fn for every entry; when fn returns 1 the entry is removed from the
 * map (fn frees the value itself). */
void pmap_each(pmap *m, int (*fn)(void *ud, const char *key, void *val), void *ud);

#endif
