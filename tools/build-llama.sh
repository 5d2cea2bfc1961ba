#!/usr/bin/env bash
# Builds llama.cpp's llama-server and ggml-rpc-server (CPU, GGML_RPC=ON) from the llama.cpp tree
# vendored in the llama-cpp-python sdist on PyPI. Cached: a second run prints the paths at once.
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
  # Fetch the sdist file straight from PyPI's simple index: `pip download` would build its
  # metadata (and its build dependencies) first, which takes minutes for nothing.
  python3 - "$VER" "$tmp" <<'PY' >&2
import re, sys, urllib.request, hashlib
ver, out = sys.argv[1], sys.argv[2]
name = f"llama_cpp_python-{ver}.tar.gz"
idx = urllib.request.urlopen("https://pypi.org/simple/llama-cpp-python/", timeout=60).read().decode()
m = re.search(r'href="([^"]*/' + re.escape(name) + r')#sha256=([0-9a-f]+)"', idx)
if not m:
    sys.exit(f"build-llama: {name} not found on PyPI")
data = urllib.request.urlopen(m.group(1), timeout=600).read()
if hashlib.sha256(data).hexdigest() != m.group(2):
    sys.exit("build-llama: sha256 mismatch for " + name)
open(f"{out}/{name}", "wb").write(data)
PY
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
