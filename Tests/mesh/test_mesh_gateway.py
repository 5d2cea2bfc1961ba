"""Cloud escalation through a gateway (issue 5), against a fake cloud over real TLS (a test CA that
libcurl is told to trust through ca_file): the OpenAI, Anthropic, Gemini and Bedrock (SigV4-checked)
dialects, streamed and not, through the gateway itself and through a node without providers (the real openai and ollama
clients); escalation only when the mesh cannot serve; local-only models; the budget cap with a 429
that names it; a provider that rate-limits; 200 concurrent requests against a small cap."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from cloud_helpers import API_KEY, PRICES, FakeCloud
from meshd_e2e import ProcessPool
from mesh_helpers import MeshBinaries, MeshNode, chat, sim_entry, start_sim


class Gatewayed:
    def __init__(self, pool: ProcessPool, bins: MeshBinaries, secret: Path, tmp: Path) -> None:
        self.cloud = FakeCloud(pool, tmp / "tls")
        self.sim = start_sim(pool, bins, "--models", "local-m")
        cloud_cfg = {"providers": self.cloud.providers(tmp / "cloud.key"), "prices": PRICES,
                     "prices_file": str(tmp / "no-prices.yaml"), "local_only_models": ["private-gpt"],
                     "escalate_after_ms": 2000}
        budget = {"daily_usd": 1.0, "monthly_usd": 10.0}
        self.g = MeshNode(pool, bins, "G", secret=secret, engines=[sim_entry(self.sim)],
                          extra={"cloud": cloud_cfg, "budget": budget})
        self.a = MeshNode(pool, bins, "A", secret=secret, peers=[self.g])
        self.a.wait_sees({"A": "up", "G": "up"}, models={"G": ["local-m"]})

    def budget(self) -> dict[str, Any]:
        res = self.g.meshctl("budget", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout)


@pytest.fixture(scope="module")
def gw(module_mpool: ProcessPool, mbins: MeshBinaries, module_secret: Path, tmp_path_factory: pytest.TempPathFactory) -> Gatewayed:
    return Gatewayed(module_mpool, mbins, module_secret, tmp_path_factory.mktemp("gateway"))


def test_each_dialect_through_the_gateway(gw: Gatewayed) -> None:
    before = gw.budget()["daily"]["spent_usd"]
    for model, provider, path in (("gpt-4o-mini", "openai", "/v1/chat/completions"), ("claude-haiku", "claude", "/v1/messages"),
                                  ("llama-3.3-70b-versatile", "groq", "/openai/v1/chat/completions"),
                                  ("gemini-flash", "gemini", "/v1beta/models/gemini-flash:generateContent")):
        r = gw.g.post("/v1/chat/completions", json=chat(model, max_tokens=3))
        assert r.status_code == 200, (model, r.text)
        assert r.headers["x-meshd-provider"] == provider and r.headers["x-meshd-node"] == "G"
        assert "escalated to" in r.headers["x-meshd-route"]
        body = r.json()
        assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2" and body["usage"]["completion_tokens"] == 3
        assert gw.cloud.stats()["by_path"].get(path, 0) >= 1
    # Streamed, to the Ollama dialect, through Gemini's SSE.
    with gw.g.client() as c, c.stream("POST", "/api/chat", json={"model": "gemini-flash", "messages": [{"role": "user", "content": "hi"}],
                                                                 "options": {"num_predict": 4}}) as r:
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert "".join(x["message"]["content"] for x in lines) == "tok0 tok1 tok2 tok3"
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 4
    after = gw.budget()
    assert after["daily"]["spent_usd"] > before and after["daily"]["reserved_usd"] == 0
    assert after["in_flight"] == 0


def test_local_models_stay_local_and_local_only_never_leaves(gw: Gatewayed) -> None:
    total = gw.cloud.stats()["total"]
    # Every node lists the gateway's cloud models with the mesh's own (Open WebUI shows them), never a local-only one.
    for n in (gw.a, gw.g):
        tags = {m["name"] for m in n.get("/api/tags").json()["models"]}
        ids = {m["id"] for m in n.get("/v1/models").json()["data"]}
        for listed in (tags, ids):
            assert {"gpt-4o-mini", "claude-haiku", "gemini-flash", "local-m"} <= listed and "private-gpt" not in listed, (n.name, listed)
        assert not {m["name"] for m in n.get("/api/ps").json()["models"]} & {"gpt-4o-mini", "claude-haiku", "gemini-flash"}
    r = gw.a.post("/v1/chat/completions", json=chat("local-m"))
    assert r.status_code == 200 and r.headers["x-meshd-node"] == "G" and "x-meshd-provider" not in r.headers
    # The gateway does not advertise its local-only models, so A has nowhere to send it.
    r = gw.a.post("/v1/chat/completions", json=chat("private-gpt"))
    assert r.status_code == 404 and "no healthy cloud provider" in r.json()["error"]["message"], r.text
    r = gw.g.post("/v1/chat/completions", json=chat("private-gpt"))
    assert r.status_code == 404 and "local-only" in r.json()["error"]["message"], r.text
    assert gw.cloud.stats()["total"] == total


def test_real_clients_through_a_node_without_providers(gw: Gatewayed) -> None:
    client = openai.OpenAI(base_url=f"{gw.a.url}/v1", api_key="unused", max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert raw.headers["x-meshd-via"] == "A" and raw.headers["x-meshd-node"] == "G" and raw.headers["x-meshd-provider"] == "openai"
    assert raw.parse().choices[0].message.content == "tok0 tok1"
    chunks = list(client.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    oc = ollama.Client(host=gw.a.url, timeout=30)
    resp = oc.chat(model="gemini-flash", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2})
    assert resp["message"]["content"] == "tok0 tok1"


def test_azure_and_route_explanations_and_metrics(gw: Gatewayed) -> None:
    r = gw.a.post("/v1/chat/completions", json=chat("azure-gpt", max_tokens=2))
    assert r.status_code == 200 and r.headers["x-meshd-provider"] == "azure", r.text
    assert gw.cloud.stats()["by_path"].get("/openai/deployments/azure-gpt/chat/completions", 0) >= 1
    res = gw.a.meshctl("route", "gpt-4o-mini")
    assert res.returncode == 0 and "cloud through node G" in res.stdout and "openai (gpt-4o-mini)" in res.stdout, res.stdout
    res = gw.g.meshctl("route", "local-m")
    assert res.returncode == 0 and "engine" in res.stdout and "cloud" not in res.stdout, res.stdout
    route = json.loads(gw.g.meshctl("route", "claude-haiku", "--json").stdout)
    assert route["cloud"] is True and route["providers"] == ["claude (claude-haiku)"]
    metrics = gw.g.get("/metrics").text
    assert 'meshd_budget_spent_usd{scope="global",period="daily"}' in metrics
    assert 'meshd_cloud_provider_available{provider="claude"} 1' in metrics


def test_provider_failures_cost_nothing_or_what_was_generated(gw: Gatewayed) -> None:
    # openai answers 500 before the first byte: the next provider that serves the model (azure,
    # an OpenAI-compatible family member) answers instead, and only it is billed.
    r = gw.g.post("/v1/chat/completions", json=chat("fail-500-gpt", max_tokens=2))
    assert r.status_code == 200 and r.headers["x-meshd-provider"] == "azure", r.text
    assert "fell back to azure" in r.headers["x-meshd-route"]
    assert gw.cloud.stats()["by_path_model"].get("/v1/chat/completions fail-500-gpt", 0) >= 1
    health = {h["name"]: h for h in gw.budget()["provider_health"]}
    assert health["openai"]["consecutive_failures"] >= 1 and "500" in (health["openai"]["last_error"] or ""), health
    mid = gw.budget()["daily"]
    assert mid["reserved_usd"] == 0
    # A stream cut mid-way: the client gets what came and an error event; the bill covers it.
    with gw.g.client() as c, c.stream("POST", "/v1/chat/completions", json=chat("cut-stream-gpt", stream=True, max_tokens=8)) as r:
        text = "".join(r.iter_text())
    assert "tok0" in text and '"error"' in text and "[DONE]" not in text, text
    after = gw.budget()["daily"]
    assert after["spent_usd"] > mid["spent_usd"] and after["reserved_usd"] == 0


def test_rate_limited_provider_is_reported_and_cooled_down(gw: Gatewayed) -> None:
    r = gw.g.post("/v1/chat/completions", json=chat("fail-429-gpt"))
    assert r.status_code == 429 and r.json()["error"]["code"] == "provider_rate_limited", r.text
    health = {h["name"]: h for h in gw.budget()["provider_health"]}
    assert health["openai"]["available"] is False and health["openai"]["state"] == "open", health
    # Nothing spent for a refused request.
    assert gw.budget()["daily"]["reserved_usd"] == 0


def test_concurrent_requests_never_exceed_the_cap(module_mpool: ProcessPool, mbins: MeshBinaries, module_secret: Path,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("gw-cap")
    cloud = FakeCloud(module_mpool, tmp / "tls")
    providers = [p for p in cloud.providers(tmp / "k") if p["name"] == "claude"]
    # Worst case per request: (prompt estimate ≤ ~100 tokens × $0.80 + 8 × $4.00) / 1M ≈ $0.0001; the cap fits about 20.
    cap = 0.002
    node = MeshNode(module_mpool, mbins, "C", secret=module_secret,
                    extra={"cloud": {"providers": providers, "prices": PRICES, "prices_file": str(tmp / "none.yaml")},
                           "budget": {"daily_usd": cap}})
    body = chat("claude-haiku", max_tokens=8)
    n = 200

    def one(_: int) -> int:
        with httpx.Client(base_url=node.url, timeout=60, trust_env=False) as c:
            return c.post("/v1/chat/completions", json=body).status_code

    with ThreadPoolExecutor(max_workers=40) as ex:
        codes = list(ex.map(one, range(n)))
    ok, over = codes.count(200), codes.count(429)
    b = json.loads(node.meshctl("budget", "--json").stdout)
    spent, reserved = b["daily"]["spent_usd"], b["daily"]["reserved_usd"]
    print(f"\n[gateway] {n} concurrent requests, cap ${cap}: {ok} served, {over} refused with 429, spent ${spent:.6f}, reserved ${reserved}")
    assert ok + over == n, codes
    assert ok >= 1 and over >= 1
    assert spent <= cap and reserved == 0
    assert cloud.stats()["by_path"].get("/v1/messages", 0) == ok
    r = node.post("/v1/chat/completions", json=body)
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded" and "daily budget" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) >= 1


def test_kill9_of_the_gateway_loses_nothing(module_mpool: ProcessPool, mbins: MeshBinaries, module_secret: Path,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    import threading

    from meshd_e2e import wait_until
    tmp = tmp_path_factory.mktemp("gw-kill")
    cloud = FakeCloud(module_mpool, tmp / "tls")
    providers = [p for p in cloud.providers(tmp / "k") if p["name"] == "openai"]
    node = MeshNode(module_mpool, mbins, "K", secret=module_secret,
                    extra={"cloud": {"providers": providers, "prices": PRICES, "prices_file": str(tmp / "none.yaml")},
                           "budget": {"daily_usd": 5.0}})

    def budget() -> dict[str, Any]:
        return json.loads(node.meshctl("budget", "--json").stdout)

    assert node.post("/v1/chat/completions", json=chat("gpt-4o-mini", max_tokens=4)).status_code == 200
    settled = budget()["daily"]["spent_usd"]
    assert settled > 0

    def stream() -> None:
        try:
            with httpx.Client(base_url=node.url, timeout=30, trust_env=False) as c:
                with c.stream("POST", "/v1/chat/completions", json=chat("slow-gpt", stream=True, max_tokens=8)) as r:
                    for _ in r.iter_bytes():
                        pass
        except httpx.HTTPError:
            pass  # the gateway dies under it

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: budget()["in_flight"] == 3, 10, interval=0.05, what="three cloud streams in flight")
    reserved = budget()["daily"]["reserved_usd"]
    assert reserved > 0
    node.kill9()
    for t in threads:
        t.join(30)
    node.start()
    after = budget()
    print(f"\n[gateway] kill -9 with 3 streams in flight: ${settled:.6f} settled before, ${reserved:.6f} reserved; after restart "
          f"spent ${after['daily']['spent_usd']:.6f}, reserved ${after['daily']['reserved_usd']}")
    # Every reservation without a settlement counts as spent in full; nothing earlier is lost.
    assert after["daily"]["reserved_usd"] == 0 and after["in_flight"] == 0
    assert after["daily"]["spent_usd"] == pytest.approx(settled + reserved, abs=1e-6)
    assert "counted as spent" in node.log()


def test_busy_mesh_escalates_and_per_key_caps_and_alert_webhook(module_mpool: ProcessPool, mbins: MeshBinaries, module_secret: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from meshd_e2e import wait_until
    tmp = tmp_path_factory.mktemp("gw-busy")
    cloud = FakeCloud(module_mpool, tmp / "tls")
    alerts: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            alerts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    sim = start_sim(module_mpool, mbins, "--models", "busy-m", "--slots", 1, "--gen-tps", 20)
    prices = {**PRICES, "busy-m": {"input": 0.15, "output": 0.60, "max_output_tokens": 64}}
    node = MeshNode(module_mpool, mbins, "Q", secret=module_secret, engines=[sim_entry(sim)],
                    extra={"http": {"listen": "127.0.0.1:0", "api_keys": ["ci:ci-key-123", "dev:dev-key-456"]},
                           "cloud": {"providers": [p for p in cloud.providers(tmp / "k") if p["name"] == "openai"], "prices": prices,
                                     "prices_file": str(tmp / "none.yaml"), "escalate_after_ms": 100},
                           "budget": {"daily_usd": 1.0, "alert_at": 0.5, "webhook": f"http://127.0.0.1:{hook.server_port}/alert",
                                      "per_key": {"ci": {"daily_usd": 0.00006}}}}, start=False)
    node.config["http"]["listen"] = f"127.0.0.1:{node.http_port}"
    from meshd_e2e import render_config
    node.config_path.write_text(render_config(node.config))
    node.start()
    dev = {"Authorization": "Bearer dev-key-456"}
    ci = {"Authorization": "Bearer ci-key-123"}
    try:
        # Idle local engine: served locally (20 tokens at 20/s: the engine's measured service time is ~1 s).
        r = node.post("/v1/chat/completions", json=chat("busy-m", max_tokens=20), headers=dev)
        assert r.status_code == 200 and "x-meshd-provider" not in r.headers, r.headers
        # (Until the next engine poll shows it idle, the node would still see it busy and escalate.)
        wait_until(lambda: all(not e["in_flight"] and not e["running"] for e in node.admin("GET", "/v1/engines").json()), 5,
                   what="the node to see its engine idle")
        # Its only slot taken by a long stream: the expected wait exceeds 100 ms, so the cloud serves.
        done = threading.Event()
        occupiers: list[str] = []  # the route each long stream took (for a failure's message)

        def occupy() -> None:
            with httpx.Client(base_url=node.url, timeout=30, trust_env=False) as c:
                with c.stream("POST", "/v1/chat/completions", json=chat("busy-m", stream=True, max_tokens=200), headers=dev) as s:
                    occupiers.append(s.headers.get("x-meshd-route", ""))
                    for _ in s.iter_lines():
                        if done.is_set():
                            break

        t = threading.Thread(target=occupy)
        t.start()
        try:
            wait_until(lambda: sim.stats()["in_flight"] == 1, 5, what="the local engine busy")
            r = node.post("/v1/chat/completions", json=chat("busy-m", max_tokens=2), headers=dev)
            assert r.status_code == 200 and r.headers["x-meshd-provider"] == "openai", r.headers
            assert "would wait over 100 ms" in r.headers["x-meshd-route"]
        finally:
            done.set()
            t.join(30)
        # The ci key has a tiny cap of its own ($0.00006; one request of 64 tokens costs ~$0.000039, its
        # worst case ~$0.000048): its second cloud request is refused, naming the key.
        codes = [node.post("/v1/chat/completions", json=chat("gpt-4o-mini", max_tokens=64), headers=ci) for _ in range(3)]
        refused = [r for r in codes if r.status_code == 429]
        assert refused and "API key 'ci'" in refused[0].json()["error"]["message"], [r.text for r in codes]
        assert node.post("/v1/chat/completions", json=chat("gpt-4o-mini", max_tokens=8), headers=dev).status_code == 200
        keys = json.loads(node.meshctl("budget", "--json").stdout)["keys"]
        assert [r.status_code for r in codes] == [200, 429, 429]
        assert keys["ci"]["daily"]["limit_usd"] == 0.00006 and 0 < keys["ci"]["daily"]["spent_usd"] <= 0.00006
        # Over its cap, a request the mesh can serve (within timeouts.first_byte_ms) queues there
        # instead of failing: the busy local engine answers it once free.
        # (The first long stream must be over, as the engine and the node see it, or the next one
        # would be escalated as the first probe was.)
        wait_until(lambda: sim.stats()["in_flight"] == 0 and all(
            not e["in_flight"] and not e["running"] for e in node.admin("GET", "/v1/engines").json()), 10,
            what="the engine idle again after the first long stream")
        done.clear()
        t = threading.Thread(target=occupy)
        t.start()
        queued: dict[str, Any] = {}

        def over_budget() -> None:
            queued["r"] = node.post("/v1/chat/completions", json=chat("busy-m", max_tokens=64), headers=ci, timeout=30)

        try:
            wait_until(lambda: sim.stats()["in_flight"] == 1, 5,
                       what=lambda: f"the local engine busy again (routes of the long streams: {occupiers})")
            q = threading.Thread(target=over_budget)
            q.start()
            time.sleep(0.5)
        finally:
            done.set()
            t.join(30)
        q.join(30)
        assert queued["r"].status_code == 200 and "x-meshd-provider" not in queued["r"].headers, queued["r"].headers
        assert "queueing in the mesh instead" in node.log()
        # The ci cap crossed 50 %: the webhook heard of it.
        wait_until(lambda: any(a.get("scope") == "API key 'ci'" for a in alerts), 5, what="a budget alert on the webhook")
    finally:
        hook.shutdown()


def test_bedrock_through_the_gateway(module_mpool: ProcessPool, mbins: MeshBinaries, module_secret: Path,
                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """Bedrock (Converse, ConverseStream in event-stream framing) through a gateway, the fake cloud
    checking every SigV4 signature; the ledger is charged from Bedrock's usage; a wrong secret key
    gets the fake's signature error, costs nothing, and no key reaches the log."""
    tmp = tmp_path_factory.mktemp("gw-bedrock")
    cloud = FakeCloud(module_mpool, tmp / "tls")
    model = "amazon.nova-lite-v1:0"
    # Prices high enough that the charge shows which token counts it came from ($0.001 per prompt
    # token, $0.002 per completion token).
    prices = {f"bedrock/{model}": {"input": 1000.0, "output": 2000.0, "max_output_tokens": 64},
              "bedrock-wrong/nova-wrong": {"input": 1000.0, "output": 2000.0, "max_output_tokens": 64}}
    wrong_secret = "wrong-SECRET-access-key-42"
    providers = [cloud.bedrock_provider("bedrock", tmp / "aws.key"),
                 cloud.bedrock_provider("bedrock-wrong", tmp / "wrong.key", secret=wrong_secret)]
    node = MeshNode(module_mpool, mbins, "B", secret=module_secret,
                    extra={"cloud": {"providers": providers, "prices": prices, "prices_file": str(tmp / "none.yaml")},
                           "budget": {"daily_usd": 100.0}})

    def spent() -> float:
        b = json.loads(node.meshctl("budget", "--json").stdout)
        assert b["daily"]["reserved_usd"] == 0 and b["in_flight"] == 0, b
        return float(b["daily"]["spent_usd"])

    def charged(before: float, prompt: int, completion: int) -> None:
        assert spent() - before == pytest.approx(prompt * 0.001 + completion * 0.002, abs=1e-6)

    # Not streamed, OpenAI dialect: Converse. The fake counts "hello" as 1 prompt token.
    before = spent()
    r = node.post("/v1/chat/completions", json=chat(model, max_tokens=3))
    assert r.status_code == 200 and r.headers["x-meshd-provider"] == "bedrock", r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == 1 and body["usage"]["completion_tokens"] == 3
    charged(before, 1, 3)
    # Streamed, OpenAI dialect with usage: ConverseStream.
    before = spent()
    with node.client() as c, c.stream("POST", "/v1/chat/completions",
                                      json={**chat(model, stream=True, max_tokens=5), "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["x-meshd-provider"] == "bedrock"
        events = [x[len("data: "):] for x in r.iter_lines() if x.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"]) == "tok0 tok1 tok2 tok3 tok4"
    assert chunks[-1]["usage"]["completion_tokens"] == 5 and chunks[-1]["usage"]["prompt_tokens"] == 1
    charged(before, 1, 5)
    # Streamed to the Ollama dialect.
    before = spent()
    with node.client() as c, c.stream("POST", "/api/chat", json={"model": model, "messages": [{"role": "user", "content": "hello there"}],
                                                                 "options": {"num_predict": 2}}) as r:
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert "".join(x["message"]["content"] for x in lines) == "tok0 tok1"
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 2 and lines[-1]["prompt_eval_count"] == 2
    charged(before, 2, 2)
    stats = cloud.stats()
    assert stats["by_path"].get("/model/amazon.nova-lite-v1%3A0/converse") == 1
    assert stats["by_path"].get("/model/amazon.nova-lite-v1%3A0/converse-stream") == 2 and stats["unauthorized"] == 0
    # A wrong secret access key: the fake's signature differs; the client is told why, nothing is spent.
    before = spent()
    for stream in (False, True):
        r = node.post("/v1/chat/completions", json=chat("nova-wrong", stream=stream, max_tokens=3))
        assert r.status_code == 502, r.text
        message = r.json()["error"]["message"]
        assert "bedrock-wrong answered 403: InvalidSignatureException: The request signature we calculated does not match" in message
    assert cloud.stats()["unauthorized"] == 2
    assert spent() == before
    log = node.log()
    assert "InvalidSignatureException" in log and API_KEY not in log and wrong_secret not in log
