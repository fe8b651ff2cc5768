/* presence_mem: the in-process presence store (presence_opts.redis_url NULL).
 * Same data model and transition rules as the Redis scripts: per room a map
 * member -> (expiry, user) and a map user -> (live entry count, name). The
 * table is process-wide and shared by every memory instance (so several
 * "nodes" in one process see one truth, like nodes sharing one Redis); it is
 * freed with the last instance. Expiry uses the monotonic clock.
 * Each entry is one allocation holding its strings; the room maps are keyed
 * maps (hmap_init_keyed) on them (mconn.member, muser.user).
 * Owns: the shared table (refcounted). */
#define _GNU_SOURCE
#include "presence_store.h"
#include "hmap.h"
#include "util.h"
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* member, and its user at member + uoff: the member's own tail when it ends
 * with "|user" (presence.c's "node|conn|user"), else a copy after it */
typedef struct mconn { uint64_t exp; uint32_t uoff; char member[]; } mconn;
/* user, and its name at user + noff: the user itself when they are equal */
typedef struct muser { uint32_t count, noff; char user[]; } muser;
#define MC_USER(c) ((c)->member + (c)->uoff)
#define MU_NAME(u) ((u)->user + (u)->noff)
typedef struct mroom { hmap conns, users; } mroom;

static struct { hmap rooms; int refs; } g_mem;

static void mroom_free_all(mroom *r);

static int conn_free_fn(void *ud, const char *k, void *v)
{
    free(v);
    return 1;
}

static int user_free_fn(void *ud, const char *k, void *v)
{
    free(v);
    return 1;
}

static void mroom_free_all(mroom *r)
{
    hmap_each(&r->conns, conn_free_fn, NULL);
    hmap_each(&r->users, user_free_fn, NULL);
    hmap_free(&r->conns);
    hmap_free(&r->users);
    free(r);
}

static int room_free_fn(void *ud, const char *k, void *v)
{
    mroom_free_all(v);
    return 1;
}

static int mem_ready(pstore *s) { return 1; }

/* The user lost one entry: report leave when it was the last. */
static void user_dec(pstore *s, mroom *r, const char *room, const char *user)
{
    muser *u = hmap_get(&r->users, user);
    if (!u) return;
    if (--u->count > 0) return;
    hmap_del(&r->users, user);
    s->sink->transition(s->ud, room, "leave", user, MU_NAME(u));
    free(u);
}

static void room_drop_if_empty(const char *room, mroom *r)
{
    if (r->conns.count == 0 && r->users.count == 0) {
        hmap_del(&g_mem.rooms, room);
        mroom_free_all(r);
    }
}

static int mem_apply_room(pstore *s, const char *room, const pstore_op *ops, size_t n)
{
    mroom *r = hmap_get(&g_mem.rooms, room);
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return -1;
        hmap_init_keyed(&r->conns, offsetof(mconn, member));
        hmap_init_keyed(&r->users, offsetof(muser, user));
        if (hmap_put(&g_mem.rooms, room, r) < 0) { free(r); return -1; }
    }
    uint64_t exp = mono_ms() + s->ttl_ms;
    for (size_t i = 0; i < n; i++) {
        const pstore_op *o = &ops[i];
        mconn *c = hmap_get(&r->conns, o->member);
        if (o->op == 'u') {
            if (c) { c->exp = exp; continue; }
            size_t ml = strlen(o->member), ul = strlen(o->user);
            int tail = ml > ul && o->member[ml - ul - 1] == '|' && strcmp(o->member + ml - ul, o->user) == 0;
            c = malloc(sizeof *c + ml + 1 + (tail ? 0 : ul + 1));
            if (!c) continue;
            c->exp = exp;
            memcpy(c->member, o->member, ml + 1);
            if (tail) {
                c->uoff = (uint32_t)(ml - ul);
            } else {
                memcpy(c->member + ml + 1, o->user, ul + 1);
                c->uoff = (uint32_t)(ml + 1);
            }
            if (hmap_put(&r->conns, c->member, c) < 0) { free(c); continue; }
            muser *u = hmap_get(&r->users, o->user);
            if (u) { u->count++; continue; }
            const char *nm = o->name ? o->name : o->user;
            size_t nl = strlen(nm);
            int same = strcmp(nm, o->user) == 0;
            u = malloc(sizeof *u + ul + 1 + (same ? 0 : nl + 1));
            if (!u) continue;
            u->count = 1;
            memcpy(u->user, o->user, ul + 1);
            u->noff = 0;
            if (!same) {
                memcpy(u->user + ul + 1, nm, nl + 1);
                u->noff = (uint32_t)(ul + 1);
            }
            if (hmap_put(&r->users, u->user, u) < 0) { free(u); continue; }
            s->sink->transition(s->ud, room, "join", o->user, MU_NAME(u));
        } else if (c) {
            hmap_del(&r->conns, o->member);
            user_dec(s, r, room, MC_USER(c));
            free(c);
        }
    }
    room_drop_if_empty(room, r);
    return 0;
}

static int mem_apply(pstore *s, const pstore_op *ops, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && strcmp(ops[j].room, ops[i].room) == 0) j++;
        mem_apply_room(s, ops[i].room, ops + i, j - i);
        i = j;
    }
    return 0;
}

typedef struct sweep_ctx { pstore *s; mroom *r; const char *room; uint64_t now; } sweep_ctx;

static int sweep_conn_fn(void *ud, const char *k, void *v)
{
    sweep_ctx *x = ud;
    mconn *c = v;
    if (c->exp >= x->now) return 0;
    user_dec(x->s, x->r, x->room, MC_USER(c));
    free(c);
    return 1;
}

static int sweep_room_fn(void *ud, const char *room, void *v)
{
    sweep_ctx *x = ud;
    mroom *r = v;
    x->r = r;
    x->room = room;
    hmap_each(&r->conns, sweep_conn_fn, x);
    if (r->conns.count == 0 && r->users.count == 0) { mroom_free_all(r); return 1; }
    return 0;
}

static void mem_sweep(pstore *s)
{
    sweep_ctx x = { s, NULL, NULL, mono_ms() };
    hmap_each(&g_mem.rooms, sweep_room_fn, &x);
}

typedef struct list_ctx { presence_user *u; size_t n, cap; } list_ctx;

static int list_fn(void *ud, const char *user, void *v)
{
    list_ctx *l = ud;
    muser *u = v;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        presence_user *nu = realloc(l->u, cap * sizeof *nu);
        if (!nu) return 0;
        l->u = nu;
        l->cap = cap;
    }
    l->u[l->n].user = user;
    l->u[l->n].name = MU_NAME(u);
    l->n++;
    return 0;
}

static int mem_list(pstore *s, const char *room, void *req)
{
    list_ctx l = { NULL, 0, 0 };
    mroom *r = hmap_get(&g_mem.rooms, room);
    if (r) hmap_each(&r->users, list_fn, &l);
    s->sink->list_done(s->ud, req, 0, l.u, l.n);
    free(l.u);
    return 0;
}

static void mem_free(pstore *s)
{
    free(s);
    if (--g_mem.refs == 0) {
        hmap_each(&g_mem.rooms, room_free_fn, NULL);
        hmap_free(&g_mem.rooms);
    }
}

static const pstore_vt mem_vt = { mem_ready, mem_apply, mem_sweep, mem_list, mem_free };

pstore *pstore_mem_new(uint32_t ttl_ms, const pstore_sink *sink, void *ud,
                       char *err, size_t errlen)
{
    pstore *s = calloc(1, sizeof *s);
    if (!s) { snprintf(err, errlen, "out of memory"); return NULL; }
    s->vt = &mem_vt;
    s->sink = sink;
    s->ud = ud;
    s->ttl_ms = ttl_ms;
    if (g_mem.refs++ == 0) hmap_init(&g_mem.rooms);
    return s;
}
