#!/usr/bin/env bash
# cluster: Redis CPU per published message, one Redis versus a 3-master Redis
# Cluster (issue 12's "per-shard Redis CPU per published message" figure).
# The same publish load (chatload: CONNS connections in ROOMS rooms, RATE msgs/s
# for DURATION s, members spread over NODES chatd nodes, Postgres history) runs
#   1. against one Redis (tools/services.sh), CHAT_REDIS_URL=redis://...
#   2. against the local cluster of tests/cluster/rig.py (3 masters + 3
#      replicas), each chatd node seeded with a different master,
#      CHAT_REDIS_URL=redis+cluster://...
# Every Redis' `INFO cpu` (used_cpu_sys + used_cpu_user) is sampled every
# 0.2 s (redis_cpu.py) through an idle baseline (chatd nodes connected, no
# client, IDLE_S s) and the chatload run; the CPU each Redis used in the
# steady phase (the seconds in which chatload sent messages: no connection
# ramp, no close; heartbeats of the held connections included, CONNS/10 per
# second), minus its idle rate, divided by the acked messages, is printed per
# Redis (masters = shards, and replicas) in µs per published message, and
# for a master also per message of its own rooms (us_per_own_msg) ->
# results/cluster_single.*, results/cluster_cluster.*, cluster_redis_cpu.json.
# Redis (and the cluster) run pinned next to the generator (LOAD_CPU), chatd
# on CHATD_CPU, as the other scenarios.
# The cluster run needs a chatd with cluster mode (issue 12); until then it
# stops with "chatd has no Redis Cluster mode" and exit 2 (MODE=single works).
# env: MODE=both|single|cluster (both), DURATION (20), RATE (500), CONNS (200),
#      ROOMS (20), PUBLISHERS (RATE/10, at least ROOMS), NODES (2), IDLE_S (5),
#      CLUSTER_PORT_LO/HI (17620/17659), PORT_C/PORT_D (3rd/4th node: 17603/17604),
#      NODE_TIMEOUT_MS (cluster-node-timeout of the rig, 15000 as Redis' default:
#      the rig's test default of 1000 ms lets a loaded 2-core machine see
#      false failovers mid-run)
source "$(dirname "$0")/lib.sh"
MODE=${MODE:-both}
DURATION=${DURATION:-20}
RATE=${RATE:-500}
CONNS=${CONNS:-200}
ROOMS=${ROOMS:-20}
NODES=${NODES:-2}
IDLE_S=${IDLE_S:-5}
CLUSTER_PORT_LO=${CLUSTER_PORT_LO:-17620}
CLUSTER_PORT_HI=${CLUSTER_PORT_HI:-17659}
PUBLISHERS=${PUBLISHERS:-$((RATE / 10 > ROOMS ? RATE / 10 : ROOMS))}   # <= 10 msgs/s each (policy: 20)
[ "$PUBLISHERS" -le "$CONNS" ] || PUBLISHERS=$CONNS
HERE=$(cd "$(dirname "$0")" && pwd)
RIG=(/usr/bin/python3 "$REPO/tests/cluster/rig.py")
RIG_DIR=$LT_DATA/rediscluster
NODE_PORTS=("$PORT_A" "$PORT_B" "${PORT_C:-17603}" "${PORT_D:-17604}")
[ "$NODES" -ge 1 ] && [ "$NODES" -le 4 ] || { echo "NODES must be 1..4" >&2; exit 2; }
case $MODE in both|single|cluster) ;; *) echo "MODE must be both, single or cluster" >&2; exit 2 ;; esac

cluster_cleanup() {
    set +e
    [ -f "$RIG_DIR/rig.json" ] && "${RIG[@]}" stop --dir "$RIG_DIR" >/dev/null
    lt_cleanup
}
trap cluster_cleanup EXIT

# stop_nodes: the chatd nodes of one run, by PID (and forget them)
NODE_PIDS=()
stop_nodes() {
    local p keep=() q
    for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${NODE_PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$p" 2>/dev/null || true
    done
    for q in "${LT_PIDS[@]}"; do
        [[ " ${NODE_PIDS[*]} " == *" $q "* ]] || keep+=("$q")
    done
    LT_PIDS=("${keep[@]+"${keep[@]}"}")
    NODE_PIDS=()
}

# start_nodes NAME URL...: chatd node i with CHAT_REDIS_URL=URL[i], ready (/readyz 200)
start_nodes() {
    local name=$1 i=0 url log
    shift
    for url in "$@"; do
        log="$RESULTS/${name}-n$i.chatd.log"
        if ! CHAT_REDIS_URL=$url lt_chatd "${name}-n$i" "${NODE_PORTS[$i]}"; then
            return 1
        fi
        NODE_PIDS+=("$LT_CHATD_PID")
        for _ in $(seq 1 200); do
            curl -fs -o /dev/null "http://127.0.0.1:${NODE_PORTS[$i]}/readyz" && break
            sleep 0.1
        done
        curl -fs -o /dev/null "http://127.0.0.1:${NODE_PORTS[$i]}/readyz" ||
            { echo "chatd ${name}-n$i not ready (/readyz); log:" >&2; tail -5 "$log" >&2; return 1; }
        i=$((i + 1))
    done
}

urls_of_nodes() {   # NODES comma separated host:port
    local i out=()
    for ((i = 0; i < NODES; i++)); do out+=("127.0.0.1:${NODE_PORTS[$i]}"); done
    (IFS=,; echo "${out[*]}")
}

# measure NAME "PORT:ROLE ...": Redis CPU sampled (redis_cpu.py) through an idle
# baseline and a chatload run; per-Redis figures -> results/NAME.redis.json
measure() {
    local name=$1 redis=$2 ports=() pr samples t_i0 t_i1 t0 sampler
    for pr in $redis; do ports+=("${pr%%:*}"); done
    samples="$LT_DATA/$name.cpu"
    : >"$samples"
    /usr/bin/python3 "$HERE/redis_cpu.py" sample "$samples" "${ports[@]}" &
    sampler=$!
    LT_PIDS+=("$sampler")
    sleep 0.5
    t_i0=$(date +%s.%N)
    sleep "$IDLE_S"
    t_i1=$(date +%s.%N)
    t0=$(date +%s.%N)
    lt_load "$name" --url "$(urls_of_nodes)" --conns "$CONNS" --rooms "$ROOMS" \
        --publishers "$PUBLISHERS" --rate "$RATE" --duration "$DURATION" --ramp 2000 \
        --heartbeat-ms 10000 --room-prefix "$name" \
        --server-pid "$(IFS=,; echo "${NODE_PIDS[*]}")" >/dev/null
    sleep 0.5
    kill "$sampler"
    wait "$sampler" 2>/dev/null || true
    # shellcheck disable=SC2086
    /usr/bin/python3 "$HERE/redis_cpu.py" report "$samples" "$RESULTS/$name.timeline" \
        "$RESULTS/$name.json" "$t0" "$t_i0" "$t_i1" "$name:$ROOMS:$PUBLISHERS" $redis \
        >"$RESULTS/$name.redis.json" \
        2>"$LT_DATA/$name.report" || { cat "$LT_DATA/$name.report" >&2; exit 1; }
    sed "s/^/$name: /" "$LT_DATA/$name.report" | tee "$RESULTS/$name.redis.txt"
    local errs
    errs=$(jq '.messages.errors' "$RESULTS/$name.json")
    [ "$errs" = 0 ] || echo "$name: WARNING: $errs error answers ($(jq -c '.messages.error_codes' "$RESULTS/$name.json"))"
}

lt_build
lt_services pg

if [ "$MODE" != cluster ]; then
    echo "== single Redis: $NODES chatd nodes, $CONNS conns, $ROOMS rooms, $RATE msgs/s, ${DURATION}s"
    lt_services redis
    urls=()
    for ((i = 0; i < NODES; i++)); do urls+=("redis://127.0.0.1:$REDIS_PORT"); done
    start_nodes cluster_single "${urls[@]}"
    measure cluster_single "$REDIS_PORT:single"
    stop_nodes
fi

if [ "$MODE" != single ]; then
    echo "== Redis Cluster (3 masters + 3 replicas): $NODES chatd nodes, same load"
    "${RIG[@]}" start --dir "$RIG_DIR" --port-lo "$CLUSTER_PORT_LO" --port-hi "$CLUSTER_PORT_HI" \
        --node-timeout "${NODE_TIMEOUT_MS:-15000}" >"$RESULTS/cluster_rig.txt" || { cat "$RESULTS/cluster_rig.txt"; exit 1; }
    nodes=$("${RIG[@]}" nodes --dir "$RIG_DIR")
    for pid in $(awk '{print $3}' <<<"$nodes"); do
        taskset -a -p -c "$LOAD_CPU" "$pid" >/dev/null
        if [ "$LT_RT" = 1 ]; then chrt -a -r -p 1 "$pid" >/dev/null; fi
    done
    mapfile -t masters < <(awk '$2=="master"{print $1}' <<<"$nodes")
    urls=()
    for ((i = 0; i < NODES; i++)); do urls+=("redis+cluster://127.0.0.1:${masters[$((i % ${#masters[@]}))]}"); done
    # chatd without cluster mode refuses the URL at start: say so plainly
    probe_log="$RESULTS/cluster_probe.chatd.log"
    CHAT_LISTEN=127.0.0.1:${NODE_PORTS[0]} CHAT_JWT_SECRET=$SECRET CHAT_SCRIPTS=${CHAT_SCRIPTS:-$REPO/scripts} \
        CHAT_REDIS_URL=${urls[0]} timeout 3 "$CHATD" >"$probe_log" 2>&1 &
    probe=$!
    rc=0
    wait "$probe" || rc=$?
    if [ "$rc" != 124 ] && grep -qiE "must start with redis://|(unsupported|unknown|invalid).{0,40}(scheme|redis\+cluster)" "$probe_log"; then
        echo "chatd has no Redis Cluster mode (issue 12 not merged in $CHATD): $(grep -iE 'redis' "$probe_log" | tail -1)" >&2
        exit 2
    fi
    start_nodes cluster_cluster "${urls[@]}" || exit 1
    measure cluster_cluster "$(awk '{printf "%s:%s ", $1, $2}' <<<"$nodes")"
    stop_nodes
fi

if [ -f "$RESULTS/cluster_single.redis.json" ] && [ -f "$RESULTS/cluster_cluster.redis.json" ]; then
    jq -n --slurpfile s "$RESULTS/cluster_single.redis.json" --slurpfile c "$RESULTS/cluster_cluster.redis.json" \
        --argjson rate "$RATE" --argjson conns "$CONNS" --argjson rooms "$ROOMS" --argjson nodes "$NODES" '
      ($c[0] | map(select(.role == "master"))) as $m |
      ($c[0] | map(select(.role == "replica"))) as $r |
      {load: {rate: $rate, conns: $conns, rooms: $rooms, chatd_nodes: $nodes},
       single_us_per_msg: $s[0][0].us_per_msg,
       cluster_masters: ($m | map({port, us_per_msg, share, us_per_own_msg, load_cpu_s})),
       cluster_replicas: ($r | map({port, us_per_msg, load_cpu_s})),
       cluster_master_sum_us_per_msg: ($m | map(.us_per_msg) | add),
       cluster_all_sum_us_per_msg: ($c[0] | map(.us_per_msg) | add),
       per_shard_vs_single: (($m | map(.us_per_msg) | add) / ($m | length) / $s[0][0].us_per_msg),
       own_msg_vs_single: (($m | map(.us_per_own_msg) | add) / ($m | length) / $s[0][0].us_per_msg)}' |
        tee "$RESULTS/cluster_redis_cpu.json"
fi
