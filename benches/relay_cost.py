#!/usr/bin/env python3
"""meshd vs nginx as a reverse proxy in front of the same engine, side by side.

Streams (default): CPU per relayed chunk of a paced stream, and tokens/s.

Sends streamed OpenAI chat requests, one at a time, to each target in turn (ABBA over rounds, so
drift on a shared machine hits every target alike), and reads the on-CPU time of the relaying
process (sum of /proc/PID/task/*/schedstat) and its voluntary context switches (thread sleeps)
before and after each request. Prints one JSON object per request, prefixed with CHUNKJSON.

  --target NAME=URL[=PID]   repeatable; PID is the relay whose CPU is counted (none: direct)

--wrk CONNS: instead of streams, non-streamed requests/s with wrk (benches/chat.lua), SECS each,
in the same ABBA order, with the relay's CPU per request (WRKJSON lines, prefixed RPSJSON).
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import statistics
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wrk_rounds  # noqa: E402  (task_cpu_ns, task_switches)


def one(url, model, max_tokens, timeout):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    body = json.dumps({"model": model, "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "count"}]})
    t0 = time.monotonic()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"{url}: HTTP {resp.status}: {resp.read()[:200]!r}")
    chunks = 0
    first = last = None
    done = False
    while True:
        line = resp.readline()
        if not line:
            break
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                continue
            try:
                ev = json.loads(payload)
            except ValueError:
                continue
            ch = ev.get("choices") or []
            if ch and (ch[0].get("delta") or {}).get("content"):
                chunks += 1
                last = time.monotonic()
                if first is None:
                    first = last
    conn.close()
    return {"chunks": chunks, "done": done, "wall_s": time.monotonic() - t0,
            "tok_s": (chunks - 1) / (last - first) if chunks > 1 and last > first else None}


def rps(url, conns, secs, model):
    env = dict(os.environ, BENCH_MODEL=model)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat.lua")
    return wrk_rounds.run_wrk(url, conns, secs, script, env, secs + 30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--wrk", type=int, default=0, help="connections: measure non-streamed req/s instead")
    ap.add_argument("--secs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=1, help="streams at once per measurement")
    a = ap.parse_args()
    targets = []
    for t in a.target:
        parts = t.split("=")
        targets.append((parts[0], parts[1], int(parts[2]) if len(parts) > 2 and parts[2] else 0))
    for name, url, _ in targets:  # warm-up, unmeasured
        if a.wrk:
            rps(url, a.wrk, 1, a.model)
        else:
            one(url, a.model, 16, a.timeout)
    for r in range(a.rounds):
        order = targets if r % 2 == 0 else list(reversed(targets))  # ABBA
        for name, url, pid in order:
            c0 = wrk_rounds.task_cpu_ns(pid) if pid else None
            s0 = wrk_rounds.task_switches(pid) if pid else None
            if a.wrk:
                res = rps(url, a.wrk, a.secs, a.model)
                out = {"conns": a.wrk, "rps": res["requests"] / (res["duration_us"] / 1e6), "errors": res.get("non2xx", 0)}
                count, prefix, unit = res["requests"], "RPSJSON", "req"
            elif a.concurrency > 1:
                with concurrent.futures.ThreadPoolExecutor(a.concurrency) as ex:
                    parts = list(ex.map(lambda _: one(url, a.model, a.max_tokens, a.timeout), range(a.concurrency)))
                out = {"chunks": sum(p["chunks"] for p in parts), "done": all(p["done"] for p in parts),
                       "wall_s": max(p["wall_s"] for p in parts), "concurrency": a.concurrency,
                       "tok_s": statistics.median([p["tok_s"] for p in parts if p["tok_s"]] or [0]) or None}
                count, prefix, unit = out["chunks"], "CHUNKJSON", "chunk"
            else:
                out = one(url, a.model, a.max_tokens, a.timeout)
                count, prefix, unit = out["chunks"], "CHUNKJSON", "chunk"
            if pid:
                n = max(count, 1)
                out[f"cpu_us_per_{unit}"] = (wrk_rounds.task_cpu_ns(pid) - c0) / 1e3 / n
                out[f"sleeps_per_{unit}"] = (wrk_rounds.task_switches(pid)[0] - s0[0]) / n
            out.update({"target": name, "round": r + 1, "tag": a.tag})
            print(f"{prefix} " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
