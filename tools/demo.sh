#!/usr/bin/env bash
# The 60-second demo, one command: two chatd nodes on one Redis and one
# Postgres behind the nginx TLS front (self-signed certificate), three browser
# tabs' URLs, a node killed with its clients moving to the other (no message
# lost or duplicated), and a short load-test report. Everything it starts is
# stopped on exit (by PID), everything it writes is in a temp folder.
#   tools/demo.sh              interactive: waits (Ctrl-C) so you can use the tabs
#   tools/demo.sh --short      non-interactive, smaller load; exit status = success
#   tools/demo.sh --no-tls     without nginx (clients go to the nodes directly)
# env: DEMO_PORT_BASE (default 18440: front http +0, https +3, nodes +1 +2,
#      Redis +4, Postgres +5), CHATD (binary, default build/chatd)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHORT=0 TLS=1
for a in "$@"; do
    case $a in
    --short) SHORT=1 ;;
    --no-tls) TLS=0 ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "demo: unknown option $a" >&2; exit 2 ;;
    esac
done
B=${DEMO_PORT_BASE:-18440}
HTTP=$B NODE_A=$((B + 1)) NODE_B=$((B + 2)) HTTPS=$((B + 3)) REDIS_PORT=$((B + 4)) PG_PORT=$((B + 5))
CHATD=${CHATD:-$ROOT/build/chatd}
D=$(mktemp -d /tmp/chatd-demo-XXXXXX)
chmod 755 "$D"
PIDS=()
# shellcheck source=tools/services.sh
. tools/services.sh
cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 1 60); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null   # reap our children (nginx); the nodes are disowned
    done
    if [ -f "$D/pg/postmaster.pid" ]; then kill -INT "$(head -1 "$D/pg/postmaster.pid")" 2>/dev/null; fi
    services_stop "$D" 2>/dev/null
    rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "build"
if [ ! -x "$CHATD" ]; then
    cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build build -j2 --target chatd >/dev/null
fi
loadtest/build.sh >/dev/null
if [ "$TLS" = 1 ] && ! command -v nginx >/dev/null; then
    echo "demo: nginx is not installed (tools/deps.sh --test installs it); or run with --no-tls" >&2
    exit 1
fi

step "Redis :$REDIS_PORT, Postgres :$PG_PORT"
services_start_redis "$D" "$REDIS_PORT" >/dev/null
services_start_postgres "$D" "$PG_PORT" >/dev/null
export CHAT_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export CHAT_DATABASE_URL=postgresql://postgres@127.0.0.1:$PG_PORT/chatd
export CHAT_JWT_SECRET
CHAT_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export CHAT_SCRIPTS=$ROOT/scripts CHAT_WEB_DIR=$ROOT/web CHAT_TRUSTED_PROXIES=127.0.0.1

start_node() {   # name port -> pid in NODE_PID
    CHAT_LISTEN=127.0.0.1:$2 CHAT_NODE_ID=$1 "$CHATD" --dev-tokens >>"$D/$1.log" 2>&1 &
    NODE_PID=$!
    disown "$NODE_PID"   # no job notice when the demo kills it
    PIDS+=("$NODE_PID")
    for _ in $(seq 1 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$2/readyz" && return 0
        kill -0 "$NODE_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "demo: node $1 did not become ready; log:" >&2
    tail -20 "$D/$1.log" >&2
    exit 1
}
step "two chatd nodes"
start_node node-a "$NODE_A"; PID_A=$NODE_PID
start_node node-b "$NODE_B"; PID_B=$NODE_PID
echo "node-a pid $PID_A  http://127.0.0.1:$NODE_A    node-b pid $PID_B  http://127.0.0.1:$NODE_B"

if [ "$TLS" = 1 ]; then
    step "nginx TLS front https://127.0.0.1:$HTTPS (self-signed)"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$D/key.pem" -out "$D/cert.pem" 2>/dev/null
    deploy/nginx/render.sh "$D/nginx" --https "127.0.0.1:$HTTPS" --http "127.0.0.1:$HTTP" \
        --cert "$D/cert.pem" --key "$D/key.pem" --upstream "127.0.0.1:$NODE_A,127.0.0.1:$NODE_B"
    nginx -t -q -c "$D/nginx/nginx.conf"
    nginx -c "$D/nginx/nginx.conf" -g 'daemon off;' &
    PIDS+=("$!")
    for _ in $(seq 1 50); do
        curl -fsk -o /dev/null "https://127.0.0.1:$HTTPS/readyz" && break
        sleep 0.1
    done
    curl -fs --cacert "$D/cert.pem" -o /dev/null "https://127.0.0.1:$HTTPS/readyz" ||
        { echo "demo: the front does not answer"; tail "$D/nginx/error.log"; exit 1; }
    FRONT=https://127.0.0.1:$HTTPS WSURL=wss://127.0.0.1:$HTTPS CA=(--cafile "$D/cert.pem")
else
    FRONT=http://127.0.0.1:$NODE_A WSURL=ws://127.0.0.1:$NODE_A,ws://127.0.0.1:$NODE_B CA=()
fi

step "open three browser tabs (accept the self-signed certificate once)"
for n in Alice Bob Carol; do echo "  $FRONT/?name=$n#demo"; done

step "kill a node: its clients move to the other"
/usr/bin/python3 tools/demo_clients.py --url "$WSURL" "${CA[@]}" --kill-pid "$PID_A" \
    --clients "$([ "$SHORT" = 1 ] && echo 8 || echo 24)"
step "node-a back (an operator or systemd restarts it)"
start_node node-a "$NODE_A"; PID_A=$NODE_PID
echo "node-a pid $PID_A ready"

step "load test: both nodes, rooms of 100"
if [ "$SHORT" = 1 ]; then LT=(--conns 1000 --rooms 10 --rate 100 --duration 5 --ramp 1000)
else LT=(--conns 4000 --rooms 40 --rate 400 --duration 20 --ramp 2000); fi
loadtest/bin/chatload --url "127.0.0.1:$NODE_A,127.0.0.1:$NODE_B" --secret "$CHAT_JWT_SECRET" \
    "${LT[@]}" --heartbeat-ms 10000 --server-pid "$PID_A,$PID_B" --quiet --json "$D/load.json" \
    >"$D/load.txt"
jq -r '"  \(.connections.held_at_end) connections held, \(.deliveries.per_s | floor) deliveries/s, lag p50 \(.lag_ms.p50) ms / p99 \(.lag_ms.p99) ms",
       "  losses \(.deliveries.losses), duplicates \(.deliveries.duplicates), reorders \(.deliveries.reorders); server CPU \(.server.cpu_per_delivery_us) us per delivery",
       "  machine: others used \(.machine.other_cpu_util * 100 | floor)% of a core"' "$D/load.json"
jq -e '.deliveries.losses == 0 and .deliveries.duplicates == 0 and .connections.failed == 0' \
    "$D/load.json" >/dev/null || { echo "demo: the load test lost messages or connections"; cat "$D/load.txt"; exit 1; }

if [ "$SHORT" = 1 ]; then
    step "done"
    exit 0
fi
step "running: $FRONT/?name=Alice#demo  (Ctrl-C stops everything)"
while :; do sleep 1; done
