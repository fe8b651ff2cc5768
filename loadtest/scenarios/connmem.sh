#!/usr/bin/env bash
# connmem: what one idle connection costs chatd in memory (issue 15: RSS per
# connection). CONNS (15,000) connections in rooms of 100 with 10 s heartbeats,
# held DURATION (20) s, chatd alone (conn15k's shape), run under
# loadtest/bin/malloc_count.so: live heap bytes and blocks per connection (malloc's
# view) next to RSS per connection (the kernel's), so the difference (allocator
# overhead, fragmentation, pages) is visible.
# MASSIF=1: instead, chatd under valgrind --tool=massif with MASSIF_CONNS (2,000)
# connections (valgrind is ~30x slower: small ramp), the heap at its peak by
# allocation site -> results/connmem.massif.out and connmem.massif.txt (ms_print).
# Writes results/connmem{,_massif}.{json,txt,timeline} and connmem_summary.json.
# env: CONNS, DURATION, RAMP (1000), MASSIF, MASSIF_CONNS, MASSIF_RAMP (100), WITH_REDIS=1 (+ Redis)
source "$(dirname "$0")/lib.sh"
lt_build
DURATION=${DURATION:-20}
mkdir -p "$LT_DATA"
[ "${WITH_REDIS:-0}" = 1 ] && lt_services redis
if [ "${MASSIF:-0}" = 1 ]; then
    CONNS=${MASSIF_CONNS:-2000}
    NAME=connmem_massif
    command -v valgrind >/dev/null || { echo "connmem: MASSIF=1 needs valgrind" >&2; exit 2; }
    # massif at the peak (all connections held), stacks of 30 frames
    CHATD_WRAP=(valgrind --tool=massif --depth=30 --threshold=0.2 --massif-out-file="$RESULTS/$NAME.out")
    lt_chatd_wrapped() {
        CHAT_LISTEN=127.0.0.1:$PORT_A CHAT_JWT_SECRET=$SECRET CHAT_NODE_ID=$NAME \
            CHAT_SCRIPTS=${CHAT_SCRIPTS:-$REPO/scripts} \
            taskset -c "$CHATD_CPU" "${CHATD_WRAP[@]}" "$CHATD" >"$RESULTS/$NAME.chatd.log" 2>&1 &
        LT_CHATD_PID=$!
        LT_PIDS+=("$LT_CHATD_PID")
        for _ in $(seq 1 300); do
            curl -fs -o /dev/null "http://127.0.0.1:$PORT_A/healthz" && return 0
            sleep 0.1
        done
        echo "connmem: chatd under valgrind did not become healthy" >&2
        exit 1
    }
    lt_chatd_wrapped
    RAMP=${MASSIF_RAMP:-100}
else
    CONNS=${CONNS:-15000}
    NAME=connmem
    export MALLOC_COUNT_FILE=$LT_DATA/malloc_count
    LD_PRELOAD=$LT_DIR/bin/malloc_count.so lt_chatd "$NAME" "$PORT_A"
    unset MALLOC_COUNT_FILE
    RAMP=${RAMP:-1000}
fi
PID=$LT_CHATD_PID
sleep 1
snap() {   # snap FILE: the malloc counters now
    for _ in $(seq 1 20); do
        [ -s "$LT_DATA/malloc_count" ] && cp "$LT_DATA/malloc_count" "$1" && [ -s "$1" ] && return 0
        sleep 0.01
    done
    echo "0 0 0 0 0 0 0 0" >"$1"
}
HOOK=$LT_DATA/hook.sh
printf '#!/usr/bin/env bash\n[ -s "%s" ] && cp "%s" "%s.$1"\n' "$LT_DATA/malloc_count" "$LT_DATA/malloc_count" \
    "$LT_DATA/mc" >"$HOOK"
chmod +x "$HOOK"
[ "${MASSIF:-0}" = 1 ] || snap "$LT_DATA/mc.before"
lt_load "$NAME" --url "127.0.0.1:$PORT_A" --conns "$CONNS" --rooms $((CONNS / 100)) --rate 0 \
    --duration "$DURATION" --ramp "$RAMP" --heartbeat-ms 10000 --src-addrs 4 --server-pid "$PID" \
    --ramp-timeout 600 --hook "$HOOK"
if [ "${MASSIF:-0}" = 1 ]; then
    kill "$PID"
    for _ in $(seq 1 200); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    # the peak snapshot's tree (massif keeps several detailed snapshots; the peak is
    # the one with every connection held)
    ms_print --threshold=0.5 "$RESULTS/$NAME.out" >"$LT_DATA/ms.txt" 2>/dev/null || true
    peak=$(sed -n 's/^Detailed snapshots: \[.*[^0-9]\([0-9][0-9]*\) (peak).*/\1/p' "$LT_DATA/ms.txt")
    {
        sed -n '1,/^Number of snapshots/p' "$LT_DATA/ms.txt"
        awk -v p="$peak" '$1 == p && NF >= 6 && $1 ~ /^[0-9]+$/ {go = 1} go && /^ *[0-9]+ +[0-9,]+ +[0-9,]+/ && $1 != p {exit} go' \
            "$LT_DATA/ms.txt"
    } >"$RESULTS/$NAME.massif.txt"
    echo "wrote $RESULTS/$NAME.out and $RESULTS/$NAME.massif.txt"
    exit 0
fi
read -r _ _ _ _ _ _ live0 blocks0 <"$LT_DATA/mc.before"
read -r _ _ _ _ _ _ live1 blocks1 <"$LT_DATA/mc.go"
jq -n --slurpfile r "$RESULTS/$NAME.json" --argjson l0 "$live0" --argjson l1 "$live1" \
    --argjson b0 "$blocks0" --argjson b1 "$blocks1" '
  $r[0] as $x | $x.connections.held_at_start as $n | {
    conns: $n, rss_per_conn_kib: $x.server.rss_per_conn_kib,
    heap_live_bytes_per_conn: (($l1 - $l0) / $n), heap_live_blocks_per_conn: (($b1 - $b0) / $n),
    heap_kib_per_conn: (($l1 - $l0) / $n / 1024),
    rss_minus_heap_kib_per_conn: ($x.server.rss_per_conn_kib - ($l1 - $l0) / $n / 1024),
    machine: $x.machine}' | tee "$RESULTS/${NAME}_summary.json"
