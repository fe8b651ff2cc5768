/* bus_backfill: nothing broadcast stays missing from history (Redis mode
 * with track_unstored; part of the Redis backend, which starts and frees it).
 * The publish script records every new seq in chat:{room}:unstored (score:
 * the publishing node's clock, ms; a lease sets Redis time) and the room in its unstored index (bus_unstored_index: one
 * per Redis, one per slot on a Cluster). This file owns:
 *  - the sweeper: a timer every grace/2; a round has three steps on every
 *    node that is up (one Redis: its index; a Cluster: each master with the
 *    indexes of every slot it owns, under a per-master round lock):
 *    BUS_SWEEP_LUA lists the (room, seq) older than the grace (scored below
 *    the round's cut), on_check (bus_handlers, required with
 *    track_unstored) asks history which of them are stored, and
 *    BUS_SETTLE_LUA forgets those and returns the entries of the others
 *    still scored below that cut (leased), handed to on_unstored; entries
 *    the recent buffer no longer has are lost (logged once per room and
 *    settle, counted). A check slower than the round's lock lets another
 *    node's round list, lease or lose the same entries meanwhile, and then
 *    this settle skips them (one offer, one loss count). What can never be
 *    settled (a set member that is not a seq, an index room that is not a
 *    room name) is removed by the sweep script and only counted here. A round cut short
 *    by a limit (CHAT_BACKFILL_CHECK_*) is followed by the next one as soon
 *    as the tick's work is done, if it completed (a failed sweep, check or
 *    settle waits for the next tick). A message leaves
 *    the unstored set only once history was seen to hold it; the cost per
 *    message is two entries in one sweep call and one settle call per
 *    round (docs/redis.md "Backfill");
 *  - the mark batch, for entries that can never be stored (a malformed
 *    tail: bus_mark_stored): the marks of one loop tick, grouped per room
 *    and sent as one BUS_MARK_LUA per room (pipelined, routed to the room's
 *    shard) from a 0 ms timer; dropped while that shard is down.
 * Both timers are closed by bus_backfill_free; the state is freed when the
 * last one is closed; checks still with the core are orphaned then
 * (bus_check_done frees them). */
#define _GNU_SOURCE
#include "bus_int.h"
#include "log.h"
#include "redis_client.h"
#include "redis_slot.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MOD "bus"

typedef struct bf_marks {
    char room[CHAT_ROOM_MAX + 1];
    uint64_t *seqs;
    size_t n, cap;
} bf_marks;

struct bus_bf {
    bus *b;
    redis_client *rc;
    int cluster;
    uint32_t grace_ms;
    uint32_t check_rooms, check_per_room; /* a round's limits */
    uv_timer_t sweep, flush;
    int open;                /* timers not yet closed */
    hmap marks;              /* room -> bf_marks, sent at the next tick */
    char token[96];          /* this node's lock value */
    int sweeping;            /* the tick's work in flight: sweeps (one per
                              * node), checks and settles */
    int more;                /* a round of this tick met a limit and
                              * completed: the next round starts as soon as
                              * the tick's work is done (work_done) */
    struct bus_check *checks; /* with the core */
    uint64_t rounds;
    uint64_t settles;        /* settle calls sent */
};

struct bus_check {
    struct bus_bf *f;        /* NULL once the bus is freed */
    struct bus_check *prev, *next;
    uint64_t node;
    uint64_t cut;            /* the round's Redis time minus the grace */
    int more;                /* the round met a limit (BUS_MORE_*) */
    size_t n;
    const char **rooms;      /* into buf */
    uint64_t *seqs;
    char buf[];
};

static int marks_free_cb(void *arg, const char *key, void *val)
{
    (void)arg;
    bf_marks *m = val;
    free(m->seqs);
    free(m);
    return 0;
}

static void marks_clear(struct bus_bf *f)
{
    hmap_each(&f->marks, marks_free_cb, NULL);
    hmap_free(&f->marks);
    hmap_init(&f->marks);
}

/* EVALSHA BUS_MARK_LUA 2 chat:{room}:unstored <index> room seq... */
static int send_marks(void *arg, const char *key, void *val)
{
    struct bus_bf *f = arg;
    bf_marks *m = val;
    (void)key;
    size_t argc = 4 + m->n;
    const char **v = malloc(argc * sizeof *v);
    char (*nums)[24] = malloc(m->n * sizeof *nums);
    char kuns[CHAT_ROOM_MAX + 32], kidx[48];
    if (v && nums) {
        snprintf(kuns, sizeof kuns, "chat:{%s}:unstored", m->room);
        bus_unstored_index(kidx, sizeof kidx, f->cluster, m->room);
        v[0] = "2";
        v[1] = kuns;
        v[2] = kidx;
        v[3] = m->room;
        for (size_t i = 0; i < m->n; i++) {
            snprintf(nums[i], sizeof nums[i], "%" PRIu64, m->seqs[i]);
            v[4 + i] = nums[i];
        }
        redis_call how = {.slot = redis_room_slot(m->room), .node = 0, .script = BUS_S_MARK};
        /* not sent (shard down): the sweeper offers those rows again */
        redis_client_call(f->rc, &how, (int)argc, v, NULL, NULL, NULL);
    }
    free(v);
    free(nums);
    return 0;
}

static void flush_cb(uv_timer_t *t)
{
    struct bus_bf *f = t->data;
    if (!f->b->freeing) hmap_each(&f->marks, send_marks, f);
    marks_clear(f);
}

void bus_backfill_mark(bus *b, const char *room, uint64_t seq)
{
    struct bus_bf *f = b->bf;
    if (!f || !room || !room_name_valid(room, strlen(room)) ||
        !redis_client_slot_ready(f->rc, redis_room_slot(room)))
        return;
    bf_marks *m = hmap_get(&f->marks, room);
    if (!m) {
        m = calloc(1, sizeof *m);
        if (!m) return;
        snprintf(m->room, sizeof m->room, "%s", room);
        if (hmap_put(&f->marks, m->room, m) != 0) { free(m); return; }
    }
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 16;
        uint64_t *ns = realloc(m->seqs, nc * sizeof *ns);
        if (!ns) return;
        m->seqs = ns;
        m->cap = nc;
    }
    m->seqs[m->n++] = seq;
    if (!uv_is_active((uv_handle_t *)&f->flush)) uv_timer_start(&f->flush, flush_cb, 0, 0);
}

/* ---- sweeper ---- */

/* the {room, seq, entry} items of a settle reply: each entry goes to
 * on_unstored; "" = the recent buffer lost it (logged once per room,
 * counted) */
static void offer_entries(struct bus_bf *f, const redisReply *rp)
{
    bus *b = f->b;
    char lost_room[CHAT_ROOM_MAX + 1] = "";
    uint64_t lost_n = 0, lost_lo = 0, lost_hi = 0;
    size_t offered = 0;
    size_t items = bus_reply_settle_items(rp);
    for (size_t k = 0; k < items; k++) {
        char room[CHAT_ROOM_MAX + 1];
        uint64_t seq = 0;
        bus_entry e;
        int st = bus_reply_settle_item(rp, k, room, &seq, &e);
        if (st < 0) continue;
        if (st == 0) {
            metric_inc(b->m.backfill_lost);
            if (lost_n && strcmp(lost_room, room) != 0) {
                LOGW(MOD, "room %s: %" PRIu64 " unstored message(s) (seq %" PRIu64 "..%" PRIu64
                     ") left the recent buffer before a node stored them: lost from history",
                     lost_room, lost_n, lost_lo, lost_hi);
                lost_n = 0;
            }
            if (!lost_n) { snprintf(lost_room, sizeof lost_room, "%s", room); lost_lo = seq; }
            lost_n++;
            lost_hi = seq;
            continue;
        }
        metric_inc(b->m.backfilled);
        LOGD(MOD, "room %s: seq %" PRIu64 " published %u+ ms ago is not stored: backfilling",
             room, seq, (unsigned)f->grace_ms);
        offered++;
        if (b->h.on_unstored) b->h.on_unstored(b->ud, room, seq, e.tail, e.len);
        if (b->freeing) break;
    }
    if (offered)
        LOGI(MOD, "backfill: %zu message(s) published %u+ ms ago and not stored (their node "
             "died?) handed over for storage", offered, (unsigned)f->grace_ms);
    if (lost_n)
        LOGW(MOD, "room %s: %" PRIu64 " unstored message(s) (seq %" PRIu64 "..%" PRIu64
             ") left the recent buffer before a node stored them: lost from history",
             lost_room, lost_n, lost_lo, lost_hi);
}

static void sweep_cb(uv_timer_t *t);

static void sweep_again_soon(struct bus_bf *f)
{
    uint64_t every = f->grace_ms / 2 ? f->grace_ms / 2 : 1;
    uv_timer_start(&f->sweep, sweep_cb, 1, every);
}

/* one piece of the tick's work (a sweep, a check, a settle) ended: after
 * the last one, a round that met a limit and completed is followed by the
 * next round at once; a failed one (sweep, check or settle) waits for the
 * next tick. f->more never outlives the tick's work. */
static void work_done(struct bus_bf *f)
{
    if (f->sweeping > 0) f->sweeping--;
    if (f->sweeping || !f->more) return;
    f->more = 0;
    if (!f->b->freeing) sweep_again_soon(f);
}

/* the context of a sweep or settle call: the sweep's node, the settled
 * round's BUS_MORE_* flags; freed by its reply (bf_call_end) */
typedef struct bf_call { struct bus_bf *f; uint64_t node; int more; } bf_call;

static struct bus_bf *bf_call_end(void *ud, uint64_t *node, int *more)
{
    bf_call *bc = ud;
    struct bus_bf *f = bc->f;
    *node = bc->node;
    *more = bc->more;
    free(bc);
    return f;
}

static void settle_reply(void *ud, const redisReply *rp)
{
    uint64_t node;
    int more;
    struct bus_bf *f = bf_call_end(ud, &node, &more);
    if (rp && !f->b->freeing) {
        if (rp->type == REDIS_REPLY_ERROR) {
            LOGW(MOD, "backfill settle: %.*s", (int)rp->len, rp->str ? rp->str : "");
        } else if (rp->type == REDIS_REPLY_ARRAY) {
            offer_entries(f, rp);
            if (more) f->more = 1;
        }
    }
    work_done(f);
}

static void check_free(struct bus_check *c)
{
    struct bus_bf *f = c->f;
    if (f) {
        if (c->prev) c->prev->next = c->next; else f->checks = c->next;
        if (c->next) c->next->prev = c->prev;
    }
    free(c->rooms);
    free(c->seqs);
    free(c);
}

/* one settle call for the pairs [from, to) of c (grouped by room): ARGV is
 * the cut, then per room: room, index, n stored, stored seqs, m missing,
 * missing seqs. 0 when sent (settle_reply answers), -1 when not. */
static int settle_send(struct bus_bf *f, const struct bus_check *c, size_t from, size_t to,
                       const unsigned char *stored)
{
    size_t nrooms = 0;
    for (size_t i = from; i < to; i++)
        if (i == from || strcmp(c->rooms[i], c->rooms[i - 1]) != 0) nrooms++;
    size_t argc = 2 + (to - from) + 4 * nrooms;
    const char **v = malloc(argc * sizeof *v);
    char (*nums)[24] = malloc((to - from + 2 * nrooms + 1) * sizeof *nums);
    char (*idx)[48] = malloc(nrooms * sizeof *idx);
    bf_call *sc = malloc(sizeof *sc);
    int rc = -1;
    if (v && nums && idx && sc) {
        size_t k = 0, nn = 0, r = 0;
        v[k++] = "0";
        snprintf(nums[nn], sizeof nums[nn], "%" PRIu64, c->cut);
        v[k++] = nums[nn++];
        for (size_t i = from; i < to;) {
            size_t j = i;
            while (j < to && strcmp(c->rooms[j], c->rooms[i]) == 0) j++;
            bus_unstored_index(idx[r], sizeof idx[r], f->cluster, c->rooms[i]);
            v[k++] = c->rooms[i];
            v[k++] = idx[r++];
            for (int want = 1; want >= 0; want--) {
                size_t cnt = 0;
                for (size_t x = i; x < j; x++) cnt += (stored[x] != 0) == want;
                snprintf(nums[nn], sizeof nums[nn], "%zu", cnt);
                v[k++] = nums[nn++];
                for (size_t x = i; x < j; x++) {
                    if ((stored[x] != 0) != want) continue;
                    snprintf(nums[nn], sizeof nums[nn], "%" PRIu64, c->seqs[x]);
                    v[k++] = nums[nn++];
                }
            }
            i = j;
        }
        *sc = (bf_call){f, c->node, c->more};
        redis_call how = {.slot = -1, .node = c->node, .script = BUS_S_SETTLE};
        rc = redis_client_call(f->rc, &how, (int)k, v, NULL, settle_reply, sc);
        if (rc == 0) f->settles++;
    }
    if (rc != 0) free(sc);
    free(v);
    free(nums);
    free(idx);
    return rc == 0 ? 0 : -1;
}

void bus_check_done(bus_check *c, int status, const unsigned char *stored)
{
    if (!c) return;
    struct bus_bf *f = c->f;
    if (!f || f->b->freeing || status != 0 || !stored) {
        check_free(c); /* failed: the next tick's round asks again */
        if (f) work_done(f);
        return;
    }
    /* settled in calls of at most BUS_SETTLE_CHUNK pairs (a room cut
     * between two calls is named in both): a round of a million pairs is
     * many short scripts with bounded arguments, not one */
    int sent = 0;
    for (size_t from = 0; from < c->n; from += BUS_SETTLE_CHUNK) {
        size_t to = c->n - from > BUS_SETTLE_CHUNK ? from + BUS_SETTLE_CHUNK : c->n;
        if (settle_send(f, c, from, to, stored) == 0) sent++; /* else the next round asks again */
    }
    /* the check's in-flight count becomes one per settle sent */
    f->sweeping += sent;
    check_free(c);
    work_done(f);
}

/* {1, more, cut, room, seq, ...} -> ask the core (a check started, unless
 * nothing well-formed was listed or out of memory). *listed: the
 * well-formed pairs (a malformed item is skipped) */
static void check_round(struct bus_bf *f, uint64_t node, uint64_t cut, int more,
                       const redisReply *rp, size_t items, size_t *listed)
{
    bus *b = f->b;
    size_t n = 0, bytes = 0;
    char room[CHAT_ROOM_MAX + 1];
    uint64_t seq;
    for (size_t k = 0; k < items; k++) {
        if (bus_reply_check_item(rp, k, room, &seq) != 0) continue;
        n++;
        bytes += strlen(room) + 1;
    }
    *listed = n;
    if (!n) return;
    struct bus_check *c = malloc(sizeof *c + bytes);
    if (c) {
        c->rooms = malloc(n * sizeof *c->rooms);
        c->seqs = NULL;
    }
    uint64_t *seqs = c && c->rooms ? malloc(n * sizeof *seqs) : NULL;
    if (!seqs) {
        if (c) free(c->rooms);
        free(c);
        return;
    }
    c->f = f;
    c->node = node;
    c->cut = cut;
    c->more = more;
    c->seqs = seqs;
    c->n = 0;
    char *p = c->buf;
    for (size_t k = 0; k < items && c->n < n; k++) {
        if (bus_reply_check_item(rp, k, room, &seq) != 0) continue;
        size_t l = strlen(room);
        memcpy(p, room, l + 1);
        c->rooms[c->n] = p;
        c->seqs[c->n++] = seq;
        p += l + 1;
    }
    c->prev = NULL;
    c->next = f->checks;
    if (f->checks) f->checks->prev = c;
    f->checks = c;
    f->sweeping++; /* until the settle answers */
    /* the core may answer at once (bus_check_done sends the settle) */
    b->h.on_check(b->ud, c, c->n, (const char *const *)c->rooms, c->seqs);
}

static void sweep_reply(void *ud, const redisReply *rp)
{
    uint64_t node;
    int more;
    struct bus_bf *f = bf_call_end(ud, &node, &more);
    bus *b = f->b;
    size_t items = 0, listed = 0;
    uint64_t cut = 0;
    /* no reply (connection gone) or an error: the next tick's round
     * retries; {0}: another node's round */
    if (rp && !b->freeing && rp->type == REDIS_REPLY_ERROR)
        LOGW(MOD, "backfill sweep: %.*s", (int)rp->len, rp->str ? rp->str : "");
    else if (rp && !b->freeing && bus_reply_check_round(rp, &more, &cut, &items) == 1) {
        f->rounds++;
        if (more & BUS_MORE_ROOMS) metric_inc(b->m.backfill_limit_rooms);
        if (more & BUS_MORE_PER_ROOM) metric_inc(b->m.backfill_limit_per_room);
        check_round(f, node, cut, more, rp, items, &listed);
        metric_add(b->m.backfill_checked, listed);
        /* the malformed pairs were removed by the sweep script itself (a
         * member that is not a seq, an index room that is not a room
         * name or whose set has another type): counted and logged once
         * per round, never asked about */
        if (items > listed) {
            metric_add(b->m.backfill_dropped, items - listed);
            LOGW(MOD, "backfill: removed %zu malformed unstored entr%s (a member that is not a "
                 "seq, an index room that is not a valid room name, or one whose set has another "
                 "type: that set is left in place)", items - listed, items - listed == 1 ? "y" : "ies");
        }
        /* a limited round that listed nothing well-formed (the rooms it met
         * had nothing old: stale index scores, which it re-scored or
         * dropped; or only malformed entries, which it removed) is
         * complete without a check: the next round follows at once */
        if (more && !listed) f->more = 1;
    }
    work_done(f); /* this sweep's share of the tick's work */
}

/* one sweep call on one node: the lock, then its indexes */
static void sweep_node(void *ud, uint64_t node, const uint16_t (*ranges)[2], int nranges)
{
    struct bus_bf *f = ud;
    char grace[16], lock[16], nrooms[16], nper[16];
    /* a round is one tick (grace/2); the lock ends a little before this
     * node's next tick, so some node sweeps every round and only one */
    uint32_t lock_ms = f->grace_ms / 2 - f->grace_ms / 20;
    if (!lock_ms) lock_ms = 1;
    snprintf(grace, sizeof grace, "%u", (unsigned)f->grace_ms);
    snprintf(lock, sizeof lock, "%u", (unsigned)lock_ms);
    snprintf(nrooms, sizeof nrooms, "%u", (unsigned)f->check_rooms);
    snprintf(nper, sizeof nper, "%u", (unsigned)f->check_per_room);
    /* the slot indexes of this master, and the round's lock at its first slot */
    size_t nidx;
    char **idx = redis_slot_keys(f->cluster, ranges, nranges, "unstored", &nidx);
    const uint16_t first[1][2] = {{nranges ? ranges[0][0] : 0, nranges ? ranges[0][0] : 0}};
    size_t nl;
    char **klock = idx ? redis_slot_keys(f->cluster, first, 1, "backfill:lock", &nl) : NULL;
    const char **v = klock ? malloc((7 + nidx) * sizeof *v) : NULL;
    if (!v) {
        free(idx);
        free(klock);
        return;
    }
    v[0] = "1";
    v[1] = klock[0];
    v[2] = f->token;
    v[3] = grace;
    v[4] = lock;
    v[5] = nrooms;
    v[6] = nper;
    for (size_t i = 0; i < nidx; i++) v[7 + i] = idx[i];
    redis_call how = {.slot = -1, .node = node, .script = BUS_S_SWEEP};
    bf_call *sc = malloc(sizeof *sc);
    if (sc) {
        *sc = (bf_call){f, node, 0};
        if (redis_client_call(f->rc, &how, (int)(7 + nidx), v, NULL, sweep_reply, sc) == 0)
            f->sweeping++;
        else
            free(sc);
    }
    free(v);
    free(idx);
    free(klock);
}

static void sweep_cb(uv_timer_t *t)
{
    struct bus_bf *f = t->data;
    if (f->sweeping || f->b->freeing) return;
    redis_client_masters(f->rc, sweep_node, f);
}

/* ---- lifetime ---- */

static void timer_closed(uv_handle_t *h)
{
    struct bus_bf *f = h->data;
    bus *b = f->b;
    if (--f->open == 0) {
        marks_clear(f);
        hmap_free(&f->marks);
        free(f);
    }
    bus_handle_closed(b);
}

int bus_backfill_init(bus *b, redis_client *rc, const bus_opts *o, char *err, size_t errlen)
{
    if (!b->h.on_check) {
        snprintf(err, errlen, "tracking unstored messages needs a history check (on_check)");
        return -1;
    }
    /* no defaults here: they are the settings' (config.c, CHAT_BACKFILL_*),
     * one place, and the bus is below config */
    if (!o->backfill_grace_ms || !o->backfill_check_rooms || !o->backfill_check_per_room) {
        snprintf(err, errlen, "tracking unstored messages needs backfill_grace_ms, backfill_check_rooms "
                 "and backfill_check_per_room (the CHAT_BACKFILL_* settings)");
        return -1;
    }
    struct bus_bf *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    f->b = b;
    f->rc = rc;
    f->cluster = redis_client_is_cluster(rc);
    f->grace_ms = o->backfill_grace_ms;
    f->check_rooms = o->backfill_check_rooms;
    f->check_per_room = o->backfill_check_per_room;
    hmap_init(&f->marks);
    char host[64] = "node";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    snprintf(f->token, sizeof f->token, "%s-%d-%" PRIx64, host, (int)getpid(),
             mono_ns() ^ (uint64_t)(uintptr_t)f);
    uv_timer_init(b->loop, &f->sweep);
    uv_timer_init(b->loop, &f->flush);
    f->sweep.data = f;
    f->flush.data = f;
    f->open = 2;
    b->handles += 2;
    uint64_t every = f->grace_ms / 2 ? f->grace_ms / 2 : 1;
    uv_timer_start(&f->sweep, sweep_cb, every, every);
    b->bf = f;
    return 0;
}

void bus_backfill_free(bus *b)
{
    struct bus_bf *f = b->bf;
    if (!f) return;
    b->bf = NULL;
    for (struct bus_check *c = f->checks; c; c = c->next) c->f = NULL; /* the core frees them */
    f->checks = NULL;
    uv_close((uv_handle_t *)&f->sweep, timer_closed);
    uv_close((uv_handle_t *)&f->flush, timer_closed);
}

uint64_t bus_backfill_rounds(const bus *b)
{
    return b && b->bf ? b->bf->rounds : 0;
}

uint64_t bus_backfill_settles(const bus *b)
{
    return b && b->bf ? b->bf->settles : 0;
}
