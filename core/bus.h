/* bus: the source of seq order and the fan-out between nodes.
 * Redis mode (url set, any form of redis_url.h): the Redis connection layer
 * (redis_client.h: per node a command and a subscription connection,
 * reconnect with backoff; on a Cluster the slot map, redirects, and one
 * shard's failure failing only its rooms), one server-side Lua publish
 * script (seq + recent buffer + idempotency + PUBLISH, or SPUBLISH on a
 * Cluster, in one step, called by SHA, reloaded on NOSCRIPT).
 * In-process mode (url NULL): the same API and guarantees inside the process.
 * Owns: subscriptions (refcounted per room), the per-room "last delivered seq"
 * of this node and gap filling, pending publish/replay requests (each
 * callback is called exactly once, with status -1 when the bus is freed).
 * Heads and epochs: a room's head (last assigned seq) never goes back, also
 * when Redis loses its data. With a seed provider (on_seed: Postgres holds
 * history) a missing seq key is first seeded from the durable head, inside
 * the same script that hands out the next seq (or reads the head); without
 * one, the room's epoch (a random id created together with the seq key)
 * changes, so a client can tell that seqs may repeat. docs/redis.md "Heads,
 * seeds and epochs".
 * Key convention (Redis Cluster hash tag = room):
 *   chat:{room}:seq     string  last assigned seq
 *   chat:{room}:epoch   string  the room's epoch (created with the seq key)
 *   chat:{room}:recent  zset/list bounded recent buffer of "<seq>\n<tail>"
 *   chat:{room}:id:<id> string  seq of a client id (idempotency, with TTL)
 *   chat:{room}:t:<seq> hash    state of a message that got updates (v2):
 *                                deleted flag, reactions (bus_update below)
 *   chat:{room}:msg     channel published "<seq>\n<tail>"
 *   chat:{room}:typing  channel ephemeral frames
 *   chat:{room}:presence channel ephemeral frames
 *   chat:{room}:unstored zset    seqs published but not yet committed to
 *                                Postgres (track_unstored), score = publish
 *                                time (Redis TIME, ms)
 *   chat:unstored        zset    rooms with unstored seqs, score = oldest
 *                                time; on a Cluster one per slot:
 *                                chat:{<slot tag>}:unstored (redis_slot.h)
 *   chat:backfill:lock   string  one sweeper per round (SET NX PX); on a
 *                                Cluster one per master and round:
 *                                chat:{<tag of its first slot>}:backfill:lock
 *   chat:ctl             channel the control channel (bus_control): server
 *                                API actions and their answers between
 *                                nodes (PUBLISH/SUBSCRIBE; on a Cluster the
 *                                sharded SPUBLISH/SSUBSCRIBE at its slot)
 *
 * "tail" is the part of a server message frame after its seq, i.e. the
 * message frame is '{"type":"message","room":"<room>","seq":<seq>,' + tail,
 * and tail looks like '"id":"c1","user":"u","name":"U","body":"hi","ts":1}'.
 * The bus never parses tails; it only stores and forwards them.
 *
 * Callbacks are never invoked from inside the bus_* call that caused them
 * (in-process mode defers to the loop), so callers need no reentrancy care. */
#ifndef CHATD_BUS_H
#define CHATD_BUS_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct bus bus;

typedef struct bus_entry { uint64_t seq; const char *tail; size_t len; } bus_entry;

/* One pending on_seed request (owned by the bus; see bus_seed_done). */
typedef struct bus_seed bus_seed;
#define BUS_EPOCH_MAX 64
/* One pending on_check request (owned by the bus; see bus_check_done). */
typedef struct bus_check bus_check;

typedef struct bus_handlers {
    /* Every message of every subscribed room, per room in strictly
     * increasing contiguous seq order, each seq once per node (a gap is
     * filled from the recent buffer before later seqs are delivered; if the
     * buffer no longer reaches, on_gap is called and delivery continues). */
    void (*on_message)(void *ud, const char *room, uint64_t seq, const char *tail, size_t len);
    /* The node missed seqs [from, to] of room that the recent buffer no
     * longer has (only after a long Redis outage). */
    void (*on_gap)(void *ud, const char *room, uint64_t from, uint64_t to);
    /* An ephemeral frame (kind "typing" or "presence") of a subscribed room,
     * published by any node (this one included) through bus_emit. */
    void (*on_emit)(void *ud, const char *room, const char *kind, const char *data, size_t len);
    /* Readiness changed: 1 = Redis reachable and subscriptions restored. */
    void (*on_ready)(void *ud, int ready);
    /* (may be NULL; Redis mode with track_unstored only) A message that was
     * published more than backfill_grace_ms ago and is still not marked
     * stored (its node died between publish and commit): store it, then
     * bus_mark_stored. Called again after another grace if not marked. */
    void (*on_unstored)(void *ud, const char *room, uint64_t seq, const char *tail, size_t len);
    /* (may be NULL) The durable head of room, asked when the bus has none:
     * Redis has no seq key for the room (first use, restarted empty,
     * flushed), or in-process mode meets the room for the first time since
     * the start. Answer exactly once, now or later, with bus_seed_done().
     * Set it when a database stores history: no seq is then handed out, and
     * no head reported, before the seq key is at least the highest stored
     * seq. NULL: Redis (or the process) is the only source of heads, and a
     * head that was lost shows as a new epoch. */
    void (*on_seed)(void *ud, const char *room, bus_seed *req);
    /* (may be NULL) A message of the control channel, sent by any node
     * (this one included) with bus_control: every node that is subscribed
     * when it is published receives it once. Not ordered with room
     * messages; lost by a node whose Redis link is down meanwhile: after
     * every (re)subscription on_control is called with data NULL (len 0),
     * so the receiver resynchronises what matters (bans). */
    void (*on_control)(void *ud, const char *data, size_t len);
    /* (may be NULL; Redis mode with track_unstored) The backfill sweeper
     * asks durable history which of n messages (rooms[i], seqs[i]),
     * published more than backfill_grace_ms ago and still recorded as
     * unstored, are stored (arrays valid during the call). Answer exactly
     * once, now or later, with bus_check_done(). The sweeper then forgets
     * the stored ones and hands the others to on_unstored. With on_check
     * set, commits need no bus_mark_stored (no Redis round trip per
     * commit); it stays for entries that must be forgotten without a row
     * (a malformed one). NULL: the core marks every commit. */
    void (*on_check)(void *ud, bus_check *req, size_t n, const char *const *rooms,
                     const uint64_t *seqs);
} bus_handlers;

typedef struct bus_opts {
    const char *redis_url;     /* NULL: in-process mode */
    size_t recent_max;         /* recent buffer length per room (default 1000) */
    uint32_t id_ttl_s;         /* idempotency window for client ids (default 600) */
    int track_unstored;        /* Redis mode: record publishes until bus_mark_stored
                                * and sweep old ones to on_unstored (set when a
                                * database stores history) */
    uint32_t backfill_grace_ms; /* age before a publish counts as abandoned (default 3000) */
} bus_opts;

bus *bus_new(uv_loop_t *loop, const bus_opts *opts, const bus_handlers *h, void *ud,
             char *err, size_t errlen);
/* Cancels everything pending (callbacks get status -1), closes connections.
 * Handles are closed asynchronously: run the loop until it has no more
 * handles of the bus (uv_run(loop, UV_RUN_DEFAULT) after stopping others). */
void bus_free(bus *b);

/* Answers on_seed: status 0 with the highest seq durably stored in the
 * room (0 when none) and its epoch (1..BUS_EPOCH_MAX bytes, stable while
 * the durable history lasts); status -1 when it cannot be known now (the
 * operations that wait for it fail: publish and replay answer -1). Never
 * calls back from inside; safe after bus_free (then it only frees req). */
void bus_seed_done(bus_seed *req, int status, uint64_t max_seq, const char *epoch);

/* Answers on_check: status 0 with stored[i] != 0 for each stored message
 * of the request (in its order), or status -1 when history cannot say now
 * (the sweeper asks again next round). Never calls back from inside; safe
 * after bus_free (then it only frees req). */
void bus_check_done(bus_check *req, int status, const unsigned char *stored);

/* 1 when publishes can succeed (one Redis: connected and every room caught
 * up after a reconnect; Cluster: the slot map is known and a shard is up:
 * a room whose shard is down answers -1 to bus_publish/bus_replay). */
int bus_ready(const bus *b);
/* 1 when everything works; else 0 and a sentence for /readyz that says what
 * does not ("redis 127.0.0.1:7001 (shard 2 of 3, slots 10923-16383)
 * unreachable: Connection refused"). */
int bus_health(const bus *b, char *why, size_t n);
int bus_is_redis(const bus *b);

/* Refcounted: the first subscribe of a room subscribes its channels, the
 * last unsubscribe drops them. */
void bus_subscribe(bus *b, const char *room);
void bus_unsubscribe(bus *b, const char *room);

/* Atomic publish. cb(ud, status, seq, duplicate): status 0 with the assigned
 * seq (duplicate=1 when client_id was already published: seq is the first
 * one and nothing was published again); status -1 when unavailable (Redis
 * down). client_id may be NULL (no idempotency). Returns 0 when queued, -1
 * when the bus is not ready (cb NOT called). */
typedef void (*bus_publish_cb)(void *ud, int status, uint64_t seq, int duplicate);
int bus_publish(bus *b, const char *room, const char *client_id,
                const char *tail, size_t tail_len, bus_publish_cb cb, void *ud);

/* ---- message updates (v2; docs/redis.md "Message updates") ----
 * An edit, delete or react is published like a message, plus a check and
 * change of its target's state in the same atomic step that assigns the
 * seq, so that what depends on order is decided where order is: a target
 * deleted by a lower seq refuses every later update, and a react's count
 * (the emoji's reactions after it, each user at most once per emoji) is
 * exact whichever node publishes. The state lives in the bus
 * (chat:{room}:t:<target>, expiring id_ttl_s after its last update; the
 * in-process map keeps it as long) and is seeded from the caller (the
 * durable history) when the bus has none. A react's tail is published open
 * (ending with '"count":', wire.h); the bus appends the count and '}'. */
enum {
    BUS_UPD_EDIT = 'e', BUS_UPD_DELETE = 'd', BUS_UPD_REACT_ON = '+', BUS_UPD_REACT_OFF = '-',
};
enum {
    BUS_UPD_SEED_ASK = 'S',   /* no state in the bus: answer BUS_UPD_NEED_STATE */
    BUS_UPD_SEED_GIVEN = 'Y', /* no state in the bus: start from the seed below */
    BUS_UPD_SEED_NONE = 'N',  /* no durable history: a missing state starts empty */
};
/* bus_update_cb statuses besides 0 (published) and -1 (unavailable);
 * nothing was published and no seq assigned: */
enum {
    BUS_UPD_NEED_STATE = 3,   /* (seed 'S') publish again with the target's state */
    BUS_UPD_GONE = 4,         /* the target was deleted (by a lower seq) */
    BUS_UPD_NOOP = 5,         /* a react that changes nothing (already on / not on) */
};
typedef struct bus_update {
    uint64_t target;          /* seq of the message */
    int op;                   /* BUS_UPD_EDIT .. BUS_UPD_REACT_OFF */
    const char *emoji, *user; /* react: the emoji and who reacts */
    int seed;                 /* BUS_UPD_SEED_* */
    int seed_deleted;         /* seed 'Y': the target is deleted */
    /* seed 'Y': every reaction the target has: emoji[i] by user[i] */
    const char *const *seed_emoji, *const *seed_user;
    size_t nseed;
} bus_update;
/* cb(ud, status, seq, duplicate, count): as bus_publish_cb, count being a
 * react's count after it (-1 for other kinds and for duplicates). */
typedef void (*bus_update_cb)(void *ud, int status, uint64_t seq, int duplicate, int64_t count);
int bus_publish_update(bus *b, const char *room, const char *client_id, const char *tail,
                       size_t tail_len, const bus_update *u, bus_update_cb cb, void *ud);

/* Replay for client recovery: entries with seq > since, in order, ending at
 * the room's head (last assigned seq), at most max entries.
 * cb(ud, status, entries, n, head, epoch): status 0 = complete (n may be 0;
 * also when since >= head), 1 = the buffer does not reach since+1 or
 * head-since > max (n = 0; the caller falls back to history), -1 =
 * unavailable (epoch NULL). epoch is the room's current epoch. Use since =
 * UINT64_MAX to ask only for the head. The head is seeded first when the
 * bus has none (see on_seed). Entries and epoch are valid during the
 * callback only. */
typedef void (*bus_replay_cb)(void *ud, int status, const bus_entry *entries, size_t n,
                              uint64_t head, const char *epoch);
int bus_replay(bus *b, const char *room, uint64_t since, size_t max,
               bus_replay_cb cb, void *ud);

/* Forgets the client id of a publish whose seq could not be stored (a
 * history conflict), if the id still maps to seq, so that a resend with
 * the same id gets a new seq. Fire and forget; no-op while Redis is down. */
void bus_forget_id(bus *b, const char *room, const char *client_id, uint64_t seq);

/* Ephemeral broadcast to every node's subscribers of room (never stored,
 * never seq'd). Dropped silently while Redis is down. */
int bus_emit(bus *b, const char *room, const char *kind, const char *data, size_t len);

/* Publishes data on the control channel (docs/api.md "Control channel").
 * cb(ud, receivers) later (may be NULL): the number of nodes it reached
 * (Redis: PUBLISH's subscriber count, on a Cluster those of one shard, so
 * a lower bound; in-process: 1), or -1 when it was not sent. Returns 0
 * when queued, -1 when the bus is not ready or the backend has no control
 * channel (cb not called). */
typedef void (*bus_control_cb)(void *ud, long receivers);
int bus_control(bus *b, const char *data, size_t len, bus_control_cb cb, void *ud);

/* The message (room, seq) is committed to durable history (or must never
 * be offered again): forget it as unstored (batched per loop tick). With
 * on_check the sweeper asks history itself: only the rare entry that
 * cannot be stored needs this. No-op in in-process mode or without
 * track_unstored; dropped silently while Redis is down (the sweeper then has
 * it stored again: harmless, storing is idempotent on (room, seq)). */
void bus_mark_stored(bus *b, const char *room, uint64_t seq);

#endif
