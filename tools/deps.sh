#!/usr/bin/env bash
# Installs the Debian packages chatd needs to build, run and test, when
# missing. Safe to run again: it does nothing when everything is there.
#   tools/deps.sh          runtime + build packages
#   tools/deps.sh --test   plus what the test suite needs (busted, chromium, ...)
set -euo pipefail
PKGS=(build-essential cmake pkg-config libwebsockets-dev libuv1-dev libluajit-5.1-dev
      lua-cjson libhiredis-dev libpq-dev libjwt-dev libjansson-dev libssl-dev
      redis-server postgresql)
if [ "${1:-}" = "--test" ]; then
    PKGS+=(lua-busted python3-websockets python3-jwt chromium nodejs npm gnuplot-nox
           prometheus procps curl redis-tools   # redis-tools: redis-cli --cluster (cluster tests)
           nginx openssl dpkg-dev python3-yaml systemd jq)   # deploy suite, tools/demo.sh
fi
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm may come from elsewhere (e.g. nodesource); do not fight it
if [ ${#missing[@]} -gt 0 ] && command -v node >/dev/null && command -v npm >/dev/null; then
    keep=(); for p in "${missing[@]}"; do [ "$p" = nodejs ] || [ "$p" = npm ] || keep+=("$p"); done
    missing=("${keep[@]+"${keep[@]}"}")
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "deps: all present"
