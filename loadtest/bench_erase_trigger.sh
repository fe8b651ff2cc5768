#!/usr/bin/env bash
# bench_erase_trigger: what the erase trigger's guard (schema version 8,
# core/store_schema.c) saves per insert transaction. pgbench runs the store's
# batch INSERT (the unnest form of STORE_SQL_INSERT, one row and five rows per
# transaction, loadtest/sql/*.pgbench) against a Postgres holding chatd's
# schema, alternating the trigger function as chatd installs it and the same
# function without the guard (version 7's body), ROUNDS times each.
#   loadtest/bench_erase_trigger.sh PORT [ROUNDS] [TXNS]
# PORT: a Postgres with chatd's schema in database chatd (start chatd once
# against it, e.g. on tools/services.sh's services_start_postgres). Prints the
# mean latency per transaction (ms) of each; on one client the difference is
# the backend's work. Leaves the function as chatd installs it.
set -euo pipefail
PORT=${1:?usage: bench_erase_trigger.sh PORT [ROUNDS] [TXNS]}
ROUNDS=${2:-3}
TXNS=${3:-20000}
HERE=$(cd "$(dirname "$0")" && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
P=(psql -h 127.0.0.1 -p "$PORT" -U postgres -d chatd -qAt)
work=$(mktemp -d)
"${P[@]}" -c "SELECT pg_get_functiondef('chatd_erase_deleted'::regproc)" >"$work/guarded.sql"
# an interrupted run leaves the function as chatd installs it
trap '"${P[@]}" -f "$work/guarded.sql" >/dev/null 2>&1; rm -rf "$work"' EXIT
grep -q 'IF NOT EXISTS' "$work/guarded.sql" ||
    { echo "bench_erase_trigger: the function has no guard (schema older than version 8?)" >&2; exit 2; }
# the same function without its guard: version 7's body
sed 's/ IF NOT EXISTS (SELECT 1 FROM chatd_new.* THEN RETURN NULL; END IF;//' "$work/guarded.sql" >"$work/plain.sql"
! grep -q 'IF NOT EXISTS' "$work/plain.sql" || { echo "bench_erase_trigger: could not strip the guard" >&2; exit 2; }
pb() {
    "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -U postgres -M prepared -c1 -t "$TXNS" -f "$1" chatd 2>&1 |
        awk '/latency average/ {print $4}'
}
for r in $(seq 1 "$ROUNDS"); do
    for v in plain guarded; do
        "${P[@]}" -f "$work/$v.sql" >/dev/null
        echo "round $r $v: 1 row $(pb "$HERE/sql/insert_1row.pgbench") ms, 5 rows $(pb "$HERE/sql/insert_5rows.pgbench") ms"
    done
done
