#!/usr/bin/env bash
# What batching fast streams (http.stream_coalesce_ms) costs a reader: the gaps between tokens a
# client receives, direct from the sim engine, through meshd by default, and through meshd with
# stream_coalesce_ms 0, with the engine at each of TPS_LIST tokens/s. Writes benches/stream-gaps.md
# (~20 s after the build).
#
#   benches/stream_gaps.sh                               # release build first
#   SKIP_BUILD=1 TPS_LIST="400" benches/stream_gaps.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TPS_LIST="${TPS_LIST:-1000 100}"
OUT="${OUT_DIR:-$HERE}/stream-gaps.md"
cd "$ROOT"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  swift build -c release --static-swift-stdlib --product meshd >&2
  swift build -c release --static-swift-stdlib --product meshd-sim-engine >&2
fi
BIN="$(swift build -c release --static-swift-stdlib --show-bin-path)"
WORK_PREFIX=meshd-gaps
. "$HERE/bench_work.sh"
wait_model() { local i; for i in $(seq 150); do curl -sf --max-time 2 "$1/v1/models" | grep -q '"sim"' && return 0; sleep 0.2; done; return 1; }

start_sim() {  # start_sim TPS -> SIM_PORT, SIM_PID
  SIM_PORT="$(free_port)"
  "$BIN/meshd-sim-engine" --host 127.0.0.1 --port "$SIM_PORT" --models sim --loaded sim --gen-tps "$1" \
    --prompt-tps 0 --latency-ms 0 --slots 8 >"$WORK/sim-$1.log" 2>&1 &
  SIM_PID=$!; PIDS+=("$SIM_PID")
  wait_model "http://127.0.0.1:$SIM_PORT" || { echo "sim engine did not start" >&2; exit 1; }
}
start_meshd() {  # start_meshd NAME EXTRA_HTTP -> M_PORT, M_PID
  local dir="$WORK/$1"; mkdir -p "$dir/state"
  M_PORT="$(free_port)"
  cat >"$dir/meshd.yaml" <<YAML
node: { name: $1 }
state_dir: "$dir/state"
http: { listen: "127.0.0.1:$M_PORT"$2 }
admin: { socket: "$dir/meshd.sock" }
engines:
  - { kind: openai, url: "http://127.0.0.1:$SIM_PORT" }
mesh: { listen: "127.0.0.1:$(free_port)" }
discovery: { mdns: false }
YAML
  "$BIN/meshd" --config "$dir/meshd.yaml" >"$dir/meshd.log" 2>&1 &
  M_PID=$!; PIDS+=("$M_PID")
  wait_model "http://127.0.0.1:$M_PORT" || { echo "meshd $1 not ready: $(tail -n 5 "$dir/meshd.log")" >&2; exit 1; }
}
{
  echo "# Gaps between received tokens (benches/stream_gaps.sh)"
  echo
  echo "On \`$(git -C "$ROOT" rev-parse --short HEAD)\`, $(nproc) cores. 400-token streams, 3 rounds (ABBA); gaps in ms between"
  echo "consecutive content events as the client read them. meshd: as configured by default (fast streams read"
  echo "in batches, \`http.stream_coalesce_ms\` 5); meshd-each: \`stream_coalesce_ms: 0\`. Re-run: \`benches/stream_gaps.sh\`."
  echo
} >"$OUT"
for tps in $TPS_LIST; do
  start_sim "$tps"
  start_meshd "meshd-$tps" ""
  DEFAULT_PORT="$M_PORT"; DEFAULT_PID="$M_PID"
  start_meshd "each-$tps" ", stream_coalesce_ms: 0"
  python3 "$HERE/stream_gaps.py" "$OUT" "$tps" "direct=$SIM_PORT" "meshd=$DEFAULT_PORT" "meshd-each=$M_PORT"
  kill "$SIM_PID" "$DEFAULT_PID" "$M_PID" 2>/dev/null || true
done
