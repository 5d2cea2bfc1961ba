#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian 12 machine with the Swift toolchain
# (apt packages, llama.cpp built from source, the tiny model, a Python venv with the real
# openai/ollama clients), then runs every test: Swift unit/integration tests and the pytest
# suites (ops, simulated engine, end to end, mesh, and the multi-host test bed and a short chaos run on
# it, which need root).
# Exits non-zero if anything fails.
#   tools/test.sh            # everything
#   tools/test.sh --swift    # Swift tests only
#   tools/test.sh --py       # pytest suites only (builds what they need)
#   tools/test.sh --fuzz     # the short libFuzzer run only (tools/fuzz.sh; MESHD_FUZZ_SECONDS per target, 0: skip)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
MODE="${1:-all}"
export MESHD_CACHE="${MESHD_CACHE:-$HOME/.cache/meshd}"
log() { printf '\n=== %s\n' "$*"; }
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

log "system packages"
# iproute2 ... curl: the multi-host test bed (tools/testbed.sh, Tests/testbed); openssl: the fake cloud's test CA (Tests/cloud);
# prometheus: promtool, which checks the alert rules in Config/prometheus (no Prometheus server is started);
# dpkg-dev ... lintian: tools/package-deb.sh and its test (Tests/ops/test_package_deb.py);
# chromium: the dashboard in a real headless browser (Tests/mesh/test_mesh_dashboard.py).
need=()
for p in libzmq3-dev libavahi-client-dev libcurl4-openssl-dev libsqlite3-dev cmake systemd pkg-config \
         iproute2 util-linux dbus avahi-daemon avahi-utils curl openssl prometheus \
         dpkg-dev help2man patchelf lintian chromium; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# Daemons running in the machine's own network namespace (avahi must never run there because of us).
root_daemons() {
  local p root; root="$(readlink /proc/self/ns/net)"
  # One name per pgrep: it matches process names of at most 15 characters, and refuses a longer pattern.
  for p in $(pgrep -x avahi-daemon; pgrep -x dbus-daemon); do
    [ "$(readlink "/proc/$p/ns/net" 2>/dev/null)" = "$root" ] && echo "$p"
  done
}
if [ ${#need[@]} -gt 0 ]; then
  before="$(root_daemons)"
  # Keep the packages' postinst from starting avahi-daemon/dbus on this machine's interfaces.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# tools/test.sh: start no services during this install\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null &&
      $SUDO chmod 755 /usr/sbin/policy-rc.d && own_policy=1
    trap '$SUDO rm -f /usr/sbin/policy-rc.d; exit 130' INT TERM
  fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  rc=$?
  [ $own_policy -eq 1 ] && { $SUDO rm -f /usr/sbin/policy-rc.d; trap - INT TERM; }
  [ $rc -eq 0 ] || { echo "apt-get install ${need[*]} failed" >&2; exit 1; }
  for p in $(root_daemons); do
    if ! grep -qx "$p" <<<"$before"; then
      echo "the install started $(cat "/proc/$p/comm") ($p) in the root namespace: stopping it" >&2
      $SUDO kill "$p"
    fi
  done
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

if { [ "$MODE" = all ] || [ "$MODE" = --swift ] || [ "$MODE" = --fuzz ]; } && [ "${MESHD_FUZZ_SECONDS:-5}" != 0 ]; then
  # A sanitizer build in its own scratch path (.build/fuzz), then a few seconds of each target
  # from the committed corpus: a crash, hang or unbounded allocation fails the suite.
  # MESHD_FUZZ_SECONDS=0 skips it (the corpus is still replayed by swift test).
  log "fuzz: a short libFuzzer run of each target (tools/fuzz.sh)"
  tools/fuzz.sh --seconds "${MESHD_FUZZ_SECONDS:-5}" || status=1
fi

if [ "$MODE" = all ] || [ "$MODE" = --py ]; then
  log "python venv (openai, ollama, pytest)"
  PY="$(tools/e2e-venv.sh)" || { echo "creating the venv failed" >&2; exit 1; }
  log "Open WebUI (a real front end for Tests/mesh/test_mesh_open_webui.py; several minutes the first time)"
  if OWUI_PY="$(tools/owui-venv.sh)"; then
    export OWUI_BIN="$(dirname "$OWUI_PY")/open-webui"
  else
    echo "Open WebUI could not be installed: its tests will be skipped, saying so" >&2
  fi
  # Screenshots the tests take (the dashboard) stay here for people to look at.
  export MESHD_SCREENSHOT_DIR="${MESHD_SCREENSHOT_DIR:-$ROOT/.build/test-screenshots}"
  mkdir -p "$MESHD_SCREENSHOT_DIR"
  echo "screenshots: $MESHD_SCREENSHOT_DIR"
  log "pytest: ops, simulated engine, end to end, mesh, multi-host test bed and a short chaos run (root only)"
  "$PY" -m pytest -q -p no:cacheprovider Tests/ops Tests/sim Tests/e2e Tests/mesh Tests/testbed Tests/chaos
  [ $? -eq 0 ] || status=1
fi

log "done: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
exit $status
