/* presence_mem: the in-process presence store (presence_opts.redis_url NULL).
 * Same data model and transition rules as the Redis scripts: per room a map
 * member -> (expiry, user) and a map user -> (live entry count, name). The
 * table is process-wide and shared by every memory instance (so several
 * "nodes" in one process see one truth, like nodes sharing one Redis); it is
 * freed with the last instance. Expiry uses the monotonic clock.
 * Records: one mrec per entry, which also holds its user's count and name
 * while it is the user's record in the room's user map (the user's first
 * entry; when it goes and others stay, the count moves to a record of its
 * own). A record lives in the slot presence.c keeps in its live entry and
 * points at that entry's strings (no copy, no allocation), or, when the
 * upsert brought no slot or the slot was released while the store still
 * needed the entry (the node freed, a remove not sent), in a block of its
 * own with copies of its strings. The room maps are keyed maps
 * (hmap_init_keyfn) on the record's member and user.
 * Owns: the shared table (refcounted), the records it allocated. */
#define _GNU_SOURCE
#include "presence_store.h"
#include "hmap.h"
#include "util.h"
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* An entry (in conns) and/or a user's count (in users). Strings at signed
 * offsets from the record: the member (a user-only record: the user), the
 * user at member + uoff, the name. */
typedef struct mrec {
    uint64_t exp;
    int32_t moff, noff;
    uint32_t count;         /* the user's live entries, while in users */
    uint16_t uoff;
    uint8_t owned;          /* malloc'd here (else: a slot of presence.c's entry) */
    uint8_t is_conn;        /* in conns (else: a user-only record) */
} mrec;
#define MR_MEMBER(r) ((const char *)(r) + (r)->moff)
#define MR_USER(r) (MR_MEMBER(r) + (r)->uoff)
#define MR_NAME(r) ((const char *)(r) + (r)->noff)
typedef struct mroom { hmap conns, users; } mroom;

static struct { hmap rooms; int refs; } g_mem;

static const char *member_key(const void *v) { return MR_MEMBER((const mrec *)v); }
static const char *user_key(const void *v) { return MR_USER((const mrec *)v); }

static void mroom_free_all(mroom *r);

static int rec_free_fn(void *ud, const char *k, void *v)
{
    (void)ud; (void)k;
    mrec *c = v;
    /* a record in both maps is freed with the conns; slots are not ours */
    if (c->owned && !(ud && c->is_conn)) free(c);
    return 1;
}

static void mroom_free_all(mroom *r)
{
    hmap_each(&r->users, rec_free_fn, (void *)1);   /* user-only records */
    hmap_each(&r->conns, rec_free_fn, NULL);
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

/* A record of its own: member (NULL: a user-only record of user), user
 * (the member's tail when it ends with "|user"), name. */
static mrec *rec_alloc(const char *member, const char *user, const char *name)
{
    size_t ul = strlen(user), ml = member ? strlen(member) : 0, nl = strlen(name);
    int tail = member && pstore_user_tail(member, ml, user, ul);
    int same = strcmp(name, user) == 0;
    size_t sz = sizeof(mrec) + (member ? ml + 1 : 0) + (member && tail ? 0 : ul + 1) + (same ? 0 : nl + 1);
    if (sz > INT32_MAX || ml + 1 > UINT16_MAX) return NULL;   /* uoff is 16-bit */
    mrec *r = calloc(1, sz);
    if (!r) return NULL;
    char *q = (char *)(r + 1);
    r->owned = 1;
    r->moff = (int32_t)sizeof(mrec);
    if (member) {
        memcpy(q, member, ml + 1);
        q += ml + 1;
    }
    if (member && tail) {
        r->uoff = (uint16_t)(ml - ul);
    } else {
        if (member) r->uoff = (uint16_t)(ml + 1);
        memcpy(q, user, ul + 1);
        q += ul + 1;
    }
    if (same) {
        r->noff = (int32_t)(MR_USER(r) - (const char *)r);
    } else {
        memcpy(q, name, nl + 1);
        r->noff = (int32_t)(q - (char *)r);
    }
    return r;
}

/* The record in the caller's slot, pointing at the caller's strings; NULL
 * when they are not where offsets can reach. */
static mrec *rec_in_slot(void *slot, const char *member, const char *user, const char *name)
{
    const char *base = slot;
    ptrdiff_t mo = member - base, no = name - base, uo = user - member;
    if (mo < INT32_MIN || mo > INT32_MAX || no < INT32_MIN || no > INT32_MAX || uo < 0 || uo > UINT16_MAX)
        return NULL;
    mrec *r = slot;
    memset(r, 0, sizeof *r);
    r->moff = (int32_t)mo;
    r->noff = (int32_t)no;
    r->uoff = (uint16_t)uo;
    return r;
}

typedef struct holder_ctx { const mrec *c; mrec *found; } holder_ctx;

static int holder_fn(void *ud, const char *k, void *v)
{
    holder_ctx *x = ud;
    mrec *o = v;
    if (!x->found && o != x->c && strcmp(MR_USER(o), MR_USER(x->c)) == 0) x->found = o;
    return 0;
}

/* c holds its user's count and goes: the count moves to a record of its
 * own (or, out of memory, to another entry of the user in the room). */
static void user_move(mroom *r, mrec *c)
{
    mrec *nu = rec_alloc(NULL, MR_USER(c), MR_NAME(c));
    if (!nu) {
        holder_ctx x = { c, NULL };
        hmap_each(&r->conns, holder_fn, &x);
        if (!x.found) { hmap_del(&r->users, MR_USER(c)); return; }
        nu = x.found;
    }
    nu->count = c->count;
    hmap_put(&r->users, MR_USER(nu), nu);   /* replaces c (same key) */
}

/* c leaves its user's count: when it was the last the user goes, with a
 * leave when announce. */
static void user_dec(pstore *s, mroom *r, const char *room, mrec *c, int announce)
{
    mrec *u = hmap_get(&r->users, MR_USER(c));
    if (!u) return;
    if (--u->count > 0) {
        if (u == c) user_move(r, c);
        return;
    }
    hmap_del(&r->users, MR_USER(u));
    if (announce) s->sink->transition(s->ud, room, "leave", MR_USER(u), MR_NAME(u));
    if (u != c && u->owned && !u->is_conn) free(u);
}

static void room_drop_if_empty(const char *room, mroom *r)
{
    if (r->conns.count == 0 && r->users.count == 0) {
        hmap_del(&g_mem.rooms, room);
        mroom_free_all(r);
    }
}

/* c is out of conns (or being taken out by a sweep): its user's count
 * drops, then it is freed (if it is ours). */
static void conn_gone(pstore *s, mroom *r, const char *room, mrec *c)
{
    user_dec(s, r, room, c, 1);
    c->is_conn = 0;
    if (c->owned) free(c);
}

static int mem_apply_room(pstore *s, const char *room, const pstore_op *ops, size_t n)
{
    mroom *r = hmap_get(&g_mem.rooms, room);
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return -1;
        hmap_init_keyfn(&r->conns, member_key);
        hmap_init_keyfn(&r->users, user_key);
        if (hmap_put(&g_mem.rooms, room, r) < 0) { free(r); return -1; }
    }
    uint64_t exp = mono_ms() + s->ttl_ms;
    for (size_t i = 0; i < n; i++) {
        const pstore_op *o = &ops[i];
        mrec *c = hmap_get(&r->conns, o->member);
        if (o->op == 'u') {
            if (c) { c->exp = exp; continue; }
            const char *nm = o->name ? o->name : o->user;
            const char *tail = pstore_user_tail(o->member, strlen(o->member), o->user, strlen(o->user));
            c = o->slot && tail ? rec_in_slot(o->slot, o->member, tail, nm) : NULL;
            if (!c && !(c = rec_alloc(o->member, o->user, nm))) continue;
            c->exp = exp;
            c->is_conn = 1;
            if (hmap_put(&r->conns, MR_MEMBER(c), c) < 0) { if (c->owned) free(c); continue; }
            mrec *u = hmap_get(&r->users, o->user);
            if (u) { u->count++; continue; }
            c->count = 1;
            if (hmap_put(&r->users, MR_USER(c), c) < 0) {
                hmap_del(&r->conns, MR_MEMBER(c));
                if (c->owned) free(c);
                continue;
            }
            s->sink->transition(s->ud, room, "join", MR_USER(c), MR_NAME(c));
        } else if (c) {
            hmap_del(&r->conns, o->member);
            conn_gone(s, r, room, c);
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

/* The caller frees the slot: a record still there (an entry this store
 * holds, maybe with its user's count) moves to a block of its own. Never
 * inside mem_apply or mem_sweep (see pstore_vt.release), so no walk holds
 * the record and the room may go. */
static void mem_release(pstore *s, const char *room, const char *member, void *slot)
{
    mroom *r = hmap_get(&g_mem.rooms, room);
    mrec *c = r ? hmap_get(&r->conns, member) : NULL;
    if (!c || (void *)c != slot) return;
    mrec *nc = rec_alloc(MR_MEMBER(c), MR_USER(c), MR_NAME(c));
    if (!nc) {
        /* out of memory: the entry is forgotten without a leave (release
         * never calls back); the user's count drops */
        hmap_del(&r->conns, member);
        user_dec(s, r, room, c, 0);
        room_drop_if_empty(room, r);
        return;
    }
    nc->exp = c->exp;
    nc->is_conn = 1;
    nc->count = c->count;
    mrec *u = hmap_get(&r->users, MR_USER(c));
    hmap_put(&r->conns, MR_MEMBER(nc), nc);          /* replaces (same key) */
    if (u == c) hmap_put(&r->users, MR_USER(nc), nc);
}

typedef struct sweep_ctx { pstore *s; mroom *r; const char *room; uint64_t now; } sweep_ctx;

static int sweep_conn_fn(void *ud, const char *k, void *v)
{
    sweep_ctx *x = ud;
    mrec *c = v;
    if (c->exp >= x->now) return 0;
    /* the map buries the slot after this returns (c may be freed here) */
    conn_gone(x->s, x->r, x->room, c);
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
    mrec *u = v;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        presence_user *nu = realloc(l->u, cap * sizeof *nu);
        if (!nu) return 0;
        l->u = nu;
        l->cap = cap;
    }
    l->u[l->n].user = user;
    l->u[l->n].name = MR_NAME(u);
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

static const pstore_vt mem_vt = { mem_ready, mem_apply, mem_sweep, mem_list, mem_free,
                                  mem_release, sizeof(mrec) };

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
