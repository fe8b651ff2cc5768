#!/usr/bin/env bash
# Optional check (NOT run by ./test.sh or CI: it takes 25+ minutes): does the README's
# test command pass on a FRESH Debian 12, not only on a machine that already has things?
# Builds a minimal bookworm chroot (debootstrap --variant=minbase, once; stricter than
# a real install), clones this repository's HEAD into it and runs `CI=true bash .ci/run`
# there as root, so tools/deps.sh has to install every package itself.
#   sudo tools/fresh-debian.sh                          everything (.ci/run = ./test.sh)
#   sudo CHATD_TEST_ONLY="busted deploy" tools/fresh-debian.sh    some suites
#   sudo tools/fresh-debian.sh --rebuild                build the chroot again first
#   sudo tools/fresh-debian.sh --run-sh [--rebuild]     the README's OTHER command instead: ./run.sh
#        (installs, builds, starts Redis, Postgres and chatd); checked from the host: /healthz,
#        the browser client at /, a dev token, a message sent and acked over a WebSocket
#        (/usr/bin/python3 websockets), then Ctrl-C (SIGINT) stops chatd, Redis and Postgres.
#        Ports: FRESH_LISTEN (127.0.0.1:19480), CHATD_REDIS_PORT (19481), CHATD_PG_PORT (19482)
# env: FRESH_ROOT (the chroot; default /var/tmp/chatd-fresh-bookworm), FRESH_MIRROR (default:
# the host's first deb.debian.org-style URI, else http://deb.debian.org/debian), and what is
# passed into the chroot: CHATD_TEST_ONLY, CHATD_TEST_PORT_LO/HI,
# CHATD_TEST_CLUSTER_PORT_LO/HI, WEB_TEST_PORT_BASE (the browser suite's fixed ports),
# FUZZ_SECONDS. Needs root, debootstrap and git (tools/deps.sh --fresh).
# The host's own CAs (/usr/local/share/ca-certificates/*.crt: a site's TLS-intercepting proxy)
# are copied in, as that network's machines would have them: npm ci reaches the registry.
# It writes only under FRESH_ROOT and unmounts everything it mounted when it exits. The
# chroot shares the host's network: the suites' ports must be free on 127.0.0.1.
# Services that packages start on installation are not started in the chroot
# (usr/sbin/policy-rc.d), so the host's 6379/5432/80 are left alone.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${FRESH_ROOT:-/var/tmp/chatd-fresh-bookworm}
REBUILD=0
RUN_SH=0
for arg in "$@"; do
    case $arg in
        --rebuild) REBUILD=1 ;;
        --run-sh) RUN_SH=1 ;;
        *) echo "usage: tools/fresh-debian.sh [--run-sh] [--rebuild]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "fresh-debian: run as root (debootstrap, mount, chroot)" >&2; exit 2; }
command -v debootstrap >/dev/null && command -v git >/dev/null ||
    { echo "fresh-debian: needs debootstrap and git: tools/deps.sh --fresh installs them" >&2; exit 2; }
case $ROOT in /|/usr|/usr/*|/etc|/etc/*|/root|/home) echo "fresh-debian: FRESH_ROOT=$ROOT?" >&2; exit 2 ;; esac

if [ -z "${FRESH_MIRROR:-}" ]; then
    FRESH_MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -vE '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)
    FRESH_MIRROR=${FRESH_MIRROR:-http://deb.debian.org/debian}
fi

MOUNTED=()   # what this run mounted, unmounted in reverse order on exit
unmount_all() {
    local i m
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        m=${MOUNTED[$i]}
        umount "$m" 2>/dev/null || { sleep 1; umount "$m" 2>/dev/null; } ||
            { echo "fresh-debian: $m busy, detaching it (umount -l)" >&2; umount -l "$m"; }
    done
    MOUNTED=()
}
trap unmount_all EXIT
trap 'exit 130' INT TERM
mnt() {   # mnt TARGET mount-args...
    local target=$1; shift
    mount "$@" "$target"
    MOUNTED+=("$target")
}

# a FRESH_ROOT this script did not build (no debootstrap log of it) is never written to
if [ -d "$ROOT" ] && [ -n "$(ls -A "$ROOT")" ] && [ ! -f "$ROOT/.fresh-debian-debootstrap.log" ]; then
    echo "fresh-debian: $ROOT is not empty and not a chroot of tools/fresh-debian.sh; choose another FRESH_ROOT" >&2
    exit 1
fi
if [ "$REBUILD" = 1 ] && [ -d "$ROOT" ]; then
    # never delete through a mount (a previous run killed by SIGKILL may have left one)
    if grep -qF " $ROOT/" /proc/self/mountinfo; then
        echo "fresh-debian: something is still mounted under $ROOT; unmount it first" >&2; exit 1
    fi
    rm -rf --one-file-system "$ROOT"
fi
if [ ! -x "$ROOT/usr/bin/apt-get" ] || [ ! -f "$ROOT/.fresh-debian-done" ]; then
    echo "== debootstrap --variant=minbase bookworm $ROOT $FRESH_MIRROR"
    mkdir -p "$ROOT"
    debootstrap --variant=minbase bookworm "$ROOT" "$FRESH_MIRROR" >"$ROOT/.fresh-debian-debootstrap.log" 2>&1 ||
        { tail -20 "$ROOT/.fresh-debian-debootstrap.log"; exit 1; }
    # package scripts must not start services in a chroot that shares the host's network
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    # what a fresh Debian server install has in its sources: the updates and security suites
    cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $FRESH_MIRROR bookworm main
deb $FRESH_MIRROR bookworm-updates main
deb ${FRESH_MIRROR%/debian*}/debian-security bookworm-security main
EOF
    # debootstrap writes no /etc/hosts; Debian's installer always does (netcfg)
    [ -f "$ROOT/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
        >"$ROOT/etc/hosts"
    touch "$ROOT/.fresh-debian-done"
fi

mnt "$ROOT/proc" -t proc proc
mnt "$ROOT/sys" -t sysfs sys
mnt "$ROOT/dev" --bind /dev
mnt "$ROOT/dev/pts" --bind /dev/pts
mnt "$ROOT/dev/shm" -t tmpfs -o mode=1777,nosuid,nodev shm
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    # ca-certificates' installation adds them; when a previous run installed it already:
    if [ -x "$ROOT/usr/sbin/update-ca-certificates" ]; then chroot "$ROOT" update-ca-certificates >/dev/null; fi
fi

echo "== clone $(git -C "$REPO" rev-parse --short HEAD) into $ROOT/root/chatd"
rm -rf --one-file-system "$ROOT/root/chatd"
git clone -q --no-hardlinks "$REPO" "$ROOT/root/chatd"
git -C "$ROOT/root/chatd" checkout -q "$(git -C "$REPO" rev-parse HEAD)"

# a clean environment: what root's login shell on a fresh machine has, plus the test knobs
ENV=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb CI=true)
for v in CHATD_TEST_ONLY CHATD_TEST_PORT_LO CHATD_TEST_PORT_HI CHATD_TEST_CLUSTER_PORT_LO \
         CHATD_TEST_CLUSTER_PORT_HI WEB_TEST_PORT_BASE FUZZ_SECONDS; do
    [ -n "${!v:-}" ] && ENV+=("$v=${!v}")
done
if [ "$RUN_SH" = 1 ]; then
    LISTEN=${FRESH_LISTEN:-127.0.0.1:19480}
    ENV+=("CHAT_LISTEN=$LISTEN" "CHATD_REDIS_PORT=${CHATD_REDIS_PORT:-19481}" "CHATD_PG_PORT=${CHATD_PG_PORT:-19482}")
    LOG=$ROOT/.fresh-debian-run-sh.log
    echo "== chroot $ROOT: cd /root/chatd && ./run.sh (log: $LOG)"
    # its own session (process group = RUN_PID), so that Ctrl-C can be sent to it as a terminal
    # does: SIGINT to the whole group. A background job of a script starts with SIGINT ignored,
    # which bash cannot trap again: the wrapper puts back the default a terminal's job has.
    setsid /usr/bin/python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' chroot "$ROOT" /usr/bin/env -i "${ENV[@]}" /bin/bash -c \
        'cd /root/chatd && exec ./run.sh' >"$LOG" 2>&1 &
    RUN_PID=$!
    stop_run() { kill -INT -- "-$RUN_PID" 2>/dev/null || true; }   # (set -e: a failing trap command skips the rest)
    trap 'stop_run; unmount_all' EXIT
    ok=0
    for _ in $(seq 1 1800); do   # a fresh machine installs and builds first: up to 30 min
        grep -q "chatd is running: open http://$LISTEN/" "$LOG" && { ok=1; break; }
        kill -0 "$RUN_PID" 2>/dev/null || break
        sleep 1
    done
    [ "$ok" = 1 ] || { tail -30 "$LOG"; echo "fresh-debian: ./run.sh did not print its URL"; exit 1; }
    grep -F "open http://" "$LOG"
    rc=0
    /usr/bin/python3 - "$LISTEN" <<'PY' || rc=$?
import asyncio, json, sys, time, urllib.request
import websockets
base = "http://" + sys.argv[1]
mid = f"fresh-{time.time_ns()}"   # a new id each run (the same id is a resend: its first seq)
def get(path):
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return r.status, r.read().decode()
st, _ = get("/healthz"); assert st == 200, ("healthz", st)
st, page = get("/"); assert st == 200 and "<html" in page.lower(), ("browser client", st)
st, tok = get("/dev/token?name=fresh"); tok = json.loads(tok)["token"]
async def main():
    async with websockets.connect(f"ws://{sys.argv[1]}/ws/fresh-check?token={tok}") as ws:
        w = json.loads(await asyncio.wait_for(ws.recv(), 10)); assert w["type"] == "welcome", w
        await ws.send(json.dumps({"type": "message", "body": "hello from a fresh Debian", "id": mid}))
        while True:
            f = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if f["type"] == "ack":
                assert f["id"] == mid and f["seq"] >= 1 and not f.get("duplicate"), f
                return f["seq"]
seq = asyncio.run(main())
st, hist = get("/rooms/fresh-check/messages?token=" + tok)
assert st == 200 and "hello from a fresh Debian" in hist, ("history", st, hist[:200])
print(f"fresh-debian: ./run.sh serves /healthz, the browser client, a dev token; message acked as seq {seq}, in history")
PY
    stop_run
    for _ in $(seq 1 300); do kill -0 "$RUN_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$RUN_PID" 2>/dev/null; then echo "fresh-debian: ./run.sh still runs 30 s after Ctrl-C"; rc=1; fi
    left=$(ps -eo pid,args | grep -E "$ROOT/|/root/chatd/(build|\.data)" | grep -v grep || true)
    [ -z "$left" ] || { echo "fresh-debian: left running after Ctrl-C:"; echo "$left"; rc=1; }
    echo "fresh-debian: ./run.sh check exited $rc"
    exit "$rc"
fi
echo "== chroot $ROOT: cd /root/chatd && CI=true bash .ci/run"
rc=0
chroot "$ROOT" /usr/bin/env -i "${ENV[@]}" /bin/bash -c 'cd /root/chatd && bash .ci/run' || rc=$?
echo "fresh-debian: .ci/run exited $rc"
exit "$rc"
