#!/usr/bin/env python3
"""Summarises benches/relay_cost.sh's raw lines into relay-cost.json and relay-cost.md."""
import datetime
import json
import os
import statistics
import sys

raw, out, rev, params = sys.argv[1:5]
rows = {"FLOORJSON": [], "CHUNKJSON": [], "RPSJSON": []}
for line in open(raw):
    tag, _, js = line.partition(" ")
    if tag in rows:
        rows[tag].append(json.loads(js))


def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def per_round_ratio(rs, a, b, key):
    """Median over rounds of a/b, each taken within one round."""
    by = {}
    for r in rs:
        by.setdefault(r["round"], {})[r["target"]] = r.get(key)
    ratios = [v[a] / v[b] for v in by.values() if v.get(a) and v.get(b)]
    return med(ratios)


floor = {m: med([f["cpu_us_per_chunk"] for f in rows["FLOORJSON"] if f["threads"] == m]) for m in (1, 2)}
res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "git": rev,
       "params": params, "nproc": os.cpu_count(), "floor_us_per_chunk": floor, "paced": {}, "paced-many": {}, "static": {}, "llama": {}}
for tag in ("paced", "paced-many", "llama"):
    rs = [r for r in rows["CHUNKJSON"] if r["tag"] == tag]
    if not rs:
        continue
    for name in ("direct", "nginx", "meshd", "meshd-each"):
        mine = [r for r in rs if r["target"] == name]
        res[tag][name] = {"tok_s": med([r["tok_s"] for r in mine]),
                          "cpu_us_per_chunk": med([r.get("cpu_us_per_chunk") for r in mine]),
                          "sleeps_per_chunk": med([r.get("sleeps_per_chunk") for r in mine]),
                          "incomplete": sum(1 for r in mine if not r["done"])}
    res[tag]["meshd_over_direct_tok_s"] = per_round_ratio(rs, "meshd", "direct", "tok_s")
    res[tag]["meshd_each_over_direct_tok_s"] = per_round_ratio(rs, "meshd-each", "direct", "tok_s")
    res[tag]["nginx_over_direct_tok_s"] = per_round_ratio(rs, "nginx", "direct", "tok_s")
rs = rows["RPSJSON"]
if rs:
    for name in ("direct", "nginx", "meshd"):
        mine = [r for r in rs if r["target"] == name]
        res["static"][name] = {"rps": med([r["rps"] for r in mine]), "cpu_us_per_req": med([r.get("cpu_us_per_req") for r in mine]),
                               "errors": sum(r["errors"] for r in mine)}
    res["static"]["meshd_over_nginx_rps"] = per_round_ratio(rs, "meshd", "nginx", "rps")
    res["static"]["conns"] = rs[0]["conns"]
json.dump(res, open(os.path.join(out, "relay-cost.json"), "w"), indent=1)


def g(d, *ks):
    for k in ks:
        d = (d or {}).get(k)
    return "n/a" if d is None else d


p, s, l, pm = res["paced"], res["static"], res["llama"], res["paced-many"]
md = f"""# What relaying costs: meshd beside nginx (benches/relay_cost.sh)

Generated {res['date']} on `{rev}`, {res['nproc']} cores, {params}. Re-run: `benches/relay_cost.sh`.
Medians over rounds; ratios are taken within each round (ABBA order), then the median.

## Issue 17 point 7 targets

| target | measured | goal |
|---|---|---|
| meshd CPU per relayed chunk (paced stream) | {g(p, 'meshd', 'cpu_us_per_chunk')} µs | ≤ 10 µs |
| requests/s on the static backend, meshd / nginx proxy (c{g(s, 'conns')}) | {g(s, 'meshd_over_nginx_rps')} | ≥ 0.7 |
| streamed tokens/s, meshd / direct, llama-server using every core | {g(l, 'meshd_over_direct_tok_s')} | ≥ 0.97 |

## The floor and nginx, per relayed chunk of a paced stream

| relay | CPU µs per chunk | thread sleeps per chunk |
|---|---|---|
| C, 1 thread (epoll; read and write on one thread) | {floor[1]} | 1 |
| C, 2 threads (hand-off through an eventfd) | {floor[2]} | 2 |
| nginx reverse proxy (proxy_buffering off) | {g(p, 'nginx', 'cpu_us_per_chunk')} | {g(p, 'nginx', 'sleeps_per_chunk')} |
| meshd (default: a fast stream read at most every `http.stream_coalesce_ms`, 5) | {g(p, 'meshd', 'cpu_us_per_chunk')} | {g(p, 'meshd', 'sleeps_per_chunk')} |
| meshd, `stream_coalesce_ms: 0` (every chunk as it comes) | {g(p, 'meshd-each', 'cpu_us_per_chunk')} | {g(p, 'meshd-each', 'sleeps_per_chunk')} |

Paced tokens/s: direct {g(p, 'direct', 'tok_s')}, nginx {g(p, 'nginx', 'tok_s')}, meshd {g(p, 'meshd', 'tok_s')}, meshd-each {g(p, 'meshd-each', 'tok_s')}.

With many streams at once (see params: CONCURRENT), the wakes are shared by the chunks that arrive
together: nginx {g(pm, 'nginx', 'cpu_us_per_chunk')} µs and {g(pm, 'nginx', 'sleeps_per_chunk')} sleeps per chunk,
meshd {g(pm, 'meshd', 'cpu_us_per_chunk')} µs and {g(pm, 'meshd', 'sleeps_per_chunk')} sleeps per chunk,
meshd-each {g(pm, 'meshd-each', 'cpu_us_per_chunk')} µs and {g(pm, 'meshd-each', 'sleeps_per_chunk')}
(median tokens/s per stream: direct {g(pm, 'direct', 'tok_s')}, nginx {g(pm, 'nginx', 'tok_s')}, meshd {g(pm, 'meshd', 'tok_s')}, meshd-each {g(pm, 'meshd-each', 'tok_s')}).

## Static backend (non-streamed requests, wrk -c{g(s, 'conns')})

| target | requests/s | relay CPU µs per request | non-2xx |
|---|---|---|---|
| nginx direct (the engine) | {g(s, 'direct', 'rps')} | | {g(s, 'direct', 'errors')} |
| nginx reverse proxy | {g(s, 'nginx', 'rps')} | {g(s, 'nginx', 'cpu_us_per_req')} | {g(s, 'nginx', 'errors')} |
| meshd | {g(s, 'meshd', 'rps')} | {g(s, 'meshd', 'cpu_us_per_req')} | {g(s, 'meshd', 'errors')} |

## llama-server using every core (tiny model, 256-token streams)

| target | tokens/s | relay CPU µs per chunk | per-round ratio to direct | streams cut short |
|---|---|---|---|---|
| direct | {g(l, 'direct', 'tok_s')} | | | {g(l, 'direct', 'incomplete')} |
| nginx | {g(l, 'nginx', 'tok_s')} | {g(l, 'nginx', 'cpu_us_per_chunk')} | {g(l, 'nginx_over_direct_tok_s')} | {g(l, 'nginx', 'incomplete')} |
| meshd | {g(l, 'meshd', 'tok_s')} | {g(l, 'meshd', 'cpu_us_per_chunk')} | {g(l, 'meshd_over_direct_tok_s')} | {g(l, 'meshd', 'incomplete')} |
| meshd, `stream_coalesce_ms: 0` | {g(l, 'meshd-each', 'tok_s')} | {g(l, 'meshd-each', 'cpu_us_per_chunk')} | {g(l, 'meshd_each_over_direct_tok_s')} | {g(l, 'meshd-each', 'incomplete')} |
"""
open(os.path.join(out, "relay-cost.md"), "w").write(md)
print(md)
