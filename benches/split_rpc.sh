#!/usr/bin/env bash
# What a model split over llama.cpp RPC costs per token: decode tokens/s and TTFT of one llama-server
# (unsplit) vs the same model split over 1 and 2 ggml-rpc-servers on loopback, "added ms per token
# per worker" = (1/tps_split - 1/tps_unsplit) / workers, whether temperature-0 output is the same
# split and unsplit, and how long a new head takes to its first token with the rpc-servers' -c
# caches cold vs warm. Writes benches/split-rpc.md and benches/split-rpc.json.
#
#   benches/split_rpc.sh                   the `split` and `slow` models of tools/make-tiny-model.sh
#                                          (written on first use: ~3 s and ~10 s); ~2 min here
#   MODELS=split ROUNDS=3 benches/split_rpc.sh     quicker
#   SPLIT_RPC_ENDPOINTS=127.0.0.1:P1,127.0.0.1:P2 SPLIT_LABEL=mesh-relay benches/split_rpc.sh
#                                          mode "mesh": unsplit vs a split over endpoints someone else
#                                          runs (meshd relays of loopback ports to remote rpc-servers);
#                                          writes benches/split-rpc-mesh-relay.md/.json
#
# Knobs [defaults]: MODELS [split,slow] (shape names or .gguf paths), ROUNDS [5] requests per
# configuration, N_PREDICT [128], THREADS [1] (-t of llama-server and of each rpc-server; 1 so that
# the 2 cores are never shared by two busy threads), CTX [512], HEAD_LAYERS [auto: n_layer/(workers+1)]
# repeating layers kept on the head (0: all on the workers), BUDGET_S [600] (rounds stop early after
# it, with a warning), LLAMA_BIN_DIR [the output of tools/build-llama.sh, which builds on first use,
# ~7 min], KEEP_WORK [0], OUT_DIR [benches], OUT_BASE [split-rpc, or split-rpc-$SPLIT_LABEL].
#
# Everything listens on 127.0.0.1 (endpoints given in SPLIT_RPC_ENDPOINTS must be loopback too);
# every loop is bounded in count and time; every process the script starts is stopped on exit,
# error or Ctrl-C.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
MODELS="${MODELS:-split,slow}"
ROUNDS="${ROUNDS:-5}"
N_PREDICT="${N_PREDICT:-128}"
THREADS="${THREADS:-1}"
CTX="${CTX:-512}"
HEAD_LAYERS="${HEAD_LAYERS:-auto}"
BUDGET_S="${BUDGET_S:-600}"
KEEP_WORK="${KEEP_WORK:-0}"
OUT_DIR="${OUT_DIR:-$HERE}"
SPLIT_RPC_ENDPOINTS="${SPLIT_RPC_ENDPOINTS:-}"
SPLIT_LABEL="${SPLIT_LABEL:-mesh-relay}"
if [ -n "$SPLIT_RPC_ENDPOINTS" ]; then OUT_BASE="${OUT_BASE:-split-rpc-$SPLIT_LABEL}"; else OUT_BASE="${OUT_BASE:-split-rpc}"; fi
PROMPT="The quick brown fox jumps over the lazy dog. Once upon a time, in a mesh of small machines, a model was split"
PY=python3
CLIENT="$HERE/split_rpc.py"

log() { printf '[split-rpc %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v "$PY" >/dev/null || die "python3 missing"
for v in ROUNDS N_PREDICT THREADS CTX BUDGET_S; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ "$HEAD_LAYERS" =~ ^(auto|[0-9]+)$ ]] || die "HEAD_LAYERS must be auto or a number (got '$HEAD_LAYERS')"

# ---------------------------------------------------------------- binaries and models
if [ -n "${LLAMA_BIN_DIR:-}" ]; then
  BIN_DIR="$LLAMA_BIN_DIR"
else
  log "llama.cpp binaries: tools/build-llama.sh (builds them on first use, ~7 min)"
  BIN_DIR="$("$ROOT/tools/build-llama.sh")" || die "tools/build-llama.sh failed (or set LLAMA_BIN_DIR)"
fi
SERVER="$BIN_DIR/llama-server"
RPC_SERVER="$BIN_DIR/ggml-rpc-server"
[ -x "$SERVER" ] || die "no llama-server in $BIN_DIR (tools/build-llama.sh builds it; or set LLAMA_BIN_DIR)"
[ -x "$RPC_SERVER" ] || die "no ggml-rpc-server in $BIN_DIR (tools/build-llama.sh builds it with GGML_RPC=ON)"
"$SERVER" --help 2>&1 | grep -q -- '--cache-ram' || die "$SERVER has no --cache-ram (too old a llama.cpp)"

declare -A MODEL_FILE=()
IFS=',' read -r -a MODEL_LIST <<<"$MODELS"
for m in "${MODEL_LIST[@]}"; do
  case "$m" in
    *.gguf) [ -s "$m" ] || die "model file $m not found"; MODEL_FILE[$m]="$m" ;;
    *) log "model $m: tools/make-tiny-model.sh --shape $m"
       MODEL_FILE[$m]="$("$ROOT/tools/make-tiny-model.sh" --shape "$m")" || die "tools/make-tiny-model.sh --shape $m failed" ;;
  esac
done

if [ -n "$SPLIT_RPC_ENDPOINTS" ]; then
  IFS=',' read -r -a EXT_EPS <<<"$SPLIT_RPC_ENDPOINTS"
  for ep in "${EXT_EPS[@]}"; do
    [[ "$ep" =~ ^(127\.[0-9]+\.[0-9]+\.[0-9]+|localhost):[0-9]+$ ]] || die "SPLIT_RPC_ENDPOINTS: '$ep' is not a loopback host:port"
  done
fi

# ---------------------------------------------------------------- processes
WORK="$(mktemp -d /tmp/meshd-split-rpc.XXXXXX)"
RAW="$WORK/raw.jsonl"
: >"$RAW"
PIDS=()

stop() {  # stop PID: TERM, up to 5 s, then KILL
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
on_exit() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop "${PIDS[$i]}"; done
  if [ "$KEEP_WORK" = 1 ] || [ "$rc" != 0 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap on_exit EXIT
trap 'log "interrupted"; exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

start_rpc() {  # start_rpc NAME -> RPC_EP (127.0.0.1:PORT), with its own empty -c cache (LLAMA_CACHE)
  local name="$1" port
  port="$(free_port)"
  mkdir -p "$WORK/cache-$name"
  LLAMA_CACHE="$WORK/cache-$name" "$RPC_SERVER" -H 127.0.0.1 -p "$port" -c -t "$THREADS" >"$WORK/rpc-$name.log" 2>&1 &
  PIDS+=($!)
  "$PY" "$CLIENT" wait-port "127.0.0.1:$port" 15 || die "rpc-server $name did not start: $(tail -n 5 "$WORK/rpc-$name.log")"
  RPC_EP="127.0.0.1:$port"
}

# start_head MODEL CONFIG CACHE_LABEL ENDPOINTS -> HEAD_PID, HEAD_URL; one JSON "start" line in RAW
# (spawn -> healthy, TTFT of the first request). ENDPOINTS empty: unsplit.
start_head() {
  local model="$1" config="$2" cache="$3" eps="$4" port t0 args=() w=0 hl=0 ngl=0 ts="" layers
  layers="${MODEL_LAYERS[$model]}"
  if [ -n "$eps" ]; then
    w="$(tr ',' '\n' <<<"$eps" | wc -l)"
    if [ "$HEAD_LAYERS" = auto ]; then hl=$((layers / (w + 1))); else hl="$HEAD_LAYERS"; fi
    [ "$hl" -le "$layers" ] || die "HEAD_LAYERS $hl > the model's $layers layers"
    # A CPU head is no device of its own: -ngl offloads the last n_layer+1-hl layers (the output
    # layer counts as one, so the last worker holds it) and --tensor-split spreads them over the
    # RPC devices only (a value for the head would be ignored).
    ngl=$((layers + 1 - hl))
    ts="$(printf '1%.0s,' $(seq "$w"))"; ts="${ts%,}"
    args=(--rpc "$eps" -ngl "$ngl" --tensor-split "$ts")
  fi
  port="$(free_port)"
  t0="$("$PY" -c 'import time; print(time.time_ns())')"
  "$SERVER" -m "${MODEL_FILE[$model]}" -c "$CTX" -t "$THREADS" -np 1 --cache-ram 0 --fit off \
    --host 127.0.0.1 --port "$port" "${args[@]}" >"$WORK/head-$model-$config-$cache.log" 2>&1 &
  HEAD_PID=$!
  PIDS+=("$HEAD_PID")
  HEAD_URL="http://127.0.0.1:$port"
  HEAD_TAG="\"model\":\"$model\",\"config\":\"$config\",\"workers\":$w,\"head_layers\":$hl,\"ngl\":$ngl,\"tensor_split\":\"$ts\",\"endpoints\":\"$eps\""
  "$PY" "$CLIENT" start "$HEAD_URL" --t0-ns "$t0" --prompt "$PROMPT" --n-predict "$N_PREDICT" --timeout 180 \
    --tag "{\"kind\":\"start\",\"cache\":\"$cache\",$HEAD_TAG}" >>"$RAW" || die "head $model/$config did not serve: $(tail -n 15 "$WORK/head-$model-$config-$cache.log")"
}

# ---------------------------------------------------------------- measure
declare -A MODEL_LAYERS=()
REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
T_START=$SECONDS
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
for m in "${MODEL_LIST[@]}"; do
  f="${MODEL_FILE[$m]}"
  MODEL_LAYERS[$m]="$("$PY" "$CLIENT" layers "$f")"
  printf '{"kind":"model","model":"%s","file":"%s","size_mb":%s,"layers":%s}\n' "$m" "$f" \
    "$(( $(stat -c %s "$f") / 1000000 ))" "${MODEL_LAYERS[$m]}" >>"$RAW"
  log "model $m: $f, ${MODEL_LAYERS[$m]} layers"
  cat "$f" >/dev/null  # page cache warm for every head alike

  declare -A URL=() EPS=() TAG=()
  CONFIGS=(unsplit)
  EPS[unsplit]=""
  if [ -z "$SPLIT_RPC_ENDPOINTS" ]; then
    # Loopback: each configuration its own rpc-servers (one serves one head at a time).
    for w in 1 2; do
      eps=""
      for i in $(seq "$w"); do start_rpc "$m-rpc$w-$i"; eps="${eps:+$eps,}$RPC_EP"; done
      CONFIGS+=("rpc$w"); EPS[rpc$w]="$eps"
    done
  else
    # ---- MESH HOOK ---------------------------------------------------------------------------
    # Mode "mesh": the endpoints are whatever the caller set up; for meshd, the loopback ports
    # meshd relays to remote ggml-rpc-servers (`-c` on those keeps their caches; this script does
    # not start, clear or stop them). To have the script set them up itself, start the meshd
    # nodes/leases here, append their pids to PIDS (stopped on exit) and set EPS[...] to the
    # relayed ports; the measurement below is the same for every mode.
    CONFIGS+=("$SPLIT_LABEL"); EPS[$SPLIT_LABEL]="$SPLIT_RPC_ENDPOINTS"
    # -------------------------------------------------------------------------------------------
  fi

  for c in "${CONFIGS[@]}"; do
    if [ "$c" = unsplit ]; then
      start_head "$m" "$c" none ""
    else
      # 1st head: the rpc-servers' caches are empty (fresh loopback servers; unknown in mesh mode);
      # 2nd head: they hold every tensor above ggml-rpc's 10 MiB hash threshold.
      start_head "$m" "$c" cold "${EPS[$c]}"
      stop "$HEAD_PID"
      start_head "$m" "$c" warm "${EPS[$c]}"
    fi
    URL[$c]="$HEAD_URL"; TAG[$c]="$HEAD_TAG"
  done

  # Rounds: the configurations alternate, in reverse order every other round (ABBA), so drift on a
  # noisy machine hits each alike; the heads are all up, only the one asked computes.
  for r in $(seq "$ROUNDS"); do
    if [ $((SECONDS - T_START)) -gt "$BUDGET_S" ]; then
      log "WARNING: BUDGET_S=$BUDGET_S s spent; $m stops after $((r - 1)) rounds"; break
    fi
    order=("${CONFIGS[@]}")
    if [ $((r % 2)) = 0 ]; then order=(); for ((i = ${#CONFIGS[@]} - 1; i >= 0; i--)); do order+=("${CONFIGS[$i]}"); done; fi
    for c in "${order[@]}"; do
      "$PY" "$CLIENT" request "${URL[$c]}" --prompt "$PROMPT" --n-predict "$N_PREDICT" --timeout 180 \
        --tag "{\"kind\":\"round\",${TAG[$c]}}" >>"$RAW" || die "request to $m/$c failed"
    done
  done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop "${PIDS[$i]}"; done
  PIDS=()
  unset URL EPS TAG
done

# ---------------------------------------------------------------- report
"$PY" - "$RAW" <<PY
import json, sys, datetime, os
meta = {"kind": "meta", "rev": "$REV", "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rounds": $ROUNDS, "n_predict": $N_PREDICT, "threads": $THREADS, "ctx": $CTX, "nproc": os.cpu_count(),
        "llama_server": """$("$SERVER" --version 2>&1 | grep -m1 version || true)""".strip(),
        "endpoints": "$SPLIT_RPC_ENDPOINTS", "label": "$SPLIT_LABEL", "seconds": $((SECONDS - T_START)),
        "loadavg": "$LOAD_START / $(cut -d' ' -f1-3 /proc/loadavg)"}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(meta) + "\n")
PY
mkdir -p "$OUT_DIR"
"$PY" "$CLIENT" report "$RAW" "$OUT_DIR/$OUT_BASE"
log "wrote $OUT_DIR/$OUT_BASE.md and .json ($((SECONDS - T_START)) s)"
