#!/usr/bin/env bash
# api: the server API's publish (POST /api/rooms/{room}/messages on keep-alive
# connections, latency to the durable 200) next to the WebSocket publish
# path (message frame -> ack, also after the durable commit), same chatd,
# same Postgres, same driver (loadtest/apiload.c, closed loop: each
# connection has one message in flight), chatd pinned to one core and the
# driver + Postgres to the other. Each concurrency runs ws then api, twice,
# so drift of a shared machine shows. An open policy (no rules), so the
# figures are the publish paths themselves; every connection its own room
# (a WebSocket sender gets its own message back: one delivery per message
# on that side; the API rooms have no members).
# env: DURATION (per phase, default 15), WARMUP (3), CONCS ("1 16"), BODY (64), NAME (api:
# results/NAME.txt and .json), SERVICES_FAST=1 (Postgres without fsync: chatd's own cost)
source "$(dirname "$0")/lib.sh"
lt_build
lt_services pg
POL=$LT_DATA/policy
mkdir -p "$POL"
echo 'return {}' >"$POL/policy.lua"
KEY=loadtest-api-key-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export CHAT_SCRIPTS=$POL CHAT_API_KEYS=$KEY CHAT_LOG_LEVEL=warn
lt_chatd "${NAME:-api}" "$PORT_A"
NAME=${NAME:-api}
OUT=$RESULTS/$NAME.txt
{
    echo "# api: publish over the server API vs over a WebSocket, same run ($(date -u +%FT%TZ))"
    echo "# chatd $(git -C "$REPO" rev-parse --short HEAD) on core $CHATD_CPU; apiload + Postgres on core $LOAD_CPU;"
    echo "# closed loop (one message in flight per connection), ${DURATION:-15} s per phase after ${WARMUP:-3} s warm-up,"
    echo "# body ${BODY:-64} bytes; durable = Postgres group commit (CHAT_BATCH_MS default) with fsync $( [ "${SERVICES_FAST:-0}" = 1 ] && echo off || echo on)."
    echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT"
JS=()
for conc in ${CONCS:-1 16}; do
    for round in 1 2; do
        for mode in ws api; do
            name=${NAME}_${mode}_c${conc}_r${round}
            echo "== $mode, $conc connection(s), round $round" | tee -a "$OUT"
            CHAT_API_KEY=$KEY "${LT_PRIO[@]}" taskset -c "$LOAD_CPU" "$LT_DIR/bin/apiload" \
                --url "127.0.0.1:$PORT_A" --mode "$mode" --conns "$conc" --secret "$SECRET" \
                --duration "${DURATION:-15}" --warmup "${WARMUP:-3}" --body-bytes "${BODY:-64}" \
                --room-prefix "r$round" --server-pid "$LT_CHATD_PID" --json "$RESULTS/$name.json" | tee -a "$OUT"
            JS+=("$RESULTS/$name.json")
        done
    done
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT"
# one JSON with every phase
{ echo "["; for i in "${!JS[@]}"; do cat "${JS[$i]}" | tr -d '\n'; [ "$i" -lt $((${#JS[@]} - 1)) ] && echo ","; rm -f "${JS[$i]}"; done; echo "]"; } >"$RESULTS/$NAME.json"
echo "wrote $OUT and $RESULTS/$NAME.json"
