"""Splits on loopback (issue 13): three meshd nodes, each offering less memory than the tiny model
needs (`hardware.offer_bytes`), so no node can hold it. Node A has the GGUF file (a managed llama.cpp
engine entry); a request to any node gets a split planned and started by A, with leases on B and C,
and answers through both APIs, streamed and not, with the unsplit model's temperature-0 output.
Over the mesh relay (the default) and `split.transport: direct`. The multi-host cases (kill -9, cut
link, a host without the secret) are in Tests/testbed/test_testbed_split.py."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshd_e2e import Binaries, E2EError, LlamaServer, ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode

MODEL = "meshd-tiny"
PROMPT = "The quick brown fox"


def tiny() -> tuple[Path, Path]:
    paths = Binaries()
    try:
        return paths.llama_server_bin(), paths.tiny_model()
    except E2EError as e:
        raise AssertionError(f"a real llama-server and the tiny model are required: {e}")


def completion(node: MeshNode, n: int = 24) -> dict[str, Any]:
    r = node.post("/v1/completions", timeout=120, json={"model": MODEL, "prompt": PROMPT, "max_tokens": n, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def split_nodes(mpool: ProcessPool, mbins: MeshBinaries, secret: Path, transport: str, *, offer_mb: int, workers: int = 2,
                lease_seconds: int = 30) -> tuple[MeshNode, list[MeshNode]]:
    _, model = tiny()
    split = {"transport": transport, "lease_seconds": lease_seconds}
    extra = {"split": split, "hardware": {"offer_bytes": offer_mb << 20}}
    ws = [MeshNode(mpool, mbins, n, secret=secret, engines=[], extra=extra) for n in ("B", "C")[:workers]]
    a = MeshNode(mpool, mbins, "A", secret=secret, peers=ws, extra=extra,
                 engines=[{"kind": "llama.cpp", "model": str(model), "args": ["-c", "512", "-t", "1"]}])
    names = {"A": "up", **{w.name: "up" for w in ws}}
    a.wait_sees(names, timeout=20)
    for w in ws:
        w.wait_sees(names, timeout=20)
    # Every node knows every other's llama.cpp build and offer before the first request.
    wait_until(lambda: all(n.get("llama_build") and n.get("offer_bytes") for n in a.meshctl_nodes().values()), 20,
               what="every node's llama.cpp build and offer in A's view")
    return a, ws


@pytest.mark.parametrize("transport", ["mesh", "direct"])
def test_a_model_no_node_can_hold_is_split_and_answers_like_the_unsplit_one(
        mpool: ProcessPool, mbins: MeshBinaries, secret: Path, transport: str) -> None:
    server, model = tiny()
    # The unsplit model's temperature-0 answer, from a plain llama-server.
    plain = LlamaServer(mpool, server, model)
    want = httpx.post(plain.url + "/v1/completions", timeout=60,
                      json={"model": MODEL, "prompt": PROMPT, "max_tokens": 24, "temperature": 0}).json()["choices"][0]["text"]

    size_mb = model.stat().st_size >> 20
    # Each node offers 8 MiB: the ~17 MiB model (+ KV + 10 %) needs A and both workers.
    a, (b, c) = split_nodes(mpool, mbins, secret, transport, offer_mb=8)
    assert size_mb > 8
    route = json.loads(c.meshctl("route", MODEL, "--json").stdout)
    assert route["node"] == "A", route
    assert "split" in route.get("split", "") or "headed by A" in route.get("split", ""), route
    plan = json.loads(a.meshctl("route", MODEL, "--json").stdout)
    assert "split over 3 nodes" in plan["split"], plan

    t0 = time.monotonic()
    got = completion(c)  # through C: forwarded to A, which plans and starts the split
    first = time.monotonic() - t0
    assert got["choices"][0]["text"] == want, (got, want)
    print(f"\n[split {transport}] first answer (plan, leases, load over RPC) after {first:.1f} s")

    splits = json.loads(a.meshctl("splits", "--json").stdout)
    head = splits["heads"][0]
    # Hop times to the workers were measured before placing them (and with every renewal).
    assert {"B", "C"} <= set(splits["head_stats"]["hop_ms"]), splits["head_stats"]
    assert all(0 < v < 1000 for v in splits["head_stats"]["hop_ms"].values()), splits["head_stats"]
    assert head["state"] == "serving" and head["model"] == MODEL and head["transport"] == transport, head
    # Relayed: over each worker's secure relay (mesh keys, direct TCP); direct: llama-server itself.
    assert head["paths"] == ["secure", "secure"] if transport == "mesh" else ["direct", "direct"], head
    assert [p["node"] for p in head["parts"]][-1] == "A" and {p["node"] for p in head["parts"]} == {"A", "B", "C"}, head
    for w in (b, c):
        lease = json.loads(w.meshctl("splits", "--json").stdout)["leases"]
        assert len(lease) == 1 and lease[0]["head"] == "A" and lease[0]["split"] == head["split"], lease
    nodes = a.meshctl_nodes()
    assert nodes["B"]["leased_to"] == head["split"] and nodes["B"]["leased_bytes"] > 0, nodes["B"]
    assert nodes["A"]["heads"] == [head["split"]], nodes["A"]

    # Both dialects, streamed and not, from every node (Ollama's generate applies the chat template,
    # so its answer differs from the raw completion's, but is the same from every node).
    generated = set()
    for node in (a, b, c):
        r = node.post("/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0, "stream": True})
        assert r.status_code == 200 and "data: [DONE]" in r.text, r.text
        r = node.post("/api/generate", timeout=60, json={"model": MODEL, "prompt": PROMPT, "stream": False,
                                                            "options": {"num_predict": 24, "temperature": 0}})
        assert r.status_code == 200 and r.json()["eval_count"] == 24, r.text
        generated.add(r.json()["response"])
        r = node.post("/api/chat", timeout=60, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                        "options": {"num_predict": 8}})
        lines = [json.loads(x) for x in r.text.splitlines() if x.strip()]
        assert r.status_code == 200 and lines[-1]["done"] is True, r.text
    assert len(generated) == 1, generated

    metrics = a.get("/metrics").text
    assert "meshd_splits_started_total 1" in metrics, metrics
    assert "meshd_split_tokens_per_second{" in metrics


def test_a_model_that_fits_is_never_split_and_split_never_is_refused_with_the_reason(
        mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    _, model = tiny()
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[], extra={"hardware": {"offer_bytes": 64 << 20}})
    a = MeshNode(mpool, mbins, "A", secret=secret, peers=[b], extra={"hardware": {"offer_bytes": 64 << 20}},
                 engines=[{"kind": "llama.cpp", "model": str(model), "args": ["-c", "512", "-t", "1"]}])
    a.wait_sees({"A": "up", "B": "up"}, timeout=20, models={"A": [MODEL]})
    assert completion(a, 4)["choices"]
    route = json.loads(a.meshctl("route", MODEL, "--json").stdout)
    assert route["split"].startswith("not split"), route
    assert json.loads(a.meshctl("splits", "--json").stdout)["heads"] == []
    assert json.loads(b.meshctl("splits", "--json").stdout)["leases"] == []


def rpc_servers() -> dict[int, str]:
    """Running rpc-server processes: pid → command line."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (p / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if "rpc-server" in cmd and stat[stat.rfind(")") + 2] not in "ZX":
            out[int(p.name)] = cmd
    return out


@pytest.mark.parametrize("transport", ["mesh", "direct"])
def test_a_dead_worker_ends_the_split_and_the_next_request_plans_without_it(
        mpool: ProcessPool, mbins: MeshBinaries, secret: Path, transport: str) -> None:
    before = set(rpc_servers())
    # 12 MiB each: A and one worker hold the ~19 MiB the model needs.
    a, (b, c) = split_nodes(mpool, mbins, secret, transport, offer_mb=12, lease_seconds=4)
    assert completion(a, 4)["choices"]
    head = json.loads(a.meshctl("splits", "--json").stdout)["heads"][0]
    victim_name = next(p["node"] for p in head["parts"] if not p["head"])
    victim, other = (b, c) if victim_name == "B" else (c, b)
    assert len(head["parts"]) == 2, head

    # kill -9 of the worker's meshd mid-stream: the stream ends (an error event or its end) and
    # does not hang; the split is over within 2 s.
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", a.url + "/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 400,
                "stream": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert first
            victim.kill9()
            killed = time.monotonic()
            rest = list(lines)
            stream_end = time.monotonic() - killed
    assert rest and (rest[-1] == "data: [DONE]" or any('"error"' in x for x in rest)), rest[-3:]

    def split_gone() -> bool:
        s = json.loads(a.meshctl("splits", "--json").stdout)
        return not s["heads"] and s["head_stats"]["failed"] >= 1
    wait_until(split_gone, 10, what="the split ended at A")
    ended = time.monotonic() - killed
    print(f"\n[split {transport}] worker killed: stream over after {stream_end:.2f} s, split ended after {ended:.2f} s")
    assert ended < 2.5, ended
    stats = json.loads(a.meshctl("splits", "--json").stdout)["head_stats"]
    assert victim_name in stats["backing_off"], stats

    # The next request plans again, without the failed node.
    assert completion(a, 4)["choices"]
    head = json.loads(a.meshctl("splits", "--json").stdout)["heads"][0]
    assert {p["node"] for p in head["parts"]} == {"A", other.name}, head

    # The head dies: its worker's rpc-server goes with the lease (4 s), and none outlives the test.
    a.kill9()
    wait_until(lambda: not json.loads(other.meshctl("splits", "--json").stdout)["leases"], 10,
               what="the lease of the dead head expired")
    wait_until(lambda: set(rpc_servers()) <= before, 10, what="no rpc-server left running")


@pytest.mark.parametrize("transport", ["mesh", "direct"])
def test_a_request_in_flight_when_a_worker_dies_is_answered_by_the_split_planned_again(
        mpool: ProcessPool, mbins: MeshBinaries, secret: Path, transport: str) -> None:
    import threading

    # 12 MiB each: A and one worker hold the model; the other worker is the spare.
    a, (b, c) = split_nodes(mpool, mbins, secret, transport, offer_mb=12)
    assert completion(a, 4)["choices"]
    head = json.loads(a.meshctl("splits", "--json").stdout)["heads"][0]
    victim_name = next(p["node"] for p in head["parts"] if not p["head"])
    victim, other = (b, c) if victim_name == "B" else (c, b)
    result: dict[str, Any] = {}

    def ask() -> None:
        r = a.post("/v1/completions", timeout=60, json={"model": MODEL, "prompt": PROMPT, "max_tokens": 450, "temperature": 0,
                                                         "ignore_eos": True})
        result["status"], result["body"] = r.status_code, r.json()

    t = threading.Thread(target=ask)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.3)
    victim.kill9()
    t.join(60)
    took = time.monotonic() - t0
    assert result.get("status") == 200, result
    assert result["body"]["usage"]["completion_tokens"] > 0, result
    head = json.loads(a.meshctl("splits", "--json").stdout)["heads"][0]
    assert {p["node"] for p in head["parts"]} == {"A", other.name}, head
    print(f"\n[split {transport}] a request in flight when its worker died: answered by the split planned again "
          f"(A + {other.name}) after {took:.2f} s")
