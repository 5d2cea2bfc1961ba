#!/usr/bin/env python3
"""What sharing the caches costs a 16-node mesh: 16 meshd nodes on 127.0.0.1 in one mesh, each with its
own `meshd-sim-engine --cache on` (a llama-server-like prompt cache with a host-RAM tier), all deciding
with `routing.policy: cache-aware`. The same W1-shaped load (groups of prompts sharing a 2,048-token
prefix, clients spread over the 16 nodes) runs with `routing.cache_deltas: true` and `false`, in
alternating rounds; the difference in the meshd processes' CPU time (utime + stime from /proc) is what
the deltas cost: building them, sending them to 15 peers over CURVE, reading and merging them. Also
reported: delta messages and bytes per request per peer, and the CPU of an idle window for reference.

    benches/cache_deltas.sh            (release binaries; about 6 minutes on 2 cores)
    benches/cache_deltas.py --meshd BIN --meshctl BIN --sim BIN [--rounds 2] [--requests 240] [--rate 6]

Only 127.0.0.1; every process is stopped on exit; every wait and load loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_routing import Mesh, call, stream, w1  # noqa: E402

N = 16
# All nodes alike: 2 slots, fast enough that 16 of them on 2 shared cores keep up with the load.
NODES = [(f"n{k:02d}", 1.0, 2) for k in range(N)]


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


def metric_sum(mesh: Mesh, name: str) -> float:
    total = 0.0
    for port in mesh.meshd.values():
        for line in str(call(port, "GET", "/metrics")).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def run_round(args: argparse.Namespace, work: Path, secret: Path, deltas: bool, k: int, rng: random.Random) -> dict:
    label = f"deltas-{'on' if deltas else 'off'}-{k}"
    mesh = Mesh(work, args, "cache-aware", secret, with_meshd=True, nodes=NODES,
                routing_extra=f", cache_deltas: {'true' if deltas else 'false'}", label=label)
    try:
        pids = [p.popen.pid for p in mesh.procs if Path(p.popen.args[0]).name == Path(args.meshd).name]
        assert len(pids) == N, pids
        time.sleep(2)  # the mesh settles (first states, snapshots asked of every peer)
        idle0, t0 = cpu_seconds(pids), time.monotonic()
        time.sleep(args.idle_s)
        idle = (cpu_seconds(pids) - idle0) / (time.monotonic() - t0)
        reqs = w1(rng, label, args.groups, args.requests // args.groups)
        entries = list(mesh.meshd.values())
        sent0 = metric_sum(mesh, "meshd_cache_deltas_sent_total")
        bytes0 = metric_sum(mesh, "meshd_cache_delta_bytes_sent_total")
        errors = 0
        lock = threading.Lock()

        def one(i: int) -> None:
            nonlocal errors
            body = reqs[i].body()
            body["max_tokens"] = args.max_tokens
            rec = stream(entries[i % N], body, {}, 60)
            if "error" in rec:
                with lock:
                    errors += 1

        c0, start = cpu_seconds(pids), time.monotonic()
        with ThreadPoolExecutor(max_workers=64) as pool:
            futures = []
            for i in range(len(reqs)):
                # Fixed spacing (not Poisson): both settings see exactly the same arrivals.
                time.sleep(max(0.0, start + i / args.rate - time.monotonic()))
                futures.append(pool.submit(one, i))
            for f in futures:
                f.result(timeout=120)
        window = time.monotonic() - start
        busy = cpu_seconds(pids) - c0
        time.sleep(0.5)
        sent = metric_sum(mesh, "meshd_cache_deltas_sent_total") - sent0
        sent_bytes = metric_sum(mesh, "meshd_cache_delta_bytes_sent_total") - bytes0
        n = len(reqs)
        return {"deltas": deltas, "round": k, "requests": n, "errors": errors, "window_s": round(window, 2),
                "meshd_cpu_s": round(busy, 3), "cpu_ms_per_request": round(1000 * busy / n, 3),
                "load_cpu_ms_per_request": round(1000 * (busy - idle * window) / n, 3),
                "idle_cores": round(idle, 4), "delta_messages_per_request_per_peer": round(sent / n / (N - 1), 3),
                "delta_bytes_per_request_per_peer": round(sent_bytes / n / (N - 1), 1)}
    finally:
        mesh.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshd", required=True)
    ap.add_argument("--meshctl", required=True)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (off, on) [2]")
    ap.add_argument("--requests", type=int, default=240, help="requests per round [240]")
    ap.add_argument("--groups", type=int, default=16, help="prefix groups [16]")
    ap.add_argument("--rate", type=float, default=6.0, help="requests/s over the whole mesh [6]")
    ap.add_argument("--max-tokens", type=int, default=16, help="output tokens per request [16]")
    ap.add_argument("--idle-s", type=float, default=5.0, help="idle window measured before the load [5]")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--command", default=None)
    args = ap.parse_args()
    # What cache_routing.Mesh reads of its arguments.
    args.prompt_tps, args.gen_tps, args.cache_ram_tokens = 20000.0, 1000.0, 262144
    command = args.command or "benches/cache_deltas.py " + " ".join(sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="meshd-cache-deltas-"))
    secret = work / "mesh.secret"
    subprocess.run([args.meshctl, "init", "--secret-file", str(secret)], check=True, capture_output=True, timeout=30)
    load0 = os.getloadavg()
    t0 = time.monotonic()
    rows = []
    try:
        for k in range(args.rounds):
            for deltas in (False, True):
                row = run_round(args, work, secret, deltas, k, random.Random(1000 + k))
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    on = [r for r in rows if r["deltas"]]
    off = [r for r in rows if not r["deltas"]]

    def mean(rs, key):
        return sum(r[key] for r in rs) / len(rs)

    extra_ms = mean(on, "cpu_ms_per_request") - mean(off, "cpu_ms_per_request")
    # Noise: how far apart rounds of the same setting are.
    spread = max(max(r["cpu_ms_per_request"] for r in rs) - min(r["cpu_ms_per_request"] for r in rs) for rs in (on, off))
    # Over the whole mesh: extra CPU seconds per second of load, per node.
    per_node_share = extra_ms / 1000 * args.rate / N
    max_rate = (0.01 * N / (extra_ms / 1000)) if extra_ms > 0 else None
    summary = {"extra_cpu_ms_per_request_whole_mesh": round(extra_ms, 3), "same_setting_spread_ms": round(spread, 3),
               "load_cpu_ms_per_request_off": round(mean(off, "load_cpu_ms_per_request"), 3),
               "extra_core_share_per_node_at_rate": round(per_node_share, 5),
               "mesh_requests_per_s_for_1pct_of_a_core_per_node": round(max_rate, 1) if max_rate else None,
               "delta_bytes_per_request_per_peer": round(mean(on, "delta_bytes_per_request_per_peer"), 1),
               "delta_messages_per_request_per_peer": round(mean(on, "delta_messages_per_request_per_peer"), 3)}
    out = {"command": command, "seconds": round(time.monotonic() - t0, 1), "loadavg_start": [round(x, 2) for x in load0],
           "loadavg_end": [round(x, 2) for x in load1], "nodes": N, "rate": args.rate, "rows": rows, "summary": summary}
    Path(args.out, "cache-deltas.json").write_text(json.dumps(out, indent=2) + "\n")
    md = ["# What sharing the caches costs a 16-node mesh\n",
          f"Made by `{command}` in {out['seconds']:.0f} s (load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end; "
          "2 shared cores). Raw numbers: `cache-deltas.json`.\n",
          f"16 meshd nodes on 127.0.0.1 in one mesh (each dials every earlier one), each with its own `meshd-sim-engine --cache on "
          f"--cache-ram-tokens 262144` (2 slots), `routing.policy: cache-aware`. Per round: {args.requests} W1-shaped requests "
          f"({args.groups} groups sharing a 2,048-token prefix, 128-token question, {args.max_tokens} output tokens, streamed), "
          f"{args.rate:g} requests/s at fixed spacing, clients spread over the 16 nodes in turn. Rounds alternate "
          "`routing.cache_deltas: false` and `true` (the mesh restarted for each); CPU is the 16 meshd processes' utime + "
          "stime over the load window. Idle: the same processes' CPU over a quiet window before the load, in cores.\n",
          "| cache_deltas | round | requests (errors) | window s | meshd CPU s | CPU ms / request (whole mesh) | "
          "the same less idle | idle cores | delta messages / request / peer | delta bytes / request / peer |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {'on' if r['deltas'] else 'off'} | {r['round']} | {r['requests']} ({r['errors']}) | {r['window_s']} | "
                  f"{r['meshd_cpu_s']} | {r['cpu_ms_per_request']} | {r['load_cpu_ms_per_request']} | {r['idle_cores']} | "
                  f"{r['delta_messages_per_request_per_peer']} | {r['delta_bytes_per_request_per_peer']} |")
    md += ["", "## Summary\n",
           f"- Deltas cost **{summary['extra_cpu_ms_per_request_whole_mesh']} ms of CPU per request, summed over the 16 nodes** "
           "(mean of the rounds with deltas minus the mean without); rounds of the same setting differ by up to "
           f"{summary['same_setting_spread_ms']} ms, and a request costs the mesh {summary['load_cpu_ms_per_request_off']} ms "
           "without deltas (idle CPU taken off).",
           f"- At {args.rate:g} requests/s over the mesh that is **{100 * per_node_share:.3f} % of one core per node** "
           "(issue 14 target: at most 1 %).",
           (f"- 1 % of a core per node would be reached at about {summary['mesh_requests_per_s_for_1pct_of_a_core_per_node']} "
            "requests/s over the whole mesh." if max_rate else "- The difference is within the noise (no extra CPU measured)."),
           f"- Bytes: {summary['delta_bytes_per_request_per_peer']} per request per peer "
           f"({summary['delta_messages_per_request_per_peer']} messages per request per peer).", ""]
    Path(args.out, "cache-deltas.md").write_text("\n".join(md))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
