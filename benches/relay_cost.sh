#!/usr/bin/env bash
# What relaying costs meshd, side by side with nginx as a reverse proxy in front of the same
# engine (issue 17, point 7), and the floor of any relay on this machine.
#
#   benches/relay_cost.sh          # release build + ~4 min of measurements (+ llama.cpp's first build)
#
# 1. Floor: benches/relay_floor.c, a C relay over unix sockets, one 100-byte chunk every 2.5 ms,
#    with one thread (epoll on the upstream socket, writes to the client on the same thread) and
#    with two (a reader thread hands each chunk to a writer thread through an eventfd, as meshd's
#    curl thread hands chunks to the NIO event loop that owns the client's connection).
# 2. Paced streams: meshd-sim-engine at TPS tokens/s; CPU per relayed chunk of nginx and meshd
#    (meshd as configured by default, and meshd-each: http.stream_coalesce_ms 0, every chunk read
#    and relayed as it comes).
# 3. Static backend: nginx answering a fixed chat completion (benches/nginx.conf.in); wrk with
#    CONNS connections through nginx-as-proxy and through meshd: requests/s, CPU per request.
# 4. llama-server using every core (-t $(nproc)), tiny model: streamed tokens/s direct, through
#    nginx and through meshd and meshd-each (LLAMA=0 skips it).
# Every comparison runs its targets in ABBA order within one run (benches/relay_cost.py).
#
# Env: TPS [400]; TOKENS [400]; ROUNDS [6]; CONCURRENT [32] streams at once in part 2's second
#      half; CONNS [8]; SECS [3]; LLAMA [1]; SKIP_BUILD=1;
#      OUT_DIR [benches] for relay-cost.{json,md}.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TPS="${TPS:-400}"; TOKENS="${TOKENS:-400}"; ROUNDS="${ROUNDS:-6}"; CONNS="${CONNS:-8}"; SECS="${SECS:-3}"
CONCURRENT="${CONCURRENT:-32}"; LLAMA="${LLAMA:-1}"; OUT_DIR="${OUT_DIR:-$HERE}"
log() { printf '[relay-cost %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
for tool in nginx wrk gcc curl python3; do
  command -v "$tool" >/dev/null || die "$tool missing (apt-get install nginx-light wrk gcc curl python3)"
done
WORK_PREFIX=meshd-relay
. "$HERE/bench_work.sh"
wait_http() { local i; for i in $(seq 150); do curl -sf -o /dev/null --max-time 2 "$1" && return 0; sleep 0.2; done; return 1; }

cd "$ROOT"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  swift build -c release --static-swift-stdlib --product meshd >&2
  swift build -c release --static-swift-stdlib --product meshd-sim-engine >&2
fi
BIN="$(swift build -c release --static-swift-stdlib --show-bin-path)"
gcc -O2 -Wall -o "$WORK/relay_floor" "$HERE/relay_floor.c" -lpthread
RAW="$WORK/raw.jsonl"; : >"$RAW"

start_nginx() {  # start_nginx NAME TEMPLATE UPSTREAM -> NGX_PORT, NGX_PID
  local dir="$WORK/nginx-$1"
  NGX_PORT="$(free_port)"; mkdir -p "$dir/logs" "$dir/tmp"
  sed -e "s|@PORT@|$NGX_PORT|g; s|@PREFIX@|$dir|g; s|@UPSTREAM@|$3|g; s|@MODEL@|bench-static|g" "$2" >"$dir/nginx.conf"
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" >/dev/null 2>&1 &
  NGX_PID=$!; PIDS+=("$NGX_PID")
  wait_http "http://127.0.0.1:$NGX_PORT/v1/models" || die "nginx ($1) did not start: $(cat "$dir/logs/error.log")"
}

start_meshd() {  # start_meshd NAME ENGINE_URL MODEL [STREAM_COALESCE_MS] -> M_PORT, M_PID
  local dir="$WORK/meshd-$1" mesh_port i coalesce=""
  [ -n "${4:-}" ] && coalesce=", stream_coalesce_ms: $4"
  M_PORT="$(free_port)"; mesh_port="$(free_port)"; mkdir -p "$dir/state"
  cat >"$dir/meshd.yaml" <<YAML
node: { name: bench }
state_dir: "$dir/state"
http: { listen: "127.0.0.1:$M_PORT"$coalesce }
admin: { socket: "$dir/meshd.sock" }
engines:
  - { kind: openai, url: "$2" }
mesh: { listen: "127.0.0.1:$mesh_port" }
discovery: { mdns: false }
YAML
  "$BIN/meshd" --config "$dir/meshd.yaml" >"$dir/meshd.log" 2>&1 &
  M_PID=$!; PIDS+=("$M_PID")
  wait_http "http://127.0.0.1:$M_PORT/readyz" || die "meshd ($1) not ready: $(tail -n 20 "$dir/meshd.log")"
  for i in $(seq 100); do curl -sf "http://127.0.0.1:$M_PORT/v1/models" | grep -q "\"$3\"" && return 0; sleep 0.2; done
  die "meshd ($1) does not list $3"
}

log "1/4 floor: C relay, 1 thread and 2 threads, 2000 chunks at 2.5 ms, 3 rounds"
for r in 1 2 3; do
  for mode in 1 2; do timeout 60 "$WORK/relay_floor" "$mode" 2000 2500 | sed 's/^/FLOORJSON /' >>"$RAW"; done
done

log "2/4 paced streams: sim engine at $TPS tokens/s, $ROUNDS rounds of $TOKENS tokens"
SIM_PORT="$(free_port)"
"$BIN/meshd-sim-engine" --host 127.0.0.1 --port "$SIM_PORT" --models sim --loaded sim --gen-tps "$TPS" \
  --prompt-tps 0 --latency-ms 0 --slots 64 --queue 256 >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$SIM_PORT/v1/models" || die "sim engine did not start: $(cat "$WORK/sim.log")"
start_nginx sim "$HERE/nginx-proxy.conf.in" "127.0.0.1:$SIM_PORT"
# meshd-each: the same meshd relaying every chunk as it comes (http.stream_coalesce_ms: 0).
start_meshd sim-each "http://127.0.0.1:$SIM_PORT" sim 0
E_PORT="$M_PORT"; E_PID="$M_PID"
start_meshd sim "http://127.0.0.1:$SIM_PORT" sim
python3 "$HERE/relay_cost.py" --model sim --rounds "$ROUNDS" --max-tokens "$TOKENS" --tag paced \
  --target "direct=http://127.0.0.1:$SIM_PORT" --target "nginx=http://127.0.0.1:$NGX_PORT=$NGX_PID" \
  --target "meshd=http://127.0.0.1:$M_PORT=$M_PID" --target "meshd-each=http://127.0.0.1:$E_PORT=$E_PID" >>"$RAW"
log "2/4 the same with $CONCURRENT streams at once (a gateway relaying many streams)"
python3 "$HERE/relay_cost.py" --model sim --rounds "$ROUNDS" --max-tokens "$TOKENS" --tag paced-many --concurrency "$CONCURRENT" \
  --target "direct=http://127.0.0.1:$SIM_PORT" --target "nginx=http://127.0.0.1:$NGX_PORT=$NGX_PID" \
  --target "meshd=http://127.0.0.1:$M_PORT=$M_PID" --target "meshd-each=http://127.0.0.1:$E_PORT=$E_PID" >>"$RAW"
kill "$M_PID" "$E_PID" "$NGX_PID" 2>/dev/null || true

log "3/4 static backend: wrk -c$CONNS, $ROUNDS rounds of ${SECS}s"
start_nginx static "$HERE/nginx.conf.in" ""
STATIC_PORT="$NGX_PORT"; STATIC_PID="$NGX_PID"
start_nginx proxy "$HERE/nginx-proxy.conf.in" "127.0.0.1:$STATIC_PORT"
start_meshd static "http://127.0.0.1:$STATIC_PORT" bench-static
python3 "$HERE/relay_cost.py" --model bench-static --rounds "$ROUNDS" --wrk "$CONNS" --secs "$SECS" --tag static \
  --target "direct=http://127.0.0.1:$STATIC_PORT" --target "nginx=http://127.0.0.1:$NGX_PORT=$NGX_PID" \
  --target "meshd=http://127.0.0.1:$M_PORT=$M_PID" >>"$RAW"
kill "$M_PID" "$NGX_PID" "$STATIC_PID" 2>/dev/null || true

if [ "$LLAMA" = 1 ]; then
  log "4/4 llama-server -t $(nproc): streamed tokens/s, $ROUNDS rounds of 256 tokens"
  bindir="$("$ROOT/tools/build-llama.sh")" || die "tools/build-llama.sh failed"
  gguf="$("$ROOT/tools/make-tiny-model.sh")" || die "tools/make-tiny-model.sh failed"
  L_PORT="$(free_port)"
  "$bindir/llama-server" -m "$gguf" -c 1024 -t "$(nproc)" --alias meshd-tiny --host 127.0.0.1 --port "$L_PORT" \
    >"$WORK/llama.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$L_PORT/health" || die "llama-server not healthy: $(tail -n 20 "$WORK/llama.log")"
  start_nginx llama "$HERE/nginx-proxy.conf.in" "127.0.0.1:$L_PORT"
  start_meshd llama-each "http://127.0.0.1:$L_PORT" meshd-tiny 0
  E_PORT="$M_PORT"; E_PID="$M_PID"
  start_meshd llama "http://127.0.0.1:$L_PORT" meshd-tiny
  python3 "$HERE/relay_cost.py" --model meshd-tiny --rounds "$((ROUNDS * 2))" --max-tokens 256 --tag llama \
    --target "direct=http://127.0.0.1:$L_PORT" --target "nginx=http://127.0.0.1:$NGX_PORT=$NGX_PID" \
    --target "meshd=http://127.0.0.1:$M_PORT=$M_PID" --target "meshd-each=http://127.0.0.1:$E_PORT=$E_PID" >>"$RAW"
else
  log "4/4 llama-server skipped (LLAMA=0)"
fi

python3 "$HERE/relay_cost_report.py" "$RAW" "$OUT_DIR" "$(git -C "$ROOT" rev-parse --short HEAD)" \
  "TPS=$TPS TOKENS=$TOKENS ROUNDS=$ROUNDS CONCURRENT=$CONCURRENT CONNS=$CONNS SECS=$SECS"
