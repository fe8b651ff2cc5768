# test_ports.sh (sourced): the ports of the suites that start servers on
# fixed ports of their own, the browser suite (tests/browser) and the
# Prometheus test (tests/prometheus), taken from the range the caller gave
# the test run (CHATD_TEST_PORT_LO/HI), so two runs with different ranges on
# one machine do not collide. Sourced by tests/browser/run.sh and
# tests/prometheus/run.sh (so ./test.sh and a suite run alone agree);
# checked by tests/deploy/run.sh (test-ports).

# test_ports_derive: with CHATD_TEST_PORT_LO and CHATD_TEST_PORT_HI both set,
# exports what the caller did not set itself:
#   WEB_TEST_PORT_BASE=LO          the browser suite uses LO+1, +2, +10, +11
#   PROM_TEST_PORT_LO=LO+20        the Prometheus test takes the first two
#   PROM_TEST_PORT_HI=HI           free ports of LO+20..HI
# The range is shared with the integration and deploy suites, which use all
# of it: ./test.sh runs its suites one after another. 1 (and why, on
# stderr) when the range has fewer than 22 ports. Without the range: nothing
# (the browser suite on 17500-17599, the Prometheus test from 17640 up).
test_ports_derive() {
    [ -n "${CHATD_TEST_PORT_LO:-}" ] && [ -n "${CHATD_TEST_PORT_HI:-}" ] || return 0
    local lo=$CHATD_TEST_PORT_LO hi=$CHATD_TEST_PORT_HI
    if [ $((hi - lo + 1)) -lt 22 ]; then
        echo "CHATD_TEST_PORT_LO-HI ($lo-$hi): the browser and Prometheus suites need 22 ports of it" >&2
        return 1
    fi
    export WEB_TEST_PORT_BASE=${WEB_TEST_PORT_BASE:-$lo}
    export PROM_TEST_PORT_LO=${PROM_TEST_PORT_LO:-$((lo + 20))}
    export PROM_TEST_PORT_HI=${PROM_TEST_PORT_HI:-$hi}
}

# test_ports_first_free FIRST LAST: prints the first port of FIRST..LAST
# nobody listens on on 127.0.0.1; 1 when every one is taken.
test_ports_first_free() {
    local p=$1
    while [ "$p" -le "$2" ]; do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
        p=$((p + 1))
    done
    return 1
}
