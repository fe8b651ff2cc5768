#!/usr/bin/env bash
# history: GET /rooms/{room}/messages (newest 50) at HTTP_RATE req/s (default 200)
# while 1,000 connections chat at 100 msgs/s; reports history latency/status and
# the effect on broadcast lag. Postgres required (history lives there).
# env: DURATION (default 60), HTTP_RATE (default 200)
source "$(dirname "$0")/lib.sh"
lt_build
lt_services pg
lt_chatd history "$PORT_A"
lt_load history --url "127.0.0.1:$PORT_A" --conns 1000 --rooms 10 --rate 100 \
    --http-rate "${HTTP_RATE:-200}" --duration "${DURATION:-60}" --heartbeat-ms 10000 \
    --src-addrs 4 --server-pid "$LT_CHATD_PID"
lt_plot history "history: ${HTTP_RATE:-200} GET/s during 1000 conns x 100 msgs/s"
