#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian 12 machine with the Swift toolchain
# (apt packages, llama.cpp built from source, the tiny model, a Python venv with the real
# openai/ollama clients), then runs every test: Swift unit/integration tests and the pytest
# suites (ops, simulated engine, end to end). Exits non-zero if anything fails.
#   tools/test.sh            # everything
#   tools/test.sh --swift    # Swift tests only
#   tools/test.sh --py       # pytest suites only (builds what they need)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
MODE="${1:-all}"
export MESHD_CACHE="${MESHD_CACHE:-$HOME/.cache/meshd}"
log() { printf '\n=== %s\n' "$*"; }
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

log "system packages"
need=()
for p in libzmq3-dev libavahi-client-dev libcurl4-openssl-dev libsqlite3-dev cmake systemd pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null || {
    echo "apt-get install ${need[*]} failed" >&2; exit 1; }
fi

log "llama.cpp (llama-server, ggml-rpc-server) and the tiny model"
LLAMA_BIN_DIR="$(tools/build-llama.sh)" || { echo "building llama.cpp failed" >&2; exit 1; }
TINY_GGUF="$(tools/make-tiny-model.sh)" || { echo "making the tiny model failed" >&2; exit 1; }
export LLAMA_BIN_DIR TINY_GGUF
echo "llama: $LLAMA_BIN_DIR"; echo "model: $TINY_GGUF"

log "swift build"
swift build --build-tests 2>&1 | grep -vE '^warning: prohibited flag' || { echo "swift build failed" >&2; exit 1; }
# Make sure the build really succeeded (grep above hides the status).
swift build --build-tests >/dev/null 2>&1 || { swift build --build-tests; exit 1; }
BIN="$(swift build --show-bin-path)"
export MESHD_BIN="$BIN/meshd" MESHCTL_BIN="$BIN/meshctl" SIM_ENGINE_BIN="$BIN/meshd-sim-engine"

status=0
if [ "$MODE" = all ] || [ "$MODE" = --swift ]; then
  log "swift test"
  swift test --skip-build 2>&1 | grep -vE '^warning: prohibited flag'
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if [ "$MODE" = all ] || [ "$MODE" = --py ]; then
  log "python venv (openai, ollama, pytest)"
  PY="$(tools/e2e-venv.sh)" || { echo "creating the venv failed" >&2; exit 1; }
  log "pytest: ops, simulated engine, end to end, mesh"
  "$PY" -m pytest -q -p no:cacheprovider Tests/ops Tests/sim Tests/e2e Tests/mesh
  [ $? -eq 0 ] || status=1
fi

log "done: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
exit $status
