#!/usr/bin/env bash
# rooms100: 5,000 connections in 50 rooms of 100; 500 msgs/s in = 50,000
# deliveries/s out (the headline throughput figure), then a search for the
# highest inbound rate whose broadcast lag p99 stays <= P99_MS (default 10 ms).
# Writes results/rooms100.{json,svg,timeline} for the fixed-rate run and
# results/rooms100_search.json (one row per probed rate + the answer).
# env: DURATION (default 60), RATE (default 500), SEARCH=0 to skip the search,
#      SEARCH_DURATION (default 15), P99_MS (default 10), WITH_PG=0 to skip Postgres,
#      MAIN=0 to run only the search, FLOOR=0 to skip loadtest/bin/sendfloor after the fixed-rate
#      run (-> results/sendfloor.{json,txt}, rooms100_floor.json: CPU per delivery / each floor)
source "$(dirname "$0")/lib.sh"
lt_build
[ "${WITH_PG:-1}" = 1 ] && lt_services pg
lt_chatd rooms100 "$PORT_A"
COMMON=(--url "127.0.0.1:$PORT_A" --conns 5000 --rooms 50 --publishers 500 --ramp 2000
        --heartbeat-ms 10000 --src-addrs 2 --server-pid "$LT_CHATD_PID")
if [ "${MAIN:-1}" = 1 ]; then
    lt_load rooms100 "${COMMON[@]}" --rate "${RATE:-500}" --duration "${DURATION:-60}"
    lt_plot rooms100 "rooms100: 50 rooms x 100 conns, ${RATE:-500} msgs/s in"
    if [ "${FLOOR:-1}" = 1 ]; then   # the floors, same cores and priority, right after the run
        "${LT_SRV_PRIO[@]}" "$LT_DIR/bin/sendfloor" --writer-cpu "$CHATD_CPU" --reader-cpu "$LOAD_CPU" \
            --json "$RESULTS/sendfloor.json" | tee "$RESULTS/sendfloor.txt"
        jq -n --slurpfile r "$RESULTS/rooms100.json" --slurpfile f "$RESULTS/sendfloor.json" '
          $r[0].server.cpu_per_delivery_us as $d | {cpu_per_delivery_us: $d,
            busy_reader_send_us: $f[0].send_cpu_us, x_busy_reader: ($d / $f[0].send_cpu_us),
            sleeping_readers: [$f[0].sleeping_readers[] | {sockets, readers, send_cpu_us, x: ($d / .send_cpu_us),
                                                         reader_wakeups_per_send}]}' |
            tee "$RESULTS/rooms100_floor.json"
    fi
fi

[ "${SEARCH:-1}" = 1 ] || exit 0
P99_MS=${P99_MS:-10}
probe() {   # probe RATE -> prints "p99_ms deliveries_per_s generator_limited"
    lt_load "rooms100_probe" "${COMMON[@]}" --rate "$1" --duration "${SEARCH_DURATION:-15}" \
        --quiet >/dev/null
    jq -r '"\(.lag_ms.p99) \(.deliveries.per_s) \(.generator.limited) \(.deliveries.losses)"' \
        "$RESULTS/rooms100_probe.json"
}
check_probe() {   # a probe that delivered nothing is a broken run, not a slow server
    if [ "${dps%.*}" = 0 ]; then
        echo "search: probe at rate $1 delivered nothing; see $RESULTS/rooms100_probe.txt" >&2
        exit 1
    fi
}
rows=()
good=0 bad=0 rate=250 limited=false
while :; do   # double until the SLO breaks (or the generator saturates)
    read -r p99 dps lim loss < <(probe "$rate")
    check_probe "$rate"
    echo "search: rate $rate -> p99 ${p99} ms, ${dps} deliveries/s, losses $loss, generator-limited $lim"
    rows+=("{\"rate\": $rate, \"p99_ms\": $p99, \"deliveries_per_s\": $dps, \"losses\": $loss, \"generator_limited\": $lim}")
    if awk -v a="$p99" -v b="$P99_MS" 'BEGIN{exit !(a <= b && a > 0)}'; then good=$rate; else bad=$rate; break; fi
    [ "$lim" = true ] && { limited=true; break; }
    [ "$rate" -ge 16000 ] && break
    rate=$((rate * 2))
done
if [ "$bad" -gt 0 ]; then   # bisect between the last good and the first bad rate
    for _ in 1 2 3 4; do
        mid=$(((good + bad) / 2))
        [ $((bad - good)) -le 25 ] && break
        read -r p99 dps lim loss < <(probe "$mid")
        check_probe "$mid"
        echo "search: rate $mid -> p99 ${p99} ms, ${dps} deliveries/s, losses $loss, generator-limited $lim"
        rows+=("{\"rate\": $mid, \"p99_ms\": $p99, \"deliveries_per_s\": $dps, \"losses\": $loss, \"generator_limited\": $lim}")
        if awk -v a="$p99" -v b="$P99_MS" 'BEGIN{exit !(a <= b && a > 0)}'; then good=$mid; else bad=$mid; fi
    done
fi
rm -f "$RESULTS"/rooms100_probe.*
{
    printf '{"p99_slo_ms": %s, "room_size": 100, "rooms": 50, "max_rate_within_slo": %s, "max_deliveries_per_s_within_slo": %s, "generator_limited": %s, "probes": [\n' \
        "$P99_MS" "$good" "$((good * 100))" "$limited"
    (IFS=$',\n'; printf '  %s\n' "${rows[*]}")
    printf ']}\n'
} >"$RESULTS/rooms100_search.json"
jq . "$RESULTS/rooms100_search.json" >/dev/null
echo "search: highest inbound rate with p99 <= ${P99_MS} ms: $good msgs/s ($((good * 100)) deliveries/s)"
