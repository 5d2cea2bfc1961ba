#!/usr/bin/env python3
"""Cost of ONE mesh hop (issue #3, point 9): latency and per-chunk stream relay through a
CURVE-encrypted two-node mesh vs the same node serving locally. Stdlib only.

    python3 benches/mesh_bench.py      # build (release) + ~2-3 min of measurements

Setup, all on 127.0.0.1, every process started here is stopped on exit, error, Ctrl-C or SIGTERM:

    meshd-sim-engine (--gen-tps 0 --prompt-tps 0 --latency-ms 0 --slots 16, model "sim")
      ^ kind: openai
    node B: meshd with that engine, mesh.listen MB, secret_file F          <- "local" target
      ^ ZeroMQ ROUTER/DEALER, CURVE (always on with a secret), mesh protocol v1
    node A: meshd with no engine, mesh.peers [MB], same secret             <- "hop" target

Before measuring, A's /readyz must be 200 and a request through A must answer 200 with
`X-Meshd-Via: A` and `X-Meshd-Node: B` (and a request to B: `X-Meshd-Node: B`, no Via).

Measured, in one run, targets interleaved so drift and co-tenants hit all of them alike:
  - latency: `wrk -t1 -c1 --latency` with benches/chat.lua (BENCH_MODEL=sim), rounds rotating the
    order (odd rounds engine, B, A; even rounds A, B, engine); hop cost = A - B per round, median
    over rounds. The sim engine itself (no meshd) is measured at c1 too, for reference.
  - throughput: the same with -c8 (B vs A).
  - per-chunk relay: a 2000-token stream from the sim engine with --gen-tps 0 (all chunks written at
    once), via stream_bench.one_request: wall time request -> last byte / content chunks, through B
    vs through A (and straight from the engine); relay cost per chunk = A - B per round, median.
  - CPU of A, B and the engine per request / per chunk (schedstat of all threads), wrk's own CPU,
    and the machine's busy time not accounted to those ("other cores": co-tenant noise), plus an idle
    baseline.
  - per thread: CPU and sleeps of each thread of A and B per request, over THREAD_N sequential
    requests through A and then to B (where the hop's CPU and hand-offs go).

Writes benches/mesh-results.md and benches/mesh-results.json (OUT_DIR to change).

Environment knobs [defaults]: ROUNDS [10], SECS [3], CONNS [1,8], STREAM_N [7], SIM_TOKENS [2000],
ENGINE_REF [1] (0: skip the straight-to-engine reference), THREAD_N [1000] (sequential requests
for the per-thread breakdown; 0: skip it), BUDGET_S [240] (no new latency round
starts after this many seconds of measuring; streams get 40 s more), SKIP_BUILD [0], KEEP_WORK [0],
OUT_DIR [benches].
"""
from __future__ import annotations

import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402  (machine_info, sh, med, fmt)
import stream_bench  # noqa: E402  (Target, one_request)
import thread_profile  # noqa: E402  (snapshot)
import wrk_rounds  # noqa: E402  (run_wrk, task_cpu_ns, task_switches, machine_ticks)

TARGET_HOP_P50_MS = 0.5
TARGET_CHUNK_RELAY_MS = 0.2
MODEL = "sim"

ROUNDS = int(os.environ.get("ROUNDS", "10"))
SECS = int(os.environ.get("SECS", "3"))
CONNS = [int(c) for c in os.environ.get("CONNS", "1,8").split(",") if c.strip()]
STREAM_N = int(os.environ.get("STREAM_N", "7"))
SIM_TOKENS = int(os.environ.get("SIM_TOKENS", "2000"))
ENGINE_REF = os.environ.get("ENGINE_REF", "1") == "1"
BUDGET_S = float(os.environ.get("BUDGET_S", "240"))
THREAD_N = int(os.environ.get("THREAD_N", "1000"))
SKIP_BUILD = os.environ.get("SKIP_BUILD", "0") == "1"
KEEP_WORK = os.environ.get("KEEP_WORK", "0") == "1"
OUT_DIR = Path(os.environ.get("OUT_DIR", str(HERE)))
CLK_TCK = os.sysconf("SC_CLK_TCK")

T_START = time.monotonic()


def log(msg: str) -> None:
    print(f"[mesh-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ------------------------------------------------------------------------------------ processes

class Procs:
    """Every process this script starts; stopped in reverse order (TERM, 5 s, KILL)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, subprocess.Popen, object]] = []

    def start(self, name: str, argv: list[str], logfile: Path, env: dict | None = None) -> subprocess.Popen:
        f = open(logfile, "wb")
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.items.append((name, p, f))
        log(f"started {name} pid {p.pid}")
        return p

    @staticmethod
    def stop(p: subprocess.Popen) -> None:
        if p.poll() is not None:
            return
        try:
            p.terminate()
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        except OSError:
            pass

    def stop_all(self) -> None:
        while self.items:
            name, p, f = self.items.pop()
            self.stop(p)
            try:
                f.close()
            except OSError:
                pass


PROCS = Procs()


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def clean_env() -> dict:
    """No MESHD_* overrides, no systemd notify socket, no proxies (everything is loopback)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("MESHD_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
            and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_call(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
              timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """(status, lower-cased headers, body); status 0 when the connection failed. No proxies."""
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request(method, u.path or "/", body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    except (OSError, http.client.HTTPException):
        return 0, {}, b""
    finally:
        c.close()


def wait_until(fn, secs: float, what: str, procs: list[tuple[str, subprocess.Popen, Path]] = ()) -> None:
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        for name, p, logf in procs:
            if p.poll() is not None:
                raise BenchError(f"{name} exited with {p.returncode} while waiting for {what}:\n{tail(logf)}")
        if fn():
            return
        time.sleep(0.1)
    raise BenchError(f"timed out after {secs:.0f} s waiting for {what}")


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def sh(cmd: str) -> str:
    return report.sh(cmd, cwd=str(ROOT))


def busy_now() -> str:
    """The 4 busiest processes over one second (co-tenant noise), one line."""
    return sh("top -b -n 2 -d 1 -w 200 2>/dev/null | awk '/^top -/ {n++} n==2 && $1 ~ /^[0-9]+$/ && c < 4 "
              "{printf \"%s %s%%; \", $12, $9; c++}'")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


med = report.med  # shared with the main benchmark's report
fmt = report.fmt


# ------------------------------------------------------------------------------------ build

def build(work: Path) -> tuple[dict, float]:
    t0 = time.monotonic()
    if not SKIP_BUILD:
        for product in ("meshd", "meshctl", "meshd-sim-engine"):
            logf = work / f"build-{product}.log"
            for attempt in (1, 2, 3):
                log(f"swift build -c release --static-swift-stdlib --product {product} (attempt {attempt}; SwiftPM may wait for another build's lock)")
                with open(logf, "wb") as f:
                    try:
                        rc = subprocess.run(["swift", "build", "-c", "release", "--static-swift-stdlib", "--product", product], cwd=ROOT,
                                            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            timeout=1200).returncode
                    except subprocess.TimeoutExpired:
                        rc = 124
                if rc == 0:
                    break
                log(f"build failed (rc {rc}); the tree may be mid-edit by someone else, retrying in 30 s:\n{tail(logf, 15)}")
                if attempt == 3:
                    raise BenchError(f"release build of {product} failed; see {logf}")
                time.sleep(30)
    bin_dir = Path(subprocess.run(["swift", "build", "-c", "release", "--static-swift-stdlib", "--show-bin-path"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=120).stdout.strip())
    # Private copies: a concurrent build of the shared tree cannot swap the binaries mid-run.
    into = work / "bin"
    into.mkdir()
    bins = {}
    for name in ("meshd", "meshctl", "meshd-sim-engine"):
        src = bin_dir / name
        if not src.exists():
            raise BenchError(f"{src} missing (build it or drop SKIP_BUILD)")
        dst = into / name
        for _ in range(30):
            shutil.copy2(src, dst)
            if subprocess.run([str(dst), "--help"], capture_output=True, timeout=30).returncode == 0:
                break
            time.sleep(1)
        else:
            raise BenchError(f"{dst} does not run (is a build still writing it?)")
        bins[name] = dst
    bins["source_dir"] = bin_dir
    return bins, time.monotonic() - t0


# ------------------------------------------------------------------------------------ setup

def zmq_floor(warnings: list) -> dict | None:
    """Median over 3 runs of benches/zmq_floor.py with the test venv's python (it has pyzmq)."""
    try:
        py = subprocess.run([str(ROOT / "tools" / "e2e-venv.sh")], capture_output=True, text=True, timeout=900,
                            cwd=ROOT).stdout.strip().splitlines()[-1]
        runs = []
        for _ in range(3):
            out = subprocess.run([py, str(ROOT / "benches" / "zmq_floor.py"), "--n", "3000"], capture_output=True,
                                 text=True, timeout=120).stdout.strip().splitlines()[-1]
            runs.append(json.loads(out))
    except (OSError, IndexError, ValueError, subprocess.SubprocessError) as e:
        warnings.append(f"libzmq floor not measured ({e}); run tools/e2e-venv.sh once to make the venv with pyzmq")
        return None
    runs.sort(key=lambda r: r["p50_us"])
    return {**runs[1], "runs_p50_us": [r["p50_us"] for r in runs]}


def make_secret(bins: dict, work: Path) -> tuple[Path, str]:
    path = work / "mesh.secret"
    res = subprocess.run([str(bins["meshctl"]), "init", "--secret-file", str(path)], capture_output=True, text=True,
                         timeout=15, env=clean_env())
    how = "meshctl init"
    if res.returncode != 0 or not path.exists():
        log(f"meshctl init failed ({res.stdout}{res.stderr}); writing 32 random bytes as hex, mode 0600")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        how = "64 hex digits written by the bench"
    os.chmod(path, 0o600)
    return path, how


def start_sim(bins: dict, work: Path) -> tuple[subprocess.Popen, str, Path]:
    pf = work / "sim.port"
    logf = work / "sim.log"
    p = PROCS.start("sim engine", [str(bins["meshd-sim-engine"]), "--host", "127.0.0.1", "--port", "0", "--port-file", str(pf),
                                   "--models", MODEL, "--loaded", MODEL, "--gen-tps", "0", "--prompt-tps", "0",
                                   "--latency-ms", "0", "--slots", "16", "--queue", "256", "--max-tokens", "8"],
                    logf, env=clean_env())
    wait_until(lambda: pf.exists() and pf.read_text().strip() != "", 15, "the sim engine's port file", [("sim", p, logf)])
    url = f"http://127.0.0.1:{pf.read_text().strip()}"
    wait_until(lambda: http_call("GET", url + "/v1/models")[0] == 200, 15, "the sim engine", [("sim", p, logf)])
    return p, url, logf


def node_config(name: str, work: Path, secret: Path, engine_url: str | None, peers: list[str]) -> tuple[Path, str, str, Path]:
    d = work / f"node-{name}"
    (d / "state").mkdir(parents=True)
    http_port, mesh_port = free_port(), free_port()
    engines = f'\n  - {{ kind: openai, url: "{engine_url}" }}' if engine_url else " []"
    peer_list = ", ".join(f'"{p}"' for p in peers)
    cfg = (f"node: {{ name: {name} }}\n"
           f'state_dir: "{d / "state"}"\n'
           f'http: {{ listen: "127.0.0.1:{http_port}" }}\n'
           f'admin: {{ socket: "{d / "admin.sock"}" }}\n'
           f"engines:{engines}\n"
           f'mesh: {{ listen: "127.0.0.1:{mesh_port}", peers: [{peer_list}], secret_file: "{secret}" }}\n'
           f"discovery: {{ mdns: false }}\n")
    path = d / "meshd.yaml"
    path.write_text(cfg)
    return path, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{mesh_port}", d


def chat_body(max_tokens: int = 8, stream: bool = False) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
                       "stream": stream}).encode()


def metrics_total(url: str) -> int | None:
    st, _, body = http_call("GET", url + "/metrics")
    if st != 200:
        return None
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("meshd_requests_total"):
            try:
                total += float(line.split()[-1])
            except ValueError:
                pass
    return int(total)


# ------------------------------------------------------------------------------------ measuring

def cpu_snapshot(pids: dict) -> dict:
    return {k: wrk_rounds.task_cpu_ns(p) for k, p in pids.items()}


def switches_snapshot(pids: dict) -> dict:
    return {k: wrk_rounds.task_switches(p) for k, p in pids.items()}


def latency_rounds(targets: dict, pids: dict, deadline: float, warnings: list) -> list[dict]:
    env = dict(os.environ, BENCH_MODEL=MODEL)
    script = str(HERE / "chat.lua")
    log("warm-up: 1 s of wrk -c8 per target")
    for name, url in targets.items():
        wrk_rounds.run_wrk(url, max(CONNS), 1, script, env, 20)
    runs = []
    base = list(targets)  # engine, local, hop
    for rnd in range(1, ROUNDS + 1):
        if time.monotonic() > deadline:
            warnings.append(f"latency: time budget used up after {rnd - 1} of {ROUNDS} rounds")
            log(warnings[-1])
            break
        order = base if rnd % 2 == 1 else list(reversed(base))
        for c in CONNS:
            for name in order:
                if name == "engine" and c != 1:
                    continue  # the reference is only needed for latency
                url = targets[name]
                cpu0, sw0, m0 = cpu_snapshot(pids), switches_snapshot(pids), wrk_rounds.machine_ticks()
                w0 = time.monotonic()
                try:
                    r = wrk_rounds.run_wrk(url, c, SECS, script, env, SECS + 20)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    warnings.append(f"latency r{rnd} c{c} {name}: wrk failed: {str(e)[:300]}")
                    log(warnings[-1])
                    continue
                wall = time.monotonic() - w0
                cpu1, sw1, m1 = cpu_snapshot(pids), switches_snapshot(pids), wrk_rounds.machine_ticks()
                n = max(1, r["requests"])
                r.update(target=name, conns=c, round=rnd, wall_s=wall)
                r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
                known_ms = r.get("wrk_cpu_ms") or 0.0
                for k in pids:
                    if cpu0[k] is not None and cpu1[k] is not None:
                        r[f"cpu_us_per_req_{k}"] = (cpu1[k] - cpu0[k]) / 1e3 / n
                        known_ms += (cpu1[k] - cpu0[k]) / 1e6
                    if sw0[k] is not None and sw1[k] is not None:
                        r[f"vol_switches_per_req_{k}"] = (sw1[k][0] - sw0[k][0]) / n
                busy, steal, _total = (m1[i] - m0[i] for i in range(3))
                r["machine_busy_cores"] = busy / CLK_TCK / wall
                r["steal_cores"] = steal / CLK_TCK / wall
                # Tick accounting is coarse (10 ms): an indicator of co-tenant load, not a measurement.
                r["other_cpu_cores"] = max(0.0, busy * 1000.0 / CLK_TCK - known_ms) / 1000.0 / wall
                r["errors"] = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"] + r.get("non2xx", 0)
                runs.append(r)
                log(f"  r{rnd} c{c} {name:6} {r['rps']:7.0f} req/s  p50 {r['p50_us']:6d} us  p99 {r['p99_us']:6d} us  "
                    f"errors {r['errors']}  CPU us/req A {r.get('cpu_us_per_req_A', 0):6.1f} B {r.get('cpu_us_per_req_B', 0):6.1f}  "
                    f"other cores {r['other_cpu_cores']:.2f}")
    return runs


def stream_rounds(targets: dict, pids: dict, deadline: float, warnings: list) -> list[dict]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        "max_tokens": SIM_TOKENS, "stream": True, "stream_options": {"include_usage": True},
        "temperature": 0, "seed": 42,
    }
    # pid 0: stream_bench does no CPU sampling itself; it is done here, for all processes at once.
    tg = {name: stream_bench.Target(name, url, 0) for name, url in targets.items()}
    base = list(targets)
    for _ in range(2):  # warm-up
        for t in tg.values():
            stream_bench.one_request(t, body, "chunks", 30)
    out = []
    for i in range(1, STREAM_N + 1):
        if time.monotonic() > deadline:
            warnings.append(f"streams: time budget used up after {i - 1} of {STREAM_N} rounds")
            log(warnings[-1])
            break
        order = base if i % 2 == 1 else list(reversed(base))
        for name in order:
            cpu0, sw0 = cpu_snapshot(pids), switches_snapshot(pids)
            try:
                r = stream_bench.one_request(tg[name], body, "chunks", 30)
            except (OSError, http.client.HTTPException, TimeoutError) as e:
                tg[name].drop()
                warnings.append(f"stream r{i} {name}: {e}")
                log(warnings[-1])
                continue
            cpu1, sw1 = cpu_snapshot(pids), switches_snapshot(pids)
            n = max(1, r["content_chunks"])
            for k in pids:
                if cpu0[k] is not None and cpu1[k] is not None:
                    r[f"cpu_us_per_chunk_{k}"] = (cpu1[k] - cpu0[k]) / 1e3 / n
                if sw0[k] is not None and sw1[k] is not None:
                    r[f"vol_switches_per_chunk_{k}"] = (sw1[k][0] - sw0[k][0]) / n
            r["round"] = i
            out.append(r)
            log(f"  stream r{i} {name:6} {r['content_chunks']} chunks {r['total_ms']:7.1f} ms  "
                f"{r.get('us_per_chunk', 0):6.2f} us/chunk  CPU us/chunk A {r.get('cpu_us_per_chunk_A', 0):5.2f} "
                f"B {r.get('cpu_us_per_chunk_B', 0):5.2f}")
    for t in tg.values():
        t.drop()
    return out


def thread_breakdown(url_a: str, url_b: str, pids: dict, warnings: list) -> dict:
    """Per-thread CPU and sleeps of A and B per request: THREAD_N sequential keep-alive requests through
    A, then to B. Threads with the same name are summed (the Swift concurrency pool has several)."""
    body = chat_body()
    out = {}
    for case, url in (("hop", url_a), ("local", url_b)):
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        for _ in range(50):  # warm the connection
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            conn.getresponse().read()
        snaps0 = {k: thread_profile.snapshot(pids[k]) for k in ("A", "B")}
        t0 = time.perf_counter()
        bad = 0
        for _ in range(THREAD_N):
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            bad += r.status != 200
        wall = time.perf_counter() - t0
        snaps1 = {k: thread_profile.snapshot(pids[k]) for k in ("A", "B")}
        conn.close()
        if bad:
            warnings.append(f"thread breakdown ({case}): {bad} of {THREAD_N} requests did not answer 200")
        res = {"requests": THREAD_N, "wall_us_per_req": wall * 1e6 / THREAD_N, "nodes": {}}
        for k in ("A", "B"):
            by = {}
            for tid, (comm, v1, i1, n1) in snaps1[k].items():
                _, v0, i0, n0 = snaps0[k].get(tid, (comm, 0, 0, 0))
                e = by.setdefault(comm, [0.0, 0.0, 0.0])
                e[0] += (n1 - n0) / 1e3 / THREAD_N
                e[1] += (v1 - v0) / THREAD_N
                e[2] += (i1 - i0) / THREAD_N
            res["nodes"][k] = {c: {"cpu_us": v[0], "vol": v[1], "invol": v[2]} for c, v in by.items()
                               if v[0] >= 0.5 or v[1] >= 0.05}
        out[case] = res
        log(f"  threads {case}: {res['wall_us_per_req']:.0f} us/request (sequential); "
            + "; ".join(f"{k} " + ", ".join(f"{c} {x['cpu_us']:.0f}us/{x['vol']:.1f}" for c, x in sorted(n.items()))
                        for k, n in res["nodes"].items()))
    return out


# ------------------------------------------------------------------------------------ summary

def summarize_latency(runs: list[dict]) -> dict:
    out = {}
    for c in sorted({r["conns"] for r in runs}):
        rounds = []
        for n in sorted({r["round"] for r in runs if r["conns"] == c}):
            get = lambda t: next((r for r in runs if r["conns"] == c and r["round"] == n and r["target"] == t), None)  # noqa: E731
            loc, hop, eng = get("local"), get("hop"), get("engine")
            if not loc or not hop:
                continue
            keep = ("rps", "p50_us", "p90_us", "p99_us", "p999_us", "lat_mean_us", "requests", "errors")
            p = {
                "round": n,
                "local": {k: loc[k] for k in keep},
                "hop": {k: hop[k] for k in keep},
                "cost_p50_us": hop["p50_us"] - loc["p50_us"],
                "cost_p99_us": hop["p99_us"] - loc["p99_us"],
                "cost_mean_us": hop["lat_mean_us"] - loc["lat_mean_us"],
                "rps_ratio": hop["rps"] / loc["rps"] if loc["rps"] else None,
                "cpu_us_per_req_local_B": loc.get("cpu_us_per_req_B"),
                "cpu_us_per_req_hop_A": hop.get("cpu_us_per_req_A"),
                "cpu_us_per_req_hop_B": hop.get("cpu_us_per_req_B"),
                "vol_switches_per_req_hop_A": hop.get("vol_switches_per_req_A"),
                "vol_switches_per_req_hop_B": hop.get("vol_switches_per_req_B"),
                "vol_switches_per_req_local_B": loc.get("vol_switches_per_req_B"),
                "other_cpu_cores": max(loc["other_cpu_cores"], hop["other_cpu_cores"]),
                "steal_cores": max(loc["steal_cores"], hop["steal_cores"]),
            }
            if p["cpu_us_per_req_hop_A"] is not None and p["cpu_us_per_req_hop_B"] is not None and p["cpu_us_per_req_local_B"] is not None:
                p["hop_cpu_us_per_req"] = p["cpu_us_per_req_hop_A"] + p["cpu_us_per_req_hop_B"] - p["cpu_us_per_req_local_B"]
            if eng:
                p["engine"] = {k: eng[k] for k in keep}
                p["local_minus_engine_p50_us"] = loc["p50_us"] - eng["p50_us"]
            rounds.append(p)
        keys = ["cost_p50_us", "cost_p99_us", "cost_mean_us", "rps_ratio", "cpu_us_per_req_local_B", "cpu_us_per_req_hop_A",
                "cpu_us_per_req_hop_B", "hop_cpu_us_per_req", "vol_switches_per_req_hop_A", "vol_switches_per_req_hop_B",
                "vol_switches_per_req_local_B", "other_cpu_cores", "steal_cores", "local_minus_engine_p50_us"]
        m = {k: med([p.get(k) for p in rounds]) for k in keys}
        for t in ("local", "hop", "engine"):
            for k in ("rps", "p50_us", "p99_us"):
                m[f"{t}_{k}"] = med([p[t][k] for p in rounds if t in p])
        deltas = [p["cost_p50_us"] for p in rounds]
        m["cost_p50_us_min"] = min(deltas) if deltas else None
        m["cost_p50_us_max"] = max(deltas) if deltas else None
        m["cost_p50_rounds_positive"] = sum(1 for d in deltas if d > 0)
        out[f"c{c}"] = {"conns": c, "rounds": rounds, "median": m,
                        "errors_total": sum(p["local"]["errors"] + p["hop"]["errors"] + p.get("engine", {}).get("errors", 0) for p in rounds)}
    return out


def summarize_streams(streams: list[dict]) -> dict:
    rounds = []
    for n in sorted({s["round"] for s in streams}):
        get = lambda t: next((s for s in streams if s["round"] == n and s["target"] == t), None)  # noqa: E731
        loc, hop, eng = get("local"), get("hop"), get("engine")
        if not loc or not hop:
            continue
        p = {"round": n, "local": loc, "hop": hop}
        if loc.get("us_per_chunk") and hop.get("us_per_chunk"):
            p["relay_us_per_chunk"] = hop["us_per_chunk"] - loc["us_per_chunk"]
        if eng:
            p["engine"] = eng
            if eng.get("us_per_chunk") and loc.get("us_per_chunk"):
                p["local_minus_engine_us_per_chunk"] = loc["us_per_chunk"] - eng["us_per_chunk"]
        cA, cB, cBl = hop.get("cpu_us_per_chunk_A"), hop.get("cpu_us_per_chunk_B"), loc.get("cpu_us_per_chunk_B")
        if None not in (cA, cB, cBl):
            p["relay_cpu_us_per_chunk"] = cA + cB - cBl
        rounds.append(p)
    m = {
        "engine_us_per_chunk": med([p["engine"].get("us_per_chunk") for p in rounds if "engine" in p]),
        "local_us_per_chunk": med([p["local"].get("us_per_chunk") for p in rounds]),
        "hop_us_per_chunk": med([p["hop"].get("us_per_chunk") for p in rounds]),
        "relay_us_per_chunk": med([p.get("relay_us_per_chunk") for p in rounds]),
        "local_minus_engine_us_per_chunk": med([p.get("local_minus_engine_us_per_chunk") for p in rounds]),
        "relay_cpu_us_per_chunk": med([p.get("relay_cpu_us_per_chunk") for p in rounds]),
        "hop_cpu_us_per_chunk_A": med([p["hop"].get("cpu_us_per_chunk_A") for p in rounds]),
        "hop_cpu_us_per_chunk_B": med([p["hop"].get("cpu_us_per_chunk_B") for p in rounds]),
        "local_cpu_us_per_chunk_B": med([p["local"].get("cpu_us_per_chunk_B") for p in rounds]),
        "hop_vol_switches_per_chunk_A": med([p["hop"].get("vol_switches_per_chunk_A") for p in rounds]),
        "hop_vol_switches_per_chunk_B": med([p["hop"].get("vol_switches_per_chunk_B") for p in rounds]),
        "local_total_ms": med([p["local"]["total_ms"] for p in rounds]),
        "hop_total_ms": med([p["hop"]["total_ms"] for p in rounds]),
        "hop_ttfb_ms": med([p["hop"]["ttfb_ms"] for p in rounds]),
        "local_ttfb_ms": med([p["local"]["ttfb_ms"] for p in rounds]),
        "chunks": med([p["hop"]["content_chunks"] for p in rounds]),
    }
    problems = []
    for p in rounds:
        for t in ("engine", "local", "hop"):
            s = p.get(t)
            if s and (s["status"] != 200 or not s["done"] or s["content_chunks"] != SIM_TOKENS):
                problems.append(f"round {p['round']} {t}: status {s['status']}, done={s['done']}, chunks={s['content_chunks']} (want {SIM_TOKENS})")
        for t in ("local", "hop"):
            if p[t].get("x_meshd_node") != "B":
                problems.append(f"round {p['round']} {t}: X-Meshd-Node is {p[t].get('x_meshd_node')!r}, not 'B'")
    return {"rounds": rounds, "median": m, "problems": problems}


def versions(bins: dict) -> dict:
    return {
        "swift": sh("swift --version 2>&1 | head -n1"),
        "meshd": sh(f"'{bins['meshd']}' --version"),
        "meshd_bin_dir": str(bins["source_dir"]),
        "meshd_git": sh("git rev-parse --short HEAD"),
        "meshd_tree_changes": sh("git status --porcelain | wc -l") + " files differ from HEAD (shared tree)",
        "libzmq": sh("pkg-config --modversion libzmq 2>/dev/null || echo n/a"),
        "wrk": sh("wrk -v 2>&1 | head -n1"),
        "python": platform.python_version(),
    }


def idle_line(idle: dict | None) -> str:
    if not idle:
        return "n/a"
    return (f"A {idle.get('A_cores', 0):.3f} cores, B {idle.get('B_cores', 0):.3f}, engine {idle.get('engine_cores', 0):.3f}, "
            f"rest of the machine {idle.get('other_cores', 0):.2f} cores")


def render_md(res: dict) -> str:
    L = []
    run, v, mach = res["run"], res["versions"], res["machine"]
    L.append("# meshd: cost of one mesh hop (CURVE on)\n")
    L.append(f"Generated by `benches/mesh_bench.py` on {res['date']} ({fmt(run['measure_s'], 0)} s of measurements, "
             f"{fmt(run['build_s'], 0)} s build step). Re-run: `python3 benches/mesh_bench.py` "
             "(or `MESH=1 benches/run.sh`). Absolute numbers move between runs on this shared machine: "
             "compare only within one run.\n")
    L.append("## Verdict\n")
    L.append("| target | measured | goal | met |")
    L.append("|---|---|---|---|")
    for x in res["verdict"].values():
        goal = f"<= {x['target']}" if x.get("target") is not None else "(informational)"
        met = "n/a" if x.get("met") is None else ("yes" if x["met"] else "**no**")
        L.append(f"| {x['name']} | {fmt(x['value'], 3)} | {goal} | {met} |")
    L.append("")
    for w in res["warnings"]:
        L.append(f"- **warning:** {w}")
    if res["warnings"]:
        L.append("")
    L.append("## Machine and versions\n")
    L.append(f"- CPU: {mach['cpu_model']}, nproc {mach['nproc']}, {mach['memory']} RAM, hypervisor: {mach['hypervisor']}")
    L.append(f"- OS: {mach['os']}, kernel {mach['kernel']}")
    for k, x in v.items():
        L.append(f"- {k}: `{x}`")
    L.append(f"- load average at start / end: {run['loadavg_start']} / {run['loadavg_end']}")
    L.append(f"- busiest processes at start: {run['busy_start'] or 'n/a'}; at end: {run['busy_end'] or 'n/a'}")
    L.append("")
    L.append("## Method\n")
    L.append(
        f"- **Mesh.** A mesh secret ({run['secret_how']}, mode 0600); `meshd-sim-engine --gen-tps 0 --prompt-tps 0 "
        "--latency-ms 0 --slots 16` serving model `sim`; node **B** = meshd with that engine (`kind: openai`) and "
        "`mesh.listen`; node **A** = meshd with `engines: []` and `mesh.peers: [B]`, same secret. With a secret, "
        "every mesh socket is CURVE-encrypted and ZAP-authenticated (docs/PROTOCOL.md); there is no plaintext mode. "
        "All on 127.0.0.1, default settings otherwise, release builds of the tree as it is (private copies of the "
        "binaries). Before measuring: A's `/readyz` is 200, a request through A answers 200 with `X-Meshd-Via: A` and "
        "`X-Meshd-Node: B`, a request to B answers with `X-Meshd-Node: B` and no Via.\n"
        "- **Targets.** *local* = B directly (meshd serving from its own engine); *hop* = A (meshd forwarding over the "
        "mesh to B, which serves); *engine* = the sim engine directly (reference, no meshd).\n"
        f"- **Latency and req/s.** `wrk -t1 -cN --latency -d{run['secs']}s` with `benches/chat.lua` (non-streamed chat, "
        f"`max_tokens` 8). {run['rounds_done']} rounds; in each, for N in {{{','.join(map(str, run['conns']))}}}, one run "
        "per target, order rotating (odd rounds engine, local, hop; even rounds hop, local, engine); the engine only at "
        "N=1. After a 1 s warm-up of each target. **Hop cost = hop − local within each round, then the median over "
        "rounds.**\n"
        f"- **Per-chunk relay.** `stream_bench.one_request` (http.client) on a streamed chat with `max_tokens` "
        f"{run['sim_tokens']}: the sim engine writes every chunk at once, so (request → last byte) / content chunks "
        "is the cost of producing, relaying and reading one chunk. Sequential, order rotating per round, after 2 "
        "warm-ups per target. **Relay cost per chunk = hop − local within each round, median over rounds.**\n"
        "- **CPU.** On-CPU time of A, B and the engine (`/proc/PID/task/*/schedstat` summed over threads) across each "
        "run, per request / per chunk; wrk's own CPU via `/usr/bin/time`. *Hop CPU* = (A + B during hop runs) − (B during "
        "local runs). *Other cores* = machine busy time (`/proc/stat`, 10 ms ticks) not accounted to wrk, A, B or the "
        "engine: co-tenant load, an indicator only. Thread sleeps = voluntary context switches. An idle baseline "
        f"(2 s, no requests) is taken first: {idle_line(run.get('idle'))}; at the req/s of the runs below, idle "
        "burn adds (idle cores / req/s) to the per-request CPU.\n"
        "- Chunks are SSE events (one token each). B reads the engine's output in large reads and relays what it "
        "has, so one mesh `chunk` message can carry many events: per-chunk numbers are per event, with the relay "
        "batching that a burst (`--gen-tps 0`) allows; a slowly generating engine would send one message per event.\n"
        "- **Floor.** `benches/zmq_floor.py` (pyzmq from the test venv, its bundled libzmq): a DEALER in one process "
        "sends a response-sized 3-frame message to a CURVE ROUTER in another that echoes it, application threads "
        "blocking in recv; median of 3 runs of 3000 round trips, after the latency rounds. A mesh hop contains one such "
        "round trip plus meshd's own work and its hand-offs between the HTTP loop and the socket thread.\n"
        f"- The machine has {mach['nproc']} shared cores: wrk, A, B and the engine compete for them, and other tenants' "
        "work shows up as *other cores*. The interleaved same-run comparisons are what to read.\n")

    L.append("## Latency and throughput (medians over rounds)\n")
    L.append("| conns | engine p50 µs | local (B) p50 µs | hop (A→B) p50 µs | **hop cost p50 µs** | local p99 µs | hop p99 µs "
             "| hop cost p99 µs | local req/s | hop req/s | hop/local | CPU µs/req local B | CPU µs/req hop A + B | hop CPU µs/req | errors |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in res["latency"].values():
        x = s["median"]
        L.append(f"| {s['conns']} | {fmt(x['engine_p50_us'])} | {fmt(x['local_p50_us'])} | {fmt(x['hop_p50_us'])} "
                 f"| **{fmt(x['cost_p50_us'])}** | {fmt(x['local_p99_us'])} | {fmt(x['hop_p99_us'])} | {fmt(x['cost_p99_us'])} "
                 f"| {fmt(x['local_rps'], 0)} | {fmt(x['hop_rps'], 0)} | {fmt(x['rps_ratio'], 3)} "
                 f"| {fmt(x['cpu_us_per_req_local_B'])} | {fmt(x['cpu_us_per_req_hop_A'])} + {fmt(x['cpu_us_per_req_hop_B'])} "
                 f"| {fmt(x['hop_cpu_us_per_req'])} | {s['errors_total']} |")
    L.append("")
    L.append("Hop cost columns are medians of the per-round differences (not differences of the medians). "
             "Per-round spread of the p50 hop cost at c1: "
             + (f"{fmt(res['latency']['c1']['median']['cost_p50_us_min'])} … {fmt(res['latency']['c1']['median']['cost_p50_us_max'])} µs, "
                f"positive in {res['latency']['c1']['median']['cost_p50_rounds_positive']} of {len(res['latency']['c1']['rounds'])} rounds."
                if "c1" in res["latency"] else "n/a.") + "\n")
    L.append("### Per round (raw)\n")
    L.append("| conns | round | engine p50/p99 µs | local p50/p99 µs | hop p50/p99 µs | hop cost p50/p99 µs | local req/s | hop req/s "
             "| CPU µs/req B local / A+B hop | sleeps/req B local / A, B hop | other cores | steal | errors l/h |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in res["latency"].values():
        for p in s["rounds"]:
            e = p.get("engine")
            eng = f"{e['p50_us']} / {e['p99_us']}" if e else "–"
            L.append(f"| {s['conns']} | {p['round']} | {eng} "
                     f"| {p['local']['p50_us']} / {p['local']['p99_us']} | {p['hop']['p50_us']} / {p['hop']['p99_us']} "
                     f"| {p['cost_p50_us']} / {p['cost_p99_us']} | {fmt(p['local']['rps'], 0)} | {fmt(p['hop']['rps'], 0)} "
                     f"| {fmt(p['cpu_us_per_req_local_B'])} / {fmt(p['cpu_us_per_req_hop_A'])}+{fmt(p['cpu_us_per_req_hop_B'])} "
                     f"| {fmt(p['vol_switches_per_req_local_B'], 2)} / {fmt(p['vol_switches_per_req_hop_A'], 2)}, {fmt(p['vol_switches_per_req_hop_B'], 2)} "
                     f"| {fmt(p['other_cpu_cores'], 2)} | {fmt(p['steal_cores'], 2)} | {p['local']['errors']} / {p['hop']['errors']} |")
    L.append("")
    st = res["streams"]
    x = st["median"]
    L.append(f"## Per-chunk relay ({fmt(x['chunks'], 0)} chunks per stream, medians over rounds)\n")
    L.append(f"- wall per chunk: engine {fmt(x['engine_us_per_chunk'], 2)} µs, local (B) {fmt(x['local_us_per_chunk'], 2)} µs, "
             f"hop (A→B) {fmt(x['hop_us_per_chunk'], 2)} µs; **relay cost of the hop: {fmt(x['relay_us_per_chunk'], 2)} µs/chunk** "
             f"(B's own relay over the engine: {fmt(x['local_minus_engine_us_per_chunk'], 2)} µs/chunk)")
    L.append(f"- whole stream: local {fmt(x['local_total_ms'])} ms, hop {fmt(x['hop_total_ms'])} ms; head after "
             f"{fmt(x['local_ttfb_ms'], 2)} / {fmt(x['hop_ttfb_ms'], 2)} ms")
    L.append(f"- CPU per chunk: local B {fmt(x['local_cpu_us_per_chunk_B'], 2)} µs; hop A {fmt(x['hop_cpu_us_per_chunk_A'], 2)} µs "
             f"+ B {fmt(x['hop_cpu_us_per_chunk_B'], 2)} µs; added by the hop {fmt(x['relay_cpu_us_per_chunk'], 2)} µs "
             f"(thread sleeps per chunk during hop: A {fmt(x['hop_vol_switches_per_chunk_A'], 3)}, B {fmt(x['hop_vol_switches_per_chunk_B'], 3)})\n")
    rel = [p["relay_us_per_chunk"] for p in st["rounds"] if p.get("relay_us_per_chunk") is not None]
    if rel:
        L.append(f"Per-round spread of the relay cost: {min(rel):.2f} … {max(rel):.2f} µs/chunk (a stream lasts tens of ms, so "
                 "one preemption by a co-tenant moves a round by tens of µs/chunk either way; the median and the CPU "
                 "figure are the ones to read).\n")
    L.append("| round | engine µs/chunk | local µs/chunk | hop µs/chunk | relay µs/chunk | CPU µs/chunk B local / A+B hop | total ms e/l/h |")
    L.append("|---|---|---|---|---|---|---|")
    for p in st["rounds"]:
        e = p.get("engine") or {}
        L.append(f"| {p['round']} | {fmt(e.get('us_per_chunk'), 2)} | {fmt(p['local'].get('us_per_chunk'), 2)} | {fmt(p['hop'].get('us_per_chunk'), 2)} "
                 f"| {fmt(p.get('relay_us_per_chunk'), 2)} | {fmt(p['local'].get('cpu_us_per_chunk_B'), 2)} / "
                 f"{fmt(p['hop'].get('cpu_us_per_chunk_A'), 2)}+{fmt(p['hop'].get('cpu_us_per_chunk_B'), 2)} "
                 f"| {fmt(e.get('total_ms'))} / {fmt(p['local']['total_ms'])} / {fmt(p['hop']['total_ms'])} |")
    for pr in st["problems"]:
        L.append(f"- **problem:** {pr}")
    L.append("")
    th = res.get("threads") or {}
    if th.get("hop") and th.get("local"):
        L.append(f"## Where a forwarded request's CPU goes (per-thread, {th['hop']['requests']} sequential requests)\n")
        L.append(f"One keep-alive client, one request at a time: {fmt(th['hop']['wall_us_per_req'], 0)} µs per request through A, "
                 f"{fmt(th['local']['wall_us_per_req'], 0)} µs to B directly. Per request: on-CPU µs / voluntary switches "
                 "(thread went to sleep and was woken) / involuntary switches (preempted). Threads of one name are summed; "
                 "`meshd-zmq` is meshd's socket thread, `ZMQbg/IO/0` libzmq's I/O thread (CURVE happens there), "
                 "`NIO-SGLTN-*` the HTTP event loop, `*default-qos*` the Swift concurrency pool.\n")
        cols = [("hop", "A"), ("hop", "B"), ("local", "B")]
        names = sorted({c for case, k in cols for c in th[case]["nodes"].get(k, {})})
        L.append("| thread | A, forwarding | B, serving for A | B, serving locally |")
        L.append("|---|---|---|---|")
        tot = {col: [0.0, 0.0, 0.0] for col in cols}
        for c in names:
            cells = []
            for col in cols:
                x = th[col[0]]["nodes"].get(col[1], {}).get(c)
                if x:
                    tot[col][0] += x["cpu_us"]
                    tot[col][1] += x["vol"]
                    tot[col][2] += x["invol"]
                    cells.append(f"{x['cpu_us']:.0f} / {x['vol']:.2f} / {x['invol']:.2f}")
                else:
                    cells.append("–")
            L.append(f"| `{c}` | " + " | ".join(cells) + " |")
        L.append("| **total** | " + " | ".join(f"**{t[0]:.0f} / {t[1]:.2f} / {t[2]:.2f}**" for t in tot.values()) + " |")
        L.append("")
    L.append("## Sanity checks\n")
    for c in res["checks"]:
        L.append(f"- {c}")
    L.append("")
    L.append("Raw per-run records: `mesh-results.json` (`latency.*.rounds`, `streams.rounds`, `raw`).")
    return "\n".join(L) + "\n"


# ------------------------------------------------------------------------------------ main

def main() -> int:
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for tool in ("wrk", "swift"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} missing")
    work = Path(tempfile.mkdtemp(prefix="meshd-mesh-bench."))
    ok = False
    try:
        bins, build_s = build(work)
        log(f"binaries from {bins['source_dir']} (build step {build_s:.0f} s); work dir {work}")
        t0 = time.monotonic()
        warnings: list[str] = []
        checks: list[str] = []
        run = {"rounds": ROUNDS, "secs": SECS, "conns": CONNS, "stream_n": STREAM_N, "sim_tokens": SIM_TOKENS,
               "engine_ref": ENGINE_REF, "budget_s": BUDGET_S, "build_s": build_s,
               "loadavg_start": loadavg(), "busy_start": busy_now()}

        secret, run["secret_how"] = make_secret(bins, work)
        sim, sim_url, sim_log = start_sim(bins, work)
        env = clean_env()
        cfg_b, url_b, mesh_b, dir_b = node_config("B", work, secret, sim_url, [])
        node_b = PROCS.start("meshd B", [str(bins["meshd"]), "--config", str(cfg_b)], dir_b / "meshd.log", env=env)
        wait_until(lambda: http_call("GET", url_b + "/readyz")[0] == 200, 30, "B /readyz 200",
                   [("meshd B", node_b, dir_b / "meshd.log")])
        cfg_a, url_a, mesh_a, dir_a = node_config("A", work, secret, None, [mesh_b])
        node_a = PROCS.start("meshd A", [str(bins["meshd"]), "--config", str(cfg_a)], dir_a / "meshd.log", env=env)
        watch = [("meshd A", node_a, dir_a / "meshd.log"), ("meshd B", node_b, dir_b / "meshd.log"), ("sim", sim, sim_log)]
        t_join = time.monotonic()
        wait_until(lambda: http_call("GET", url_a + "/readyz")[0] == 200, 30, "A /readyz 200 (B's engine seen over the mesh)", watch)
        checks.append(f"A's /readyz became 200 {time.monotonic() - t_join:.2f} s after A started")
        last = {}

        def via_a_ok() -> bool:
            st, h, b = http_call("POST", url_a + "/v1/chat/completions", chat_body(), {"Content-Type": "application/json"})
            last.update(status=st, headers=h, body=b[:300])
            return st == 200 and h.get("x-meshd-via") == "A" and h.get("x-meshd-node") == "B"

        wait_until(via_a_ok, 15, "a request through A answered 200 with X-Meshd-Via: A, X-Meshd-Node: B", watch)
        checks.append(f"through A: status 200, X-Meshd-Via: {last['headers'].get('x-meshd-via')}, X-Meshd-Node: "
                      f"{last['headers'].get('x-meshd-node')}, X-Meshd-Route: {last['headers'].get('x-meshd-route')!r}")
        st, h, b = http_call("POST", url_b + "/v1/chat/completions", chat_body(), {"Content-Type": "application/json"})
        if st != 200 or h.get("x-meshd-node") != "B" or "x-meshd-via" in h:
            raise BenchError(f"request to B: status {st}, headers {h}, body {b[:300]!r}")
        checks.append(f"to B directly: status 200, X-Meshd-Node: B, no X-Meshd-Via, X-Meshd-Route: {h.get('x-meshd-route')!r}")
        mesh_log = [line for line in (dir_a / "meshd.log").read_text(errors="replace").splitlines()
                    if "mesh listening" in line or "peer joined" in line][:4]
        checks += [f"A's log: `{line.strip()[:200]}`" for line in mesh_log]
        nodes = subprocess.run([str(bins["meshctl"]), "nodes", "--socket", str(dir_a / "admin.sock")], capture_output=True,
                               text=True, timeout=15, env=env)
        run["meshctl_nodes_A"] = (nodes.stdout + nodes.stderr).strip()
        log("mesh up: A forwards to B (X-Meshd-Via: A verified)")

        pids = {"A": node_a.pid, "B": node_b.pid, "engine": sim.pid}
        # Idle baseline: what A, B and the engine burn with no requests (heartbeats, polling, timers),
        # and what the rest of the machine is doing before any load starts.
        cpu0, m0, w0 = cpu_snapshot(pids), wrk_rounds.machine_ticks(), time.monotonic()
        time.sleep(2)
        cpu1, m1, wall = cpu_snapshot(pids), wrk_rounds.machine_ticks(), time.monotonic() - w0
        idle = {f"{k}_cores": (cpu1[k] - cpu0[k]) / 1e9 / wall for k in pids if cpu0[k] is not None and cpu1[k] is not None}
        idle["machine_busy_cores"] = (m1[0] - m0[0]) / CLK_TCK / wall
        idle["other_cores"] = max(0.0, idle["machine_busy_cores"] - sum(v for k, v in idle.items() if k[:-6] in pids))
        run["idle"] = idle
        log("idle (2 s): " + ", ".join(f"{k} {v:.3f}" for k, v in idle.items()))
        before = {"A": metrics_total(url_a), "B": metrics_total(url_b)}
        targets = {"engine": sim_url, "local": url_b, "hop": url_a} if ENGINE_REF else {"local": url_b, "hop": url_a}
        log(f"latency: {ROUNDS} rounds x conns {CONNS} x {SECS} s, targets {list(targets)}")
        lat_runs = latency_rounds(targets, pids, t0 + BUDGET_S, warnings)
        log(f"streams: {SIM_TOKENS} tokens, {STREAM_N} rounds")
        streams = stream_rounds(targets, pids, t0 + BUDGET_S + 40, warnings)
        threads = {}
        if THREAD_N > 0:
            log(f"per-thread breakdown: {THREAD_N} sequential requests through A, then to B")
            threads = thread_breakdown(url_a, url_b, pids, warnings)
        log("floor: bare libzmq CURVE round trips (benches/zmq_floor.py, test venv's pyzmq)")
        floor = zmq_floor(warnings)
        after = {"A": metrics_total(url_a), "B": metrics_total(url_b)}
        for name, p, logf in watch:
            if p.poll() is not None:
                warnings.append(f"{name} exited ({p.returncode}) during the run: {tail(logf, 5)}")
        run["loadavg_end"] = loadavg()
        run["busy_end"] = busy_now()
        run["measure_s"] = time.monotonic() - t0

        lat = summarize_latency(lat_runs)
        st_sum = summarize_streams(streams)
        run["rounds_done"] = len(lat.get("c1", {}).get("rounds", []))

        # Sanity: every request wrk counted reached the node it was sent to (A counts what it forwarded,
        # B counts what it served: its own and A's).
        n_hop = sum(r["requests"] for r in lat_runs if r["target"] == "hop")
        n_loc = sum(r["requests"] for r in lat_runs if r["target"] == "local")
        if None not in (before["A"], after["A"], before["B"], after["B"]):
            dA, dB = after["A"] - before["A"], after["B"] - before["B"]
            checks.append(f"meshd_requests_total grew by {dA} on A and {dB} on B; wrk counted {n_hop} measured requests "
                          f"through A and {n_loc} to B (plus warm-ups and streams)")
            if dA < n_hop or dB < n_hop + n_loc:
                warnings.append(f"request counters lower than wrk's counts (A {dA} < {n_hop} or B {dB} < {n_hop + n_loc}):"
                                " some requests were not served as expected")
        for s in lat.values():
            checks.append(f"c{s['conns']}: {s['errors_total']} wrk errors / non-2xx over all rounds")
            if s["errors_total"]:
                warnings.append(f"c{s['conns']}: {s['errors_total']} wrk errors or non-2xx answers")
            oc = s["median"]["other_cpu_cores"]
            if oc is not None and oc > 0.3:
                warnings.append(f"c{s['conns']}: other processes used ~{oc:.2f} of {os.cpu_count()} cores during the runs "
                                f"(median; max {max(p['other_cpu_cores'] for p in s['rounds']):.2f}): numbers are noisy, "
                                "compare only within this run")
        idle_other = run["idle"].get("other_cores", 0.0)
        if idle_other > 0.3:
            warnings.append(f"before any load (2 s idle baseline) the rest of the machine already kept {idle_other:.2f} of "
                            f"{os.cpu_count()} cores busy: wrk, A, B and the engine ran on what was left")
        if "c1" in lat and (lat["c1"]["median"]["local_p99_us"] or 0) > 1500:
            warnings.append(f"p99 straight to B (no hop) is already {lat['c1']['median']['local_p99_us'] / 1e3:.1f} ms in this run: "
                            "scheduling noise dominates the tail, so the p99 hop cost (a difference of two noisy numbers that can "
                            "come out negative) is not meaningful here; the p50 one is")
        if run["rounds_done"] < 5:
            warnings.append(f"only {run['rounds_done']} latency rounds completed (want >= 5)")
        for pr in st_sum["problems"]:
            warnings.append(f"stream: {pr}")
        try:
            la = float(run["loadavg_start"].split()[0])
            if la > (os.cpu_count() or 1):
                warnings.append(f"load average at start {run['loadavg_start']} on {os.cpu_count()} cores: the machine was "
                                f"busy before the bench began ({run['busy_start']})")
        except (ValueError, IndexError):
            pass

        verdict = {}
        if "c1" in lat:
            m = lat["c1"]["median"]
            verdict["hop_p50_ms"] = {"name": "hop latency p50 (ms), A − B, 1 connection", "value": m["cost_p50_us"] / 1e3,
                                     "target": TARGET_HOP_P50_MS, "met": m["cost_p50_us"] / 1e3 <= TARGET_HOP_P50_MS}
            verdict["hop_p99_ms"] = {"name": "hop latency p99 (ms), A − B, 1 connection", "value": m["cost_p99_us"] / 1e3,
                                     "target": None, "met": None}
        if floor:
            verdict["zmq_floor_p50_ms"] = {"name": "bare libzmq CURVE round trip p50 (ms), 2 processes, no meshd (the floor under a hop)",
                                           "value": floor["p50_us"] / 1e3, "target": None, "met": None}
        if "c8" in lat:
            verdict["rps_ratio_c8"] = {"name": "req/s at 8 connections, A / B", "value": lat["c8"]["median"]["rps_ratio"],
                                       "target": None, "met": None}
        rel = st_sum["median"]["relay_us_per_chunk"]
        if rel is not None:
            verdict["chunk_relay_ms"] = {"name": "stream relay per chunk (ms), A − B", "value": rel / 1e3,
                                         "target": TARGET_CHUNK_RELAY_MS, "met": rel / 1e3 <= TARGET_CHUNK_RELAY_MS}

        res = {
            "date": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds"),
            "machine": report.machine_info(),
            "versions": versions(bins),
            "run": run,
            "verdict": verdict,
            "warnings": warnings,
            "checks": checks,
            "latency": lat,
            "streams": st_sum,
            "threads": threads,
            "zmq_floor": floor,
            "raw": {"wrk_runs": lat_runs, "streams": streams},
        }
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        with open(OUT_DIR / "mesh-results.json", "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
        (OUT_DIR / "mesh-results.md").write_text(render_md(res))

        print("\n=== meshd one-hop summary (CURVE on) ===")
        for s in lat.values():
            m = s["median"]
            print(f"c{s['conns']}: local(B) p50 {fmt(m['local_p50_us'])} µs p99 {fmt(m['local_p99_us'])} µs {fmt(m['local_rps'], 0)} req/s | "
                  f"hop(A) p50 {fmt(m['hop_p50_us'])} µs p99 {fmt(m['hop_p99_us'])} µs {fmt(m['hop_rps'], 0)} req/s | "
                  f"hop cost p50 {fmt(m['cost_p50_us'])} µs p99 {fmt(m['cost_p99_us'])} µs, req/s ratio {fmt(m['rps_ratio'], 3)}, "
                  f"hop CPU {fmt(m['hop_cpu_us_per_req'])} µs/req")
        sm = st_sum["median"]
        print(f"streams: local {fmt(sm['local_us_per_chunk'], 2)} µs/chunk, hop {fmt(sm['hop_us_per_chunk'], 2)} µs/chunk, "
              f"relay {fmt(sm['relay_us_per_chunk'], 2)} µs/chunk (CPU {fmt(sm['relay_cpu_us_per_chunk'], 2)} µs/chunk)")
        for x in verdict.values():
            goal = f"goal <= {x['target']}" if x["target"] is not None else "informational"
            met = "" if x["met"] is None else (" -> MET" if x["met"] else " -> NOT MET")
            print(f"{x['name']}: {fmt(x['value'], 3)} ({goal}){met}")
        for w in warnings:
            print(f"warning: {w}")
        log(f"done in {time.monotonic() - T_START:.0f} s: {OUT_DIR / 'mesh-results.md'}, {OUT_DIR / 'mesh-results.json'}")
        ok = True
        return 0
    finally:
        PROCS.stop_all()
        if KEEP_WORK or not ok:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"ERROR: {e}")
        sys.exit(1)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        sys.exit(130)
