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
 *   chat:{room}:sid:<len(user)>:<user>:<id> string  seq of a sender's client id (idempotency, with TTL)
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
#include "bus_types.h"   /* the types, handlers and options; answers to on_seed/on_check */
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

bus *bus_new(uv_loop_t *loop, const bus_opts *opts, const bus_handlers *h, void *ud,
             char *err, size_t errlen);
/* Cancels everything pending (callbacks get status -1), closes connections.
 * Handles are closed asynchronously: run the loop until it has no more
 * handles of the bus (uv_run(loop, UV_RUN_DEFAULT) after stopping others). */
void bus_free(bus *b);

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
 * seq (duplicate=1 when user already published client_id in the room: seq
 * is the first one and nothing was published again; ids are per sender,
 * bus_types.h bus_id_part); status -1 when unavailable (Redis down).
 * client_id may be NULL (no idempotency; user is then not used). Returns 0
 * when queued, -1 when the bus is not ready or the id or user is not one
 * the bus takes (cb NOT called). */
int bus_publish(bus *b, const char *room, const char *user, const char *client_id,
                const char *tail, size_t tail_len, bus_publish_cb cb, void *ud);

/* A message update (edit, delete, react): see "message updates" in
 * bus_types.h for the ops, seeds and statuses. */
int bus_publish_update(bus *b, const char *room, const char *user, const char *client_id,
                       const char *tail, size_t tail_len, const bus_update *u, bus_update_cb cb,
                       void *ud);

/* Replay for client recovery: entries with seq > since, in order, ending at
 * the room's head (last assigned seq), at most max entries.
 * cb(ud, status, entries, n, head, epoch): status 0 = complete (n may be 0;
 * also when since >= head), 1 = the buffer does not reach since+1 or
 * head-since > max (n = 0; the caller falls back to history), -1 =
 * unavailable (epoch NULL), -2 (BUS_HEAD_LATE) = unavailable because the
 * head had to be seeded and the durable head (on_seed) did not answer
 * within bus_opts.seed_timeout_ms, or a query of it that timed out so is
 * still unanswered (a caller about to read that head from the same store
 * itself would wait for the same stuck read: otherwise as -1). epoch is
 * the room's current epoch. Use since = UINT64_MAX to ask only for the
 * head. The head is seeded first when the bus has none (see on_seed).
 * Entries and epoch are valid during the callback only. */
int bus_replay(bus *b, const char *room, uint64_t since, size_t max,
               bus_replay_cb cb, void *ud);
/* bus_replay of since+1 .. upto only (upto >= since+1, upto - since at most
 * the recent buffer's size): status 0 with exactly those entries when the
 * head reached upto and the buffer has them all, else 1 (n = 0) or -1. A
 * read of one seq's broadcast copy (upto = since+1) costs one entry,
 * however far the head is. */
int bus_replay_upto(bus *b, const char *room, uint64_t since, uint64_t upto,
                    bus_replay_cb cb, void *ud);
/* The room's head as this node knows it without asking Redis: the highest
 * seq it delivered or had acked to one of its publishes (a lower bound of
 * the real head: every seq above it is still delivered or fetched), and in
 * *delivered the highest seq it delivered, or where bus_resume_after set
 * delivery to resume (seqs above it reach its members by ordered delivery;
 * 0: none yet — the first sync then starts after the head Redis has, unless
 * bus_resume_after is called before it). 1 and both when this node holds
 * the room, else 0. For a welcome / join answer while a replay cannot be
 * had (Redis down). */
int bus_known_head(const bus *b, const char *room, uint64_t *head, uint64_t *delivered);
/* For a member that has every seq up to `seq` of a subscribed room whose
 * ordered delivery has no last seq yet (not synced since the subscription,
 * e.g. Redis down; or known only through a publish ack): delivery resumes
 * after `seq` — the first sync then fetches seq+1..head like a resync, or
 * reports what the buffer lost through on_gap — instead of starting after
 * the head Redis has then. `seq` must be an assigned seq (the durable head,
 * a replayed one): the sync raises Redis' head to it. 1 when every seq
 * above `seq` is still delivered to the room's members (also when delivery
 * already has a last seq at or below it), 0 when delivery is already past
 * it (or the room is not subscribed, or synced with no head: the first
 * message decides). */
int bus_resume_after(bus *b, const char *room, uint64_t seq);

/* Forgets user's client id of a publish whose seq could not be stored (a
 * history conflict), if the id still maps to seq, so that a resend with
 * the same id gets a new seq. Fire and forget; no-op while Redis is down. */
void bus_forget_id(bus *b, const char *room, const char *user, const char *client_id,
                   uint64_t seq);

/* Undoes, in the state step's copy of its target, a message update that
 * history did not take (refused by Postgres, or a conflict): a react "on"
 * comes off (and its count down), a react "off" back on, a delete is
 * lifted; an edit changed no state. Only that update's own change is
 * undone, and only when the copy still shows it (a copy seeded again from
 * history since never held it): other updates of the target, published
 * and not yet stored, stay. u: op, target, emoji and user as published.
 * Fire and forget; no-op while Redis is down. */
void bus_undo_update(bus *b, const char *room, const bus_update *u);

/* Exactly-once after a Redis loss (docs/redis.md "A commit after the
 * loss"). A message (or update) with a client id published before Redis
 * restarted (empty or behind) but committed to history after some node's
 * seed read the room's ids has its id neither in Redis nor in that seed.
 * bus_run_mark, called inside the publish (or update) callback with status
 * 0, names the Redis run that answered (an opaque mark; 0 without Redis or
 * without a seed provider). Once the row is committed, bus_id_committed
 * gives it back with the seq, the mono_ns time of that callback and
 * update (1: an update's id, whose key lives bus_state_ttl_s): when the
 * room's Redis is still the run of the mark nothing happens (no Redis
 * call); when it is another run the id key is written back (SET NX, the
 * rest of its window); while the room's shard is down the id waits
 * (bounded, BUS_IDBACK_MAX) until it is up again. No-op in-process. */
uint64_t bus_run_mark(const bus *b, const char *room);
void bus_id_committed(bus *b, const char *room, const char *user, const char *client_id,
                      uint64_t seq, uint64_t mark, uint64_t published_ns, int update);

/* Ephemeral broadcast to every node's subscribers of room (never stored,
 * never seq'd). Dropped silently while Redis is down. */
int bus_emit(bus *b, const char *room, const char *kind, const char *data, size_t len);

/* Publishes data on the control channel (docs/api.md "Control channel").
 * cb(ud, receivers) later (may be NULL): the number of nodes it reached
 * (Redis: PUBLISH's subscriber count, on a Cluster those of one shard, so
 * a lower bound; in-process: 1), or -1 when it was not sent. Returns 0
 * when queued, -1 when the bus is not ready or the backend has no control
 * channel (cb not called). */
int bus_control(bus *b, const char *data, size_t len, bus_control_cb cb, void *ud);

/* The message (room, seq) must never be offered again (it can never be
 * stored: a malformed tail, a row Postgres refuses): forget it as unstored (batched per loop
 * tick). A committed message needs no mark: the sweeper asks history
 * (on_check). No-op in in-process mode or without track_unstored; dropped
 * silently while Redis is down (the sweeper then offers it again). */
void bus_mark_stored(bus *b, const char *room, uint64_t seq);

#endif
