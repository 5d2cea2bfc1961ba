#!/usr/bin/env bash
# Writes a small random-weight llama model used by tests/benchmarks (tools/make-tiny-gguf.py) and
# prints its path. Cached: instant when the file already exists with the same options.
#   tools/make-tiny-model.sh [OUT]   the tiny model (default ${MESHD_CACHE:-~/.cache/meshd}/models/meshd-tiny.gguf)
#   tools/make-tiny-model.sh --shape NAME [OUT] [MAKE-TINY-GGUF OPTIONS...]
#                                    a named shape (default OUT: .../models/meshd-NAME.gguf); options after
#                                    OUT go to make-tiny-gguf.py and override the shape's (--layers, --embd,
#                                    --heads, --heads-kv, --ff, --ctx, --name, --type f32|f16, --seed)
# Shapes (measured on 2 cores, llama-server -t 1, temperature 0):
#   tiny   4 layers, n_embd 64, f32: 17 MB, ~3 s to write; ~1,500 tokens/s (the default)
#   split  16 layers, n_embd 128, n_ff 768, f32: 57 MB, ~3 s to write; ~380 tokens/s. For functional
#          tests of splits over nodes (16 layers divide over 2, 3 or 4 nodes)
#   slow   12 layers, n_embd 1024, 16 heads, n_ff 2816, f16: 440 MB, 7-11 s and ~0.7 GB RAM to write;
#          ~21 ms per token (~46 tokens/s). For benches/split_rpc.sh only, not for tests
# Env: MESHD_CACHE; PYTHON (an interpreter with numpy; default python3); LLAMA_CPP_DIR (a llama.cpp
# source tree; default: the tree tools/build-llama.sh unpacks, fetched with `build-llama.sh --src-only`,
# which downloads/extracts but never builds).
# The options a file was written with (other than the tiny default) are kept next to it in OUT.args;
# a file written with other options is written again.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${MESHD_CACHE:-$HOME/.cache/meshd}"
die() { echo "make-tiny-model: $*" >&2; exit 1; }

SHAPE=tiny
case "${1:-}" in
  --shape) [ $# -ge 2 ] || die "--shape needs a name: tiny, split or slow"; SHAPE="$2"; shift 2 ;;
  --shape=*) SHAPE="${1#--shape=}"; shift ;;
  -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
case "$SHAPE" in
  tiny) SHAPE_ARGS=() ;;
  split) SHAPE_ARGS=(--layers 16 --embd 128 --heads 4 --ff 768 --ctx 512 --name meshd-split) ;;
  slow) SHAPE_ARGS=(--layers 12 --embd 1024 --heads 16 --ff 2816 --ctx 512 --type f16 --name meshd-slow) ;;
  *) die "unknown shape '$SHAPE' (tiny, split or slow)" ;;
esac
OUT="$CACHE/models/meshd-$SHAPE.gguf"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  OUT="$1"; shift
fi
ARGS=("${SHAPE_ARGS[@]}" "$@")  # later options win (argparse)
STAMP="$OUT.args"
if [ -s "$OUT" ]; then
  # A file without a stamp is taken as it is when no options are asked for (caches from before
  # the stamp existed hold the tiny model).
  if { [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${ARGS[*]}" ]; } || { [ ! -f "$STAMP" ] && [ ${#ARGS[@]} -eq 0 ]; }; then
    echo "$OUT"; exit 0
  fi
fi
SRC="${LLAMA_CPP_DIR:-}"
if [ -z "$SRC" ]; then
  SRC="$("$HERE/build-llama.sh" --src-only)"
fi
"${PYTHON:-python3}" "$HERE/make-tiny-gguf.py" --llama-cpp "$SRC" "${ARGS[@]}" "$OUT" >/dev/null
if [ ${#ARGS[@]} -gt 0 ]; then printf '%s' "${ARGS[*]}" >"$STAMP"; else rm -f "$STAMP"; fi
echo "$OUT"
