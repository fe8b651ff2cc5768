#!/usr/bin/env bash
# conn15k: 15,000 WebSocket connections (rooms of 100) with heartbeats, held for
# DURATION seconds (default 300) while a trickle of messages flows (RATE, default
# 15 msgs/s = 1,500 deliveries/s). Measures memory per connection, CPU to hold
# them (heartbeats + presence) and lag under that population.
# env: DURATION, RATE, RAMP (conns/s, default 1000), HEARTBEAT_MS (default 10000),
#      CONNS (default 15000), WITH_PG=1 to add Postgres
source "$(dirname "$0")/lib.sh"
lt_build
[ "${WITH_PG:-0}" = 1 ] && lt_services pg
lt_chatd conn15k "$PORT_A"
CONNS=${CONNS:-15000}
lt_load conn15k --url "127.0.0.1:$PORT_A" --conns "$CONNS" --rooms $((CONNS / 100)) \
    --rate "${RATE:-15}" --duration "${DURATION:-300}" --ramp "${RAMP:-1000}" \
    --heartbeat-ms "${HEARTBEAT_MS:-10000}" --src-addrs 4 --server-pid "$LT_CHATD_PID"
lt_plot conn15k "conn15k: $CONNS connections, heartbeat ${HEARTBEAT_MS:-10000} ms, ${RATE:-15} msgs/s"
