/* bus_core: the shared internals of the bus object, below everything else
 * of the bus (bus_order.c and the backends call in here; this file calls
 * the backend only through its table).
 * Owns: the bus's lifetime end (freed once its last uv handle is closed),
 * the room registry entries (lookup, freeing when nobody needs a room),
 * the pending request list (every publish/replay callback called exactly
 * once, failures inside a bus_* call answered from the deferral timer),
 * readiness changes (on_ready), the seed requests to the upper layer (one
 * per room in flight, answered waiters run from the deferral timer; with a
 * backend that can ask the room's holders first, their wait for a holder's
 * raise, polled from the seed timer and bounded; a request past its
 * deadline stays the room's until its provider answers: the room's uses
 * meanwhile fail at once with BUS_HEAD_LATE and send no second query, so
 * queries do not pile up behind a stuck store) and epoch generation. */
#define _GNU_SOURCE
#include "bus_int.h"
#include "log.h"
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "bus"

/* ---- requests ---- */

bus_req *bus_req_new(bus *b, int kind, const char *room, size_t extra)
{
    if (extra > SIZE_MAX - sizeof(bus_req)) return NULL;
    bus_req *r = calloc(1, sizeof *r + extra);
    if (!r) return NULL;
    r->kind = kind;
    r->b = b;
    r->t0 = mono_ns();
    snprintf(r->room, sizeof r->room, "%s", room);
    r->next = b->pending;
    if (b->pending) b->pending->prev = r;
    b->pending = r;
    return r;
}

static void req_unlink(bus_req *r)
{
    bus *b = r->b;
    if (r->prev) r->prev->next = r->next; else b->pending = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

void bus_req_free(bus_req *r)
{
    req_unlink(r);
    bus_upd_free(r->upd);   /* id and tail are in r->inl */
    free(r);
}

void bus_req_publish_done(bus_req *r, int status, uint64_t seq, int dup)
{
    if (r->called) return;
    r->called = 1;
    if (r->ucb) r->ucb(r->ud, status, seq, dup, status == 0 && !dup ? r->count : -1);
    else if (r->pcb) r->pcb(r->ud, status, seq, dup);
}

void bus_req_replay_done(bus_req *r, int status, const bus_entry *e, size_t n, uint64_t head,
                         const char *epoch)
{
    if (r->called) return;
    r->called = 1;
    if (r->rcb) r->rcb(r->ud, status, e, n, head, status < 0 ? NULL : epoch ? epoch : "");
}

int bus_replay_span(const bus_req *r, uint64_t head, size_t max, size_t *want)
{
    if (r->upto && head < r->upto) return -1;
    uint64_t last = r->upto ? r->upto : head;
    if (r->since == UINT64_MAX || r->since >= last) return 0;
    if (last - r->since > max) return -1;
    *want = (size_t)(last - r->since);
    return 1;
}

static void req_fail(bus_req *r)
{
    if (r->kind == BUS_REQ_PUBLISH) bus_req_publish_done(r, -1, 0, 0);
    else bus_req_replay_done(r, r->fail ? r->fail : -1, NULL, 0, 0, NULL);
}

void bus_req_unhold(bus_req *r)
{
    if (r->hold > 1) {
        r->hold--;
        return;
    }
    /* the last hold stays while the failure's callback runs: a callback
     * that frees the bus (bus_core_close frees the requests nobody holds)
     * leaves this one to be freed here */
    req_fail(r);
    if (--r->hold <= 0) bus_req_free(r);
}

/* ---- rooms ---- */

static void room_free(bus_room *room)
{
    bus_held *h = room->held, *n;
    for (; h; h = n) { n = h->next; free(h); }
    free(room);
}

static int room_free_cb(void *arg, const char *key, void *val)
{
    (void)arg;
    (void)key;
    room_free(val);
    return 0;
}

bus_room *bus_room_get(bus *b, const char *name)
{
    return hmap_get(&b->rooms, name);
}

void bus_room_maybe_free(bus *b, bus_room *room)
{
    if (room->refs > 0 || room->sub_state != BUS_SUB_NONE || room->busy > 0 || room->waiting)
        return;
    hmap_del(&b->rooms, room->name);
    room_free(room);
}

/* ---- failures and seed answers, run from the loop ---- */

static void defer_cb(uv_timer_t *t);
static void seed_answered(struct bus_seed *sd);

/* ---- seeds: the durable head of a room, from the upper layer ---- */

typedef struct seed_wait {
    bus_seed_fn fn;
    void *arg;
    int ask;                 /* waits for the holders' answer too (bus_seed_get) */
    struct seed_wait *next;
} seed_wait;

/* A seed's lifetime is a reference count (seed_ref / seed_unref frees it at
 * zero), one reference per holder: the bus (while it is in b->seeds; the
 * answered list b->seeds_done is a part of that map), the provider (from
 * on_seed until bus_seed_done), each backend ask or probe call in flight,
 * each restore call in flight (and bus_seed_done's own while it starts
 * them), and defer_cb while it runs the waiters. */
struct bus_seed {
    int refs;
    bus *b;                  /* NULL once the bus let go of it (out of b->seeds) */
    seed_wait *waiters;      /* in arrival order */
    struct bus_seed *dnext;  /* answered list */
    int status;
    uint64_t max_seq;
    char epoch[BUS_EPOCH_MAX + 1];
    char room[CHAT_ROOM_MAX + 1];
    /* client ids to write back before the waiters run (restore_ids) */
    int restore;             /* the backend writes ids back (Redis) */
    uint64_t ids_since_ms;   /* 0: no ids to write back */
    bus_seed_id *ids;
    size_t nids, capids;
    int restoring;           /* restore calls in flight (+1 while starting): answered at 0 */
    int restore_failed;
    /* asking the room's holders first (backend seed_ask; docs/redis.md
     * "Heads, seeds and epochs"): waiters that asked (publish, replay) wait
     * for the holders' answer too; the others (a holder's own raise) run as
     * soon as the seed is answered, so that two holders asking each other
     * never wait for each other */
    int provided;            /* bus_seed_done was called: no deadline any more */
    int answered;            /* provider answered, ids written back: final */
    int queued;              /* on b->seeds_done */
    int ask;                 /* SEED_ASK_* */
    uint64_t ask_until;      /* mono ms: past it, the seed goes on without a raise */
    /* the provider's deadline (bus_opts.seed_timeout_ms): past it, the seed
     * fails with BUS_HEAD_LATE; the provider keeps it until it answers */
    uint64_t provide_until;  /* mono ms, 0: no deadline */
    int timed_out;           /* failed at the deadline: the late answer is dropped */
};

enum {
    SEED_ASK_DONE = 0,       /* nothing to wait for (no holder, or it raised the head) */
    SEED_ASK_SENT,           /* the ask is on its way: how many holders got it? */
    SEED_ASK_POLL,           /* holders got it: probe the head at the next tick */
    SEED_ASK_PROBE,          /* a probe is in flight */
};

/* how often, and how long, a seed waits for a holder to raise the head */
#define SEED_POLL_MS 20
#define SEED_WAIT_MS 1500

static void seed_free(bus_seed *sd)
{
    for (size_t i = 0; i < sd->nids; i++) free(sd->ids[i].id);
    free(sd->ids);
    free(sd);
}

static void seed_ref(bus_seed *sd) { sd->refs++; }

static void seed_unref(bus_seed *sd)
{
    assert(sd->refs > 0);
    if (--sd->refs == 0) seed_free(sd);
}

/* the bus lets go of a seed: out of the map (the caller unrefs it after) */
static void seed_unmap(bus *b, bus_seed *sd)
{
    if (hmap_get(&b->seeds, sd->room) == sd) hmap_del(&b->seeds, sd->room);
    sd->b = NULL;
}


void bus_epoch_new(bus *b, char out[BUS_EPOCH_MAX + 1])
{
    b->rng ^= b->rng << 13;
    b->rng ^= b->rng >> 7;
    b->rng ^= b->rng << 17;
    snprintf(out, BUS_EPOCH_MAX + 1, "%016llx", (unsigned long long)(b->rng * 0x2545F4914F6CDD1Dull));
}

int bus_has_seed(const bus *b) { return b && b->h.on_seed != NULL; }

static void seed_tick(uv_timer_t *t);
static void seed_deadline(uv_timer_t *t);

static void seed_arm(bus *b)
{
    if (!uv_is_active((uv_handle_t *)&b->seed_t))
        uv_timer_start(&b->seed_t, seed_tick, SEED_POLL_MS, SEED_POLL_MS);
}

int bus_seed_get(bus *b, const char *room, int ask, bus_seed_fn fn, void *arg)
{
    if (!b || b->freeing || !b->h.on_seed) return -1;
    seed_wait *w = calloc(1, sizeof *w);
    if (!w) return -1;
    w->fn = fn;
    w->arg = arg;
    bus_seed *sd = hmap_get(&b->seeds, room);
    w->ask = ask && b->be->seed_ask;
    if (sd) {
        seed_wait **pp = &sd->waiters;
        while (*pp) pp = &(*pp)->next;
        *pp = w;
        if (sd->timed_out) {
            /* its query is still with the provider (Postgres stuck): no
             * second one behind it; this use fails at once, as the first did
             * at the deadline, until that query answers (bus_seed_done) */
            LOGD(MOD, "room %s: its durable head is still late: unavailable", room);
            metric_inc(b->m.seed_late_uses);
            seed_answered(sd);
        } else if (sd->answered && !w->ask) {
            seed_answered(sd); /* no wait for the holders */
        }
        return 0;
    }
    sd = calloc(1, sizeof *sd);
    if (!sd || hmap_put(&b->seeds, room, sd) != 0) {
        free(sd);
        free(w);
        return -1;
    }
    sd->refs = 1; /* the map's */
    sd->b = b;
    sd->waiters = w;
    snprintf(sd->room, sizeof sd->room, "%s", room);
    sd->restore = b->be->restore_ids != NULL;
    if (sd->restore && b->id_ttl_s) {
        uint64_t now = now_ms(), win = (uint64_t)b->id_ttl_s * 1000u;
        sd->ids_since_ms = now > win ? now - win : 1;
    }
    metric_inc(b->m.seeds);
    LOGD(MOD, "room %s: no valid head in the bus, asking for the durable one", room);
    if (b->seed_timeout_ms) {
        /* deadlines come in the order of their seeds: an armed timer is due first */
        sd->provide_until = mono_ms() + b->seed_timeout_ms;
        if (!uv_is_active((uv_handle_t *)&b->seed_dl_t))
            uv_timer_start(&b->seed_dl_t, seed_deadline, b->seed_timeout_ms, 0);
    }
    /* the holders first (their raise counts what they broadcast and history
     * does not hold yet), history meanwhile: its answer waits for theirs */
    if (ask && b->be->seed_ask) {
        sd->ask = SEED_ASK_SENT;
        seed_ref(sd); /* the call's */
        if (b->be->seed_ask(b, sd) != 0) {
            sd->ask = SEED_ASK_DONE;
            seed_unref(sd);
        }
    }
    seed_ref(sd); /* the provider's, until bus_seed_done */
    b->h.on_seed(b->ud, sd->room, sd); /* may answer at once: deferred below */
    return 0;
}

/* all waiters, or (all 0) only those that do not wait for the holders;
 * the others are back on sd->waiters before any callback runs */
static void seed_run_waiters(bus_seed *sd, int status, int all)
{
    seed_wait *w = sd->waiters, *run = NULL, **rt = &run, **keep = &sd->waiters;
    sd->waiters = NULL;
    while (w) {
        seed_wait *n = w->next;
        w->next = NULL;
        if (!all && w->ask) { *keep = w; keep = &w->next; }
        else { *rt = w; rt = &w->next; }
        w = n;
    }
    while (run) {
        seed_wait *n = run->next;
        run->fn(run->arg, status, sd->max_seq, sd->epoch,
                sd->nids ? BUS_SEED_GIVEN : BUS_SEED_GIVEN_EMPTY);
        free(run);
        run = n;
    }
}

uint64_t bus_seed_ids_since_ms(const bus_seed *sd) { return sd && sd->b ? sd->ids_since_ms : 0; }

int bus_id_part(char *out, size_t n, const char *user, const char *id)
{
    if (!out || !user || !id) return -1;
    size_t ul = strlen(user), il = strlen(id);
    if (!ul || ul > BUS_USER_MAX || !il || il > BUS_ID_MAX) return -1;
    int w = snprintf(out, n, "%zu:%s:%s", ul, user, id);
    return w < 0 || (size_t)w >= n ? -1 : w;
}

int bus_seed_add_id(bus_seed *sd, const char *user, const char *id, uint64_t seq, uint64_t ts_ms)
{
    char part[BUS_IDKEY_MAX + 1];
    /* an id or user chatd never takes (a row written outside it) is skipped */
    if (!sd || !sd->b || sd->timed_out || !sd->ids_since_ms || ts_ms < sd->ids_since_ms ||
        bus_id_part(part, sizeof part, user, id) < 0)
        return 0;
    if (sd->nids == sd->capids) {
        size_t cap = sd->capids ? sd->capids * 2 : 64;
        bus_seed_id *n = realloc(sd->ids, cap * sizeof *n);
        if (!n) return -1;
        sd->ids = n;
        sd->capids = cap;
    }
    char *c = strdup(part);
    if (!c) return -1;
    /* what is left of the window it was published in, at least a second */
    uint64_t now = now_ms(), age_s = now > ts_ms ? (now - ts_ms) / 1000u : 0;
    uint32_t ttl = sd->b->id_ttl_s;
    sd->ids[sd->nids++] = (bus_seed_id){seq, age_s < ttl ? ttl - (uint32_t)age_s : 1, c};
    return 0;
}

const bus_seed_id *bus_seed_ids(const bus_seed *sd, size_t *n)
{
    *n = sd->nids;
    return sd->ids;
}

const char *bus_seed_room(const bus_seed *sd) { return sd->room; }

/* answered (with the ids written back, or failed): waiters run from the
 * loop; called again when the holders' answer comes after, or a waiter
 * that does not wait for it joins */
static void seed_answered(bus_seed *sd)
{
    bus *b = sd->b;
    if (!sd->answered && sd->status != 0) metric_inc(b->m.seed_failures);
    sd->answered = 1;
    if (sd->queued) return;
    /* stays in the map until its waiters run: who asks meanwhile shares it */
    sd->queued = 1;
    sd->dnext = b->seeds_done;
    b->seeds_done = sd;
    if (!uv_is_active((uv_handle_t *)&b->defer)) uv_timer_start(&b->defer, defer_cb, 0, 0);
}

void bus_seed_restore_hold(bus_seed *sd)
{
    sd->restoring++;
    seed_ref(sd);
}

void bus_seed_restore_unhold(bus_seed *sd)
{
    assert(sd->restoring > 1);   /* bus_seed_done's own hold is still there */
    sd->restoring--;
    seed_unref(sd);
}

/* the last of the restore calls (and bus_seed_done's own hold) answers the
 * seed, unless the bus let go of it (its waiters were answered) */
static void seed_restores_done(bus_seed *sd)
{
    if (!sd->b) return;
    if (sd->restore_failed) {
        LOGW(MOD, "room %s: its client ids could not be written back to Redis: the seed failed "
             "(publishes answer unavailable until a retry succeeds)", sd->room);
        sd->status = -1;
        sd->max_seq = 0;
        sd->epoch[0] = 0;
    }
    seed_answered(sd);
}

void bus_seed_restored(bus_seed *sd, int ok)
{
    if (!ok) sd->restore_failed = 1;
    if (--sd->restoring == 0) seed_restores_done(sd);
    seed_unref(sd);
}

/* the provider answered: restore ids, answer (those waiting for the
 * holders wait on) */
static void seed_go_on(bus_seed *sd)
{
    bus *b = sd->b;
    if (sd->status == 0 && sd->restore && sd->nids) {
        /* the stored client ids go back first (docs/redis.md): no call of
         * this node seeds the head (mode 'Y') before they are written */
        bus_seed_restore_hold(sd); /* this call's own, while it starts them */
        if (b->be->restore_ids(b, sd) != 0) sd->restore_failed = 1;
        bus_seed_restored(sd, 1);
        return;
    }
    seed_answered(sd);
}

void bus_seed_done(bus_seed *sd, int status, uint64_t max_seq, const char *epoch)
{
    if (!sd) return;
    sd->provided = 1;
    bus *b = sd->b;
    if (!b) { seed_unref(sd); return; } /* the bus let go of it: its waiters were answered */
    if (sd->timed_out) { /* its waiters have (or will have) the failure */
        LOGI(MOD, "room %s: the durable head came after the seed's deadline: dropped (the "
             "room's next use asks again)", sd->room);
        /* with waiters queued, or left waiting for the holders (queued once
         * they answered), defer_cb lets go of it once they ran */
        if (!sd->queued && !sd->waiters) {
            seed_unmap(b, sd);
            seed_unref(sd); /* the map's */
        }
        seed_unref(sd);
        return;
    }
    if (status == 0 && (!epoch || !*epoch || strlen(epoch) > BUS_EPOCH_MAX)) {
        LOGE(MOD, "room %s: the durable head came without a valid epoch", sd->room);
        status = -1;
    }
    sd->status = status;
    sd->max_seq = status == 0 ? max_seq : 0;
    snprintf(sd->epoch, sizeof sd->epoch, "%s", status == 0 ? epoch : "");
    if (status != 0) LOGW(MOD, "room %s: durable head unavailable", sd->room);
    seed_go_on(sd);
    seed_unref(sd); /* the provider's */
}

/* the holders' part is over: once answered, the waiters that waited for it run */
static void seed_ask_done(bus_seed *sd)
{
    sd->ask = SEED_ASK_DONE;
    if (sd->answered) seed_answered(sd);
}

/* The backend's answer to seed_ask: how many holders of the room other than
 * this node got the ask (< 0: unknown, the ask failed). With none, nothing
 * waits; else the head is probed until one of them raised it. */
void bus_seed_asked(bus_seed *sd, long others)
{
    if (!sd->b) {
        /* the bus let go of it */
    } else if (others <= 0) {
        seed_ask_done(sd);
    } else {
        LOGI(MOD, "room %s: %ld other node(s) hold it: waiting for them to raise its head to "
             "what they delivered", sd->room, others);
        sd->ask = SEED_ASK_POLL;
        sd->ask_until = mono_ms() + SEED_WAIT_MS;
        seed_arm(sd->b);
    }
    seed_unref(sd); /* the call's */
}

/* The backend's answer to seed_probe: found 1 when the room's head is
 * there (valid for this Redis run): a holder raised it. */
void bus_seed_probed(bus_seed *sd, int found)
{
    if (!sd->b) {
        /* the bus let go of it */
    } else if (!found) {
        sd->ask = SEED_ASK_POLL;
    } else {
        LOGI(MOD, "room %s: a node that holds it raised its head", sd->room);
        seed_ask_done(sd);
    }
    seed_unref(sd); /* the call's */
}

static int collect_polling(void *arg, const char *key, void *val)
{
    (void)key;
    bus_seed *sd = val, ***at = arg;
    if (sd->ask == SEED_ASK_POLL) *(*at)++ = sd;
    return 0;
}

/* Every SEED_POLL_MS while a seed waits for holders: probe each one's head
 * again, or give up waiting past SEED_WAIT_MS (a holder frozen or too old
 * to answer: the seed goes on from history alone, as without holders). */
static void seed_tick(uv_timer_t *t)
{
    bus *b = t->data;
    size_t n = b->seeds.count;
    bus_seed **list = n && !b->freeing ? malloc(n * sizeof *list) : NULL, **end = list;
    if (list) hmap_each(&b->seeds, collect_polling, &end);
    uint64_t now = mono_ms();
    for (bus_seed **p = list; p && p < end && !b->freeing; p++) {
        bus_seed *sd = *p;
        if (sd->answered && sd->status != 0) { /* failed: nothing to wait for */
            seed_ask_done(sd);
            continue;
        }
        if (now >= sd->ask_until) {
            LOGW(MOD, "room %s: no node that holds it raised its head within %d ms: seeding it "
                 "from history alone", sd->room, SEED_WAIT_MS);
            metric_inc(b->m.seed_unraised);
            seed_ask_done(sd);
            continue;
        }
        sd->ask = SEED_ASK_PROBE;
        seed_ref(sd); /* the call's */
        if (b->be->seed_probe(b, sd) != 0) {
            sd->ask = SEED_ASK_POLL;
            seed_unref(sd);
        }
    }
    free(list);
    int any = 0; /* (a probe in flight comes back to POLL) */
    for (size_t i = 0; i < b->seeds.cap && !any && !b->freeing; i++)
        any = hmap_live(&b->seeds, i) && ((bus_seed *)b->seeds.slots[i].val)->ask >= SEED_ASK_POLL;
    if (!any) uv_timer_stop(t);
}

/* The provider's deadline: a seed it has not answered in time fails with
 * BUS_HEAD_LATE (publishes answer unavailable, replays -2); it stays the
 * provider's, and the room's (its uses fail at once, bus_seed_get), until
 * the provider answers (bus_seed_done then drops the answer and lets go of
 * it). Re-armed for the next deadline. */
static void seed_deadline(uv_timer_t *t)
{
    bus *b = t->data;
    if (b->freeing) return;
    uint64_t now = mono_ms(), next = 0;
    for (size_t i = 0; i < b->seeds.cap; i++) {
        if (!hmap_live(&b->seeds, i)) continue;
        bus_seed *sd = b->seeds.slots[i].val;
        if (sd->provided || sd->timed_out || !sd->provide_until) continue;
        if (now < sd->provide_until) {
            if (!next || sd->provide_until < next) next = sd->provide_until;
            continue;
        }
        LOGW(MOD, "room %s: no durable head within %u ms: the seed failed (publishes answer "
             "unavailable until one comes in time)", sd->room, b->seed_timeout_ms);
        sd->timed_out = 1;
        sd->status = BUS_HEAD_LATE;
        sd->max_seq = 0;
        sd->epoch[0] = 0;
        seed_answered(sd); /* waiters run from the loop, as after a -1 answer */
    }
    if (next) uv_timer_start(t, seed_deadline, next - now, 0);
}

bus *bus_seed_bus(const bus_seed *sd) { return sd->b; }

/* bus_free: every waiter gets -1 now (b->freeing is set), answered ones
 * first; the bus lets go of every seed (whoever else holds one, the
 * provider, a restore, an ask or a probe, frees it with its reference). */
static void seeds_cancel(bus *b)
{
    while (b->seeds_done) {
        bus_seed *sd = b->seeds_done;
        b->seeds_done = sd->dnext;
        sd->queued = 0;
        seed_unmap(b, sd);
        seed_run_waiters(sd, -1, 1);
        seed_unref(sd); /* the map's */
    }
    for (size_t i = 0; i < b->seeds.cap; i++) {
        if (!hmap_live(&b->seeds, i)) continue;
        bus_seed *sd = b->seeds.slots[i].val;
        sd->b = NULL;
        seed_run_waiters(sd, -1, 1);
        seed_unref(sd); /* the map's */
    }
    hmap_free(&b->seeds);
}

static void defer_cb(uv_timer_t *t)
{
    bus *b = t->data;
    /* answered seeds: oldest first */
    bus_seed *sl = b->seeds_done, *rev = NULL;
    b->seeds_done = NULL;
    while (sl) { bus_seed *n = sl->dnext; sl->dnext = rev; rev = sl; sl = n; }
    /* (a waiter's callback may free the bus: bus_free then lets go of the
     * seeds still listed here; this loop's references keep them) */
    for (bus_seed *x = rev; x; x = x->dnext) seed_ref(x);
    while (rev) {
        bus_seed *sd = rev;
        rev = sd->dnext;
        sd->queued = 0;
        if (!sd->b) {
            /* the bus let go of it: its waiters were answered -1 */
        } else if (sd->ask != SEED_ASK_DONE) {
            /* the holders have not answered: only who does not wait for them */
            seed_run_waiters(sd, sd->status, 0);
        } else if (sd->timed_out && !sd->provided) {
            /* past its deadline, its query still with the provider: it stays
             * the room's until that answers (bus_seed_get: no second query) */
            seed_run_waiters(sd, sd->status, 1);
        } else {
            /* done: out of the map before its waiters run (one that asks
             * again gets a new request) */
            seed_unmap(b, sd);
            seed_run_waiters(sd, sd->status, 1);
            seed_unref(sd); /* the map's */
        }
        seed_unref(sd); /* this loop's */
    }
    bus_req *d = b->deferred;
    b->deferred = NULL;
    while (d && !b->freeing) {
        bus_req *r = d;
        d = d->wnext;
        r->wnext = NULL;
        req_fail(r);
        bus_req_free(r);
    }
}

/* r (held by nobody) is answered -1 from the loop, not from this call */
static void req_fail_later(bus *b, bus_req *r)
{
    r->wnext = b->deferred;
    b->deferred = r;
    if (!uv_is_active((uv_handle_t *)&b->defer)) uv_timer_start(&b->defer, defer_cb, 0, 0);
}

void bus_room_run_waiting(bus *b, bus_room *room, int fail)
{
    bus_req *w = room->waiting;
    room->waiting = NULL;
    while (w) {
        bus_req *r = w;
        w = w->wnext;
        r->wnext = NULL;
        if (b->freeing) continue; /* bus_free answers every pending request */
        if (fail || b->be->replay(b, r) != 0) req_fail_later(b, r);
    }
}

void bus_set_ready(bus *b, int ready)
{
    if (b->ready == ready) return;
    b->ready = ready;
    LOGI(MOD, "bus %s", ready ? "ready" : "unavailable");
    if (!b->freeing && b->h.on_ready) b->h.on_ready(b->ud, ready);
}

/* ---- lifetime ---- */

int bus_core_init(bus *b)
{
    uv_timer_init(b->loop, &b->defer);
    b->defer.data = b;
    b->handles++;
    uv_timer_init(b->loop, &b->seed_t);
    b->seed_t.data = b;
    b->handles++;
    uv_timer_init(b->loop, &b->seed_dl_t);
    b->seed_dl_t.data = b;
    b->handles++;
    return 0;
}

static int room_forget_waiting(void *arg, const char *key, void *val)
{
    (void)arg;
    (void)key;
    ((bus_room *)val)->waiting = NULL; /* answered and freed below */
    return 0;
}

static void defer_closed(uv_handle_t *h) { bus_handle_closed(h->data); }

void bus_core_cancel(bus *b)
{
    seeds_cancel(b);
}

void bus_core_close(bus *b)
{
    b->deferred = NULL; /* still in the pending list: answered below */
    uv_close((uv_handle_t *)&b->defer, defer_closed);
    uv_close((uv_handle_t *)&b->seed_t, defer_closed);
    uv_close((uv_handle_t *)&b->seed_dl_t, defer_closed);
    /* replays waiting for a sync are held by nobody but their room */
    hmap_each(&b->rooms, room_forget_waiting, NULL);
    for (bus_req *r = b->pending, *n; r; r = n) {
        n = r->next;
        req_fail(r);
        if (r->hold <= 0) bus_req_free(r);
    }
}

/* Everything of the bus stays allocated until its last handle is closed:
 * bus_free may run inside a callback whose caller still walks a room. */
static void final_free(bus *b)
{
    while (b->pending) bus_req_free(b->pending);
    hmap_each(&b->rooms, room_free_cb, NULL);
    hmap_free(&b->rooms);
    free(b);
}

void bus_core_release(bus *b)
{
    if (b->handles == 0) final_free(b);
}

void bus_handle_closed(bus *b)
{
    if (--b->handles > 0 || !b->freeing) return;
    /* requests still held by a backend are gone by now (the backend answers
     * every pending callback while it frees its connections) */
    final_free(b);
}
