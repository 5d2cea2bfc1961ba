#!/usr/bin/env bash
# Issue 12's load figures on release binaries: 1,000 concurrent streams through one node to a sim
# engine with 1,200 slots (10 tokens/s, 50 tokens each: the engine needs 5 s), and 2,000 slow
# clients that send half a request head. Writes benches/engine-concurrency.md and .json.
#
#   benches/engine_concurrency.sh     (~4 min on 2 cores after the release build)
#   AB_MESHD=/path/to/other/meshd benches/engine_concurrency.sh
#                                     also runs the streams against another meshd build, alternating
#                                     with this one (ABAB...), and labels the rows AB_LABEL (ratios in one run)
#
# Everything listens on 127.0.0.1; every load is bounded in count and time (the pytest tests).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
for p in meshd meshd-sim-engine meshctl; do swift build -c release --static-swift-stdlib --product "$p" 2>&1 | grep -vE '^warning: prohibited flag' | tail -1; done
RB="$(swift build -c release --static-swift-stdlib --show-bin-path)"
PY="$(tools/e2e-venv.sh)"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
export MESHD_BIN="$RB/meshd" MESHCTL_BIN="$RB/meshctl" SIM_ENGINE_BIN="$RB/meshd-sim-engine" MESHD_BENCH_RELEASE=1
runs=()
for i in 1 2 3; do
  for which in this ${AB_MESHD:+other}; do
    bin="$RB/meshd"; [ "$which" = other ] && bin="$AB_MESHD"
    # The other build may fail the test's assertions; its figures are still written.
    MESHD_BIN="$bin" MESHD_BENCH_OUT="$OUT/conc-$which-$i.json" "$PY" -m pytest -q -p no:cacheprovider -s \
      Tests/mesh/test_mesh_engine_concurrency.py::test_thousand_concurrent_streams_to_one_engine | grep -E '^\[concurrency\]' || true
    [ -f "$OUT/conc-$which-$i.json" ] && runs+=("$OUT/conc-$which-$i.json")
  done
done
"$PY" -m pytest -q -p no:cacheprovider -s Tests/e2e/test_e2e_slow_clients.py 2>&1 | grep -E '^\[|slowloris|closed|RSS' > "$OUT/slow.txt" || true
cat "$OUT/slow.txt"
"$PY" - "$HERE" "$OUT/slow.txt" "${runs[@]}" <<'PY'
import json, os, subprocess, sys, datetime, pathlib
here, slow, runs = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).read_text().strip(), sys.argv[3:]
rs = []
for r in runs:
    d = json.loads(pathlib.Path(r).read_text())
    d["build"] = "this" if "-this-" in r else os.environ.get("AB_LABEL", "other (AB_MESHD)")
    rs.append(d)
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
(here / "engine-concurrency.json").write_text(json.dumps({"when": when, "rev": rev, "runs": rs, "slow_clients": slow}, indent=1) + "\n")
lines = [f"# Engine concurrency and slow clients (release build, {when}, {rev})", "",
         "1,000 concurrent streams through one node to a sim engine with 1,200 slots, 10 tokens/s, 50 tokens",
         "each (the engine needs 5.0 s). Client, engine and meshd share the 2 cores. Target: all complete in",
         "about the time the engine needs; meshd peak RSS <= 150 MB.", "",
         "| run | build | all done in | engine saw at once | meshd RSS idle / peak / after | meshd CPU | per chunk | per stream |",
         "|---|---|---|---|---|---|---|---|"]
for i, r in enumerate(rs, 1):
    per_stream = r["cpu_seconds"] / r["streams"] * 1000
    lines.append(f"| {i} | {r['build']} | {r['seconds']} s | {r['engine_peak_open']} | {r['rss_idle_mb']} / {r['rss_peak_mb']} / "
                 f"{r['rss_after_mb']} MB | {r['cpu_seconds']} s | {r['cpu_us_per_chunk']} us | {per_stream:.2f} ms |")
lines += ["", "Slow clients (Tests/e2e/test_e2e_slow_clients.py: 2,000 connections that send half a request head;",
          "`http.header_timeout_ms` 10 s):", "", "```", slow or "(no figures printed)", "```", ""]
(here / "engine-concurrency.md").write_text("\n".join(lines))
print("\n".join(lines))
PY
