#!/usr/bin/env bash
# Does reloading a split after a worker restart resend its large tensors? Head A and worker B (meshd
# on loopback), a model with 16 MiB tensors on the worker (4 layers, n_embd 2048, f32, ~1 GB, made
# on first use), B's rpc-server with its `-c` cache: the bytes B's rpc-server received and the time to
# the first answer, cold and after B's meshd was killed and restarted. Writes benches/split-cache.md/.json.
#
#   benches/split_cache.sh                    release build of meshd/meshctl
#   MESHD_BIN=.build/debug/meshd MESHCTL_BIN=.build/debug/meshctl benches/split_cache.sh
#
# Only 127.0.0.1; every process is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
. "$HERE/meshd_bins.sh"
CACHE="${MESHD_CACHE:-$HOME/.cache/meshd}"
MODEL="${MODEL:-$("$ROOT/tools/make-tiny-model.sh" --shape tiny "$CACHE/models/meshd-cache.gguf" \
  --layers 4 --embd 2048 --heads 16 --ff 2048 --type f32 --name meshd-cache)}"
exec python3 "$HERE/split_cache.py" --meshd "$MESHD_BIN" --meshctl "$MESHCTL_BIN" --model "$MODEL"
