#!/usr/bin/env bash
# Builds chatload, sendfloor and malloc_count.so into loadtest/bin/.
set -euo pipefail
cd "$(dirname "$0")"
make -s all
