/* store_schema: the Postgres schema of chatd and its versioned migrations,
 * plus the SQL text of the store's statements (shared with tests/benchmarks).
 * Owns: the migration list and the advisory lock key that serialises them.
 * Internal to the store module (core/store.c); not a public interface. */
#ifndef CHATD_STORE_SCHEMA_H
#define CHATD_STORE_SCHEMA_H

/* Simple-query text, run first on every new connection: session settings,
 * BEGIN, the advisory transaction lock, schema_migrations, and as its last
 * result the current schema version (one row, one column). */
const char *store_schema_lock_sql(void);

/* malloc'd simple-query text applying every migration newer than `from`
 * (each recorded in schema_migrations) and ending with COMMIT. *to is set to
 * the resulting version. NULL on allocation failure. */
char *store_schema_upgrade_sql(int from, int *to);

/* Latest schema version this build knows. */
int store_schema_version(void);

/* Paging statements, parameters: $1 room, $2 after (exclusive), $3 before
 * (exclusive), $4 limit. Columns: seq, client_id, user_id, name, body, ts. */
#define STORE_SQL_RANGE_DESC \
    "SELECT seq, client_id, user_id, name, body, ts FROM messages " \
    "WHERE room = $1 AND seq > $2 AND seq < $3 ORDER BY seq DESC LIMIT $4"
#define STORE_SQL_RANGE_ASC \
    "SELECT seq, client_id, user_id, name, body, ts FROM messages " \
    "WHERE room = $1 AND seq > $2 AND seq < $3 ORDER BY seq ASC LIMIT $4"
#define STORE_STMT_RANGE_DESC "chatd_range_desc"
#define STORE_STMT_RANGE_ASC "chatd_range_asc"

/* The durable head of a room, for seeding the bus (docs/storage.md):
 * $1 room. Creates the room's row with a fresh random epoch the first time
 * (ON CONFLICT ... DO UPDATE so that a concurrent creator's row is returned,
 * never NULL). Columns: epoch, max stored seq (0 when none). */
#define STORE_SQL_HEAD \
    "WITH r AS (INSERT INTO rooms (room, epoch) " \
    "VALUES ($1, substr(md5(gen_random_uuid()::text), 1, 16)) " \
    "ON CONFLICT (room) DO UPDATE SET epoch = rooms.epoch RETURNING epoch) " \
    "SELECT (SELECT epoch FROM r), " \
    "coalesce((SELECT max(seq) FROM messages WHERE room = $1), 0)"
#define STORE_STMT_HEAD "chatd_head"

/* After a batch that inserted fewer rows than it had (some (room, seq)
 * already stored): the stored rows of the batch's keys, to tell a retry or
 * backfill (identical row: fine) from a conflict (another row: not stored).
 * Built per batch: "... JOIN (VALUES ($1::text,$2::bigint),...) k ...". */
#define STORE_VERIFY_HEAD \
    "SELECT m.room, m.seq, m.client_id, m.user_id, m.name, m.body, m.ts FROM messages m " \
    "JOIN (VALUES "
#define STORE_VERIFY_TAIL ") AS k(room, seq) ON m.room = k.room AND m.seq = k.seq"

/* Columns of one batched row, in parameter order. */
#define STORE_INSERT_HEAD \
    "INSERT INTO messages (room, seq, client_id, user_id, name, body, ts) VALUES "
#define STORE_INSERT_TAIL " ON CONFLICT (room, seq) DO NOTHING"
#define STORE_INSERT_NCOLS 7
#define STORE_STMT_INSERT_FULL "chatd_insert_full"
/* Postgres' bind message carries at most 65535 parameters. */
#define STORE_BATCH_HARD_MAX (65535 / STORE_INSERT_NCOLS)

#endif
