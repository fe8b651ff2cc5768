#!/usr/bin/env bash
# all: the measurement set of loadtest/README.md "Results", in order, each
# scenario's console output in results/<name>.console; stops at nothing (a
# failing scenario is reported at the end, exit 1). Use on a quiet machine, or
# with LT_RT=1 (see README). env: as the scenarios (CHATD, RESULTS, LT_RT, ...),
# ONLY="seed rooms100" to run a subset.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RESULTS=${RESULTS:-$HERE/../results}
mkdir -p "$RESULTS"
ONLY=${ONLY:-"seed conn15k rooms100 twonode twonode_single slow reload"}
failed=()
run() {   # run NAME ENV... -- SCRIPT
    local name=$1
    shift
    case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac
    echo "== $(date -u +%H:%M:%S) $name" >&2
    if ! env "$@" >"$RESULTS/$name.console" 2>&1; then failed+=("$name"); echo "== $name FAILED" >&2; fi
}
run seed DURATION=30 "$HERE/seed.sh"
run conn15k DURATION=300 "$HERE/conn15k.sh"
run rooms100 DURATION=60 "$HERE/rooms100.sh"
run twonode RATE=500 DURATION=60 "$HERE/twonode.sh"
run twonode_single SINGLE=1 RATE=500 DURATION=60 "$HERE/twonode.sh"
run slow "$HERE/slow.sh"
run reload "$HERE/reload.sh"
echo "== $(date -u +%H:%M:%S) done; failed: ${failed[*]:-none}" >&2
[ ${#failed[@]} = 0 ]
