"""Forwarding across a 3-node mesh: A (no engines) knows only B; C peers with B and must be learned
through B's state ("one seed is enough"). Through A, both client APIs, streamed and not, reach the
models on B and on C; the headers name the serving node and `X-Meshd-Via: A`; A lists the models of
the whole mesh; and a client that goes away cancels the request on the serving node's engine."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import ollama
import openai
import pytest

from meshd_e2e import ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat, ollama_chat, sim_entry, start_sim

B_MODEL = "b-model"
C_MODEL = "c-model"
TEXT4 = "tok0 tok1 tok2 tok3 "


class Mesh3:
    def __init__(self, pool: ProcessPool, bins: MeshBinaries, secret: Path) -> None:
        self.sim_b = start_sim(pool, bins, "--models", B_MODEL, "--gen-tps", 200)
        self.sim_c = start_sim(pool, bins, "--models", C_MODEL, "--gen-tps", 200)
        # B's engine speaks the OpenAI dialect, C's the Ollama one: forwarding works across both.
        self.b = MeshNode(pool, bins, "B", secret=secret, engines=[sim_entry(self.sim_b, "openai")])
        self.c = MeshNode(pool, bins, "C", secret=secret, engines=[sim_entry(self.sim_c, "ollama")], peers=[self.b])
        self.a = MeshNode(pool, bins, "A", secret=secret, peers=[self.b])
        self.sims = {"B": self.sim_b, "C": self.sim_c}
        self.a.wait_sees({"A": "up", "B": "up", "C": "up"}, timeout=10, models={"B": [B_MODEL], "C": [C_MODEL]})


@pytest.fixture(scope="module")
def mesh(module_mpool: ProcessPool, mbins: MeshBinaries, module_secret: Path) -> Mesh3:
    return Mesh3(module_mpool, mbins, module_secret)


def test_one_seed_is_enough(mesh: Mesh3) -> None:
    assert mesh.a.config["mesh"]["peers"] == [mesh.b.mesh_endpoint]
    view = mesh.a.meshctl_nodes()
    assert set(view) == {"A", "B", "C"}, view
    for name, node in view.items():
        assert node["state"] == "up", view
        assert node["local"] is (name == "A"), view
    assert view["A"]["models"] == []
    assert view["B"]["models"] == [B_MODEL]
    assert view["C"]["models"] == [C_MODEL]
    assert view["B"]["address"] == f"127.0.0.1:{mesh.b.http_port}"
    assert view["C"]["address"] == f"127.0.0.1:{mesh.c.http_port}"
    # Every node is listed with the mesh endpoint peers dial it on, in one format.
    for name, node in (("A", mesh.a), ("B", mesh.b), ("C", mesh.c)):
        assert view[name]["mesh_endpoint"] == node.mesh_endpoint, view
    # The others learned A too (A dialed them; C never had A configured).
    mesh.b.wait_sees({"A": "up", "B": "up", "C": "up"})
    mesh.c.wait_sees({"A": "up", "B": "up", "C": "up"})
    table = mesh.a.meshctl("nodes")
    assert table.returncode == 0 and "A (this)" in table.stdout and B_MODEL in table.stdout and C_MODEL in table.stdout


def test_nodes_carry_their_hardware(mesh: Mesh3) -> None:
    # Each node's hardware reading (GPUs, or "cpu" and its RAM) reaches the others with its state.
    view = wait_until(lambda: (v := mesh.a.meshctl_nodes()) and all((n.get("ram_total_bytes") or 0) > 0 for n in v.values()) and v,
                      timeout=15, what="every node's RAM in A's view")
    for name, node in view.items():
        assert isinstance(node["gpu"], str) and node["gpu"], view
        assert 0 <= node["vram_free_bytes"] <= node["vram_total_bytes"], view
        assert (node["gpu"] == "cpu") == (node["vram_total_bytes"] == 0), view
        assert 0 <= node["ram_free_bytes"] <= node["ram_total_bytes"], view
    # Only the local node lists its devices; a CPU-only node lists the CPU with system RAM.
    devices = view["A"]["devices"]
    assert devices and all(d["kind"] in ("nvidia", "amd", "cpu") for d in devices), devices
    assert "devices" not in view["B"]
    if view["A"]["gpu"] == "cpu":
        assert devices[0]["kind"] == "cpu" and devices[0]["total_bytes"] == view["A"]["ram_total_bytes"], devices
    status = mesh.a.admin("GET", "/v1/status").json()
    assert status["hardware"]["gpu"] == view["A"]["gpu"], status
    assert [d["name"] for d in status["hardware"]["devices"]] == [d["name"] for d in devices], status


def test_models_of_the_whole_mesh(mesh: Mesh3) -> None:
    ids = [m["id"] for m in mesh.a.get("/v1/models").raise_for_status().json()["data"]]
    assert sorted(ids) == [B_MODEL, C_MODEL]
    tags = [m["name"] for m in mesh.a.get("/api/tags").raise_for_status().json()["models"]]
    assert {B_MODEL, C_MODEL} <= {t.removesuffix(":latest") for t in tags}, tags
    one = mesh.a.get(f"/v1/models/{C_MODEL}")
    assert one.status_code == 200 and one.json()["id"] == C_MODEL


ROUTES = {
    ("openai", "chat"): "/v1/chat/completions",
    ("openai", "completion"): "/v1/completions",
    ("ollama", "chat"): "/api/chat",
    ("ollama", "generate"): "/api/generate",
}


def body(api: str, kind: str, model: str, stream: bool, n: int = 4) -> dict[str, Any]:
    if api == "openai":
        if kind == "chat":
            return chat(model, stream=stream, max_tokens=n)
        return {"model": model, "prompt": "hello", "max_tokens": n, "stream": stream}
    if kind == "chat":
        return ollama_chat(model, stream=stream, num_predict=n)
    return {"model": model, "prompt": "hello", "stream": stream, "options": {"num_predict": n}}


def text_of(api: str, kind: str, obj: dict[str, Any], streamed: bool) -> str:
    if api == "openai":
        ch = obj["choices"][0] if obj.get("choices") else {}
        if kind == "completion":
            return ch.get("text") or ""
        return ((ch.get("delta") if streamed else ch.get("message")) or {}).get("content") or ""
    if kind == "chat":
        return (obj.get("message") or {}).get("content") or ""
    return obj.get("response") or ""


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("api,kind", list(ROUTES), ids=[f"{a}-{k}" for a, k in ROUTES])
@pytest.mark.parametrize("server", ["B", "C"])
def test_forwarded_through_a(mesh: Mesh3, server: str, api: str, kind: str, stream: bool) -> None:
    model = B_MODEL if server == "B" else C_MODEL
    with mesh.a.client(timeout=10) as c:
        with c.stream("POST", ROUTES[(api, kind)], json=body(api, kind, model, stream)) as r:
            lines = [line for line in r.iter_lines() if line.strip()]
            headers = r.headers
            status = r.status_code
    assert status == 200, lines
    assert headers.get("x-meshd-node") == server
    assert headers.get("x-meshd-via") == "A"
    assert headers.get("x-meshd-route", "").startswith(f"forwarded to {server}: "), headers
    if not stream:
        assert "application/json" in headers.get("content-type", "")
        assert text_of(api, kind, json.loads("".join(lines)), streamed=False) == TEXT4
        return
    if api == "openai":
        assert "text/event-stream" in headers.get("content-type", "")
        assert lines[-1] == "data: [DONE]", lines
        events = [json.loads(line[6:]) for line in lines[:-1]]
    else:
        assert "ndjson" in headers.get("content-type", "")
        events = [json.loads(line) for line in lines]
        assert events[-1]["done"] is True
    assert not any("error" in e for e in events), events
    assert "".join(text_of(api, kind, e, streamed=True) for e in events) == TEXT4


@pytest.mark.parametrize("server", ["B", "C"])
def test_embeddings_forwarded(mesh: Mesh3, server: str) -> None:
    model = B_MODEL if server == "B" else C_MODEL
    r = mesh.a.post("/v1/embeddings", json={"model": model, "input": ["a", "b"]})
    assert r.status_code == 200, r.text
    assert (r.headers.get("x-meshd-node"), r.headers.get("x-meshd-via")) == (server, "A")
    assert len(r.json()["data"]) == 2
    r = mesh.a.post("/api/embed", json={"model": model, "input": "a"})
    assert r.status_code == 200, r.text
    assert r.headers.get("x-meshd-node") == server and len(r.json()["embeddings"]) == 1


def test_official_clients_through_a(mesh: Mesh3) -> None:
    oa = openai.OpenAI(base_url=f"{mesh.a.url}/v1", api_key="unused", max_retries=0, timeout=10,
                       http_client=httpx.Client(trust_env=False, timeout=10))
    ol = ollama.Client(host=mesh.a.url, timeout=10, trust_env=False)
    for model, server in ((B_MODEL, "B"), (C_MODEL, "C")):
        raw = oa.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert raw.headers.get("x-meshd-node") == server and raw.headers.get("x-meshd-via") == "A"
        assert raw.parse().choices[0].message.content == TEXT4
        chunks = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True)
        assert "".join((ch.choices[0].delta.content or "") for ch in chunks if ch.choices) == TEXT4
        assert ol.chat(model=model, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4}).message.content == TEXT4
        parts = ol.generate(model=model, prompt="hi", options={"num_predict": 4}, stream=True)
        assert "".join(p.response for p in parts) == TEXT4


def test_unknown_model_through_a(mesh: Mesh3) -> None:
    r = mesh.a.post("/v1/chat/completions", json=chat("no-such-model"))
    assert r.status_code == 404
    assert B_MODEL in r.json()["error"]["message"] and C_MODEL in r.json()["error"]["message"]
    r = mesh.a.post("/api/chat", json=ollama_chat("no-such-model"))
    assert r.status_code == 404 and "error" in r.json()


def _wait_cancelled(mesh: Mesh3, server: str, before: int, what: str) -> float:
    t0 = time.monotonic()
    wait_until(lambda: mesh.sims[server].stats()["cancelled"] > before, 2.5, interval=0.05,
               what=f"{server}'s engine to see the cancel ({what}); stats {mesh.sims[server].stats()}")
    return time.monotonic() - t0


@pytest.mark.parametrize("api", ["openai", "ollama"])
@pytest.mark.parametrize("server", ["B", "C"])
def test_client_disconnect_mid_stream_cancels_on_serving_node(mesh: Mesh3, server: str, api: str) -> None:
    model = B_MODEL if server == "B" else C_MODEL
    before = mesh.sims[server].stats()["cancelled"]
    kind = "chat"
    got = 0
    with mesh.a.client(timeout=10) as c:
        # 4000 tokens at 200 tokens/s: 20 s if nobody cancels.
        with c.stream("POST", ROUTES[(api, kind)], json=body(api, kind, model, True, n=4000)) as r:
            assert r.status_code == 200 and r.headers.get("x-meshd-node") == server
            for line in r.iter_lines():
                got += bool(line.strip())
                if got >= 5:
                    break
    took = _wait_cancelled(mesh, server, before, f"{api} stream closed after {got} lines")
    print(f"\n[mesh] cancel reached {server}'s engine {took * 1000:.0f} ms after the client left ({api} stream)")
    wait_until(lambda: mesh.sims[server].stats()["in_flight"] == 0, 3, what="the engine to be idle again")


def test_client_disconnect_before_head_cancels_on_serving_node(mesh: Mesh3) -> None:
    """A non-streamed request: B answers only when generation ends; the client leaves before."""
    before = mesh.sim_b.stats()["cancelled"]
    with pytest.raises(httpx.ReadTimeout):
        mesh.a.post("/v1/chat/completions", json=chat(B_MODEL, max_tokens=4000), timeout=httpx.Timeout(5, read=0.7))
    took = _wait_cancelled(mesh, "B", before, "non-streamed request abandoned")
    print(f"\n[mesh] cancel of a non-streamed request reached B's engine {took * 1000:.0f} ms after the client left")


def test_mesh_still_serves_after_cancels(mesh: Mesh3) -> None:
    for model, server in ((B_MODEL, "B"), (C_MODEL, "C")):
        r = mesh.a.post("/v1/chat/completions", json=chat(model))
        assert r.status_code == 200 and r.headers.get("x-meshd-node") == server
