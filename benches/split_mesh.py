#!/usr/bin/env python3
"""What meshd's relay costs a split, per token: meshd nodes on loopback, node A with the model file
(a managed llama.cpp engine), each offering a half (2 hosts: A and B) or a third (3 hosts: A, B
and C) of what the model needs (`hardware.offer_bytes`), so A splits it over them; each with
`split.transport: mesh` (RPC relayed by meshd over its secure relay) and with `direct`
(llama-server talks to the workers' rpc-servers itself), plus the model unsplit on A alone.
Reports decode tokens/s (llama-server's own `timings`, relayed by meshd) and the ratio to
unsplit, ms per token, the added ms per token per worker of each split against unsplit, TTFT
(streamed, through meshd), and the relay's added ms per token per worker against direct.

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
                 engines: str, ports: tuple[int, int] | None = None) -> None:
        self.name, self.meshctl = name, meshctl
        self.http, self.mesh = ports or (free_port(), free_port())
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
        self.log = open(self.dir / "meshd.log", "a")
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


def ttft(url: str, body: dict) -> float:
    """Seconds to the first streamed chunk with text."""
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps({**body, "stream": True}).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=120) as r:
        for line in r:
            if line.startswith(b"data: {") and b'"text":""' not in line.replace(b" ", b""):
                took = time.monotonic() - t0
                r.read()
                return took
    return float("nan")


def one(url: str, body: dict) -> tuple[float | None, str]:
    """One completion: llama-server's decode tokens/s (relayed by meshd) and the text."""
    r = http("POST", url + "/v1/completions", body, timeout=300)
    t = r.get("timings") or {}
    return (float(t["predicted_per_second"]) if t.get("predicted_per_second") else None), r["choices"][0]["text"]


class Config:
    """One configuration's nodes: `unsplit`, or TRANSPORT-HOSTS (mesh-3: the head and two workers,
    relayed). All run at once (each set its own mesh: nodes dial only their own static peers)."""

    def __init__(self, name: str, args, work: Path, secret: Path) -> None:
        self.name = name
        size = Path(args.model).stat().st_size
        self.split = name != "unsplit"
        mode, hosts = (name.split("-")[0], int(name.split("-")[1])) if self.split else ("mesh", 1)
        offer = (size * 12 // 10) // hosts + (1 << 20) if self.split else size * 4
        extra = f"split: {{ transport: {mode} }}\nhardware: {{ offer_bytes: {offer} }}"
        engines = f'[{{ kind: llama.cpp, model: "{args.model}", args: ["-c", "512", "-t", "1"] }}]'
        self.nodes: list[Node] = []
        workers = [Node(work / name, args.meshd, args.meshctl, n, secret, [], extra, "[]") for n in ("B", "C")[:hosts - 1]]
        self.nodes += workers
        self.a = Node(work / name, args.meshd, args.meshctl, "A", secret, [f"127.0.0.1:{w.mesh}" for w in workers], extra, engines)
        self.nodes.append(self.a)
        self.want = {"A"} | {w.name for w in workers}

    def ready(self) -> None:
        a = self.a
        wait(lambda: {n["name"] for n in a.admin("nodes") if n.get("offer_bytes")} >= self.want, 60, f"{self.name}: nodes up with offers")
        wait(lambda: http("GET", a.url + "/v1/models")["data"], 120, f"{self.name}: the model listed")
        self.body = {"model": http("GET", a.url + "/v1/models")["data"][0]["id"], "prompt": "The quick brown fox",
                     "temperature": 0}

    def stop(self) -> None:
        for n in self.nodes:
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
    names = ("unsplit", "direct-2", "mesh-2", "direct-3", "mesh-3")
    configs: list[Config] = []
    results: dict[str, dict] = {}
    try:
        secret = work / "mesh.secret"
        subprocess.run([args.meshctl, "init", "--secret-file", str(secret)], check=True, capture_output=True, timeout=30)
        load0 = os.getloadavg()[0]
        for n in names:
            configs.append(Config(n, args, work, secret))
        for c in configs:
            c.ready()
            # The first request plans and loads the split: timed once.
            t0 = time.monotonic()
            _, text = one(c.a.url, {**c.body, "max_tokens": args.n_predict})
            results[c.name] = {"first_answer_s": round(time.monotonic() - t0, 2), "text": text, "tps": [], "ttft": [], "texts": {text}}
        # Rounds interleaved, the order reversed every other round: a noisy moment hits every config.
        deadline = time.monotonic() + 900
        for i in range(args.rounds):
            if time.monotonic() > deadline:
                print("split_mesh: time budget spent; fewer rounds", file=sys.stderr)
                break
            for c in (configs if i % 2 == 0 else list(reversed(configs))):
                tps, text = one(c.a.url, {**c.body, "max_tokens": args.n_predict})
                r = results[c.name]
                r["texts"].add(text)
                if tps:
                    r["tps"].append(tps)
                r["ttft"].append(ttft(c.a.url, {**c.body, "max_tokens": 8}))
        for c in configs:
            r = results[c.name]
            tps = sorted(r.pop("tps"))
            firsts = sorted(r.pop("ttft"))
            r["tokens_per_second"] = round(tps[len(tps) // 2], 1) if tps else None
            r["ms_per_token"] = round(1000 / tps[len(tps) // 2], 3) if tps else None
            r["ttft_ms"] = round(firsts[len(firsts) // 2] * 1000, 1) if firsts else None
            r["same_output"] = len(r.pop("texts")) == 1
            if c.split:
                heads = c.a.admin("splits")["heads"]
                r["parts"] = [p["node"] for p in heads[0]["parts"]] if heads else []
                r["paths"] = heads[0].get("paths", []) if heads else []
        load1 = os.getloadavg()[0]
    finally:
        for c in configs:
            c.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = results["unsplit"]["ms_per_token"]
    for m in ("direct-2", "mesh-2", "direct-3", "mesh-3"):
        r = results[m]
        workers = max(1, len(r.get("parts", [])) - 1)
        r["added_ms_per_token_per_worker"] = round((r["ms_per_token"] - base) / workers, 3) if r["ms_per_token"] and base else None
        r["same_output_as_unsplit"] = r["text"] == results["unsplit"]["text"]
    relay = {}
    for hosts in (2, 3):
        m, d = results[f"mesh-{hosts}"]["ms_per_token"], results[f"direct-{hosts}"]["ms_per_token"]
        if m and d:
            relay[f"{hosts} hosts"] = round((m - d) / (hosts - 1), 3)
    ratio = {c: round(results[c]["tokens_per_second"] / results["unsplit"]["tokens_per_second"], 3)
             for c in results if c != "unsplit" and results[c]["tokens_per_second"] and results["unsplit"]["tokens_per_second"]}
    out = {"model": Path(args.model).name, "model_bytes": Path(args.model).stat().st_size, "rounds": args.rounds,
           "n_predict": args.n_predict, "loadavg_start": round(load0, 2), "loadavg_end": round(load1, 2),
           "results": {k: {kk: vv for kk, vv in v.items() if kk != "text"} for k, v in results.items()},
           "relay_added_ms_per_token_per_worker": relay, "tokens_per_second_vs_unsplit": ratio}
    Path(args.out, f"{args.label}.json").write_text(json.dumps(out, indent=2) + "\n")
    rows = [f"| {m} | {', '.join(r.get('parts', ['A']))} ({', '.join(r.get('paths', []))}) | {r['tokens_per_second']} | {ratio.get(m, 1.0)} | {r['ms_per_token']} | "
            f"{r.get('added_ms_per_token_per_worker', '–')} | {r['ttft_ms']} | {r['first_answer_s']} | {r.get('same_output_as_unsplit', '–')} |"
            for m, r in results.items()]
    md = (f"# A split through meshd: relay vs direct\n\nModel {out['model']} ({out['model_bytes'] >> 20} MiB), {args.rounds} "
          f"interleaved rounds of one {args.n_predict}-token request per configuration (median), all configurations running at once, load average {out['loadavg_start']} → "
          f"{out['loadavg_end']}. Made by `benches/split_mesh.sh`.\n\n"
          "| config (transport-hosts) | nodes | tokens/s | × unsplit | ms/token | added ms/token per worker vs unsplit | TTFT ms (median of 3) | first answer (s, incl. plan + load) | same output as unsplit |\n"
          "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
          f"\n\nThe mesh relay adds **{relay} ms per token per worker** over `direct` on the same link "
          f"(meshd built as given: `{Path(args.meshd).parent.name}`).\n")
    Path(args.out, f"{args.label}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
