#!/usr/bin/env bash
# tests/fuzz/run.sh: builds the libFuzzer targets (tests/fuzz/fuzz_*.c, with
# clang, ASan + UBSan, into build-fuzz) and runs each one for a bounded time,
# starting from a temporary copy of its committed corpus
# (tests/fuzz/corpus/<target>/) so that a run never writes into the tree.
# Prints one line per target (execs, exec/s, coverage, corpus, result) and
# ends with "N passed, N failed". A crash, a leak, undefined behaviour, a
# timeout or a broken oracle fails the target and prints the reproducer.
#   bash tests/fuzz/run.sh [target...]       e.g. bash tests/fuzz/run.sh frame resp
# Environment:
#   FUZZ_SECONDS=8    time per target (the short form run by ./test.sh)
#   FUZZ_BUILD=build-fuzz   build directory
#   FUZZ_OUT=dir      keep each target's log, grown corpus and artifacts there
#   FUZZ_MERGE=1      after the run, merge what it found (only inputs that add
#                     coverage, -merge=1) into tests/fuzz/corpus/<target>
#   FUZZ_DOC=file     write the results table between "<!-- fuzz:begin -->"
#                     and "<!-- fuzz:end -->" of file (docs/reliability.md)
# Reproduce a failure: build-fuzz/fuzz_<target> <reproducer file>
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECS=${FUZZ_SECONDS:-8}
BUILD=${FUZZ_BUILD:-build-fuzz}

# per target: longest input worth trying, and extra libFuzzer flags
max_len() {
    case $1 in
        frame|resp) echo 4096 ;;
        jwt_hs256|jwt_pubkey) echo 2048 ;;
        request) echo 1024 ;;
        api) echo 8192 ;;
        *) echo 512 ;;
    esac
}
extra_flags() {
    # The Lua state frees by garbage collection, so malloc and free counts of
    # one input never match and libFuzzer would scan for leaks after every
    # input (60x slower); leaks are still checked when the process exits.
    case $1 in script) echo "-detect_leaks=0" ;; *) echo "" ;; esac
}

if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=()
    for f in tests/fuzz/fuzz_*.c; do t=${f##*/fuzz_}; TARGETS+=("${t%.c}"); done
fi

if ! command -v clang >/dev/null; then
    echo "fuzz: clang is missing (tools/deps.sh --test installs clang and libclang-rt-14-dev)"
    echo "0 passed, 1 failed"; exit 1
fi
OUT=${FUZZ_OUT:-$(mktemp -d /tmp/chatd-fuzz-XXXXXX)}
mkdir -p "$OUT"
echo "fuzz: building $BUILD (clang, libFuzzer + ASan + UBSan)"
if ! { CC=clang cmake -S . -B "$BUILD" -DCHATD_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$OUT/build.log" 2>&1 &&
       cmake --build "$BUILD" -j2 --target fuzz >>"$OUT/build.log" 2>&1; }; then
    tail -30 "$OUT/build.log"; echo "0 passed, 1 failed"; exit 1
fi
if grep -q "warning:" "$OUT/build.log"; then
    echo "fuzz: the build has warnings:"; grep "warning:" "$OUT/build.log" | head -20
    echo "0 passed, 1 failed"; exit 1
fi

PASS=0; FAIL=0; ROWS=()
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
[ -n "$(git status --porcelain -- core tests/fuzz 2>/dev/null)" ] && COMMIT="$COMMIT+"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
echo "fuzz: ${SECS} s per target: ${TARGETS[*]}"
for t in "${TARGETS[@]}"; do
    bin="$BUILD/fuzz_$t"
    if [ ! -x "$bin" ]; then
        printf '  %-12s FAILED: no such target (%s)\n' "$t" "$bin"; FAIL=$((FAIL + 1)); continue
    fi
    w="$OUT/$t"; rm -rf "$w"; mkdir -p "$w/corpus" "$w/artifacts"
    why=""
    seeds=0
    if [ -d "tests/fuzz/corpus/$t" ]; then
        cp tests/fuzz/corpus/"$t"/* "$w/corpus/" 2>/dev/null
        seeds=$(find "tests/fuzz/corpus/$t" -type f | wc -l)
    fi
    dict=()   # tests/fuzz/dict/<target>.dict, else <prefix>.dict (jwt_hs256 -> jwt)
    for d in "tests/fuzz/dict/$t.dict" "tests/fuzz/dict/${t%%_*}.dict"; do
        [ -f "$d" ] && { dict=("-dict=$d"); break; }
    done
    # shellcheck disable=SC2046
    timeout -k 10 $((SECS * 2 + 120)) "$bin" -max_total_time="$SECS" -max_len="$(max_len "$t")" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$w/artifacts/" \
        $(extra_flags "$t") "${dict[@]}" "$w/corpus" >"$w/log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$w/log" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$w/log" | tail -1)
    last=$(grep -aE '^#[0-9]+.*cov: ' "$w/log" | tail -1)
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+)\/([0-9]+[a-zA-Z]*).*/\1 (\2)/p' <<<"$last")
    if [ $rc -eq 0 ]; then
        res=ok; PASS=$((PASS + 1))
    else
        FAIL=$((FAIL + 1))
        repro=$(grep -aoE 'Test unit written to [^ ]+' "$w/log" | tail -1 | sed 's/Test unit written to //')
        why=$(grep -aE 'FUZZ_CHECK failed|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error' "$w/log" | head -1)
        res="FAILED (exit $rc): ${why:-see $w/log}"
        [ -n "$repro" ] && res="$res; reproducer: $repro"
        [ $rc -eq 124 ] && res="FAILED: did not stop within its time (see $w/log)"
    fi
    printf '  %-12s %10s execs %7s/s  cov %5s  ft %6s  corpus %-14s seeds %4s  %s\n' \
        "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$seeds" "$res"
    ROWS+=("| $t | $(date -u +%Y-%m-%d) | $COMMIT | ${SECS} | ${execs:-?} | ${eps:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | $seeds | $( [ $rc -eq 0 ] && echo 0 || echo "1: ${why:-exit $rc}") |")
    if [ "${FUZZ_MERGE:-0}" = 1 ] && [ $rc -eq 0 ]; then
        mkdir -p "tests/fuzz/corpus/$t"
        "$bin" -merge=1 -max_len="$(max_len "$t")" $(extra_flags "$t") "tests/fuzz/corpus/$t" "$w/corpus" \
            >"$w/merge.log" 2>&1 || echo "  $t: merge failed (see $w/merge.log)"
    fi
done

if [ -n "${FUZZ_DOC:-}" ]; then
    # rows of this run replace the same targets' rows of the table
    /usr/bin/python3 - "$FUZZ_DOC" "$(nproc)" "${ROWS[@]}" <<'EOF'
import sys
path, cores, rows = sys.argv[1], sys.argv[2], sys.argv[3:]
b, e = "<!-- fuzz:begin -->", "<!-- fuzz:end -->"
text = open(path).read()
if b not in text or e not in text:
    sys.exit(f"{path}: no {b} ... {e} markers")
head, rest = text.split(b, 1)
old, tail = rest.split(e, 1)
cells = lambda r: [c.strip() for c in r.strip().strip("|").split("|")]
table = {cells(r)[0]: r for r in old.splitlines()
         if r.startswith("| ") and cells(r)[0] != "target" and not cells(r)[0].startswith("-")}
table.update({cells(r)[0]: r for r in rows})
out = [f"Written by `tests/fuzz/run.sh` (`FUZZ_DOC`), one target at a time on {cores} cores shared "
       "with other jobs (execs/s vary with the load). cov = edges, ft = features of the "
       "instrumented core; corpus = the run's corpus at the end (files, bytes).", "",
       "| target | date | commit | seconds | execs | execs/s | cov | ft | corpus | seeds | crashes |",
       "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"] + [table[k] for k in sorted(table)]
open(path, "w").write(head + b + "\n" + "\n".join(out) + "\n" + e + tail)
EOF
fi

[ -z "${FUZZ_OUT:-}" ] && [ $FAIL -eq 0 ] && rm -rf "$OUT"
[ $FAIL -gt 0 ] && echo "fuzz: logs, corpora and reproducers kept in $OUT"
echo "$PASS passed, $FAIL failed"
[ $FAIL -eq 0 ]
