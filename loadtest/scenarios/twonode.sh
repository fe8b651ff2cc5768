#!/usr/bin/env bash
# twonode: two chatd nodes on one Redis (and Postgres), 10,000 connections split
# between them so that every room of 100 has members on both nodes; publishers
# on both. Checks cross-node order (seq gaps / duplicates / reorders) and lag.
# env: DURATION (default 60), RATE (default 200), CONNS (default 10000)
source "$(dirname "$0")/lib.sh"
lt_build
lt_services redis pg
lt_chatd twonode-a "$PORT_A"
PID_A=$LT_CHATD_PID
lt_chatd twonode-b "$PORT_B"
PID_B=$LT_CHATD_PID
CONNS=${CONNS:-10000}
lt_load twonode --url "127.0.0.1:$PORT_A,127.0.0.1:$PORT_B" --conns "$CONNS" \
    --rooms $((CONNS / 100)) --publishers $((CONNS / 50)) --rate "${RATE:-200}" \
    --duration "${DURATION:-60}" --ramp 1000 --heartbeat-ms 10000 --src-addrs 4 \
    --server-pid "$PID_A,$PID_B"
lt_plot twonode "twonode: $CONNS conns over 2 nodes + Redis, ${RATE:-200} msgs/s"
