/* bus_types: the types of the bus's interface and the two answers that
 * its providers give (bus_seed_done, bus_check_done), apart from the calls
 * of bus.h, so that the bus's own files (bus_int.h: the backends, order,
 * updates, backfill) build on them without including the facade that
 * drives them: the arrows run from bus.c down to its parts. The meaning of
 * each type is told at the call that uses it (bus.h) or here. */
#ifndef CHATD_BUS_TYPES_H
#define CHATD_BUS_TYPES_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "util.h"

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
     * published more than backfill_grace_ms ago and is not in history (its
     * node died between publish and commit; on_check asked history): store
     * it. Offered again after another grace while it is still missing. */
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
    /* (required with track_unstored in Redis mode, else bus_new fails;
     * may be NULL otherwise) The backfill sweeper
     * asks durable history which of n messages (rooms[i], seqs[i]),
     * published more than backfill_grace_ms ago and still recorded as
     * unstored, are stored (arrays valid during the call). Answer exactly
     * once, now or later, with bus_check_done(). The sweeper then forgets
     * the stored ones and hands the others to on_unstored. Commits need no
     * bus_mark_stored (no Redis round trip per commit); it is for entries
     * that must be forgotten without a row (a malformed one). */
    void (*on_check)(void *ud, bus_check *req, size_t n, const char *const *rooms,
                     const uint64_t *seqs);
} bus_handlers;

typedef struct bus_opts {
    const char *redis_url;     /* NULL: in-process mode */
    size_t recent_max;         /* recent buffer length per room (default 1000) */
    uint32_t id_ttl_s;         /* idempotency window for client ids (default 600) */
    int track_unstored;        /* Redis mode: record publishes as unstored and
                                * sweep old ones: on_check (required) says
                                * which are stored; missing ones go to
                                * on_unstored. Set when a database stores
                                * history. */
    /* With track_unstored, all three are required (bus_new refuses a 0):
     * their defaults are the settings' (config.c CHAT_BACKFILL_GRACE_MS,
     * _CHECK_ROOMS, _CHECK_PER_ROOM), not the bus's. */
    uint32_t backfill_grace_ms; /* age before a publish counts as abandoned */
    uint32_t backfill_check_rooms;    /* rooms a sweep round lists per Redis node */
    uint32_t backfill_check_per_room; /* old seqs a round lists per room; a round
                                       * that left more is followed by another at once */
    uint32_t redis_linger_ms;  /* Redis mode: redis_client_opts.linger_ms */
    uint32_t seed_timeout_ms;  /* with on_seed: how long a seed request waits
                                * for the provider's answer; past it, it fails
                                * (publish -1, replay BUS_HEAD_LATE), and the
                                * late answer is dropped (0: no bound; chatd passes
                                * srv_read_deadline_ms()) */
} bus_opts;

/* A replay's status (bus.h bus_replay) when its head had to be seeded and
 * on_seed did not answer within seed_timeout_ms. */
enum { BUS_HEAD_LATE = -2 };

/* Answers on_seed: status 0 with the highest seq durably stored in the
 * room (0 when none) and its epoch (1..BUS_EPOCH_MAX bytes, stable while
 * the durable history lasts); status -1 when it cannot be known now (the
 * operations that wait for it fail: publish and replay answer -1). Never
 * calls back from inside; safe after bus_free (then it only frees req). */
void bus_seed_done(bus_seed *req, int status, uint64_t max_seq, const char *epoch);

/* The client ids of a room the bus keeps for its idempotency window: at
 * most this many per room in-process (bus_local.c), and the bound of the
 * ids a seed restores (the stored seqs (max_seq - BUS_IDS_PER_ROOM,
 * max_seq], bus_seed_add_id). */
#define BUS_IDS_PER_ROOM 10000
/* The longest client id the bus takes (a publish with a longer one is
 * refused; the contract's ids are 1-64 characters, at most 256 bytes:
 * util.h client_id_valid, frame.h FRAME_ID_MAX, api_parse.h API_ID_MAX); a
 * seed skips a longer one found in Postgres (a row written outside
 * chatd), never cut into another id's key. */
#define BUS_ID_MAX CLIENT_ID_BYTES
/* The longest sender a client id belongs to: the JWT sub and the server
 * API's user are 1-127 bytes (auth.c, api_parse.h API_USER_MAX). */
#define BUS_USER_MAX 127
/* A client id is idempotent per room AND sender (protocol.md: "a sender
 * ... may resend with the same id"): two users may use the same id. Every
 * place that names an id (the publish's key, a forget, a seed's restore,
 * a commit's write-back, the in-process map) keys it by the part
 * bus_id_part builds: "<bytes of user>:<user>:<id>", unambiguous whatever
 * bytes user and id hold (user "a:1" id "x" is "3:a:1:x", user "a" id
 * "1:x" is "1:a:1:x"). Its length (< n), or -1 (user or id empty or too
 * long, NULL, or out too small: BUS_IDKEY_MAX + 1 always fits). */
#define BUS_IDKEY_MAX (3 + 1 + BUS_USER_MAX + 1 + BUS_ID_MAX)
int bus_id_part(char *out, size_t n, const char *user, const char *id);
/* Restoring client ids with a seed (Redis mode; docs/redis.md "Heads, seeds
 * and epochs"): bus_seed_ids_since_ms is 0 when the bus restores none (the
 * provider need not look), else the oldest publish time (ms since the
 * epoch) still within the idempotency window. Before bus_seed_done(req, 0,
 * ...) the provider adds each stored row of the room with a client id
 * (and its sender, user), published at ts_ms (>= that time), among the seqs (max_seq -
 * BUS_IDS_PER_ROOM, max_seq]: the bus writes them back (a key that exists
 * is kept) before the head it seeds is used, so that a resend of a stored
 * message is answered as a duplicate again. 0, or -1 (out of memory: the
 * seed then fails). */
uint64_t bus_seed_ids_since_ms(const bus_seed *req);
int bus_seed_add_id(bus_seed *req, const char *user, const char *id, uint64_t seq, uint64_t ts_ms);

/* Answers on_check: status 0 with stored[i] != 0 for each stored message
 * of the request (in its order), or status -1 when history cannot say now
 * (the sweeper asks again next round). Never calls back from inside; safe
 * after bus_free (then it only frees req). */
void bus_check_done(bus_check *req, int status, const unsigned char *stored);

/* bus_publish's answer (see bus_publish in bus.h) */
typedef void (*bus_publish_cb)(void *ud, int status, uint64_t seq, int duplicate);

/* ---- message updates (v2; docs/redis.md "Message updates") ----
 * An edit, delete or react is published like a message, plus a check and
 * change of its target's state in the same atomic step that assigns the
 * seq, so that what depends on order is decided where order is: a target
 * deleted by a lower seq refuses every later update, and a react's count
 * (the emoji's reactions after it, each user at most once per emoji) is
 * exact whichever node publishes. The state lives in the bus
 * (chat:{room}:t:<target>, expiring max(id_ttl_s, 1 day) after its last
 * update, and so does an update's client id in Redis mode; the
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

/* bus_replay's answer (see bus_replay in bus.h) */
typedef void (*bus_replay_cb)(void *ud, int status, const bus_entry *entries, size_t n,
                              uint64_t head, const char *epoch);

/* bus_control's answer (see bus_control in bus.h) */
typedef void (*bus_control_cb)(void *ud, long receivers);

#endif
