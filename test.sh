#!/usr/bin/env bash
# One command to run every test of chatd on this machine: installs missing
# Debian packages, builds chatd twice (normal and ASan+UBSan), starts its own
# Redis and Postgres, then runs the C unit tests (both builds, ctest), the
# busted specs of the Lua policy, the integration suite (real chatd nodes,
# Redis, Postgres and an independent WebSocket client), the Prometheus scrape
# test, the real-Chromium browser tests, the deploy checks (files, installed
# tree, .deb, demo), the fault harness (short form: two nodes, Redis and
# Postgres killed, stopped, flushed and degraded under load, checked for lost
# acked messages, reused seqs, duplicates and order) and the libFuzzer targets
# (short runs, tests/fuzz). Ends with "N passed, N failed".
#   ./test.sh                     everything
#   CHATD_TEST_ONLY="unit itest" ./test.sh    some suites (unit asan busted itest prom browser deploy faults fuzz)
# Ports: CHATD_TEST_PORT_LO/HI (both) keep the integration, fault, deploy,
# browser and Prometheus suites inside that range (tools/test_ports.sh; the
# list and the other ranges: tests/integration/README.md).
set -uo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
ONLY=${CHATD_TEST_ONLY:-"unit asan busted itest prom browser deploy faults fuzz"}
PASSED=0
FAILED=0
XFAILED=0
SUMMARY=()

want() { [[ " $ONLY " == *" $1 "* ]]; }
record() {   # suite passed failed [xfail]
    local x=${4:-0}
    PASSED=$((PASSED + $2)); FAILED=$((FAILED + $3)); XFAILED=$((XFAILED + x))
    SUMMARY+=("$(printf '%-10s %4d passed, %d failed' "$1" "$2" "$3")$([ "$x" -gt 0 ] && echo ", $x xfail (known defects, not passed)")")
}
free_port() { /usr/bin/python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

tools/deps.sh --test || { echo "dependency installation failed"; echo "0 passed, 1 failed"; exit 1; }

echo "== build (RelWithDebInfo) and build-asan (ASan+UBSan)"
if ! { cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && cmake --build build -j2 >build.log 2>&1; }; then
    tail -40 build.log; echo "0 passed, 1 failed"; exit 1
fi
if want asan; then
    if ! { cmake -S . -B build-asan -DCHATD_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null &&
           cmake --build build-asan -j2 >build-asan.log 2>&1; }; then
        tail -40 build-asan.log; record asan-build 0 1
    fi
fi

# the suite's own Redis/Postgres skip fsync (speed); ./run.sh never does
export SERVICES_FAST=1
WORK=$(mktemp -d /tmp/chatd-test-XXXXXX)
chmod 755 "$WORK"
# shellcheck source=tools/services.sh
. tools/services.sh
trap 'services_stop "$WORK/svc"; rm -rf "$WORK"' EXIT
REDIS_PORT=$(free_port); PG_PORT=$(free_port)
services_start_redis "$WORK/svc" "$REDIS_PORT" || { echo "0 passed, 1 failed"; exit 1; }
services_start_postgres "$WORK/svc" "$PG_PORT" || { echo "0 passed, 1 failed"; exit 1; }
export CHATD_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export CHATD_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$PG_PORT/chatd"

run_ctest() {   # name builddir
    local out="$WORK/$1.ctest"
    (cd "$2" && ctest --output-on-failure --timeout 300) >"$out" 2>&1
    cat "$out" | grep -E "Test +#|tests passed|Failed|\*\*\*" | sed 's/^/  /'
    local line total failed
    line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$out" | tail -1)
    if [ -z "$line" ]; then tail -30 "$out"; record "$1" 0 1; return; fi
    failed=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/' <<<"$line")
    total=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\2/' <<<"$line")
    [ "$failed" -gt 0 ] && grep -A40 -E "\*\*\*Failed|\(Failed\)" "$out" | head -80
    record "$1" $((total - failed)) "$failed"
}

# a runner whose last line is "N passed, N failed" (and maybe a line "N xfail ...")
run_counted() {  # name cmd...
    local name=$1; shift
    local out="$WORK/$name.out"
    "$@" 2>&1 | tee "$out" | sed -u 's/^/  /'
    local line xf
    line=$(grep -E "^[0-9]+ passed, [0-9]+ failed" "$out" | tail -1)
    if [ -z "$line" ]; then record "$name" 0 1; return; fi
    xf=$(grep -E "^[0-9]+ xfail" "$out" | tail -1 | cut -d' ' -f1)
    record "$name" "$(cut -d' ' -f1 <<<"$line")" "$(sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/' <<<"$line")" "${xf:-0}"
}

if want unit; then echo "== C unit tests"; run_ctest unit build; fi
if want asan && [ -x build-asan/chatd ]; then
    echo "== C unit tests under ASan+UBSan"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        run_ctest unit-asan build-asan
fi
if want fuzz; then
    echo "== fuzz targets (libFuzzer + ASan/UBSan, ${FUZZ_SECONDS:-8} s each, tests/fuzz/run.sh)"
    run_counted fuzz bash tests/fuzz/run.sh
fi
if want busted; then
    echo "== busted specs (scripts/)"
    out="$WORK/busted.out"
    busted -o TAP >"$out" 2>&1
    sed "s/^/  /" "$out" | grep -vE "^  (ok |# )" | head -60
    p=$(grep -cE "^ok " "$out"); f=$(grep -cE "^not ok " "$out")
    [ "$p" -eq 0 ] && [ "$f" -eq 0 ] && f=1
    record busted "$p" "$f"
fi
if want itest; then
    echo "== integration tests (real chatd, Redis, Postgres, WebSocket clients)"
    # the suite starts its own Redis and Postgres so it can also kill and restart them
    run_counted itest env -u CHATD_TEST_REDIS_URL -u CHATD_TEST_DATABASE_URL \
        /usr/bin/python3 tests/integration/run.py --chatd "$ROOT/build/chatd"
    if want asan && [ -x build-asan/chatd ]; then
        echo "== integration core group against the ASan+UBSan chatd"
        ASAN_OPTIONS=detect_leaks=1 run_counted itest-asan /usr/bin/python3 tests/integration/run.py \
            --chatd "$ROOT/build-asan/chatd" --only core
    fi
fi
if want faults; then
    echo "== fault harness, short form (2 nodes, own Redis/Postgres, faults under load)"
    run_counted faults env -u CHATD_TEST_REDIS_URL -u CHATD_TEST_DATABASE_URL \
        /usr/bin/python3 tests/faults/run.py --chatd "$ROOT/build/chatd"
fi
if want prom; then
    echo "== Prometheus scrape test"
    run_counted prometheus bash tests/prometheus/run.sh
fi
if want browser; then
    echo "== browser tests (Debian chromium + playwright-core)"
    run_counted browser bash tests/browser/run.sh
fi
if want deploy; then
    echo "== deploy: files, systemd, nginx, installed tree, .deb, demo (offline)"
    run_counted deploy bash tests/deploy/run.sh
fi

echo
echo "== summary"
printf '  %s\n' "${SUMMARY[@]}"
[ "$XFAILED" -gt 0 ] && echo "  ($XFAILED expected failures of known defects: see the xfail lines above; not counted as passed)"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
