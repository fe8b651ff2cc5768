#!/usr/bin/env bash
# Prometheus end-to-end test: starts chatd and Debian's prometheus (scraping it
# every second) on two free ports (from 17640, or in the caller's
# CHATD_TEST_PORT_LO/HI range: tools/test_ports.sh), holds a known number of WebSocket
# connections with loadtest/bin/chatload and checks, through Prometheus's HTTP
# API, that chat_connections_open shows exactly that number, then 0 after they
# leave; also that refused tokens are counted and that /metrics passes promtool.
# Prints "N passed, N failed"; exits 1 on any failure.
# env: CHATD (default build/chatd), HOLD (connections to hold, default 37),
# CHATD_TEST_PORT_LO/HI or PROM_TEST_PORT_LO/HI (where to look for the ports)
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CHATD=${CHATD:-$REPO/build/chatd}
SECRET=prom-test-secret HOLD=${HOLD:-37}
TMP=$(mktemp -d /tmp/chatd-promtest.XXXXXX)
PIDS=()
pass=0 fail=0
ok()  { echo "ok   - $*"; pass=$((pass + 1)); }
bad() { echo "FAIL - $*"; fail=$((fail + 1)); }
. "$REPO/tools/services.sh"
finish() {
    services_end_pids "${PIDS[@]}"
    rm -rf "$TMP"
    echo "$pass passed, $fail failed"
    [ "$fail" = 0 ]
    exit $?
}
trap finish EXIT

# two free loopback ports: the first of PROM_TEST_PORT_LO..HI, from the
# caller's CHATD_TEST_PORT_LO/HI (tools/test_ports.sh), else from 17640 up
# (17640/17641 unless taken: another run may hold them)
. "$REPO/tools/test_ports.sh"
test_ports_derive || { bad "ports"; exit; }
PLO=${PROM_TEST_PORT_LO:-17640} PHI=${PROM_TEST_PORT_HI:-65535}
CHATD_PORT=$(test_ports_first_free "$PLO" "$PHI") &&
    PROM_PORT=$(test_ports_first_free $((CHATD_PORT + 1)) "$PHI") ||
    { bad "no two free ports in $PLO-$PHI"; exit; }

# query EXPR -> the first sample's value, or "none"
query() {
    curl -fs "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$1" |
        jq -r '.data.result[0].value[1] // "none"' 2>/dev/null || echo none
}
# wait_value EXPR WANT SECONDS -> 0 when EXPR == WANT within SECONDS; last value in $got
wait_value() {
    local i
    for i in $(seq 1 $(($3 * 4))); do
        got=$(query "$1")
        [ "$got" = "$2" ] && return 0
        sleep 0.25
    done
    return 1
}

"$REPO/loadtest/build.sh" || { bad "loadtest/build.sh"; exit; }
[ -x "$CHATD" ] || { bad "no chatd binary at $CHATD"; exit; }

CHAT_LISTEN=127.0.0.1:$CHATD_PORT CHAT_JWT_SECRET=$SECRET CHAT_NODE_ID=promtest \
    "$CHATD" >"$TMP/chatd.log" 2>&1 &
PIDS+=($!)
up=0
for _ in $(seq 1 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$CHATD_PORT/healthz" && { up=1; break; }
    sleep 0.1
done
[ $up = 1 ] && ok "chatd healthy on $CHATD_PORT" || { bad "chatd did not start: $(tail -3 "$TMP/chatd.log")"; exit; }

if curl -fs "http://127.0.0.1:$CHATD_PORT/metrics" >"$TMP/metrics.txt" &&
    grep -q '^chat_connections_open' "$TMP/metrics.txt"; then
    ok "/metrics exposes chat_connections_open"
else
    bad "/metrics has no chat_connections_open sample before the first connection (register series at startup)"
fi
if promtool check metrics <"$TMP/metrics.txt" >"$TMP/promtool.txt" 2>&1; then
    ok "promtool check metrics accepts /metrics"
else
    bad "promtool check metrics: $(head -5 "$TMP/promtool.txt" | tr '\n' ' ')"
fi

cat >"$TMP/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: chatd
    static_configs:
      - targets: ['127.0.0.1:$CHATD_PORT']
YML
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$TMP/prometheus.log" 2>&1 &
PIDS+=($!)
if wait_value 'up{job="chatd"}' 1 30; then ok "prometheus scrapes chatd (up == 1)"
else bad "prometheus did not scrape chatd (up = $got): $(tail -3 "$TMP/prometheus.log")"; exit; fi

# hold HOLD connections (no messages, heartbeats every second)
"$REPO/loadtest/bin/chatload" --url "127.0.0.1:$CHATD_PORT" --secret "$SECRET" --conns "$HOLD" \
    --rooms 3 --rate 0 --duration 120 --heartbeat-ms 1000 --quiet >"$TMP/hold.txt" 2>&1 &
HOLDER=$!
PIDS+=($HOLDER)
if wait_value 'chat_connections_open' "$HOLD" 30; then ok "chat_connections_open == $HOLD while holding $HOLD"
else bad "chat_connections_open = $got while holding $HOLD"; fi

accepted=$(query 'sum(chat_connections_total{result="accepted"})')
if [ "$accepted" != none ] && [ "${accepted%.*}" -ge "$HOLD" ] 2>/dev/null; then
    ok "chat_connections_total{result=\"accepted\"} = $accepted >= $HOLD"
else
    bad "chat_connections_total{result=\"accepted\"} = $accepted, want >= $HOLD"
fi

# a bad secret: 5 upgrades refused with 401, counted as refused_auth
"$REPO/loadtest/bin/chatload" --url "127.0.0.1:$CHATD_PORT" --secret wrong-secret --conns 5 \
    --rate 0 --duration 0.1 --drain 0.1 --quiet >"$TMP/refused.txt" 2>&1
if grep -q 'HTTP 401: 5' "$TMP/refused.txt"; then ok "bad tokens refused with HTTP 401 before the upgrade"
else bad "bad tokens not refused with 401: $(grep -E 'held|upgrade' "$TMP/refused.txt" | tr '\n' ' ')"; fi
ref=none
for _ in $(seq 1 40); do
    ref=$(query 'sum(chat_connections_total{result="refused_auth"})')
    [ "$ref" != none ] && [ "${ref%.*}" -ge 5 ] 2>/dev/null && break
    sleep 0.25
done
if [ "$ref" != none ] && [ "${ref%.*}" -ge 5 ] 2>/dev/null; then ok "chat_connections_total{result=\"refused_auth\"} = $ref >= 5"
else bad "chat_connections_total{result=\"refused_auth\"} = $ref, want >= 5"; fi
if wait_value 'chat_connections_open' "$HOLD" 10; then ok "refused upgrades do not change chat_connections_open"
else bad "chat_connections_open = $got after refused upgrades, want $HOLD"; fi

# release the held connections: the gauge must fall back to 0
kill "$HOLDER" 2>/dev/null
if wait_value 'chat_connections_open' 0 30; then ok "chat_connections_open back to 0 after the clients left"
else bad "chat_connections_open = $got after the clients left, want 0"; fi
