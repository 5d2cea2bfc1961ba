# Sourced by the split benches and cache_routing.sh: MESHD_BIN and MESHCTL_BIN, built in release mode
# unless given, and llama.cpp (tools/build-llama.sh builds it on first use; NEEDS_LLAMA=0 skips it).
# NEEDS_SIM=1 adds SIM_BIN (meshd-sim-engine). Needs ROOT (the repository).
if [ -z "${MESHD_BIN:-}" ] || [ -z "${MESHCTL_BIN:-}" ]; then
  (cd "$ROOT" && swift build -c release --static-swift-stdlib --product meshd >&2 && swift build -c release --static-swift-stdlib --product meshctl >&2)
  BIN="$(cd "$ROOT" && swift build -c release --static-swift-stdlib --show-bin-path)"
  MESHD_BIN="$BIN/meshd"; MESHCTL_BIN="$BIN/meshctl"
fi
if [ "${NEEDS_SIM:-0}" = 1 ] && [ -z "${SIM_BIN:-}" ]; then
  (cd "$ROOT" && swift build -c release --static-swift-stdlib --product meshd-sim-engine >&2)
  SIM_BIN="$(cd "$ROOT" && swift build -c release --static-swift-stdlib --show-bin-path)/meshd-sim-engine"
fi
if [ "${NEEDS_LLAMA:-1}" = 1 ]; then
  "$ROOT/tools/build-llama.sh" >/dev/null
fi
