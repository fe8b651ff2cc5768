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
    /* the server API's optional per-message meta (a JSON object, stored as
     * the text it was given). Independent of the versions before it except
     * 1: existing rows keep meta NULL. */
    {5, "message_meta",
     "ALTER TABLE messages ADD COLUMN IF NOT EXISTS meta text;"},
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
