/* bus_order: the one ordered-delivery path of both bus modes.
 * Owns, per subscribed room: the last seq delivered to on_message, the
 * messages received ahead of it (held, ascending), and the gap fill (one
 * range fetch from the recent buffer at a time). Guarantees on_message sees
 * each room's seqs strictly increasing and contiguous, once each; what the
 * buffer no longer has is reported through on_gap and skipped. */
#define _GNU_SOURCE
#include "bus_int.h"
#include "log.h"
#include <stdlib.h>
#include <string.h>

#define MOD "bus"

int bus_parse_entry(const char *s, size_t len, bus_entry *e)
{
    const char *nl = s ? memchr(s, '\n', len) : NULL;
    uint64_t v = 0;
    if (!nl || seq_parse(s, (size_t)(nl - s), &v) != 0 || v < 1) return -1;
    size_t i = (size_t)(nl - s);
    e->seq = v;
    e->tail = s + i + 1;
    e->len = len - i - 1;
    return 0;
}

static void held_clear(bus_room *room)
{
    bus_held *h = room->held, *n;
    for (; h; h = n) { n = h->next; free(h); }
    room->held = NULL;
    room->nheld = 0;
}

static void held_insert(bus_room *room, uint64_t seq, const char *tail, size_t len)
{
    bus_held **pp = &room->held;
    while (*pp && (*pp)->seq < seq) pp = &(*pp)->next;
    if (*pp && (*pp)->seq == seq) return; /* duplicate */
    bus_held *h = malloc(sizeof *h + len + 1);
    if (!h) {
        /* the fill will fetch it from the recent buffer */
        LOGE(MOD, "out of memory holding %s seq %llu", room->name, (unsigned long long)seq);
        return;
    }
    h->seq = seq;
    h->len = len;
    memcpy(h->tail, tail, len);
    h->tail[len] = 0;
    h->next = *pp;
    *pp = h;
    room->nheld++;
}

void bus_order_reset(bus *b, bus_room *room, int keep_last)
{
    held_clear(room);
    room->synced = 0;
    room->adopt = 0;
    room->fetching = 0;
    room->sub_id = ++b->sub_counter;
    if (!keep_last) {
        room->have_last = 0;
        room->last = 0;
    }
    room->target = room->last;
}

/* 1 while room still wants delivery under subscription sub_id */
static int live(bus *b, bus_room *room, uint64_t sub_id)
{
    return !b->freeing && room->refs > 0 && room->synced && room->sub_id == sub_id;
}

static void deliver(bus *b, bus_room *room, uint64_t seq, const char *tail, size_t len)
{
    room->last = seq;
    if (b->h.on_message) b->h.on_message(b->ud, room->name, seq, tail, len);
}

static void gap(bus *b, bus_room *room, uint64_t from, uint64_t to)
{
    room->last = to;
    metric_inc(b->m.gaps_lost);
    LOGW(MOD, "room %s lost seq %llu..%llu (recent buffer no longer has them)", room->name,
         (unsigned long long)from, (unsigned long long)to);
    if (b->h.on_gap) b->h.on_gap(b->ud, room->name, from, to);
}

/* Delivers held messages that are next in line, then starts a fill when
 * something between last and the next known seq is missing. */
/* Synced with no head (see bus_order_synced): the first message decides. */
static void adopt(bus_room *room, uint64_t seq)
{
    room->adopt = 0;
    room->have_last = 1;
    room->last = room->target = seq - 1;
}

static void advance(bus *b, bus_room *room)
{
    uint64_t sub = room->sub_id;
    if (room->adopt && room->held) adopt(room, room->held->seq);
    room->busy++;
    while (live(b, room, sub) && !room->fetching) {
        bus_held *h = room->held;
        if (h && h->seq <= room->last) {
            room->held = h->next;
            room->nheld--;
            free(h);
            continue;
        }
        if (h && h->seq == room->last + 1) {
            room->held = h->next;
            room->nheld--;
            deliver(b, room, h->seq, h->tail, h->len);
            free(h);
            continue;
        }
        uint64_t need = h ? h->seq - 1 : room->target;
        if (room->last < need) {
            room->fetching = 1;
            if (b->be->fetch(b, room, room->last + 1, need) != 0)
                room->fetching = 0; /* Redis is going down: resync later */
        }
        break;
    }
    room->busy--;
    bus_room_maybe_free(b, room);
}

void bus_order_incoming(bus *b, const char *name, uint64_t seq, const char *tail, size_t len)
{
    if (b->freeing) return;
    bus_room *room = bus_room_get(b, name);
    if (!room || room->refs == 0) return;
    if (room->synced && room->adopt) adopt(room, seq);
    if (room->synced && seq <= room->last) return; /* already delivered */
    if (room->synced && !room->fetching && !room->held && seq == room->last + 1) {
        uint64_t sub = room->sub_id;
        room->busy++;
        deliver(b, room, seq, tail, len);
        room->busy--;
        if (live(b, room, sub)) advance(b, room);
        else bus_room_maybe_free(b, room);
        return;
    }
    held_insert(room, seq, tail, len);
    if (room->synced) advance(b, room);
}

void bus_order_synced(bus *b, const char *name, uint64_t sub_id, uint64_t head, int known)
{
    if (b->freeing) return;
    bus_room *room = bus_room_get(b, name);
    if (!room || room->sub_id != sub_id || room->refs == 0) return;
    if (!known) {
        /* no seq key: nothing was published since the subscription was
         * confirmed (a publish creates the key before it PUBLISHes), so
         * every later message arrives on it; the first one sets last */
        if (!room->have_last) room->adopt = 1;
        head = room->last;
    } else if (!room->have_last) {
        room->have_last = 1;
        room->last = head;
    } else if (head < room->last) {
        /* Redis lost data and the head could not be raised (the backend
         * raises it to last at the resync): never go back, seqs <= last
         * were delivered already; later ones are delivered as usual */
        LOGE(MOD, "room %s: seq went back from %llu to %llu (Redis lost data); keeping %llu",
             room->name, (unsigned long long)room->last, (unsigned long long)head,
             (unsigned long long)room->last);
        head = room->last;
    }
    room->target = head;
    room->synced = 1;
    room->busy++;
    bus_room_run_waiting(b, room, 0);
    room->busy--;
    advance(b, room);
    if (b->be->progress) b->be->progress(b);
}

void bus_order_fetched(bus *b, const char *name, uint64_t sub_id, int ok, uint64_t from,
                       uint64_t to, const bus_entry *e, size_t n)
{
    (void)from;
    if (b->freeing) return;
    bus_room *room = bus_room_get(b, name);
    if (!room || room->sub_id != sub_id) return;
    room->fetching = 0;
    if (!ok) return; /* the connection is down; the resync starts over */
    int filled = 0;
    room->busy++;
    for (size_t i = 0; i < n && live(b, room, sub_id); i++) {
        if (e[i].seq <= room->last) continue;
        if (e[i].seq > to) break;
        if (e[i].seq > room->last + 1) gap(b, room, room->last + 1, e[i].seq - 1);
        if (!live(b, room, sub_id)) break;
        deliver(b, room, e[i].seq, e[i].tail, e[i].len);
        filled = 1;
    }
    if (filled) metric_inc(b->m.gaps_filled);
    if (live(b, room, sub_id) && room->last < to) gap(b, room, room->last + 1, to);
    room->busy--;
    advance(b, room);
    if (b->be->progress && !b->freeing) b->be->progress(b);
}

static int caught_up_cb(void *arg, const char *key, void *val)
{
    bus_room *room = val;
    int *ok = arg;
    if (room->refs > 0 && (!room->synced || room->fetching || room->last < room->target))
        *ok = 0;
    return 0;
}

int bus_order_all_caught_up(bus *b)
{
    int ok = 1;
    hmap_each(&b->rooms, caught_up_cb, &ok);
    return ok;
}
