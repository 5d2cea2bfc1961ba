#!/usr/bin/env bash
# What sharing the caches costs a 16-node mesh (issue 14: at most 1 % of a core): 16 meshd nodes on
# loopback with sim engines, the same load with routing.cache_deltas false and true in alternating
# rounds, the meshd processes' CPU compared. Writes benches/cache-deltas.md and benches/cache-deltas.json.
#
#   benches/cache_deltas.sh                 release builds of meshd, meshctl, the sim; about 6 minutes
#   MESHD_BIN=... MESHCTL_BIN=... SIM_BIN=... benches/cache_deltas.sh --rounds 3    (see --help)
#
# Only 127.0.0.1 is used; every process is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
NEEDS_LLAMA=0 NEEDS_SIM=1 . "$HERE/meshd_bins.sh"
exec python3 "$HERE/cache_deltas.py" --meshd "$MESHD_BIN" --meshctl "$MESHCTL_BIN" --sim "$SIM_BIN" \
  --command "benches/cache_deltas.sh${*:+ $*}" "$@"
