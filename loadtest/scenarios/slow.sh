#!/usr/bin/env bash
# slow: one client stops reading. Runs the same load twice, without and with the
# slow consumer (200 conns, 2 rooms of 100, 200 msgs/s of 4 KiB bodies), and
# compares the other clients' lag p99; the slow one must be closed with 1008
# while nobody else is slowed. Writes results/slow_baseline.json, results/slow.json
# (+ .svg) and results/slow_compare.json.
# env: DURATION (default 40: the server's socket buffer (up to 4 MiB) + queue must fill first)
source "$(dirname "$0")/lib.sh"
lt_build
lt_services pg
lt_chatd slow "$PORT_A"
ARGS=(--url "127.0.0.1:$PORT_A" --conns 200 --rooms 2 --publishers 20 --rate 200 --body-bytes 4000
      --duration "${DURATION:-40}" --heartbeat-ms 10000 --server-pid "$LT_CHATD_PID")
lt_load slow_baseline "${ARGS[@]}"
lt_load slow "${ARGS[@]}" --slow 1 --drain 3
lt_plot slow "slow: 200 conns, 1 slow consumer, 200 msgs/s x 4 KiB"
jq -n --slurpfile a "$RESULTS/slow_baseline.json" --slurpfile b "$RESULTS/slow.json" '{
  p99_ms_without_slow: $a[0].lag_ms.p99, p99_ms_with_slow: $b[0].lag_ms.p99,
  p999_ms_without_slow: $a[0].lag_ms.p999, p999_ms_with_slow: $b[0].lag_ms.p999,
  slow_closed_by_server: $b[0].slow.closed_by_server,
  close_codes: $b[0].connections.close_codes,
  losses_with_slow: $b[0].deliveries.losses }' | tee "$RESULTS/slow_compare.json"
