#!/usr/bin/env bash
# The mesh queue's fairness between client keys and its priority header, on release binaries
# (benches/queue_fairness.py says what is measured). Writes benches/queue-fairness.md and .json.
#   benches/queue_fairness.sh                                 release build of meshd and the sim engine
#   MESHD_BIN=... SIM_ENGINE_BIN=... benches/queue_fairness.sh  binaries you have
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
if [ -z "${MESHD_BIN:-}" ] || [ -z "${SIM_ENGINE_BIN:-}" ]; then
  swift build -c release --static-swift-stdlib --product meshd >&2 && swift build -c release --static-swift-stdlib --product meshd-sim-engine >&2
  BIN="$(swift build -c release --static-swift-stdlib --show-bin-path)"
  MESHD_BIN="$BIN/meshd"; SIM_ENGINE_BIN="$BIN/meshd-sim-engine"
fi
exec python3 "$HERE/queue_fairness.py" --meshd "$MESHD_BIN" --sim "$SIM_ENGINE_BIN"
