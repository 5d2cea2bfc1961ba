#!/usr/bin/env python3
"""Gaps between the tokens a client receives: direct from a sim engine, through meshd as configured
by default (fast streams read in batches, http.stream_coalesce_ms 5) and through meshd relaying each
chunk as it comes (stream_coalesce_ms 0). Shows what batching costs a reader: how long a token
can wait, and that the stream's span does not change. Run by benches/stream_gaps.sh.

  stream_gaps.py OUT_MD TPS direct=PORT meshd=PORT meshd-each=PORT   (appends a section to OUT_MD)
"""
import http.client
import json
import sys
import time


def gaps(port: int, tokens: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"model": "sim", "stream": True, "max_tokens": tokens, "messages": [{"role": "user", "content": "x"}]}
    c.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"port {port}: HTTP {r.status}")
    ts = []
    while True:
        line = r.readline()
        if not line:
            break
        if line.startswith(b"data:") and b'"content"' in line:
            ts.append(time.monotonic())
    c.close()
    g = sorted((b - a) * 1000 for a, b in zip(ts, ts[1:]))
    q = lambda p: round(g[min(len(g) - 1, int(p * len(g)))], 2)  # noqa: E731
    return {"tokens": len(ts), "p50": q(.5), "p90": q(.9), "p99": q(.99), "max": round(g[-1], 2),
            "span_ms": round((ts[-1] - ts[0]) * 1000, 1)}


def main() -> None:
    out, tps = sys.argv[1], int(sys.argv[2])
    targets = [t.split("=") for t in sys.argv[3:]]
    rows = []
    for rnd in range(3):
        for name, port in (targets if rnd % 2 == 0 else list(reversed(targets))):
            res = gaps(int(port), 400) | {"target": name, "round": rnd + 1}
            print(json.dumps(res), flush=True)
            rows.append(res)
    lines = [f"## Sim engine at {tps} tokens/s ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})", "",
             "| target | round | p50 | p90 | p99 | max | first to last token, ms |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: ([t[0] for t in targets].index(r["target"]), r["round"])):
        lines.append(f"| {r['target']} | {r['round']} | {r['p50']} | {r['p90']} | {r['p99']} | {r['max']} | {r['span_ms']} |")
    with open(out, "a") as f:
        f.write("\n".join(lines) + "\n\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
