/* bus_int: what the bus files share with each other (never included outside
 * core/bus*.c and the bus unit tests).
 * Owns nothing itself; declares
 *  - bus_room: one subscribed room (refcount, backend subscription state and
 *    the ordered-delivery state: last delivered seq, held messages, fill),
 *  - bus_req: one pending publish/replay with its user callback,
 *  - bus_backend: the operations each mode (Redis, in-process) provides,
 *  - the shared internals of the bus object (bus_core.c),
 *  - the ordered-delivery entry points backends call (bus_order.c),
 *  - the Redis scripts (bus_script.c) and the backfill of unstored messages
 *    (bus_backfill.c), both used by the Redis backend only,
 *  - seeding a room's head from the upper layer (bus_core.c: bus_seed_get).
 * The files stand in layers, each calling only the ones below it:
 *   bus.c (public API) -> bus_redis.c, bus_local.c (backends)
 *     -> bus_backfill.c -> bus_order.c -> bus_core.c
 * (bus_core.c reaches the backend only through the bus_backend table). */
#ifndef CHATD_BUS_INT_H
#define CHATD_BUS_INT_H
#include "bus_types.h"
#include "hmap.h"
#include "metrics.h"
#include "util.h"
#include <stdint.h>
#include <stddef.h>

/* ---- rooms and the ordered delivery (bus.c, bus_order.c) ---- */
typedef struct bus_held {
    uint64_t seq;
    size_t len;
    struct bus_held *next;
    char tail[];
} bus_held;

enum { BUS_SUB_NONE = 0, BUS_SUB_SUBSCRIBING, BUS_SUB_SUBSCRIBED, BUS_SUB_UNSUBSCRIBING };

typedef struct bus_req bus_req;

typedef struct bus_room {
    char name[CHAT_ROOM_MAX + 1];
    int refs;                /* local subscribers */
    /* backend subscription state; Redis: the node (redis_client) that holds
     * the room's channels while SUBSCRIBED, and a retry (head read or
     * subscribe that failed with an error) due at retry_at (mono ms) */
    int sub_state;
    uint64_t sub_node;
    uint64_t retry_at;
    uint32_t retry_ms;
    /* identifies the current subscription; async answers carrying another
     * id are stale (the room was unsubscribed or Redis reconnected) */
    uint64_t sub_id;
    /* ordered delivery */
    int synced;              /* head known for the current subscription */
    int have_last;           /* last is meaningful (kept across reconnects) */
    uint64_t last;           /* last seq delivered to on_message */
    uint64_t target;         /* head seen at the last sync */
    uint64_t floor;          /* highest seq acked to a publish of this node
                              * (Redis: the publish script's floor) */
    bus_held *held;          /* received early, ascending, unique, > last */
    size_t nheld;
    int adopt;               /* synced with the head unknown (no seq key and
                              * a seed provider: nothing was published
                              * since the subscription): the first message
                              * that arrives sets last */
    int fetching;            /* a range fetch is in flight */
    int busy;                /* inside a delivery loop: do not free */
    bus_req *waiting;        /* replays waiting for the sync */
} bus_room;

/* ---- pending requests (bus.c) ---- */
enum { BUS_REQ_PUBLISH = 1, BUS_REQ_REPLAY };

struct bus_req {
    int kind;
    bus *b;
    bus_publish_cb pcb;
    bus_replay_cb rcb;
    void *ud;
    int called;              /* user callback already invoked */
    int hold;                /* backend callbacks still referencing this */
    bus_req *prev, *next;    /* pending list of the bus */
    bus_req *wnext;          /* room waiting list */
    uint64_t t0;             /* mono_ns at submission */
    char room[CHAT_ROOM_MAX + 1];
    char *id;                /* the client id's key part (bus_id_part: sender and id) or NULL */
    char *tail;
    size_t tail_len;
    uint64_t since;
    size_t max;
    uint64_t upto;           /* replay: last seq wanted (0: the head) */
    int retried;             /* NOSCRIPT retry done */
    int have_head;
    uint64_t head;
    /* seeding (Redis mode): BUS_SEED_* of the next script call, the seed
     * (max stored seq, raised to the node's floor) and its epoch (or a
     * fresh candidate epoch without a provider) */
    int seed_mode;
    uint64_t seed;
    char epoch[BUS_EPOCH_MAX + 1];
    int skip_ranges;         /* replay: range replies of a round that needed a seed */
    int fail;                /* replay: the status it fails with (0: -1; BUS_HEAD_LATE
                              * when its seed did not get the durable head in time) */
    /* message updates (bus_update.c): the state step and its answer */
    struct bus_upd *upd;     /* NULL for a plain message */
    bus_update_cb ucb;
    int64_t count;           /* a react's count, set before the answer */
    /* a publish's tail and id live here (bus_req_new's extra bytes), not
     * in allocations of their own */
    _Alignas(16) char inl[];
};

enum {
    BUS_SEED_NONE = 'N',     /* no provider: the script creates a missing key (0, new epoch) */
    BUS_SEED_ASK = 'S',      /* provider: a missing key answers "needs seed" */
    BUS_SEED_GIVEN = 'Y',    /* provider answered: seed the key if still missing, once
                              * the run key says the ids are back (bus_script.c) */
    BUS_SEED_GIVEN_EMPTY = 'E', /* as 'Y', for a seed that had no client id to
                              * write back: nothing to lose, no run-key mark needed */
    BUS_SEED_PEEK = 'P',     /* subscription sync with a provider: report a
                              * missing key, create nothing */
};

/* Calls the user callback once (later calls are ignored). */
void bus_req_publish_done(bus_req *r, int status, uint64_t seq, int dup);
void bus_req_replay_done(bus_req *r, int status, const bus_entry *e, size_t n, uint64_t head,
                         const char *epoch);
/* A replay's span, given the room's head and the most entries the backend
 * answers (max): 1 with *want, the entries since+1 .. since+*want to read
 * (they end at the head, or at upto for bus_replay_upto); 0 when there are
 * none to read (answer 0, no entries); -1 when the replay cannot be
 * answered whole (answer 1: more than max, or an upto the head has not
 * reached). Both backends judge a replay here. */
int bus_replay_span(const bus_req *r, uint64_t head, size_t max, size_t *want);
/* Drops one backend reference; at zero the request is freed (its callback
 * is called with status -1 first if nobody answered it). */
void bus_req_unhold(bus_req *r);

/* ---- backends ---- */
typedef struct bus_backend {
    int (*init)(bus *b, const bus_opts *o, char *err, size_t errlen);
    /* Start the op; the backend holds r (r->hold) until it answers. 0 or -1
     * (not started: the caller frees r without calling back). */
    int (*publish)(bus *b, bus_req *r);
    int (*replay)(bus *b, bus_req *r);
    int (*emit)(bus *b, const char *room, const char *kind, const char *data, size_t len);
    /* The room's refs changed: subscribe/unsubscribe as needed. */
    void (*reconcile)(bus *b, bus_room *room);
    /* Fetch [from, to] of room from the recent buffer for the subscription
     * sub_id; answer with bus_order_fetched(). -1 when it cannot start. */
    int (*fetch)(bus *b, bus_room *room, uint64_t from, uint64_t to);
    /* bus_control (NULL: this backend has no control channel) */
    int (*control)(bus *b, const char *data, size_t len, bus_control_cb cb, void *ud);
    /* bus_forget_id (may be a no-op when down); id: a key part (bus_id_part) */
    void (*forget_id)(bus *b, const char *room, const char *id, uint64_t seq);
    /* bus_undo_update (u from bus_upd_copy; may be a no-op when down) */
    void (*undo_update)(bus *b, const char *room, const struct bus_upd *u);
    /* A room synced or a fill finished (Redis: readiness after recovery). */
    void (*progress)(bus *b);
    /* (may be NULL: nothing to restore) A seed's client ids (bus_seed_ids)
     * written back before the seed's waiters run: one
     * bus_seed_restore_hold per call started, one bus_seed_restored per
     * answer (also when freed). -1 when a call could not start. */
    int (*restore_ids)(bus *b, struct bus_seed *sd);
    /* (may be NULL: nobody to ask) Before a seed from history: ask the
     * nodes that hold the room to raise its head to what they delivered
     * (bus_seed_room); answer with bus_seed_asked (never inside the call).
     * Then, while some did, seed_probe: is the head there now? Answer with
     * bus_seed_probed. Both: 0, or -1 when the call could not start. An
     * answer after the bus is gone (bus_seed_bus NULL) only answers. */
    int (*seed_ask)(bus *b, struct bus_seed *sd);
    int (*seed_probe)(bus *b, struct bus_seed *sd);
    /* (may be NULL: 0) bus_run_mark */
    uint64_t (*run_mark)(const bus *b);
    /* (may be NULL: nothing to do) bus_id_committed (arguments checked; id: a key part) */
    void (*id_committed)(bus *b, const char *room, const char *id, uint64_t seq, uint64_t mark,
                         uint64_t published_ns, int update);
    /* (may be NULL) bus_mark_stored */
    void (*mark)(bus *b, const char *room, uint64_t seq);
    /* 1 when fully healthy, else 0 and a sentence (bus_health) */
    int (*health)(const bus *b, char *why, size_t n);
    /* Cancel everything, close every handle (bus_handle_closed per handle). */
    void (*free)(bus *b);
} bus_backend;

extern const bus_backend bus_redis_backend;
extern const bus_backend bus_local_backend;

struct bus {
    uv_loop_t *loop;
    bus_handlers h;
    void *ud;
    size_t recent_max;
    uint32_t id_ttl_s;
    const bus_backend *be;
    void *impl;              /* backend state */
    int ready;
    int freeing;
    int handles;             /* uv handles of the bus still open */
    hmap rooms;              /* name -> bus_room */
    uint64_t sub_counter;
    bus_req *pending;        /* every request not yet freed */
    /* requests that failed inside a bus_* call: answered (-1) from this
     * timer, since no callback may run inside a bus_* call */
    uv_timer_t defer;
    bus_req *deferred;       /* linked through wnext */
    int track_unstored;      /* Redis mode: the publish script records unstored seqs */
    struct bus_bf *bf;       /* backfill state (bus_backfill.c, set up by the
                              * Redis backend), NULL when off */
    hmap seeds;              /* room -> bus_seed in flight (one per room) */
    struct bus_seed *seeds_done; /* answered, waiters run from the defer timer */
    uv_timer_t seed_t;       /* seeds waiting for a holder's raise: probes */
    uv_timer_t seed_dl_t;    /* seeds waiting for their provider: the deadline */
    uint32_t seed_timeout_ms; /* bus_opts.seed_timeout_ms (0: none) */
    uint64_t rng;            /* epochs */
    char epoch[BUS_EPOCH_MAX + 1]; /* in-process mode without a provider:
                              * one epoch per process start */
    struct {
        metric_hist *op_publish, *op_replay, *op_fetch, *op_head;
        metric_counter *reconnects, *gaps_filled, *gaps_lost, *published;
        metric_counter *backfilled, *backfill_lost, *seeds, *seed_failures, *seed_unraised,
                       *seed_late_uses;
        metric_counter *backfill_checked, *backfill_dropped, *backfill_limit_rooms, *backfill_limit_per_room;
        metric_counter *ids_written_back, *ids_writeback_dropped;
    } m;
};

/* How long a message's update state (bus_update.c) is kept after its last
 * update: the idempotency window, but at least a day (without a database a
 * state that expired starts empty again: its reaction counts would reset). */
#define BUS_STATE_TTL_MIN_S 86400u
static inline uint32_t bus_state_ttl_s(const struct bus *b)
{
    return b->id_ttl_s > BUS_STATE_TTL_MIN_S ? b->id_ttl_s : BUS_STATE_TTL_MIN_S;
}

/* bus_core.c */
/* Sets up the shared internals (the deferral timer); 0 or -1. */
int bus_core_init(bus *b);
/* bus_free's first part: seed waiters answered -1 (before the backend). */
void bus_core_cancel(bus *b);
/* bus_free's part: the deferral timer closed, pending requests answered. */
void bus_core_close(bus *b);
/* Frees the bus when its last handle is closed (or now when none is open). */
void bus_core_release(bus *b);
/* extra: bytes for r->inl (a publish's tail and id), 0 for others */
bus_req *bus_req_new(bus *b, int kind, const char *room, size_t extra);
/* Unlinks and frees r (no callback). */
void bus_req_free(bus_req *r);
bus_room *bus_room_get(bus *b, const char *name);
/* Frees the room when nobody needs it any more. */
void bus_room_maybe_free(bus *b, bus_room *room);
/* A uv handle of the bus was closed (from its close callback). */
void bus_handle_closed(bus *b);
/* Readiness changed: calls on_ready unless freeing. */
void bus_set_ready(bus *b, int ready);
/* Runs replays that waited for the room's sync, or fails them (-1). */
void bus_room_run_waiting(bus *b, bus_room *room, int fail);

/* Seeding. fn(arg, status, max_seq, epoch, given) is called exactly once,
 * never inside bus_seed_get: 0 with the provider's answer, -1 when it
 * failed or the bus is being freed (b->freeing set: only release arg),
 * BUS_HEAD_LATE (-2) when the provider did not answer within the deadline
 * (bus_opts.seed_timeout_ms; a failure as -1 otherwise: a replay that
 * waited for it fails with it, r->fail, a publish with -1).
 * given: the seed mode of the waiter's next script call, BUS_SEED_GIVEN
 * (client ids were written back first) or BUS_SEED_GIVEN_EMPTY (the seed
 * had none). Waiters of one room share one on_seed request. Returns -1 (fn
 * not called) without a provider or memory. ask 1: a new request first
 * asks the nodes that hold the room to raise the head (backend seed_ask;
 * the publish and replay of a node that may not hold it), and waits up to
 * SEED_WAIT_MS for one of them (a waiter with ask 1 joining a request
 * waits for that too); 0: the raise of a holder (its resync, or its answer
 * to another node's ask), which asks nobody and, joining a request that
 * asked, runs as soon as history answered (two holders asking each other
 * never wait for each other). A request past its deadline stays the room's
 * until its provider answers: bus_seed_get for the room meanwhile sends no
 * second query (they would pile up behind a stuck store) and its fn gets
 * BUS_HEAD_LATE at once, from the loop; the first use after that answer
 * asks again. */
typedef void (*bus_seed_fn)(void *arg, int status, uint64_t max_seq, const char *epoch, int given);
int bus_seed_get(bus *b, const char *room, int ask, bus_seed_fn fn, void *arg);
/* the backend's answers to seed_ask (others: holders besides this node
 * that got it, < 0 unknown) and seed_probe (found: the head is there) */
void bus_seed_asked(struct bus_seed *sd, long others);
void bus_seed_probed(struct bus_seed *sd, int found);
/* NULL once the bus let go of the seed (it is being freed) */
bus *bus_seed_bus(const struct bus_seed *sd);
int bus_has_seed(const bus *b);
/* A seed's client ids to write back (bus_seed_add_id), for the backend's
 * restore_ids: ttl_s is what is left of the id's window (>= 1), id its key
 * part (bus_id_part: sender and id). */
typedef struct bus_seed_id { uint64_t seq; uint32_t ttl_s; char *id; } bus_seed_id;
const bus_seed_id *bus_seed_ids(const struct bus_seed *sd, size_t *n);
const char *bus_seed_room(const struct bus_seed *sd);
void bus_seed_restore_hold(struct bus_seed *sd);
/* A hold whose call did not start (restore_ids only: the starter's own hold
 * keeps the seed from being answered meanwhile). */
void bus_seed_restore_unhold(struct bus_seed *sd);
/* One restore call answered (ok 0 when it failed or the bus is gone). */
void bus_seed_restored(struct bus_seed *sd, int ok);
/* A fresh random epoch: 16 lowercase hex digits. */
void bus_epoch_new(bus *b, char out[BUS_EPOCH_MAX + 1]);

/* bus_update.c: the state step of message updates (bus.h "message
 * updates"). A private copy of a bus_update, owned by its request. */
struct bus_upd *bus_upd_copy(const bus_update *u);
void bus_upd_free(struct bus_upd *u);
/* Redis: the script's extra key (chat:{room}:t:<target>, into key, cap
 * bytes) and its extra arguments from ARGV[13] on (see bus_script.c).
 * bus_upd_nargs: how many arguments bus_upd_args appends. */
void bus_upd_key(const bus_req *r, char *key, size_t cap);
/* the same key for a room and a target */
void bus_upd_state_key(char *key, size_t cap, const char *room, uint64_t target);
/* BUS_UNDO_LUA's key and arguments for u (bus_undo_update): key (cap
 * bytes), argv[0..2] = op, the react's field, its count field */
void bus_upd_undo_args(const char *room, const struct bus_upd *u, char *key, size_t cap,
                       const char *argv[3], char opbuf[2]);
size_t bus_upd_nargs(const bus_req *r);
/* keyidx: the key's index in KEYS (1-based) as text. */
void bus_upd_args(const bus_req *r, const char *keyidx, const char **argv, size_t *lens,
                  int *argc, char bufs[][32]);
/* In-process mode: the per-room states (owned by the room's store). */
typedef struct bus_upd_states bus_upd_states;
bus_upd_states *bus_upd_states_new(void);
void bus_upd_states_free(bus_upd_states *s);
size_t bus_upd_states_count(const bus_upd_states *s);
/* undoes u's own change in its target's state (bus_undo_update) */
void bus_upd_states_undo(bus_upd_states *s, const struct bus_upd *u);
/* The state step of r (r->upd set): 0 go on (*count set for a react),
 * else BUS_UPD_NEED_STATE / BUS_UPD_GONE / BUS_UPD_NOOP (nothing changed).
 * ttl_ms: a state untouched this long is forgotten. */
int bus_upd_local_apply(bus_upd_states *s, const bus_req *r, uint64_t ttl_ms, int64_t *count);

/* bus_order.c: the one ordered-delivery path of both modes. */
/* A message arrived on the room's subscription. */
void bus_order_incoming(bus *b, const char *room, uint64_t seq, const char *tail, size_t len);
/* The subscription of room (sub_id) is confirmed and head is the room's
 * last assigned seq, read after the confirmation. known = 0: the room has
 * no head yet (no seq key, a seed provider): nothing was published since
 * the subscription, so delivery starts at the first message that arrives
 * (or, after a reconnect, continues after the last delivered seq). */
void bus_order_synced(bus *b, const char *room, uint64_t sub_id, uint64_t head, int known);
/* Result of a fetch: ok=0 when Redis failed (nothing changes, the reconnect
 * resynchronises). entries ascending, within [from, to]. */
void bus_order_fetched(bus *b, const char *room, uint64_t sub_id, int ok, uint64_t from,
                       uint64_t to, const bus_entry *e, size_t n);
/* Resets the delivery state for a new subscription (keep_last: Redis
 * reconnect, recover from the last delivered seq). */
void bus_order_reset(bus *b, bus_room *room, int keep_last);
/* 1 when every subscribed room is synced and caught up. */
int bus_order_all_caught_up(bus *b);

/* bus_script.c: the scripts, loaded on every Redis node (index = the
 * script's number in the redis_client) */
enum { BUS_S_PUBLISH = 0, BUS_S_HEAD, BUS_S_MARK, BUS_S_SWEEP, BUS_S_FORGET, BUS_S_SETTLE,
       BUS_S_RESTORE, BUS_S_UNDO, BUS_S_COUNT };
extern const char *const BUS_SCRIPTS[BUS_S_COUNT];
extern const char BUS_PUBLISH_LUA[];
extern const char BUS_HEAD_LUA[];
extern const char BUS_MARK_LUA[];
extern const char BUS_SWEEP_LUA[];
extern const char BUS_FORGET_LUA[];
extern const char BUS_SETTLE_LUA[];
extern const char BUS_RESTORE_LUA[];
extern const char BUS_UNDO_LUA[];
/* ids per restore call (BUS_RESTORE_LUA): 2 + 3 x 500 arguments */
#define BUS_RESTORE_CHUNK 500
/* bus_redis_ids.c: ids committed after a Redis restart that wait for their
 * room's shard (bus.h bus_id_committed): at most this many (more are
 * dropped, counted in chat_bus_ids_writeback_dropped_total) */
#define BUS_IDBACK_MAX 10000
/* write-backs sent, and ids waiting (tests) */
uint64_t bus_idback_writes(const bus *b);
size_t bus_idback_waiting(const bus *b);
/* bus_redis.c: restore calls sent (tests) */
uint64_t bus_restore_calls(const bus *b);
/* The key of the unstored index of room: "chat:unstored" on one Redis,
 * "chat:{<tag of the room's slot>}:unstored" on a Cluster (same slot as
 * the room's keys). */
void bus_unstored_index(char *out, size_t n, int cluster, const char *room);

/* bus_backfill.c (Redis mode with track_unstored): the mark batch and the
 * sweeper, on the Redis backend's client. init: 0 or -1; free: closes its
 * timers (bus_handle_closed each). */
struct redis_client;
int bus_backfill_init(bus *b, struct redis_client *rc, const bus_opts *o, char *err,
                      size_t errlen);
void bus_backfill_free(bus *b);
void bus_backfill_mark(bus *b, const char *room, uint64_t seq);
/* sweeps that took the lock (tests; per node of the cluster) */
uint64_t bus_backfill_rounds(const bus *b);
/* settle calls sent (tests); a round's check is settled in calls of at most
 * BUS_SETTLE_CHUNK (room, seq) pairs: the script's ARGV <= 1 + 5 x BUS_SETTLE_CHUNK
 * (the cut, then at most 5 per pair), and a room's stored seqs of one call
 * leave in one ZREM: unpack() pushes them on the Lua stack, which Redis'
 * Lua 5.1 caps at 8000 slots (LUAI_MAXCSTACK) */
#define BUS_SETTLE_CHUNK 500
_Static_assert(BUS_SETTLE_CHUNK <= 7000, "a settle's ZREM of one room must fit Redis' Lua stack");
uint64_t bus_backfill_settles(const bus *b);

/* bus_redis.c: the publish script's answer {seq, duplicate} (0 or -1;
 * exposed for the fuzz targets) */
struct redisReply;
int bus_redis_publish_reply(const struct redisReply *rp, uint64_t *seq, uint64_t *dup);
/* bus_redis.c: a message update's extra answers (see there). */
int bus_redis_update_reply(bus_req *r, const struct redisReply *rp, uint64_t *seq, uint64_t *dup);

/* helpers shared by backends */
int bus_parse_entry(const char *s, size_t len, bus_entry *e); /* "<seq>\n<tail>" */

/* bus_reply.c: what the Redis replies of the bus mean (pure; fuzzed by
 * tests/fuzz/fuzz_resp.c). Entries point into the reply. */
/* range read: the well-formed "<seq>\n<tail>" elements (at most cap), in order */
size_t bus_reply_entries(const struct redisReply *rp, bus_entry *e, size_t cap);
/* replay since: how many leading elements are since+1, since+2, ... (<= want) */
size_t bus_reply_replay(const struct redisReply *rp, uint64_t since, size_t want, bus_entry *e);
/* "<ns>{room}:kind" (ns the channels' namespace, "chat:" or "chat:db<N>:";
 * a valid room, a kind of 1..kn-1 bytes) -> room (CHAT_ROOM_MAX + 1
 * bytes), kind: 0; -1 when it is not a channel of ours */
int bus_reply_channel(const char *ns, const char *s, size_t len, char *room, char *kind, size_t kn);
/* A control message on a room's msg channel (bus_redis_sub.c): it starts
 * with '!', so no entry ("<seq>\n...") is one, and a node that does not
 * know it drops it as malformed. "!seed <tag>": a node (its tag: 16
 * lowercase hex digits) is about to seed the room's head from history
 * (BUS_CTL_SEED_ASK, tag set); any other "!..." is BUS_CTL_UNKNOWN (a
 * newer node's: ignored); -1 not a control message. */
#define BUS_TAG_LEN 16
enum { BUS_CTL_UNKNOWN = 0, BUS_CTL_SEED_ASK = 1 };
int bus_reply_room_control(const char *s, size_t len, char tag[BUS_TAG_LEN + 1]);
/* the settle script: {room, seq, entry} triples (the count of triples;
 * item k of them: 1 an entry to store (room, *seq, *e), 0 lost (the recent
 * buffer no longer had it; room and *seq set), -1 malformed (skip)) */
size_t bus_reply_settle_items(const struct redisReply *rp);
int bus_reply_settle_item(const struct redisReply *rp, size_t k, char *room, uint64_t *seq,
                          bus_entry *e);
/* the sweep's more flags: a round stopped at its room limit / left old seqs
 * of a room at the per-room limit */
#define BUS_MORE_ROOMS 1
#define BUS_MORE_PER_ROOM 2
/* the sweep script: {1, more, cut, room, seq, ...}: 1 this node
 * holds the round (*more: BUS_MORE_* flags of the limits it met, *cut: the round's Redis ms time
 * minus the grace, *items pairs follow), 0 another node does, -1 an error or
 * anything else; pair k: 0 (room, *seq set), -1 malformed (the script removed what it
 * could never settle and lists it as (room, "")) */
int bus_reply_check_round(const struct redisReply *rp, int *more, uint64_t *cut, size_t *items);
int bus_reply_check_item(const struct redisReply *rp, size_t k, char *room, uint64_t *seq);

#endif
