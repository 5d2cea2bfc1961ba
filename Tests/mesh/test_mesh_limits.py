"""Per-key limits, mesh-wide (issue 17): requests and tokens per minute, concurrent requests and the
models a key may use, held across every node a key spreads its requests over. Over a limit the node
answers 429 (403 for a model) in the route's dialect with `Retry-After` and the `x-ratelimit-*`
headers OpenAI clients read; `meshctl status`, `meshctl usage` and `/metrics` show each key's use.
The sliding window, the sums over peers and the header arithmetic are unit-tested in RateLimiterTests."""
from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from meshd_e2e import ProcessPool, render_config, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat, ollama_chat, sim_entry, start_sim

KEYS = ["alice:alice-key-0001", "bob:bob-key-0002", "carol:carol-key-0003", "dave:dave-key-0004"]
H = {k.split(":")[0]: {"Authorization": f"Bearer {k.split(':')[1]}"} for k in KEYS}
MODEL = "m"


def _mesh(mpool: ProcessPool, mbins: MeshBinaries, secret: Path, limits: dict[str, Any], *sim_args: Any) -> list[MeshNode]:
    """A and B each with a simulated engine of MODEL, C with none (it forwards); all three limit keys alike."""
    nodes: list[MeshNode] = []
    for name in ["A", "B", "C"]:
        engines = [sim_entry(start_sim(mpool, mbins, "--models", MODEL, *sim_args))] if name != "C" else []
        n = MeshNode(mpool, mbins, name, secret=secret, engines=engines, peers=nodes[:1], start=False, extra={"limits": limits})
        n.config["http"]["api_keys"] = KEYS
        n.config_path.write_text(render_config(n.config))
        n.start()
        nodes.append(n)
    for n in nodes:
        n.wait_sees({"A": "up", "B": "up", "C": "up"}, timeout=20, models={"A": [MODEL], "B": [MODEL]})
    return nodes


def _ask(node: MeshNode, key: str, i: int) -> httpx.Response:
    """Request i of a mixed load: both dialects, streamed and not."""
    if i % 2 == 0:
        body = chat(MODEL, stream=i % 4 == 0, max_tokens=2)
        return node.post("/v1/chat/completions", json=body, headers=H[key])
    return node.post("/api/chat", json=ollama_chat(MODEL, stream=i % 4 == 1, num_predict=2), headers=H[key])


def test_requests_per_minute_hold_across_three_nodes(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    rpm = 40
    nodes = _mesh(mpool, mbins, secret, {"default": {"rpm": 1000}, "per_key": {"alice": {"rpm": rpm}}}, "--gen-tps", 0)
    # Four clients of one key, each going round the three nodes: 120 requests, well within a minute.
    results: list[tuple[int, httpx.Response]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for j in range(30):
            i = c * 30 + j
            r = _ask(nodes[i % 3], "alice", i)
            with lock:
                results.append((i, r))

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    took = time.monotonic() - t0
    assert took < 50, f"the load took {took:.1f} s: the window would have moved"
    ok = [r for _, r in results if r.status_code == 200]
    limited = [(i, r) for i, r in results if r.status_code == 429]
    print(f"alice, rpm {rpm}, 120 requests over A, B, C from 4 clients in {took:.1f} s: {len(ok)} admitted, {len(limited)} refused")
    assert len(ok) + len(limited) == 120, [r.status_code for _, r in results if r.status_code not in (200, 429)]
    # Held to the limit mesh-wide within 5 %, and the limit is used.
    assert rpm * 0.95 <= len(ok) <= rpm * 1.05, len(ok)
    # Every node refused some: the peers' counts reached each of them.
    assert {r.headers["x-meshd-node"] for _, r in limited} == {"A", "B", "C"}
    for i, r in limited:
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit-requests"] == str(rpm)
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        body = r.json()
        if i % 2 == 0:
            assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests", body
        else:
            assert isinstance(body["error"], str) and "requests per minute" in body["error"], body
    # Admitted answers tell what remains.
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
    assert remaining[0] <= 1 and remaining[-1] >= rpm - 4, remaining

    # Another key is not held by alice's use, on any node.
    for n in nodes:
        assert _ask(n, "bob", 0).status_code == 200

    # The real clients read the refusal: openai raises RateLimitError, ollama a 429 ResponseError.
    oc = openai.OpenAI(base_url=f"{nodes[2].url}/v1", api_key="alice-key-0001", max_retries=0, timeout=20,
                       http_client=httpx.Client(trust_env=False, timeout=20))
    with pytest.raises(openai.RateLimitError) as e:
        oc.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert e.value.response.headers["x-ratelimit-limit-requests"] == str(rpm)
    assert e.value.code == "rate_limit_exceeded"
    ol = ollama.Client(host=nodes[1].url, timeout=20, trust_env=False, headers=H["alice"])
    with pytest.raises(ollama.ResponseError) as oe:
        ol.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2})
    assert oe.value.status_code == 429 and "requests per minute" in oe.value.error

    # Shown on every node: meshctl status and usage, and /metrics.
    for n in nodes:
        st = json.loads(n.meshctl("status", "--json").stdout)
        alice = next(l for l in st["limits"] if l["key"] == "alice")
        assert alice["rpm"] == rpm and rpm * 0.95 <= alice["requests"] <= rpm * 1.05, alice
        assert sum(alice["refused"].values()) >= 1, alice
        assert "limit:    key alice:" in n.meshctl("status").stdout
        samples = dict(line.rsplit(" ", 1) for line in n.get("/metrics", headers=H["bob"]).text.splitlines() if line.startswith("meshd_key_"))
        assert float(samples['meshd_key_limit{key="alice",kind="rpm"}']) == rpm
        assert float(samples['meshd_key_requests_window{key="alice"}']) >= rpm * 0.95
        assert float(samples['meshd_key_refused_total{key="alice",limit="requests"}']) >= 1
    usage = nodes[0].meshctl("usage", "--by", "key")
    assert usage.returncode == 0, usage.stderr
    assert "limits now" in usage.stdout and "key alice:" in usage.stdout, usage.stdout


def test_concurrency_tokens_and_models(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    # 20 tokens/s: a 40-token answer streams for 2 s.
    a, b, c = _mesh(mpool, mbins, secret, {"per_key": {"alice": {"concurrency": 2}, "carol": {"tpm": 400},
                                                        "dave": {"models": [MODEL]}}}, "--gen-tps", 20)
    # Two of alice's streams in flight, through A and B; the third, through C, is refused mesh-wide.
    opened: list[httpx.Response] = []
    clients = [httpx.Client(base_url=n.url, timeout=30, trust_env=False) for n in (a, b)]
    try:
        for cl in clients:
            r = cl.send(cl.build_request("POST", "/v1/chat/completions", json=chat(MODEL, stream=True, max_tokens=40), headers=H["alice"]),
                        stream=True)
            assert r.status_code == 200
            opened.append(r)
        time.sleep(0.3)
        third = c.post("/api/chat", json=ollama_chat(MODEL, num_predict=2), headers=H["alice"])
        assert third.status_code == 429, third.text
        assert "Concurrency limit" in third.json()["error"] and third.headers["retry-after"] == "1"
        for r in opened:
            r.read()
            r.close()
    finally:
        for cl in clients:
            cl.close()
    # Once they ended, alice is served again (the release reached C).
    wait_until(lambda: c.post("/api/chat", json=ollama_chat(MODEL, num_predict=2), headers=H["alice"]).status_code == 200, 5,
               interval=0.2, what="alice admitted on C after her streams ended")

    # carol: 400 tokens a minute, counted from the answers' usage where they were made (forwarded from C: on A or B).
    used = 0
    refused = None
    for i in range(40):
        r = c.post("/v1/chat/completions", json=chat(MODEL, max_tokens=30, content="count " * 20), headers=H["carol"])
        if r.status_code == 429:
            refused = r
            break
        assert r.status_code == 200, r.text
        u = r.json()["usage"]
        used += u["prompt_tokens"] + u["completion_tokens"]
    assert refused is not None, f"carol used {used} tokens and was never refused"
    assert 400 - 60 <= used <= 400 + 60, used
    err = refused.json()["error"]
    assert err["type"] == "tokens" and "tokens per minute" in err["message"], err
    assert refused.headers["x-ratelimit-limit-tokens"] == "400" and int(refused.headers["retry-after"]) >= 1
    # A prompt larger than the whole budget is told so, without a time to wait.
    big = a.post("/v1/chat/completions", json=chat(MODEL, content="word " * 2000), headers=H["carol"])
    assert big.status_code == 429 and "Request too large" in big.json()["error"]["message"] and "retry-after" not in big.headers

    # dave may use MODEL only: 403 naming the field, in both dialects.
    r = b.post("/v1/chat/completions", json=chat("other-model"), headers=H["dave"])
    assert r.status_code == 403 and r.json()["error"]["param"] == "model" and r.json()["error"]["code"] == "model_not_allowed", r.text
    r = b.post("/api/chat", json=ollama_chat("other-model"), headers=H["dave"])
    assert r.status_code == 403 and "may not use model 'other-model'" in r.json()["error"]
    assert b.post("/v1/chat/completions", json=chat(MODEL, max_tokens=2), headers=H["dave"]).status_code == 200


def test_limits_reload(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    sim = start_sim(mpool, mbins, "--models", MODEL, "--gen-tps", 0)
    a = MeshNode(mpool, mbins, "A", secret=None, engines=[sim_entry(sim)], start=False, extra={"limits": {"per_key": {"alice": {"rpm": 2}}}})
    a.config["http"]["api_keys"] = KEYS
    a.config_path.write_text(render_config(a.config))
    a.start()
    assert [_ask(a, "alice", 1).status_code for _ in range(3)] == [200, 200, 429]
    a.config["limits"] = {"per_key": {"alice": {"rpm": 4}}}
    a.config_path.write_text(render_config(a.config))
    a.proc.signal(signal.SIGHUP)
    wait_until(lambda: "limits (" in a.log(), 10, interval=0.1, what="the reload applied limits")
    # The two counted requests stay counted: two more fit.
    assert [_ask(a, "alice", 1).status_code for _ in range(3)] == [200, 200, 429]
