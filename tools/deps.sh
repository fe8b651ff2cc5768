#!/usr/bin/env bash
# Installs the Debian packages chatd needs, then CHECKS that every command the
# scripts call exists (a package can be "installed" while the binary a script
# calls is not there, e.g. busted without the luajit interpreter `.busted`
# names). Safe to run again: it installs nothing when everything is there.
#   tools/deps.sh          what ./run.sh needs: build + run (Redis, Postgres)
#   tools/deps.sh --test   plus what ./test.sh and its suites call
#   tools/deps.sh --bench  plus the benchmarks of loadtest/ that ./test.sh does not run
#                          (vs_nchan.sh's peer: nginx + Nchan; gnuplot, jq; the profiling
#                          modes' perf, strace, valgrind) and tests/faults/run.py --netns
#                          (ip, nft; it must also run as root)
#   tools/deps.sh --fresh  plus what tools/fresh-debian.sh needs on the host (debootstrap, git)
# Fails (exit 1) with a line naming each missing command and its package.
#
# To add a dependency: put the package in the array of its purpose and, when a
# script calls a program of it, a "command:package" pair in the CMDS array of
# the same purpose (a path for programs outside PATH, "py:module:package" for a
# module of /usr/bin/python3, "lua:module:package" for a module LuaJIT must load,
# "pc:module:package" for a pkg-config module the build needs, "fuzzer:package"
# for clang's libFuzzer runtime: a one-line target must link). Every entry
# ends with its package (check_deps.py checks the form: a "pc:libuv" without
# one was checked as the command `pc`, Free Pascal's, where that is installed).
# tests/deploy/check_deps.py (run by the deploy suite) reads every test and
# tool script and FAILS naming file:line of a program or module they call that
# no CMDS array here lists (nor its short allowlist of what every Debian has):
# a new command in a test script must come with its entry here.
set -euo pipefail
# one optional argument; anything else is refused (a typo such as --check
# would otherwise check only the build + run set and still say "all present")
if [ $# -gt 1 ] || { [ $# -eq 1 ] && [ "$1" != --test ] && [ "$1" != --bench ] && [ "$1" != --fresh ]; }; then
    echo "usage: tools/deps.sh [--test|--bench|--fresh]" >&2
    exit 2
fi
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

# ---- ./run.sh: build and run
BUILD_PKGS=(build-essential cmake pkg-config libwebsockets-dev libuv1-dev libluajit-5.1-dev
            libhiredis-dev libpq-dev libjwt-dev libjansson-dev libssl-dev)
# lua-cjson: chatd's policy sandbox loads cjson.so at start (through LuaJIT's C module path, so
# the build's shlibdeps cannot see it; without it chatd refuses to start: "module 'cjson' not
# found", found by tools/fresh-debian.sh --run-sh); luajit: the interpreter that checks it loads
RUN_PKGS=(redis-server redis-tools postgresql postgresql-client util-linux coreutils curl
          lua-cjson luajit)
BUILD_CMDS=(cc:build-essential make:build-essential cmake:cmake pkg-config:pkg-config
            pc:libwebsockets:libwebsockets-dev pc:libuv:libuv1-dev pc:hiredis:libhiredis-dev
            pc:libpq:libpq-dev pc:luajit:libluajit-5.1-dev pc:libjwt:libjwt-dev
            pc:jansson:libjansson-dev pc:openssl:libssl-dev)
RUN_CMDS=(redis-server:redis-server redis-cli:redis-tools
          "$PGBIN/initdb:postgresql" "$PGBIN/postgres:postgresql" "$PGBIN/pg_isready:postgresql"
          psql:postgresql-client runuser:util-linux md5sum:coreutils base64:coreutils
          curl:curl luajit:luajit lua:cjson:lua-cjson)

# ---- ./test.sh and its suites (tests/, spec/, loadtest/ as the tests use it)
TEST_UNIT_PKGS=(jq)                    # ctest comes with cmake; jq: the loadtest_median test
TEST_UNIT_CMDS=(ctest:cmake jq:jq)
TEST_LUA_PKGS=(luajit lua-busted lua-cjson lua-filesystem)   # lfs: spec/helpers.lua
TEST_LUA_CMDS=(luajit:luajit busted:lua-busted lua:busted.runner:lua-busted lua:cjson:lua-cjson
               lua:lfs:lua-filesystem)
# cryptography: tests/integration/core.py (RSA keys; python3-jwt only Recommends it)
TEST_PY_PKGS=(python3 python3-websockets python3-jwt python3-cryptography openssl)
TEST_PY_CMDS=(/usr/bin/python3:python3 py:websockets:python3-websockets py:jwt:python3-jwt
              py:cryptography:python3-cryptography openssl:openssl)
# ca-certificates: npm ci fetches playwright-core over https (only Recommended by nodejs)
TEST_BROWSER_PKGS=(chromium nodejs npm ca-certificates)
TEST_BROWSER_CMDS=(chromium:chromium /usr/bin/chromium:chromium node:nodejs npm:npm)
TEST_PROM_PKGS=(prometheus jq)
TEST_PROM_CMDS=(prometheus:prometheus promtool:prometheus jq:jq)
TEST_LOAD_PKGS=(gnuplot-nox procps util-linux)
TEST_LOAD_CMDS=(gnuplot:gnuplot-nox taskset:util-linux chrt:util-linux ps:procps)
TEST_FAULT_PKGS=(redis-tools postgresql-client)   # tests/faults/ (its --netns also needs nftables)
TEST_FAULT_CMDS=(redis-cli:redis-tools psql:postgresql-client /usr/bin/python3:python3
                 py:websockets:python3-websockets py:jwt:python3-jwt)
TEST_CLUSTER_PKGS=(redis-tools)       # redis-cli --cluster (Redis Cluster tests)
TEST_CLUSTER_CMDS=(redis-cli:redis-tools)
# tests/deploy/, tools/demo.sh (objdump: check_files.py runtime-libs; file: cpack's
# CPackDeb runs it to find the binaries for dpkg-shlibdeps)
TEST_DEPLOY_PKGS=(nginx openssl dpkg-dev python3-yaml systemd jq binutils file)
TEST_DEPLOY_CMDS=(nginx:nginx openssl:openssl dpkg-deb:dpkg dpkg-shlibdeps:dpkg-dev cpack:cmake file:file
                  systemd-analyze:systemd py:yaml:python3-yaml jq:jq objdump:binutils)
TEST_FUZZ_PKGS=(clang libclang-rt-14-dev)   # tests/fuzz/: clang and its libFuzzer runtime
TEST_FUZZ_CMDS=(clang:clang fuzzer:libclang-rt-14-dev)   # fuzzer: clang links -fsanitize=fuzzer

# ---- loadtest/ benchmarks that ./test.sh does not run (tools/deps.sh --bench)
# (PROFILE=1: perf; SYSCALLS=1: strace; MASSIF=1: valgrind, ms_print; pgrep; git: commit stamps)
BENCH_PKGS=(nginx libnginx-mod-nchan gnuplot-nox jq procps util-linux curl linux-perf strace valgrind git)
BENCH_CMDS=(nginx:nginx gnuplot:gnuplot-nox jq:jq taskset:util-linux chrt:util-linux curl:curl
            perf:linux-perf strace:strace valgrind:valgrind ms_print:valgrind pgrep:procps git:git)
# tests/faults/run.py --netns (not run by ./test.sh): a network namespace and nftables
NETNS_PKGS=(iproute2 nftables)
NETNS_CMDS=(ip:iproute2 nft:nftables)
# tools/fresh-debian.sh (not run by ./test.sh): a bookworm chroot, this checkout cloned into it
FRESH_PKGS=(debootstrap git)
FRESH_CMDS=(debootstrap:debootstrap git:git)

PKGS=("${BUILD_PKGS[@]}" "${RUN_PKGS[@]}")
CMDS=("${BUILD_CMDS[@]}" "${RUN_CMDS[@]}")
if [ "${1:-}" = "--test" ]; then
    PKGS+=("${TEST_UNIT_PKGS[@]}" "${TEST_LUA_PKGS[@]}" "${TEST_PY_PKGS[@]}" "${TEST_BROWSER_PKGS[@]}"
           "${TEST_PROM_PKGS[@]}" "${TEST_LOAD_PKGS[@]}" "${TEST_FAULT_PKGS[@]}"
           "${TEST_DEPLOY_PKGS[@]}" "${TEST_CLUSTER_PKGS[@]}" "${TEST_FUZZ_PKGS[@]}")
    CMDS+=("${TEST_UNIT_CMDS[@]}" "${TEST_LUA_CMDS[@]}" "${TEST_PY_CMDS[@]}" "${TEST_BROWSER_CMDS[@]}"
           "${TEST_PROM_CMDS[@]}" "${TEST_LOAD_CMDS[@]}" "${TEST_FAULT_CMDS[@]}"
           "${TEST_DEPLOY_CMDS[@]}" "${TEST_CLUSTER_CMDS[@]}" "${TEST_FUZZ_CMDS[@]}")
fi
if [ "${1:-}" = "--bench" ]; then
    PKGS+=("${BENCH_PKGS[@]}" "${NETNS_PKGS[@]}")
    CMDS+=("${BENCH_CMDS[@]}" "${NETNS_CMDS[@]}")
fi
if [ "${1:-}" = "--fresh" ]; then
    PKGS+=("${FRESH_PKGS[@]}")
    CMDS+=("${FRESH_CMDS[@]}")
fi

dedup() { printf '%s\n' "$@" | awk 'NF && !seen[$0]++' | tr '\n' ' '; }
read -r -a PKGS <<<"$(dedup "${PKGS[@]}")"
read -r -a CMDS <<<"$(dedup "${CMDS[@]}")"

# have ENTRY -> 0 when the command/module of a "what:package" entry is there
have() {
    local what=${1%:*}
    case $what in
    pc:*)  pkg-config --exists "${what#pc:}" 2>/dev/null ;;
    py:*)  /usr/bin/python3 -c "import ${what#py:}" >/dev/null 2>&1 ;;
    lua:*) command -v luajit >/dev/null && luajit -e "require '${what#lua:}'" >/dev/null 2>&1 ;;
    /*)    [ -x "$what" ] ;;
    fuzzer) command -v clang >/dev/null &&
            printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n){(void)d;(void)n;return 0;}\n' |
            clang -x c -fsanitize=fuzzer -o /dev/null - >/dev/null 2>&1 ;;
    *)     command -v "$what" >/dev/null 2>&1 ;;
    esac
}
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=() reinstall=()
for p in "${PKGS[@]}"; do
    pkg_installed "$p" || missing+=("$p")
done
# a command missing although its package is installed: install that package again
for c in "${CMDS[@]}"; do
    have "$c" && continue
    p=${c##*:}
    # a module check cannot pass before its interpreter is there: decide after installing
    case $c in lua:*) command -v luajit >/dev/null || continue ;; esac
    # Postgres of another major version: reinstalling does not help (the message says what does)
    case $c in "$PGBIN"/*) pkg_installed "$p" && continue ;; esac
    if pkg_installed "$p"; then reinstall+=("$p"); else missing+=("$p"); fi
done
# node/npm may come from elsewhere (e.g. nodesource, whose nodejs carries npm): do not fight it
if command -v node >/dev/null && command -v npm >/dev/null; then
    keep=()
    for p in "${missing[@]+"${missing[@]}"}"; do [ "$p" = nodejs ] || [ "$p" = npm ] || keep+=("$p"); done
    missing=("${keep[@]+"${keep[@]}"}")
fi
read -r -a missing <<<"$(dedup "${missing[@]+"${missing[@]}"}")"
read -r -a reinstall <<<"$(dedup "${reinstall[@]+"${reinstall[@]}"}")"

if [ ${#missing[@]} -gt 0 ] || [ ${#reinstall[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "deps: to install ${missing[*]} ${reinstall[*]}: run as root, or install sudo" >&2
            exit 1
        fi
        SUDO="sudo"
    fi
    APT=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o DPkg::Lock::Timeout=600)
    # a fresh machine has no package lists: always update before installing
    echo "deps: apt-get update"
    "${APT[@]}" update >/dev/null
    if [ ${#missing[@]} -gt 0 ]; then
        echo "deps: installing ${missing[*]}"
        "${APT[@]}" install "${missing[@]}" >/dev/null
    fi
    if [ ${#reinstall[@]} -gt 0 ]; then
        echo "deps: reinstalling ${reinstall[*]} (installed, but a command of it is missing)"
        "${APT[@]}" install --reinstall "${reinstall[@]}" >/dev/null
    fi
fi

# the check that counts: every command the scripts call, after installing
absent=()
for c in "${CMDS[@]}"; do
    have "$c" || absent+=("$c")
done
if [ ${#absent[@]} -gt 0 ]; then
    for c in "${absent[@]}"; do
        what=${c%:*}
        case $what in
        pc:*)  echo "deps: MISSING pkg-config module ${what#pc:} (package ${c##*:})" >&2 ;;
        py:*)  echo "deps: MISSING python module ${what#py:} for /usr/bin/python3 (package ${c##*:})" >&2 ;;
        lua:*) echo "deps: MISSING lua module ${what#lua:} for luajit (package ${c##*:}$(command -v luajit >/dev/null || echo '; luajit itself is missing'))" >&2 ;;
        fuzzer) echo "deps: MISSING clang's libFuzzer runtime: clang -fsanitize=fuzzer cannot link (package ${c##*:})" >&2 ;;
        "$PGBIN"/*)
               found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ' ')
               echo "deps: MISSING $what (package ${c##*:}; the scripts use Postgres 15, Debian 12's;" \
                    "found: ${found:-none}; another version: export PGBIN=/usr/lib/postgresql/N/bin)" >&2 ;;
        *)     echo "deps: MISSING command $what (package ${c##*:})" >&2 ;;
        esac
    done
    echo "deps: ${#absent[@]} missing after installing; see the lines above" >&2
    exit 1
fi
echo "deps: all present (${#CMDS[@]} commands checked)"
