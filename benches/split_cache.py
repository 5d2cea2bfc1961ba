#!/usr/bin/env python3
"""Does reloading a split after a worker restart resend its large tensors? Two meshd on loopback:
A heads a split of MODEL (each node offers a bit more than half of it), B lends memory with its
rpc-server's tensor cache (`-c`, under B's `state_dir/rpc-cache`). Measures the bytes B's
rpc-server received on its RPC connection (`ss -tin`: bytes_received) and the time to the first
answer for the first load (cold cache), then kills B's meshd with SIGKILL (its rpc-server dies
with it), starts it again with the same state directory, waits out B's back-off, and loads again.
ggml-rpc-server caches tensors over 10 MiB, so MODEL needs per-layer tensors that large on the
worker (the default shape: 4 layers, n_embd 2048, f32: 16 MiB attention and FFN matrices).

    benches/split_cache.sh   (makes the model, ~1 GB, on first use; release or given meshd)
    benches/split_cache.py --meshd BIN --meshctl BIN --model GGUF [--out benches]

Only 127.0.0.1; every process is stopped on exit; every wait is bounded.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from split_mesh import Node, http, wait  # noqa: E402


def received(port: int) -> int:
    """Bytes the rpc-server listening on `port` received on its established connections."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True,
                         timeout=10).stdout
    return sum(int(m) for m in re.findall(r"bytes_received:(\d+)", out))


def load(a: Node, b: Node) -> dict:
    t0 = time.monotonic()
    body = {"model": http("GET", a.url + "/v1/models")["data"][0]["id"], "prompt": "The quick brown fox", "max_tokens": 8,
            "temperature": 0}
    r = http("POST", a.url + "/v1/completions", body, timeout=600)
    took = time.monotonic() - t0
    lease = b.admin("splits")["leases"][0]
    cache = Path(b.dir / "state" / "rpc-cache")
    files = [p for p in cache.rglob("*") if p.is_file()]
    return {"first_answer_s": round(took, 2), "worker_received_bytes": received(lease["port"]),
            "cache_files": len(files), "cache_bytes": sum(p.stat().st_size for p in files),
            "text": r["choices"][0]["text"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshd", required=True)
    ap.add_argument("--meshctl", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args()
    if not shutil.which("ss"):
        sys.exit("split_cache: needs ss (iproute2)")
    work = Path(tempfile.mkdtemp(prefix="meshd-split-cache-"))
    size = Path(args.model).stat().st_size
    offer = size * 6 // 10
    extra = f"split: {{ transport: mesh, lease_seconds: 5 }}\nhardware: {{ offer_bytes: {offer} }}"
    engines = f'[{{ kind: llama.cpp, model: "{args.model}", args: ["-c", "256", "-t", "1"] }}]'
    nodes: list[Node] = []
    try:
        secret = work / "mesh.secret"
        subprocess.run([args.meshctl, "init", "--secret-file", str(secret)], check=True, capture_output=True, timeout=30)
        b = Node(work, args.meshd, args.meshctl, "B", secret, [], extra, "[]")
        a = Node(work, args.meshd, args.meshctl, "A", secret, [f"127.0.0.1:{b.mesh}"], extra, engines)
        nodes += [b, a]
        wait(lambda: {n["name"] for n in a.admin("nodes") if n.get("offer_bytes")} >= {"A", "B"}, 60, "A and B up")
        wait(lambda: http("GET", a.url + "/v1/models")["data"], 60, "the model listed")
        first = load(a, b)
        # The worker restarts: kill -9 of its meshd (its rpc-server dies with it), the same state dir.
        b.proc.kill()
        b.proc.wait(10)
        wait(lambda: not a.admin("splits")["heads"], 30, "the split to end")
        b2 = Node(work, args.meshd, args.meshctl, "B", secret, [], extra, "[]", ports=(b.http, b.mesh))
        nodes.append(b2)
        # B failed a split: it backs off 15 s before A plans with it again.
        wait(lambda: "B" not in a.admin("splits")["head_stats"]["backing_off"]
             and any(n["name"] == "B" and n["state"] == "up" and n.get("offer_bytes") for n in a.admin("nodes")),
             60, "B back and out of back-off")
        second = load(a, b2)
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = {"model": Path(args.model).name, "model_bytes": size, "first_load": first, "after_worker_restart": second,
           "same_output": first["text"] == second["text"],
           "received_ratio": round(second["worker_received_bytes"] / max(1, first["worker_received_bytes"]), 4)}
    for k in ("first_load", "after_worker_restart"):
        out[k].pop("text")
    Path(args.out, "split-cache.json").write_text(json.dumps(out, indent=2) + "\n")
    f, s = out["first_load"], out["after_worker_restart"]
    md = (f"# A split reloaded after a worker restart\n\nModel {out['model']} ({size >> 20} MiB), head A + worker B on loopback "
          f"(relayed), B's rpc-server with `-c`. Made by `benches/split_cache.sh`.\n\n"
          "| load | worker's rpc-server received | its cache (files, MiB) | first answer (s) |\n|---|---|---|---|\n"
          f"| first (cold cache) | {f['worker_received_bytes'] / 1048576:.1f} MiB | {f['cache_files']}, {f['cache_bytes'] >> 20} | {f['first_answer_s']} |\n"
          f"| after B's meshd was killed and restarted | {s['worker_received_bytes'] / 1048576:.1f} MiB | {s['cache_files']}, {s['cache_bytes'] >> 20} | {s['first_answer_s']} |\n\n"
          f"The reload received **{out['received_ratio'] * 100:.1f} %** of the first load's bytes; same output: {out['same_output']}.\n")
    Path(args.out, "split-cache.md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
