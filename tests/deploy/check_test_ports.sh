#!/usr/bin/env bash
# check_test_ports.sh: the browser suite and the Prometheus test take their
# ports from the caller's CHATD_TEST_PORT_LO/HI (tools/test_ports.sh), so two
# test runs with different ranges on one machine do not collide; without
# the range, the defaults of before. Offline, no server. Exits 1 with what
# was wrong.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
err=0
no() { echo "$*"; err=1; }
[ -f tools/test_ports.sh ] || { echo "no tools/test_ports.sh"; exit 1; }

# derive: LO/HI give the browser base and the Prometheus sub-range
got=$(env -u WEB_TEST_PORT_BASE -u PROM_TEST_PORT_LO -u PROM_TEST_PORT_HI \
      CHATD_TEST_PORT_LO=30100 CHATD_TEST_PORT_HI=30199 bash -c \
      '. tools/test_ports.sh && test_ports_derive && echo "$WEB_TEST_PORT_BASE $PROM_TEST_PORT_LO $PROM_TEST_PORT_HI"')
[ "$got" = "30100 30120 30199" ] || no "range 30100-30199: got '$got'"
# what the caller set itself wins
got=$(CHATD_TEST_PORT_LO=30100 CHATD_TEST_PORT_HI=30199 WEB_TEST_PORT_BASE=31000 bash -c \
      '. tools/test_ports.sh && test_ports_derive && echo "$WEB_TEST_PORT_BASE"')
[ "$got" = 31000 ] || no "an explicit WEB_TEST_PORT_BASE: got '$got'"
# no range: nothing set (the suites' own defaults)
got=$(env -u CHATD_TEST_PORT_LO -u CHATD_TEST_PORT_HI -u WEB_TEST_PORT_BASE -u PROM_TEST_PORT_LO \
      bash -c '. tools/test_ports.sh && test_ports_derive && echo "${WEB_TEST_PORT_BASE:-unset} ${PROM_TEST_PORT_LO:-unset}"')
[ "$got" = "unset unset" ] || no "no range: got '$got'"
# a range too small for both suites is refused
CHATD_TEST_PORT_LO=30100 CHATD_TEST_PORT_HI=30110 bash -c '. tools/test_ports.sh && test_ports_derive' 2>/dev/null &&
    no "an 11-port range was accepted"

# first_free: a taken port is skipped; none free in the range is a failure
F=$(mktemp -d /tmp/chatd-ports-XXXXXX)
/usr/bin/python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
open(sys.argv[1] + ".tmp", "w").write(str(s.getsockname()[1]))
__import__("os").rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)' "$F/port" &
holder=$!
for _ in $(seq 1 100); do [ -s "$F/port" ] && break; sleep 0.05; done
taken=$(cat "$F/port" 2>/dev/null || echo 0)
got=$(bash -c '. tools/test_ports.sh && test_ports_first_free "$1" "$2"' _ "$taken" $((taken + 5)))
[ -n "$got" ] && [ "$got" -gt "$taken" ] || no "first free from a taken $taken: got '$got'"
bash -c '. tools/test_ports.sh && test_ports_first_free "$1" "$1"' _ "$taken" >/dev/null &&
    no "a range of one taken port gave a port"
kill "$holder" 2>/dev/null
wait "$holder" 2>/dev/null

# the browser suite's runner hands run.mjs the derived base (node and npm faked)
printf '#!/bin/sh\necho "base=$WEB_TEST_PORT_BASE"\n' >"$F/node"
printf '#!/bin/sh\nexit 0\n' >"$F/npm"
chmod +x "$F/node" "$F/npm"
got=$(env -u WEB_TEST_PORT_BASE PATH="$F:$PATH" CHATD_TEST_PORT_LO=30100 CHATD_TEST_PORT_HI=30199 \
      bash tests/browser/run.sh 2>&1)
[ "$got" = "base=30100" ] || no "tests/browser/run.sh with 30100-30199: '$got'"
rm -rf "$F"
# the Prometheus test looks for its ports in PROM_TEST_PORT_LO..HI
grep -q 'test_ports_derive' tests/prometheus/run.sh &&
    grep -q 'test_ports_first_free "$PLO" "$PHI"' tests/prometheus/run.sh ||
    no "tests/prometheus/run.sh does not take its ports from tools/test_ports.sh"
exit $err
