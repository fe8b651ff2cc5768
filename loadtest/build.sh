#!/usr/bin/env bash
# Builds chatload, sendfloor, malloc_count.so and apiload into loadtest/bin/.
set -euo pipefail
cd "$(dirname "$0")"
make -s all
