#!/usr/bin/env bash
# Model copy over the mesh against a plain TCP copy of the same file over the same link (issue 15:
# at least 0.8x), on two hosts of the multi-host test bed (network namespaces; needs root). Writes
# benches/model-copy.md and benches/model-copy.json.
#
#   sudo benches/model_copy.sh                       release builds of meshd and meshctl; a few minutes
#   MESHD_BIN=... MESHCTL_BIN=... benches/model_copy.sh --size-mb 256 --rounds 3 --links raw,1gbit,2500mbit
#
# Traffic stays on the bed's private bridge (198.18.0.0/24); the bed is torn down on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
NEEDS_LLAMA=0 . "$HERE/meshd_bins.sh"
PY="$("$ROOT/tools/e2e-venv.sh")"   # the test bed helpers need httpx
exec "$PY" "$HERE/model_copy.py" --meshd "$MESHD_BIN" --meshctl "$MESHCTL_BIN" \
  --command "benches/model_copy.sh${*:+ $*}" "$@"
