"""Cache-aware routing across a 3-node mesh of simulated engines with a prompt cache (`--cache on`):
A decides for every request (clients talk to A only; A has an engine too); requests that share a
long prefix converge on the node whose engine holds it, as the engines' own reports confirm; the
peers' views come from cacheDelta messages, whose bytes per request are measured; a restarted
deciding node learns what its peers hold from snapshots."""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from meshd_e2e import ProcessPool, http_client, wait_until
from mesh_helpers import MeshBinaries, MeshNode, sim_entry, start_sim

MODEL = "sim-small"
PREFIX_WORDS = 700  # ~4,900 bytes: ~1,230 sim tokens, ~76 blocks


def prefix(group: int) -> str:
    return " ".join(f"g{group}-word{i}" for i in range(PREFIX_WORDS))


def ask(node: MeshNode, group: int, question: str, stream: bool = False, max_tokens: int = 4) -> tuple[str, int, int]:
    """Sends one chat; returns the serving node and the sim's reported (prompt, cached) tokens."""
    body: dict[str, Any] = {"model": MODEL, "max_tokens": max_tokens, "stream": stream,
                            "messages": [{"role": "system", "content": prefix(group)}, {"role": "user", "content": question}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    r = node.post("/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    if stream:
        usage = [l for l in r.text.splitlines() if '"usage":{' in l][-1]
        prompt = int(re.search(r'"prompt_tokens":(\d+)', usage).group(1))
        cached = int(re.search(r'"cached_tokens":(\d+)', usage).group(1))
    else:
        u = r.json()["usage"]
        prompt, cached = u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"]
    return r.headers["x-meshd-node"], prompt, cached


def metrics(node: MeshNode, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in node.get("/metrics").text.splitlines():
        if line.startswith(name):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


class CacheMesh:
    def __init__(self, pool: ProcessPool, bins: MeshBinaries, secret: Path) -> None:
        # Slow prefill (a miss costs ~0.6 s), 4 slots each: no group is evicted in these tests.
        sims = [start_sim(pool, bins, "--models", MODEL, "--cache", "on", "--slots", 4, "--prompt-tps", 2000,
                          "--gen-tps", 400, "--context-length", 8192) for _ in range(3)]
        self.b = MeshNode(pool, bins, "B", secret=secret, engines=[sim_entry(sims[1])])
        self.c = MeshNode(pool, bins, "C", secret=secret, engines=[sim_entry(sims[2])], peers=[self.b])
        self.a = MeshNode(pool, bins, "A", secret=secret, engines=[sim_entry(sims[0])], peers=[self.b, self.c])
        for n in (self.a, self.b, self.c):
            n.wait_sees({"A": "up", "B": "up", "C": "up"}, models={"A": [MODEL], "B": [MODEL], "C": [MODEL]})
        self.home: dict[int, str] = {}


@pytest.fixture(scope="module")
def mesh(module_mpool: ProcessPool, mbins: MeshBinaries, module_secret: Path) -> CacheMesh:
    return CacheMesh(module_mpool, mbins, module_secret)


def test_a_groups_requests_converge_on_the_node_holding_its_prefix(mesh: CacheMesh) -> None:
    # Each group's first request at once: load spreads them over the three nodes.
    firsts: dict[int, tuple[str, int, int]] = {}

    def first(g: int) -> None:
        firsts[g] = ask(mesh.a, g, "first question")

    threads = [threading.Thread(target=first, args=(g,)) for g in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    homes = {g: firsts[g][0] for g in firsts}
    assert len(homes) == 6 and len(set(homes.values())) >= 2, homes
    mesh.home = homes
    time.sleep(0.3)  # the nodes' deltas reach A as their requests end
    # Then one at a time, every engine idle: each goes where its prefix is, and the engine says it
    # took the prefix from its cache.
    for round_ in range(2):
        for g in range(6):
            node, prompt, cached = ask(mesh.a, g, f"follow-up {round_}", stream=(g + round_) % 2 == 0)
            assert node == homes[g], f"group {g} went to {node}, its prefix is on {homes[g]}"
            assert prompt - cached <= 30, (g, prompt, cached)
    # The deciding node forwarded to its peers on what their deltas told it; the shadows on B and
    # C predicted what their engines reported.
    for n in (mesh.b, mesh.c):
        if n.name not in homes.values():
            continue
        predicted = sum(metrics(n, "meshd_cache_predicted_tokens_total").values())
        reported = sum(metrics(n, "meshd_cache_reported_tokens_total").values())
        assert predicted > 0 and 0.8 * reported <= predicted <= 1.05 * reported, (n.name, predicted, reported)
        acc = list(metrics(n, "meshd_cache_accuracy").values())
        assert acc and min(acc) > 0.9, acc


def test_sharing_the_caches_costs_well_under_a_kilobyte_per_request_per_peer(mesh: CacheMesh) -> None:
    sent = sum(metrics(n, "meshd_cache_delta_bytes_sent_total").get("meshd_cache_delta_bytes_sent_total", 0)
               for n in (mesh.a, mesh.b, mesh.c))
    # 6 first requests (each a new ~76-block prefix) and 12 follow-ups, each delta sent to 2 peers.
    requests, peers = 18, 2
    per = sent / requests / peers
    print(f"\n[cache] delta bytes sent: {sent:.0f} for {requests} requests: {per:.0f} bytes per request per peer")
    assert 0 < per <= 1024


def test_a_restarted_deciding_node_learns_the_peers_caches_from_snapshots(mesh: CacheMesh) -> None:
    assert mesh.home, "runs after the convergence test"
    mesh.a.kill9()
    mesh.a.start()
    mesh.a.wait_sees({"A": "up", "B": "up", "C": "up"}, models={"A": [MODEL], "B": [MODEL], "C": [MODEL]})
    time.sleep(0.3)
    asked = metrics(mesh.a, "meshd_cache_snapshots_total")
    assert asked.get('meshd_cache_snapshots_total{kind="asked"}', 0) >= 2, asked
    # Its own engine's shadow starts empty (the engine kept its cache: the first answer corrects it).
    for g, home in mesh.home.items():
        if home == "A":
            continue
        node, prompt, cached = ask(mesh.a, g, "after the restart")
        assert node == home and prompt - cached <= 30, (g, node, home, prompt, cached)


def test_a_hot_node_sheds_load_even_for_prompts_it_holds(mesh: CacheMesh) -> None:
    assert mesh.home, "runs after the convergence test"
    g, home = next((g, h) for g, h in mesh.home.items() if h != "A")
    served: list[str] = []
    lock = threading.Lock()
    # All 16 leave together (a loaded machine starts threads slowly: spread out, the holder's places
    # would free between them and it could rightly take every one).
    start = threading.Barrier(16, timeout=30)

    def one(i: int) -> None:
        # 400 tokens at 400/s: each holds a place for a second.
        start.wait()
        node, _, _ = ask(mesh.a, g, f"burst {i}", max_tokens=400)
        with lock:
            served.append(node)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    counts = {n: served.count(n) for n in set(served)}
    print(f"\n[cache] 16 requests at once for group {g} (cached on {home}): {counts}")
    assert len(served) == 16
    # The holder takes the most, but not all: past its places the others (prefix recomputed) finish sooner.
    # (Measured: 10-12 of 16 on the holder; past about 7 requests on its 4 places its queued work is
    # over the bounded-load limit, and the others, which recompute the prefix, take the rest.)
    assert counts.get(home, 0) == max(counts.values()) and 16 - counts[home] >= 2, counts


def test_meshctl_route_with_a_prompt_file_shows_every_candidates_terms(mesh: CacheMesh) -> None:
    # A fresh group, asked once: its prefix is cached where it went (the earlier tests' bursts
    # moved the others around).
    g = 9
    home, _, _ = ask(mesh.a, g, "first")
    time.sleep(0.3)
    body = mesh.a.dir / "prompt.json"
    body.write_text(json.dumps({"messages": [{"role": "system", "content": prefix(g)}, {"role": "user", "content": "which door?"}]}))
    res = mesh.a.meshctl("route", MODEL, "--prompt-file", str(body), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads(res.stdout)
    assert r["policy"] == "cache-aware" and r["cached_tokens"] > 0.9 * r["prompt_tokens"], r
    cands = {c["node"]: c for c in r["candidates"]}
    assert set(cands) == {"A", "B", "C"} and r["candidates"][0]["node"] == r["node"], r
    for c in cands.values():
        assert abs(c["total"] - (c["wait"] + c["prefill"] + c["decode"] + c["cold"] + c["hop"])) < 1e-6, c
    holders = {n for n, c in cands.items() if c["cached_tokens"] > 0}
    assert home in holders and r["node"] == home, (home, r)
    if holders != set(cands):
        assert max(cands[n]["prefill"] for n in holders) < min(c["prefill"] for n, c in cands.items() if n not in holders)
    # The table, for people; a plain text file is one user message.
    text = mesh.a.meshctl("route", MODEL, "--prompt-file", str(body)).stdout
    assert f"node {r['node']}" in text and "PREFILL ms" in text and "policy: cache-aware" in text, text
    plain = mesh.a.dir / "prompt.txt"
    plain.write_text("no shared prefix here")
    r2 = json.loads(mesh.a.meshctl("route", MODEL, "--prompt-file", str(plain), "--json").stdout)
    assert r2["cached_tokens"] == 0 and len(r2["candidates"]) == 3, r2
    bad = mesh.a.meshctl("route", MODEL, "--prompt-file", str(mesh.a.dir / "missing.txt"))
    assert bad.returncode == 2 and "cannot read --prompt-file" in bad.stderr


def test_a_node_with_cache_deltas_off_neither_shares_nor_reads_caches(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    """`routing.cache_deltas: false` on B: B sends no deltas and reads none of A's; A, which shares,
    still decides with its own engine's shadow. Both route blind to the other's cache."""
    sims = [start_sim(mpool, mbins, "--models", MODEL, "--cache", "on", "--slots", 2, "--prompt-tps", 2000,
                      "--gen-tps", 400, "--context-length", 8192) for _ in range(2)]
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[sim_entry(sims[1])], extra={"routing": {"cache_deltas": False}})
    a = MeshNode(mpool, mbins, "A", secret=secret, engines=[sim_entry(sims[0])], peers=[b])
    for n in (a, b):
        n.wait_sees({"A": "up", "B": "up"}, models={"A": [MODEL], "B": [MODEL]})
    served = [ask(n, g, f"question {k}")[0] for k in range(2) for g in range(3) for n in (a, b)]
    assert set(served) == {"A", "B"}, served  # both engines served, so both had cache changes to share
    time.sleep(0.3)
    total = lambda n, name: sum(metrics(n, name).values())  # noqa: E731
    assert total(b, "meshd_cache_deltas_sent_total") == 0 and total(b, "meshd_cache_deltas_received_total") == 0
    assert total(a, "meshd_cache_deltas_received_total") == 0
    assert total(a, "meshd_cache_deltas_sent_total") > 0, "A shares (B does not read them)"
    # B's own shadow still works: its engine's reported reuse was predicted.
    assert total(b, "meshd_cache_predicted_tokens_total") > 0


def test_a_slot_the_engine_cleared_behind_meshds_back_is_no_longer_predicted_cached(mpool: ProcessPool, mbins: MeshBinaries) -> None:
    """The shadow is checked against the engine's `/slots`: when the engine loses a slot's content
    without meshd knowing (`POST /sim/cache/clear` here), a quiet poll shows the slot empty and the
    shadow forgets it, so the prompt is not predicted cached there any more."""
    sim = start_sim(mpool, mbins, "--models", MODEL, "--cache", "on", "--slots", 2, "--prompt-tps", 2000,
                    "--gen-tps", 400, "--context-length", 8192)
    a = MeshNode(mpool, mbins, "A", secret=None, engines=[sim_entry(sim)], engine_poll_ms=200)
    wait_until(lambda: a.admin("GET", "/v1/engines").json()[0].get("healthy"), 10, what="the engine up")
    total = lambda name: sum(metrics(a, name).values())  # noqa: E731
    assert ask(a, 0, "first")[2] == 0
    _, prompt, cached = ask(a, 0, "second")
    assert prompt - cached <= 30, (prompt, cached)
    predicted = total("meshd_cache_predicted_tokens_total")
    assert predicted > 0.8 * cached, (predicted, cached)
    time.sleep(0.5)  # polls see the slot holding what the shadow says: nothing to correct
    assert total("meshd_cache_slot_corrections_total") == 0
    with http_client(sim.url) as c:
        assert c.post("/sim/cache/clear").json() == {"ok": True}
    time.sleep(1)  # a few polls (every 200 ms)
    _, prompt, cached = ask(a, 0, "third")
    assert cached == 0, "the engine lost the prefix"
    assert total("meshd_cache_predicted_tokens_total") == predicted, "predicted cached after the engine cleared its slots"
    assert total("meshd_cache_slot_corrections_total") >= 1
