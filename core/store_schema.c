/* store_schema: see store_schema.h. Migrations are append-only: never edit a
 * released one, add the next version instead. */
#define _GNU_SOURCE
#include "store_schema.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Arbitrary constant shared by every chatd node ("chatd" in ASCII). */
#define STORE_MIGRATION_LOCK_KEY "6516353908836"

typedef struct migration {
    int version;
    const char *name;
    const char *sql;
} migration;

/* The erase trigger's function (version 4; version 7 also clears meta):
 * msg_set is what a deleted message's row becomes, attrs the function's
 * attributes. */
#define ERASE_TARGETS \
    "  SELECT n.room, n.target AS t FROM chatd_new n WHERE n.kind = 2" \
    "  UNION SELECT n.room, coalesce(n.target, n.seq) FROM chatd_new n" \
    "  WHERE n.kind IN (0, 1) AND EXISTS (SELECT 1 FROM messages d WHERE d.room = n.room" \
    "   AND d.target = coalesce(n.target, n.seq) AND d.kind = 2)) x"
#define ERASE_FN(msg_set, attrs) ERASE_FN_G(msg_set, attrs, "")
#define ERASE_FN_G(msg_set, attrs, guard) \
    "CREATE OR REPLACE FUNCTION chatd_erase_deleted() RETURNS trigger LANGUAGE plpgsql " attrs \
    "AS $f$ " \
    "BEGIN" \
    guard \
    " UPDATE messages m SET " msg_set " FROM (" \
    ERASE_TARGETS \
    " WHERE m.room = x.room AND m.seq = x.t AND m.kind = 0 AND NOT m.deleted;" \
    " UPDATE messages m SET deleted = true, body = '' FROM (" \
    ERASE_TARGETS \
    " WHERE m.room = x.room AND m.target = x.t AND m.kind = 1 AND NOT m.deleted;" \
    " RETURN NULL; " \
    "END $f$"

static const migration MIGRATIONS[] = {
    {1, "messages",
     "CREATE TABLE IF NOT EXISTS messages ("
     " room text NOT NULL,"
     " seq bigint NOT NULL,"
     " client_id text,"
     " user_id text NOT NULL,"
     " name text NOT NULL,"
     " body text NOT NULL,"
     " ts bigint NOT NULL,"
     " PRIMARY KEY (room, seq));"},
    /* one row per room: its epoch (a random id that identifies the room's
     * seq numbering; stable while Postgres keeps the room's history, also
     * across a Redis that lost its data). A later version adds per-room
     * settings here (retention, read state). Existing messages are kept. */
    {2, "rooms",
     "CREATE TABLE IF NOT EXISTS rooms ("
     " room text PRIMARY KEY,"
     " epoch text NOT NULL,"
     " created_at timestamptz NOT NULL DEFAULT now());"},
    /* Read state per (user, room); per room the head kept across deletions
     * and the lowest seq retention keeps (docs/storage.md "Read state" and
     * "Retention"); rooms of a version-1 database get their row here, so
     * the retention pass (which walks `rooms`) sees every room. Existing
     * messages are kept. */
    {3, "read_state_retention",
     "CREATE TABLE IF NOT EXISTS read_state ("
     " user_id text NOT NULL,"
     " room text NOT NULL,"
     " read_seq bigint NOT NULL,"
     " updated_at timestamptz NOT NULL DEFAULT now(),"
     " PRIMARY KEY (user_id, room));"
     "ALTER TABLE rooms ADD COLUMN IF NOT EXISTS head bigint NOT NULL DEFAULT 0;"
     "ALTER TABLE rooms ADD COLUMN IF NOT EXISTS kept_from bigint NOT NULL DEFAULT 0;"
     /* unread counts: an index-only scan per room (docs/storage.md; a big
      * table can get it beforehand with CREATE INDEX CONCURRENTLY) */
     "CREATE INDEX IF NOT EXISTS messages_unread ON messages (room, seq) INCLUDE (user_id);"
     "INSERT INTO rooms (room, epoch)"
     " SELECT room, substr(md5(gen_random_uuid()::text), 1, 16) FROM"
     " (SELECT DISTINCT room FROM messages) d ON CONFLICT (room) DO NOTHING;"},
    /* message updates (v2, docs/storage.md "Message updates"): an edit,
     * delete or react is a row of its own (its own seq, kind 1-3, target =
     * the message's seq), so replay by since= and the durable head see
     * messages and updates alike. A delete erases its message and the
     * message's edits (deleted, body ''), also when they are stored after
     * it (a late batch, a backfill): a statement trigger over the inserted
     * rows. Existing rows become messages (kind 0); ADD COLUMN with a
     * constant default rewrites nothing. Unread counts count messages only,
     * not deleted ones: messages_unread_v4 replaces the unread index of
     * version 3 and also carries kind and deleted, so the count stays one
     * index-only scan per room (STORE_SQL_UNREAD; a big table can get it
     * beforehand with CREATE INDEX CONCURRENTLY). */
    {4, "message_updates",
     "ALTER TABLE messages"
     " ADD COLUMN IF NOT EXISTS kind smallint NOT NULL DEFAULT 0,"
     " ADD COLUMN IF NOT EXISTS target bigint,"
     " ADD COLUMN IF NOT EXISTS emoji text,"
     " ADD COLUMN IF NOT EXISTS react_on boolean,"
     " ADD COLUMN IF NOT EXISTS react_count integer,"
     " ADD COLUMN IF NOT EXISTS deleted boolean NOT NULL DEFAULT false;"
     "CREATE INDEX IF NOT EXISTS messages_updates ON messages (room, target, seq) WHERE kind > 0;"
     ERASE_FN("deleted = true, body = ''", "") ";"
     "DROP TRIGGER IF EXISTS messages_erase_deleted ON messages;"
     "CREATE TRIGGER messages_erase_deleted AFTER INSERT ON messages"
     " REFERENCING NEW TABLE AS chatd_new FOR EACH STATEMENT"
     " EXECUTE FUNCTION chatd_erase_deleted();"
     "CREATE INDEX IF NOT EXISTS messages_unread_v4 ON messages (room, seq)"
     " INCLUDE (user_id, kind, deleted);"
     "DROP INDEX IF EXISTS messages_unread;"},
    /* the server API's optional per-message meta (a JSON object, stored as
     * the text it was given). Independent of the versions before it except
     * 1: existing rows keep meta NULL. */
    {5, "message_meta",
     "ALTER TABLE messages ADD COLUMN IF NOT EXISTS meta text;"},
    /* The erase trigger of version 4 planned without sequential scans.
     * PL/pgSQL plans its statements once per session: a session that first
     * inserted into a small table kept a plan that scanned all of messages
     * at every batch (measured: 1.88 ms of Postgres CPU per one-row
     * transaction, 10x version 3, and 103 us per row in batches). With
     * enable_seqscan off for the function only, its probes are index
     * lookups (messages_updates, messages_pkey) whatever the statistics
     * were when the plan was made; the transition table is still scanned
     * (it has no index). Replanning at every call (EXECUTE) was measured
     * too: right per row, but planning cost 0.7 ms per transaction. */
    {6, "erase_trigger_no_seqscan",
     "ALTER FUNCTION chatd_erase_deleted() SET enable_seqscan = off;"},
    /* A deleted message keeps no content: the erase trigger also clears the
     * API's meta (version 5 added it; version 4's trigger only blanked the
     * body), and rows already deleted lose theirs. History and replay never
     * showed it; the database kept it. The attribute of version 6 is
     * restated (CREATE OR REPLACE sets every attribute anew). */
    {7, "erase_deleted_meta",
     ERASE_FN("deleted = true, body = '', meta = NULL", "SET enable_seqscan = off ") ";"
     "UPDATE messages SET meta = NULL WHERE deleted AND meta IS NOT NULL;"},
    /* The erase trigger returns at once when the batch erases nothing: no
     * delete among its rows and no stored delete of its messages and edits
     * (one probe of the partial index per row, as before). Its two UPDATE
     * statements ran every batch and found nothing almost always; their
     * joins over the transition table cost 15-30 us per transaction
     * (docs/cost.md section 21). What they erase when they run is the same.
     * The attributes of version 7 are restated. */
    {8, "erase_trigger_guard",
     ERASE_FN_G("deleted = true, body = '', meta = NULL", "SET enable_seqscan = off ",
                " IF NOT EXISTS (SELECT 1 FROM chatd_new n WHERE n.kind = 2 OR (n.kind IN (0, 1)"
                " AND EXISTS (SELECT 1 FROM messages d WHERE d.room = n.room"
                " AND d.target = coalesce(n.target, n.seq) AND d.kind = 2))) THEN RETURN NULL; END IF;") ";"},
};
static const int NMIGRATIONS = sizeof MIGRATIONS / sizeof MIGRATIONS[0];

const char *store_schema_lock_sql(void)
{
    /* synchronous_commit=on for our session: an ack means the commit record
     * reached the server's WAL on disk, whatever the server default is. */
    return "SET client_encoding TO 'UTF8';"
           "SET synchronous_commit TO on;"
           "BEGIN;"
           "SELECT pg_advisory_xact_lock(" STORE_MIGRATION_LOCK_KEY ");"
           "CREATE TABLE IF NOT EXISTS schema_migrations ("
           " version integer PRIMARY KEY,"
           " name text NOT NULL,"
           " applied_at timestamptz NOT NULL DEFAULT now());"
           "SELECT coalesce(max(version), 0) FROM schema_migrations;";
}

int store_schema_version(void)
{
    return MIGRATIONS[NMIGRATIONS - 1].version;
}

char *store_schema_upgrade_sql(int from, int *to)
{
    size_t cap = 64;
    for (int i = 0; i < NMIGRATIONS; i++)
        cap += strlen(MIGRATIONS[i].sql) + strlen(MIGRATIONS[i].name) + 128;
    char *sql = malloc(cap);
    if (!sql) return NULL;
    size_t len = 0;
    int v = from;
    for (int i = 0; i < NMIGRATIONS; i++) {
        const migration *m = &MIGRATIONS[i];
        if (m->version <= from) continue;
        len += (size_t)snprintf(sql + len, cap - len,
                                "%s INSERT INTO schema_migrations (version, name) "
                                "VALUES (%d, '%s');",
                                m->sql, m->version, m->name);
        v = m->version;
    }
    snprintf(sql + len, cap - len, "COMMIT;");
    *to = v;
    return sql;
}
