/* store_schema: the Postgres schema of chatd and its versioned migrations,
 * plus the SQL text of the store's statements (shared with tests/benchmarks)
 * and of the statements the read state (core/readstate.c) and retention
 * (core/retention.c) run through store_query, so that all SQL lives here.
 * Owns: the migration list and the advisory lock keys (migrations,
 * retention passes). Included by the store, readstate, retention, their
 * tests and benchmarks only. */
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

/* The columns of a stored row, as read back (STORE_COLS): seq, client_id,
 * user_id, name, body, ts, kind, target, emoji, react_on, react_count,
 * deleted (docs/storage.md "Message updates"), meta (server API). */
#define STORE_COLS \
    "seq, client_id, user_id, name, body, ts, kind, target, emoji, react_on, react_count, deleted, meta"
#define STORE_NCOLS_READ 13

/* Range statements (replay: messages and updates alike, in seq order),
 * parameters: $1 room, $2 after (exclusive), $3 before (exclusive), $4
 * limit. Columns: STORE_COLS.
 * Rows below the room's kept_from (retention: being deleted) are never
 * returned, so history and recovery stop at the oldest kept message. The
 * kept_from test is a filter on purpose ("seq + 0" is not an index
 * condition): as a third bound on seq with an unknown value the planner
 * estimated a few rows and chose a bitmap scan plus a sort over the room. */
#define STORE_SQL_KEPT \
    "AND seq + 0 >= coalesce((SELECT kept_from FROM rooms WHERE rooms.room = $1), 0) "
#define STORE_SQL_RANGE_DESC \
    "SELECT " STORE_COLS " FROM messages " \
    "WHERE room = $1 AND seq > $2 AND seq < $3 " STORE_SQL_KEPT "ORDER BY seq DESC LIMIT $4"
#define STORE_SQL_RANGE_ASC \
    "SELECT " STORE_COLS " FROM messages " \
    "WHERE room = $1 AND seq > $2 AND seq < $3 " STORE_SQL_KEPT "ORDER BY seq ASC LIMIT $4"
#define STORE_STMT_RANGE_DESC "chatd_range_desc"
#define STORE_STMT_RANGE_ASC "chatd_range_asc"

/* A history page (GET /rooms/{room}/messages): the newest $4 messages
 * (kind 0: updates are not listed) with seq in ($2, $3), each in its
 * current state: body of its latest edit ("" when deleted), deleted (the
 * flag, or a stored delete event: a message stored after its delete),
 * edited_ts (the latest edit's ts), reactions (a JSON object emoji -> the
 * count of that emoji's latest react, emojis at 0 left out); not below
 * kept_from (retention, as STORE_SQL_KEPT). Columns:
 * STORE_COLS with the current body (meta NULL when deleted), then edited_ts,
 * reactions. */
#define STORE_SQL_HISTORY \
    "SELECT m.seq, m.client_id, m.user_id, m.name, " \
    "CASE WHEN d.del THEN '' ELSE coalesce(e.body, m.body) END, m.ts, m.kind, m.target, " \
    "m.emoji, m.react_on, m.react_count, d.del, CASE WHEN d.del THEN NULL ELSE m.meta END, " \
    "CASE WHEN d.del THEN NULL ELSE e.ts END, " \
    "CASE WHEN d.del THEN NULL ELSE r.reactions END FROM messages m " \
    "CROSS JOIN LATERAL (SELECT m.deleted OR EXISTS (SELECT 1 FROM messages x " \
    "  WHERE x.room = m.room AND x.target = m.seq AND x.kind = 2) AS del) d " \
    "LEFT JOIN LATERAL (SELECT x.body, x.ts FROM messages x WHERE x.room = m.room " \
    "  AND x.target = m.seq AND x.kind = 1 ORDER BY x.seq DESC LIMIT 1) e ON true " \
    "LEFT JOIN LATERAL (SELECT json_object_agg(y.emoji, y.react_count ORDER BY y.emoji)::text " \
    "  AS reactions FROM (SELECT DISTINCT ON (x.emoji) x.emoji, x.react_count FROM messages x " \
    "  WHERE x.room = m.room AND x.target = m.seq AND x.kind = 3 " \
    "  ORDER BY x.emoji, x.seq DESC) y WHERE y.react_count > 0) r ON true " \
    "WHERE m.room = $1 AND m.kind = 0 AND m.seq > $2 AND m.seq < $3 " \
    "AND m.seq + 0 >= coalesce((SELECT kept_from FROM rooms WHERE rooms.room = $1), 0) " \
    "ORDER BY m.seq DESC LIMIT $4"
#define STORE_STMT_HISTORY "chatd_history"

/* The target of an update, or the row a resent update's id names: $1
 * room, $2 seq, $3 user and $4 client id (NULL, NULL: none). One row,
 * always: kind, user_id, deleted (the flag or a stored delete event),
 * client_id, target (all NULL when no row holds seq), whether seq is below
 * the room's kept_from (retention: gone, as history and since= see it),
 * then the seq and kind of the update of this target by user $3 with
 * client id $4 (NULL when none is stored; the partial index of updates). */
#define STORE_SQL_TARGET \
    "SELECT m.kind, m.user_id, m.deleted OR EXISTS (SELECT 1 FROM messages d " \
    "WHERE d.room = $1 AND d.target = $2 AND d.kind = 2), m.client_id, m.target, " \
    "$2 < coalesce((SELECT kept_from FROM rooms WHERE rooms.room = $1), 0), u.seq, u.kind " \
    "FROM (SELECT 1) one LEFT JOIN messages m ON m.room = $1 AND m.seq = $2 " \
    "LEFT JOIN LATERAL (SELECT x.seq, x.kind FROM messages x WHERE x.room = $1 " \
    "AND x.target = $2 AND x.kind > 0 AND x.user_id = $3 AND x.client_id = $4 " \
    "ORDER BY x.seq LIMIT 1) u ON true"
#define STORE_STMT_TARGET "chatd_target"

/* The reactions of a message, to seed the bus's state of it: $1 room, $2
 * target. Rows ('r', emoji, user) for every (emoji, user) whose latest
 * react is on, and ('d', NULL, NULL) when the message is deleted. */
#define STORE_SQL_REACTIONS \
    "SELECT 'r', emoji, user_id FROM (SELECT DISTINCT ON (emoji, user_id) emoji, user_id, " \
    "react_on FROM messages WHERE room = $1 AND target = $2 AND kind = 3 " \
    "ORDER BY emoji, user_id, seq DESC) x WHERE react_on " \
    "UNION ALL SELECT 'd', NULL, NULL WHERE EXISTS (SELECT 1 FROM messages " \
    "WHERE room = $1 AND target = $2 AND kind = 2)"
#define STORE_STMT_REACTIONS "chatd_reactions"

/* The durable head of a room, for seeding the bus (docs/storage.md):
 * $1 room. Creates the room's row with a fresh random epoch the first time
 * (ON CONFLICT ... DO UPDATE so that a concurrent creator's row is returned,
 * never NULL). Columns: epoch, head: the highest of the max stored seq and
 * rooms.head (recorded before retention deleted rows: a room whose rows
 * are all gone keeps its head, seqs are never reused), 0 when none. */
#define STORE_SQL_HEAD \
    "WITH r AS (INSERT INTO rooms (room, epoch) " \
    "VALUES ($1, substr(md5(gen_random_uuid()::text), 1, 16)) " \
    "ON CONFLICT (room) DO UPDATE SET epoch = rooms.epoch RETURNING epoch, head) " \
    "SELECT (SELECT epoch FROM r), GREATEST((SELECT head FROM r), " \
    "coalesce((SELECT max(seq) FROM messages WHERE room = $1), 0))"
#define STORE_STMT_HEAD "chatd_head"
/* The head as STORE_SQL_HEAD, and the room's client ids of the idempotency
 * window, for a seed (store_seed): $2 the oldest ts (ms) still in the
 * window, $3 how many seqs below the head to look at (seqs are dense per
 * room). The ids are read from above the newest row older than the window
 * by a minute (lo: found scanning back from the head by the primary key,
 * so a seed reads the window's rows plus one, not $3 rows of history; the
 * minute absorbs clock skew between the nodes that wrote ts), and never
 * more than $3 seqs below the head. One row per stored row with a client
 * id published since $2, in seq order (the first seq of an id stored twice
 * is the one restored: SET NX) (epoch, head, client_id, seq, ts, user_id:
 * an id is its sender's, bus_types.h bus_id_part), or one row (epoch,
 * head, NULL...) when there is none. */
#define STORE_SQL_SEED \
    "WITH r AS (INSERT INTO rooms (room, epoch) " \
    "VALUES ($1, substr(md5(gen_random_uuid()::text), 1, 16)) " \
    "ON CONFLICT (room) DO UPDATE SET epoch = rooms.epoch RETURNING epoch, head), " \
    "h AS (SELECT (SELECT epoch FROM r) AS epoch, GREATEST((SELECT head FROM r), " \
    "coalesce((SELECT max(seq) FROM messages WHERE room = $1), 0)) AS head), " \
    "b AS (SELECT GREATEST(h.head - $3::bigint, coalesce((SELECT seq FROM messages " \
    "WHERE room = $1 AND seq > h.head - $3::bigint AND seq <= h.head " \
    "AND ts < $2::bigint - 60000 ORDER BY seq DESC LIMIT 1), 0)) AS lo FROM h) " \
    "SELECT h.epoch, h.head, m.client_id, m.seq, m.ts, m.user_id FROM h CROSS JOIN b " \
    "LEFT JOIN LATERAL (SELECT client_id, seq, ts, user_id FROM messages WHERE room = $1 AND seq > b.lo " \
    "AND seq <= h.head AND client_id IS NOT NULL AND ts >= $2::bigint) m ON true ORDER BY m.seq"
#define STORE_STMT_SEED "chatd_seed"

/* After a batch that inserted fewer rows than it had (some (room, seq)
 * already stored): the stored rows of the batch's keys, to tell a retry or
 * backfill (identical row: fine) from a conflict (another row: not stored).
 * One statement for every batch size, prepared once per connection: $1 the
 * batch's rooms, $2 its seqs (array literals, as the insert's columns). */
#define STORE_STMT_VERIFY "chatd_verify"
#define STORE_SQL_VERIFY \
    "SELECT m.room, m.seq, m.client_id, m.user_id, m.name, m.body, m.ts, m.kind, m.target, " \
    "m.emoji, m.react_on, m.react_count, m.meta, m.deleted FROM unnest($1::text[], " \
    "$2::bigint[]) AS k(room, seq) JOIN messages m ON m.room = k.room AND m.seq = k.seq"

/* The batch insert: one statement for every batch size, prepared once per
 * connection. Each parameter is a Postgres array literal holding one column
 * of the batch (text format), in this order (the verify statement reads them
 * back in the same order); unnest() zips them back into rows. */
#define STORE_SQL_INSERT \
    "INSERT INTO messages (room, seq, client_id, user_id, name, body, ts, kind, target, emoji, " \
    "react_on, react_count, meta) " \
    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], " \
    "$6::text[], $7::bigint[], $8::smallint[], $9::bigint[], $10::text[], $11::boolean[], " \
    "$12::integer[], $13::text[]) ON CONFLICT (room, seq) DO NOTHING"
#define STORE_INSERT_NCOLS 13
#define STORE_STMT_INSERT "chatd_insert"
/* A bound on the rows of one batch (one statement, one transaction). */
#define STORE_BATCH_HARD_MAX 10000

/* Which of n (room, seq) pairs are stored (the backfill sweeper's check):
 * $1 rooms, $2 seqs (array literals); the 1-based positions of the stored
 * ones. */
#define STORE_STMT_STORED "chatd_stored_check"
#define STORE_SQL_STORED \
    "SELECT k.i FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS k(room, seq, i) " \
    "JOIN messages m ON m.room = k.room AND m.seq = k.seq"

/* ---- read state (core/readstate.c, through store_query) ----------------
 * Batched mark: $1 users, $2 rooms, $3 seqs (text[], text[], bigint[]; one
 * entry per (user, room): the batch is coalesced before). Never moves back
 * (GREATEST). Columns: user_id, room, read_seq (stored, after), previous
 * read_seq (0 when none) read in the statement's snapshot. */
#define STORE_SQL_READ_MARK \
    "WITH v AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v(u, r, s)), " \
    "old AS (SELECT rs.user_id, rs.room, rs.read_seq FROM read_state rs " \
    "JOIN v ON rs.user_id = v.u AND rs.room = v.r), " \
    "up AS (INSERT INTO read_state (user_id, room, read_seq) SELECT u, r, s FROM v " \
    "ON CONFLICT (user_id, room) DO UPDATE SET " \
    "read_seq = GREATEST(read_state.read_seq, EXCLUDED.read_seq), updated_at = now() " \
    "RETURNING user_id, room, read_seq) " \
    "SELECT up.user_id, up.room, up.read_seq, coalesce(old.read_seq, 0) " \
    "FROM up LEFT JOIN old ON old.user_id = up.user_id AND old.room = up.room"

/* Batched lookup for joins: $1 users, $2 rooms (text[]). Columns, one row per
 * entry in its order: read_seq (0 when never read), kept_from (0 when the
 * room kept everything). */
#define STORE_SQL_READ_LOOKUP \
    "SELECT coalesce(rs.read_seq, 0), coalesce(ro.kept_from, 0) " \
    "FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS v(u, r, i) " \
    "LEFT JOIN read_state rs ON rs.user_id = v.u AND rs.room = v.r " \
    "LEFT JOIN rooms ro ON ro.room = v.r ORDER BY v.i"

/* GET /rooms/unread: $1 user. One row per room the user has a read state
 * in: room, seq (the room's head: the highest of rooms.head, the read seq
 * and the stored seqs above it), read_seq, unread = the messages above
 * read_seq (and above what retention removes) not written by the user.
 * Exact: counted from the rows themselves, in one snapshot, by ONE
 * index-only scan per room of messages_unread (room, seq) INCLUDE (user_id)
 * from read_seq up, which also yields the head (docs/storage.md "Unread
 * counts": plan and benchmark). The rooms row is a LATERAL subquery with
 * OFFSET 0 so that it stays one primary-key lookup per room (joined, the
 * planner may hash the whole rooms table). Prepared once per connection
 * (STORE_STMT_UNREAD). Message updates (schema v4) are rows of `messages`
 * too: only messages that are not deleted count (kind = 0 AND NOT deleted),
 * while the head takes every seq; the index (schema v4: messages_unread_v4
 * (room, seq) INCLUDE (user_id, kind, deleted), replacing messages_unread)
 * keeps it one index-only scan. */
#define STORE_SQL_UNREAD \
    "SELECT rs.room, GREATEST(coalesce(ro.head, 0), rs.read_seq, coalesce(c.top, 0)), " \
    "rs.read_seq, c.unread FROM read_state rs " \
    "LEFT JOIN LATERAL (SELECT head, kept_from FROM rooms WHERE rooms.room = rs.room OFFSET 0) ro ON true " \
    "CROSS JOIN LATERAL (SELECT count(*) FILTER (WHERE m.user_id <> $1 AND m.kind = 0 " \
    "AND NOT m.deleted) AS unread, max(m.seq) AS top " \
    "FROM messages m WHERE m.room = rs.room " \
    "AND m.seq > GREATEST(rs.read_seq, coalesce(ro.kept_from, 0) - 1)) c " \
    "WHERE rs.user_id = $1 ORDER BY rs.room"
#define STORE_STMT_UNREAD "chatd_unread"

/* ---- retention (core/retention.c, through store_query) ------------------
 * One pass at a time across nodes: a session-level advisory lock. */
#define STORE_RETENTION_LOCK_KEY "6516353908837"
#define STORE_SQL_RETENTION_LOCK "SELECT pg_try_advisory_lock(" STORE_RETENTION_LOCK_KEY ")"
#define STORE_SQL_RETENTION_UNLOCK "SELECT pg_advisory_unlock(" STORE_RETENTION_LOCK_KEY ")"
/* A page of rooms: $1 after this room name, $2 limit. */
#define STORE_SQL_RETENTION_ROOMS \
    "SELECT room FROM rooms WHERE room > $1 ORDER BY room LIMIT $2"
/* Marks where a page of rooms starts being kept: $1 rooms (text[]), $2
 * cutoffs (bigint[], ms: messages with ts below go). Per room: head = the
 * highest seq stored so far (kept across the deletion), kept_from = one
 * past the last OLD stored row before the first kept one (F: the first
 * stored row from kept_from on with ts at or after the cutoff; every stored
 * row between kept_from and F is old). Not F itself: a seq between the last
 * old row and F may be published and not committed yet (another node's,
 * or a batch in flight) — it is new, it must stay above the boundary (at F
 * it would be hidden from history once committed, and deleted by the next
 * pass). Without F every stored row is old: one past the highest. Nothing
 * old: unchanged. Only moves forward. Columns: room, kept_from, the oldest
 * stored seq (NULL when none): rows below kept_from are then deleted in
 * batches. */
#define STORE_SQL_RETENTION_MARK \
    "WITH v AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS v(room, cut)) " \
    "UPDATE rooms r SET " \
    "head = GREATEST(r.head, coalesce((SELECT max(m.seq) FROM messages m WHERE m.room = r.room), 0)), " \
    "kept_from = GREATEST(r.kept_from, coalesce(" \
    "(SELECT max(m.seq) + 1 FROM messages m WHERE m.room = r.room AND m.seq >= r.kept_from " \
    "AND m.seq < coalesce((SELECT f.seq FROM messages f WHERE f.room = r.room " \
    "AND f.seq >= r.kept_from AND f.ts >= v.cut ORDER BY f.seq LIMIT 1), 9223372036854775807)), " \
    "r.kept_from)) " \
    "FROM v WHERE r.room = v.room " \
    "RETURNING r.room, r.kept_from, (SELECT min(m.seq) FROM messages m WHERE m.room = r.room)"
/* One batch: $1 room, $2 from seq (inclusive), $3 to seq (exclusive):
 * at most $3 - $2 rows (seqs are unique per room), by the primary key.
 * Column: rows deleted. */
#define STORE_SQL_RETENTION_DELETE \
    "WITH d AS (DELETE FROM messages WHERE room = $1 AND seq >= $2 AND seq < $3 RETURNING 1) " \
    "SELECT count(*) FROM d"

#endif
