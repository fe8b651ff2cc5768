/* bus: the source of seq order and the fan-out between nodes.
 * Redis mode (url set): hiredis async on the libuv loop, one connection for
 * commands and one for subscriptions, reconnect with capped jittered backoff,
 * one server-side Lua publish script (seq + recent buffer + idempotency +
 * PUBLISH in one step, called by SHA, reloaded on NOSCRIPT).
 * In-process mode (url NULL): the same API and guarantees inside the process.
 * Owns: subscriptions (refcounted per room), the per-room "last delivered seq"
 * of this node and gap filling, pending publish/replay requests (each
 * callback is called exactly once, with status -1 when the bus is freed).
 * Key convention (Redis Cluster hash tag = room):
 *   chat:{room}:seq     string  last assigned seq
 *   chat:{room}:recent  zset/list bounded recent buffer of "<seq>\n<tail>"
 *   chat:{room}:id:<id> string  seq of a client id (idempotency, with TTL)
 *   chat:{room}:msg     channel published "<seq>\n<tail>"
 *   chat:{room}:typing  channel ephemeral frames
 *   chat:{room}:presence channel ephemeral frames
 *   chat:{room}:unstored zset    seqs published but not yet committed to
 *                                Postgres (track_unstored), score = publish
 *                                time (Redis TIME, ms)
 *   chat:unstored        zset    rooms with unstored seqs (the one key that
 *                                is not per room), score = oldest time
 *   chat:backfill:lock   string  one sweeper per round (SET NX PX)
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
} bus_handlers;

typedef struct bus_opts {
    const char *redis_url;     /* NULL: in-process mode */
    size_t recent_max;         /* recent buffer length per room (default 1000) */
    uint32_t id_ttl_s;         /* idempotency window for client ids (default 86400) */
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

int bus_ready(const bus *b);            /* 1 when publishes can succeed */
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

/* Replay for client recovery: entries with seq > since, in order, ending at
 * the room's head (last assigned seq), at most max entries.
 * cb(ud, status, entries, n, head): status 0 = complete (n may be 0),
 * 1 = the buffer does not reach since+1 or head-since > max (n = 0; the
 * caller falls back to history), -1 = unavailable. Use since = UINT64_MAX to
 * ask only for the head. The entries are valid during the callback only. */
typedef void (*bus_replay_cb)(void *ud, int status, const bus_entry *entries, size_t n,
                              uint64_t head);
int bus_replay(bus *b, const char *room, uint64_t since, size_t max,
               bus_replay_cb cb, void *ud);

/* Ephemeral broadcast to every node's subscribers of room (never stored,
 * never seq'd). Dropped silently while Redis is down. */
int bus_emit(bus *b, const char *room, const char *kind, const char *data, size_t len);

/* The message (room, seq) is committed to durable history: forget it as
 * unstored (batched per loop tick). No-op in in-process mode or without
 * track_unstored; dropped silently while Redis is down (the sweeper then has
 * it stored again: harmless, storing is idempotent on (room, seq)). */
void bus_mark_stored(bus *b, const char *room, uint64_t seq);

#endif
