#!/usr/bin/env bash
# Issue 17's memory figures (see benches/memory.py): idle RSS, 10,000 idle keep-alive connections,
# a 10-minute soak at steady load. Builds meshd and meshd-sim-engine in release as the package does
# (the Swift runtime linked statically) unless MESHD_BIN and SIM_ENGINE_BIN are given; writes
# benches/memory.md and benches/memory.json.
#
#   benches/memory.sh              (~12 min: 10 min of it is the soak)
#   SOAK_S=120 benches/memory.sh   (a shorter soak)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
if [ -z "${MESHD_BIN:-}" ] || [ -z "${SIM_ENGINE_BIN:-}" ]; then
  for p in meshd meshd-sim-engine; do swift build -c release --static-swift-stdlib --product "$p" 2>&1 | grep -vE '^warning: prohibited flag' | tail -1; done
  RB="$(swift build -c release --static-swift-stdlib --show-bin-path)"
  export MESHD_BIN="$RB/meshd" SIM_ENGINE_BIN="$RB/meshd-sim-engine"
fi
exec python3 "$HERE/memory.py"
