#!/usr/bin/env bash
# vs_nchan: issue 15's side-by-side, in ONE run: chatd (+ Redis + Postgres) and
# nginx + Nchan (Debian's libnginx-mod-nchan) + Redis (Nchan's Redis mode, no
# durability) under the same generator load, one after the other, for
#   dm        2,000 conns in rooms of 2, every connection talks, 1,000 msgs/s
#   rooms100  5,000 conns in 50 rooms of 100, 500 publishers, 300 msgs/s = 30k deliveries/s
# and prints every ratio of the issue's goals from this run: system CPU per
# message (dm) and per delivery (rooms100), the server process alone (chatd vs
# the nginx worker + master), RSS per connection, lag, loss.
#
# Same load on both: the same connections, rooms, publishers, rate, schedule
# and client frames. Each client opens one WebSocket to its room (chatd:
# /ws/{room}?token=..., Nchan: an `nchan_pubsub websocket` location /ps/{room},
# channel = room) and publishes by sending the SAME text frame on it
# ({"type":"message","body":"lt1 ... x..","id":".."}, --body-bytes 80): Nchan
# publishes a text frame received on a pubsub WebSocket verbatim to the
# channel, and echoes it to the sender too, as chatd does. Publishing by
# WebSocket rather than HTTP POST keeps the shape identical (one frame in on a
# connection that is already open, no request parsing or connection per
# message); a POST per message would charge Nchan for HTTP that chatd does not
# pay. Differences that remain, by design of the two products: chatd answers
# every message with an `ack` after the Postgres commit and wraps the body in
# its envelope (room, seq, user, name, ts: ~230 bytes delivered vs Nchan's
# ~150 verbatim); chatd's keepalive is its `heartbeat` frame (presence), Nchan's
# a WebSocket ping, both every HEARTBEAT_MS (10 s). Nchan runs with
# `nchan_subscriber_first_message newest` (no replay to a new subscriber, like
# a chatd join without `since`), in both of its Redis storage modes, each its
# own run: `nchan` = `distributed` (the default: Redis holds each channel's
# message buffer, 2 scripts and ~20 Redis commands per message) and
# `nchan_nostore` = `nostore` (Redis is only the pub/sub bus: one script in a
# MULTI/EXEC per message). The goals are judged against the cheaper of the two
# (nostore, the stricter bar); the ratios to both are printed.
#
# Placement as in every scenario: the server (chatd / nginx master + 1 worker)
# pinned to core 0, the generator, Redis and Postgres on core 1 (LT_RT=1: the
# servers and Redis SCHED_RR, the generator SCHED_FIFO).
# Writes results/vs_nchan_<scenario>_<server>.{json,txt,timeline} (server: chatd, nchan, nchan_nostore),
# results/vs_nchan.json (all ratios), vs_nchan.txt (the table) and vs_nchan.svg.
# BASE_CHATD=<binary>: also runs that chatd (e.g. a build from before a change)
# under the same load, first in each scenario (vs_nchan_<scenario>_chatd_base.*),
# and prints the ratios chatd / chatd_base: a change's before/after in the
# same run as Nchan.
# env: DURATION (60), SCENARIOS ("dm rooms100"), HEARTBEAT_MS (10000), NGINX_PORT (17612), BASE_CHATD,
#      DM_RATE (1000), R100_RATE (300), SUMMARY_ONLY (0), LT_UNIX (0; 1: chatd reaches Redis and
#      Postgres over their unix sockets, as ./run.sh does; Nchan cannot: its nchan_redis_server
#      takes TCP only, a unix path aborts its worker), ONLY ("chatd ...": just those runs, no table), and lib.sh's (CHATD, LT_RT, PORT_A, REDIS_PORT, PG_PORT...)
source "$(dirname "$0")/lib.sh"
lt_build
DURATION=${DURATION:-60}
SCENARIOS=${SCENARIOS:-"dm rooms100"}
HEARTBEAT_MS=${HEARTBEAT_MS:-10000}
NGINX_PORT=${NGINX_PORT:-17612}
NCHAN_SO=${NCHAN_SO:-/usr/lib/nginx/modules/ngx_nchan_module.so}
if ! command -v nginx >/dev/null || [ ! -f "$NCHAN_SO" ]; then
    echo "vs_nchan: needs nginx and Nchan: tools/deps.sh --bench (apt-get install nginx libnginx-mod-nchan)" >&2
    exit 2
fi
mkdir -p "$LT_DATA"
STACK_PIDS=()
STACK_DIRS=()

stack_down() {   # stops what the last stack_up_* started (by pid)
    set +e
    local p d
    for p in "${STACK_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${STACK_PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$p" 2>/dev/null
    done
    for d in "${STACK_DIRS[@]}"; do services_stop "$d"; done
    STACK_PIDS=()
    STACK_DIRS=()
    set -e
}
trap 'stack_down; lt_cleanup' EXIT

redis_up() {   # redis_up DIR: Redis on REDIS_PORT, pinned and prioritised like lt_services
    services_start_redis "$1" "$REDIS_PORT"
    STACK_DIRS+=("$1")
    REDIS_PID=$(cat "$1/redis.pid")
    taskset -a -p -c "$LOAD_CPU" "$REDIS_PID" >/dev/null
    if [ "$LT_RT" = 1 ]; then chrt -a -r -p 1 "$REDIS_PID" >/dev/null; fi
}

stack_up_chatd() {   # stack_up_chatd NAME: Redis + Postgres + chatd
    local dir=$LT_DATA/$1
    mkdir -p "$dir"
    redis_up "$dir"
    services_start_postgres "$dir" "$PG_PORT"
    lt_pin_postgres "$dir"
    PG_PID=$(head -1 "$(cat "$dir/postgres.datadir")/postmaster.pid")
    CHAT_REDIS_URL=$(lt_redis_url "$dir") CHAT_DATABASE_URL=$(lt_pg_url "$dir") lt_chatd "$1" "$PORT_A"
    STACK_PIDS+=("$LT_CHATD_PID")
    SERVER_PID=$LT_CHATD_PID
    URL=127.0.0.1:$PORT_A
    PROTO=(--proc "chatd=$LT_CHATD_PID" --proc "redis=$REDIS_PID" --proc "postgres=$PG_PID")
}

stack_up_nchan_nostore() { NCHAN_STORAGE=nostore stack_up_nchan "$1"; }
stack_up_chatd_base() { CHATD=$BASE_CHATD LT_UNIX=${BASE_UNIX:-0} stack_up_chatd "$1"; }   # TCP unless BASE_UNIX=1

stack_up_nchan() {   # stack_up_nchan NAME: Redis + nginx with Nchan in Redis mode (NCHAN_STORAGE)
    local dir=$LT_DATA/$1
    mkdir -p "$dir/tmp"
    redis_up "$dir"
    cat >"$dir/nginx.conf" <<EOF
# generated by loadtest/scenarios/vs_nchan.sh
load_module $NCHAN_SO;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http {
    access_log off;
    client_body_temp_path $dir/tmp;
    upstream chat_redis { nchan_redis_server redis://127.0.0.1:$REDIS_PORT; }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location = /healthz { return 200 "ok\n"; }
        location ~ ^/ps/(\w+)$ {
            nchan_pubsub websocket;
            nchan_channel_id \$1;
            nchan_redis_pass chat_redis;
            nchan_subscriber_first_message newest;
            nchan_redis_storage_mode ${NCHAN_STORAGE:-distributed};
        }
    }
}
EOF
    "${LT_SRV_PRIO[@]}" taskset -c "$CHATD_CPU" nginx -c "$dir/nginx.conf" -p "$dir" -g "daemon off;" \
        >"$RESULTS/$1.nginx.log" 2>&1 &
    local master=$!
    STACK_PIDS+=("$master")
    LT_PIDS+=("$master")
    for _ in $(seq 1 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$NGINX_PORT/healthz" && break
        kill -0 "$master" 2>/dev/null || { cat "$RESULTS/$1.nginx.log" "$dir/error.log" >&2; exit 1; }
        sleep 0.1
    done
    sleep 0.5   # Nchan connects to Redis
    SERVER_PID=$(pgrep -P "$master" | head -1)   # the worker: RSS per connection
    URL=127.0.0.1:$NGINX_PORT
    PROTO=(--proto nchan --proc "nginx=$master" --proc "redis=$REDIS_PID")
}

run_one() {   # run_one SCENARIO SERVER
    local sc=$1 srv=$2 name=vs_nchan_$1_$2 args
    case $sc in
    dm) args=(--conns 2000 --rooms 1000 --publishers 2000 --rate "${DM_RATE:-1000}") ;;
    rooms100) args=(--conns 5000 --rooms 50 --publishers 500 --rate "${R100_RATE:-300}") ;;
    *) echo "vs_nchan: unknown scenario $sc" >&2; exit 2 ;;
    esac
    echo "== $(date -u +%H:%M:%S) $name" >&2
    "stack_up_$srv" "$name"
    lt_load "$name" --url "$URL" "${args[@]}" --duration "$DURATION" --ramp 2000 \
        --heartbeat-ms "$HEARTBEAT_MS" --src-addrs 2 --body-bytes 80 --server-pid "$SERVER_PID" "${PROTO[@]}"
    stack_down
}

SERVERS=(chatd nchan nchan_nostore)
[ -n "${BASE_CHATD:-}" ] && SERVERS=(chatd_base chatd nchan nchan_nostore)
if [ -n "${ONLY:-}" ]; then   # ONLY="chatd": run those servers, no ratio table (profiling, e.g. with PERF_DELAY)
    read -r -a SERVERS <<<"$ONLY"
    for sc in $SCENARIOS; do for srv in "${SERVERS[@]}"; do run_one "$sc" "$srv"; done; done
    exit 0
fi
if [ "${SUMMARY_ONLY:-0}" != 1 ]; then   # SUMMARY_ONLY=1: only redo the tables from the result files
    for sc in $SCENARIOS; do
        for srv in "${SERVERS[@]}"; do run_one "$sc" "$srv"; done
    done
fi

# every ratio of the issue, from this run
args=()
for sc in $SCENARIOS; do
    for srv in "${SERVERS[@]}"; do args+=(--slurpfile "${sc}_$srv" "$RESULTS/vs_nchan_${sc}_$srv.json"); done
done
jq -n "${args[@]}" --arg scs "$SCENARIOS" '
  def procs(r): [r.processes[] | {(.name): {us_per_message, us_per_delivery, cpu_util, rss_per_conn_kib}}] | add;
  def row(r): {conns: r.config.conns, rooms: r.config.rooms, rate: r.config.rate,
               messages: r.messages.sent, acks: r.messages.acks, deliveries_per_s: r.deliveries.per_s,
               losses: r.deliveries.losses, duplicates: r.deliveries.duplicates, reorders: r.deliveries.reorders,
               lag_ms: (r.lag_ms | {p50, p99, p999}),
               system_us_per_message: r.system.us_per_message, system_us_per_delivery: r.system.us_per_delivery,
               processes: procs(r), server_rss_per_conn_kib: r.server.rss_per_conn_kib,
               machine: r.machine, generator_limited: r.generator.limited};
  def server(r): (r.processes[] | select(.name == "chatd" or .name == "nginx"));
  $ARGS.named as $a |
  def ratios(c; n): {system_per_message: (c.system.us_per_message / n.system.us_per_message),
               system_per_delivery: (c.system.us_per_delivery / n.system.us_per_delivery),
               server_process_per_delivery: (server(c).us_per_delivery / server(n).us_per_delivery),
               rss_per_conn: (c.server.rss_per_conn_kib / n.server.rss_per_conn_kib)};
  [$scs | split(" ")[] | select(length > 0)] | map(. as $s | $a[$s + "_chatd"][0] as $c |
    $a[$s + "_nchan"][0] as $n | $a[$s + "_nchan_nostore"][0] as $o |
    ($a[$s + "_chatd_base"] // [null])[0] as $b |
    {(.): ({chatd: row($c), nchan: row($n), nchan_nostore: row($o),
      ratios_to_nchan: ratios($c; $n), ratios_to_nchan_nostore: ratios($c; $o)} +
     (if $b then {chatd_base: row($b), ratios_to_chatd_base: (ratios($c; $b) + {
        chatd_per_message: (server($c).us_per_message / server($b).us_per_message),
        redis_per_message: ([$c.processes[] | select(.name == "redis") | .us_per_message][0] /
                            [$b.processes[] | select(.name == "redis") | .us_per_message][0]),
        postgres_per_message: ([$c.processes[] | select(.name == "postgres") | .us_per_message][0] /
                               [$b.processes[] | select(.name == "postgres") | .us_per_message][0])})}
      else {} end) + {
      goals: (if $s == "dm" then
                {system_us_per_message_le_nchan_nostore: ($c.system.us_per_message <= $o.system.us_per_message)}
              else
                {system_per_delivery_le_nchan_nostore: ($c.system.us_per_delivery <= $o.system.us_per_delivery),
                 chatd_process_le_0_8_nginx_nostore: (server($c).us_per_delivery <= 0.8 * server($o).us_per_delivery)}
              end)})}) | add' >"$RESULTS/vs_nchan.json"

# the table
{
    echo "vs_nchan: $(date -u +%Y-%m-%dT%H:%MZ), ${DURATION}s steady each, LT_RT=$LT_RT; server on core $CHATD_CPU, generator + Redis + Postgres on core $LOAD_CPU"
    jq -r 'to_entries[] | .key as $s | .value as $v |
      def f(x): if x == null then "-" elif (x | type) == "number" then (x * 100 | round / 100 | tostring) else (x | tostring) end;
      def procline(p): [p | to_entries[] | "\(.key) \(f(.value.us_per_message)) us/msg \(f(.value.us_per_delivery)) us/del"] | join(", ");
      "",
      "== \($s): \($v.chatd.conns) conns, \($v.chatd.rooms) rooms, \($v.chatd.rate) msgs/s",
      "  chatd+Redis+PG          system \(f($v.chatd.system_us_per_message)) us/msg, \(f($v.chatd.system_us_per_delivery)) us/delivery  (\(procline($v.chatd.processes)))",
      "  nginx+Nchan+Redis        system \(f($v.nchan.system_us_per_message)) us/msg, \(f($v.nchan.system_us_per_delivery)) us/delivery  (\(procline($v.nchan.processes)))",
      "  nginx+Nchan(nostore)+Redis system \(f($v.nchan_nostore.system_us_per_message)) us/msg, \(f($v.nchan_nostore.system_us_per_delivery)) us/delivery  (\(procline($v.nchan_nostore.processes)))",
      "  ratios chatd/nchan:         system per message \(f($v.ratios_to_nchan.system_per_message)), per delivery \(f($v.ratios_to_nchan.system_per_delivery)), server process per delivery \(f($v.ratios_to_nchan.server_process_per_delivery)), RSS per conn \(f($v.ratios_to_nchan.rss_per_conn))",
      "  ratios chatd/nchan_nostore: system per message \(f($v.ratios_to_nchan_nostore.system_per_message)), per delivery \(f($v.ratios_to_nchan_nostore.system_per_delivery)), server process per delivery \(f($v.ratios_to_nchan_nostore.server_process_per_delivery)), RSS per conn \(f($v.ratios_to_nchan_nostore.rss_per_conn))",
      "  RSS per conn (server process): chatd \(f($v.chatd.server_rss_per_conn_kib)), nginx worker \(f($v.nchan.server_rss_per_conn_kib)) / \(f($v.nchan_nostore.server_rss_per_conn_kib)) (nostore) KiB",
      "  lag p50/p99 ms: chatd \(f($v.chatd.lag_ms.p50))/\(f($v.chatd.lag_ms.p99)), nchan \(f($v.nchan.lag_ms.p50))/\(f($v.nchan.lag_ms.p99)), nostore \(f($v.nchan_nostore.lag_ms.p50))/\(f($v.nchan_nostore.lag_ms.p99)); loss/dup/reorder chatd \($v.chatd.losses)/\($v.chatd.duplicates)/\($v.chatd.reorders), nchan \($v.nchan.losses)/\($v.nchan.duplicates)/\($v.nchan.reorders), nostore \($v.nchan_nostore.losses)/\($v.nchan_nostore.duplicates)/\($v.nchan_nostore.reorders); acks chatd \($v.chatd.acks)/\($v.chatd.messages)",
      (if $v.chatd_base then
        "  chatd_base+Redis+PG      system \(f($v.chatd_base.system_us_per_message)) us/msg, \(f($v.chatd_base.system_us_per_delivery)) us/delivery  (\(procline($v.chatd_base.processes)))\n  ratios chatd/chatd_base:    system per message \(f($v.ratios_to_chatd_base.system_per_message)), chatd \(f($v.ratios_to_chatd_base.chatd_per_message)), redis \(f($v.ratios_to_chatd_base.redis_per_message)), postgres \(f($v.ratios_to_chatd_base.postgres_per_message)), server process per delivery \(f($v.ratios_to_chatd_base.server_process_per_delivery)); lag p50/p99 ms base \(f($v.chatd_base.lag_ms.p50))/\(f($v.chatd_base.lag_ms.p99)); machine base run \(f($v.chatd_base.machine.other_cpu_util * 100))% / \(f($v.chatd_base.machine.server_runq_wait_ms)) ms"
       else empty end),
      "  goals: \($v.goals | to_entries | map("\(.key) \(if .value then "PASS" else "miss" end)") | join(", "))",
      "  machine (other CPU / server runq wait): chatd run \(f($v.chatd.machine.other_cpu_util * 100))% / \(f($v.chatd.machine.server_runq_wait_ms)) ms, nchan run \(f($v.nchan.machine.other_cpu_util * 100))% / \(f($v.nchan.machine.server_runq_wait_ms)) ms, nostore run \(f($v.nchan_nostore.machine.other_cpu_util * 100))% / \(f($v.nchan_nostore.machine.server_runq_wait_ms)) ms"' \
        "$RESULTS/vs_nchan.json"
} | tee "$RESULTS/vs_nchan.txt"

# the plot: CPU per message (dm) / per delivery (rooms100), stacked by process, one panel each
plots=()
for sc in $SCENARIOS; do
    k=us_per_delivery
    [ "$sc" = dm ] && k=us_per_message
    jq -r --arg s "$sc" --arg k "$k" '.[$s] as $v |
      "\"chatd + Redis + PG\" \($v.chatd.processes.chatd[$k]) \($v.chatd.processes.redis[$k]) \($v.chatd.processes.postgres[$k])",
      "\"nginx + Nchan + Redis\" \($v.nchan.processes.nginx[$k]) \($v.nchan.processes.redis[$k]) 0",
      "\"Nchan nostore\" \($v.nchan_nostore.processes.nginx[$k]) \($v.nchan_nostore.processes.redis[$k]) 0"' \
        "$RESULTS/vs_nchan.json" >"$LT_DATA/vs_$sc.dat"
    plots+=("set title \"$sc: µs of CPU per ${k#us_per_}\"; plot \"$LT_DATA/vs_$sc.dat\" using 2:xtic(1) title \"server (chatd / nginx)\", \"\" using 3 title \"redis-server\", \"\" using 4 title \"postgres\"")
done
{
    cat <<GP
set terminal svg size 960,520 dynamic font "sans,11" background rgb "white"
set termoption noenhanced
set output "$RESULTS/vs_nchan.svg"
set multiplot layout 1,${#plots[@]} title "chatd vs Nchan, same run ($(date -u +%Y-%m-%d), LT_RT=$LT_RT): system CPU by process"
set style data histogram
set style histogram rowstacked
set style fill solid 0.8 border -1
set boxwidth 0.6
set grid y
set yrange [0:*]
set key below
GP
    printf '%s\n' "${plots[@]}"
    echo "unset multiplot"
} | gnuplot
echo "wrote $RESULTS/vs_nchan.json, vs_nchan.txt and vs_nchan.svg"
