/* store: durable history in Postgres through libpq, non-blocking, on the
 * libuv loop (uv_poll on PQsocket). Schema and versioned migrations applied at
 * start (advisory lock: safe on every node at once). Group commit: writes are
 * queued and flushed as one INSERT ... SELECT FROM unnest(<column arrays>)
 * ON CONFLICT (room, seq) DO NOTHING per batch (one prepared statement for
 * every size; up to batch_max rows or batch_ms ms), in a transaction;
 * each write's callback fires after its batch committed. Reconnects with
 * capped backoff; failed batches are retried (nothing acked is lost),
 * but a batch refused because of a row in it is bisected down to that row.
 * Owns: the connection, the pending-write queue (bounded by pending_max), the
 * in-flight batch, pending history queries. Every callback is called exactly
 * once, with status -1 when the store is freed before it could complete.
 *
 * Table messages(room text, seq bigint, client_id text, user_id text,
 * name text, body text, ts bigint /+ ms +/, meta text /+ JSON, NULL +/,
 * PRIMARY KEY (room, seq)),
 * table rooms(room text PRIMARY KEY, epoch text, created_at, head, kept_from)
 * (the durable head of a room: store_head; head is the highest seq recorded
 * before rows were deleted, kept_from the lowest seq retention keeps: reads
 * never return rows below it), table read_state(user_id, room, read_seq)
 * (core/readstate.c). A row whose (room, seq) already holds another row is
 * never silently dropped: its callback gets -2 (conflict). A row Postgres
 * refuses for good does not stall the rows after it: -3 (store_write).
 * Message updates (v2, schema v4): an edit, delete or react is a row of
 * messages too (kind 1-3, target, emoji, react_on, react_count), a
 * message carries deleted; store_history reads messages in their current
 * state, store_target / store_reactions what an update needs to know of
 * its target (docs/storage.md "Message updates"). */
#ifndef CHATD_STORE_H
#define CHATD_STORE_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct store store;

typedef struct store_opts {
    const char *conninfo;   /* libpq conninfo or postgresql:// URL */
    int batch_max;          /* rows per batch (default 500) */
    int batch_ms;           /* max wait before flushing a partial batch (default 4) */
    int pending_max;        /* queued rows bound (default 100000) */
} store_opts;

typedef struct store_row {
    const char *room;
    uint64_t seq;
    const char *client_id;  /* may be NULL */
    const char *user;
    const char *name;
    const char *body; size_t body_len;
    uint64_t ts;            /* ms since epoch */
    /* message updates (v2): kind STORE_* below; for an update, target is
     * the message's seq, body the edit's ("" otherwise), emoji/on/count a
     * react's. Reads also fill deleted (a message erased by a delete, or
     * an edit of it: body ""), and store_history edited_ts (0: never
     * edited) and reactions (JSON object text, NULL when none). */
    int kind;
    uint64_t target;
    const char *emoji;
    int on;
    int64_t count;
    int deleted;
    uint64_t edited_ts;
    const char *reactions;
    const char *meta; size_t meta_len;  /* JSON object text (server API), NULL: none */
    /* writes: the row's seq was already handed out and broadcast (a
     * publish admitted while store_pending() was below pending_max):
     * queued even over pending_max, or it would be a message members
     * received and history never holds */
    int admitted;
} store_row;
enum { STORE_MESSAGE = 0, STORE_EDIT = 1, STORE_DELETE = 2, STORE_REACT = 3 };

store *store_new(uv_loop_t *loop, const store_opts *o, char *err, size_t errlen);
/* Flushes nothing: callers wanting a flush call store_drain first. */
void store_free(store *s);
int store_ready(const store *s);   /* connected and migrated */

/* Queues a row (copied). cb(ud, status): 0 committed (or an identical row
 * was already stored: a retried batch, a backfill), -2 conflict: another row
 * already holds (room, seq), this one was NOT stored (logged as an error,
 * counted in chat_store_conflicts_total), -3 Postgres refused this row for
 * good (a row-caused error, SQLSTATE class 22 or 23 or P0001: an operator's
 * CHECK, NOT NULL or trigger; found by bisecting the failed batch, the
 * batch's other rows are stored), NOT stored and not retried (logged as an
 * error, counted in chat_store_rows_refused_total), -4 not stored: the
 * row at (room, seq) has this row's client id and user but another kind (a
 * client that used one id for two things; logged at debug only), -1 failed for good
 * (store freed). Any other failure of a batch is retried after reconnect.
 * Returns without calling cb: -1 when pending_max is reached by a row that
 * is not `admitted` (or the store is gone: try again later), -3 when the row can never be stored (NUL
 * byte, invalid UTF-8, seq/ts/target over 2^63-1, a kind without its
 * fields). */
typedef void (*store_write_cb)(void *ud, int status);
int store_write(store *s, const store_row *row, store_write_cb cb, void *ud);
size_t store_pending(const store *s);

/* Range read, oldest first: rows of room with seq in (after, before)
 * exclusive, at most limit, newest-first selection when newest != 0 (i.e. the
 * last `limit` rows before `before`), always delivered oldest first.
 * before = UINT64_MAX means no upper bound. cb gets rows valid during the
 * callback only; status -1 on error. Messages and updates alike (replay). */
typedef void (*store_rows_cb)(void *ud, int status, const store_row *rows, size_t n);
int store_range(store *s, const char *room, uint64_t after, uint64_t before,
                int limit, int newest, store_rows_cb cb, void *ud);

/* A history page: the newest `limit` messages (updates are not listed)
 * with seq < before (UINT64_MAX: no bound), delivered oldest first, each
 * in its current state (body of its latest edit, "" when deleted;
 * deleted, edited_ts, reactions). cb as store_range. */
int store_history(store *s, const char *room, uint64_t before, int limit, store_rows_cb cb,
                  void *ud);

/* What an update needs to know of its target (room, seq), or a resent
 * update of the row at its seq: cb(ud, STORE_TARGET_ROW, &row) when stored
 * (row.deleted: erased by a delete, or a delete of it is stored;
 * row.client_id NULL when the row has none; row.target 0 for a message),
 * cb(ud, STORE_TARGET_NONE, NULL) when no row holds seq (not stored yet, or
 * never assigned), cb(ud, STORE_TARGET_GONE, &row) when seq is below the
 * room's kept_from (retention removed it, or is removing it: history no
 * longer shows it; only row.id_* are set), cb(ud, -1, NULL) on error. With
 * user and id (else NULL, NULL): row.id_seq / row.id_kind are the seq and
 * kind of the stored update of this target by that user with that client
 * id (0 when none): a resend after the target was deleted or removed is
 * answered from it, without the bus. row and its strings are valid during
 * the callback only. */
enum { STORE_TARGET_NONE = 0, STORE_TARGET_ROW = 1, STORE_TARGET_GONE = 2 };
typedef struct store_target_row {
    int kind;                /* STORE_MESSAGE, STORE_EDIT, ... */
    const char *author;
    int deleted;
    const char *client_id;   /* NULL: the row has no client id */
    uint64_t target;         /* an update's target; 0 for a message */
    uint64_t id_seq;         /* the user's update of this target with the id, or 0 */
    int id_kind;
} store_target_row;
typedef void (*store_target_cb)(void *ud, int status, const store_target_row *row);
int store_target(store *s, const char *room, uint64_t seq, const char *user, const char *id,
                 store_target_cb cb, void *ud);

/* The reactions of message (room, target): emoji[i] by user[i] for every
 * reaction whose latest react is on, and whether a delete of it is
 * stored. cb(ud, 0, deleted, emoji, user, n), or cb(ud, -1, 0, NULL, NULL,
 * 0); arrays valid during the callback only. */
typedef void (*store_reactions_cb)(void *ud, int status, int deleted, const char *const *emoji,
                                   const char *const *user, size_t n);
int store_reactions(store *s, const char *room, uint64_t target, store_reactions_cb cb,
                    void *ud);

/* The durable head of room: cb(ud, 0, max_seq, epoch) with the highest
 * stored seq (0 when none) and the room's epoch (created, random, the first
 * time; the same afterwards), or cb(ud, -1, 0, NULL). Queued with the range
 * reads; returns -1 without calling cb when the store is not ready. */
typedef void (*store_head_cb)(void *ud, int status, uint64_t max_seq, const char *epoch);
int store_head(store *s, const char *room, store_head_cb cb, void *ud);

/* A seed: the durable head as store_head, and in the same statement the
 * room's stored client ids of the idempotency window: the rows with a
 * client id and ts >= since_ms among the seqs (head - max_ids, head]
 * (STORE_SQL_SEED), each with its sender (users[i]: ids are per sender).
 * cb(ud, 0, max_seq, epoch, n, users, ids, seqs, ts) or cb(ud, -1, 0,
 * NULL, 0, NULL, NULL, NULL, NULL); arrays valid during the callback only.
 * since_ms 0: no ids (the head query alone). Queued like store_head. */
typedef void (*store_seed_cb)(void *ud, int status, uint64_t max_seq, const char *epoch,
                              size_t n, const char *const *users, const char *const *ids,
                              const uint64_t *seqs, const uint64_t *ts);
int store_seed(store *s, const char *room, uint64_t since_ms, uint64_t max_ids, store_seed_cb cb,
               void *ud);

/* ---- statements of other modules (read state, retention) ----------------
 * store_query runs one SQL statement (text with $1..$n, every parameter
 * sent as text: cast in the SQL, e.g. $1::text[]; NULL = SQL NULL) in its
 * own transaction, queued FIFO with the range reads. sql must stay valid
 * until the callback (a string literal); the parameters are copied.
 * cb(ud, 0, res): res holds the rows (NULL for a statement that returns
 * none), valid during the callback only; cb(ud, -1, NULL) on any error
 * (logged), when the connection is lost or the store freed. Returns -1
 * without calling cb when the store is not ready, 10,000 reads are queued,
 * or a parameter is not UTF-8 text. */
typedef struct store_result store_result;
typedef void (*store_query_cb)(void *ud, int status, const store_result *res);
int store_query(store *s, const char *sql, int nparams, const char *const *params,
                store_query_cb cb, void *ud);
/* The same, prepared once per connection under name (a string literal,
 * "chatd_..."; at most 16 names) and then executed by name: no parsing or
 * planning per call (a generic plan). */
int store_query_named(store *s, const char *name, const char *sql, int nparams,
                      const char *const *params, store_query_cb cb, void *ud);
int store_result_rows(const store_result *res);
/* The text of (row, col); NULL for SQL NULL or out of range. */
const char *store_result_value(const store_result *res, int row, int col);
/* Changes every time the store opens a new connection: session state (an
 * advisory lock) taken at one value is gone at another. */
unsigned long store_conn_gen(const store *s);

/* Which of n (room, seq) pairs are in history (the backfill sweeper's
 * check; sent as statements of CHECK_CHUNK (200) pairs, one at a time in
 * the range-read queue, answered once all are in): cb(ud, 0, stored) with
 * stored[i] = 1 for each stored pair (valid during the callback), or
 * cb(ud, -1, NULL). rooms and seqs must stay valid until cb. Returns -1
 * without calling cb when the store is not ready (or n is 0). */
typedef void (*store_check_cb)(void *ud, int status, const unsigned char *stored);
int store_check(store *s, size_t n, const char *const *rooms, const uint64_t *seqs,
                store_check_cb cb, void *ud);

/* A Postgres array literal (text format, for a $n::text[] or ::bigint[]
 * parameter) of the n strings v[0], v[stride], v[2*stride]...: every element
 * double-quoted with " and \ escaped, a NULL pointer as the unquoted NULL.
 * malloc'd; NULL on allocation failure. */
char *store_text_array(const char *const *v, size_t n, size_t stride);

/* Calls cb(ud) once every queued and in-flight write has committed or failed
 * for good (SIGTERM drain). */
void store_drain(store *s, void (*cb)(void *ud), void *ud);

#endif
