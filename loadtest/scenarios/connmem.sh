#!/usr/bin/env bash
# connmem: what one idle connection costs chatd in memory (issue 15: RSS per
# connection). CONNS (15,000) connections in rooms of 100 with 10 s heartbeats,
# held DURATION (20) s, chatd alone (conn15k's shape), run under
# loadtest/bin/malloc_count.so: live heap bytes and blocks per connection (malloc's
# view) next to RSS per connection (the kernel's), so the difference (allocator
# overhead, fragmentation, pages) is visible.
# MASSIF=1: instead, chatd under valgrind --tool=massif with MASSIF_CONNS (2,000)
# connections (valgrind is ~30x slower: small ramp), the heap at its peak by
# allocation site -> results/connmem_massif.out, connmem_massif.massif.txt (ms_print)
# and connmem_massif.sites.txt (loadtest/massif_sites.py: per connection, by site).
# Writes results/connmem{,_massif}.{json,txt,timeline} and connmem_summary.json.
# BASE_CHATD=path: the same scenario first with that binary (results named
# connmem_base* / connmem_massif_base*), then with CHATD, one after the other
# in this run, and connmem_compare.json (connmem_massif_compare.txt with MASSIF=1).
# env: CONNS, DURATION, RAMP (1000), MASSIF, MASSIF_CONNS, MASSIF_RAMP (100), WITH_REDIS=1 (+ Redis),
#      BASE_CHATD, CHATD (lib.sh: the binary, default build/chatd)
if [ -n "${BASE_CHATD:-}" ]; then
    out=${RESULTS:-$(cd "$(dirname "$0")/.." && pwd)/results}
    env -u BASE_CHATD CHATD="$BASE_CHATD" CONNMEM_SUFFIX=_base "$0"
    env -u BASE_CHATD CONNMEM_SUFFIX= "$0"
    if [ "${MASSIF:-0}" = 1 ]; then
        { echo "== base: $BASE_CHATD"; cat "$out/connmem_massif_base.sites.txt"
          echo "== this: ${CHATD:-build/chatd}"; cat "$out/connmem_massif.sites.txt"; } \
            >"$out/connmem_massif_compare.txt"
        echo "wrote $out/connmem_massif_compare.txt"
    else
        jq -n --slurpfile b "$out/connmem_base_summary.json" --slurpfile a "$out/connmem_summary.json" \
            --arg base "$BASE_CHATD" --arg this "${CHATD:-build/chatd}" '
          {base: ($b[0] + {binary: $base}), this: ($a[0] + {binary: $this}),
           rss_per_conn_kib_ratio: ($a[0].rss_per_conn_kib / $b[0].rss_per_conn_kib)}' \
            | tee "$out/connmem_compare.json"
    fi
    exit 0
fi
SUFFIX=${CONNMEM_SUFFIX:-}
source "$(dirname "$0")/lib.sh"
lt_build
DURATION=${DURATION:-20}
mkdir -p "$LT_DATA"
[ "${WITH_REDIS:-0}" = 1 ] && lt_services redis
if [ "${MASSIF:-0}" = 1 ]; then
    CONNS=${MASSIF_CONNS:-2000}
    NAME=connmem_massif$SUFFIX
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
    NAME=connmem$SUFFIX
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
    # the heap at the peak (every connection held) by allocation site, per connection
    ms_print --threshold=0.5 "$RESULTS/$NAME.out" >"$RESULTS/$NAME.massif.txt" 2>/dev/null || true
    /usr/bin/python3 "$LT_DIR/massif_sites.py" "$RESULTS/$NAME.out" "$CONNS" >"$RESULTS/$NAME.sites.txt"
    echo "wrote $RESULTS/$NAME.out, $NAME.massif.txt and $NAME.sites.txt"
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
