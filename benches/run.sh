#!/usr/bin/env bash
# meshd benchmarks: added latency, requests/s and streaming throughput through meshd vs straight
# to the engine. One command; writes benches/results.md and benches/results.json.
#
#   benches/run.sh            build meshd + meshd-sim-engine (release), run everything (~4-5 min
#                             after the build), print a summary
#
# Environment knobs (defaults in brackets):
#   ROUNDS [5]          interleaved direct/meshd rounds per backend and connection count
#   SECS [3]            seconds per wrk run
#   CONNS [1,8]         wrk connection counts (1 = latency, 8 = throughput)
#   STREAM_N [5]        streamed sim requests per target for the per-chunk cost
#   LLAMA_STREAM_N [20] streamed llama-server requests per target for tokens/s (a 256-token
#                       stream lasts ~0.15 s here and single-round ratios swing 0.7-1.5, so many)
#   SIM_TOKENS [2000]   tokens per sim stream in the per-chunk measurement
#   LLAMA [auto]        1: require llama-server, 0: skip it, auto: use it when tools/build-llama.sh
#                       has it cached (building it takes ~7 minutes)
#   SKIP_BUILD [0]      1: use the existing release binaries
#   KEEP_WORK [0]       1: keep the temp directory (configs, logs, raw JSONL)
#   OUT_DIR [benches]   where results.md / results.json go
#   MESH [0]            1: afterwards, also run benches/mesh_bench.py (one mesh hop, CURVE on: ~2 min,
#                       writes mesh-results.md/.json); only: run just that one
#
# Everything listens on 127.0.0.1 only; every load loop is bounded in count and time; every
# process the script starts is stopped on exit, error or Ctrl-C.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
ROUNDS="${ROUNDS:-5}"
SECS="${SECS:-3}"
CONNS="${CONNS:-1,8}"
STREAM_N="${STREAM_N:-5}"
LLAMA_STREAM_N="${LLAMA_STREAM_N:-20}"
SIM_TOKENS="${SIM_TOKENS:-2000}"
LLAMA="${LLAMA:-auto}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP_WORK="${KEEP_WORK:-0}"
OUT_DIR="${OUT_DIR:-$HERE}"
MESH="${MESH:-0}"
if [ "$MESH" = only ]; then
  exec env SKIP_BUILD="$SKIP_BUILD" KEEP_WORK="$KEEP_WORK" OUT_DIR="$OUT_DIR" python3 "$HERE/mesh_bench.py"
fi
NGINX_MODEL="bench-static"
SIM_MODEL="sim"
LLAMA_MODEL="meshd-tiny"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in wrk nginx curl python3; do
  command -v "$tool" >/dev/null || die "$tool missing (apt-get install nginx-light wrk curl python3)"
done

WORK="$(mktemp -d /tmp/meshd-bench.XXXXXX)"
RAW="$WORK/raw.jsonl"
: >"$RAW"
STARTED_PIDS=()

stop_pid() {  # stop_pid PID: TERM, wait up to 5 s, then KILL
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${STARTED_PIDS[$i]}"
  done
  if [ "$KEEP_WORK" = 1 ] || [ "$rc" != 0 ]; then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_http() {  # wait_http URL SECONDS [EXPECTED_STATUS]
  local url="$1" secs="$2" want="${3:-200}" deadline code
  deadline=$((SECONDS + secs))
  while [ "$SECONDS" -lt "$deadline" ]; do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)"
    [ "$code" = "$want" ] && return 0
    sleep 0.2
  done
  return 1
}

# ---------------------------------------------------------------- build
BENCH_T0=$SECONDS
cd "$ROOT"
if [ "$SKIP_BUILD" != 1 ]; then
  for product in meshd meshd-sim-engine; do
    ok=0
    for attempt in 1 2 3; do
      log "swift build -c release --static-swift-stdlib --product $product (attempt $attempt; SwiftPM may wait for another build's lock)"
      if swift build -c release --static-swift-stdlib --product "$product" >"$WORK/build-$product.log" 2>&1; then ok=1; break; fi
      log "build failed (tail below); the tree may be mid-edit by someone else, retrying in 30 s"
      tail -n 15 "$WORK/build-$product.log" >&2
      sleep 30
    done
    [ "$ok" = 1 ] || die "release build of $product failed; see $WORK/build-$product.log"
  done
fi
BIN="$(swift build -c release --static-swift-stdlib --show-bin-path)"
MESHD="$BIN/meshd"
SIM="$BIN/meshd-sim-engine"
[ -x "$MESHD" ] && [ -x "$SIM" ] || die "release binaries missing in $BIN"
BUILD_S=$((SECONDS - BENCH_T0))
BENCH_T0=$SECONDS
log "binaries: $BIN (build step ${BUILD_S}s)"

# ---------------------------------------------------------------- backends
start_nginx() {
  local dir="$WORK/nginx"
  NGINX_PORT="$(free_port)"
  mkdir -p "$dir/logs" "$dir/tmp"
  sed -e "s|@PORT@|$NGINX_PORT|g; s|@PREFIX@|$dir|g; s|@MODEL@|$NGINX_MODEL|g" \
    "$HERE/nginx.conf.in" >"$dir/nginx.conf"
  # The config sets master_process off: one nginx process serves (like worker_processes 1) and
  # it is the pid we stop, so nothing can outlive the script.
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" \
    >"$dir/logs/stdout.log" 2>&1 &
  NGINX_PID=$!
  STARTED_PIDS+=("$NGINX_PID")
  wait_http "http://127.0.0.1:$NGINX_PORT/v1/models" 10 || die "nginx did not start: $(cat "$dir/logs/error.log")"
  log "nginx pid $NGINX_PID on 127.0.0.1:$NGINX_PORT"
}

start_sim() {
  local pf="$WORK/sim.port"
  "$SIM" --host 127.0.0.1 --port 0 --port-file "$pf" --models "$SIM_MODEL" --loaded "$SIM_MODEL" \
    --gen-tps 0 --prompt-tps 0 --latency-ms 0 --slots 16 --queue 256 --max-tokens 8 \
    >"$WORK/sim.log" 2>&1 &
  SIM_PID=$!
  STARTED_PIDS+=("$SIM_PID")
  for _ in $(seq 100); do [ -s "$pf" ] && break; sleep 0.1; done
  [ -s "$pf" ] || die "sim engine did not start: $(cat "$WORK/sim.log")"
  SIM_PORT="$(tr -d '[:space:]' <"$pf")"
  wait_http "http://127.0.0.1:$SIM_PORT/v1/models" 10 || die "sim engine not answering"
  log "sim engine pid $SIM_PID on 127.0.0.1:$SIM_PORT"
}

LLAMA_OK=0
start_llama() {
  local bindir gguf
  if [ "$LLAMA" = 0 ]; then log "llama-server skipped (LLAMA=0)"; return 0; fi
  if [ "$LLAMA" = auto ] && [ ! -f "${MESHD_CACHE:-$HOME/.cache/meshd}/llama_cpp_python-${LLAMA_CPP_PY_VERSION:-0.3.36}/.meshd-built" ]; then
    log "llama-server not built yet (tools/build-llama.sh takes ~7 min); skipped. LLAMA=1 to build it."
    return 0
  fi
  bindir="$("$ROOT/tools/build-llama.sh")" || die "tools/build-llama.sh failed"
  gguf="$("$ROOT/tools/make-tiny-model.sh")" || die "tools/make-tiny-model.sh failed"
  LLAMA_BIN="$bindir/llama-server"
  LLAMA_GGUF="$gguf"
  LLAMA_PORT="$(free_port)"
  "$LLAMA_BIN" -m "$gguf" -c 512 -t 1 --alias "$LLAMA_MODEL" --host 127.0.0.1 --port "$LLAMA_PORT" \
    >"$WORK/llama.log" 2>&1 &
  LLAMA_PID=$!
  STARTED_PIDS+=("$LLAMA_PID")
  wait_http "http://127.0.0.1:$LLAMA_PORT/health" 60 || die "llama-server did not become healthy: $(tail -n 20 "$WORK/llama.log")"
  LLAMA_OK=1
  log "llama-server pid $LLAMA_PID on 127.0.0.1:$LLAMA_PORT ($gguf)"
}

# ---------------------------------------------------------------- meshd
start_meshd() {  # start_meshd NAME ENGINE_URL MODEL  -> MESHD_PID, MESHD_URL
  local name="$1" engine="$2" model="$3" port mport dir
  dir="$WORK/meshd-$name"
  mkdir -p "$dir/state"
  port="$(free_port)"
  mport="$(free_port)"
  cat >"$dir/meshd.yaml" <<EOF
node: { name: bench }
state_dir: "$dir/state"
http: { listen: "127.0.0.1:$port" }
admin: { socket: "$dir/meshd.sock" }
engines:
  - { kind: openai, url: "$engine" }
mesh: { listen: "127.0.0.1:$mport" }
discovery: { mdns: false }
EOF
  "$MESHD" --config "$dir/meshd.yaml" >"$dir/meshd.log" 2>&1 &
  MESHD_PID=$!
  STARTED_PIDS+=("$MESHD_PID")
  MESHD_URL="http://127.0.0.1:$port"
  wait_http "$MESHD_URL/readyz" 30 || die "meshd ($name) not ready: $(tail -n 20 "$dir/meshd.log")"
  # The model must be routable and meshd must really be the one answering.
  curl -sf --max-time 5 "$MESHD_URL/v1/models" | grep -q "\"$model\"" || die "meshd ($name) does not list $model"
  local hdr
  hdr="$(curl -s -D - -o "$dir/check-body.json" --max-time 10 -H 'Content-Type: application/json' \
    -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":8}" \
    "$MESHD_URL/v1/chat/completions" | tr -d '\r')"
  echo "$hdr" | head -n1 | grep -q ' 200' || die "meshd ($name) check request failed: $hdr $(cat "$dir/check-body.json")"
  echo "$hdr" | grep -qi '^X-Meshd-Node: bench' || die "meshd ($name) answer lacks X-Meshd-Node: $hdr"
  log "meshd ($name) pid $MESHD_PID on $MESHD_URL -> $engine (X-Meshd-Node verified)"
}

stop_meshd() {
  stop_pid "$MESHD_PID"
}

meshd_requests_total() {  # sum of meshd_requests_total from /metrics
  curl -s --max-time 5 "$MESHD_URL/metrics" | awk '/^meshd_requests_total/ {s += $NF} END {printf "%d\n", s}'
}

busy_now() {  # the 4 busiest processes over the last second (co-tenant noise), one line
  top -b -n 2 -d 1 -w 200 2>/dev/null | awk '/^top -/ {n++} n==2 && $1 ~ /^[0-9]+$/ && c < 4 {printf "%s %s%%; ", $12, $9; c++}'
}

emit_meta() {  # key=value pairs into the raw file as a META line
  python3 - "$@" >>"$RAW" <<'PY'
import json, sys
d = {}
for kv in sys.argv[1:]:
    k, _, v = kv.partition("=")
    d[k] = v
print("META " + json.dumps(d))
PY
}

wrk_section() {  # wrk_section BACKEND DIRECT_URL MODEL ENGINE_PID
  local backend="$1" direct="$2" model="$3" epid="$4" before after
  before="$(meshd_requests_total)"
  python3 "$HERE/wrk_rounds.py" --backend "$backend" --direct "$direct" --meshd "$MESHD_URL" \
    --model "$model" --pid-meshd "$MESHD_PID" --pid-engine "$epid" --rounds "$ROUNDS" --conns "$CONNS" \
    --secs "$SECS" --script "$HERE/chat.lua" --budget 150 >>"$RAW"
  after="$(meshd_requests_total)"
  emit_meta "kind=meshd_counter" "backend=$backend" "before=$before" "after=$after"
}

# ---------------------------------------------------------------- run
log "work dir $WORK; rounds=$ROUNDS secs=$SECS conns=$CONNS stream_n=$STREAM_N llama_stream_n=$LLAMA_STREAM_N sim_tokens=$SIM_TOKENS"
emit_meta "kind=run" "rounds=$ROUNDS" "secs=$SECS" "conns=$CONNS" "stream_n=$STREAM_N" "llama_stream_n=$LLAMA_STREAM_N" "sim_tokens=$SIM_TOKENS" \
  "build_s=$BUILD_S" "meshd_bin=$MESHD" "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)" "busy_start=$(busy_now)"

# 1. nginx static answer
start_nginx
start_meshd nginx "http://127.0.0.1:$NGINX_PORT" "$NGINX_MODEL"
log "nginx: interleaved wrk rounds"
wrk_section nginx "http://127.0.0.1:$NGINX_PORT" "$NGINX_MODEL" "$NGINX_PID"
stop_meshd
stop_pid "$NGINX_PID"

# 2. simulated engine
start_sim
start_meshd sim "http://127.0.0.1:$SIM_PORT" "$SIM_MODEL"
log "sim: interleaved wrk rounds"
wrk_section sim "http://127.0.0.1:$SIM_PORT" "$SIM_MODEL" "$SIM_PID"
log "sim: per-chunk relay cost ($SIM_TOKENS-token streams, x$STREAM_N per side)"
python3 "$HERE/stream_bench.py" --mode chunks --direct "http://127.0.0.1:$SIM_PORT" --meshd "$MESHD_URL" \
  --model "$SIM_MODEL" -n "$STREAM_N" --max-tokens "$SIM_TOKENS" --warmup 2 \
  --pid-meshd "$MESHD_PID" --pid-engine "$SIM_PID" --timeout 30 --budget 60 --tag sim >>"$RAW"
stop_meshd
stop_pid "$SIM_PID"

# 3. llama-server streaming tokens/s
start_llama
if [ "$LLAMA_OK" = 1 ]; then
  start_meshd llama "http://127.0.0.1:$LLAMA_PORT" "$LLAMA_MODEL"
  log "llama-server: streamed tokens/s (max_tokens 256, x$LLAMA_STREAM_N per side)"
  python3 "$HERE/stream_bench.py" --mode tokens --direct "http://127.0.0.1:$LLAMA_PORT" --meshd "$MESHD_URL" \
    --model "$LLAMA_MODEL" -n "$LLAMA_STREAM_N" --max-tokens 256 --warmup 1 \
    --pid-meshd "$MESHD_PID" --pid-engine "$LLAMA_PID" --timeout 60 --budget 90 --tag llama >>"$RAW"
  emit_meta "kind=llama" "bin=$LLAMA_BIN" "gguf=$LLAMA_GGUF" \
    "version=$("$LLAMA_BIN" --version 2>&1 | grep -m1 '^version' || true)"
  stop_meshd
  stop_pid "$LLAMA_PID"
fi

emit_meta "kind=end" "bench_s=$((SECONDS - BENCH_T0))" "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" "busy_end=$(busy_now)"
mkdir -p "$OUT_DIR"
python3 "$HERE/report.py" --raw "$RAW" --root "$ROOT" --md "$OUT_DIR/results.md" --json "$OUT_DIR/results.json"
log "done in $((SECONDS - BENCH_T0))s (+${BUILD_S}s build): $OUT_DIR/results.md, $OUT_DIR/results.json"
if [ "$MESH" = 1 ]; then
  log "mesh hop benchmark (benches/mesh_bench.py)"
  # Its own processes, traps and work directory; it also builds meshctl.
  SKIP_BUILD="$SKIP_BUILD" KEEP_WORK="$KEEP_WORK" OUT_DIR="$OUT_DIR" python3 "$HERE/mesh_bench.py"
fi
