"""The mesh queue on a 3-node mesh: A decides (no engine of its own); B and C each run a simulated
engine with one slot. Requests beyond the mesh's places wait in A's queue, not inside one engine,
and go to whichever engine frees first; a full queue answers 429 with Retry-After in the client's
dialect; and when a node dies with requests bound to it, none is lost."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from meshd_e2e import ProcessPool
from mesh_helpers import MeshBinaries, MeshNode, sim_entry, start_sim

MODEL = "sim-small"


def mesh(pool: ProcessPool, bins: MeshBinaries, secret: Path, max_queue: int) -> tuple[MeshNode, MeshNode, MeshNode]:
    # One slot each, 20 tokens at 10 tokens/s: a request holds its engine ~2 s, far longer than a
    # burst takes to send even on a loaded machine (at 1 s, one CI run saw a seventh request served:
    # a burst of 10 fresh clients took longer there).
    sims = [start_sim(pool, bins, "--models", MODEL, "--slots", 1, "--gen-tps", 10) for _ in range(2)]
    b = MeshNode(pool, bins, "B", secret=secret, engines=[sim_entry(sims[0])])
    c = MeshNode(pool, bins, "C", secret=secret, engines=[sim_entry(sims[1])], peers=[b])
    a = MeshNode(pool, bins, "A", secret=secret, peers=[b, c],
                 extra={"routing": {"max_queue": max_queue, "queue_after_ms": 100}})
    a.wait_sees({"A": "up", "B": "up", "C": "up"}, models={"B": [MODEL], "C": [MODEL]})
    return a, b, c


def burst(node: MeshNode, n: int, ollama: bool = False) -> list[Any]:
    results: list[Any] = [None] * n

    def one(i: int) -> None:
        messages = [{"role": "user", "content": f"request {i}"}]
        if ollama:
            results[i] = node.post("/api/chat", timeout=60, json={"model": MODEL, "stream": False, "messages": messages,
                                                                  "options": {"num_predict": 20}})
        else:
            results[i] = node.post("/v1/chat/completions", timeout=60, json={"model": MODEL, "max_tokens": 20, "messages": messages})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(90)
    return results


def queue_metric(node: MeshNode, outcome: str) -> float:
    for line in node.get("/metrics").text.splitlines():
        if line.startswith(f'meshd_queue_requests_total{{outcome="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no meshd_queue_requests_total in /metrics")


def test_requests_wait_in_the_deciding_nodes_queue_and_a_full_one_answers_429(
        mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    a, b, c = mesh(mpool, mbins, secret, max_queue=4)
    rs = burst(a, 10)
    statuses = sorted(r.status_code for r in rs)
    # Two run at once (one slot on B, one on C), four wait in A's queue, four are refused.
    assert statuses == [200] * 6 + [429] * 4, statuses
    for r in rs:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            err = r.json()["error"]
            assert err["code"] == "queue_full" and "mesh queue is full" in err["message"], err
        else:
            assert r.headers["x-meshd-node"] in ("B", "C")
    queued = [r for r in rs if r.status_code == 200 and "in the mesh queue" in r.headers["x-meshd-route"]]
    assert len(queued) == 4, [r.headers["x-meshd-route"] for r in rs if r.status_code == 200]
    # The engines never held more than their one place: the waiting happened in meshd A.
    assert {r.headers["x-meshd-node"] for r in queued} == {"B", "C"}, "the queue feeds whichever engine frees first"
    assert queue_metric(a, "served") == 4 and queue_metric(a, "rejected") == 4
    # Ollama clients get the 429 in their dialect too.
    rs = burst(a, 10, ollama=True)
    assert sorted(r.status_code for r in rs) == [200] * 6 + [429] * 4
    refused = [r for r in rs if r.status_code == 429]
    assert all(isinstance(r.json()["error"], str) and "mesh queue is full" in r.json()["error"] for r in refused), refused[0].text


def test_no_request_is_lost_when_a_node_dies_with_requests_bound_to_it(
        mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    a, b, c = mesh(mpool, mbins, secret, max_queue=16)
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.extend(burst(a, 8)))
    t.start()
    time.sleep(1.2)  # C is serving one, more wait in A's queue
    c.kill9()
    t.join(120)
    assert [r.status_code for r in results] == [200] * 8, [(r.status_code, r.text[:200]) for r in results]
    served = [r.headers["x-meshd-node"] for r in results]
    assert served.count("B") >= 5, served
