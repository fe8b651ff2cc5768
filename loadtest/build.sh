#!/usr/bin/env bash
# Builds chatload and sendfloor into loadtest/bin/.
set -euo pipefail
cd "$(dirname "$0")"
make -s all
