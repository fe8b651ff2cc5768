/* bans: see bans.h. A map user -> small array of bans (a user rarely has
 * more than a few); expired entries are dropped when met and by
 * bans_prune (the server's tick). */
#define _GNU_SOURCE
#include "bans.h"
#include "hmap.h"
#include "metrics.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ubans {
    ban *v;
    size_t n, cap;
} ubans;

static hmap g_bans;
static int g_init;
static unsigned g_metric; /* metrics_register_due */
/* loads in flight, and the keys put or lifted meanwhile ("user\nroom";
 * "user\n\n*" for a lift of every ban of user) */
static int g_loads;
static hmap g_changed;

static void note_change(const char *user, const char *room)
{
    if (!g_loads) return;
    char k[BAN_USER_MAX + CHAT_ROOM_MAX + 8];
    snprintf(k, sizeof k, "%s\n%s", user, room ? room : "\n*");
    hmap_put(&g_changed, k, (void *)1);
}

static int changed(const char *user, const char *room)
{
    if (!g_loads) return 0;
    char k[BAN_USER_MAX + CHAT_ROOM_MAX + 8];
    snprintf(k, sizeof k, "%s\n%s", user, room);
    if (hmap_get(&g_changed, k)) return 1;
    snprintf(k, sizeof k, "%s\n\n*", user);
    return hmap_get(&g_changed, k) != NULL;
}

static double active_now(void *ud)
{
    (void)ud;
    return (double)bans_prune(now_ms());
}

void bans_init(void)
{
    if (g_init) return;
    hmap_init(&g_bans);
    hmap_init(&g_changed);
    if (metrics_register_due(&g_metric))
        metrics_gauge_fn("chat_bans_active", "Bans in force on this node (server API), every room and per room",
                         NULL, active_now, NULL);
    g_init = 1;
}

static int free_one(void *ud, const char *key, void *val)
{
    ubans *u = val;
    free(u->v);
    free(u);
    return 0;
}

void bans_free(void)
{
    if (!g_init) return;
    hmap_each(&g_bans, free_one, NULL);
    hmap_free(&g_bans);
    hmap_free(&g_changed);
    g_loads = 0;
    g_init = 0;
}

static void drop_at(ubans *u, size_t i)
{
    u->v[i] = u->v[--u->n];
}

/* drops the user's expired bans; frees the entry when none is left (then
 * returns NULL) */
static ubans *get_live(const char *user, uint64_t now_ms)
{
    ubans *u = hmap_get(&g_bans, user);
    if (!u) return NULL;
    for (size_t i = 0; i < u->n;)
        if (u->v[i].until_ms <= now_ms) drop_at(u, i);
        else i++;
    if (u->n) return u;
    hmap_del(&g_bans, user);
    free(u->v);
    free(u);
    return NULL;
}

int bans_put(const char *user, const char *room, uint64_t until_ms, const char *reason)
{
    if (!g_init) bans_init();
    if (!user || !*user || strlen(user) > BAN_USER_MAX) return -1;
    if (!room) room = "";
    if (*room && !room_name_valid(room, strlen(room))) return -1;
    note_change(user, room);
    ubans *u = hmap_get(&g_bans, user);
    if (!u) {
        u = calloc(1, sizeof *u);
        if (!u || hmap_put(&g_bans, user, u) != 0) { free(u); return -1; }
    }
    ban *b = NULL;
    for (size_t i = 0; i < u->n && !b; i++)
        if (strcmp(u->v[i].room, room) == 0) b = &u->v[i];
    if (!b) {
        if (u->n == u->cap) {
            size_t nc = u->cap ? u->cap * 2 : 2;
            ban *nv = realloc(u->v, nc * sizeof *nv);
            if (!nv) return -1;
            u->v = nv;
            u->cap = nc;
        }
        b = &u->v[u->n++];
    }
    snprintf(b->room, sizeof b->room, "%s", room);
    b->until_ms = until_ms;
    /* whole UTF-8 characters only (the reason becomes a close reason) */
    size_t rl = reason ? utf8_cut(reason, BAN_REASON_MAX) : 0;
    memcpy(b->reason, reason ? reason : "", rl);
    b->reason[rl] = 0;
    return 0;
}

int bans_lift(const char *user, const char *room, uint64_t now_ms)
{
    if (!g_init || !user) return 0;
    note_change(user, room);
    ubans *u = get_live(user, now_ms);
    if (!u) return 0;
    int n = 0;
    for (size_t i = 0; i < u->n;) {
        if (!room || strcmp(u->v[i].room, room) == 0) { drop_at(u, i); n++; }
        else i++;
    }
    if (!u->n) {
        hmap_del(&g_bans, user);
        free(u->v);
        free(u);
    }
    return n;
}

const ban *bans_match(const char *user, const char *room, uint64_t now_ms)
{
    if (!g_init || !user) return NULL;
    ubans *u = get_live(user, now_ms);
    if (!u) return NULL;
    for (size_t i = 0; i < u->n; i++)
        if (!u->v[i].room[0]) return &u->v[i];
    for (size_t i = 0; room && i < u->n; i++)
        if (strcmp(u->v[i].room, room) == 0) return &u->v[i];
    return NULL;
}

typedef struct prune_ctx { uint64_t now; size_t active; } prune_ctx;

static int prune_one(void *ud, const char *key, void *val)
{
    prune_ctx *p = ud;
    ubans *u = val;
    for (size_t i = 0; i < u->n;)
        if (u->v[i].until_ms <= p->now) drop_at(u, i);
        else i++;
    p->active += u->n;
    if (u->n) return 0;
    free(u->v);
    free(u);
    return 1;
}

size_t bans_prune(uint64_t now_ms)
{
    if (!g_init) return 0;
    prune_ctx p = {now_ms, 0};
    hmap_each(&g_bans, prune_one, &p);
    return p.active;
}

/* ---- loads from a shared store ---- */

void bans_load_begin(void)
{
    if (!g_init) bans_init();
    g_loads++;
}

static void load_end(void)
{
    if (g_loads > 0 && --g_loads == 0) {
        hmap_free(&g_changed);
        hmap_init(&g_changed);
    }
}

void bans_load_abort(void) { load_end(); }

typedef struct drop_ctx { hmap *snap; } drop_ctx;

/* drops this node's bans the snapshot does not have (unless touched since) */
static int drop_missing(void *ud, const char *user, void *val)
{
    drop_ctx *d = ud;
    ubans *u = val;
    char k[BAN_USER_MAX + CHAT_ROOM_MAX + 8];
    for (size_t i = 0; i < u->n;) {
        snprintf(k, sizeof k, "%s\n%s", user, u->v[i].room);
        if (!hmap_get(d->snap, k) && !changed(user, u->v[i].room)) drop_at(u, i);
        else i++;
    }
    if (u->n) return 0;
    free(u->v);
    free(u);
    return 1;
}

void bans_load_apply(const ban_entry *e, size_t n)
{
    if (!g_init) bans_init();
    hmap snap;
    hmap_init(&snap);
    char k[BAN_USER_MAX + CHAT_ROOM_MAX + 8];
    for (size_t i = 0; i < n; i++) {
        snprintf(k, sizeof k, "%s\n%s", e[i].user, e[i].room);
        hmap_put(&snap, k, (void *)1);
    }
    drop_ctx d = {&snap};
    hmap_each(&g_bans, drop_missing, &d);
    int loads = g_loads;
    for (size_t i = 0; i < n; i++) {
        if (changed(e[i].user, e[i].room)) continue;
        g_loads = 0; /* not a change of its own */
        bans_put(e[i].user, e[i].room, e[i].until_ms, e[i].reason);
        g_loads = loads;
    }
    hmap_free(&snap);
    load_end();
}
