#!/usr/bin/env bash
# workers: `chatd --workers 2` (two worker processes, one pinned per core)
# versus one chatd process pinned to core 0, at the same per-connection load,
# both on one Redis (the same bus path). Issue 12's figure:
#   1. connections held: CONNS_PER (default 19,000) per process with 10 s
#      heartbeats and a trickle of 1 msg/s per 1,000 connections, held HOLD s
#      (default 30); target: 2 workers hold >= 2 x 19,000;
#   2. deliveries/s: rooms of 100, one publisher per 10 connections, 5,000
#      connections per process; for each setup a search (double, then
#      bisect) for the highest rate whose lag p99 stays <= P99_MS (10 ms);
#      target: 2 workers >= 1.8 x the deliveries/s of one.
# How the generator shares the machine: with one process, chatd is on core 0
# and the generator (chatload) and Redis on core 1, as in every other
# scenario; with two workers, worker i is pinned to core i and the generator
# and Redis float over both cores (there is no third core), so the workers
# lose to them whatever CPU they take. The JSON states both placements and
# each side's CPU so the ratio can be read against it.
# Writes results/workers.json (summary), workers.txt, and per run
# workers_{conns,search}_{single,double}*.json.
# env: CONNS_PER, HOLD, P99_MS, SEARCH_DURATION (15), PARTS ("conns search"),
#      PORT_A (single), PORT_B (shared port of the workers; own ports PORT_B+1, +2)
source "$(dirname "$0")/lib.sh"
lt_build
PER=${CONNS_PER:-19000}
HOLD=${HOLD:-30}
P99_MS=${P99_MS:-10}
SD=${SEARCH_DURATION:-15}
PARTS=${PARTS:-"conns search"}
LOAD_CPU=1
lt_services redis
REDIS_PID=$(cat "$LT_DATA/redis.pid")
SRV_PIDS=""
SUP_PID=""

# single: one chatd on core 0, generator + Redis on core 1
single_start() {
    LOAD_CPU=1
    taskset -a -p -c 1 "$REDIS_PID" >/dev/null
    CHATD_CPU=0 lt_chatd workers-single "$PORT_A"
    SRV_PIDS=$LT_CHATD_PID
    URL=127.0.0.1:$PORT_A
}

# double: chatd --workers 2, worker i on core i; generator + Redis on cores 0-1
double_start() {
    LOAD_CPU=0,1
    taskset -a -p -c 0,1 "$REDIS_PID" >/dev/null
    local log=$RESULTS/workers-double.chatd.log own=$((PORT_B + 1))
    CHAT_LISTEN=127.0.0.1:$PORT_B CHAT_WORKER_PORT=$own CHAT_JWT_SECRET=$SECRET CHAT_NODE_ID=workers \
        CHAT_SCRIPTS=${CHAT_SCRIPTS:-$REPO/scripts} \
        "${LT_SRV_PRIO[@]}" taskset -c 0,1 "$CHATD" --workers 2 >"$log" 2>&1 &
    SUP_PID=$!
    LT_PIDS+=("$SUP_PID")
    local ok=0
    for _ in $(seq 1 150); do
        if curl -fs -o /dev/null "http://127.0.0.1:$own/readyz" &&
           curl -fs -o /dev/null "http://127.0.0.1:$((own + 1))/readyz"; then ok=1; break; fi
        kill -0 "$SUP_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ "$ok" != 1 ]; then echo "chatd --workers 2 did not become ready; log:" >&2; tail -20 "$log" >&2; exit 1; fi
    local w0 w1
    w0=$(grep -oP 'worker w0 started \(pid \K[0-9]+' "$log" | tail -1)
    w1=$(grep -oP 'worker w1 started \(pid \K[0-9]+' "$log" | tail -1)
    taskset -p -c 0 "$w0" >/dev/null
    taskset -p -c 1 "$w1" >/dev/null
    SRV_PIDS=$w0,$w1
    URL=127.0.0.1:$PORT_B
}

server_stop() {
    local p=${SUP_PID:-${SRV_PIDS%%,*}}
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    SUP_PID=""
}

# ---- part 1: connections held
conns_run() {   # name procs
    local name=$1 n=$2
    lt_load "$name" --url "$URL" --conns $((PER * n)) --rooms $((PER * n / 100)) \
        --rate $((PER * n / 1000)) --duration "$HOLD" --ramp $((1000 * n)) --heartbeat-ms 10000 \
        --src-addrs 4 --procs "$n" --room-prefix "c$n" --server-pid "$SRV_PIDS" --quiet
}
if [[ " $PARTS " == *" conns "* ]]; then
    single_start; conns_run workers_conns_single 1; server_stop
    double_start; conns_run workers_conns_double 2; server_stop
fi

# ---- part 2: highest rate within the lag SLO, same per-connection load
probe() {   # name n unit_rate -> "p99 dps limited losses"
    local name=$1 n=$2 u=$3
    lt_load "${name}_probe" --url "$URL" --conns $((5000 * n)) --rooms $((50 * n)) \
        --publishers $((500 * n)) --rate $((u * n)) --duration "$SD" --ramp $((2000 * n)) \
        --heartbeat-ms 10000 --src-addrs 2 --procs "$n" --room-prefix "s$n-$u" \
        --server-pid "$SRV_PIDS" --quiet >/dev/null
    jq -c --argjson u "$u" --argjson n "$n" '{rate_per_5000_conns: $u, rate: ($u * $n),
        p99_ms: .lag_ms.p99, p50_ms: .lag_ms.p50, deliveries_per_s: .deliveries.per_s,
        losses: .deliveries.losses, duplicates: .deliveries.duplicates, held: .connections.held_at_end,
        server_cpu_util: .server.cpu_util, cpu_per_delivery_us: .server.cpu_per_delivery_us,
        generator_cpu_util: .generator.cpu_util, generator_limited: .generator.limited,
        machine: .machine}' "$RESULTS/${name}_probe.json" >>"$RESULTS/$name.jsonl"
    jq -r '"\(.lag_ms.p99) \(.deliveries.per_s) \(.generator.limited) \(.deliveries.losses)"' \
        "$RESULTS/${name}_probe.json"
}
within() { awk -v a="$1" -v b="$P99_MS" 'BEGIN{exit !(a <= b && a > 0)}'; }
search() {   # name n -> results/name.json
    local name=$1 n=$2 good=0 bad=0 u=125 p99 dps lim loss
    : >"$RESULTS/$name.jsonl"
    while :; do
        read -r p99 dps lim loss < <(probe "$name" "$n" "$u")
        echo "$name: $((u * n)) msgs/s -> p99 $p99 ms, $dps deliveries/s, losses $loss, generator-limited $lim"
        if within "$p99"; then good=$u; else bad=$u; break; fi
        [ "$u" -ge 4000 ] && break
        u=$((u * 2))
    done
    if [ "$bad" -gt 0 ]; then
        for _ in 1 2 3 4; do
            [ $((bad - good)) -le 20 ] && break
            u=$(((good + bad) / 2))
            read -r p99 dps lim loss < <(probe "$name" "$n" "$u")
            echo "$name: $((u * n)) msgs/s -> p99 $p99 ms, $dps deliveries/s, losses $loss, generator-limited $lim"
            if within "$p99"; then good=$u; else bad=$u; fi
        done
    fi
    jq -s --argjson good "$good" --argjson n "$n" --argjson slo "$P99_MS" '{p99_slo_ms: $slo,
        processes: $n, conns: (5000 * $n), room_size: 100,
        max_rate_within_slo: ($good * $n), best: (map(select(.rate_per_5000_conns == $good)) | last),
        probes: .}' "$RESULTS/$name.jsonl" >"$RESULTS/$name.json"
    rm -f "$RESULTS/$name.jsonl" "$RESULTS/${name}_probe".*
}
if [[ " $PARTS " == *" search "* ]]; then
    single_start; search workers_search_single 1; server_stop
    double_start; search workers_search_double 2; server_stop
fi

# ---- summary
f() { [ -f "$RESULTS/$1.json" ] && echo "$RESULTS/$1.json" || echo /dev/null; }
jq -n --slurpfile cs "$(f workers_conns_single)" --slurpfile cd "$(f workers_conns_double)" \
      --slurpfile ss "$(f workers_search_single)" --slurpfile sd "$(f workers_search_double)" \
      --argjson per "$PER" '
  def c(x): if x then {held: x.connections.held_at_end, attempted: x.connections.attempted,
      failed: x.connections.failed, closed_by_server: x.connections.closed_by_server,
      server_cpu_util: x.server.cpu_util, rss_per_conn_kib: x.server.rss_per_conn_kib,
      lag_p99_ms: x.lag_ms.p99, machine: x.machine} else null end;
  {
    placement: {
      single: "chatd (1 process) on core 0; chatload and Redis on core 1",
      double: "chatd --workers 2, worker i pinned to core i; chatload and Redis float over cores 0-1 (shared with the workers)"
    },
    conns: {single: c($cs[0]), double: c($cd[0]),
            target_double_held: (2 * $per),
            pass: (($cd[0].connections.held_at_end // 0) >= 2 * $per)},
    throughput: {
      single: ($ss[0] | if . then {max_rate: .max_rate_within_slo, deliveries_per_s: .best.deliveries_per_s,
                 p99_ms: .best.p99_ms, server_cpu_util: .best.server_cpu_util,
                 cpu_per_delivery_us: .best.cpu_per_delivery_us, generator_cpu_util: .best.generator_cpu_util} else null end),
      double: ($sd[0] | if . then {max_rate: .max_rate_within_slo, deliveries_per_s: .best.deliveries_per_s,
                 p99_ms: .best.p99_ms, server_cpu_util: .best.server_cpu_util,
                 cpu_per_delivery_us: .best.cpu_per_delivery_us, generator_cpu_util: .best.generator_cpu_util} else null end),
      ratio: (if ($ss[0].best.deliveries_per_s // 0) > 0 then ($sd[0].best.deliveries_per_s / $ss[0].best.deliveries_per_s) else null end),
      cpu_per_delivery_ratio: (if ($ss[0].best.cpu_per_delivery_us // 0) > 0 then ($sd[0].best.cpu_per_delivery_us / $ss[0].best.cpu_per_delivery_us) else null end),
      target_ratio: 1.8
    }
  } | .throughput.pass = ((.throughput.ratio // 0) >= 1.8)' | tee "$RESULTS/workers.json" >"$RESULTS/workers.txt.tmp"
jq -r '
  "workers: 2 processes (one per core) vs 1 process on 1 core, same per-connection load",
  "placement: single = \(.placement.single); double = \(.placement.double)",
  "connections held: single \(.conns.single.held // "-"), double \(.conns.double.held // "-") (target >= \(.conns.target_double_held)): \(if .conns.pass then "pass" else "MISS" end)",
  "  machine (other CPU / server run-queue wait): single \(.conns.single.machine.other_cpu_util // "-") / \(.conns.single.machine.server_runq_wait_ms // "-") ms, double \(.conns.double.machine.other_cpu_util // "-") / \(.conns.double.machine.server_runq_wait_ms // "-") ms",
  "deliveries/s within p99 <= SLO: single \(.throughput.single.deliveries_per_s // "-") (rate \(.throughput.single.max_rate // "-")), double \(.throughput.double.deliveries_per_s // "-") (rate \(.throughput.double.max_rate // "-")); ratio \(.throughput.ratio // "-") (target >= 1.8): \(if .throughput.pass then "pass" else "MISS" end)",
  "  server CPU per delivery: single \(.throughput.single.cpu_per_delivery_us // "-") us, double \(.throughput.double.cpu_per_delivery_us // "-") us; generator CPU: single \(.throughput.single.generator_cpu_util // "-"), double \(.throughput.double.generator_cpu_util // "-") of a core"
' "$RESULTS/workers.json" | tee "$RESULTS/workers.txt"
rm -f "$RESULTS/workers.txt.tmp"
