#!/usr/bin/env bash
# churn: a connect/disconnect storm. 2,000 connections in rooms of 100 chatting
# at 100 msgs/s while CHURN connections/s (default 200) close and reconnect.
# Reports connect latency, refused/failed connects, and lag/order of the rest.
# env: DURATION (default 60), CHURN (default 200)
source "$(dirname "$0")/lib.sh"
lt_build
lt_services pg
lt_chatd churn "$PORT_A"
lt_load churn --url "127.0.0.1:$PORT_A" --conns 2000 --rooms 20 --rate 100 \
    --churn "${CHURN:-200}" --duration "${DURATION:-60}" --heartbeat-ms 10000 --src-addrs 4 \
    --server-pid "$LT_CHATD_PID"
lt_plot churn "churn: 2000 conns, ${CHURN:-200} reconnects/s, 100 msgs/s"
