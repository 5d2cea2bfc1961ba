"""Routing and drain across a 3-node mesh (A without engines, seeded with B only; B and C both serve
`dup`). A busy node is avoided, a local engine wins a tie against a remote one, `meshctl route`
explains the choice, and `meshctl drain B` (run against A) moves new work to C while B's in-flight
stream finishes; `undrain` restores B."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from meshd_e2e import ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat, sim_entry, start_sim

DUP = "dup"
ONLY_B = "only-b"
NEAR = "near"
TPS = 200


class RoutingMesh:
    def __init__(self, pool: ProcessPool, bins: MeshBinaries, secret: Path) -> None:
        # One slot per engine, so one request makes an engine busy.
        self.sim_b = start_sim(pool, bins, "--models", f"{DUP},{ONLY_B}", "--loaded", f"{DUP},{ONLY_B}",
                               "--gen-tps", TPS, "--slots", 1)
        self.sim_c = start_sim(pool, bins, "--models", DUP, "--gen-tps", TPS, "--slots", 1)
        # Engines nobody else uses: their speeds stay unmeasured, so B and C tie for `near`.
        self.near_b = start_sim(pool, bins, "--models", NEAR, "--gen-tps", TPS)
        self.near_c = start_sim(pool, bins, "--models", NEAR, "--gen-tps", TPS)
        self.b = MeshNode(pool, bins, "B", secret=secret,
                          engines=[sim_entry(self.sim_b, "openai"), sim_entry(self.near_b, "openai")])
        self.c = MeshNode(pool, bins, "C", secret=secret,
                          engines=[sim_entry(self.sim_c, "openai"), sim_entry(self.near_c, "openai")], peers=[self.b])
        self.a = MeshNode(pool, bins, "A", secret=secret, peers=[self.b])
        self.a.wait_sees({"A": "up", "B": "up", "C": "up"}, models={"B": [DUP, ONLY_B, NEAR], "C": [DUP, NEAR]})
        for n in (self.b, self.c):
            n.wait_sees({"A": "up", "B": "up", "C": "up"}, models={"B": [DUP, NEAR], "C": [DUP, NEAR]})


@pytest.fixture(scope="module")
def mesh(module_mpool: ProcessPool, mbins: MeshBinaries, module_secret: Path) -> RoutingMesh:
    return RoutingMesh(module_mpool, mbins, module_secret)


def route(node: MeshNode, model: str) -> tuple[str, str]:
    res = node.meshctl("route", model, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads(res.stdout)
    text = node.meshctl("route", model)
    assert text.returncode == 0 and f"node {r['node']}" in text.stdout and "why:" in text.stdout, text.stdout
    return r["node"], r["reason"]


def test_local_engine_wins_a_tie(mesh: RoutingMesh) -> None:
    assert route(mesh.b, NEAR)[0] == "B"
    assert route(mesh.c, NEAR)[0] == "C"
    # The first requests on both sides at once: neither engine has measured speeds yet.
    out: dict[str, Any] = {}

    def ask(n: MeshNode) -> None:
        r = n.post("/v1/chat/completions", json=chat(NEAR, max_tokens=8))
        out[n.name] = (r.status_code, r.headers.get("x-meshd-node"), r.headers.get("x-meshd-via"), r.headers.get("x-meshd-route"))

    ts = [threading.Thread(target=ask, args=(n,)) for n in (mesh.b, mesh.c)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(15)
    assert out["B"][:3] == (200, "B", None), out
    assert out["C"][:3] == (200, "C", None), out
    assert not out["B"][3].startswith("forwarded"), out


def test_busy_node_is_avoided(mesh: RoutingMesh) -> None:
    # Measure both engines alike first (1 s of generation each), so that only B's load differs.
    warm: dict[str, tuple[int, str | None]] = {}

    def warmup(n: MeshNode) -> None:
        r = n.post("/v1/chat/completions", json=chat(DUP, max_tokens=TPS), timeout=15)
        warm[n.name] = (r.status_code, r.headers.get("x-meshd-node"))

    ts = [threading.Thread(target=warmup, args=(n,)) for n in (mesh.b, mesh.c)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(15)
    assert warm == {"B": (200, "B"), "C": (200, "C")}
    wait_until(lambda: all(mesh.a.nodes()[n]["in_flight"] == 0 for n in "BC"), 5, what="B and C idle in A's view")
    time.sleep(1.1)  # one heartbeat: A learns the measured speeds

    # A long stream on B (up to 10 s; closed once the checks are done) takes its only slot.
    long: dict[str, Any] = {}
    done = threading.Event()

    def occupy() -> None:
        with mesh.b.client(timeout=20) as cl:
            with cl.stream("POST", "/v1/chat/completions", json=chat(DUP, stream=True, max_tokens=10 * TPS)) as r:
                long["r"] = (r.status_code, r.headers.get("x-meshd-node"))
                for _ in r.iter_lines():
                    if done.is_set():
                        break

    t = threading.Thread(target=occupy)
    t.start()
    try:
        t0 = time.monotonic()
        wait_until(lambda: mesh.a.nodes()["B"]["in_flight"] >= 1, 3, what="A to see B busy")
        seen = time.monotonic() - t0
        node, reason = route(mesh.a, DUP)
        assert node == "C", reason
        assert reason.startswith("C/"), reason
        served = []
        for _ in range(3):
            r = mesh.a.post("/v1/chat/completions", json=chat(DUP, max_tokens=16))
            assert r.status_code == 200, r.text
            served.append((r.headers.get("x-meshd-node"), r.headers.get("x-meshd-via")))
        assert served == [("C", "A")] * 3, served
        assert mesh.sim_b.stats()["in_flight"] == 1 and t.is_alive()
        print(f"\n[mesh] A saw B busy {seen * 1000:.0f} ms after B took the request; route: {reason}")
    finally:
        done.set()
        t.join(20)
    assert long["r"] == (200, "B")
    wait_until(lambda: mesh.sim_b.stats()["in_flight"] == 0, 3, what="B's engine free again")


def test_drain_moves_new_work_and_lets_streams_finish(mesh: RoutingMesh) -> None:
    n_tokens = 4 * TPS
    stream: dict[str, Any] = {}

    def consume() -> None:
        lines = []
        with mesh.a.client(timeout=15) as c:
            with c.stream("POST", "/v1/chat/completions", json=chat(ONLY_B, stream=True, max_tokens=n_tokens)) as r:
                stream["status"] = r.status_code
                stream["node"] = r.headers.get("x-meshd-node")
                for line in r.iter_lines():
                    if line.strip():
                        lines.append(line)
        stream["lines"] = lines

    t = threading.Thread(target=consume)
    t.start()
    try:
        wait_until(lambda: mesh.sim_b.stats()["in_flight"] >= 1, 5, what="the stream to run on B")
        res = mesh.a.meshctl("drain", "B")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "B: draining" in res.stdout
        assert mesh.a.nodes()["B"]["state"] == "draining"
        mesh.b.wait_sees({"B": "draining"}, timeout=3)
        # The drain reached B while the stream was running there.
        assert t.is_alive() and mesh.sim_b.stats()["in_flight"] == 1, "the stream ended too early: make it longer"
        mesh.c.wait_sees({"B": "draining"}, timeout=3)
        assert route(mesh.a, DUP)[0] == "C"
        for _ in range(4):
            r = mesh.a.post("/v1/chat/completions", json=chat(DUP))
            assert (r.status_code, r.headers.get("x-meshd-node"), r.headers.get("x-meshd-via")) == (200, "C", "A"), r.text
        # B itself sends its clients elsewhere while draining.
        r = mesh.b.post("/v1/chat/completions", json=chat(DUP))
        assert (r.status_code, r.headers.get("x-meshd-node"), r.headers.get("x-meshd-via")) == (200, "C", "B")
        # Nobody else has only-b: 503 that says why.
        r = mesh.a.post("/v1/chat/completions", json=chat(ONLY_B))
        assert r.status_code == 503 and "draining" in r.json()["error"]["message"], r.text
        assert mesh.a.meshctl("route", ONLY_B).returncode != 0
    finally:
        t.join(20)
        undo = mesh.a.meshctl("undrain", "B")
    # The in-flight stream on B finished normally.
    lines = stream["lines"]
    assert stream["status"] == 200 and stream["node"] == "B"
    assert lines[-1] == "data: [DONE]", lines[-3:]
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert not any("error" in e for e in events)
    text = "".join((e["choices"][0]["delta"].get("content") or "") for e in events if e.get("choices"))
    assert text.split() == [f"tok{i}" for i in range(n_tokens)]

    assert undo.returncode == 0, undo.stdout + undo.stderr
    mesh.a.wait_sees({"B": "up"}, timeout=3)
    mesh.b.wait_sees({"B": "up"}, timeout=3)
    mesh.c.wait_sees({"B": "up"}, timeout=3)
    r = mesh.a.post("/v1/chat/completions", json=chat(ONLY_B))
    assert (r.status_code, r.headers.get("x-meshd-node")) == (200, "B"), r.text


def test_self_drain_is_announced(mesh: RoutingMesh) -> None:
    res = mesh.b.meshctl("drain")
    assert res.returncode == 0, res.stdout + res.stderr
    try:
        mesh.a.wait_sees({"B": "draining"}, timeout=3)
        r = mesh.a.post("/v1/chat/completions", json=chat(DUP))
        assert (r.status_code, r.headers.get("x-meshd-node")) == (200, "C")
    finally:
        assert mesh.b.meshctl("undrain").returncode == 0
    mesh.a.wait_sees({"B": "up"}, timeout=3)


def test_drain_unknown_node(mesh: RoutingMesh) -> None:
    res = mesh.a.meshctl("drain", "nosuch")
    assert res.returncode != 0 and "nosuch" in res.stdout
