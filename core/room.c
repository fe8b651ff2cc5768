/* room: see room.h. */
#include "room.h"
#include "hmap.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static hmap g_rooms;

void room_registry_init(void) { hmap_init(&g_rooms); }

void room_registry_free(void)
{
    for (size_t i = 0; i < g_rooms.cap; i++)
        if (hmap_live(&g_rooms, i)) {
            room *r = g_rooms.slots[i].val;
            free(r->members);
            free(r);
        }
    hmap_free(&g_rooms);
}

room *room_find(const char *name) { return hmap_get(&g_rooms, name); }
size_t room_count(void) { return g_rooms.count; }

room *room_get(const char *name, int *created)
{
    room *r = hmap_get(&g_rooms, name);
    *created = 0;
    if (r) return r;
    r = calloc(1, sizeof *r);
    if (!r) return NULL;
    snprintf(r->name, sizeof r->name, "%s", name);
    if (hmap_put(&g_rooms, r->name, r) < 0) { free(r); return NULL; }
    *created = 1;
    return r;
}

int room_add_member(room *r, conn_room *cr)
{
    if (r->nmembers == r->cap) {
        uint32_t nc = r->cap ? r->cap * 2 : 8;
        conn_room **nm = realloc(r->members, sizeof *nm * nc);
        if (!nm) return -1;
        r->members = nm;
        r->cap = nc;
    }
    cr->midx = r->nmembers;
    r->members[r->nmembers++] = cr;
    return 0;
}

int room_remove_member(room *r, conn_room *cr)
{
    uint32_t i = cr->midx;
    if (i < r->nmembers && r->members[i] == cr) {
        r->members[i] = r->members[--r->nmembers];
        r->members[i]->midx = i;
    }
    if (r->nmembers) return 0;
    hmap_del(&g_rooms, r->name);
    free(r->members);
    free(r);
    return 1;
}
