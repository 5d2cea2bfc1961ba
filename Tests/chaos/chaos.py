#!/usr/bin/env python3
"""Chaos run on the multi-host test bed (issue 17): five meshd hosts under a fixed-duration mixed
load while a seeded driver breaks them, then the invariants, printed as figures.

    sudo -E "$PY" Tests/chaos/chaos.py --seed 7 --duration 1800     # the long run (tools/chaos.sh)

Hosts (tools/testbed.sh, 198.18.0.11-15), each with meshd (static peers and mDNS) and, but h5, a
simulated engine; h5 is the gateway, with the fake cloud (Tests/cloud/fake_cloud.py, on h5's own
loopback) behind a small daily budget:

    h1 chaos-a            h2 chaos-a chaos-b     h3 chaos-b chaos-c (an Ollama-kind engine)
    h4 chaos-c chaos-d    h5 gateway: chaos-gpt on the fake cloud, CAP USD a day

Load: WORKERS threads, each request to a random host (the thread enters the host's network
namespace with setns(2) and talks to its meshd on 127.0.0.1:11435), a random model (local or
forwarded; chaos-d has one holder; chaos-gpt escalates to the cloud), OpenAI or Ollama dialect,
streamed or not; bounded in count (MAX_REQUESTS_PER_S a second of load) and time. Each request is
recorded (times, host, model, dialect, stream, status, outcome, the node that served, chunk gaps).

Faults (seeded, one at a time, each kind in turn in a shuffled order): kill -9 of every process of
a host then revive; SIGSTOP/SIGCONT of every process of a host; cut and heal a host's link; kill -9
of a host's engine then start it again; restart a host's avahi-daemon. Each is recorded with the
time it started and the time its repair completed.

Invariants (`Report.violations`):
  1. no non-streamed request failed that was sent to a live node (not killed nor frozen from
     SETTLE_S before it began to its end) while some live node had its model (reachable: neither
     end cut, its engine running; the gateway for the cloud model; same SETTLE_S margin), budget
     refusals (429 naming the budget on chaos-gpt) aside;
  2. every stream ended, complete or with an error event, and after every fault event while it
     ran (a fault started or repaired; while the host asked is frozen, its SIGCONT) the stream sent
     a chunk or ended within timeouts.between_chunks_ms; streams to a host killed under them are
     counted apart (the client's own connection is reset, no error event can come);
  3. the ledger's spend (sampled all along and at the end) never above the cap, what the fake
     cloud billed never above it either, and the ledger never below what the fake cloud billed;
  4. every node's view (states and models of all five) equal within 5 s of the last repair;
  5. no child process leaked: every host runs the processes it ran before the chaos, once each, no
     zombies, meshd with no children;
  6. every meshd's RSS (sampled all along) below RSS_LIMIT_MIB.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import datetime
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
for _suite in ("e2e", "mesh", "testbed"):
    _p = str(HERE.parent / _suite)
    if _p not in sys.path:
        sys.path.insert(0, _p)

from cloud_helpers import API_KEY, CLOUD_DIR  # noqa: E402
from meshd_e2e import E2EError, wait_until  # noqa: E402
from mesh_helpers import MeshBinaries, chat, make_secret, ollama_chat  # noqa: E402
from testbed_helpers import HTTP_PORT, SIM_PORT, Bed, BedNode, BedRegistry  # noqa: E402

HOSTS = ["h1", "h2", "h3", "h4", "h5"]
GATEWAY = "h5"
CLOUD_MODEL = "chaos-gpt"
CLOUD_PORT = 8443
MODELS: dict[str, list[str]] = {"h1": ["chaos-a"], "h2": ["chaos-a", "chaos-b"], "h3": ["chaos-b", "chaos-c"],
                                "h4": ["chaos-c", "chaos-d"], "h5": []}
ENGINE_KIND = {"h3": "ollama"}
# Requests per model, in weight.
MODEL_WEIGHTS = {"chaos-a": 30, "chaos-b": 25, "chaos-c": 20, "chaos-d": 10, CLOUD_MODEL: 15}
# 1 prompt word at 20 USD/M + 8 output tokens at 100 USD/M: 0.00082 USD a request, ~14 under the cap.
PRICES = {CLOUD_MODEL: {"input": 20.0, "output": 100.0, "max_output_tokens": 64}}
CAP = 0.012
BETWEEN_CHUNKS_MS = 5000
SETTLE_S = 5.0
VIEW_BOUND_S = 5.0
RSS_LIMIT_MIB = 400
WORKERS = 6
# Requests at most, per second of load (the workers send about 10 a second on the 2-core machine).
MAX_REQUESTS_PER_S = 30
NONSTREAM_TIMEOUT = 30.0
STREAM_TIMEOUT = 60.0
FAULT_KINDS = ["kill", "freeze", "cut", "engine", "avahi"]

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(path: str) -> None:
    """Moves the calling thread (only) into the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns {path}: {os.strerror(e)}")
    finally:
        os.close(fd)


# MARK: records


@dataclass
class Req:
    i: int
    host: str
    model: str
    dialect: str  # "openai" | "ollama"
    stream: bool
    t0: float
    t1: float = 0.0
    status: int = 0
    # ok | http_error | budget | conn_error | error_event | truncated | timeout
    outcome: str = ""
    served_by: str = ""
    detail: str = ""
    chunks: int = 0
    max_gap: float = 0.0
    # Streams: when each line (chunk) came, and the longest wait from a fault event while it ran to
    # its next chunk or its end (None: it saw none).
    chunk_times: list[float] = field(default_factory=list)
    after_fault: float | None = None


@dataclass
class Fault:
    kind: str
    host: str
    t_start: float
    t_end: float = 0.0  # its repair completed (revived meshd answering, SIGCONT sent, healed, engine up, avahi up)
    duration: float = 0.0


# MARK: the mesh on the bed


class ChaosMesh:
    def __init__(self, bed: Bed, bins: MeshBinaries) -> None:
        self.bed, self.bins = bed, bins
        self.netns = {h: f"/run/netns/{bed.prefix}-{h}" for h in HOSTS}
        secret = make_secret(bins, bed.run / "mesh.secret")
        for h, models in MODELS.items():
            if models:
                self.start_engine(h)
        tls = bed.run / "tls"
        subprocess.run(["bash", str(CLOUD_DIR / "make-test-ca.sh"), str(tls)], check=True, timeout=60, capture_output=True)
        self.billing_log = bed.run / "billed.jsonl"
        bed.spawn(GATEWAY, "cloud", sys.executable, str(CLOUD_DIR / "fake_cloud.py"), "--cert", str(tls / "server.pem"),
                  "--key", str(tls / "server.key"), "--api-key", API_KEY, "--port", str(CLOUD_PORT),
                  "--billing-log", str(self.billing_log))
        key = bed.dir(GATEWAY) / "cloud.key"
        key.write_text(API_KEY + "\n")
        key.chmod(0o600)
        gateway = {"cloud": {"providers": [{"name": "openai", "kind": "openai", "base_url": f"https://127.0.0.1:{CLOUD_PORT}/v1",
                                            "key_file": str(key), "ca_file": str(tls / "ca.pem")}],
                             "prices": PRICES, "prices_file": str(bed.run / "no-prices.yaml")},
                   "budget": {"daily_usd": CAP}}
        self.nodes = {h: BedNode(bed, bins, h, secret, mdns=True, peers=[p for p in HOSTS if p != h],
                                 engines=[{"kind": ENGINE_KIND.get(h, "openai"), "url": f"http://127.0.0.1:{SIM_PORT}"}]
                                 if MODELS[h] else [],
                                 extra={"timeouts": {"connect_ms": 1000, "between_chunks_ms": BETWEEN_CHUNKS_MS},
                                        **(gateway if h == GATEWAY else {})})
                      for h in HOSTS}
        for n in self.nodes.values():
            n.start()
        for n in self.nodes.values():
            n.wait_ready()
        wait_until(lambda: "LISTENING" in self.log(GATEWAY, "cloud"), 20, interval=0.1, what="the fake cloud on h5")

    def start_engine(self, h: str) -> None:
        self.bed.spawn(h, "sim", str(self.bins.sim), "--host", "127.0.0.1", "--port", str(SIM_PORT),
                       "--models", ",".join(MODELS[h]), "--loaded", ",".join(MODELS[h]), "--gen-tps", "40", "--slots", "4")
        wait_until(lambda: self.bed.curl(h, "GET", "/sim/stats", port=SIM_PORT, timeout=5)[0] == 200, 20, interval=0.1,
                   what=f"sim engine on {h}")

    def log(self, h: str, name: str) -> str:
        try:
            return (self.bed.dir(h) / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def pid(self, h: str, name: str) -> int | None:
        try:
            return int((self.bed.dir(h) / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def host_pids(self, h: str) -> list[int]:
        """Every process in the host's network namespace but its keeper."""
        keeper = (self.bed.dir(h) / "keeper.pid").read_text().strip()
        out = subprocess.run(["ip", "netns", "pids", f"{self.bed.prefix}-{h}"], capture_output=True, text=True,
                             timeout=10).stdout.split()
        return [int(p) for p in out if p != keeper]

    def view(self, h: str) -> dict[str, tuple[str, tuple[str, ...]]]:
        v = self.nodes[h].nodes(timeout=2)
        return {name: (n.get("state", ""), tuple(sorted(n.get("models", [])))) for name, n in v.items()}

    def views_equal(self) -> dict[str, Any] | None:
        """Every node's view, when all are equal and show the five up with their engines' models."""
        views = {h: self.view(h) for h in HOSTS}
        first = views[HOSTS[0]]
        if any(v != first for v in views.values()):
            return None
        for h in HOSTS:
            st, models = first.get(h, ("", ()))
            if st != "up" or not set(MODELS[h]) <= set(models):
                return None
        return views

    def formed(self, timeout: float) -> float:
        t0 = time.monotonic()
        try:
            wait_until(self.views_equal, timeout, interval=0.05, what="every node's view equal, all five up with their models")
        except E2EError as e:
            raise E2EError(f"{e}; views: {json.dumps({h: self.safe_view(h) for h in HOSTS}, default=str)[:4000]}") from None
        return time.monotonic() - t0

    def safe_view(self, h: str) -> Any:
        try:
            return self.view(h)
        except Exception as e:  # noqa: BLE001
            return repr(e)

    def budget(self) -> dict[str, Any]:
        return self.nodes[GATEWAY].admin_get("/v1/budget", timeout=2)

    def billed_usd(self) -> tuple[int, float]:
        n, usd = 0, 0.0
        try:
            lines = self.billing_log.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            b = json.loads(line)
            p = PRICES[b["model"]]
            n += 1
            usd += (b["prompt_tokens"] * p["input"] + b["completion_tokens"] * p["output"]) / 1e6
        return n, usd

    def rss_mib(self, h: str) -> float | None:
        pid = self.pid(h, "meshd")
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            return None
        return None

    def processes(self) -> dict[str, dict[str, int]]:
        """Per host: process name -> count, zombies counted as `zombie:NAME`, meshd's children as `child-of-meshd:NAME`."""
        out: dict[str, dict[str, int]] = {}
        for h in HOSTS:
            counts: collections.Counter[str] = collections.Counter()
            meshd = self.pid(h, "meshd")
            for pid in self.host_pids(h):
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                except OSError:
                    continue
                name = stat[stat.index("(") + 1:stat.rfind(")")]
                state, ppid = stat[stat.rfind(")") + 2:].split()[:2]
                counts[("zombie:" if state == "Z" else "") + name] += 1
                if int(ppid) == meshd:
                    counts[f"child-of-meshd:{name}"] += 1
            out[h] = dict(sorted(counts.items()))
        return out


# MARK: load


class Load:
    def __init__(self, mesh: ChaosMesh, rng: random.Random, until: float) -> None:
        self.mesh, self.until = mesh, until
        self.max_requests = int(max(0.0, until - time.monotonic()) * MAX_REQUESTS_PER_S) + 100
        self.seeds = [rng.randrange(1 << 30) for _ in range(WORKERS)]
        self.records: list[Req] = []
        self.lock = threading.Lock()
        self.count = 0
        self.threads = [threading.Thread(target=self.worker, args=(k,), name=f"load-{k}", daemon=True) for k in range(WORKERS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def worker(self, k: int) -> None:
        rng = random.Random(self.seeds[k])
        models, weights = list(MODEL_WEIGHTS), list(MODEL_WEIGHTS.values())
        while time.monotonic() < self.until:
            with self.lock:
                if self.count >= self.max_requests:
                    return
                self.count += 1
                i = self.count
            host = rng.choice(HOSTS)
            model = rng.choices(models, weights)[0]
            dialect = rng.choice(["openai", "ollama"])
            stream = rng.random() < 0.5
            tokens = 8 if model == CLOUD_MODEL else rng.randint(24, 48) if stream else rng.randint(8, 16)
            enter_netns(self.mesh.netns[host])
            r = Req(i, host, model, dialect, stream, time.monotonic())
            try:
                self.one(r, tokens)
            except Exception as e:  # noqa: BLE001 - any failure is a recorded outcome
                r.outcome = r.outcome or ("timeout" if isinstance(e, socket.timeout) else "conn_error")
                r.detail = r.detail or repr(e)[:200]
            r.t1 = time.monotonic()
            with self.lock:
                self.records.append(r)
            time.sleep(rng.uniform(0, 0.15))

    def one(self, r: Req, tokens: int) -> None:
        if r.dialect == "openai":
            path, body = "/v1/chat/completions", chat(r.model, stream=r.stream, max_tokens=tokens)
        else:
            path, body = "/api/chat", ollama_chat(r.model, stream=r.stream, num_predict=tokens)
        conn = http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=STREAM_TIMEOUT if r.stream else NONSTREAM_TIMEOUT)
        try:
            conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
            resp = conn.getresponse()
            r.status = resp.status
            r.served_by = resp.getheader("x-meshd-node") or ""
            if resp.status != 200 or not r.stream:
                text = resp.read().decode(errors="replace")
                if resp.status == 200:
                    ok = json.loads(text)
                    content = ok["choices"][0]["message"]["content"] if r.dialect == "openai" else ok["message"]["content"]
                    r.outcome = "ok" if content else "http_error"
                else:
                    r.outcome = "budget" if resp.status == 429 and r.model == CLOUD_MODEL and "budget" in text.lower() else "http_error"
                r.detail = "" if r.outcome == "ok" else text[:200]
                return
            self.read_stream(r, resp)
        finally:
            conn.close()

    def read_stream(self, r: Req, resp: http.client.HTTPResponse) -> None:
        deadline = r.t0 + STREAM_TIMEOUT
        last = time.monotonic()
        while time.monotonic() < deadline:
            line = resp.readline()
            now = time.monotonic()
            if not line:
                r.outcome = "truncated"
                return
            r.max_gap = max(r.max_gap, now - last)
            last = now
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            r.chunks += 1
            r.chunk_times.append(round(now, 3))
            if r.dialect == "openai":
                if not text.startswith("data:"):
                    continue
                data = text[5:].strip()
                if data == "[DONE]":
                    r.outcome = "ok"
                    return
                event = json.loads(data)
            else:
                event = json.loads(text)
            if isinstance(event, dict) and "error" in event:
                r.outcome = "error_event"
                r.detail = json.dumps(event)[:200]
                return
            if r.dialect == "ollama" and event.get("done"):
                r.outcome = "ok"
                return
        r.outcome = "timeout"


# MARK: faults


class ViewWatcher:
    """After each repair, while no fault is in progress, polls every node's view until they are
    equal, and records when: a repair that ends more than 5 s before the run does is timed then,
    not when the run's end comes (which measured the wait for the end, not the mesh)."""

    def __init__(self, mesh: ChaosMesh, driver: Driver, until: float) -> None:
        self.mesh, self.driver, self.until = mesh, driver, until
        self.equal_after: dict[float, float] = {}  # a repair's t_end: when the views were first equal after it
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="chaos-views", daemon=True)

    def run(self) -> None:
        while not self.stopped.is_set() and time.monotonic() < self.until + 60:
            faults = list(self.driver.faults)
            if faults and all(f.t_end > 0 for f in faults):
                last = max(f.t_end for f in faults)
                if last not in self.equal_after:
                    try:
                        equal = self.mesh.views_equal() is not None
                    except Exception:  # noqa: BLE001 - a node still starting
                        equal = False
                    if equal and len(self.driver.faults) == len(faults):  # no fault began meanwhile
                        self.equal_after[last] = time.monotonic()
            self.stopped.wait(0.2)


class Driver:
    """Seeded faults, one at a time, until `until`; every kind in turn (a shuffled order per round)."""

    def __init__(self, mesh: ChaosMesh, rng: random.Random, until: float) -> None:
        self.mesh, self.rng, self.until = mesh, rng, until
        self.faults: list[Fault] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self.run, name="chaos-driver", daemon=True)

    def run(self) -> None:
        kinds: list[str] = []
        try:
            while True:
                time.sleep(self.rng.uniform(1.0, 3.0))
                if time.monotonic() + 4 > self.until:
                    return
                if not kinds:
                    kinds = FAULT_KINDS[:]
                    self.rng.shuffle(kinds)
                kind = kinds.pop()
                hosts = [h for h in HOSTS if kind != "engine" or MODELS[h]]
                host = self.rng.choice(hosts)
                duration = self.rng.uniform(1.5, 8.0 if kind == "freeze" else 5.0)
                duration = min(duration, max(0.5, self.until - time.monotonic() - 1))
                self.fault(kind, host, duration)
        except Exception as e:  # noqa: BLE001 - reported, fails the run
            self.errors.append(f"driver: {e!r}")

    def fault(self, kind: str, host: str, duration: float) -> None:
        bed, mesh = self.mesh.bed, self.mesh
        f = Fault(kind, host, time.monotonic(), duration=duration)
        self.faults.append(f)
        if kind == "kill":
            bed.sh("kill", host)
            time.sleep(duration)
            bed.sh("revive", host)
            mesh.nodes[host].wait_ready(30)
        elif kind == "freeze":
            pids = mesh.host_pids(host)
            self.signal_all(pids, signal.SIGSTOP)
            time.sleep(duration)
            self.signal_all(pids, signal.SIGCONT)
        elif kind == "cut":
            bed.sh("cut", host)
            time.sleep(duration)
            bed.sh("heal", host)
        elif kind == "engine":
            pid = mesh.pid(host, "sim")
            if pid:
                os.kill(pid, signal.SIGKILL)
            time.sleep(duration)
            mesh.start_engine(host)
        elif kind == "avahi":
            bed.sh("restart-avahi", host)
        f.t_end = time.monotonic()

    @staticmethod
    def signal_all(pids: list[int], sig: signal.Signals) -> None:
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass


# MARK: the run and its invariants


@dataclass
class Report:
    seed: int
    duration: float
    figures: dict[str, Any] = field(default_factory=dict)
    violations: dict[str, list[str]] = field(default_factory=dict)

    def text(self) -> str:
        lines = [f"[chaos] seed {self.seed}, {self.duration:.0f} s of chaos"]
        for k, v in self.figures.items():
            lines.append(f"[chaos] {k}: {json.dumps(v, default=str)}")
        for k, v in self.violations.items():
            lines.append(f"[chaos] invariant {k}: {'OK' if not v else f'{len(v)} VIOLATION(S)'}")
            lines += [f"[chaos]     {x}" for x in v[:10]]
        return "\n".join(lines)


def overlaps(f: Fault, a: float, b: float, settle: float) -> bool:
    """The fault, from its start to `settle` after its repair, overlaps [a, b]."""
    return f.t_start <= b and (f.t_end or float("inf")) + settle >= a


def check_requests(records: list[Req], faults: list[Fault], rep: Report) -> None:
    def hit(h: str, kinds: tuple[str, ...], a: float, b: float) -> bool:
        return any(f.host == h and f.kind in kinds and overlaps(f, a, b, SETTLE_S) for f in faults)

    def holder_live(n: str, model: str, t: str, a: float, b: float) -> bool:
        if model == CLOUD_MODEL:
            if n != GATEWAY:
                return False
        elif model not in MODELS[n] or hit(n, ("engine",), a, b):
            return False
        if hit(n, ("kill", "freeze"), a, b):
            return False
        return n == t or not (hit(n, ("cut",), a, b) or hit(t, ("cut",), a, b))

    plain = [r for r in records if not r.stream]
    in_scope = [r for r in plain if not hit(r.host, ("kill", "freeze"), r.t0, r.t1)
                and any(holder_live(n, r.model, r.host, r.t0, r.t1) for n in HOSTS)]
    scoped = {r.i for r in in_scope}
    failed = [r for r in in_scope if r.outcome not in ("ok", "budget")]
    out_failed = [r for r in plain if r.i not in scoped and r.outcome not in ("ok", "budget")]
    rep.violations["1 non-streamed to a live node with a live holder never failed"] = [
        f"#{r.i} {r.dialect} {r.model} on {r.host} at +{r.t0 - T0:.2f}s..+{r.t1 - T0:.2f}s: {r.outcome} {r.status} {r.detail}"
        for r in failed]
    rep.figures["non-streamed"] = {
        "sent": len(plain), "ok": sum(r.outcome == "ok" for r in plain), "budget_refused": sum(r.outcome == "budget" for r in plain),
        "in_scope": len(in_scope), "in_scope_failed": len(failed), "failed_out_of_scope": len(out_failed),
        "forwarded_ok": sum(r.outcome == "ok" and r.served_by not in ("", r.host) for r in plain),
        "max_s": round(max((r.t1 - r.t0 for r in plain), default=0), 2)}

    streams = [r for r in records if r.stream]
    # The host asked was down (killed, not yet answering again) at some point of the stream.
    own_killed = [r for r in streams if any(f.host == r.host and f.kind == "kill" and overlaps(f, r.t0, r.t1, 0.0)
                                            for f in faults)]
    killed = {r.i for r in own_killed}
    checked = [r for r in streams if r.i not in killed]
    unended = [r for r in checked if r.outcome not in ("ok", "error_event", "http_error", "budget")]
    events = sorted([(f.t_start, f) for f in faults] + [(f.t_end, f) for f in faults if f.t_end], key=lambda e: e[0])
    late: list[str] = []
    latencies: list[float] = []
    for r in checked:
        # Every fault event while the stream ran must be followed by a chunk or the stream's end within
        # between_chunks_ms. While the host asked is itself frozen nothing can come: its SIGCONT counts.
        waits = []
        for t, f in events:
            if not r.t0 <= t <= r.t1 or any(g.host == r.host and g.kind == "freeze" and g.t_start <= t < g.t_end for g in faults):
                continue
            nxt = next((c for c in r.chunk_times if c >= t), r.t1)
            waits.append((nxt - t, t, f))
        if waits:
            lat, t, f = max(waits, key=lambda w: w[0])
            r.after_fault = lat
            latencies.append(lat)
            if lat > BETWEEN_CHUNKS_MS / 1000:
                late.append(f"#{r.i} {r.dialect} {r.model} on {r.host} at +{r.t0 - T0:.2f}s..+{r.t1 - T0:.2f}s: nothing for "
                            f"{lat:.2f}s after {f.kind} {f.host} at +{t - T0:.2f}s ({r.outcome}, served by {r.served_by or '?'}, "
                            f"{r.detail[:120]})")
    rep.violations["2 every stream ended, within between_chunks_ms of a fault"] = [
        f"#{r.i} {r.dialect} {r.model} on {r.host} at +{r.t0 - T0:.2f}s..+{r.t1 - T0:.2f}s: {r.outcome} {r.detail}"
        for r in unended] + late
    rep.figures["streams"] = {
        "sent": len(streams), "complete": sum(r.outcome == "ok" for r in streams),
        "error_event": sum(r.outcome == "error_event" for r in streams),
        "refused_before_start": sum(r.outcome in ("http_error", "budget") for r in streams),
        "own_node_killed": len(own_killed), "unended": len(unended), "saw_a_fault": len(latencies),
        "max_wait_after_fault_s": round(max(latencies, default=0), 2), "bound_s": BETWEEN_CHUNKS_MS / 1000,
        "max_chunk_gap_s": round(max((r.max_gap for r in streams), default=0), 2)}
    rep.figures["by_dialect_stream"] = {f"{d}/{'stream' if s else 'plain'}": sum(r.dialect == d and r.stream == s for r in records)
                                        for d in ("openai", "ollama") for s in (False, True)}
    rep.figures["by_model"] = dict(collections.Counter(r.model for r in records))
    rep.figures["answered_by"] = {"the node asked": sum(r.served_by == r.host for r in records),
                                  "a peer": sum(r.served_by not in ("", r.host) for r in records)}


T0 = 0.0
# time.time() at T0: meshd's log lines carry wall-clock seconds.
T0_WALL = 0.0
LOG_LEVELS = (" notice ", " warning ", " error ", " critical ")


def log_excerpt(mesh: ChaosMesh, hosts: list[str], a: float, b: float, limit: int = 12) -> list[str]:
    """Lines of notice level and above that `hosts`' meshd logged from 4 s before monotonic time `a` to 1 s
    after `b`: what a violation's host saw, in the report and so in CI's output."""
    lo, hi = T0_WALL + (a - T0) - 4, T0_WALL + (b - T0) + 1
    out: list[str] = []
    for h in dict.fromkeys(x for x in hosts if x in HOSTS):
        for line in mesh.log(h, "meshd").splitlines():
            try:
                t = datetime.datetime.strptime(line[:24], "%Y-%m-%dT%H:%M:%S%z").timestamp()
            except ValueError:
                continue
            if lo - 1 < t < hi + 1 and any(k in line for k in LOG_LEVELS):
                out.append(f"{h}: {line[11:19]} {line[25:].replace(' meshd:', '', 1)[:260]}")
    return out[-limit:]


def attach_logs(mesh: ChaosMesh, records: list[Req], rep: Report) -> None:
    """Each violation of invariants 1 and 2 names its request (#i); add what the hosts involved logged."""
    by_i = {r.i: r for r in records}
    for key in list(rep.violations):
        if not key.startswith(("1 ", "2 ")):
            continue
        lines = []
        for v in rep.violations[key]:
            lines.append(v)
            r = by_i.get(int(v[1:].split(" ", 1)[0])) if v.startswith("#") else None
            if r:
                lines += [f"    {x}" for x in log_excerpt(mesh, [r.host, r.served_by], r.t0, r.t1)]
        rep.violations[key] = lines


def run(bed: Bed, bins: MeshBinaries, seed: int, duration: float, out: Path | None = None) -> Report:
    global T0, T0_WALL
    rng = random.Random(seed)
    rep = Report(seed, duration)
    setup0 = time.monotonic()
    mesh = ChaosMesh(bed, bins)
    formed = mesh.formed(30)
    rep.figures["setup_s"] = round(time.monotonic() - setup0, 1)
    rep.figures["formed_s"] = round(formed, 2)
    procs_before = mesh.processes()
    rss_start = {h: round(mesh.rss_mib(h) or 0.0, 1) for h in HOSTS}

    T0, T0_WALL = time.monotonic(), time.time()
    until = T0 + duration
    load, driver = Load(mesh, random.Random(rng.randrange(1 << 30)), until), Driver(mesh, random.Random(rng.randrange(1 << 30)), until)
    spent_max, reserved_max, samples, rss_max = 0.0, 0.0, 0, {h: 0.0 for h in HOSTS}
    watcher = ViewWatcher(mesh, driver, until)
    load.start()
    driver.thread.start()
    watcher.thread.start()
    next_sample = 0.0
    # Steps of the wall clock against the monotonic one (NTP, a paused VM): meshd must not care.
    offset, clock_steps = time.time() - time.monotonic(), []
    while time.monotonic() < until or driver.thread.is_alive():
        if time.monotonic() > until + 60:
            driver.errors.append("the driver did not finish within 60 s of the end")
            break
        if time.monotonic() < next_sample:
            time.sleep(0.05)
            continue
        next_sample = time.monotonic() + 1.0
        if abs((o := time.time() - time.monotonic()) - offset) > 0.5:
            clock_steps.append(f"+{time.monotonic() - T0:.1f}s: {o - offset:+.1f}s")
            offset = o
        try:
            b = mesh.budget()
            spent_max = max(spent_max, b["daily"]["spent_usd"])
            reserved_max = max(reserved_max, b["daily"]["reserved_usd"])
            samples += 1
        except Exception:  # noqa: BLE001 - the gateway may be down or frozen
            pass
        for h in HOSTS:
            rss_max[h] = max(rss_max[h], mesh.rss_mib(h) or 0.0)
    last_repair = max((f.t_end for f in driver.faults), default=T0)
    view_after: float | None = None
    try:
        mesh.formed(30)
        view_after = time.monotonic() - last_repair
    except E2EError as e:
        driver.errors.append(str(e))
    watcher.stopped.set()
    watcher.thread.join(10)
    if last_repair in watcher.equal_after:  # timed while the run went on
        view_after = min(view_after if view_after is not None else float("inf"), watcher.equal_after[last_repair] - last_repair)
    drained = load.join(STREAM_TIMEOUT + 10)
    rep.figures["faults"] = {k: sum(f.kind == k for f in driver.faults) for k in FAULT_KINDS}
    rep.figures["fault_list"] = [f"+{f.t_start - T0:.1f}s {f.kind} {f.host} {f.duration:.1f}s" for f in driver.faults]
    rep.figures["requests"] = len(load.records)

    rep.figures["wall_clock_steps"] = clock_steps
    check_requests(load.records, driver.faults, rep)
    attach_logs(mesh, load.records, rep)
    if clock_steps:
        for key in rep.violations:
            if rep.violations[key]:
                rep.violations[key].append(f"(the wall clock stepped meanwhile: {', '.join(clock_steps)})")

    # 3. budget
    b: dict[str, Any] = {}
    try:
        b = wait_until(lambda: (x := mesh.budget()) and x["daily"]["reserved_usd"] == 0 and x, 15, interval=0.2,
                       what="the gateway's reservations to settle")
    except E2EError as e:
        driver.errors.append(str(e))
    n_billed, billed = mesh.billed_usd()
    spent = b.get("daily", {}).get("spent_usd", float("nan"))
    spent_max = max(spent_max, spent if spent == spent else 0)
    rep.figures["budget"] = {"cap_usd": CAP, "ledger_spent_usd": round(spent, 6), "max_spent_sampled_usd": round(spent_max, 6),
                             "max_reserved_sampled_usd": round(reserved_max, 6), "samples": samples,
                             "cloud_billed_answers": n_billed, "cloud_billed_usd": round(billed, 6)}
    rep.violations["3 spend never above the cap, ledger never below the cloud's bill"] = [
        x for x in [f"ledger spent {spent_max} > cap {CAP}" if spent_max > CAP + 1e-9 else "",
                    f"cloud billed {billed} > cap {CAP}" if billed > CAP + 1e-9 else "",
                    f"ledger {spent} < billed {billed}" if not spent >= billed - 1e-9 else ""] if x]

    # 4. views
    rep.figures["views_equal_after_last_repair_s"] = None if view_after is None else round(view_after, 2)
    rep.violations["4 every view equal within 5 s of the last repair"] = (
        [] if view_after is not None and view_after <= VIEW_BOUND_S else
        [f"views equal {view_after}s after the last repair (bound {VIEW_BOUND_S}s)"])

    # 5. processes
    procs_after = mesh.processes()
    rep.figures["processes"] = procs_after
    leaks = [f"{h}: before {procs_before[h]}, after {procs_after[h]}" for h in HOSTS if procs_before[h] != procs_after[h]]
    leaks += [f"{h}: {k} x{v}" for h in HOSTS for k, v in procs_after[h].items() if k.startswith(("zombie:", "child-of-meshd:"))]
    leaks += [] if drained else ["load threads still running 70 s after the end"]
    rep.violations["5 no child process leaked"] = leaks

    # 6. RSS
    for h in HOSTS:
        rss_max[h] = round(max(rss_max[h], mesh.rss_mib(h) or 0.0), 1)
    rep.figures["rss_mib"] = {"before": rss_start, "max": rss_max, "end": {h: round(mesh.rss_mib(h) or 0.0, 1) for h in HOSTS}}
    rep.violations["6 RSS bounded"] = [f"{h}: {v} MiB > {RSS_LIMIT_MIB}" for h, v in rss_max.items() if v > RSS_LIMIT_MIB]
    rep.violations["0 the harness ran"] = driver.errors

    if out:
        out.write_text(json.dumps({"report": asdict(rep), "requests": [asdict(r) for r in load.records],
                                   "faults": [asdict(f) for f in driver.faults], "t0": T0, "t0_wall": T0_WALL},
                                  default=str, indent=1))
        # Every host's logs beside it, for a failure to be read after the bed is gone.
        for h in HOSTS:
            for f in bed.dir(h).glob("*.log"):
                shutil.copyfile(f, out.parent / f"{h}-{f.name}")
    return rep


def main() -> int:
    p = argparse.ArgumentParser(description="meshd chaos run on the multi-host test bed (root)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=90, help="seconds of load and faults")
    p.add_argument("--json", type=Path, help="write the report, every request and every fault here")
    p.add_argument("--recheck", type=Path, help="decide invariants 1 and 2 again from a --json file of an earlier run")
    a = p.parse_args()
    if a.recheck:
        global T0
        saved = json.loads(a.recheck.read_text())
        T0 = saved["t0"]
        rep = Report(saved["report"]["seed"], saved["report"]["duration"])
        check_requests([Req(**r) for r in saved["requests"]], [Fault(**f) for f in saved["faults"]], rep)
        print(rep.text())
        return 1 if any(rep.violations.values()) else 0
    if os.geteuid() != 0:
        print("chaos: needs root (tools/testbed.sh)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt("SIGTERM")))
    beds = BedRegistry()
    import tempfile
    with tempfile.TemporaryDirectory(prefix="meshd-chaos-") as tmp:
        bins = MeshBinaries(Path(tmp))
        bed = beds.open_bed(len(HOSTS))
        try:
            rep = run(bed, bins, a.seed, a.duration, a.json)
        finally:
            beds.close(bed)  # type: ignore[arg-type]
    print(rep.text())
    return 1 if any(rep.violations.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
