#!/usr/bin/env bash
# Sets up and runs one meshd node in the foreground (Ctrl-C stops it).
#   tools/run-node.sh [CONFIG.yaml]
# - installs the system libraries meshd links (libzmq, libavahi-client, libcurl) if missing,
# - builds meshd and meshctl (release, the Swift runtime linked in, as the Debian package is),
# - uses CONFIG, else /etc/meshd/meshd.yaml, else: if Ollama (127.0.0.1:11434) or a llama-server
#   (127.0.0.1:8080) answers, meshd's built-in defaults serve them; if neither does, it builds
#   llama.cpp and a tiny random-weight model and lets meshd manage a llama-server for it, so the
#   node answers out of the box on http://127.0.0.1:11435 (OpenAI /v1 and Ollama /api).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export MESHD_CACHE="${MESHD_CACHE:-$HOME/.cache/meshd}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=()
for p in libzmq3-dev libavahi-client-dev libcurl4-openssl-dev libsqlite3-dev pkg-config; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "building meshd (release)..." >&2
swift build -c release --static-swift-stdlib --product meshd 2>&1 | grep -vE '^warning: prohibited flag' >&2
swift build -c release --static-swift-stdlib --product meshctl 2>&1 | grep -vE '^warning: prohibited flag' >&2
BIN="$(swift build -c release --static-swift-stdlib --show-bin-path)"

CONFIG="${1:-}"
if [ -z "$CONFIG" ] && [ -f /etc/meshd/meshd.yaml ]; then CONFIG=/etc/meshd/meshd.yaml; fi
SOCK="${XDG_RUNTIME_DIR:-$MESHD_CACHE}/meshd.sock"
if [ -z "$CONFIG" ]; then
  if curl -sf -m 1 http://127.0.0.1:11434/api/version >/dev/null 2>&1 || curl -sf -m 1 http://127.0.0.1:8080/health >/dev/null 2>&1; then
    CONFIG="$MESHD_CACHE/meshd-autodetect.yaml"
    mkdir -p "$MESHD_CACHE"
    printf 'state_dir: %s/state\nadmin: { socket: %s }\n' "$MESHD_CACHE" "$SOCK" > "$CONFIG"
    echo "found a local engine; meshd will auto-detect it" >&2
  else
    echo "no local engine found: building llama.cpp and a tiny model for a managed llama-server (first run ~8 min)..." >&2
    command -v cmake >/dev/null || { $SUDO apt-get install -y -qq cmake >/dev/null; }
    LLAMA="$(tools/build-llama.sh)"
    MODEL="$(tools/make-tiny-model.sh)"
    CONFIG="$MESHD_CACHE/meshd-node.yaml"
    cat > "$CONFIG" <<YAML
# written by tools/run-node.sh: a managed llama-server with the tiny test model
state_dir: $MESHD_CACHE/state
admin: { socket: $SOCK }
engines:
  - { kind: llama.cpp, model: $MODEL, alias: meshd-tiny, binary: $LLAMA/llama-server, args: ["-c", "512", "-t", "1"] }
YAML
  fi
fi
echo "meshd: config $CONFIG; API on http://127.0.0.1:11435 (unless the config says otherwise); meshctl --socket $SOCK status" >&2
exec "$BIN/meshd" --config "$CONFIG"
