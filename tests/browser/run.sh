#!/usr/bin/env bash
# Runs the browser tests (run.mjs) in real Chromium: installs playwright-core from the lock
# file first when node_modules is missing. Extra environment: see the header of run.mjs.
set -euo pipefail
cd "$(dirname "$0")"
# WEB_TEST_PORT_BASE from the caller's CHATD_TEST_PORT_LO/HI, when given and it is not
. ../../tools/test_ports.sh
test_ports_derive || { echo "0 passed, 1 failed"; exit 1; }
if [ ! -d node_modules/playwright-core ]; then
    npm ci --no-audit --no-fund >/dev/null 2>&1 || npm install --no-audit --no-fund
fi
exec node run.mjs "$@"
