/* presence: see presence.h. The part above the store, shared by Redis and
 * memory mode: the table of this node's live connection entries, the
 * per-tick batch (adds/touches coalesced per entry, removes queued; sent
 * from the flush timer, grouped per room, upserts before removes), the sweep
 * timer, list requests, metrics, and the resync after the store comes back
 * (every live local entry is re-added). Transitions are decided by the store
 * (presence_redis.c / presence_mem.c) and reported back through the sink.
 * Metrics: chat_presence_users = (room, user) pairs with at least one live
 * connection entry on this node, counted from the entries when scraped (no
 * per-pair table, which would cost memory per connection: a scratch hash set
 * of the entries' pairs, O(n) per scrape); chat_presence_events_total{event} =
 * transitions this node announced; chat_presence_sweeps_total = sweeps
 * run; chat_presence_heartbeat_writes_total = entry upserts (adds and
 * touches) written to the store; chat_presence_store_batches_total = flushes
 * that wrote. Adds, removes and lists flush at the end of the loop turn;
 * a heartbeat's refresh of an entry the store has waits up to a tenth of
 * the TTL (at most 1 s) so a room's refreshes share one store call. */
#define _GNU_SOURCE
#include "presence.h"
#include "hmap.h"
#include "presence_store.h"
#include "hash.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include <inttypes.h>
#include <assert.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define MOD "presence"
#define MAX_PENDING_REMOVES 100000

/* A live entry: one allocation holding its key, its four strings and the
 * store's slot (pstore_op.slot: the memory store keeps its record of the
 * entry there) (the strings of a remove taken back from a retry are
 * separate: own_strs, and such an entry has no slot). */
typedef struct lentry {
    char *room, *user, *name, *member;
    uint8_t sent;                   /* an upsert went to the store */
    uint8_t dirty;                  /* in the dirty list */
    uint8_t own_strs;               /* the four strings are malloc'd apart */
    uint16_t slot_off;              /* the store's slot at (char *)e + slot_off; 0: none */
    struct lentry *dprev, *dnext;   /* dirty list; dnext also the dead list (entry_free) */
    char key[];                     /* "conn|room" (p->entries is keyed by it; room is its tail), then the strings */
} lentry;

/* A queued remove: its strings are in owner (the removed entry's block) or,
 * when owner is NULL, malloc'd one by one (name may be NULL). */
typedef struct premove { char *room, *member, *user, *name; void *owner; } premove;

typedef struct preq {
    presence *p;
    char room[CHAT_ROOM_MAX + 1];
    presence_list_cb cb;
    void *ud;
    struct preq *next;
} preq;

struct presence {
    uv_loop_t *loop;
    char *node;
    uint32_t ttl_ms, sweep_ms;
    int sweep_from_ttl;             /* sweep_ms = ttl_ms / 6 (not given) */
    presence_handlers h;
    void *ud;
    pstore *store;
    hmap entries;                   /* "conn_id|room" -> lentry */
    lentry *dirty;                  /* entries to upsert this tick */
    premove *rm;                    /* removes to send */
    size_t nrm, caprm;
    preq *lq_head, *lq_tail;        /* lists waiting for the flush */
    uv_timer_t flush_t, sweep_t;
    int flush_armed;                /* 0, FLUSH_NOW or FLUSH_LATER (refreshes only) */
    int busy;                       /* inside a store call from our timers */
    struct lentry *dead;            /* entries freed while busy (entry_free), via dnext */
    int freeing, torn;
    int nclosing;
    struct presence *lprev, *lnext; /* live instances (the users gauge) */
};

static presence *g_live;            /* every instance not torn down */

static struct {
    unsigned seen; /* metrics_register_due */
    metric_counter *join, *leave, *sweeps, *writes, *batches;
} M;

/* An entry's (room, user) pair, hashed (pairs_cmp). */
typedef struct pair_ref { uint64_t h; const lentry *e; } pair_ref;

static int pairs_cmp(const void *a, const void *b)
{
    const pair_ref *x = a, *y = b;
    if (x->h != y->h) return x->h < y->h ? -1 : 1;
    int c = strcmp(x->e->room, y->e->room);
    return c ? c : strcmp(x->e->user, y->e->user);
}

size_t presence_user_count(const presence *p)
{
    size_t n = p->entries.count;
    if (n < 2) return n;
    /* the distinct pairs of the entries, through a scratch open-addressing
     * set of 2n..4n slots (linear probing, a hash match then compared by
     * name): O(n), one allocation per scrape, nothing kept between scrapes */
    size_t cap = 4;
    while (cap < 2 * n) cap <<= 1;
    pair_ref *set = calloc(cap, sizeof *set);
    void **es = malloc(n * sizeof *es);
    size_t k = 0;
    if (set && es) {
        n = hmap_values(&p->entries, es, n);
        for (size_t i = 0; i < n; i++) {
            const lentry *e = es[i];
            uint64_t h = hash_str(e->room);
            h = hash_bytes_more(h, "|", 1);
            h = hash_bytes_more(h, e->user, strlen(e->user));
            pair_ref r = { h, e };
            for (size_t s = (size_t)h & (cap - 1);; s = (s + 1) & (cap - 1)) {
                if (!set[s].e) { set[s] = r; k++; break; }
                if (pairs_cmp(&set[s], &r) == 0) break;
            }
        }
    } else {
        k = n;   /* out of memory: entries, an upper bound */
    }
    free(set);
    free(es);
    return k;
}

static double users_gauge_fn(void *ud)
{
    (void)ud;
    double n = 0;
    for (const presence *p = g_live; p; p = p->lnext) n += (double)presence_user_count(p);
    return n;
}

static void metrics_init(void)
{
    if (!metrics_register_due(&M.seen)) return;
    metrics_gauge_fn("chat_presence_users", "(room, user) pairs with a live connection on this node", "",
                     users_gauge_fn, NULL);
    M.join = metrics_counter("chat_presence_events_total",
                             "presence transitions announced by this node", "event=\"join\"");
    M.leave = metrics_counter("chat_presence_events_total", NULL, "event=\"leave\"");
    M.sweeps = metrics_counter("chat_presence_sweeps_total", "presence expiry sweeps run", "");
    M.writes = metrics_counter("chat_presence_heartbeat_writes_total",
                               "presence entry upserts written to the store", "");
    M.batches = metrics_counter("chat_presence_store_batches_total",
                                "presence batches written to the store (a flush with upserts or removes; "
                                "one store call per room in it)", "");
}

enum { FLUSH_NOW = 1, FLUSH_LATER = 2 };
static void schedule_flush(presence *p);

/* ---- sink: results from the store ---- */

static void sink_transition(void *ud, const char *room, const char *event,
                            const char *user, const char *name)
{
    presence *p = ud;
    if (p->freeing) return;
    metric_inc(event[0] == 'j' ? M.join : M.leave);
    LOGD(MOD, "%s %s %s", event, room, user);
    if (p->h.on_transition) p->h.on_transition(p->ud, room, event, user, name ? name : user);
}

static int push_remove(presence *p, char *room, char *member, char *user, char *name, void *owner,
                       int force)
{
    if (p->nrm >= MAX_PENDING_REMOVES && !force) {
        LOGW(MOD, "too many pending removes; %s expires by ttl instead", member);
        return -1;
    }
    if (p->nrm == p->caprm) {
        size_t cap = p->caprm ? p->caprm * 2 : 64;
        premove *nr = realloc(p->rm, cap * sizeof *nr);
        if (!nr) return -1;
        p->rm = nr;
        p->caprm = cap;
    }
    p->rm[p->nrm++] = (premove){ room, member, user, name, owner };
    return 0;
}

static lentry *live_entry_of_member(presence *p, const char *room, const char *member);

static void sink_retry_remove(void *ud, const char *room, const char *member, const char *user)
{
    presence *p = ud;
    if (p->freeing) return;
    /* The same connection re-joined the room meanwhile: its entry is live
     * again (the resync upserts it), so removing it now would announce a
     * false leave and, on the next heartbeat, a second join. */
    if (live_entry_of_member(p, room, member)) return;
    char *r = strdup(room), *m = strdup(member), *u = strdup(user);
    if (!r || !m || !u || push_remove(p, r, m, u, NULL, NULL, 0) < 0) {
        free(r); free(m); free(u);
        return;
    }
    schedule_flush(p);
}

static void dirty_add(presence *p, lentry *e)
{
    if (e->dirty) return;
    e->dirty = 1;
    e->dprev = NULL;
    e->dnext = p->dirty;
    if (p->dirty) p->dirty->dprev = e;
    p->dirty = e;
}

static void dirty_del(presence *p, lentry *e)
{
    if (!e->dirty) return;
    if (e->dprev) e->dprev->dnext = e->dnext; else p->dirty = e->dnext;
    if (e->dnext) e->dnext->dprev = e->dprev;
    e->dirty = 0;
    e->dprev = e->dnext = NULL;
}

static int mark_dirty_fn(void *ud, const char *k, void *v)
{
    dirty_add(ud, v);
    return 0;
}

static void sink_ready(void *ud, int ready)
{
    presence *p = ud;
    if (p->freeing) return;
    if (!ready) return;
    /* The store may have lost our entries (restart): re-add all of them. */
    hmap_each(&p->entries, mark_dirty_fn, p);
    schedule_flush(p);
}

static void sink_list_done(void *ud, void *req, int status, const presence_user *u, size_t n)
{
    preq *q = req;
    q->cb(q->ud, status, u, n);
    free(q);
}

static const pstore_sink SINK = { sink_transition, sink_retry_remove, sink_ready, sink_list_done };

/* ---- teardown ---- */

static void on_closed(uv_handle_t *h)
{
    presence *p = h->data;
    if (--p->nclosing == 0) free(p);
}

/* The store may hold e's slot (an upsert of it went out): it lets go
 * before the block is freed. */
static void release_slot(presence *p, lentry *e)
{
    if (e->sent && e->slot_off && p->store && p->store->vt->release)
        p->store->vt->release(p->store, e->room, e->member, (char *)e + e->slot_off);
}

/* Frees an entry block (out of the table, not dirty). While a store call
 * of ours runs (busy: a transition handler removed the entry and its
 * remove could not be queued) it waits in p->dead until the call returns:
 * the store may be walking the record in its slot (the memory store's
 * sweep) and the batch's ops may point at its strings. */
static void entry_free(presence *p, lentry *e)
{
    if (p->busy) {
        /* dnext doubles as the dead-list link: the entry is off the dirty list */
        assert(!e->dprev && !e->dnext && p->dirty != e);
        e->dnext = p->dead;
        p->dead = e;
        return;
    }
    release_slot(p, e);
    if (e->own_strs) { free(e->room); free(e->user); free(e->name); free(e->member); }
    free(e);
}

static int free_entry_fn(void *ud, const char *k, void *v)
{
    entry_free(ud, v);
    return 1;
}

static void free_removes(presence *p, premove *rm, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (rm[i].owner) { entry_free(p, rm[i].owner); continue; }
        free(rm[i].room); free(rm[i].member); free(rm[i].user); free(rm[i].name);
    }
}

static void teardown(presence *p)
{
    if (p->torn) return;
    p->torn = 1;
    while (p->lq_head) {
        preq *q = p->lq_head;
        p->lq_head = q->next;
        q->cb(q->ud, -1, NULL, 0);
        free(q);
    }
    p->lq_tail = NULL;
    if (p->lprev) p->lprev->lnext = p->lnext; else g_live = p->lnext;
    if (p->lnext) p->lnext->lprev = p->lprev;
    /* before the store goes: it lets go of the entries' slots (the memory
     * store outlives this instance when others share it) */
    hmap_each(&p->entries, free_entry_fn, p);
    hmap_free(&p->entries);
    free_removes(p, p->rm, p->nrm);
    free(p->rm);
    p->rm = NULL;
    p->nrm = 0;
    if (p->store) p->store->vt->free(p->store);   /* in-flight lists get -1 */
    p->store = NULL;
    free(p->node);
    p->nclosing = 2;
    uv_close((uv_handle_t *)&p->flush_t, on_closed);
    uv_close((uv_handle_t *)&p->sweep_t, on_closed);
}

void presence_free(presence *p)
{
    if (!p || p->freeing) return;
    p->freeing = 1;
    uv_timer_stop(&p->flush_t);
    uv_timer_stop(&p->sweep_t);
    if (!p->busy) teardown(p);   /* else the running timer callback does it */
}

/* The store call is over: the entries freed meanwhile go now. */
static void leave_busy(presence *p)
{
    if (--p->busy > 0) return;
    while (p->dead) {
        lentry *e = p->dead;
        p->dead = e->dnext;
        entry_free(p, e);
    }
    if (p->freeing) teardown(p);
}

/* ---- the per-tick flush ---- */

static int op_cmp(const void *a, const void *b)
{
    const pstore_op *x = a, *y = b;
    int c = strcmp(x->room, y->room);
    if (c) return c;
    return (x->op == 'r') - (y->op == 'r');   /* upserts first */
}

static void flush_lists(presence *p)
{
    preq *q = p->lq_head;
    p->lq_head = p->lq_tail = NULL;
    while (q) {
        preq *next = q->next;
        q->next = NULL;
        if (p->freeing || !p->store || p->store->vt->list(p->store, q->room, q) < 0) {
            q->cb(q->ud, -1, NULL, 0);
            free(q);
        }
        q = next;
    }
}

static void flush_cb(uv_timer_t *t)
{
    presence *p = t->data;
    p->flush_armed = 0;
    p->busy++;
    if (!p->store->vt->ready(p->store)) {
        /* Upserts are redone by the resync when the store is back; removes
         * stay queued. */
        while (p->dirty) dirty_del(p, p->dirty);
        flush_lists(p);
        leave_busy(p);
        return;
    }
    size_t n = 0;
    for (lentry *e = p->dirty; e; e = e->dnext) n++;
    premove *rm = p->rm;
    size_t nrm = p->nrm;
    p->rm = NULL;
    p->nrm = p->caprm = 0;
    pstore_op *ops = malloc((n + nrm + 1) * sizeof *ops);
    if (!ops) {
        LOGE(MOD, "out of memory in flush");
        free_removes(p, rm, nrm);
        free(rm);
        leave_busy(p);
        return;
    }
    size_t k = 0;
    while (p->dirty) {
        lentry *e = p->dirty;
        dirty_del(p, e);
        e->sent = 1;
        ops[k++] = (pstore_op){ e->room, 'u', e->member, e->user, e->name,
                                e->slot_off ? (char *)e + e->slot_off : NULL };
    }
    for (size_t i = 0; i < nrm; i++)
        ops[k++] = (pstore_op){ rm[i].room, 'r', rm[i].member, rm[i].user, rm[i].name, NULL };
    qsort(ops, k, sizeof *ops, op_cmp);
    metric_add(M.writes, n);
    if (k) metric_inc(M.batches);
    if (k && p->store->vt->apply(p->store, ops, k) < 0)
        LOGW(MOD, "presence batch of %zu ops not sent", k);
    free(ops);
    /* Remove strings were referenced by ops; entries removed during the
     * transition callbacks moved theirs into p->rm (kept). */
    free_removes(p, rm, nrm);
    free(rm);
    flush_lists(p);
    leave_busy(p);
}

/* Joins, removes and lists go out at the end of this loop turn. */
static void schedule_flush(presence *p)
{
    if (p->flush_armed == FLUSH_NOW || p->freeing) return;
    p->flush_armed = FLUSH_NOW;    /* (re)starting the timer also pulls a later refresh flush in */
    uv_timer_start(&p->flush_t, flush_cb, 0, 0);
}

/* A heartbeat's refresh of an entry the store has: it waits up to
 * refresh_delay_ms so the refreshes of a room's members leave as one call
 * per room (at 10 s heartbeats a room of 100 gets ~10 a second; one call
 * each was half of Redis' work in rooms of 100). The entry's expiry is set
 * from the apply's clock, so the wait only shifts it by at most a tenth of
 * the TTL. */
static uint64_t refresh_delay_ms(const presence *p)
{
    uint64_t d = p->ttl_ms / 10;
    return d > 1000 ? 1000 : d;
}

static void schedule_refresh(presence *p)
{
    if (p->flush_armed || p->freeing) return;
    p->flush_armed = FLUSH_LATER;
    uv_timer_start(&p->flush_t, flush_cb, refresh_delay_ms(p), 0);
}

static void sweep_cb(uv_timer_t *t)
{
    presence *p = t->data;
    if (!p->store->vt->ready(p->store)) return;
    p->busy++;
    metric_inc(M.sweeps);
    p->store->vt->sweep(p->store);
    leave_busy(p);
}

/* ---- public API ---- */

presence *presence_new(uv_loop_t *loop, const presence_opts *o, const presence_handlers *h,
                       void *ud, char *err, size_t errlen)
{
    if (!loop || !o || !o->node_id || !o->node_id[0] || strchr(o->node_id, '|')) {
        snprintf(err, errlen, "presence: node_id required (no '|')");
        return NULL;
    }
    metrics_init();
    presence *p = calloc(1, sizeof *p);
    if (!p || !(p->node = strdup(o->node_id))) {
        free(p);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->loop = loop;
    p->ttl_ms = o->ttl_ms ? o->ttl_ms : 30000;
    p->sweep_from_ttl = !o->sweep_ms;
    p->sweep_ms = o->sweep_ms ? o->sweep_ms : p->ttl_ms / 6;
    if (p->sweep_ms < 100) p->sweep_ms = 100;
    if (h) p->h = *h;
    p->ud = ud;
    hmap_init_keyed(&p->entries, offsetof(lentry, key));
    p->store = o->redis_url
        ? pstore_redis_new(loop, o->redis_url, p->ttl_ms, o->redis_linger_ms, &SINK, p, err, errlen)
        : pstore_mem_new(p->ttl_ms, &SINK, p, err, errlen);
    if (!p->store) {
        free(p->node);
        free(p);
        return NULL;
    }
    p->lnext = g_live;
    if (g_live) g_live->lprev = p;
    g_live = p;
    uv_timer_init(loop, &p->flush_t);
    uv_timer_init(loop, &p->sweep_t);
    p->flush_t.data = p->sweep_t.data = p;
    /* First sweep at a random point of the interval so nodes spread out. */
    uint64_t first = p->sweep_ms / 2 + (uint64_t)(rand() % (int)(p->sweep_ms / 2 + 1));
    uv_timer_start(&p->sweep_t, sweep_cb, first, p->sweep_ms);
    return p;
}

void presence_set_ttl(presence *p, uint32_t ttl_ms)
{
    if (!p || p->freeing || !ttl_ms || ttl_ms == p->ttl_ms) return;
    p->ttl_ms = ttl_ms;
    p->store->ttl_ms = ttl_ms;      /* both stores read it at every upsert */
    if (!p->sweep_from_ttl) return;
    p->sweep_ms = ttl_ms / 6 < 100 ? 100 : ttl_ms / 6;
    uv_timer_start(&p->sweep_t, sweep_cb, p->sweep_ms, p->sweep_ms);
}

/* conn first: the room is the key's tail (an entry keeps it once) */
static void entry_key(char *out, size_t n, const char *room, uint64_t conn)
{
    snprintf(out, n, "%" PRIu64 "|%s", conn, room);
}

/* The live local entry whose member string is member, if any. */
static lentry *live_entry_of_member(presence *p, const char *room, const char *member)
{
    const char *bar = strchr(member, '|');
    if (!bar || strncmp(member, p->node, (size_t)(bar - member)) != 0 ||
        p->node[bar - member] != 0)
        return NULL;
    char *end;
    uint64_t conn = strtoull(bar + 1, &end, 10);
    if (*end != '|') return NULL;
    char key[CHAT_ROOM_MAX + 32];
    entry_key(key, sizeof key, room, conn);
    lentry *e = hmap_get(&p->entries, key);
    return e && strcmp(e->member, member) == 0 ? e : NULL;
}

/* A remove of (room, member) queued and not yet sent: take it back (the
 * entry is being re-added, so the store's copy stays and the upsert only
 * refreshes it). Returns the taken strings in *out (they may still be
 * referenced by a batch being applied, so the caller keeps them alive). */
static int take_pending_remove(presence *p, const char *room, const char *member, premove *out)
{
    for (size_t i = p->nrm; i-- > 0;) {
        if (strcmp(p->rm[i].member, member) != 0 || strcmp(p->rm[i].room, room) != 0) continue;
        *out = p->rm[i];
        memmove(&p->rm[i], &p->rm[i + 1], (p->nrm - i - 1) * sizeof *p->rm);
        p->nrm--;
        return 1;
    }
    return 0;
}

void presence_remove(presence *p, const char *room, uint64_t conn_id)
{
    if (!p || p->freeing || !room) return;
    char key[CHAT_ROOM_MAX + 32];
    entry_key(key, sizeof key, room, conn_id);
    lentry *e = hmap_del(&p->entries, key);
    if (!e) return;
    dirty_del(p, e);
    if (e->sent) {
        /* force: a flush in progress may still reference these strings */
        if (push_remove(p, e->room, e->member, e->user, e->name, e->own_strs ? NULL : e, p->busy) == 0) {
            if (e->own_strs) free(e);   /* else the remove owns the block */
            schedule_flush(p);
            return;
        }
    }
    entry_free(p, e);
}

static void add_entry(presence *p, const char *key, const char *room, uint64_t conn_id, const char *user,
                      const char *name, const char *member, size_t ml);

void presence_add(presence *p, const char *room, uint64_t conn_id, const char *user,
                  const char *name)
{
    if (!p || p->freeing || !room || !user || !user[0]) return;
    if (!room_name_valid(room, strlen(room))) {
        LOGW(MOD, "presence_add: invalid room name");
        return;
    }
    char key[CHAT_ROOM_MAX + 32];
    entry_key(key, sizeof key, room, conn_id);
    lentry *old = hmap_get(&p->entries, key);
    if (old) {
        if (strcmp(old->user, user) == 0) { presence_touch(p, room, conn_id); return; }
        presence_remove(p, room, conn_id);
    }
    if (!name) name = user;
    char mbuf[256], *member = mbuf;
    int ml = snprintf(mbuf, sizeof mbuf, "%s|%" PRIu64 "|%s", p->node, conn_id, user);
    if (ml < 0) return;
    if ((size_t)ml >= sizeof mbuf) {    /* a long node id */
        if (!(member = malloc((size_t)ml + 1))) return;
        snprintf(member, (size_t)ml + 1, "%s|%" PRIu64 "|%s", p->node, conn_id, user);
    }
    add_entry(p, key, room, conn_id, user, name, member, (size_t)ml);
    if (member != mbuf) free(member);
}

/* presence_add's second half: the entry (new, or taken back from a queued
 * remove) is put in the table and marked dirty. */
static void add_entry(presence *p, const char *key, const char *room, uint64_t conn_id, const char *user,
                      const char *name, const char *member, size_t ml)
{
    premove pr;
    lentry *e;
    if (take_pending_remove(p, room, member, &pr)) {
        /* Left and re-joined within one batch: cancel the remove instead of
         * sending "upsert, remove" (upserts go first in a batch), which
         * would announce a leave while the connection is in the room, then
         * a second join at its next heartbeat. The strings of the taken
         * remove may be referenced by a batch being applied: reuse them
         * (the removed entry's own block when it has one: same key). */
        if (pr.owner) {
            e = pr.owner;
            e->dirty = 0;
            e->dprev = e->dnext = NULL;
        } else {
            e = calloc(1, sizeof *e + strlen(key) + 1);
            if (e) {
                strcpy(e->key, key);
                e->own_strs = 1;
                e->member = pr.member;
                e->room = pr.room;
                e->user = pr.user;
                e->name = pr.name ? pr.name : strdup(name);
            }
        }
        if (!e || !e->name || hmap_put(&p->entries, e->key, e) < 0) {
            /* out of memory: put the remove back as it was */
            if (e && !pr.owner) { if (e->name != pr.name) free(e->name); free(e); }
            if (push_remove(p, pr.room, pr.member, pr.user, pr.name, pr.owner, 1) < 0)
                free_removes(p, &pr, 1);
            return;
        }
        e->sent = 1;
    } else {
        /* the user is the member's tail ("node|conn|user"); the name is
         * the user's bytes when they are equal */
        size_t kl = strlen(key) + 1, ul = strlen(user);
        int same = strcmp(name, user) == 0;
        size_t nl = same ? 0 : strlen(name) + 1;
        size_t ss = p->store->vt->slot_size, end = sizeof *e + kl + nl + ml + 1;
        size_t so = ss ? (end + 7) & ~(size_t)7 : 0;
        if (so > UINT16_MAX) ss = so = 0;   /* a slot out of reach: the store copies */
        e = calloc(1, ss ? so + ss : end);
        if (!e) return;
        e->slot_off = (uint16_t)so;
        char *q = e->key;
        memcpy(q, key, kl);
        q += kl;
        e->room = e->key + (kl - 1 - strlen(room));
        if (!same) {
            e->name = memcpy(q, name, nl);
            q += nl;
        }
        e->member = memcpy(q, member, ml + 1);
        e->user = (char *)pstore_user_tail(e->member, ml, user, ul);   /* never NULL: "node|conn|user" */
        if (same) e->name = e->user;
        if (hmap_put(&p->entries, e->key, e) < 0) { free(e); return; }
    }
    dirty_add(p, e);
    schedule_flush(p);
}

void presence_touch(presence *p, const char *room, uint64_t conn_id)
{
    if (!p || p->freeing || !room) return;
    char key[CHAT_ROOM_MAX + 32];
    entry_key(key, sizeof key, room, conn_id);
    lentry *e = hmap_get(&p->entries, key);
    if (!e) return;
    dirty_add(p, e);
    if (e->sent) schedule_refresh(p);
    else schedule_flush(p);      /* its first upsert is still due: a join goes out now */
}

int presence_list(presence *p, const char *room, presence_list_cb cb, void *ud)
{
    if (!p || p->freeing || !room || !cb || !room_name_valid(room, strlen(room))) return -1;
    preq *q = calloc(1, sizeof *q);
    if (!q) return -1;
    q->p = p;
    snprintf(q->room, sizeof q->room, "%s", room);
    q->cb = cb;
    q->ud = ud;
    if (p->lq_tail) p->lq_tail->next = q; else p->lq_head = q;
    p->lq_tail = q;
    schedule_flush(p);
    return 0;
}
