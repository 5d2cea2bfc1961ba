#!/usr/bin/env python3
"""The mesh queue's fairness and priority (issue 14): one meshd in front of one simulated engine
with 2 slots (each request holds a place ~0.2 s), two client keys.

1. `small` alone: 10 requests at once; its waits (time to answer) p50/p90.
2. `flood` sends 100 at once, then `small` the same 10: small's waits again. Target: p90 ≤ 2×
   its p90 alone (the queue serves keys in turn).
3. Priority: the queue full of normal requests, one `X-Meshd-Priority: high` sent last starts
   first (its answer comes before every normal one that was waiting).

Usage: benches/queue_fairness.sh (release binaries) or python3 benches/queue_fairness.py --meshd B --sim B.
Writes benches/queue-fairness.json and .md. Only 127.0.0.1 is used; everything is stopped on exit."""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, key: str, body: dict, headers: dict | None = None) -> tuple[int, float, float]:
    """Returns status, seconds to the answer, and the time it ended (monotonic)."""
    h = {"Content-Type": "application/json", "Authorization": f"Bearer {key}", **(headers or {})}
    t0 = time.monotonic()
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), headers=h)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    t1 = time.monotonic()
    return status, t1 - t0, t1


def burst(url: str, key: str, n: int, headers: dict | None = None, spacing: float = 0.002) -> list[tuple[int, float, float]]:
    out: list = [None] * n
    body = {"model": "sim-small", "max_tokens": 40, "messages": [{"role": "user", "content": "hi"}]}

    def one(i: int) -> None:
        out[i] = post(url, key, body, headers)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
        time.sleep(spacing)
    for t in ts:
        t.join(300)
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meshd", required=True)
    ap.add_argument("--sim", required=True)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="meshd-fairness-"))
    procs: list[subprocess.Popen] = []
    try:
        sim_port, port = free_port(), free_port()
        procs.append(subprocess.Popen([args.sim, "--port", str(sim_port), "--models", "sim-small", "--slots", "2",
                                       "--gen-tps", "200", "--queue", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cfg = tmp / "meshd.yaml"
        cfg.write_text(f"""node:
  name: fair
state_dir: {tmp}/state
http:
  listen: "127.0.0.1:{port}"
  api_keys: ["small:s-secret", "flood:f-secret", "boss:b-secret"]
admin:
  socket: "{tmp}/admin.sock"
engines:
  - kind: openai
    url: "http://127.0.0.1:{sim_port}"
routing:
  max_queue: 200
  queue_after_ms: 50
logging:
  level: warning
""")
        procs.append(subprocess.Popen([args.meshd, "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = urllib.request.Request(url + "/v1/models", headers={"Authorization": "Bearer s-secret"})
                with urllib.request.urlopen(ready, timeout=2) as r:
                    if b"sim-small" in r.read():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit("meshd did not come up")
            time.sleep(0.1)
        burst(url, "s-secret", 4)  # measured speeds

        alone = burst(url, "s-secret", 10)
        flood_result: list = []
        ft = threading.Thread(target=lambda: flood_result.extend(burst(url, "f-secret", 100, spacing=0.001)))
        ft.start()
        time.sleep(0.3)
        contended = burst(url, "s-secret", 10)
        ft.join(300)

        # Priority: 30 normal requests queue up, then one high.
        normal: list = []
        nt = threading.Thread(target=lambda: normal.extend(burst(url, "f-secret", 30, spacing=0.001)))
        nt.start()
        time.sleep(0.3)
        high = post(url, "b-secret", {"model": "sim-small", "max_tokens": 40, "messages": [{"role": "user", "content": "vip"}]},
                    {"X-Meshd-Priority": "high"})
        nt.join(300)
        waiting_when_sent = sum(1 for s, d, end in normal if end > high[2] - high[1])
        finished_after_high = sum(1 for s, d, end in normal if end > high[2])

        mreq = urllib.request.Request(url + "/metrics", headers={"Authorization": "Bearer s-secret"})
        with urllib.request.urlopen(mreq, timeout=5) as r:
            queue_metrics = [l for l in r.read().decode().splitlines() if l.startswith("meshd_queue_")]
        print("\n".join(queue_metrics))
        a90, c90 = pct([d for _, d, _ in alone], 0.9), pct([d for _, d, _ in contended], 0.9)
        result = {
            "small_alone": {"p50_s": pct([d for _, d, _ in alone], 0.5), "p90_s": a90, "statuses": sorted({s for s, _, _ in alone})},
            "small_with_flood": {"p50_s": pct([d for _, d, _ in contended], 0.5), "p90_s": c90,
                                 "statuses": sorted({s for s, _, _ in contended})},
            "flood": {"requests": len(flood_result), "statuses": sorted({s for s, _, _ in flood_result}),
                      "p50_s": pct([d for _, d, _ in flood_result], 0.5)},
            "p90_ratio": c90 / a90,
            "queue_metrics": queue_metrics,
            "priority": {"high_s": high[1], "high_status": high[0], "normal_in_flight_or_waiting_when_sent": waiting_when_sent,
                         "normal_finished_after_high": finished_after_high},
        }
        (HERE / "queue-fairness.json").write_text(json.dumps(result, indent=2) + "\n")
        md = f"""# The mesh queue: fairness between keys, priority

One meshd, one simulated engine with 2 slots (40 tokens at 200 tokens/s: ~0.2 s a request),
`routing.queue_after_ms: 50`, `max_queue: 200`. Made by `benches/queue_fairness.sh`.

| | p50 s | p90 s |
|---|---|---|
| key `small`, 10 requests, alone | {result['small_alone']['p50_s']:.2f} | {a90:.2f} |
| key `small`, 10 requests, while key `flood` has 100 waiting | {result['small_with_flood']['p50_s']:.2f} | {c90:.2f} |
| key `flood`, 100 requests | {result['flood']['p50_s']:.2f} | |

Small's p90 with the flood is **{c90 / a90:.2f}×** its p90 alone (issue 14's target: ≤ 2×; without
turns it would wait behind all 100: ~{100 * 0.2 / 2:.0f} s).

Priority: one `X-Meshd-Priority: high` request sent while {waiting_when_sent} normal ones were
running or waiting took {high[1]:.2f} s; {finished_after_high} of those normal ones finished after it
(it started as soon as a place freed, ahead of every waiting one).
"""
        (HERE / "queue-fairness.md").write_text(md)
        print(md)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
