/* room: the registry of rooms with local members and their membership.
 * A room exists while it has at least one local member; it owns the array
 * of memberships (conn_room) of local connections, in join order, with O(1)
 * removal (each membership knows its index). The bus subscription of a room
 * follows the room's existence (subscribe on create, unsubscribe on free).
 * Owns: room structs and member arrays (not the memberships themselves,
 * which belong to their connection). */
#ifndef CHATD_ROOM_H
#define CHATD_ROOM_H
#include <stddef.h>
#include <stdint.h>
#include "util.h"

struct conn_room;

typedef struct room {
    char name[CHAT_ROOM_MAX + 1];
    struct conn_room **members;
    uint32_t nmembers, cap;
} room;

void room_registry_init(void);
void room_registry_free(void);
room *room_find(const char *name);
/* Finds or creates; *created set to 1 when new. NULL on OOM. */
room *room_get(const char *name, int *created);
int room_add_member(room *r, struct conn_room *cr);   /* sets cr->midx */
/* Removes; returns 1 when the room became empty (and was freed). */
int room_remove_member(room *r, struct conn_room *cr);
size_t room_count(void);

#endif
