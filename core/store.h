/* store: durable history in Postgres through libpq, non-blocking, on the
 * libuv loop (uv_poll on PQsocket). Schema and versioned migrations applied at
 * start (advisory lock: safe on every node at once). Group commit: writes are
 * queued and flushed as one multi-row INSERT ... ON CONFLICT (room, seq) DO
 * NOTHING per batch (up to batch_max rows or batch_ms ms), in a transaction;
 * each write's callback fires after its batch committed. Reconnects with
 * capped backoff; failed batches are retried (nothing acked is lost).
 * Owns: the connection, the pending-write queue (bounded by pending_max), the
 * in-flight batch, pending history queries. Every callback is called exactly
 * once, with status -1 when the store is freed before it could complete.
 *
 * Table messages(room text, seq bigint, client_id text, user_id text,
 * name text, body text, ts bigint /+ ms +/, PRIMARY KEY (room, seq)). */
#ifndef CHATD_STORE_H
#define CHATD_STORE_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct store store;

typedef struct store_opts {
    const char *conninfo;   /* libpq conninfo or postgresql:// URL */
    int batch_max;          /* rows per batch (default 500) */
    int batch_ms;           /* max wait before flushing a partial batch (default 2) */
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
} store_row;

store *store_new(uv_loop_t *loop, const store_opts *o, char *err, size_t errlen);
/* Flushes nothing: callers wanting a flush call store_drain first. */
void store_free(store *s);
int store_ready(const store *s);   /* connected and migrated */

/* Queues a row (copied). cb(ud, status): 0 committed, -1 failed for good
 * (store freed). Returns -1 without calling cb when pending_max is reached. */
typedef void (*store_write_cb)(void *ud, int status);
int store_write(store *s, const store_row *row, store_write_cb cb, void *ud);
size_t store_pending(const store *s);

/* Range read, oldest first: rows of room with seq in (after, before)
 * exclusive, at most limit, newest-first selection when newest != 0 (i.e. the
 * last `limit` rows before `before`), always delivered oldest first.
 * before = UINT64_MAX means no upper bound. cb gets rows valid during the
 * callback only; status -1 on error. */
typedef void (*store_rows_cb)(void *ud, int status, const store_row *rows, size_t n);
int store_range(store *s, const char *room, uint64_t after, uint64_t before,
                int limit, int newest, store_rows_cb cb, void *ud);

/* Calls cb(ud) once every queued and in-flight write has committed or failed
 * for good (SIGTERM drain). */
void store_drain(store *s, void (*cb)(void *ud), void *ud);

#endif
