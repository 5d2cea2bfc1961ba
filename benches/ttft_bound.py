#!/usr/bin/env python3
"""How low can p90 TTFT go on the W1 shape of benches/cache_routing.py? A model, not a measurement: the four simulated nodes' nine slots (4 at 2x, 2 + 2 at 1x, 1 at 0.5x; 256 output tokens at
500/250/250/125 tokens/s, 2,048-token prefix + 128-token question at 10,000/5,000/5,000/2,500 tokens/s,
a host-RAM restore at 20x prefill), Poisson arrivals at 0.5 and 0.8 of the computed capacity, and a
router that knows every slot's future: each request takes the slot that minimises
start + prefill + w x decode (w = 0: earliest first token; w = 1: earliest completion, the issue's
score). A share of requests misses the cache (`miss`) and prefills the whole prompt; the rest prefill
the question and restore the prefix. No hop, no engine queue, no measurement error: a greedy router
with perfect knowledge (not a proof of optimality: a policy that holds fast slots back could do a
little better). Writes benches/ttft-bound.md.

    python3 benches/ttft_bound.py            (pure Python, a few seconds)
"""
from __future__ import annotations

import random
from pathlib import Path

CAPACITY = 11.628  # W1 requests/s at ideal reuse (benches/cache-routing.json, "capacity")
SLOTS = [2.0] * 4 + [1.0] * 4 + [0.5]  # speed factor per slot
DECODE = [256 / (250 * f) for f in SLOTS]
MISS = [2176 / (5000 * f) for f in SLOTS]
HIT = [128 / (5000 * f) + 2048 / (20 * 5000 * f) for f in SLOTS]


def run(rate: float, miss: float, w: float, n: int = 100_000, seed: int = 1) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    free = [0.0] * len(SLOTS)
    t = 0.0
    ttft, e2e = [], []
    for _ in range(n):
        t += rng.expovariate(rate)
        pre = MISS if rng.random() < miss else HIT
        k = min(range(len(SLOTS)), key=lambda s: max(free[s], t) + pre[s] + w * DECODE[s])
        start = max(free[k], t)
        ttft.append(start - t + pre[k])
        e2e.append(start - t + pre[k] + DECODE[k])
        free[k] = start + pre[k] + DECODE[k]
    ttft.sort()
    e2e.sort()
    q = lambda a: [round(1000 * a[int(x * n)]) for x in (0.5, 0.9, 0.99)]  # noqa: E731
    return q(ttft), q(e2e)


def main() -> None:
    md = ["# p90 TTFT on the W1 shape with perfect knowledge\n",
          "Made by `python3 benches/ttft_bound.py` (a model, not a measurement; see its docstring). Each row: a router that "
          "knows every slot's future and chooses greedily, with a share of cache misses; TTFT and end-to-end p50 / p90 / p99 in ms.\n",
          "| load | misses | w (decode weight) | TTFT p50 / p90 / p99 | e2e p50 / p90 / p99 |", "|---|---|---|---|---|"]
    for load in (0.5, 0.8):
        for miss in (0.0, 0.05, 0.25):
            for w in (0.0, 0.25, 1.0):
                tt, ee = run(load * CAPACITY, miss, w)
                md.append(f"| {load} | {miss} | {w} | {' / '.join(map(str, tt))} | {' / '.join(map(str, ee))} |")
    md += ["", "Reading: at 0.8 load even a greedy router with perfect knowledge and no misses does not take p90 TTFT below about "
           "350 ms, because the nine slots are busy 80 % of the time and a request often has to wait for one; "
           "with the issue's score (w = 1: each request where it finishes first) it is about 750 ms, and with the "
           "25 % of misses every measured policy has on this workload (hit ratios 0.67-0.75 of a possible 0.88) 1.2 s. "
           "least-busy measures 1.2-1.4 s, so a 3x better p90 TTFT would need the no-miss, earliest-first-token bound "
           "itself. At 0.5 load the bound is far lower (tens of ms), and p90 is set by the misses.", ""]
    Path(__file__).resolve().parent.joinpath("ttft-bound.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
