#!/usr/bin/env bash
# One command to run chatd on this machine: installs missing Debian packages,
# builds, starts a local Redis and Postgres in .data/, starts chatd with dev
# tokens, and prints the browser URL. Ctrl-C stops everything it started.
#   ./run.sh                 # http://127.0.0.1:8080/
#   CHAT_LISTEN=127.0.0.1:9000 ./run.sh
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
DATA=${CHATD_DATA:-$ROOT/.data}
LISTEN=${CHAT_LISTEN:-127.0.0.1:8080}
REDIS_PORT=${CHATD_REDIS_PORT:-6390}
PG_PORT=${CHATD_PG_PORT:-5440}

# durable services: an ack means stored (SERVICES_FAST is for the test suite only)
unset SERVICES_FAST
tools/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target chatd >/dev/null
mkdir -p "$DATA"
chmod 755 "$DATA"
# shellcheck source=tools/services.sh
. tools/services.sh
cleanup() {
    [ -n "${CHATD_PID:-}" ] && kill "$CHATD_PID" 2>/dev/null && wait "$CHATD_PID" 2>/dev/null
    services_stop "$DATA"
}
trap cleanup EXIT INT TERM
services_start_redis "$DATA" "$REDIS_PORT"
services_start_postgres "$DATA" "$PG_PORT"
[ -f "$DATA/jwt-secret" ] || head -c 32 /dev/urandom | base64 | tr -d '\n=/+' >"$DATA/jwt-secret"

# Redis and Postgres over their unix sockets where they have one (tools/services.sh):
# each command skips the TCP stack on both sides (docs/cost.md section 20); TCP else
REDIS_DEFAULT=$(services_redis_unix_url "$DATA")
PG_DEFAULT=$(services_pg_unix_conninfo "$DATA" "$PG_PORT")
REDIS_DEFAULT=${REDIS_DEFAULT:-redis://127.0.0.1:$REDIS_PORT}
PG_DEFAULT=${PG_DEFAULT:-postgresql://postgres@127.0.0.1:$PG_PORT/chatd}
export CHAT_LISTEN=$LISTEN
export CHAT_REDIS_URL=${CHAT_REDIS_URL:-$REDIS_DEFAULT}
export CHAT_DATABASE_URL=${CHAT_DATABASE_URL:-$PG_DEFAULT}
export CHAT_JWT_SECRET=${CHAT_JWT_SECRET:-$(cat "$DATA/jwt-secret")}
export CHAT_SCRIPTS=${CHAT_SCRIPTS:-$ROOT/scripts}
export CHAT_WEB_DIR=${CHAT_WEB_DIR:-$ROOT/web}
./build/chatd --dev-tokens &
CHATD_PID=$!
for _ in $(seq 1 100); do
    curl -sf "http://$LISTEN/healthz" >/dev/null 2>&1 && break
    kill -0 "$CHATD_PID" 2>/dev/null || { echo "chatd exited; see the log above" >&2; exit 1; }
    sleep 0.1
done
echo
echo "  chatd is running: open http://$LISTEN/ in a browser"
# where chatd reaches them, a password in a URL the caller gave shown as ***
echo "  (Redis :$REDIS_PORT and Postgres :$PG_PORT live in $DATA; chatd reaches them at"
echo "   $(services_redact_url "$CHAT_REDIS_URL") and $(services_redact_url "$CHAT_DATABASE_URL"); Ctrl-C stops everything)"
echo
wait "$CHATD_PID"
