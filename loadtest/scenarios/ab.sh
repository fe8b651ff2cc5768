#!/usr/bin/env bash
# ab: the same dm load (dm.sh) on several chatd binaries, alternated in ONE run
# (A B A B ...), so that a change is judged by ratios measured side by side on
# a shared, noisy machine (docs/cost.md). Each run is a fresh dm.sh (its own
# Redis and Postgres) of DURATION s without the idle phase.
#   BINS="before=/tmp/chatd.old after=build/chatd" ROUNDS=2 loadtest/scenarios/ab.sh
# Writes results/ab/<name>_<round>/dm_summary.json and results/ab/ab.txt: per
# binary the median over its rounds (odd count: the middle value; even: the
# mean of the two middle values, so ROUNDS=2 gives the mean: median.jq) of
# CPU µs per message (chatd, Redis, Postgres, system), Redis commands and
# Postgres transactions per message, ack and delivery lag p50/p99, and each
# round's machine line.
# env: BINS (required), ROUNDS (2), DURATION (30), MODE (full), RATE, CONNS, and dm.sh's
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${RESULTS:-$HERE/../results}/ab
ROUNDS=${ROUNDS:-2}
[ -n "${BINS:-}" ] || { echo "ab: set BINS=\"name=path ...\"" >&2; exit 2; }
mkdir -p "$OUT"
names=()
for r in $(seq 1 "$ROUNDS"); do
    for nb in $BINS; do
        n=${nb%%=*} bin=${nb#*=}
        [ "$r" = 1 ] && names+=("$n")
        echo "== $(date -u +%H:%M:%S) $n round $r ($bin)" >&2
        RESULTS=$OUT/${n}_$r CHATD=$bin IDLE=0 DURATION=${DURATION:-30} "$HERE/dm.sh" >"$OUT/${n}_$r.console" 2>&1 ||
            { echo "ab: $n round $r failed, see $OUT/${n}_$r.console" >&2; exit 1; }
    done
done
{
    printf '%-10s %7s %7s %7s %7s | %6s %6s | %6s %6s | %6s %6s | %s\n' binary chatd redis pg system \
        rcmd/m xact/m ack50 ack99 lag50 lag99 "machine (other CPU %, server runq wait ms) per round"
    for n in "${names[@]}"; do
        files=()
        for r in $(seq 1 "$ROUNDS"); do files+=("$OUT/${n}_$r/dm_summary.json"); done
        jq -L "$HERE" -s -r --arg n "$n" '
          include "median";
          "\($n)|\(med(.cpu_us_per_message.chatd))|\(med(.cpu_us_per_message.redis))|\(med(.cpu_us_per_message.postgres))|\(med(.cpu_us_per_message.system))|\(med(.redis_commands_total_per_message))|\(med(.postgres_per_message.xacts))|\(med(.ack_ms.p50))|\(med(.ack_ms.p99))|\(med(.lag_ms.p50))|\(med(.lag_ms.p99))|\([.[] | .machine | "\((.other_cpu_util * 100) | round)%/\(.server_runq_wait_ms | round)"] | join(" "))"' \
          "${files[@]}" | awk -F'|' '{printf "%-10s %7.1f %7.1f %7.1f %7.1f | %6.2f %6.3f | %6.2f %6.2f | %6.2f %6.2f | %s\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12}'
    done
} | tee "$OUT/ab.txt"
