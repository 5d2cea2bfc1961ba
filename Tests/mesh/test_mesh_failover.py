"""Failover: the serving node dies (kill -9) or freezes (SIGSTOP) under load. Non-streamed requests
through A never fail (they are retried on C), A shows the dead node `down` quickly, and a stream cut
by the death ends with a clean error event in the client's dialect instead of hanging."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from meshd_e2e import ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat, ollama_chat, sim_entry, start_sim

DUP = "dup"
ONLY_B = "only-b"


def three_nodes(pool: ProcessPool, bins: MeshBinaries, secret: Path, b_models: str = DUP,
                tps: int = 100) -> tuple[MeshNode, MeshNode, MeshNode, Any, Any]:
    sim_b = start_sim(pool, bins, "--models", b_models, "--loaded", b_models, "--gen-tps", tps, "--slots", 8)
    sim_c = start_sim(pool, bins, "--models", DUP, "--gen-tps", tps, "--slots", 8)
    b = MeshNode(pool, bins, "B", secret=secret, engines=[sim_entry(sim_b, "openai")])
    c = MeshNode(pool, bins, "C", secret=secret, engines=[sim_entry(sim_c, "openai")], peers=[b])
    a = MeshNode(pool, bins, "A", secret=secret, peers=[b])
    a.wait_sees({"A": "up", "B": "up", "C": "up"}, models={"B": b_models.split(","), "C": [DUP]})
    return a, b, c, sim_b, sim_c


def b_gone(a: MeshNode) -> bool:
    """B is `down` in A's view, or no longer listed."""
    st = a.nodes().get("B", {"state": "down"})["state"]
    return st == "down"


def test_kill9_serving_node_under_load(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    a, b, c, sim_b, sim_c = three_nodes(mpool, mbins, secret)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()
    t_start = time.monotonic()

    def client_loop(k: int) -> None:
        with a.client(timeout=15) as cl:
            for i in range(150):  # bounded: ~0.1 s each, stopped after ~6 s
                if stop.is_set():
                    break
                t0 = time.monotonic()
                try:
                    r = cl.post("/v1/chat/completions", json=chat(DUP, max_tokens=10))
                    rec = {"loop": k, "i": i, "status": r.status_code, "node": r.headers.get("x-meshd-node"),
                           "via": r.headers.get("x-meshd-via"), "t0": t0, "t1": time.monotonic(),
                           "body": r.text[:300] if r.status_code != 200 else ""}
                except httpx.HTTPError as e:
                    rec = {"loop": k, "i": i, "status": repr(e), "node": None, "t0": t0, "t1": time.monotonic()}
                with lock:
                    results.append(rec)

    loops = [threading.Thread(target=client_loop, args=(k,)) for k in range(2)]
    for t in loops:
        t.start()
    try:
        time.sleep(2)
        # Kill B while it is serving one of them, if that happens within 2 s.
        try:
            wait_until(lambda: sim_b.stats()["in_flight"] >= 1, 2, interval=0.005)
        except AssertionError:
            pass
        b_busy = sim_b.stats()["in_flight"]
        t_kill = time.monotonic()
        b.kill9()
        detected = wait_until(lambda: b_gone(a) and time.monotonic(), 5, interval=0.01, what="A to see B down") - t_kill
        via_meshctl = a.meshctl_nodes()
        assert via_meshctl.get("B", {"state": "down"})["state"] == "down", via_meshctl
        assert via_meshctl["C"]["state"] == "up"
        time.sleep(max(0.0, 6 - (time.monotonic() - t_start)))
    finally:
        stop.set()
        for t in loops:
            t.join(20)
    failed = [r for r in results if r["status"] != 200]
    by_node = Counter(r["node"] for r in results)
    print(f"\n[mesh] failover: B killed with {b_busy} request(s) on its engine; A saw B down "
          f"{detected * 1000:.0f} ms after kill -9; {len(results)} requests, {len(failed)} failed, served by {dict(by_node)}")
    assert not failed, failed[:5]
    assert all(r["via"] == "A" for r in results)
    assert detected < 3.0, f"B shown down only {detected:.2f}s after the kill"
    assert by_node["B"] > 0 and by_node["C"] > 0, by_node
    # Nothing reached B once A knew it was gone.
    assert not [r for r in results if r["node"] == "B" and r["t0"] > t_kill + detected], results
    assert len(results) >= 20


def test_stream_cut_by_node_death_ends_with_error_event(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    a, b, c, sim_b, sim_c = three_nodes(mpool, mbins, secret, b_models=f"{DUP},{ONLY_B}", tps=20)
    out: dict[str, Any] = {}

    def consume(api: str) -> None:
        path, body = (("/v1/chat/completions", chat(ONLY_B, stream=True, max_tokens=400)) if api == "openai"
                      else ("/api/chat", ollama_chat(ONLY_B, stream=True, num_predict=400)))
        lines: list[str] = []
        try:
            # A bounded read: a hang shows up as a ReadTimeout, not a stuck test.
            with a.client(timeout=httpx.Timeout(10, read=5)) as cl:
                with cl.stream("POST", path, json=body) as r:
                    out[f"{api}.status"] = r.status_code
                    out[f"{api}.node"] = r.headers.get("x-meshd-node")
                    for line in r.iter_lines():
                        if line.strip():
                            lines.append(line)
        except httpx.HTTPError as e:
            out[f"{api}.exc"] = repr(e)
        out[f"{api}.end"] = time.monotonic()
        out[api] = lines

    ts = [threading.Thread(target=consume, args=(api,)) for api in ("openai", "ollama")]
    for t in ts:
        t.start()
    wait_until(lambda: sim_b.stats()["in_flight"] >= 2, 5, what="both streams running on B")
    time.sleep(0.5)
    t_kill = time.monotonic()
    b.kill9()
    for t in ts:
        t.join(15)
    for api in ("openai", "ollama"):
        assert f"{api}.exc" not in out, out[f"{api}.exc"]
        assert (out[f"{api}.status"], out[f"{api}.node"]) == (200, "B")
        lines = out[api]
        took = out[f"{api}.end"] - t_kill
        print(f"\n[mesh] {api} stream cut by kill -9 of B: error event after {took * 1000:.0f} ms, {len(lines)} lines")
        assert took < 3, took
        assert len(lines) >= 3, lines
        last = lines[-1]
        if api == "openai":
            assert last.startswith("data: "), last
            err = json.loads(last[6:])
            assert "[DONE]" not in lines
        else:
            err = json.loads(last)
            assert not any(json.loads(x).get("done") for x in lines[:-1])
        assert "error" in err, last
        msg = err["error"]["message"] if isinstance(err["error"], dict) else err["error"]
        assert "B" in msg, msg
    # A keeps serving what C has.
    r = a.post("/v1/chat/completions", json=chat(DUP))
    assert (r.status_code, r.headers.get("x-meshd-node")) == (200, "C")


def test_frozen_node_expires_after_missed_heartbeats(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    """SIGSTOP keeps B's connections open: only the missed heartbeats (3 x 1 s) reveal it."""
    a, b, c, sim_b, sim_c = three_nodes(mpool, mbins, secret)
    os.kill(b.pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    try:
        statuses = []
        for _ in range(3):
            r = a.post("/v1/chat/completions", json=chat(DUP), timeout=10)
            statuses.append((r.status_code, r.headers.get("x-meshd-node")))
        served = time.monotonic() - t_stop
        detected = wait_until(lambda: b_gone(a) and time.monotonic(), 6, interval=0.02, what="A to expire B") - t_stop
        assert a.nodes().get("B", {}).get("state") == "down", "an expired peer should be listed as down"
        print(f"\n[mesh] frozen B expired after {detected * 1000:.0f} ms; 3 requests answered within {served:.2f}s: {statuses}")
        assert all(s == (200, "C") for s in statuses), statuses
        assert 2.5 < detected < 4.5, detected
    finally:
        os.kill(b.pid, signal.SIGCONT)
    a.wait_sees({"B": "up"}, timeout=5)
