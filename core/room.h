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
#include "msg.h"
#include "util.h"

struct conn;
struct room;

/* A local connection's membership of a room: kept by the connection
 * (conn.rooms), listed by the room (room.members, O(1) removal by midx). */
typedef struct conn_room {
    struct conn *c;
    struct room *r;
    uint32_t midx;          /* index in r->members */
    int live;               /* 0 while the join/replay is in progress */
    uint64_t last_seq;      /* last seq delivered to this connection */
    msg **held;             /* live frames that arrived while joining */
    uint32_t nheld, capheld;
    void *op;               /* the pending join (chat_join.c's, opaque here), cancelled on leave */
} conn_room;

typedef struct room {
    char name[CHAT_ROOM_MAX + 1];
    conn_room **members;
    uint32_t nmembers, cap;
} room;

void room_registry_init(void);
void room_registry_free(void);
room *room_find(const char *name);
/* Finds or creates; *created set to 1 when new. NULL on OOM. */
room *room_get(const char *name, int *created);
int room_add_member(room *r, conn_room *cr);   /* sets cr->midx */
/* Removes; returns 1 when the room became empty (and was freed). */
int room_remove_member(room *r, conn_room *cr);
size_t room_count(void);

#endif
