/* hmap: the one string-keyed hash map of the core (open addressing, linear
 * probing, FNV-1a from hash.h, tombstones dropped at the next resize).
 * Used for the room registry, the bus's rooms and in-process stores,
 * presence entries and the lag receipts.
 * Owns: copies of its keys (unless made with hmap_init_borrowed) and its
 * slot array; never the values. */
#ifndef CHATD_HMAP_H
#define CHATD_HMAP_H
#include <stddef.h>

typedef struct hmap_slot { char *key; void *val; } hmap_slot;
typedef struct hmap { hmap_slot *slots; size_t cap, count, tombs; int borrowed; } hmap;

void hmap_init(hmap *m);
/* A map that keeps the caller's key pointers instead of copies (one
 * allocation less per entry): each key must stay valid and unchanged until
 * its entry is deleted or replaced or the map freed; usually it lives in
 * the value. A put on an existing key stores the new key pointer too. */
void hmap_init_borrowed(hmap *m);
void *hmap_get(const hmap *m, const char *key);
int hmap_put(hmap *m, const char *key, void *val);   /* 0 ok, -1 oom; replaces */
void *hmap_del(hmap *m, const char *key);            /* returns old value */
/* Frees the keys and slots (not the values); the map is empty and usable. */
void hmap_free(hmap *m);
/* Calls fn for every entry. When fn returns 1 the entry is removed (fn
 * frees the value itself if it owns it). fn must not otherwise insert into
 * or delete from the map; it may read it. */
void hmap_each(hmap *m, int (*fn)(void *ud, const char *key, void *val), void *ud);
/* Collects up to cap values into out (to walk the map while changing it);
 * returns how many. */
size_t hmap_values(const hmap *m, void **out, size_t cap);
/* Slot-level iteration: for (size_t i = 0; i < m->cap; i++) if (hmap_live(m, i)) ... */
int hmap_live(const hmap *m, size_t i);

#endif
