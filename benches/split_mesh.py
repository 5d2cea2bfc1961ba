#!/usr/bin/env python3
"""What meshd's relay costs a split, per token: three meshd nodes on loopback, node A with the model
file (a managed llama.cpp engine), each offering a third of what the model needs
(`hardware.offer_bytes`), so A splits it over A, B and C; once with `split.transport: mesh` (RPC
relayed over the mesh's CURVE tunnels) and once with `direct` (llama-server talks to the workers'
rpc-servers itself), plus the model unsplit on A alone. Reports decode tokens/s (llama-server's own
`timings`, relayed by meshd), ms per token, the added ms per token per worker of each split against
unsplit, and the relay's added ms per token per worker against direct.

    benches/split_mesh.sh            (builds meshd in release mode, the `split` model; ~3 min)
    benches/split_mesh.py --meshd BIN --meshctl BIN --model GGUF [--rounds 5] [--n-predict 128] [--out benches]

Only 127.0.0.1; every process is stopped on exit; every wait is bounded.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 120) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Node:
    def __init__(self, work: Path, meshd: str, meshctl: str, name: str, secret: Path, peers: list[str], extra: str,
                 engines: str) -> None:
        self.name, self.meshctl = name, meshctl
        self.http, self.mesh = free_port(), free_port()
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "admin.sock"
        cfg = self.dir / "meshd.yaml"
        cfg.write_text(f"""node: {{ name: {name} }}
state_dir: {self.dir / 'state'}
http: {{ listen: "127.0.0.1:{self.http}" }}
admin: {{ socket: {self.sock} }}
mesh: {{ listen: "127.0.0.1:{self.mesh}", peers: [{', '.join(f'"{p}"' for p in peers)}], secret_file: {secret} }}
discovery: {{ mdns: false }}
engines: {engines}
{extra}
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")}
        env["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent"
        self.log = open(self.dir / "meshd.log", "w")
        self.proc = subprocess.Popen([meshd, "--config", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.http}"

    def admin(self, *args: str) -> object:
        out = subprocess.run([self.meshctl, *args, "--socket", str(self.sock), "--json"], capture_output=True, text=True, timeout=15)
        return json.loads(out.stdout) if out.stdout.strip() else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 (not up yet)
            pass
        time.sleep(0.1)
    raise SystemExit(f"split_mesh: timed out waiting for {what}")


def measure(url: str, rounds: int, n_predict: int) -> dict:
    body = {"model": "x", "prompt": "The quick brown fox", "max_tokens": n_predict, "temperature": 0}
    model = http("GET", url + "/v1/models")["data"][0]["id"]
    body["model"] = model
    t0 = time.monotonic()
    first = http("POST", url + "/v1/completions", body, timeout=300)
    start_s = time.monotonic() - t0
    tps, texts = [], {first["choices"][0]["text"]}
    for _ in range(rounds):
        r = http("POST", url + "/v1/completions", body, timeout=300)
        texts.add(r["choices"][0]["text"])
        t = r.get("timings") or {}
        if t.get("predicted_per_second"):
            tps.append(float(t["predicted_per_second"]))
    tps.sort()
    return {"first_answer_s": round(start_s, 2), "tokens_per_second": round(tps[len(tps) // 2], 1) if tps else None,
            "ms_per_token": round(1000 / tps[len(tps) // 2], 3) if tps else None, "same_output": len(texts) == 1,
            "text": first["choices"][0]["text"]}


def run(mode: str, args, work: Path, secret: Path) -> dict:
    size = Path(args.model).stat().st_size
    split = mode != "unsplit"
    offer = (size * 12 // 10) // 3 + (1 << 20) if split else size * 4
    extra = f"split: {{ transport: {mode if split else 'mesh'} }}\nhardware: {{ offer_bytes: {offer} }}"
    engines = f'[{{ kind: llama.cpp, model: "{args.model}", args: ["-c", "512", "-t", "1"] }}]'
    nodes: list[Node] = []
    try:
        workers = []
        if split:
            for n in ("B", "C"):
                workers.append(Node(work / mode, args.meshd, args.meshctl, n, secret, [], extra, "[]"))
        a = Node(work / mode, args.meshd, args.meshctl, "A", secret, [f"127.0.0.1:{w.mesh}" for w in workers], extra, engines)
        nodes = workers + [a]
        want = {"A"} | {w.name for w in workers}
        wait(lambda: {n["name"] for n in a.admin("nodes") if n.get("offer_bytes")} >= want, 30, f"{mode}: nodes up with offers")
        wait(lambda: http("GET", a.url + "/v1/models")["data"], 120, f"{mode}: the model listed")
        r = measure(a.url, args.rounds, args.n_predict)
        if split:
            heads = a.admin("splits")["heads"]
            r["parts"] = [p["node"] for p in heads[0]["parts"]] if heads else []
        return r
    finally:
        for n in nodes:
            n.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshd", required=True)
    ap.add_argument("--meshctl", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--label", default="split-mesh")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meshd-split-mesh-"))
    try:
        secret = work / "mesh.secret"
        subprocess.run([args.meshctl, "init", "--secret-file", str(secret)], check=True, capture_output=True, timeout=30)
        load0 = os.getloadavg()[0]
        results = {m: run(m, args, work, secret) for m in ("unsplit", "direct", "mesh")}
        load1 = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results["unsplit"]["ms_per_token"]
    for m in ("direct", "mesh"):
        r = results[m]
        workers = max(1, len(r.get("parts", [])) - 1)
        r["added_ms_per_token_per_worker"] = round((r["ms_per_token"] - base) / workers, 3) if r["ms_per_token"] and base else None
        r["same_output_as_unsplit"] = r["text"] == results["unsplit"]["text"]
    relay = None
    if results["mesh"]["ms_per_token"] and results["direct"]["ms_per_token"]:
        relay = round((results["mesh"]["ms_per_token"] - results["direct"]["ms_per_token"]) / 2, 3)
    out = {"model": Path(args.model).name, "model_bytes": Path(args.model).stat().st_size, "rounds": args.rounds,
           "n_predict": args.n_predict, "loadavg_start": round(load0, 2), "loadavg_end": round(load1, 2),
           "results": {k: {kk: vv for kk, vv in v.items() if kk != "text"} for k, v in results.items()},
           "relay_added_ms_per_token_per_worker": relay}
    Path(args.out, f"{args.label}.json").write_text(json.dumps(out, indent=2) + "\n")
    rows = [f"| {m} | {', '.join(r.get('parts', ['A']))} | {r['tokens_per_second']} | {r['ms_per_token']} | "
            f"{r.get('added_ms_per_token_per_worker', '–')} | {r['first_answer_s']} | {r.get('same_output_as_unsplit', '–')} |"
            for m, r in results.items()]
    md = (f"# A split through meshd: relay vs direct\n\nModel {out['model']} ({out['model_bytes'] >> 20} MiB), {args.rounds} "
          f"requests of {args.n_predict} tokens per configuration (median), load average {out['loadavg_start']} → "
          f"{out['loadavg_end']}. Made by `benches/split_mesh.sh`.\n\n"
          "| transport | nodes | tokens/s | ms/token | added ms/token per worker vs unsplit | first answer (s, incl. plan + load) | same output as unsplit |\n"
          "|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
          f"\n\nThe mesh relay adds **{relay} ms per token per worker** over `direct` on the same link "
          f"(meshd built as given: `{Path(args.meshd).parent.name}`).\n")
    Path(args.out, f"{args.label}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
