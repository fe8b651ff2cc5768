/* retention: deletes history older than the policy's retention (protocol.md
 * "History retention"): M.config.history_days (0 = keep forever) or, per
 * room, the policy's on_retention(room). A pass runs every interval_ms on
 * at most one node at a time (a Postgres advisory lock): it walks the rooms
 * table page by page, records per room the head (kept across the deletion)
 * and kept_from (the first kept seq: reads stop there at once), then deletes
 * the rows below kept_from in batches of `batch` rows by (room, seq) range,
 * one statement per tick of batch_ms, so no statement holds locks long.
 * Owns: the pass state and its timer. Layer: above store and script, below
 * server (which wires it). */
#ifndef CHATD_RETENTION_H
#define CHATD_RETENTION_H
#include <stdint.h>
#include <uv.h>
#include "script.h"
#include "store.h"

typedef struct retention_opts {
    int64_t interval_ms;    /* between the starts of two passes (default 60000) */
    int64_t batch;          /* rows per DELETE (default 500) */
    int64_t batch_ms;       /* pause between two statements of a pass (default 100) */
} retention_opts;

/* s NULL: nothing to do (no database). */
void retention_init(uv_loop_t *loop, store *s, script_host *h, const retention_opts *o);
/* Stops the timer; a statement in flight finishes harmlessly. */
void retention_shutdown(void);

/* Days of history to keep for room per the policy: > 0 keep that long,
 * 0 keep forever, < 0 the policy failed for this room (keep). */
double retention_days(script_host *h, const char *room, const char *node);

#endif
