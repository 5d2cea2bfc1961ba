#!/usr/bin/env bash
# Scale (issue 17 point 8): meshd on 4, 8 and 16 hosts of the multi-host test bed (network namespaces;
# needs root), one meshd and one meshd-sim-engine per host, mDNS discovery (no static peers): time until
# every node sees every other, mesh traffic per node per second (bytes and packets on each host's veth)
# idle and under a bounded load, meshd CPU per node; static-seed formation for comparison. Writes
# benches/scale.md and benches/scale.json.
#
#   sudo benches/scale.sh                                   release builds of meshd, meshctl, the sim; ~5 min
#   MESHD_BIN=... MESHCTL_BIN=... SIM_BIN=... benches/scale.sh --sizes 4,8,16 --idle-s 20 --load-s 20 --rate 24
#
# Traffic stays on the bed's private bridge (198.18.0.0/24) and each host's loopback; the bed is torn
# down on exit, Ctrl-C or failure.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
NEEDS_LLAMA=0 NEEDS_SIM=1 . "$HERE/meshd_bins.sh"
PY="$("$ROOT/tools/e2e-venv.sh")"   # the test bed helpers need httpx
exec "$PY" "$HERE/scale.py" --meshd "$MESHD_BIN" --meshctl "$MESHCTL_BIN" --sim "$SIM_BIN" \
  --command "benches/scale.sh${*:+ $*}" "$@"
