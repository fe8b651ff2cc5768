#!/usr/bin/env bash
# Shared plumbing of the load scenarios (source it): build the tools, start
# Redis/Postgres (tools/services.sh) and chatd pinned to core 0, run chatload
# pinned to core 1, plot the timeline to SVG, and stop everything this script
# started (by PID) on exit.
set -euo pipefail
LT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO=$(cd "$LT_DIR/.." && pwd)
RESULTS=${RESULTS:-$LT_DIR/results}
CHATD=${CHATD:-$REPO/build/chatd}
SECRET=${SECRET:-loadtest-secret-0123456789abcdef0123456789}
CHATD_CPU=${CHATD_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
LT_NICE=${LT_NICE:-0}   # e.g. -10 to shield the measurement from other load (root only)
# PERF_DELAY=S [PERF_SECS=10]: `perf record -g` each chatd S seconds after its start -> results/NAME.perf.data
LT_RT=${LT_RT:-0}       # 1: chatd (and Redis) SCHED_RR, the generator SCHED_FIFO: shields the
                        # measurement from other load on a shared machine, starves that load
LT_PRIO=(nice -n "$LT_NICE")
LT_SRV_PRIO=(nice -n "$LT_NICE")
if [ "$LT_RT" = 1 ]; then LT_PRIO=(chrt -f 1); LT_SRV_PRIO=(chrt -r 1); fi
PORT_A=${PORT_A:-17601}
PORT_B=${PORT_B:-17602}
REDIS_PORT=${REDIS_PORT:-17610}
PG_PORT=${PG_PORT:-17611}
LT_DATA=${LT_DATA:-/tmp/chatd-loadtest-$$}
# thousands of load connections come from a few loopback addresses: no
# per-IP limit (CHAT_MAX_CONNS_PER_IP, default 1000) for any chatd a
# scenario starts, unless asked
export CHAT_MAX_CONNS_PER_IP=${CHAT_MAX_CONNS_PER_IP:-0}
LOAD=$LT_DIR/bin/chatload
LT_PIDS=()
LT_SERVICES=0
mkdir -p "$RESULTS"

# shellcheck source=/dev/null
source "$REPO/tools/services.sh"

lt_cleanup() {
    set +e
    local p
    for p in "${LT_PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${LT_PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$p" 2>/dev/null || true
    done
    if [ "$LT_SERVICES" = 1 ]; then
        # services.sh records the runuser wrapper's pid; stop the postmaster itself
        # (fast shutdown) so that no Postgres outlives its deleted data folder
        if [ -f "$LT_DATA/pg/postmaster.pid" ]; then
            p=$(head -1 "$LT_DATA/pg/postmaster.pid")
            kill -INT "$p" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
        fi
        services_stop "$LT_DATA"
    fi
    rm -rf "$LT_DATA"
}
trap lt_cleanup EXIT

lt_build() {
    "$LT_DIR/build.sh"
    [ -x "$CHATD" ] || { echo "no chatd binary at $CHATD (cmake --build $REPO/build)" >&2; exit 2; }
    ulimit -n "$(ulimit -Hn)"
}

# lt_pin_postgres DIR: the postmaster of DIR (services.sh) and its children on
# LOAD_CPU (postgres.pid is runuser's wrapper: pinning it does not pin Postgres);
# later backends inherit the postmaster's affinity
lt_pin_postgres() {
    local pm p
    pm=$(head -1 "$(cat "$1/postgres.datadir")/postmaster.pid")
    for p in "$pm" $(pgrep -P "$pm"); do taskset -a -p -c "$LOAD_CPU" "$p" >/dev/null; done
}

# lt_redis_url DIR / lt_pg_url DIR: how chatd reaches the Redis / Postgres that
# tools/services.sh started in DIR: TCP, or with LT_UNIX=1 their unix sockets
# (what ./run.sh does; docs/cost.md section 20)
lt_redis_url() {
    local u=""
    [ "${LT_UNIX:-0}" = 1 ] && u=$(services_redis_unix_url "$1")
    echo "${u:-redis://127.0.0.1:$REDIS_PORT}"
}
lt_pg_url() {
    local u=""
    [ "${LT_UNIX:-0}" = 1 ] && u=$(services_pg_unix_conninfo "$1" "$PG_PORT")
    echo "${u:-host=127.0.0.1 port=$PG_PORT user=postgres dbname=chatd}"
}

# lt_services [redis] [pg]: start the ones named, pinned next to the generator
lt_services() {
    mkdir -p "$LT_DATA"
    LT_SERVICES=1
    local s
    for s in "$@"; do
        case $s in
        redis)
            services_start_redis "$LT_DATA" "$REDIS_PORT"
            taskset -a -p -c "$LOAD_CPU" "$(cat "$LT_DATA/redis.pid")" >/dev/null
            if [ "$LT_RT" = 1 ]; then chrt -a -r -p 1 "$(cat "$LT_DATA/redis.pid")" >/dev/null; fi
            export CHAT_REDIS_URL
            CHAT_REDIS_URL=$(lt_redis_url "$LT_DATA") ;;
        pg)
            services_start_postgres "$LT_DATA" "$PG_PORT"
            lt_pin_postgres "$LT_DATA"
            export CHAT_DATABASE_URL
            CHAT_DATABASE_URL=$(lt_pg_url "$LT_DATA") ;;
        esac
    done
}

# lt_pg_preinit DIR LIB...: initdb DIR/pg (where services_start_postgres looks)
# with the given shared_preload_libraries (e.g. pg_stat_statements); call it
# before lt_services pg, which then skips its own initdb
lt_pg_preinit() {
    local dir=$1 pgdir=$1/pg libs
    shift
    libs=$(IFS=,; echo "$*")
    mkdir -p "$pgdir"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$pgdir"; chmod 700 "$pgdir"; fi
    _pg_as "$PGBIN/initdb" -D "$pgdir" -U postgres -A trust -E UTF8 >"$dir/initdb.log" 2>&1 ||
        { echo "initdb failed (see $dir/initdb.log)" >&2; return 1; }
    echo "shared_preload_libraries = '$libs'" >>"$pgdir/postgresql.conf"
}

# lt_chatd NAME PORT: start chatd pinned to CHATD_CPU, wait for /readyz; pid in LT_CHATD_PID
lt_chatd() {
    local name=$1 port=$2
    if [[ $CHATD == *.py ]]; then   # the mock server, to test the scenarios themselves
        taskset -c "$CHATD_CPU" /usr/bin/python3 "$CHATD" "$port" "$SECRET" >"$RESULTS/$name.chatd.log" 2>&1 &
    else
        CHAT_LISTEN=127.0.0.1:$port CHAT_JWT_SECRET=$SECRET CHAT_NODE_ID=$name \
            CHAT_SCRIPTS=${CHAT_SCRIPTS:-$REPO/scripts} \
            "${LT_SRV_PRIO[@]}" taskset -c "$CHATD_CPU" "$CHATD" >"$RESULTS/$name.chatd.log" 2>&1 &
    fi
    LT_CHATD_PID=$!
    LT_PIDS+=("$LT_CHATD_PID")
    if [ -n "${PERF_DELAY:-}" ]; then   # profile this node: perf record -g after PERF_DELAY s
        (sleep "$PERF_DELAY"; perf record -q -g -o "$RESULTS/$name.perf.data" -p "$LT_CHATD_PID" \
            -- sleep "${PERF_SECS:-10}" >/dev/null 2>&1) &
        LT_PIDS+=("$!")
    fi
    # /readyz: Redis and Postgres (when configured) answer, so the load does not
    # start while the first rooms' heads cannot be read; the mock has /healthz only
    local probe=/readyz
    [[ $CHATD == *.py ]] && probe=/healthz
    for _ in $(seq 1 300); do
        if curl -fs -o /dev/null "http://127.0.0.1:$port$probe"; then return 0; fi
        kill -0 "$LT_CHATD_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "chatd $name did not become ready ($probe) on port $port; log:" >&2
    tail -20 "$RESULTS/$name.chatd.log" >&2
    exit 1
}

# lt_load NAME chatload-args...: run the generator pinned to LOAD_CPU
lt_load() {
    local name=$1
    shift
    "${LT_PRIO[@]}" taskset -c "$LOAD_CPU" "$LOAD" --secret "$SECRET" --json "$RESULTS/$name.json" \
        --timeline "$RESULTS/$name.timeline" "$@" | tee "$RESULTS/$name.txt"
}

# lt_plot NAME TITLE: SVG of connections, deliveries/s and lag p50/p99 over time
lt_plot() {
    local name=$1 title=$2 tl="$RESULTS/$1.timeline"
    gnuplot <<GP
set terminal svg size 960,640 dynamic font "sans,11" background rgb "white"
set output "$RESULTS/$name.svg"
set multiplot layout 2,1 title "$title"
set grid
set key top left
set xlabel "time (s)"
set ylabel "connections"
set y2label "deliveries/s"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
plot "$tl" using 1:2 with lines lw 2 title "connections", \
     "$tl" using 1:3 axes x1y2 with lines lw 2 title "deliveries/s"
unset y2label
unset y2tics
set ylabel "broadcast lag (ms)"
set logscale y
set yrange [*:*]
plot "$tl" using 1:(\$4>0?\$4:1/0) with lines lw 2 title "lag p50", \
     "$tl" using 1:(\$5>0?\$5:1/0) with lines lw 2 title "lag p99"
unset multiplot
GP
    echo "wrote $RESULTS/$name.json and $RESULTS/$name.svg"
}
