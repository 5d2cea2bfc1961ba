# Sourced by the split benches: MESHD_BIN and MESHCTL_BIN, built in release mode unless given, and
# llama.cpp (tools/build-llama.sh builds it on first use). Needs ROOT (the repository).
if [ -z "${MESHD_BIN:-}" ] || [ -z "${MESHCTL_BIN:-}" ]; then
  (cd "$ROOT" && swift build -c release --product meshd >&2 && swift build -c release --product meshctl >&2)
  BIN="$(cd "$ROOT" && swift build -c release --show-bin-path)"
  MESHD_BIN="$BIN/meshd"; MESHCTL_BIN="$BIN/meshctl"
fi
"$ROOT/tools/build-llama.sh" >/dev/null
