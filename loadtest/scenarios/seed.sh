#!/usr/bin/env bash
# seed: 500 connections in rooms of 100, a modest 50 msgs/s (5,000 deliveries/s),
# single chatd with Postgres history. The smoke test of the whole load path.
# env: DURATION (s, default 30), RATE (msgs/s, default 50), NO_PG=1 to skip Postgres
source "$(dirname "$0")/lib.sh"
lt_build
[ "${NO_PG:-0}" = 1 ] || lt_services pg
lt_chatd seed "$PORT_A"
lt_load seed --url "127.0.0.1:$PORT_A" --conns 500 --rooms 5 --rate "${RATE:-50}" \
    --duration "${DURATION:-30}" --ramp 500 --heartbeat-ms 10000 --server-pid "$LT_CHATD_PID"
lt_plot seed "seed: 500 conns, rooms of 100, ${RATE:-50} msgs/s"
