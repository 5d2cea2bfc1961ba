"""Response cache (issue 16, `cache.enabled`): a deterministic request (temperature 0 or a seed) asked
again is answered by the node the client asked, with `X-Meshd-Cache: hit`, without reaching an engine,
a peer or the cloud, in either dialect, streamed or not (real openai and ollama clients), spending no
budget and recorded in usage as a hit; answers served locally, by a peer and by the cloud are all
kept; sampling requests never are; answers expire after `cache.ttl_seconds`. The key, capture and
replay rules and the store's bounds are unit-tested in ResponseCacheTests."""
from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import ollama
import openai

from cloud_helpers import PRICES, FakeCloud
from meshd_e2e import ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode, metric, sim_entry, start_sim

MSGS = [{"role": "user", "content": "what is in the cache?"}]


def test_hits_answer_in_both_dialects_without_engine_peer_or_cloud(mpool: ProcessPool, mbins: MeshBinaries, secret: Path,
                                                                    tmp_path: Path) -> None:
    cloud = FakeCloud(mpool, tmp_path / "tls")
    sim_a = start_sim(mpool, mbins, "--models", "model-a")
    sim_b = start_sim(mpool, mbins, "--models", "model-b")
    a = MeshNode(mpool, mbins, "A", secret=secret, engines=[sim_entry(sim_a)],
                 extra={"cache": {"enabled": True, "ttl_seconds": 2},
                        "cloud": {"providers": [p for p in cloud.providers(tmp_path / "k") if p["name"] == "openai"], "prices": PRICES,
                                  "prices_file": str(tmp_path / "none.yaml")},
                        "budget": {"daily_usd": 1.0}})
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[sim_entry(sim_b)], peers=[a])
    a.wait_sees({"A": "up", "B": "up"}, timeout=15, models={"B": ["model-b"]})
    oa = openai.OpenAI(base_url=f"{a.url}/v1", api_key="unused", max_retries=0, timeout=20,
                       http_client=httpx.Client(trust_env=False, timeout=20))
    ol = ollama.Client(host=a.url, timeout=20, trust_env=False)

    def served(model: str) -> int:
        if model == "model-a":
            return sim_a.stats()["requests"]
        if model == "model-b":
            return sim_b.stats()["requests"]
        return cloud.stats()["total"]

    for model in ("model-a", "model-b", "gpt-4o-mini"):
        before = served(model)
        # Miss: served (locally, by B, by the cloud) and kept.
        first = oa.chat.completions.with_raw_response.create(model=model, messages=MSGS, temperature=0, max_tokens=6)
        assert first.headers["x-meshd-cache"] == "miss", first.headers
        want = first.parse()
        assert served(model) == before + 1
        # Hit, same dialect, not streamed: the same answer and usage, from A, nothing served.
        again = oa.chat.completions.with_raw_response.create(model=model, messages=MSGS, temperature=0, max_tokens=6)
        assert again.headers["x-meshd-cache"] == "hit" and again.headers["x-meshd-node"] == "A", again.headers
        got = again.parse()
        assert got.choices[0].message.content == want.choices[0].message.content and got.choices[0].finish_reason == want.choices[0].finish_reason
        assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (want.usage.prompt_tokens, want.usage.completion_tokens)
        # Hit, streamed, with usage.
        text, usage = "", None
        for ch in oa.chat.completions.create(model=model, messages=MSGS, temperature=0, max_tokens=6, stream=True,
                                             stream_options={"include_usage": True}):
            text += "".join(c.delta.content or "" for c in ch.choices)
            usage = ch.usage or usage
        assert text == want.choices[0].message.content and usage.completion_tokens == want.usage.completion_tokens
        # Hit in Ollama's dialect (the same request, asked the Ollama way), streamed and not.
        r = ol.chat(model=model, messages=MSGS, options={"temperature": 0, "num_predict": 6})
        assert r.message.content == want.choices[0].message.content and r.eval_count == want.usage.completion_tokens
        assert r.prompt_eval_count == want.usage.prompt_tokens and r.done_reason == want.choices[0].finish_reason
        parts = list(ol.chat(model=model, messages=MSGS, options={"temperature": 0, "num_predict": 6}, stream=True))
        assert "".join(p.message.content for p in parts) == want.choices[0].message.content and parts[-1].done
        assert served(model) == before + 1, f"{model} was served again"

    # The cloud's hits spent nothing: the ledger holds the one miss.
    budget = json.loads(a.meshctl("budget", "--json").stdout)
    keys = json.loads(a.meshctl("usage", "--by", "engine", "--json").stdout)
    engines = {g["name"]: g for g in keys["groups"]}
    assert engines["cache"]["requests"] == 12 and engines["cache"]["cache_hits"] == 12 and engines["cache"]["cost_micros"] == 0, engines
    assert abs(engines["openai"]["cost_micros"] / 1e6 - budget["daily"]["spent_usd"]) < 1e-6 and engines["openai"]["requests"] == 1
    assert metric(a, "meshd_response_cache_hits_total") == 12 and metric(a, "meshd_response_cache_entries") == 3

    # Generate and completions share their own entries; a sampling request is never cached.
    g1 = ol.generate(model="model-a", prompt="once upon", options={"seed": 3, "num_predict": 4})
    c1 = oa.completions.with_raw_response.create(model="model-a", prompt="once upon", seed=3, max_tokens=4)
    assert c1.headers["x-meshd-cache"] == "hit" and c1.parse().choices[0].text == g1.response
    before = served("model-a")
    for _ in range(2):
        r = a.post("/v1/chat/completions", json={"model": "model-a", "messages": MSGS, "temperature": 0.7, "max_tokens": 3})
        assert r.status_code == 200 and "x-meshd-cache" not in r.headers
    assert served("model-a") == before + 2

    # After the TTL (2 s) the answer is served again.
    time.sleep(2.2)
    r = a.post("/v1/chat/completions", json={"model": "model-a", "messages": MSGS, "temperature": 0, "max_tokens": 6})
    assert r.headers["x-meshd-cache"] == "miss", r.headers
    wait_until(lambda: a.post("/v1/chat/completions", json={"model": "model-a", "messages": MSGS, "temperature": 0,
                                                            "max_tokens": 6}).headers.get("x-meshd-cache") == "hit", 5,
               what="the new answer to be kept")
