#!/usr/bin/env python3
"""Issue 17's memory figures on release binaries, one node on 127.0.0.1 (run by benches/memory.sh):

1. idle: RSS (and how much of it is anonymous, and PSS) of a node with no engine and of a node with
   one sim engine, 15 s after it is ready; which mappings hold the resident pages;
2. keep-alive: 10,000 clients each open a connection, ask /healthz once and keep it open idle:
   how many the node holds (http.max_connections, default 4096) and refuses (503), RSS with them
   held, per held connection, and after they close;
3. soak: a steady mixed load (both dialects, streamed and not) for SOAK_S seconds (default 600),
   RSS sampled every 5 s: first minute, half-way and last minute, and the slope over the second half.

The 1,000-stream peak is benches/engine_concurrency.sh's (it reuses the pytest load).
Everything is bounded in count and time; the node and engine are stopped on exit.

Knobs (environment): MESHD_BIN, SIM_ENGINE_BIN (release binaries), SOAK_S [600], SOAK_RPS [20],
CONNS [10000], OUT_DIR [benches].
"""
from __future__ import annotations

import datetime
import http.client
import json
import os
import pathlib
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
MESHD = os.environ["MESHD_BIN"]
SIM = os.environ["SIM_ENGINE_BIN"]
SOAK_S = float(os.environ.get("SOAK_S", "600"))
SOAK_RPS = float(os.environ.get("SOAK_RPS", "20"))
CONNS = int(os.environ.get("CONNS", "10000"))
OUT = pathlib.Path(os.environ.get("OUT_DIR", str(HERE)))
procs: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_all(*_: object) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def rollup(pid: int) -> dict[str, float]:
    out = {}
    for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return {"rss_mb": round(out["Rss"], 1), "anon_mb": round(out.get("Anonymous", 0), 1), "pss_mb": round(out["Pss"], 1),
            "pss_anon_mb": round(out.get("Pss_Anon", 0), 1), "pss_file_mb": round(out.get("Pss_File", 0), 1)}


def rss(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def by_mapping(pid: int, top: int = 10) -> list[tuple[str, float]]:
    agg: dict[str, float] = {}
    cur = "[anon]"
    for line in pathlib.Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and all(c in "0123456789abcdef-" for c in head[0]):
            cur = head[5] if len(head) > 5 else "[anon]"
            cur = cur.rsplit("/", 1)[-1]
        elif line.startswith("Rss:"):
            agg[cur] = agg.get(cur, 0) + int(head[1]) / 1024
    return [(k, round(v, 1)) for k, v in sorted(agg.items(), key=lambda kv: -kv[1])[:top]]


def start_node(work: pathlib.Path, name: str, engine_url: str | None, extra: str = "") -> tuple[subprocess.Popen, int]:
    port = free_port()
    d = work / name
    d.mkdir(parents=True)
    engines = f'engines: [{{ kind: openai, url: "{engine_url}" }}]' if engine_url else "engines: []"
    (d / "meshd.yaml").write_text(f"""node: {{ name: {name} }}
state_dir: "{d}/state"
http: {{ listen: "127.0.0.1:{port}" }}
admin: {{ socket: "{d}/admin.sock" }}
mesh: {{ secret_file: "{d}/none.secret" }}
discovery: {{ mdns: false }}
logging: {{ level: warning }}
{engines}
{extra}
""")
    p = subprocess.Popen([MESHD, "--config", str(d / "meshd.yaml")], stdout=open(d / "log", "w"), stderr=subprocess.STDOUT)
    procs.append(p)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/readyz" if engine_url else "/healthz")
            if c.getresponse().status == 200:
                return p, port
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{name} did not become ready; see {d / 'log'}")


def start_sim(*args: str) -> str:
    p = subprocess.Popen([SIM, "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(p)
    line = p.stdout.readline().strip()  # LISTENING host:port
    return "http://" + line.split()[-1]


def idle(work: pathlib.Path, engine_url: str) -> dict:
    # The whole binary in the page cache first: the kernel maps the cached pages around each page
    # faulted in (fault-around), so a fully cached binary shows the most resident pages, every time.
    with open(MESHD, "rb") as f:
        while f.read(1 << 20):
            pass
    res = {}
    for name, url in [("no engine", None), ("one engine", engine_url)]:
        p, _ = start_node(work, "idle-" + ("none" if url is None else "one"), url)
        time.sleep(15)
        res[name] = rollup(p.pid) | {"top_mappings": by_mapping(p.pid)}
        p.send_signal(signal.SIGTERM)
        p.wait(15)
    return res


def keepalive(work: pathlib.Path) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # meshd raises its own soft limit the same way
    p, port = start_node(work, "keepalive", None)
    time.sleep(3)
    before = rss(p.pid)
    socks: list[socket.socket] = []
    held = refused = failed = 0
    t0 = time.monotonic()
    req = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(CONNS):
        if time.monotonic() - t0 > 240:
            break
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(req)
            data = s.recv(4096)
        except OSError:
            failed += 1
            s.close()
            continue
        if data.startswith(b"HTTP/1.1 200"):
            held += 1
            socks.append(s)
        else:
            refused += int(b" 503 " in data[:20])
            failed += int(b" 503 " not in data[:20])
            s.close()
    opened_s = time.monotonic() - t0
    time.sleep(5)
    during = rss(p.pid)
    # Those held are still served: a request on the first and the last.
    alive = 0
    for s in (socks[0], socks[-1]) if socks else ():
        s.sendall(req)
        alive += int(s.recv(4096).startswith(b"HTTP/1.1 200"))
    for s in socks:
        s.close()
    time.sleep(5)
    after = rss(p.pid)
    p.send_signal(signal.SIGTERM)
    p.wait(15)
    return {"clients": CONNS, "held": held, "refused_503": refused, "failed": failed, "open_seconds": round(opened_s, 1),
            "still_served": alive, "rss_before_mb": round(before, 1), "rss_held_mb": round(during, 1), "rss_after_mb": round(after, 1),
            "kb_per_held_connection": round((during - before) * 1024 / max(1, held), 2)}


def soak(work: pathlib.Path, engine_url: str) -> dict:
    p, port = start_node(work, "soak", engine_url)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    counts = {"ok": 0, "err": 0}
    lock = threading.Lock()
    bodies = [
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "soak"}], "max_tokens": 16}),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "soak"}], "max_tokens": 16, "stream": True}),
        ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "soak"}], "stream": False, "options": {"num_predict": 16}}),
        ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "soak"}], "options": {"num_predict": 16}}),
    ]

    def worker(w: int, workers: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = w
        interval = workers / SOAK_RPS
        next_at = time.monotonic()
        while not stop.is_set():
            path, body = bodies[i % len(bodies)]
            i += 1
            try:
                c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                with lock:
                    counts["ok" if r.status == 200 else "err"] += 1
            except OSError:
                with lock:
                    counts["err"] += 1
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            next_at += interval
            time.sleep(max(0, next_at - time.monotonic()))

    workers = 4
    threads = [threading.Thread(target=worker, args=(w, workers), daemon=True) for w in range(workers)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while time.monotonic() - t0 < SOAK_S:
        samples.append((round(time.monotonic() - t0, 1), round(rss(p.pid), 2)))
        time.sleep(5)
    stop.set()
    for t in threads:
        t.join(35)
    p.send_signal(signal.SIGTERM)
    p.wait(15)
    first = [r for t, r in samples if t <= 60]
    last = [r for t, r in samples if t >= SOAK_S - 60]
    tail = [(t, r) for t, r in samples if t >= SOAK_S * 0.5]
    n = len(tail)
    mt = sum(t for t, _ in tail) / n
    mr = sum(r for _, r in tail) / n
    slope = sum((t - mt) * (r - mr) for t, r in tail) / max(1e-9, sum((t - mt) ** 2 for t, _ in tail))
    return {"seconds": SOAK_S, "target_rps": SOAK_RPS, "requests_ok": counts["ok"], "requests_failed": counts["err"],
            "rss_first_minute_mb": round(sum(first) / len(first), 1), "rss_last_minute_mb": round(sum(last) / len(last), 1),
            "rss_max_mb": max(r for _, r in samples), "rss_at_half_mb": next(r for t, r in samples if t >= SOAK_S * 0.5),
            "slope_mb_per_10min": round(slope * 600, 2), "samples": samples}


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    work = pathlib.Path(tempfile.mkdtemp(prefix="meshd-memory-"))
    try:
        engine = start_sim("--models", "m", "--gen-tps", "200", "--slots", "64")
        res = {"when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "rev": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip(),
               "meshd": MESHD}
        res["idle"] = idle(work, engine)
        print("idle:", json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "top_mappings"} for k, v in res["idle"].items()}), flush=True)
        res["keepalive"] = keepalive(work)
        print("keep-alive:", json.dumps(res["keepalive"]), flush=True)
        res["soak"] = soak(work, engine)
        print("soak:", json.dumps({k: v for k, v in res["soak"].items() if k != "samples"}), flush=True)
    finally:
        stop_all()
    conc = HERE / "engine-concurrency.json"
    peak = None
    if conc.exists():
        runs = [r for r in json.loads(conc.read_text())["runs"] if r.get("build") == "this"]
        peak = max((r["rss_peak_mb"] for r in runs), default=None)
    (OUT / "memory.json").write_text(json.dumps(res, indent=1) + "\n")
    i, k, s = res["idle"], res["keepalive"], res["soak"]
    lines = [f"# Memory (release build, {res['when']}, {res['rev']})", "",
             "The build is the one the Debian package ships: `swift build -c release --static-swift-stdlib`, linked as",
             "Package.swift says (`shippedLink`: lld, no exported symbols, packed relative relocations).", "",
             "Written by `benches/memory.sh` (raw figures in `memory.json`). Targets (issue 17): idle RSS <= 40 MB; 1,000",
             "concurrent streams <= 150 MB; no growth over a 10-minute soak at steady load; 10,000 idle keep-alive",
             "connections held within the cap.", "",
             "## Idle (15 s after ready)", "",
             "| node | RSS | of it anonymous | PSS | PSS anonymous / file-backed |", "|---|---|---|---|---|"]
    for name, v in i.items():
        lines.append(f"| {name} | {v['rss_mb']} MB | {v['anon_mb']} MB | {v['pss_mb']} MB | {v['pss_anon_mb']} / {v['pss_file_mb']} MB |")
    lines += ["", "Resident pages by mapping (node with one engine): " +
              ", ".join(f"{n} {mb} MB" for n, mb in i["one engine"]["top_mappings"]), "",
              "## 10,000 idle keep-alive connections", "",
              f"{k['clients']} clients each asked `/healthz` once and kept the connection: the node held {k['held']}, refused "
              f"{k['refused_503']} with 503 (`http.max_connections`), {k['failed']} failed otherwise; {k['still_served']} of 2 held "
              f"connections still answered after the others opened. RSS {k['rss_before_mb']} MB before, {k['rss_held_mb']} MB "
              f"holding them ({k['kb_per_held_connection']} KB per held connection), {k['rss_after_mb']} MB after they closed.", "",
              f"## Soak: {int(s['seconds'])} s at {s['target_rps']:g} requests/s (both dialects, streamed and not, 16 tokens each)", "",
              f"{s['requests_ok']} requests answered, {s['requests_failed']} failed. RSS {s['rss_first_minute_mb']} MB over the first "
              f"minute, {s['rss_at_half_mb']} MB half-way, {s['rss_last_minute_mb']} MB over the last minute, at most {s['rss_max_mb']} MB; "
              f"slope over the second half: {s['slope_mb_per_10min']} MB per 10 minutes.", "",
              "## 1,000 concurrent streams", "",
              f"Peak RSS {peak} MB (`benches/engine-concurrency.md`, the same release build's runs)." if peak else
              "Run `benches/engine_concurrency.sh` for the peak of 1,000 concurrent streams.", ""]
    (OUT / "memory.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
