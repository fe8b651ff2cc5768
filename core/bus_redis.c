/* bus_redis: the Redis backend of the bus, on the one Redis connection
 * layer (redis_client.h), for one Redis or a Redis Cluster alike.
 * Owns: the backend's state (bus_redis_int.h) and lifetime, the client
 * (with the bus scripts loaded on every node, and a subscription connection
 * per node), the publish script calls (seeding a missing head through the
 * bus's seed provider first), replay, range fetches for gap fills, emits,
 * marks and id forgetting, and the backfill (bus_backfill.c, started here
 * with track_unstored). The room subscriptions, their sync and readiness
 * are bus_redis_sub.c; the head script is bus_redis_head.c. */
#define _GNU_SOURCE
#include "bus_redis_int.h"
#include "log.h"
#include "redis_slot.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "bus"

/* ---- publish ---- */

static void pub_seeded(void *arg, int status, uint64_t max_seq, const char *epoch, int given);
static int send_publish(busr *R, bus_req *r);

static void pub_cb(void *ud, const redisReply *rp)
{
    bus_req *r = ud;
    bus *b = r->b;
    uint64_t seq = 0, dup = 0;
    if (!rp) {
        bus_req_unhold(r);
        return;
    }
    if (rp->type == REDIS_REPLY_ERROR) {
        LOGW(MOD, "publish to %s: %.*s", r->room, (int)rp->len, rp->str ? rp->str : "");
        bus_req_unhold(r);
        return;
    }
    int upd = r->upd ? bus_redis_update_reply(r, rp, &seq, &dup) : 0;
    if (upd > 0) {   /* a message update refused by the state step (bus.h) */
        bus_req_publish_done(r, upd, 0, 0);
        bus_req_unhold(r);
        return;
    }
    if ((upd == 0 && bus_redis_publish_reply(rp, &seq, &dup) != 0) || upd == -1 ||
        (dup == 2 && r->seed_mode != BUS_SEED_ASK)) {
        /* (dup 2 in mode 'Y': the ids were written back to an earlier run
         * of this Redis, which restarted since: unavailable, the resend
         * seeds again) */
        LOGW(MOD, "publish to %s: %s", r->room,
             dup == 2 ? "the seed's client ids went to an earlier Redis run" : "unexpected reply");
        bus_req_unhold(r);
        return;
    }
    if (dup == 2) {
        /* no head in Redis: ask for the durable one, then publish again
         * (the hold moves to the seed request) */
        if (b->freeing || bus_seed_get(b, r->room, 1, pub_seeded, r) != 0) bus_req_unhold(r);
        return;
    }
    metric_observe(b->m.op_publish, since_s(r->t0));
    if (!dup) metric_inc(b->m.published);
    bus_room *room = bus_room_get(b, r->room);
    if (room && seq > room->floor) room->floor = seq;
    bus_req_publish_done(r, 0, seq, dup ? 1 : 0);
    bus_req_unhold(r);
}

int bus_redis_publish_reply(const redisReply *rp, uint64_t *seq, uint64_t *dup)
{
    if (!rp || rp->type != REDIS_REPLY_ARRAY || rp->elements != 2 || !rp->element ||
        redis_reply_u64(rp->element[0], seq) != 0 || redis_reply_u64(rp->element[1], dup) != 0 ||
        *seq > SEQ_MAX || *dup > 2 || (*dup == 2) != (*seq == 0))
        return -1;
    return 0;
}

/* A message update's answers besides a message's (bus_script.c): {0, 3|4|5}
 * (returns that status: nothing published) and a react's {seq, 0, count}
 * (sets r->count; returns -2 after filling seq and dup). 0: an ordinary
 * answer, parse it as a message's; -1: malformed (a seq past SEQ_MAX or a
 * count past INT64_MAX included: the scripts answer integers, but a bulk
 * string of 20 digits parses too). */
int bus_redis_update_reply(bus_req *r, const redisReply *rp, uint64_t *seq, uint64_t *dup)
{
    if (!rp || rp->type != REDIS_REPLY_ARRAY || !rp->element) return 0;
    uint64_t a = 0, b = 0, c = 0;
    if (rp->elements == 2 && redis_reply_u64(rp->element[0], &a) == 0 &&
        redis_reply_u64(rp->element[1], &b) == 0 && a == 0 && b >= 3 && b <= 5)
        return (int)b;
    if (rp->elements != 3) return 0;
    if (redis_reply_u64(rp->element[0], &a) != 0 || redis_reply_u64(rp->element[1], &b) != 0 ||
        redis_reply_u64(rp->element[2], &c) != 0 || a == 0 || a > SEQ_MAX || b != 0 ||
        c > (uint64_t)INT64_MAX)
        return -1;
    *seq = a;
    *dup = 0;
    r->count = (int64_t)c;
    return -2;
}

static void pub_seeded(void *arg, int status, uint64_t max_seq, const char *epoch, int given)
{
    bus_req *r = arg;
    bus *b = r->b;
    busr *R = b->impl;
    if (status != 0 || b->freeing) {
        bus_req_unhold(r); /* -1: unavailable */
        return;
    }
    uint64_t floor = bus_rhead_floor(b, r->room);
    r->seed_mode = given;
    r->seed = max_seq > floor ? max_seq : floor;
    snprintf(r->epoch, sizeof r->epoch, "%s", epoch);
    if (send_publish(R, r) != 0) bus_req_unhold(r);
}

/* EVALSHA BUS_PUBLISH_LUA on the room's shard (see bus_script.c) */
static int send_publish(busr *R, bus_req *r)
{
    bus *b = R->b;
    int slot = redis_room_slot(r->room);
    char kseq[CHAT_ROOM_MAX + 32], krec[CHAT_ROOM_MAX + 32], ch[BUS_CHAN_MAX];
    char kid[BUS_ID_KEY_LEN], nmax[24], nttl[16], nfloor[24], nseed[24], nkeys[4];
    char kuns[CHAT_ROOM_MAX + 32], kidx[48], kep[CHAT_ROOM_MAX + 32], krun[CHAT_ROOM_MAX + 32], nnow[24];
    char mode[2 + REDIS_RUN_ID_LEN];
    int track = b->track_unstored;
    key(kseq, sizeof kseq, r->room, "seq");
    key(krec, sizeof krec, r->room, "recent");
    key(kep, sizeof kep, r->room, "epoch");
    key(krun, sizeof krun, r->room, "run");
    chan(R, ch, sizeof ch, r->room, "msg");
    key(kuns, sizeof kuns, r->room, "unstored");
    bus_unstored_index(kidx, sizeof kidx, R->cluster, r->room);
    snprintf(nmax, sizeof nmax, "%zu", b->recent_max);
    /* an update's ttl also bounds its target's state hash: at least a day */
    snprintf(nttl, sizeof nttl, "%u", (unsigned)(r->upd ? bus_state_ttl_s(b) : b->id_ttl_s));
    snprintf(nfloor, sizeof nfloor, "%" PRIu64, bus_rhead_floor(b, r->room));
    /* seeding (see bus_script.c): ask first, then the provider's answer */
    if (!r->seed_mode) r->seed_mode = bus_has_seed(b) ? BUS_SEED_ASK : BUS_SEED_NONE;
    if (r->seed_mode == BUS_SEED_NONE) bus_epoch_new(b, r->epoch);
    bus_seed_mode_arg(mode, r->seed_mode);
    snprintf(nseed, sizeof nseed, "%" PRIu64, r->seed);
    /* a message update adds its target's state key before the id key and
     * its arguments from ARGV[13] on (bus_update.c, bus_script.c) */
    char kupd[CHAT_ROOM_MAX + 48], nupd[4], ubufs[2][32];
    int nk = 4 + (track ? 2 : 0);
    if (r->upd) snprintf(nupd, sizeof nupd, "%d", ++nk);
    snprintf(nkeys, sizeof nkeys, "%d", nk + (r->id ? 1 : 0));
    const char *sargv[24], **argv = sargv;
    size_t slens[24], *lens = slens;
    if (r->upd) {
        size_t cap = 24 + bus_upd_nargs(r);
        argv = malloc(cap * sizeof *argv);
        lens = malloc(cap * sizeof *lens);
        if (!argv || !lens) { free(argv); free(lens); return -1; }
    }
    int argc = 0;
#define ARG(s, l) (argv[argc] = (s), lens[argc] = (l), argc++)
    ARG(nkeys, strlen(nkeys));
    ARG(kseq, strlen(kseq));
    ARG(krec, strlen(krec));
    ARG(kep, strlen(kep));
    ARG(krun, strlen(krun));
    if (track) {
        /* the unstored set and the room's index (one slot) */
        ARG(kuns, strlen(kuns));
        ARG(kidx, strlen(kidx));
    }
    if (r->upd) {
        bus_upd_key(r, kupd, sizeof kupd);
        ARG(kupd, strlen(kupd));
    }
    if (r->id) {
        id_key(kid, sizeof kid, r->room, r->id);
        ARG(kid, strlen(kid));
    }
    ARG(r->tail, r->tail_len);
    ARG(nmax, strlen(nmax));
    ARG(nttl, strlen(nttl));
    ARG(ch, strlen(ch));
    ARG(nfloor, strlen(nfloor));
    if (track) { /* the publish time (this node's clock) marks it unstored */
        snprintf(nnow, sizeof nnow, "%" PRIu64, now_ms());
        ARG(nnow, strlen(nnow));
    } else {
        ARG("0", 1);
    }
    ARG(r->room, strlen(r->room));
    ARG(r->id ? "1" : "0", 1);
    int mode_at = argc;
    ARG(mode, strlen(mode));
    ARG(nseed, strlen(nseed));
    ARG(r->epoch, strlen(r->epoch));
    ARG(R->cluster ? "spublish" : "publish", R->cluster ? 8 : 7);
    if (r->upd) bus_upd_args(r, nupd, argv, lens, &argc, ubufs);
#undef ARG
    redis_call how = {.slot = slot, .node = 0, .script = BUS_S_PUBLISH,
                      .run_arg = r->seed_mode == BUS_SEED_NONE ? 0 : mode_at};
    int rc = redis_client_call(R->rc, &how, argc, argv, lens, pub_cb, r);
    if (argv != sargv) { free(argv); free(lens); }
    return rc;
}

static int be_publish(bus *b, bus_req *r)
{
    busr *R = b->impl;
    if (!redis_client_slot_ready(R->rc, redis_room_slot(r->room))) return -1;
    if (send_publish(R, r) != 0) return -1;
    r->hold = 1;
    return 0;
}

/* ---- replay ----
 * The head script and the range read are pipelined to the room's shard;
 * when the head needs a seed, the range reply of that round is skipped and
 * both are sent again with the provider's answer. */

static int send_replay(busr *R, bus_req *r);

static void replay_seeded(void *arg, int status, uint64_t max_seq, const char *epoch, int given)
{
    bus_req *r = arg;
    bus *b = r->b;
    busr *R = b->impl;
    if (status != 0 || b->freeing) {
        if (status == BUS_HEAD_LATE) r->fail = status; /* the caller learns why */
        bus_req_unhold(r);
        return;
    }
    uint64_t floor = bus_rhead_floor(b, r->room);
    r->seed_mode = given;
    r->seed = max_seq > floor ? max_seq : floor;
    snprintf(r->epoch, sizeof r->epoch, "%s", epoch);
    send_replay(R, r);  /* holds r once per queued command */
    bus_req_unhold(r);  /* the seed's hold: at zero (nothing queued) r answers -1 */
}

static void replay_head_cb(void *ud, const redisReply *rp)
{
    bus_req *r = ud;
    head_res h;
    if (!rp) {
        /* no answer: the hold below fails r */
    } else if (bus_rhead_parse(rp, &h) == 0 && h.status == 2 && r->seed_mode == BUS_SEED_ASK) {
        if (r->since != UINT64_MAX) r->skip_ranges++;
        r->hold++; /* the seed's */
        if (r->b->freeing || bus_seed_get(r->b, r->room, 1, replay_seeded, r) != 0) r->hold--;
    } else if (bus_rhead_parse(rp, &h) == 0 && h.status == 0) {
        r->have_head = 1;
        r->head = h.head;
        snprintf(r->epoch, sizeof r->epoch, "%s", h.epoch);
        if (r->since == UINT64_MAX) {
            metric_observe(r->b->m.op_replay, since_s(r->t0));
            bus_req_replay_done(r, 0, NULL, 0, r->head, r->epoch);
        }
    } else {
        LOGW(MOD, "replay %s: bad head reply", r->room);
    }
    bus_req_unhold(r);
}

static void replay_range_cb(void *ud, const redisReply *rp)
{
    bus_req *r = ud;
    if (rp && r->skip_ranges) { /* its head needed a seed: a later round answers */
        r->skip_ranges--;
        bus_req_unhold(r);
        return;
    }
    if (!rp || !r->have_head || rp->type != REDIS_REPLY_ARRAY) {
        bus_req_unhold(r);
        return;
    }
    uint64_t head = r->head;
    metric_observe(r->b->m.op_replay, since_s(r->t0));
    size_t want = 0;
    int span = bus_replay_span(r, head, r->max, &want);
    if (span <= 0) {
        bus_req_replay_done(r, span < 0, NULL, 0, head, r->epoch);
    } else {
        bus_entry *e = malloc(want * sizeof *e);
        size_t n = e ? bus_reply_replay(rp, r->since, want, e) : 0;
        if (e && n == want) bus_req_replay_done(r, 0, e, n, head, r->epoch);
        else if (e) bus_req_replay_done(r, 1, NULL, 0, head, r->epoch);
        free(e);
    }
    bus_req_unhold(r);
}

/* Queues the head script and (unless only the head is asked) the range;
 * r->hold counts each. 0, or -1 when nothing could be queued. */
static int send_replay(busr *R, bus_req *r)
{
    char krec[CHAT_ROOM_MAX + 32], min[24], max[24], lim[24];
    if (!r->seed_mode) r->seed_mode = bus_has_seed(R->b) ? BUS_SEED_ASK : BUS_SEED_NONE;
    if (r->seed_mode == BUS_SEED_NONE) bus_epoch_new(R->b, r->epoch);
    if (bus_rhead_send(R, replay_head_cb, r, r->room, bus_rhead_floor(R->b, r->room), r->seed_mode,
                         r->seed, r->epoch) != 0)
        return -1;
    r->hold++;
    if (r->since == UINT64_MAX) return 0;
    key(krec, sizeof krec, r->room, "recent");
    snprintf(min, sizeof min, "(%" PRIu64, r->since);
    snprintf(lim, sizeof lim, "%zu", r->max < SIZE_MAX ? r->max + 1 : r->max);
    if (r->upto) snprintf(max, sizeof max, "%" PRIu64, r->upto);
    else snprintf(max, sizeof max, "+inf");
    const char *z[] = {"ZRANGEBYSCORE", krec, min, max, "LIMIT", "0", lim};
    redis_call how = {.slot = redis_room_slot(r->room), .node = 0, .script = -1};
    if (redis_client_call(R->rc, &how, 7, z, NULL, replay_range_cb, r) == 0) r->hold++;
    return 0;
}

static int be_replay(bus *b, bus_req *r)
{
    return send_replay(b->impl, r);
}

/* ---- gap fill ---- */

static void fetch_cb(void *ud, const redisReply *rp)
{
    room_op *op = ud;
    busr *R = op->R;
    bus *b = R->b;
    if (b->freeing) { free(op); return; }
    if (!rp || rp->type != REDIS_REPLY_ARRAY) {
        bus_order_fetched(b, op->room, op->sub_id, 0, op->from, op->to, NULL, 0);
        bus_room *room = bus_room_get(b, op->room);
        if (rp) LOGE(MOD, "fetch %s: %.*s", op->room, rp->type == REDIS_REPLY_ERROR ? (int)rp->len : 1,
                     rp->type == REDIS_REPLY_ERROR ? rp->str : "?");
        /* (when its shard went down, the room was reset already: other sub_id) */
        if (room && room->sub_id == op->sub_id && room->sub_state == BUS_SUB_SUBSCRIBED) {
            /* not a gap: do not report loss; sync the room again later */
            bus_order_reset(b, room, 1);
            bus_rsub_retry_later(R, room);
            bus_rsub_arm(R);
        }
        free(op);
        return;
    }
    metric_observe(b->m.op_fetch, since_s(op->t0));
    bus_entry *e = rp->elements ? malloc(rp->elements * sizeof *e) : NULL;
    size_t n = e ? bus_reply_entries(rp, e, rp->elements) : 0;
    if (rp->elements && !e) {
        bus_order_fetched(b, op->room, op->sub_id, 0, op->from, op->to, NULL, 0);
    } else {
        LOGI(MOD, "room %s: filling seq %" PRIu64 "..%" PRIu64 " from the recent buffer (%zu found)",
             op->room, op->from, op->to, n);
        bus_order_fetched(b, op->room, op->sub_id, 1, op->from, op->to, e, n);
    }
    free(e);
    free(op);
}

static int be_fetch(bus *b, bus_room *room, uint64_t from, uint64_t to)
{
    busr *R = b->impl;
    char krec[CHAT_ROOM_MAX + 32], a[24], z[24];
    room_op *op = bus_rop_new(R, room);
    if (!op) return -1;
    op->from = from;
    op->to = to;
    key(krec, sizeof krec, room->name, "recent");
    snprintf(a, sizeof a, "%" PRIu64, from);
    snprintf(z, sizeof z, "%" PRIu64, to);
    const char *argv[] = {"ZRANGEBYSCORE", krec, a, z};
    redis_call how = {.slot = redis_room_slot(room->name), .node = 0, .script = -1};
    if (redis_client_call(R->rc, &how, 4, argv, NULL, fetch_cb, op) != 0) {
        free(op);
        return -1;
    }
    return 0;
}

/* ---- emit, mark, lifetime ---- */

static int be_emit(bus *b, const char *room, const char *kind, const char *data, size_t len)
{
    busr *R = b->impl;
    char ch[BUS_CHAN_MAX];
    chan(R, ch, sizeof ch, room, kind);
    const char *argv[] = {R->cluster ? "SPUBLISH" : "PUBLISH", ch, data};
    size_t lens[] = {strlen(argv[0]), strlen(ch), len};
    redis_call how = {.slot = redis_room_slot(room), .node = 0, .script = -1};
    return redis_client_call(R->rc, &how, 3, argv, lens, NULL, NULL);
}

/* a client id whose seq could not be stored (a history conflict) */
static void be_forget_id(bus *b, const char *room, const char *id, uint64_t seq)
{
    busr *R = b->impl;
    char kid[BUS_ID_KEY_LEN], sq[24];
    id_key(kid, sizeof kid, room, id);
    snprintf(sq, sizeof sq, "%" PRIu64, seq);
    const char *a[] = {"1", kid, sq};
    redis_call how = {.slot = redis_room_slot(room), .node = 0, .script = BUS_S_FORGET};
    redis_client_call(R->rc, &how, 3, a, NULL, NULL, NULL); /* no-op while its shard is down */
}

/* a message update's target state that holds an update history did not take */
static void be_undo_update(bus *b, const char *room, const struct bus_upd *u)
{
    busr *R = b->impl;
    char k[CHAT_ROOM_MAX + 48], op[2];
    const char *ua[3];
    bus_upd_undo_args(room, u, k, sizeof k, ua, op);
    const char *a[] = {"1", k, ua[0], ua[1], ua[2]};
    redis_call how = {.slot = redis_room_slot(room), .node = 0, .script = BUS_S_UNDO};
    redis_client_call(R->rc, &how, 5, a, NULL, NULL, NULL); /* no-op while its shard is down */
}

/* ---- restoring a seed's client ids (BUS_RESTORE_LUA, bus_script.c) ---- */

static void restore_cb(void *ud, const redisReply *rp)
{
    bus_seed *sd = ud;
    int ok = rp && rp->type == REDIS_REPLY_INTEGER;
    if (rp && !ok)
        LOGW(MOD, "room %s: restoring client ids: %.*s", bus_seed_room(sd),
             rp->type == REDIS_REPLY_ERROR ? (int)rp->len : 1,
             rp->type == REDIS_REPLY_ERROR && rp->str ? rp->str : "?");
    bus_seed_restored(sd, ok);
}

/* One call per BUS_RESTORE_CHUNK ids ('O' alone, else 'F', 'C'..., 'L':
 * bus_script.c), in order on the room's shard. Called only for a seed with
 * ids (bus_seed_done: a seed without any sends mode 'E', no call). */
static int be_restore_ids(bus *b, bus_seed *sd)
{
    busr *R = b->impl;
    const char *room = bus_seed_room(sd);
    size_t n = 0;
    const bus_seed_id *ids = bus_seed_ids(sd, &n);
    if (n == 0) return -1;
    size_t most = n < BUS_RESTORE_CHUNK ? n : BUS_RESTORE_CHUNK, cap = 3 + 3 * most;
    const char **argv = malloc(cap * sizeof *argv);
    size_t *lens = malloc(cap * sizeof *lens);
    char (*keys)[BUS_ID_KEY_LEN] = malloc(most * sizeof *keys);
    char (*nums)[2][24] = malloc(most * sizeof *nums);
    int rc = argv && lens && keys && nums ? 0 : -1;
    char krun[CHAT_ROOM_MAX + 32], nk[8], mode[2 + REDIS_RUN_ID_LEN];
    key(krun, sizeof krun, room, "run");
    for (size_t at = 0; rc == 0 && at < n; at += BUS_RESTORE_CHUNK) {
        size_t m = n - at < BUS_RESTORE_CHUNK ? n - at : BUS_RESTORE_CHUNK;
        int argc = 0;
        snprintf(nk, sizeof nk, "%zu", m + 1);
        bus_seed_mode_arg(mode, BUS_SEED_GIVEN);
        int last = at + m >= n;
        mode[0] = at == 0 ? (last ? 'O' : 'F') : (last ? 'L' : 'C');
        argv[argc] = nk; lens[argc++] = strlen(nk);
        argv[argc] = krun; lens[argc++] = strlen(krun);
        for (size_t i = 0; i < m; i++) {
            id_key(keys[i], sizeof keys[i], room, ids[at + i].id);
            argv[argc] = keys[i]; lens[argc++] = strlen(keys[i]);
        }
        int mode_at = argc;
        argv[argc] = mode; lens[argc++] = strlen(mode);
        for (size_t i = 0; i < m; i++) {
            snprintf(nums[i][0], sizeof nums[i][0], "%" PRIu64, ids[at + i].seq);
            snprintf(nums[i][1], sizeof nums[i][1], "%u", (unsigned)ids[at + i].ttl_s);
            argv[argc] = nums[i][0]; lens[argc++] = strlen(nums[i][0]);
            argv[argc] = nums[i][1]; lens[argc++] = strlen(nums[i][1]);
        }
        redis_call how = {.slot = redis_room_slot(room), .node = 0, .script = BUS_S_RESTORE,
                          .run_arg = mode_at};
        /* held before the call: an answer can never come before its hold */
        bus_seed_restore_hold(sd);
        if (redis_client_call(R->rc, &how, argc, argv, lens, restore_cb, sd) != 0) {
            bus_seed_restore_unhold(sd);
            rc = -1;
        } else {
            R->restores++;
        }
    }
    free(argv);
    free(lens);
    free(keys);
    free(nums);
    return rc;
}

uint64_t bus_restore_calls(const bus *b)
{
    return b && b->be == &bus_redis_backend && b->impl ? ((const busr *)b->impl)->restores : 0;
}

static void be_mark(bus *b, const char *room, uint64_t seq)
{
    if (b->bf) bus_backfill_mark(b, room, seq);
}

static void timer_closed(uv_handle_t *h)
{
    busr *R = h->data;
    bus *b = R->b;
    free(R);
    bus_handle_closed(b);
}

static int be_init(bus *b, const bus_opts *o, char *err, size_t errlen)
{
    busr *R = calloc(1, sizeof *R);
    if (!R) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    R->b = b;
    /* the run_id only with a seed provider: the scripts check heads against it */
    redis_client_opts co = {o->redis_url, MOD, BUS_SCRIPTS, BUS_S_COUNT, 1, bus_has_seed(b),
                            o->redis_linger_ms};
    R->rc = redis_client_new(b->loop, &co, &bus_rsub_handlers, R, err, errlen);
    if (!R->rc) {
        free(R);
        return -1;
    }
    R->cluster = redis_client_is_cluster(R->rc);
    int db = redis_client_db(R->rc);
    if (db > 0) snprintf(R->chan_ns, sizeof R->chan_ns, "chat:db%d:", db);
    else snprintf(R->chan_ns, sizeof R->chan_ns, "chat:");
    snprintf(R->ctl, sizeof R->ctl, "%sctl", R->chan_ns);
    bus_epoch_new(b, R->tag);
    if (o->track_unstored) {
        b->track_unstored = 1;
        /* fails before it opens anything; nothing is pending on the client */
        if (bus_backfill_init(b, R->rc, o, err, errlen) != 0) {
            redis_client_free(R->rc);
            free(R);
            return -1;
        }
    }
    uv_timer_init(b->loop, &R->retry_t);
    R->retry_t.data = R;
    b->handles++;
    b->impl = R;
    return 0;
}

static void be_free(bus *b)
{
    busr *R = b->impl;
    bus_backfill_free(b);
    redis_client_free(R->rc); /* pending callbacks: NULL (answered -1) */
    R->rc = NULL;
    bus_ridb_free(R);
    uv_close((uv_handle_t *)&R->retry_t, timer_closed);
}

const bus_backend bus_redis_backend = {
    .init = be_init,
    .publish = be_publish,
    .replay = be_replay,
    .emit = be_emit,
    .control = bus_rctl_publish,
    .reconcile = bus_rsub_reconcile,
    .fetch = be_fetch,
    .forget_id = be_forget_id,
    .undo_update = be_undo_update,
    .restore_ids = be_restore_ids,
    .seed_ask = bus_rsub_seed_ask,
    .seed_probe = bus_rsub_seed_probe,
    .progress = bus_rsub_progress,
    .run_mark = bus_ridb_mark,
    .id_committed = bus_ridb_committed,
    .mark = be_mark,
    .health = bus_rsub_health,
    .free = be_free,
};

