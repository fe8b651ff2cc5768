/* hmap: a string-keyed hash map (open addressing, linear probing, FNV-1a)
 * used for the room registry. Owns: copies of its keys, not the values. */
#ifndef CHATD_HMAP_H
#define CHATD_HMAP_H
#include <stddef.h>

typedef struct hmap_slot { char *key; void *val; } hmap_slot;
typedef struct hmap { hmap_slot *slots; size_t cap, count, tombs; } hmap;

void hmap_init(hmap *m);
void *hmap_get(const hmap *m, const char *key);
int hmap_put(hmap *m, const char *key, void *val);   /* 0 ok, -1 oom; replaces */
void *hmap_del(hmap *m, const char *key);            /* returns old value */
void hmap_free(hmap *m);
/* Iteration: for (size_t i = 0; i < m->cap; i++) if (hmap_live(m, i)) ... */
int hmap_live(const hmap *m, size_t i);

#endif
