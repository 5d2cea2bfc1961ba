#!/usr/bin/env bash
# Builds llama.cpp's llama-server and ggml-rpc-server (CPU, GGML_RPC=ON) from the llama.cpp tree
# vendored in the llama-cpp-python sdist (fetched with pip from its configured index; about a
# minute, as pip prepares the sdist's metadata). Cached: a second run prints the paths at once.
#   tools/build-llama.sh            -> prints the directory holding the binaries
#   tools/build-llama.sh --src-only -> downloads/extracts only (no build), prints the llama.cpp tree
# Env: MESHD_CACHE (default ~/.cache/meshd), LLAMA_CPP_PY_VERSION (default 0.3.36), JOBS.
set -euo pipefail
VER="${LLAMA_CPP_PY_VERSION:-0.3.36}"
CACHE="${MESHD_CACHE:-$HOME/.cache/meshd}"
SRC="$CACHE/llama_cpp_python-$VER"
BIN="$SRC/vendor/llama.cpp/build/bin"
JOBS="${JOBS:-$(nproc)}"
SRC_ONLY=0
case "${1:-}" in
  "") ;;
  --src-only) SRC_ONLY=1 ;;
  *) echo "usage: $0 [--src-only]" >&2; exit 2 ;;
esac
if [ "$SRC_ONLY" = 0 ] && [ -x "$BIN/llama-server" ] && [ -x "$BIN/ggml-rpc-server" ] && [ -f "$SRC/.meshd-built" ]; then
  echo "$BIN"; exit 0
fi
mkdir -p "$CACHE"
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
  tmp=$(mktemp -d "$CACHE/dl.XXXXXX")
  # The sdist through pip, the ordinary client, from whatever index pip is configured with.
  python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: "llama-cpp-python==$VER" -d "$tmp" >&2 ||
    { echo "build-llama: pip download llama-cpp-python==$VER failed" >&2; rm -rf "$tmp"; exit 1; }
  [ -f "$tmp/llama_cpp_python-$VER.tar.gz" ] ||
    { echo "build-llama: pip gave no llama_cpp_python-$VER.tar.gz" >&2; rm -rf "$tmp"; exit 1; }
  tar -xzf "$tmp"/llama_cpp_python-"$VER".tar.gz -C "$CACHE"
  rm -rf "$tmp"
fi
if [ "$SRC_ONLY" = 1 ]; then
  echo "$SRC/vendor/llama.cpp"; exit 0
fi
command -v cmake >/dev/null || { echo "build-llama: cmake missing (apt-get install cmake)" >&2; exit 1; }
cd "$SRC/vendor/llama.cpp"
cmake -B build -DGGML_RPC=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DCMAKE_BUILD_TYPE=Release >&2
cmake --build build -j"$JOBS" --target llama-server ggml-rpc-server >&2
touch "$SRC/.meshd-built"
echo "$BIN"
