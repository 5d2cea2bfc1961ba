#!/usr/bin/env python3
"""Streaming benchmark for meshd (stdlib only).

Sends streamed OpenAI chat requests, sequentially, alternating between the engine ("direct") and
meshd in front of it ("meshd"), so slow drift on a noisy machine hits both sides alike.

  tokens mode  (real llama-server): generated tokens/s per request, measured from the first to the
               last content chunk, i.e. (chunks - 1) / (t_last - t_first).
  chunks mode  (meshd-sim-engine --gen-tps 0): the engine writes every chunk at once, so the time
               from sending the request to the last byte, divided by the chunk count, is the cost of
               producing + relaying + reading one chunk; meshd - direct is meshd's relay cost.

Each line of output is one JSON object (one per request), prefixed with STREAMJSON. With --pid-meshd
the CPU time meshd used during each meshd request (utime+stime of all its threads) is included.
"""
import argparse
import http.client
import json
import os
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wrk_rounds  # noqa: E402  (task_cpu_ns, task_switches)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_ticks(pid):
    """utime + stime of the whole process (all threads), in clock ticks."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def thread_cpu_ns(pid):
    """Sum of per-thread on-CPU time of pid (nanoseconds)."""
    return wrk_rounds.task_cpu_ns(pid)


def vol_switches(pid):
    """Voluntary context switches summed over the threads of pid (sleep/wake cycles)."""
    sw = wrk_rounds.task_switches(pid)
    return sw[0] if sw else None


class Target:
    def __init__(self, name, url, pid):
        u = urllib.parse.urlsplit(url)
        self.name = name
        self.host = u.hostname
        self.port = u.port
        self.pid = pid
        self.conn = None

    def connection(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        return self.conn

    def drop(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def is_content_event(payload):
    """True when an SSE data payload carries a non-empty delta.content (cheap check, then JSON)."""
    if b'"content"' not in payload:
        return False
    try:
        obj = json.loads(payload)
    except ValueError:
        return False
    for ch in obj.get("choices") or []:
        c = (ch.get("delta") or {}).get("content")
        if c:
            return True
    return False


def one_request(target, body, mode, timeout_s):
    """Runs one streamed request; returns a dict of measurements."""
    conn = target.connection()
    conn.connect()
    payload = json.dumps(body).encode()
    cpu0 = proc_cpu_ticks(target.pid)
    ns0 = thread_cpu_ns(target.pid)
    sw0 = vol_switches(target.pid)
    t_send = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=payload,
                 headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
    resp = conn.getresponse()
    t_head = time.perf_counter()
    node = resp.getheader("X-Meshd-Node")
    status = resp.status
    content_times = []
    events = 0
    done = False
    usage = None
    buf = b""
    deadline = t_send + timeout_s
    while True:
        data = resp.read1(65536)
        now = time.perf_counter()
        if not data:
            break
        buf += data
        # Split complete lines; keep the tail.
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            p = line[5:].strip()
            if p == b"[DONE]":
                done = True
                continue
            events += 1
            if mode == "tokens":
                if is_content_event(p):
                    content_times.append(now)
                elif b'"usage"' in p and usage is None:
                    try:
                        usage = (json.loads(p).get("usage") or None)
                    except ValueError:
                        pass
            else:
                # chunks mode: count content events without decoding JSON (client cost must stay small)
                if b'"content":"' in p and b'"content":""' not in p:
                    content_times.append(now)
        if now > deadline:
            target.drop()
            raise TimeoutError(f"{target.name}: stream exceeded {timeout_s}s")
    t_end = time.perf_counter()
    cpu1 = proc_cpu_ticks(target.pid)
    ns1 = thread_cpu_ns(target.pid)
    sw1 = vol_switches(target.pid)
    # A fresh connection per request (outside the timed span's token part): llama-server may close
    # a connection after a stream, and both sides get the same treatment.
    target.drop()
    n = len(content_times)
    r = {
        "target": target.name, "status": status, "x_meshd_node": node, "events": events,
        "content_chunks": n, "done": done,
        "ttfb_ms": (t_head - t_send) * 1e3,
        "total_ms": (t_end - t_send) * 1e3,
        "completion_tokens": (usage or {}).get("completion_tokens"),
    }
    if n >= 2:
        r["gen_span_ms"] = (content_times[-1] - content_times[0]) * 1e3
        r["tokens_per_s"] = (n - 1) / (content_times[-1] - content_times[0]) if content_times[-1] > content_times[0] else None
        r["ttft_ms"] = (content_times[0] - t_send) * 1e3
    if n:
        r["us_per_chunk"] = (t_end - t_send) * 1e6 / n
    if cpu0 is not None and cpu1 is not None:
        r["pid_cpu_ms"] = (cpu1 - cpu0) * 1000.0 / CLK_TCK
    if ns0 is not None and ns1 is not None:
        r["pid_cpu_ns"] = ns1 - ns0
        if n:
            r["pid_cpu_ns_per_chunk"] = (ns1 - ns0) / n
    if sw0 is not None and sw1 is not None and n:
        r["pid_vol_switches_per_chunk"] = (sw1 - sw0) / n
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--direct", required=True, help="engine base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--meshd", required=True, help="meshd base URL")
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=["tokens", "chunks"], default="tokens")
    ap.add_argument("-n", type=int, default=5, help="requests per target")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured requests per target first")
    ap.add_argument("--pid-meshd", type=int, default=0)
    ap.add_argument("--pid-engine", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    ap.add_argument("--budget", type=float, default=120.0, help="stop starting requests after this many seconds")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()

    body = {
        "model": a.model,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        "max_tokens": a.max_tokens,
        "stream": True,
        # meshd always asks the engine for usage on streams; ask for it directly too, so both sides
        # make the engine do the same work.
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "seed": 42,
    }
    if a.mode == "tokens":
        body["ignore_eos"] = True  # llama-server: generate exactly max_tokens
    targets = [Target("direct", a.direct, a.pid_engine), Target("meshd", a.meshd, a.pid_meshd)]
    t0 = time.monotonic()
    for _ in range(a.warmup):
        for t in targets:
            one_request(t, body, a.mode, a.timeout)
    for i in range(a.n):
        if time.monotonic() - t0 > a.budget:
            print(f"stream_bench: budget of {a.budget}s used up after {i} rounds", file=sys.stderr)
            break
        # ABBA order: round 0 direct first, round 1 meshd first, ...
        order = targets if i % 2 == 0 else list(reversed(targets))
        for t in order:
            r = one_request(t, body, a.mode, a.timeout)
            r["round"] = i + 1
            r["mode"] = a.mode
            r["tag"] = a.tag
            print("STREAMJSON " + json.dumps(r), flush=True)
    for t in targets:
        t.drop()


if __name__ == "__main__":
    main()
