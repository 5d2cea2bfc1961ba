"""An engine dying is handled like a node dying: a request whose engine fails before the client got a
byte (refused, reset, empty reply, cut before the first token) goes to the next candidate, local or on
a peer, and the failed engine leaves rotation at once. Nodes A and B each front an engine with the
same model; the clients talk to C, in both dialects, streamed and not. Only a stream that already
sent the client tokens may end with an error event (clean, in its dialect)."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from meshd_e2e import Binaries, E2EError, LlamaServer, ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat, ollama_chat, sim_entry, start_sim

KINDS = [("openai", False), ("openai", True), ("ollama", False), ("ollama", True)]


def one_request(cl: httpx.Client, model: str, api: str, stream: bool, tokens: int) -> dict[str, Any]:
    """Sends one request; classifies the outcome. A stream 'started' once the client got a content token."""
    path, body = (("/v1/chat/completions", chat(model, stream=stream, max_tokens=tokens)) if api == "openai"
                  else ("/api/chat", ollama_chat(model, stream=stream, num_predict=tokens)))
    rec: dict[str, Any] = {"api": api, "stream": stream, "t0": time.monotonic()}
    try:
        if not stream:
            r = cl.post(path, json=body)
            rec.update(status=r.status_code, node=r.headers.get("x-meshd-node"), body=r.text[:2000] if r.status_code != 200 else "")
            return rec
        with cl.stream("POST", path, json=body) as r:
            rec.update(status=r.status_code, node=r.headers.get("x-meshd-node"))
            if r.status_code != 200:
                rec["body"] = r.read().decode()[:400]
                return rec
            content, error, done = 0, None, False
            for line in r.iter_lines():
                if not line.strip():
                    continue
                if api == "openai":
                    if line == "data: [DONE]":
                        done = True
                        continue
                    ev = json.loads(line[len("data: "):])
                    if "error" in ev:
                        error = ev["error"]
                        continue
                    if ev.get("choices") and ev["choices"][0].get("delta", {}).get("content"):
                        content += 1
                else:
                    ev = json.loads(line)
                    if "error" in ev:
                        error = ev["error"]
                        continue
                    if ev.get("message", {}).get("content"):
                        content += 1
                    done = done or bool(ev.get("done"))
            rec.update(content=content, error=error, done=done)
    except httpx.HTTPError as e:
        rec.update(status=repr(e))
    rec["t1"] = time.monotonic()
    return rec


def run_load(c: MeshNode, model: str, total: int, workers: int, tokens: int, during: Any = None,
             fault_after: float = 1.0) -> list[dict[str, Any]]:
    """`total` requests through C from `workers` threads cycling the four kinds; `during()` runs
    `fault_after` seconds in. Bounded in count and time."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    counter = iter(range(total))
    deadline = time.monotonic() + 40

    def worker() -> None:
        with c.client(timeout=httpx.Timeout(20, read=10)) as cl:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                api, stream = KINDS[i % len(KINDS)]
                rec = one_request(cl, model, api, stream, tokens)
                with lock:
                    results.append(rec)

    ts = [threading.Thread(target=worker) for _ in range(workers)]
    for t in ts:
        t.start()
    if during is not None:
        time.sleep(fault_after)
        during()
    for t in ts:
        t.join(45)
    return results


def check(results: list[dict[str, Any]], label: str, total: int) -> dict[str, int]:
    """No request failed unless it was a stream that had already sent the client content; those end
    with one clean error event and no [DONE]/done."""
    assert len(results) == total, f"{len(results)} of {total} requests ran"
    lost = [r for r in results if r["status"] != 200]
    cut = [r for r in results if r["status"] == 200 and r["stream"] and not r.get("done")]
    for r in cut:
        assert r["content"] > 0 and r["error"] is not None, r  # started streaming, then a clean error event
    ok_streams = [r for r in results if r["stream"] and r["status"] == 200 and r.get("done")]
    for r in ok_streams:
        assert r["error"] is None and r["content"] > 0, r
    nodes = Counter(r.get("node") for r in results)
    print(f"\n[engine failover] {label}: {len(results)} requests, {len(lost)} failed before streaming, "
          f"{len(cut)} streams cut after their first tokens (clean error event), served by {dict(nodes)}")
    assert not lost, lost[:5]
    return dict(nodes)


def test_kill9_of_a_real_llama_server_under_mixed_load(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    paths = Binaries()
    try:
        la = LlamaServer(mpool, paths.llama_server_bin(), paths.tiny_model())
        lb = LlamaServer(mpool, paths.llama_server_bin(), paths.tiny_model())
    except E2EError as e:
        raise AssertionError(f"a real llama-server is required (tools/build-llama.sh, tools/make-tiny-model.sh): {e}")
    a = MeshNode(mpool, mbins, "A", secret=secret, engines=[{"kind": "openai", "url": la.url}])
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[{"kind": "openai", "url": lb.url}], peers=[a])
    c = MeshNode(mpool, mbins, "C", secret=secret, peers=[a, b])
    c.wait_sees({"A": "up", "B": "up", "C": "up"}, timeout=15, models={"A": ["meshd-tiny"], "B": ["meshd-tiny"]})
    killed: dict[str, Any] = {}
    engines = {"A": (a, la), "B": (b, lb)}

    def kill_a_busy_engine() -> None:
        # kill -9 of whichever llama-server has requests open now (C's routing decides which gets
        # the load); the other node's engine has the same model and must take over.
        # The one with the most open (at least 2): a request with one open can end before the kill lands.
        def busy() -> str | None:
            open_ = {name: node.admin("GET", "/v1/engines").json()[0]["open"] for name, (node, _) in engines.items()}
            name = max(open_, key=lambda n: open_[n])
            return name if open_[name] >= 2 else None
        killed["node"] = wait_until(busy, 5, interval=0.002, what="an engine with requests open")
        killed["t"] = time.monotonic()
        engines[killed["node"]][1].proc.kill()

    results = run_load(c, "meshd-tiny", total=120, workers=8, tokens=96, during=kill_a_busy_engine, fault_after=0.5)
    victim = killed["node"]
    survivor = "B" if victim == "A" else "A"
    nodes = check(results, f"kill -9 of {victim}'s llama-server while it served", 120)
    vnode = engines[victim][0]
    retried = vnode.log().count("engine failed before answering") + c.log().count("peer failed before answering")
    cut = sum(1 for r in results if r["stream"] and r["status"] == 200 and not r.get("done"))
    print(f"[engine failover] requests retried after a failure before their first byte (logs of {victim} and C): {retried}")
    assert nodes.get(survivor, 0) > 0, nodes
    assert retried + cut >= 1, "the kill hit no request: the test saw no failover"
    # After the kill, nothing more was served by the dead engine's node.
    late = [r for r in results if r.get("node") == victim and r["t0"] > killed["t"] + 0.5]
    assert not late, late[:3]
    # The victim says why its engine is out of rotation.
    assert vnode.admin("GET", "/v1/engines").json()[0]["healthy"] is False


def test_sim_engine_refusing_or_dying_before_output_loses_nothing(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    sim_a = start_sim(mpool, mbins, "--models", "dup", "--loaded", "dup", "--gen-tps", 400, "--slots", 8)
    # B is slower, so C sends A its share whenever A is in rotation (a failure takes A out until
    # its next poll, 200 ms later): each fault mode below really hits requests.
    sim_b = start_sim(mpool, mbins, "--models", "dup", "--loaded", "dup", "--gen-tps", 400, "--slots", 8, "--latency-ms", 30)
    a = MeshNode(mpool, mbins, "A", secret=secret, engines=[sim_entry(sim_a)])
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[sim_entry(sim_b, "ollama")], peers=[a])
    c = MeshNode(mpool, mbins, "C", secret=secret, peers=[a, b])
    c.wait_sees({"A": "up", "B": "up", "C": "up"}, timeout=15, models={"A": ["dup"], "B": ["dup"]})
    for mode, extra in (("refuse", {}), ("die-mid-stream", {"fail_after_tokens": 0})):
        sim_a.control(fail=mode, fail_rate=0.5, **extra)
        before = sim_a.stats()["failed"]
        # Batches until A's engine has really failed a few requests (a failure takes it out of
        # rotation until its next poll, so how many reach it depends on timing), at most 6.
        for batch in range(6):
            results = run_load(c, "dup", total=32, workers=4, tokens=40)
            check(results, f"A's sim engine in '{mode}' (half of its requests), batch {batch + 1}", 32)
            if sim_a.stats()["failed"] - before >= 3:
                break
        assert sim_a.stats()["failed"] - before >= 3, f"A's engine failed only {sim_a.stats()['failed'] - before} requests in '{mode}'"
    # Dying after some tokens: only streams that had sent tokens end with an error event; the
    # non-streamed ones were retried.
    sim_a.control(fail="die-mid-stream", fail_rate=1, fail_after_tokens=3)
    results = run_load(c, "dup", total=32, workers=4, tokens=40)
    check(results, "A's sim engine dying after 3 tokens", 32)
    # Both engines refuse everything: the client's error names each engine of each node.
    sim_a.control(fail="refuse", fail_rate=1)
    sim_b.control(fail="refuse", fail_rate=1)
    time.sleep(0.5)
    for api in ("openai", "ollama"):
        with c.client(timeout=20) as cl:
            rec = one_request(cl, "dup", api, False, 4)
        assert rec["status"] in (502, 503), rec
        assert f"A/openai@127.0.0.1:{sim_a.port}" in rec["body"] and f"B/ollama@127.0.0.1:{sim_b.port}" in rec["body"], rec
        print(f"[engine failover] every engine refusing ({api}): {rec['status']} {rec['body'][:300]}")
    sim_a.control(fail="none")
    sim_b.control(fail="none")
