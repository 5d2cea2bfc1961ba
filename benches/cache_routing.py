#!/usr/bin/env python3
"""Cache-aware routing under load: four simulated nodes on loopback, unequal (prefill and decode
speed 2x, 1x, 1x, 0.5x; slots 4, 2, 2, 1), each a meshd with its own `meshd-sim-engine --cache on`
(a llama-server-like prompt cache), all four in one mesh. Every routing policy (`routing.policy`:
cache-aware, expected-completion, least-busy, round-robin) and a client-side oracle that reads the
sims' true cache state run three workloads at Poisson arrival rates of 0.5, 0.8 and 1.0 of the
mesh's capacity, with fixed seeds:

  W1 shared prefix  groups x prompts, 2,048-token group prefix, 128-token question, 256-token output
  W2 chat           sessions x 8 turns over one 2,048-token system prompt, think time between turns
  W3 control        W1's shape with no shared prefix at all

Reported per (workload, load, policy): TTFT and end-to-end p50/p90/p99, output tokens/s, the mesh's
cache hit ratio (cached / prompt tokens as the sims report them) and the busiest/mean node ratio.

    benches/cache_routing.sh [--quick]       (builds release binaries when missing; ~10 min, --quick ~2 min)
    benches/cache_routing.py --meshd BIN --meshctl BIN --sim BIN [--quick] [--out benches] [--label cache-routing]

Only 127.0.0.1; every process is stopped on exit; every wait and load loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

MODEL = "sim-small"
# Node name, speed factor (prefill and decode), slots.
NODES = [("A", 2.0, 4), ("B", 1.0, 2), ("C", 1.0, 2), ("D", 0.5, 1)]
POLICIES = ["cache-aware", "expected-completion", "least-busy", "round-robin", "oracle"]
CONTEXT = 8192


# MARK: processes


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that were free a moment ago (all bound at once, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 (not up yet)
            last = e
        time.sleep(0.05)
    raise SystemExit(f"cache_routing: timed out waiting for {what} ({last!r})")


def call(port: int, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        c.request(method, path, body=data, headers={"content-type": "application/json"})
        r = c.getresponse()
        raw = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {raw[:200]!r}")
        return json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw.decode()
    finally:
        c.close()


class Proc:
    def __init__(self, argv: list[str], log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")
               and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        env["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent"
        self.log = open(log, "a")
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def stop_all(procs: list[Proc]) -> None:
    """SIGTERM to all at once, then up to 10 s for them all together; SIGKILL for the rest."""
    for p in procs:
        if p.popen.poll() is None:
            p.popen.terminate()
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait(5)
        p.log.close()


class Mesh:
    """Four sims, and (unless `with_meshd` is false: the oracle) a meshd per sim, all in one mesh."""

    def __init__(self, work: Path, args: argparse.Namespace, policy: str, secret: Path, with_meshd: bool,
                 nodes: list[tuple[str, float, int]] | None = None, routing_extra: str = "", label: str | None = None) -> None:
        nodes = nodes or NODES
        self.dir = work / (label or policy)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.sims: dict[str, int] = {}
        self.meshd: dict[str, int] = {}
        self.speed = {n: f for n, f, _ in nodes}
        self.slots = {n: s for n, _, s in nodes}
        for (name, factor, slots), port in zip(nodes, free_ports(len(nodes))):
            self.procs.append(Proc([args.sim, "--port", str(port), "--models", MODEL, "--cache", "on", "--slots", str(slots),
                                    "--cache-ram-tokens", str(args.cache_ram_tokens),
                                    "--prompt-tps", str(args.prompt_tps * factor), "--gen-tps", str(args.gen_tps * factor),
                                    "--context-length", str(CONTEXT), "--queue", "256"], self.dir / f"sim-{name}.log"))
            self.sims[name] = port
        for name, port in self.sims.items():
            wait(lambda p=port: call(p, "GET", "/sim/stats"), 20, f"sim {name}")
        if not with_meshd:
            return
        mesh_ports: list[int] = []
        self.socks: dict[str, Path] = {}
        ports = free_ports(2 * len(nodes))
        for k, (name, _, _) in enumerate(nodes):
            http_port, mesh_port = ports[2 * k], ports[2 * k + 1]
            d = self.dir / name
            d.mkdir(exist_ok=True)
            sock = d / "admin.sock"
            cfg = d / "meshd.yaml"
            peers = ", ".join(f'"127.0.0.1:{p}"' for p in mesh_ports)
            cfg.write_text(f"""node: {{ name: {name} }}
state_dir: {d / 'state'}
http: {{ listen: "127.0.0.1:{http_port}" }}
admin: {{ socket: {sock} }}
mesh: {{ listen: "127.0.0.1:{mesh_port}", peers: [{peers}], secret_file: {secret} }}
discovery: {{ mdns: false }}
engine_poll: {{ interval_ms: 200 }}
engines: [{{ kind: openai, url: "http://127.0.0.1:{self.sims[name]}" }}]
routing: {{ policy: {policy}{routing_extra} }}
""")
            self.procs.append(Proc([args.meshd, "--config", str(cfg)], d / "meshd.log"))
            self.meshd[name] = http_port
            self.socks[name] = sock
            mesh_ports.append(mesh_port)
        names = {n for n, _, _ in nodes}

        def all_up(node: str) -> bool:
            out = subprocess.run([args.meshctl, "nodes", "--json", "--socket", str(self.socks[node])], capture_output=True,
                                 text=True, timeout=10)
            view = {n["name"]: n for n in json.loads(out.stdout)}
            return all(view.get(n, {}).get("state") == "up" and MODEL in view[n].get("models", []) for n in names)

        for name in self.meshd:
            wait(lambda n=name: all_up(n), 60 + 5 * len(nodes), f"meshd {name} to see all {len(nodes)} nodes up with {MODEL}")

    def stats(self) -> dict[str, dict]:
        return {n: call(p, "GET", "/sim/stats") for n, p in self.sims.items()}

    def metrics(self) -> dict[str, dict[str, float]]:
        """meshd's cache metrics per node, summed over labels."""
        out: dict[str, dict[str, float]] = {}
        for n, p in self.meshd.items():
            m: dict[str, float] = {}
            for line in str(call(p, "GET", "/metrics")).splitlines():
                if line.startswith("meshd_cache_") and " " in line:
                    key, val = line.rsplit(" ", 1)
                    base = key.split("{")[0]
                    if base.endswith("_total"):
                        m[base] = m.get(base, 0.0) + float(val)
            out[n] = m
        return out

    def stop(self) -> None:
        stop_all(self.procs)


# MARK: workloads


def text(rng: random.Random, nbytes: int, tag: str) -> str:
    words = [tag]
    n = len(tag)
    while n < nbytes:
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        words.append(w)
        n += len(w) + 1
    return " ".join(words)[:nbytes]


def render(messages: list[dict]) -> bytes:
    """The sim's chat rendering; its tokens are 4-byte chunks of these bytes."""
    return ("".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n").encode()


def tokens(b: bytes) -> int:
    return (len(b) + 3) // 4


# The rendered system message, "<|system|>\n" + text + "\n", is 2,048 tokens (8,192 bytes).
PREFIX_BYTES = 2048 * 4 - len("<|system|>\n\n")
QUESTION_BYTES = 128 * 4 - len("<|user|>\n\n")


class Request:
    """One request of a workload: its messages, output tokens; W2 turns also name session and turn."""

    def __init__(self, messages: list[dict], max_tokens: int, group: int = -1, session: int = -1, turn: int = 0) -> None:
        self.messages, self.max_tokens, self.group, self.session, self.turn = messages, max_tokens, group, session, turn
        self.rendered = render(messages)
        self.prompt_tokens = tokens(self.rendered)

    def body(self) -> dict:
        return {"model": MODEL, "messages": self.messages, "max_tokens": self.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": 0}


def w1(rng: random.Random, tag: str, groups: int, per_group: int, shared: bool = True) -> list[Request]:
    prefixes = [text(rng, PREFIX_BYTES, f"[{tag} group {g}]") for g in range(groups)]
    reqs = []
    for g in range(groups):
        for q in range(per_group):
            system = prefixes[g] if shared else text(rng, PREFIX_BYTES, f"[{tag} prompt {g}.{q}]")
            reqs.append(Request([{"role": "system", "content": system},
                                 {"role": "user", "content": text(rng, QUESTION_BYTES, f"question {g}.{q}:")}], 256, group=g))
    rng.shuffle(reqs)
    return reqs


USER_BYTES = 64 * 4 - len("<|user|>\n\n")
ASSISTANT_BYTES = 128 * 4 - len("<|assistant|>\n\n")


def w2(rng: random.Random, tag: str, sessions: int, turns: int) -> list[list[Request]]:
    """Each session's turns; a turn's prompt is the system prompt and the whole conversation so far. The
    assistant's earlier answers are synthetic text of 128 tokens (the sim never matches generated tokens
    against a prompt, as llama-server would not match a re-tokenized answer exactly either)."""
    system = text(rng, PREFIX_BYTES, f"[{tag} system prompt]")
    out = []
    for s in range(sessions):
        msgs: list[dict] = [{"role": "system", "content": system}]
        chain = []
        for t in range(turns):
            msgs = msgs + [{"role": "user", "content": text(rng, USER_BYTES, f"session {s} turn {t}:")}]
            chain.append(Request(msgs, 128, session=s, turn=t))
            msgs = msgs + [{"role": "assistant", "content": text(rng, ASSISTANT_BYTES, f"answer {s}.{t}:")}]
        out.append(chain)
    return out


def lcp_tokens(a: bytes, b: bytes) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo // 4


def capacity(reqs: list[Request], args: argparse.Namespace) -> dict:
    """The mesh's capacity for a workload, computed from the sims' speeds and slots: requests/s when every
    prompt reuses the longest prefix it shares with any earlier prompt (the workload's ideal cache reuse) and
    every slot is busy, = sum(slots x speed) / mean service time on a 1x slot."""
    seen: list[bytes] = []
    svc, uncached = [], []
    for r in reqs:
        cached = min(r.prompt_tokens - 1, max((lcp_tokens(r.rendered, s) for s in seen), default=0))
        seen.append(r.rendered)
        uncached.append(r.prompt_tokens - cached)
        svc.append((r.prompt_tokens - cached) / args.prompt_tps + r.max_tokens / args.gen_tps)
    slot_speed = sum(f * s for _, f, s in NODES)
    mean_svc = sum(svc) / len(svc)
    rps = slot_speed / mean_svc
    out_tokens = sum(r.max_tokens for r in reqs) / len(reqs)
    return {"requests_per_s": round(rps, 3), "output_tokens_per_s": round(rps * out_tokens, 1),
            "mean_service_s_1x": round(mean_svc, 4), "ideal_hit_ratio": round(1 - sum(uncached) / sum(r.prompt_tokens for r in reqs), 4),
            "mean_prompt_tokens": round(sum(r.prompt_tokens for r in reqs) / len(reqs), 1)}


# MARK: clients


def stream(port: int, body: dict, headers: dict[str, str], timeout: float) -> dict:
    """One streamed chat: send time, TTFT (first content chunk), end, usage, serving node, route reason."""
    rec: dict[str, Any] = {"t0": time.monotonic()}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(), headers={"content-type": "application/json", **headers})
        r = c.getresponse()
        rec["node"] = r.getheader("x-meshd-node")
        rec["route"] = r.getheader("x-meshd-route")
        if r.status != 200:
            rec["error"] = f"{r.status} {r.read()[:200]!r}"
            return rec
        usage = None
        for _ in range(100_000):
            line = r.readline()
            if not line:
                break
            if not line.startswith(b"data: {"):
                continue
            if "ttft" not in rec and b'"content"' in line:
                delta = (json.loads(line[6:]).get("choices") or [{}])[0].get("delta") or {}
                if delta.get("content"):
                    rec["ttft"] = time.monotonic() - rec["t0"]
            if b'"usage"' in line:
                u = json.loads(line[6:]).get("usage")
                if u:
                    usage = u
        rec["end"] = time.monotonic()
        if usage is None or "ttft" not in rec:
            rec["error"] = "no usage or no content"
            return rec
        rec["prompt"] = usage.get("prompt_tokens", 0)
        rec["cached"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        rec["output"] = usage.get("completion_tokens", 0)
    except Exception as e:  # noqa: BLE001 (recorded, counted as an error)
        rec["error"] = repr(e)
        if isinstance(e, TimeoutError) and "ttft" not in rec:
            rec["gave_up_after"] = time.monotonic() - rec["t0"]
    finally:
        c.close()
    return rec


class Oracle:
    """Client-side router with the truth: for each request it asks every sim's `/sim/cache/match` for the
    tokens each slot holds, counts its own outstanding requests per engine, and picks the engine with the
    smallest expected completion (wait + uncached prefill + decode at the sim's true speeds), pinning the
    idle slot holding the prefix (`id_slot`) like meshd does; the request goes straight to that sim."""

    def __init__(self, mesh: Mesh, args: argparse.Namespace) -> None:
        self.mesh, self.args = mesh, args
        self.lock = threading.Lock()
        self.outstanding = {n: 0 for n in mesh.sims}

    def choose(self, req: Request) -> tuple[str, int | None]:
        with self.lock:
            best: tuple[float, str, int | None] | None = None
            for n, port in self.mesh.sims.items():
                m = call(port, "POST", "/sim/cache/match", req.body(), timeout=5)
                f, slots = self.mesh.speed[n], self.mesh.slots[n]
                p, g = self.args.prompt_tps * f, self.args.gen_tps * f
                idle = [s for s in m["slots"] if not s["busy"]]
                waiting = max(0, self.outstanding[n] - slots + 1)
                if idle and self.outstanding[n] < slots:
                    top = max(idle, key=lambda s: s["cached_tokens"])
                    cached, slot = top["cached_tokens"], top["id"]
                    if m["best"]["cached_tokens"] > cached:
                        # The engine's own choice restores more from its host-RAM prompt cache.
                        cached, slot = m["best"]["cached_tokens"], None
                else:
                    cached, slot = m["best"]["cached_tokens"], None
                # Queued requests ahead: each holds a slot for about a cold service time.
                service = req.prompt_tokens / p + req.max_tokens / g
                t = waiting / slots * service + (req.prompt_tokens - cached) / p + req.max_tokens / g
                if best is None or t < best[0] - 1e-9:
                    best = (t, n, slot if cached > 0 else None)
            assert best is not None
            self.outstanding[best[1]] += 1
            return best[1], best[2]

    def send(self, req: Request, timeout: float) -> dict:
        node, slot = self.choose(req)
        body = req.body()
        if slot is not None:
            body["id_slot"] = slot
        try:
            rec = stream(self.mesh.sims[node], body, {}, timeout)
        finally:
            with self.lock:
                self.outstanding[node] -= 1
        rec["node"] = node
        return rec


class Client:
    """Sends a request through meshd (entry nodes in turn: every node decides for its own clients) or the oracle."""

    def __init__(self, mesh: Mesh, policy: str, args: argparse.Namespace) -> None:
        self.mesh, self.args = mesh, args
        self.oracle = Oracle(mesh, args) if policy == "oracle" else None
        self.entries = list(mesh.meshd.values())
        self.turn = 0
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + args.request_timeout

    def send(self, req: Request) -> dict:
        # A request still waiting for its first byte at the cell's deadline is given up (counted as
        # unfinished; the engine drops it when the connection closes): overload cannot stretch a cell.
        timeout = max(1.0, min(self.args.request_timeout, self.deadline - time.monotonic()))
        if self.oracle:
            rec = self.oracle.send(req, timeout)
        else:
            with self.lock:
                port = self.entries[self.turn % len(self.entries)]
                self.turn += 1
            rec = stream(port, req.body(), {}, timeout)
        rec["group"], rec["session"], rec["turn"] = req.group, req.session, req.turn
        return rec


def run_open(client: Client, reqs: list[Request], rate: float, rng: random.Random, deadline: float) -> list[dict]:
    """Poisson arrivals at `rate` per second, open loop; each request in its own worker."""
    recs: list[dict] = []
    t = time.monotonic()
    with ThreadPoolExecutor(max_workers=256) as ex:
        futs = []
        for r in reqs:
            t += rng.expovariate(rate)
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if time.monotonic() > deadline:
                break
            futs.append(ex.submit(client.send, r))
        for f in futs:
            recs.append(f.result(timeout=max(1.0, deadline - time.monotonic() + client.args.request_timeout)))
    return recs


def run_sessions(client: Client, sessions: list[list[Request]], rate: float, rng: random.Random, deadline: float,
                 think: float) -> list[dict]:
    """Sessions start as a Poisson process at rate / turns (so turns arrive at `rate` per second on
    average); each turn is sent when the previous answer has ended and an exponential think time passed."""
    recs: list[dict] = []
    lock = threading.Lock()
    turns = max(len(s) for s in sessions)
    thinks = [[rng.expovariate(1 / think) for _ in chain] for chain in sessions]

    def run(k: int, chain: list[Request]) -> None:
        for i, r in enumerate(chain):
            if time.monotonic() > deadline:
                return
            rec = client.send(r)
            with lock:
                recs.append(rec)
            if "error" in rec:
                return
            time.sleep(thinks[k][i])

    t = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(sessions)) as ex:
        futs = []
        for k, chain in enumerate(sessions):
            t += rng.expovariate(rate / turns)
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futs.append(ex.submit(run, k, chain))
        for f in futs:
            f.result(timeout=max(1.0, deadline - time.monotonic() + client.args.request_timeout * 2))
    return recs


# MARK: summary


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def summarize(recs: list[dict], cap: dict, offered: float, speed: Callable[[str], float], prompt_tps: float) -> dict:
    ok = [r for r in recs if "error" not in r]
    errors = [r["error"] for r in recs if "error" in r]
    # Requests given up at the cell's deadline count with the time they waited (a lower bound).
    gave_up = [r["gave_up_after"] for r in recs if "gave_up_after" in r]
    ttft = [r["ttft"] for r in ok] + gave_up
    e2e = [r["end"] - r["t0"] for r in ok] + gave_up
    out: dict[str, Any] = {"requests": len(recs), "errors": len(errors), "unfinished": len(gave_up), "error_sample": errors[:3],
                           "offered_rps": round(offered, 3)}
    if not ok:
        return out
    # Output tokens/s in the steady window: from the first send plus the median latency (the ramp-up,
    # when nothing has finished yet) to the last send (then the drain), tokens spread evenly between a
    # request's first token and its end.
    w0, w1 = min(r["t0"] for r in recs), max(r["t0"] for r in recs)
    s0 = w0 + (pct(e2e, .5) or 0)
    if w1 - s0 > 1:
        produced = 0.0
        for r in ok:
            a, b = r["t0"] + r["ttft"], r["end"]
            span = max(b - a, 1e-9)
            produced += r["output"] * max(0.0, min(b, w1) - max(a, s0)) / span
        tput = produced / (w1 - s0)
    else:
        tput = None
    wall = max(r["end"] for r in ok) - w0
    nodes: dict[str, int] = {}
    for r in ok:
        nodes[r["node"] or "?"] = nodes.get(r["node"] or "?", 0) + 1
    counts = [nodes.get(n, 0) for n, _, _ in NODES]
    prompt, cached = sum(r["prompt"] for r in ok), sum(r["cached"] for r in ok)
    out.update({
        "ttft_ms": {"p50": ms(pct(ttft, .5)), "p90": ms(pct(ttft, .9)), "p99": ms(pct(ttft, .99)), "mean": ms(sum(ttft) / len(ttft))},
        "e2e_ms": {"p50": ms(pct(e2e, .5)), "p90": ms(pct(e2e, .9)), "p99": ms(pct(e2e, .99)), "mean": ms(sum(e2e) / len(e2e))},
        "output_tokens_per_s": round(tput, 1) if tput else None,
        "output_tokens_per_s_whole_run": round(sum(r["output"] for r in ok) / wall, 1),
        "throughput_vs_capacity": round(tput / cap["output_tokens_per_s"], 3) if tput else None,
        "hit_ratio": round(cached / prompt, 4) if prompt else None,
        "prompt_tokens": prompt, "cached_tokens": cached,
        "per_node": {n: nodes.get(n, 0) for n, _, _ in NODES},
        "busiest_over_mean": round(max(counts) / (sum(counts) / len(counts)), 2) if sum(counts) else None,
        "arrival_rps": round((len(recs) - 1) / (w1 - w0), 2) if w1 > w0 else None,
    })
    # Time to first token beyond the node's prefill of the uncached tokens: queueing (in meshd or the engine).
    waits: dict[str, list[float]] = {}
    for r in ok:
        if r["node"] in dict((n, 0) for n, _, _ in NODES):
            waits.setdefault(r["node"], []).append(r["ttft"] - (r["prompt"] - r["cached"]) / (prompt_tps * speed(r["node"])))
    out["queue_wait_ms_mean"] = {n: ms(sum(v) / len(v)) for n, v in sorted(waits.items())}
    groups: dict[int, set] = {}
    for r in ok:
        if r["group"] >= 0:
            groups.setdefault(r["group"], set()).add(r["node"])
    if groups:
        out["nodes_per_group"] = round(sum(len(s) for s in groups.values()) / len(groups), 2)
    sess: dict[int, list] = {}
    for r in sorted(ok, key=lambda r: r["t0"]):
        if r["session"] >= 0:
            sess.setdefault(r["session"], []).append(r["node"])
    if sess:
        moves = sum(sum(1 for a, b in zip(v, v[1:]) if a != b) for v in sess.values())
        out["session_moves_per_turn"] = round(moves / max(1, sum(len(v) - 1 for v in sess.values())), 3)
    routes = [r.get("route") for r in ok if r.get("route")]
    out["route_sample"] = routes[len(routes) // 2: len(routes) // 2 + 2]
    # What meshd said when it chose (X-Meshd-Route): how often the chosen engine had every slot busy,
    # and its expected wait against the wait measured.
    full, said, seen = 0, [], []
    for r in ok:
        m = re.search(r"(\d+) busy of (\d+) slots, expected wait (\d+) ms", r.get("route") or "")
        if m:
            full += int(m.group(1)) >= int(m.group(2))
            said.append(int(m.group(3)))
            seen.append(r["ttft"] - (r["prompt"] - r["cached"]) / (prompt_tps * speed(r["node"])))
    # The cached tokens meshd expected where it sent a request (X-Meshd-Route) against what the engine
    # reported: a promise of half the prompt or more that came to under a tenth is a broken promise.
    promised, got, broken, n = 0, 0, 0, 0
    for r in ok:
        m = re.search(r"(\d+) of (\d+) prompt tokens cached", r.get("route") or "")
        if m:
            n += 1
            promised += int(m.group(1))
            got += r["cached"]
            broken += int(m.group(1)) >= int(m.group(2)) / 2 and r["cached"] < r["prompt"] / 10
    if n:
        out["route_cached_expected_vs_reported"] = [promised, got]
        out["route_promised_hit_got_miss"] = broken
    if said:
        out["chosen_engine_full_fraction"] = round(full / len(said), 3)
        out["expected_wait_ms_mean"] = round(sum(said) / len(said), 1)
        out["measured_wait_ms_mean"] = ms(sum(seen) / len(seen))
    return out


# MARK: main


def warm_up(client: Client, rng: random.Random) -> None:
    """16 short unrelated requests, 8 at a time, so meshd has measured its engines before the first cell."""
    reqs = [Request([{"role": "user", "content": text(rng, 1024, f"[warm-up {k}]")}], 32) for k in range(16)]
    with ThreadPoolExecutor(max_workers=8) as ex:
        list(ex.map(client.send, reqs, timeout=120))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshd", required=True)
    ap.add_argument("--meshctl", required=True)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--quick", action="store_true", help="0.8 load only, fewer prompts and turns: about 2 minutes")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--workloads", default="W1,W2,W3")
    ap.add_argument("--loads", default=None, help="fractions of capacity [0.5,0.8,1.0; --quick: 0.8]")
    ap.add_argument("--prompt-tps", type=float, default=5000, help="prefill tokens/s of a 1x node's slot")
    ap.add_argument("--gen-tps", type=float, default=250, help="decode tokens/s of a 1x node's slot")
    ap.add_argument("--groups", type=int, default=None, help="W1 groups [16; quick 8]")
    ap.add_argument("--cache-ram-tokens", type=int, default=262144,
                    help="each sim's host-RAM prompt cache, in tokens, as llama-server's --cache-ram (on by default there); 0: none")
    ap.add_argument("--per-group", type=int, default=None, help="W1 prompts per group [8; quick 3]")
    ap.add_argument("--sessions", type=int, default=None, help="W2 sessions [12; quick 4]")
    ap.add_argument("--turns", type=int, default=None, help="W2 turns per session [8; quick 4]")
    ap.add_argument("--think-s", type=float, default=0.5, help="W2 mean think time between turns")
    ap.add_argument("--control", type=int, default=None, help="W3 prompts [48; quick 16]")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--routing-extra", default="", help="more routing: settings for every meshd, e.g. 'queue_after_ms: 0'")
    ap.add_argument("--request-timeout", type=float, default=60)
    ap.add_argument("--drain-s", type=float, default=None, help="a cell gives up requests not started this long after its arrivals [6; quick 4]")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting cells after this long [900; quick 200]")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--label", default=None, help="output file stem [cache-routing; quick: cache-routing-quick]")
    ap.add_argument("--command", default=None, help="the command line to record (the .sh passes its own)")
    ap.add_argument("--from-json", default=None, help="run nothing: write the .md (and targets) again from this .json, "
                    "with the same size options as the run")
    args = ap.parse_args()
    q = args.quick
    args.groups = args.groups or (8 if q else 16)
    args.per_group = args.per_group or (3 if q else 16)
    args.sessions = args.sessions or (4 if q else 12)
    args.turns = args.turns or (4 if q else 8)
    args.control = args.control or (16 if q else 48)
    args.drain_s = args.drain_s if args.drain_s is not None else (4 if q else 6)
    args.budget_s = args.budget_s or (180 if q else 780)
    args.label = args.label or ("cache-routing-quick" if q else "cache-routing")
    loads = [float(x) for x in (args.loads or ("0.8" if q else "0.5,0.8,1.0")).split(",")]
    policies = args.policies.split(",")
    workloads = args.workloads.split(",")
    command = args.command or " ".join([sys.argv[0], *sys.argv[1:]])
    if args.from_json:
        d = json.loads(Path(args.from_json).read_text())
        report(args, d["command"], d["loads"], d["policies"], list(d["results"]), d["capacity"], d["results"],
               d["meshd_cache_metrics"], d["skipped"], d["seconds"], d["loadavg_start"], d["loadavg_end"])
        return 0

    # Every cell's requests, made up front (fixed seeds; own text per load so no cell reuses another's cache).
    plans: dict[tuple[str, float], Any] = {}
    caps: dict[str, dict] = {}
    for w in workloads:
        for load in loads:
            rng = random.Random(f"{args.seed}-{w}-{load}")
            tag = f"{w} load {load} seed {args.seed}"
            if w == "W1":
                plans[(w, load)] = w1(rng, tag, args.groups, args.per_group)
            elif w == "W2":
                plans[(w, load)] = w2(rng, tag, args.sessions, args.turns)
            else:
                plans[(w, load)] = w1(rng, tag, args.control, 1, shared=False)
        first = plans[(w, loads[0])]
        caps[w] = capacity([r for chain in first for r in chain] if w == "W2" else first, args)

    work = Path(tempfile.mkdtemp(prefix="meshd-cache-routing-"))
    secret = work / "mesh.secret"
    subprocess.run([args.meshctl, "init", "--secret-file", str(secret)], check=True, capture_output=True, timeout=30)
    started = time.monotonic()
    results: dict[str, dict[str, dict[str, dict]]] = {}
    mesh_metrics: dict[str, Any] = {}
    skipped: list[str] = []
    load0 = os.getloadavg()
    try:
        for policy in policies:
            if time.monotonic() - started > args.budget_s:
                skipped.append(policy)
                continue
            t_policy = time.monotonic()
            mesh = Mesh(work, args, policy, secret, with_meshd=policy != "oracle",
                        routing_extra=f", {args.routing_extra}" if args.routing_extra else "")
            try:
                client = Client(mesh, policy, args)
                warm_up(client, random.Random(f"{args.seed}-warm"))
                for n, p in mesh.sims.items():
                    call(p, "POST", "/sim/reset")
                for w in workloads:
                    for load in loads:
                        if time.monotonic() - started > args.budget_s:
                            skipped.append(f"{policy} {w} {load}")
                            continue
                        rate = load * caps[w]["requests_per_s"]
                        rng = random.Random(f"{args.seed}-{w}-{load}-arrivals")
                        before = mesh.stats()
                        t0 = time.monotonic()
                        plan = plans[(w, load)]
                        n = sum(len(c) for c in plan) if w == "W2" else len(plan)
                        # Arrivals take about n / rate; then at most --drain-s more for what is still waiting.
                        deadline = t0 + 1.5 * n / rate + args.drain_s + (args.turns * (args.think_s + 1) if w == "W2" else 0)
                        client.deadline = deadline
                        if w == "W2":
                            recs = run_sessions(client, plan, rate, rng, deadline, args.think_s)
                        else:
                            recs = run_open(client, plan, rate, rng, deadline)
                        after = mesh.stats()
                        s = summarize(recs, caps[w], rate, mesh.speed.__getitem__, args.prompt_tps)
                        s["seconds"] = round(time.monotonic() - t0, 1)
                        s["loadavg"] = round(os.getloadavg()[0], 2)
                        sim_prompt = sum(after[k]["prompt_tokens"] - before[k]["prompt_tokens"] for k in after)
                        sim_cached = sum(after[k]["cached_tokens"] - before[k]["cached_tokens"] for k in after)
                        s["sim_hit_ratio"] = round(sim_cached / sim_prompt, 4) if sim_prompt else None
                        s["sim_requests_per_node"] = {k: after[k]["requests"] - before[k]["requests"] for k in after}
                        results.setdefault(w, {}).setdefault(str(load), {})[policy] = s
                        print(f"[{time.monotonic() - started:6.1f}s] {policy:20s} {w} load {load}: n={s['requests']} err={s['errors']} "
                              f"ttft p90={s.get('ttft_ms', {}).get('p90')} ms hit={s.get('hit_ratio')} "
                              f"tok/s={s.get('output_tokens_per_s')} nodes={s.get('per_node')} ({s['seconds']} s)", flush=True)
                if mesh.meshd:
                    mesh_metrics[policy] = mesh.metrics()
            finally:
                mesh.stop()
            print(f"[{time.monotonic() - started:6.1f}s] {policy} done in {time.monotonic() - t_policy:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - started
    report(args, command, loads, policies, workloads, caps, results, mesh_metrics, skipped, total, load0, os.getloadavg())
    return 0


# MARK: report


def get(d: dict | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b unrounded (a verdict on a rounded ratio could flip), None when either is missing."""
    return a / b if a and b else None


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def targets(results: dict, caps: dict, loads: list[float]) -> list[dict]:
    out: list[dict] = []

    def add(name: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "met": met, "detail": detail})

    r1 = results.get("W1", {})
    mid = "0.8" if "0.8" in r1 else (str(loads[len(loads) // 2]) if loads else None)
    w = r1.get(mid, {})
    ca = get(w, "cache-aware", "ttft_ms", "p90")
    for other in ("least-busy", "expected-completion"):
        o = get(w, other, "ttft_ms", "p90")
        x = ratio(o, ca)
        add(f"W1 at {mid} load: p90 TTFT >= 3x better than {other}", None if x is None else x >= 3,
            f"cache-aware {ca} ms vs {other} {o} ms: {fmt(x)}x")
    h, ho = get(w, "cache-aware", "hit_ratio"), get(w, "oracle", "hit_ratio")
    x = ratio(h, ho)
    add(f"W1 at {mid} load: hit ratio >= 0.9 of the oracle's", None if x is None else x >= 0.9,
        f"cache-aware {h} vs oracle {ho}: {fmt(x)}")
    full = get(r1, "1.0", "cache-aware", "throughput_vs_capacity")
    add("W1 at 1.0 load: throughput >= 0.95 of the summed capacity", None if full is None else full >= 0.95,
        f"cache-aware {get(r1, '1.0', 'cache-aware', 'output_tokens_per_s')} tokens/s = {full} of {caps.get('W1', {}).get('output_tokens_per_s')}")
    for load, cell in results.get("W2", {}).items():
        a, b = get(cell, "cache-aware", "ttft_ms", "p90"), get(cell, "least-busy", "ttft_ms", "p90")
        ea, eb = get(cell, "cache-aware", "e2e_ms", "mean"), get(cell, "least-busy", "e2e_ms", "mean")
        met = None if None in (a, b, ea, eb) else (a <= b * 1.03 and ea <= eb * 1.03)
        add(f"W2 at {load} load: no worse than least-busy (p90 TTFT and mean latency, 3 % noise)", met,
            f"p90 TTFT {a} vs {b} ms; mean latency {ea} vs {eb} ms")
    for load, cell in results.get("W3", {}).items():
        a, b = get(cell, "cache-aware", "e2e_ms", "mean"), get(cell, "expected-completion", "e2e_ms", "mean")
        ta, tb = get(cell, "cache-aware", "output_tokens_per_s"), get(cell, "expected-completion", "output_tokens_per_s")
        x, y = ratio(a, b), ratio(ta, tb)
        met = None if x is None or y is None else (abs(x - 1) <= 0.03 and abs(y - 1) <= 0.03)
        add(f"W3 at {load} load: within ±3 % of expected-completion (mean latency and tokens/s)", met,
            f"mean latency {a} vs {b} ms ({fmt(x)}x); tokens/s {ta} vs {tb} ({fmt(y)}x); p90 TTFT "
            f"{get(cell, 'cache-aware', 'ttft_ms', 'p90')} vs {get(cell, 'expected-completion', 'ttft_ms', 'p90')} ms")
    return out


def decided(s: dict) -> str:
    if "chosen_engine_full_fraction" not in s:
        return "–"
    return f"{round(100 * s['chosen_engine_full_fraction'])} %; {s['expected_wait_ms_mean']} / {s['measured_wait_ms_mean']}"


def report(args, command, loads, policies, workloads, caps, results, mesh_metrics, skipped, total, load0, load1) -> None:
    tg = targets(results, caps, loads)
    ram = (f"each sim keeps up to {args.cache_ram_tokens} tokens of saved prompts in a host-RAM prompt cache, as llama-server's "
           "`--cache-ram` (on by default) does, restored at 20x its prefill speed" if args.cache_ram_tokens > 0 else
           "no host-RAM prompt cache (a slot holds one context: the mesh's 9 slots hold at most 9 prefixes)")
    scale = {"W1": f"{args.groups} groups x {args.per_group} prompts (issue: 16 x 16; {ram}), "
                   "2,048-token prefix, 128-token question, 256-token output",
             "W2": f"{args.sessions} sessions x {args.turns} turns (issue: 32 x 8), 2,048-token system prompt, 64-token user turns, "
                   f"128-token answers (synthetic 128-token assistant text in the history), think time exp. mean {args.think_s} s",
             "W3": f"{args.control} prompts of W1's shape (2,048 + 128 tokens, 256 out), no shared prefix"}
    out = {"command": command, "seconds": round(total, 1), "loadavg_start": [round(x, 2) for x in load0],
           "loadavg_end": [round(x, 2) for x in load1],
           "nodes": [{"name": n, "speed": f, "slots": s, "prompt_tps": args.prompt_tps * f, "gen_tps": args.gen_tps * f} for n, f, s in NODES],
           "seed": args.seed, "loads": loads, "policies": policies, "workloads": scale, "capacity": caps,
           "results": results, "targets": tg, "meshd_cache_metrics": mesh_metrics, "skipped": skipped}
    Path(args.out, f"{args.label}.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [f"# Cache-aware routing under load\n",
          f"Made by `{command}` in {total:.0f} s (load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end; "
          "2 shared cores). Raw numbers: `" + f"{args.label}.json" + "`.\n",
          "Four meshd nodes on 127.0.0.1 in one mesh, each with its own `meshd-sim-engine --cache on` (`openai` engine): "
          + ", ".join(f"{n} {f}x ({args.prompt_tps * f:g} prefill / {args.gen_tps * f:g} decode tokens/s per slot, {s} slots)" for n, f, s in NODES)
          + f", context {CONTEXT} tokens per slot. Clients send each request to the next of the four nodes in turn (every node decides "
          "for its own clients), streamed (`stream_options.include_usage`). Nodes and sims are restarted per policy (cold caches); "
          "16 short unrelated warm-up requests let meshd measure its engines; every (workload, load) has its own text, so no cell reuses "
          "another's cache. The oracle is a client-side router: it asks every sim's `/sim/cache/match` for the true cached tokens per "
          "slot, counts its own outstanding requests per engine, picks the least expected completion at the sims' true speeds, pins "
          "the idle slot holding the prefix, and sends straight to that sim (no meshd, no hop).\n",
          "Scaled down to fit ~10 minutes on 2 cores: " + "; ".join(f"**{k}** {v}" for k, v in scale.items() if k in workloads)
          + ". Load = Poisson arrival rate as a fraction of the capacity, computed (not measured) from the sims' speeds and slots "
          "with the workload's ideal cache reuse (each prompt reuses the longest prefix it shares with any earlier one): "
          + "; ".join(f"{w} {c['requests_per_s']} req/s = {c['output_tokens_per_s']} output tokens/s (ideal hit ratio {c['ideal_hit_ratio']})" for w, c in caps.items())
          + ". W2 sessions start at rate/turns; turns follow each answer after the think time. Tokens/s: output tokens produced in the "
          "steady window, from the first arrival plus the median latency (the ramp-up) to the last arrival (each request's tokens "
          "spread over its first token..end), / that window; × capacity divides by the computed capacity. Hit ratio: cached / "
          "prompt tokens from the sims' usage. Busiest/mean: requests per node (capacity shares are 64/16/16/4 %). Queue wait: mean "
          "TTFT minus the node's prefill time for the uncached tokens (waiting in meshd's or the engine's queue). Nodes/group (W1): "
          "distinct nodes a group's prompts went to; moves/turn (W2): how often a session's next turn went to another node. "
          "Arrivals/s: the rate actually sent (W2's is capped by its few sessions and their think time, well under the nominal load). "
          "A cell gives up requests still waiting for their first byte a while after its arrivals end (`--drain-s`): they count "
          "as errors (given up), with the time they waited in TTFT and latency (a lower bound). With 48-96 requests a cell, p99 "
          "is about the largest value. Chosen engine full: the share of requests for which meshd's `X-Meshd-Route` said the engine "
          "it chose had every slot busy; expected wait: the wait it said it expected there, against the queue wait measured.\n"]
    for w in workloads:
        for load in loads:
            cell = results.get(w, {}).get(str(load))
            if not cell:
                continue
            md.append(f"\n## {w} at {load} load ({round(load * caps[w]['requests_per_s'], 2)} req/s)\n")
            extra = "nodes/group" if w == "W1" else ("moves/turn" if w == "W2" else "")
            md.append("| policy | TTFT p50 / p90 / p99 ms | e2e p50 / p90 / p99 ms | output tok/s (× capacity) | hit ratio | busiest/mean | "
                      f"requests A/B/C/D | queue wait ms A/B/C/D |{' ' + extra + ' |' if extra else ''} chosen engine full; expected / measured wait ms | "
                      "arrivals/s | errors (given up) |")
            md.append("|---|---|---|---|---|---|---|---|" + ("---|" if extra else "") + "---|---|---|")
            for p in policies:
                s = cell.get(p)
                if not s or "ttft_ms" not in s:
                    continue
                t, e = s["ttft_ms"], s["e2e_ms"]
                ex = s.get("nodes_per_group") if w == "W1" else s.get("session_moves_per_turn")
                md.append(f"| {p} | {t['p50']} / {t['p90']} / {t['p99']} | {e['p50']} / {e['p90']} / {e['p99']} | "
                          f"{s['output_tokens_per_s']} ({s['throughput_vs_capacity']}) | {s['hit_ratio']} | {s['busiest_over_mean']} | "
                          f"{'/'.join(str(v) for v in s['per_node'].values())} | "
                          f"{'/'.join(str(s['queue_wait_ms_mean'].get(n, '–')) for n, _, _ in NODES)} |"
                          f"{' ' + str(ex) + ' |' if extra else ''} {decided(s)} | {s['arrival_rps']} | {s['errors']} ({s['unfinished']}) |")
    rows = [(w, load, cell["cache-aware"]) for w in workloads for load, cell in results.get(w, {}).items()
            if "route_cached_expected_vs_reported" in cell.get("cache-aware", {})]
    if rows:
        md.append("\n## What cache-aware expected, per X-Meshd-Route, against what the engines did\n")
        md.append("| workload | load | requests | cached tokens expected / reported | promised ≥ ½ the prompt, got < 1/10 | "
                  "chosen engine had every slot busy | expected / measured queue wait ms |\n|---|---|---|---|---|---|---|")
        for w, load, c in rows:
            e, g = c["route_cached_expected_vs_reported"]
            md.append(f"| {w} | {load} | {c['requests']} | {e} / {g} | {c['route_promised_hit_got_miss']} | "
                      f"{round(100 * c.get('chosen_engine_full_fraction', 0))} % | {c.get('expected_wait_ms_mean')} / {c.get('measured_wait_ms_mean')} |")
    md.append("\n## Targets\n")
    md.append("| target | met | numbers |\n|---|---|---|")
    for t in tg:
        md.append(f"| {t['target']} | {'met' if t['met'] else ('not met' if t['met'] is False else 'not measured')} | {t['detail']} |")
    if mesh_metrics:
        md.append("\n## meshd's cache shadows (per policy, summed over the four nodes)\n")
        md.append("| policy | predicted cached tokens | reported cached tokens | delta bytes sent |\n|---|---|---|---|")
        for p, per in mesh_metrics.items():
            def tot(k: str) -> int:
                return int(sum(m.get(k, 0) for m in per.values()))
            md.append(f"| {p} | {tot('meshd_cache_predicted_tokens_total')} | {tot('meshd_cache_reported_tokens_total')} | "
                      f"{tot('meshd_cache_delta_bytes_sent_total')} |")
    if skipped:
        md.append(f"\nSkipped (time budget {args.budget_s:g} s spent): {', '.join(skipped)}\n")
    Path(args.out, f"{args.label}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
