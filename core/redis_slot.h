/* redis_slot: Redis Cluster key slots.
 * The slot of a key is CRC16 (XMODEM: polynomial 0x1021, init 0) of its
 * hash tag (the part between the first '{' and the next '}', when that part
 * is not empty; else the whole key) modulo 16384. A room's keys all carry
 * the room as hash tag ("chat:{room}:..."), so a room lives on one slot.
 * Slot tags: for every slot, a short string that hashes to it, so a per-slot
 * key ("chat:{~Ab}:unstored") can sit on the same slot as the rooms it
 * indexes. Tags start with '~', a character no room name has, so a slot
 * key never names a room's key. The table is built once (first use) by
 * enumerating "~" + 1..4 characters of [0-9A-Za-z] in a fixed order; the
 * first string found for a slot is its tag (same table on every node).
 * Owns: the tag table (process-wide, read-only after it is built). */
#ifndef CHATD_REDIS_SLOT_H
#define CHATD_REDIS_SLOT_H
#include <stddef.h>
#include <stdint.h>

#define REDIS_SLOTS 16384
#define REDIS_SLOT_TAG_MAX 6   /* '~' + up to 4 characters + NUL */

uint16_t redis_crc16(const char *s, size_t len);
/* the slot of a key (hash tag rule) */
int redis_key_slot(const char *key, size_t len);
/* the slot of the keys of room ("{room}") */
int redis_room_slot(const char *room);
/* the tag of slot (0..16383): its slot is slot; NULL when out of range */
const char *redis_slot_tag(int slot);

/* The per-slot copies of one global key (an index that a sweeper walks):
 * on a Cluster (cluster != 0) "chat:{<tag>}:<name>" for every slot of the
 * ranges a master serves (ranges[i] = {first, last}), in slot order; one
 * Redis: the one key "chat:<name>". *n is their count; NULL (and *n = 0)
 * when out of memory or a Cluster master serves no slot. The strings live in
 * the returned block: free() it once. */
char **redis_slot_keys(int cluster, const uint16_t (*ranges)[2], int nranges, const char *name,
                       size_t *n);

#endif
