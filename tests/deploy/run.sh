#!/usr/bin/env bash
# deploy suite: validates offline, without a container engine, what issue 17
# ships. One line per check (PASS/FAIL/SKIP name: why), then
# "N passed, N failed[, N skipped]".
#  - every YAML/JSON deploy file parses; compose, k8s and the nginx sample have
#    the parts they must have (tests/deploy/check_files.py)
#  - the Dockerfile: our own lint (Debian 12 has no hadolint package) and the
#    runtime stage's packages against the libraries build/chatd links
#  - promtool check rules / config on deploy/alerts.yml and prometheus.yml
#  - systemd-analyze verify + security --offline on the unit as installed
#  - nginx -t on the rendered TLS front with a throwaway certificate
#  - cmake --install into a temp DESTDIR, then the INSTALLED chatd: single node
#    (readyz, the web client, the policy from the installed scripts, a message
#    acked) and `--workers 2` on a Redis of its own (both workers ready, SIGTERM -> 0)
#  - the .deb: cpack in build-deb (prefix /usr), dpkg-deb -I shows the runtime
#    dependencies, dpkg-deb -c the layout, the conffiles
#  - tools/demo.sh --short (through nginx when installed, else --no-tls + SKIP)
#  - tools/deps.sh lists every program/module the scripts call (check_deps.py)
#  - the browser and Prometheus suites' ports follow CHATD_TEST_PORT_LO/HI
#    (check_test_ports.sh)
# env: CHATD_BUILD (default build), CHATD_TEST_PORT_LO/HI (default 21300-21499)
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${CHATD_BUILD:-$ROOT/build}
PY=/usr/bin/python3
LO=${CHATD_TEST_PORT_LO:-21300}
HI=${CHATD_TEST_PORT_HI:-21499}
T=$(mktemp -d /tmp/chatd-deploy-XXXXXX)
chmod 755 "$T"
PIDS=()
PASS=0 FAIL=0 SKIP=0
. "$ROOT/tools/services.sh"
cleanup() {
    services_end_pids "${PIDS[@]}"
    rm -rf "$T"
}
trap cleanup EXIT
pass() { echo "PASS $1"; PASS=$((PASS + 1)); }
fail() { echo "FAIL $1: $2"; FAIL=$((FAIL + 1)); }
skip() { echo "SKIP $1: $2"; SKIP=$((SKIP + 1)); }
# check NAME cmd...: PASS when the command exits 0, else FAIL with its output
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$(tail -15 <<<"$out")"; fi
}
port_block() {   # N -> the first of N consecutive free ports in [LO, HI]
    "$PY" - "$1" "$LO" "$HI" <<'EOF'
import random, socket, sys
n, lo, hi = map(int, sys.argv[1:])
starts = list(range(lo, hi - n + 2))
random.shuffle(starts)
for s in starts:
    socks = []
    try:
        for p in range(s, s + n):
            k = socket.socket()
            socks.append(k)
            k.bind(("127.0.0.1", p))
        print(s)
        break
    except OSError:
        pass
    finally:
        for k in socks:
            k.close()
EOF
}
wait_http() {   # url [timeout s] -> 0 when it answers 200
    local end=$((SECONDS + ${2:-15}))
    while [ $SECONDS -lt $end ]; do
        curl -fs -o /dev/null --max-time 1 "$1" && return 0
        sleep 0.1
    done
    return 1
}

if [ ! -x "$BUILD/chatd" ]; then
    echo "no $BUILD/chatd: build first (cmake --build build)"
    echo "0 passed, 1 failed"
    exit 1
fi

# ---- files
for c in parse compose k8s nginx; do check "files-$c" "$PY" tests/deploy/check_files.py "$c"; done
check dockerfile-lint "$PY" tests/deploy/check_files.py dockerfile
check dockerfile-runtime-libs "$PY" tests/deploy/check_files.py runtime-libs "$BUILD/chatd"

# ---- Prometheus rules and config
if command -v promtool >/dev/null; then
    check promtool-rules promtool check rules deploy/alerts.yml
    sed "s#/etc/prometheus/alerts.yml#$ROOT/deploy/alerts.yml#" deploy/prometheus.yml >"$T/prometheus.yml"
    check promtool-config promtool check config "$T/prometheus.yml"
else
    skip promtool "promtool not installed (Debian prometheus; tools/deps.sh --test)"
fi

# ---- install tree
PREFIX=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$BUILD/CMakeCache.txt")
INST=$T/inst
if DESTDIR=$INST cmake --install "$BUILD" >"$T/install.log" 2>&1; then
    P=$INST$PREFIX
    if [ "$PREFIX" = /usr ]; then ETC=$INST/etc/chatd; else ETC=$P/etc/chatd; fi
    missing=()
    for f in "$P/bin/chatd" "$ETC/scripts/policy.lua" "$ETC/chatd.env" "$P/share/chatd/web/index.html" \
             "$P/share/chatd/web/chatd-client.js" "$P/lib/systemd/system/chatd.service" \
             "$P/share/doc/chatd/operations.md" "$P/share/doc/chatd/design-notes.md" \
             "$P/share/doc/chatd/examples/nginx/chatd.conf"; do
        [ -e "$f" ] || missing+=("${f#"$INST"}")
    done
    if [ ${#missing[@]} -eq 0 ] && [ "$(stat -c %a "$ETC/chatd.env")" = 600 ]; then pass install-layout
    else fail install-layout "missing ${missing[*]:-none}; chatd.env mode $(stat -c %a "$ETC/chatd.env" 2>/dev/null)"; fi
else
    fail install-layout "$(tail -5 "$T/install.log")"
    P=""
fi

# ---- systemd unit as installed
UNIT=$P/lib/systemd/system/chatd.service
if [ -n "$P" ] && [ -f "$UNIT" ]; then
    # point it at the temp tree (ExecStart must exist for verify)
    mkdir -p "$T/units"
    sed -e "s#^ExecStart=$PREFIX#ExecStart=$P#" -e "s#^EnvironmentFile=.*#EnvironmentFile=$ETC/chatd.env#" \
        "$UNIT" >"$T/units/chatd.service"
    # --man=no: verify would run man for Documentation=man:systemd.exec(5), which tests this
    # machine's man-db, not the unit (a fresh minbase Debian has none: tools/fresh-debian.sh)
    out=$(systemd-analyze verify --man=no "$T/units/chatd.service" 2>&1)
    if [ $? -eq 0 ] && [ -z "$out" ]; then pass systemd-verify; else fail systemd-verify "$out"; fi
    sec=$(systemd-analyze security --offline=yes "$T/units/chatd.service" 2>&1 | grep -o 'exposure level for chatd.service: [0-9.]*' | grep -o '[0-9.]*$')
    for k in NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes ExecReload= KillSignal=SIGTERM \
             LimitNOFILE= TimeoutStopSec= DynamicUser=yes; do
        grep -q "^$k" "$UNIT" || sec="missing $k (exposure $sec)"
    done
    stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s/\1/p' "$UNIT")
    drain=$(sed -n 's/^CHAT_DRAIN_MS=//p' "$ETC/chatd.env")
    if [[ $sec =~ ^[0-9.]+$ ]] && awk -v s="$sec" 'BEGIN{exit !(s <= 2.5)}' &&
       [ $((stop * 1000)) -gt $((${drain:-5000} + 10000)) ]; then
        pass "systemd-hardening (exposure $sec, stop ${stop}s > drain ${drain}ms + 10s)"
    else
        fail systemd-hardening "exposure '$sec', TimeoutStopSec ${stop}s vs CHAT_DRAIN_MS ${drain}"
    fi
else
    fail systemd-verify "no installed unit"
fi

# ---- nginx -t on the TLS front, throwaway certificate
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/CN=localhost" -keyout "$T/key.pem" -out "$T/cert.pem" 2>/dev/null
if command -v nginx >/dev/null; then
    NB=$(port_block 2)
    deploy/nginx/render.sh "$T/nginx" --https "127.0.0.1:$NB" --http "127.0.0.1:$((NB + 1))" \
        --cert "$T/cert.pem" --key "$T/key.pem" --upstream 127.0.0.1:8080,127.0.0.1:8090
    check nginx-t nginx -t -c "$T/nginx/nginx.conf"
else
    skip nginx-t "nginx not installed (Debian nginx; tools/deps.sh --test installs it)"
fi

# ---- the installed chatd, single node
SECRET=deploy-test-secret-0123456789abcdef0123
if [ -n "$P" ] && [ -x "$P/bin/chatd" ]; then
    PORT=$(port_block 1)
    (cd / && exec env -i PATH=/usr/bin:/bin CHAT_JWT_SECRET=$SECRET CHAT_LISTEN=127.0.0.1:$PORT \
        CHAT_NODE_ID=installed "$P/bin/chatd" >"$T/installed.log" 2>&1) &
    PIDS+=("$!")
    why=""
    wait_http "http://127.0.0.1:$PORT/readyz" || why="/readyz not 200"
    [ -z "$why" ] && { curl -fs "http://127.0.0.1:$PORT/" | cmp -s - web/index.html || why="GET / is not web/index.html"; }
    [ -z "$why" ] && { grep -q "policy loaded from $ETC/scripts" "$T/installed.log" || why="policy not loaded from $ETC/scripts"; }
    [ -z "$why" ] && { out=$("$PY" - "$PORT" "$SECRET" 2>&1 <<'EOF'
import asyncio, json, sys, time
import jwt, websockets
port, secret = sys.argv[1], sys.argv[2]
tok = jwt.encode({"sub": "dep", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
async def main():
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/deploy?token={tok}", open_timeout=5) as ws:
        w = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert w["type"] == "welcome" and w["node"] == "installed", w
        await ws.send(json.dumps({"type": "message", "body": "hello", "id": "m1"}))
        got = set()
        while got != {"ack", "message"}:
            f = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if f["type"] in ("ack", "message"):
                got.add(f["type"])
            assert f["type"] != "error", f
asyncio.run(main())
EOF
) || why="WebSocket message not acked: $out"; }
    if [ -z "$why" ]; then pass installed-single-node; else fail installed-single-node "$why; log: $(tail -5 "$T/installed.log")"; fi

    # ---- the installed chatd --workers 2 on its own Redis
    if command -v redis-server >/dev/null; then
        RB=$(port_block 4)
        redis-server --port "$RB" --bind 127.0.0.1 --save '' --appendonly no >"$T/redis.log" 2>&1 &
        PIDS+=("$!")
        for _ in $(seq 1 50); do redis-cli -p "$RB" ping >/dev/null 2>&1 && break; sleep 0.1; done
        (cd / && exec env -i PATH=/usr/bin:/bin CHAT_JWT_SECRET=$SECRET CHAT_LISTEN=127.0.0.1:$((RB + 1)) \
            CHAT_WORKER_PORT=$((RB + 2)) CHAT_REDIS_URL=redis://127.0.0.1:$RB CHAT_NODE_ID=inst \
            "$P/bin/chatd" --workers 2 >"$T/workers.log" 2>&1) &
        SUP=$!
        PIDS+=("$SUP")
        why=""
        for p in $((RB + 2)) $((RB + 3)); do wait_http "http://127.0.0.1:$p/readyz" || why="worker port $p not ready"; done
        [ -z "$why" ] && { curl -fs "http://127.0.0.1:$((RB + 1))/" | cmp -s - web/index.html || why="GET / on the shared port"; }
        kill -TERM "$SUP"
        rc=""
        for _ in $(seq 1 150); do kill -0 "$SUP" 2>/dev/null || { wait "$SUP"; rc=$?; break; }; sleep 0.1; done
        [ -z "$why" ] && [ "$rc" != 0 ] && why="supervisor exit status '$rc' after SIGTERM"
        [ -z "$why" ] && [ "$(grep -c 'exited with status 0' "$T/workers.log")" != 2 ] && why="workers did not both exit 0"
        if [ -z "$why" ]; then pass installed-workers; else fail installed-workers "$why; log: $(tail -5 "$T/workers.log")"; fi
    else
        skip installed-workers "redis-server not installed"
    fi
else
    fail installed-single-node "no installed binary"
fi

# ---- the .deb
DEB=$ROOT/build-deb
if { cmake -S . -B "$DEB" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr &&
     cmake --build "$DEB" -j2 --target chatd && (cd "$DEB" && rm -f ./*.deb && cpack -G DEB); } >"$T/deb.log" 2>&1; then
    f=$(ls "$DEB"/chatd_*.deb 2>/dev/null | head -1)
    info=$(dpkg-deb -I "$f" 2>&1)
    files=$(dpkg-deb -c "$f" | awk '{print $6}')
    why=""
    deps=$(sed -n 's/^ Depends: //p' <<<"$info")
    # lua-cjson, libwebsockets-evlib-uv: loaded at start, not linked (shlibdeps cannot see them)
    for d in libwebsockets17 libuv1 libhiredis0.14 libpq5 libluajit-5.1-2 libjwt0 libjansson4 lua-cjson \
             libwebsockets-evlib-uv; do
        grep -q "$d" <<<"$deps" || why+=" no $d in Depends;"
    done
    for x in ./usr/bin/chatd ./etc/chatd/scripts/policy.lua ./etc/chatd/chatd.env ./usr/share/chatd/web/index.html \
             ./usr/lib/systemd/system/chatd.service; do
        grep -qx "$x" <<<"$files" || why+=" $x not in the package;"
    done
    conff=$(dpkg-deb -e "$f" "$T/debctl" && cat "$T/debctl/conffiles")
    grep -qx /etc/chatd/chatd.env <<<"$conff" && grep -qx /etc/chatd/scripts/policy.lua <<<"$conff" ||
        why+=" conffiles: $conff;"
    dpkg-deb -x "$f" "$T/debroot"
    grep -q "^ExecStart=/usr/bin/chatd$" "$T/debroot/usr/lib/systemd/system/chatd.service" ||
        why+=" the packaged unit does not start /usr/bin/chatd;"
    if [ -z "$why" ]; then pass "deb ($(basename "$f"): Depends: $deps)"; else fail deb "$why"; fi
else
    fail deb "$(tail -10 "$T/deb.log")"
fi

# ---- tools/deps.sh names every program and module the scripts call (a fresh
# Debian 12 has only what it installs): tests/deploy/check_deps.py reads them
check deps-complete "$PY" tests/deploy/check_deps.py

# ---- the browser suite and the Prometheus test take their ports from the
# caller's CHATD_TEST_PORT_LO/HI (tools/test_ports.sh)
check test-ports bash tests/deploy/check_test_ports.sh

# ---- tools/deps.sh refuses an argument it does not know (it would check less)
check deps-usage bash -c 'tools/deps.sh --check >/dev/null 2>&1; [ $? -eq 2 ] && tools/deps.sh --test --bench >/dev/null 2>&1; [ $? -eq 2 ]'

# ---- tools/services.sh: how ./run.sh and the load tests reach a data folder's
# Redis and Postgres over their sockets, and how ./run.sh prints a URL
mksock() { mkdir -p "$(dirname "$1")" && /usr/bin/python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$1"; }
why=""
D="$T/sock dir#1"
got=$(services_redis_unix_url "$D")
[ -z "$got" ] || why+="a Redis URL without a socket: '$got'; "
mksock "$D/redis/redis.sock"
want="unix://${T// /%20}/sock%20dir%231/redis/redis.sock"
got=$(services_redis_unix_url "$D")
[ "$got" = "$want" ] || why+="Redis socket URL '$got', want '$want'; "
mkdir -p "$T/pgabs"
mksock "$T/pgabs/.s.PGSQL.5999"
echo "$T/pgabs" >"$D/postgres.datadir"
got=$(services_pg_unix_conninfo "$D" 5999)
[ "$got" = "host='$T/pgabs' port=5999 user=postgres dbname=chatd" ] || why+="Postgres conninfo '$got'; "
got=$(services_pg_unix_conninfo "$D" 5998)
[ -z "$got" ] || why+="a Postgres conninfo without a socket on that port: '$got'; "
echo "pgabs" >"$D/postgres.datadir"
got=$(cd "$T" && services_pg_unix_conninfo "$D" 5999)
[ -z "$got" ] || why+="a relative socket directory taken: '$got'; "
mkdir -p "$T/pg'q"
mksock "$T/pg'q/.s.PGSQL.5999"
echo "$T/pg'q" >"$D/postgres.datadir"
got=$(services_pg_unix_conninfo "$D" 5999)
[ -z "$got" ] || why+="a socket directory with a quote taken: '$got'; "
for c in 'redis://:s3cr3t@h:6379/0|redis://:***@h:6379/0' 'unix://al:pw@/tmp/r.sock|unix://al:***@/tmp/r.sock' \
         'host=/x password=pw dbname=d|host=/x password=*** dbname=d' 'postgresql://u:pw@h/db|postgresql://u:***@h/db' \
         'redis://127.0.0.1:6390|redis://127.0.0.1:6390'; do
    got=$(services_redact_url "${c%%|*}")
    [ "$got" = "${c#*|}" ] || why+="redacted '${c%%|*}' as '$got'; "
done
if [ -z "$why" ]; then pass services-socket-urls; else fail services-socket-urls "$why"; fi

# ---- tools/services.sh: the Redis ./run.sh starts (REDIS_APPENDFSYNC)
if command -v redis-server >/dev/null; then
    SB=$(port_block 3)
    why=""
    for mode in always everysec; do
        if (unset SERVICES_FAST; REDIS_APPENDFSYNC=$mode services_start_redis "$T/svc-$mode" "$SB"); then
            PIDS+=("$(cat "$T/svc-$mode/redis.pid")")
            got=$(redis-cli -p "$SB" CONFIG GET appendfsync | tail -1)
            [ "$got" = "$mode" ] || why+="REDIS_APPENDFSYNC=$mode gave appendfsync '$got'; "
            [ "$(redis-cli -p "$SB" CONFIG GET appendonly | tail -1)" = yes ] || why+="$mode: appendonly off; "
            redis-cli -p "$SB" shutdown nosave >/dev/null 2>&1
            for _ in $(seq 1 50); do redis-cli -p "$SB" ping >/dev/null 2>&1 || break; sleep 0.1; done
        else
            why+="services_start_redis failed with REDIS_APPENDFSYNC=$mode; "
        fi
    done
    out=$( (unset SERVICES_FAST; REDIS_APPENDFSYNC=no services_start_redis "$T/svc-bad" "$((SB + 1))") 2>&1) &&
        why+="REDIS_APPENDFSYNC=no was accepted; "
    case $out in *"must be always or everysec"*) ;; *) why+="no clear refusal of REDIS_APPENDFSYNC=no ($out); " ;; esac
    [ -e "$T/svc-bad/redis.pid" ] && why+="a refused setting still started Redis; "
    if [ -z "$why" ]; then pass services-redis-appendfsync; else fail services-redis-appendfsync "$why"; fi
else
    skip services-redis-appendfsync "redis-server not installed"
fi

# ---- ./run.sh (the user's command) keeps its services durable: Postgres
# with fsync, synchronous_commit and full_page_writes on, Redis appendfsync
# always (and chatd reaches both over their unix sockets) -- even when the caller's environment has the test suite's
# SERVICES_FAST=1 (tools/services.sh turns durability off for tests only)
if command -v redis-server >/dev/null && [ -x "${PGBIN:-/usr/lib/postgresql/15/bin}/postgres" ]; then
    RB=$(port_block 3)
    why=""
    SERVICES_FAST=1 CHATD_DATA="$T/runsh" CHAT_LISTEN="127.0.0.1:$RB" CHATD_REDIS_PORT=$((RB + 1)) \
        CHATD_PG_PORT=$((RB + 2)) setsid ./run.sh >"$T/runsh.log" 2>&1 &
    RUNSH=$!
    up=""
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$RB/healthz" >/dev/null 2>&1 && { up=1; break; }
        kill -0 "$RUNSH" 2>/dev/null || break
        sleep 0.2
    done
    if [ -n "$up" ]; then
        for k in fsync synchronous_commit full_page_writes; do
            got=$(psql -h 127.0.0.1 -p $((RB + 2)) -U postgres -tAc "SHOW $k" 2>&1)
            [ "$got" = on ] || why+="Postgres $k is '$got'; "
        done
        got=$(redis-cli -p $((RB + 1)) CONFIG GET appendfsync | tail -1)
        [ "$got" = always ] || why+="Redis appendfsync is '$got'; "
        # and chatd reaches both over their unix sockets (docs/cost.md section 20):
        # Redis lists such a client by its socket's path, Postgres without an address
        got=$(redis-cli -p $((RB + 1)) CLIENT LIST | grep -c ' addr=/' || true)
        [ "$got" -ge 2 ] || why+="$got Redis clients over the unix socket (want chatd's, 2 or more); "
        got=$(psql -h 127.0.0.1 -p $((RB + 2)) -U postgres -tAc "SELECT count(*) FROM pg_stat_activity \
WHERE datname = 'chatd' AND backend_type = 'client backend' AND client_addr IS NULL" 2>&1)
        [ "$got" -ge 1 ] 2>/dev/null || why+="'$got' Postgres sessions over the unix socket (want chatd's); "
    else
        why+="./run.sh did not serve /healthz (tail: $(tail -3 "$T/runsh.log" | tr '\n' ' ')); "
    fi
    kill -TERM -- "-$RUNSH" 2>/dev/null   # its trap stops chatd, Redis and Postgres
    for _ in $(seq 1 100); do kill -0 "$RUNSH" 2>/dev/null || break; sleep 0.1; done
    if [ -z "$why" ]; then pass run-sh-durable; else fail run-sh-durable "$why"; fi
else
    skip run-sh-durable "redis-server or postgres not installed"
fi

# ---- the demo, non-interactive
DB=$(port_block 6)
if command -v nginx >/dev/null; then
    check demo-short env DEMO_PORT_BASE="$DB" tools/demo.sh --short
else
    check demo-short-no-tls env DEMO_PORT_BASE="$DB" tools/demo.sh --short --no-tls
    skip demo-tls-front "nginx not installed: the demo ran without its TLS front"
fi

line="$PASS passed, $FAIL failed"
[ "$SKIP" -gt 0 ] && line+=", $SKIP skipped"
echo "$line"
[ "$FAIL" -eq 0 ]
