#!/usr/bin/env bash
# What meshd's RPC relay costs a split per token, against `split.transport: direct` and against the
# model unsplit: meshd on loopback, the `split` test model (tools/make-tiny-model.sh --shape split,
# 57 MB) split over 2 and 3 of them. Writes benches/split-mesh.md and benches/split-mesh.json.
#   MODEL="$(tools/make-tiny-model.sh --shape slow)" LABEL=split-mesh-slow N_PREDICT=64 benches/split_mesh.sh
#                                             the ~20 ms/token model (issue 13's 0.85x target)
#
#   benches/split_mesh.sh                     release build of meshd/meshctl (long on 2 cores the first time)
#   MESHD_BIN=.build/debug/meshd MESHCTL_BIN=.build/debug/meshctl benches/split_mesh.sh   a build you have
#   ROUNDS=5 N_PREDICT=128 MODEL=path.gguf LABEL=split-mesh    the other knobs [defaults]
#
# Needs llama-server and ggml-rpc-server (tools/build-llama.sh) on PATH or in meshd's cache; only
# 127.0.0.1 is used; every process is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
. "$HERE/meshd_bins.sh"
MODEL="${MODEL:-$("$ROOT/tools/make-tiny-model.sh" --shape split)}"
exec python3 "$HERE/split_mesh.py" --meshd "$MESHD_BIN" --meshctl "$MESHCTL_BIN" --model "$MODEL" \
  --rounds "${ROUNDS:-5}" --n-predict "${N_PREDICT:-128}" --label "${LABEL:-split-mesh}"
