#!/usr/bin/env bash
# twonode: two chatd nodes on one Redis (and Postgres), 10,000 connections split
# between them so that every room of 100 has members on both nodes; publishers
# on both. Checks cross-node order (seq gaps / duplicates / reorders) and lag.
# SINGLE=1 runs the same shape (same conns, rooms, publishers, rate; Postgres,
# no Redis) on one node instead -> results/twonode_single.*, and when both runs
# exist writes results/twonode_compare.json (added p50 lag, CPU per delivery ratio).
# env: DURATION (default 60), RATE (default 200), CONNS (default 10000), SINGLE (0)
source "$(dirname "$0")/lib.sh"
lt_build
CONNS=${CONNS:-10000}
ARGS=(--conns "$CONNS" --rooms $((CONNS / 100)) --publishers $((CONNS / 50)) --rate "${RATE:-200}"
      --duration "${DURATION:-60}" --ramp 1000 --heartbeat-ms 10000 --src-addrs 4)
if [ "${SINGLE:-0}" = 1 ]; then
    lt_services pg
    lt_chatd twonode-single "$PORT_A"
    lt_load twonode_single --url "127.0.0.1:$PORT_A" "${ARGS[@]}" --server-pid "$LT_CHATD_PID"
    lt_plot twonode_single "twonode shape on one node: $CONNS conns, ${RATE:-200} msgs/s"
else
    lt_services redis pg
    lt_chatd twonode-a "$PORT_A"
    PID_A=$LT_CHATD_PID
    lt_chatd twonode-b "$PORT_B"
    PID_B=$LT_CHATD_PID
    lt_load twonode --url "127.0.0.1:$PORT_A,127.0.0.1:$PORT_B" "${ARGS[@]}" --server-pid "$PID_A,$PID_B"
    lt_plot twonode "twonode: $CONNS conns over 2 nodes + Redis, ${RATE:-200} msgs/s"
fi
if [ -f "$RESULTS/twonode.json" ] && [ -f "$RESULTS/twonode_single.json" ]; then
    jq -n --slurpfile t "$RESULTS/twonode.json" --slurpfile s "$RESULTS/twonode_single.json" '{
      two_nodes: {rate: $t[0].config.rate, p50_ms: $t[0].lag_ms.p50, p99_ms: $t[0].lag_ms.p99,
                  cpu_per_delivery_us: $t[0].server.cpu_per_delivery_us, losses: $t[0].deliveries.losses},
      single_node: {rate: $s[0].config.rate, p50_ms: $s[0].lag_ms.p50, p99_ms: $s[0].lag_ms.p99,
                    cpu_per_delivery_us: $s[0].server.cpu_per_delivery_us, losses: $s[0].deliveries.losses},
      added_p50_ms: ($t[0].lag_ms.p50 - $s[0].lag_ms.p50),
      cpu_per_delivery_ratio: ($t[0].server.cpu_per_delivery_us / $s[0].server.cpu_per_delivery_us),
      same_shape: (($t[0].config | del(.url)) == ($s[0].config | del(.url)))}' |
        tee "$RESULTS/twonode_compare.json"
fi
