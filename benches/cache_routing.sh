#!/usr/bin/env bash
# Cache-aware routing under load: 4 meshd nodes on loopback, each with a `meshd-sim-engine --cache on`
# (speeds 2x, 1x, 1x, 0.5x; slots 4, 2, 2, 1), every routing policy and a client-side oracle, workloads
# W1 (shared prefix), W2 (chat), W3 (no sharing) at 0.5, 0.8 and 1.0 of the mesh's capacity. Writes
# benches/cache-routing.md and benches/cache-routing.json (--quick: cache-routing-quick.*).
#
#   benches/cache_routing.sh                  release build of meshd, meshctl, the sim (long on 2 cores the first time); ~10 min
#   benches/cache_routing.sh --quick          0.8 load only, fewer prompts: ~2 min
#   MESHD_BIN=... MESHCTL_BIN=... SIM_BIN=... benches/cache_routing.sh    builds you have
#   benches/cache_routing.sh --policies cache-aware,least-busy --workloads W1 --loads 0.8   (see --help)
#
# Only 127.0.0.1 is used; every process is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
NEEDS_LLAMA=0 NEEDS_SIM=1 . "$HERE/meshd_bins.sh"
exec python3 "$HERE/cache_routing.py" --meshd "$MESHD_BIN" --meshctl "$MESHCTL_BIN" --sim "$SIM_BIN" \
  --command "benches/cache_routing.sh${*:+ $*}" "$@"
