#!/usr/bin/env bash
# Writes the tiny random-weight llama model used by tests/benchmarks (tools/make-tiny-gguf.py) and
# prints its path. Cached: instant when the file already exists.
#   tools/make-tiny-model.sh [OUT]   (default ${MESHD_CACHE:-~/.cache/meshd}/models/meshd-tiny.gguf)
# Env: MESHD_CACHE; LLAMA_CPP_DIR (a llama.cpp source tree; default: the tree tools/build-llama.sh
# unpacks, fetched with `build-llama.sh --src-only`, which downloads/extracts but never builds).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${MESHD_CACHE:-$HOME/.cache/meshd}"
OUT="${1:-$CACHE/models/meshd-tiny.gguf}"
if [ -s "$OUT" ]; then
  echo "$OUT"; exit 0
fi
SRC="${LLAMA_CPP_DIR:-}"
if [ -z "$SRC" ]; then
  SRC="$("$HERE/build-llama.sh" --src-only)"
fi
python3 "$HERE/make-tiny-gguf.py" --llama-cpp "$SRC" "$OUT" >/dev/null
echo "$OUT"
