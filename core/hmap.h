/* hmap: the one string-keyed hash map of the core (open addressing, linear
 * probing, FNV-1a from hash.h, tombstones dropped at the next resize).
 * Used for the room registry, the bus's rooms and in-process stores,
 * presence entries and the lag receipts.
 * Owns: copies of its keys (unless made with hmap_init_keyed) and its slot
 * array; never the values. */
#ifndef CHATD_HMAP_H
#define CHATD_HMAP_H
#include <stddef.h>

typedef struct hmap_slot { char *key; void *val; } hmap_slot;
/* slots: hmap_slot pairs; in a keyed map, value pointers alone (void **) */
typedef const char *(*hmap_key_fn)(const void *val);
typedef struct hmap {
    hmap_slot *slots;
    size_t cap, count, tombs;
    int keyed;
    size_t key_off;
    hmap_key_fn key_fn;     /* a keyed map whose values find their key themselves */
} hmap;

void hmap_init(hmap *m);
/* A keyed map: every value holds its own NUL-terminated key at key_off
 * bytes (e.g. offsetof(entry, key)); the map keeps no key copy and its
 * slots are the value pointers alone (8 bytes instead of 16 per slot).
 * hmap_put's key must be the value's own ((char *)val + key_off), and it
 * must not change while the entry is in the map. The slots are not
 * hmap_slot pairs: walk such a map with hmap_each / hmap_values / hmap_range only. */
void hmap_init_keyed(hmap *m, size_t key_off);
/* The same, for values whose key is not at a fixed offset: key_fn(val)
 * returns it (the same string for as long as the entry is in the map). */
void hmap_init_keyfn(hmap *m, hmap_key_fn key_fn);
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
/* A walk in parts: calls fn for every entry in the slots [from, to) (to
 * is clamped to the slot count) and returns the slot count, so a caller can
 * spread a walk of a big map over several turns (e.g. uconns' refresh).
 * fn must not change the map; entries moved by a resize between two parts
 * may be seen twice or not at all. */
size_t hmap_range(const hmap *m, size_t from, size_t to,
                  void (*fn)(void *ud, const char *key, void *val), void *ud);
/* Slot-level iteration: for (size_t i = 0; i < m->cap; i++) if (hmap_live(m, i)) ... */
int hmap_live(const hmap *m, size_t i);

#endif
