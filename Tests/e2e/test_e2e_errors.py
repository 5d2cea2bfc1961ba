"""Bad input and engine failures: every error has the right status and the client dialect's
shape (OpenAI `{"error":{message,type,param,code}}` on /v1, Ollama `{"error":"..."}` on /api),
and meshd keeps serving afterwards."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx
import openai
import pytest

from meshd_e2e import Binaries, Meshd, ProcessPool, SimEngine, chat_body, free_port, wait_until

MODEL = "sim-a"
HANG_MODEL = "hang-a"
MAX_BODY = 4096


@dataclass
class Setup:
    meshd: Meshd
    sim: SimEngine
    hang: SimEngine


@pytest.fixture(scope="module")
def setup(module_pool: ProcessPool, bins: Binaries) -> Setup:
    sim = SimEngine(module_pool, bins.sim_bin(), "--models", f"{MODEL},sim-b", "--loaded", MODEL, "--gen-tps", "0")
    hang = SimEngine(module_pool, bins.sim_bin(), "--models", HANG_MODEL, "--fail", "hang")
    m = Meshd(module_pool, bins.meshd_bin(), [{"kind": "openai", "url": sim.url}, {"kind": "ollama", "url": hang.url}],
              http={"max_body_bytes": MAX_BODY}, timeouts={"first_byte_ms": 500}, name="e2e-errors")
    wait_until(lambda: all(e["healthy"] for e in m.admin("/v1/engines").json()), 10, what="both engines healthy")
    return Setup(m, sim, hang)


def openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    return err


def ollama_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def post_raw(m: Meshd, path: str, content: bytes) -> httpx.Response:
    return m.post(path, content=content, headers={"content-type": "application/json"})


def test_malformed_json(setup: Setup) -> None:
    m = setup.meshd
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        err = openai_error(post_raw(m, path, b'{"model": "sim-a", "messages": [}'), 400)
        assert err["type"] == "invalid_request_error"
        assert err["code"] == "invalid_json"
        assert err["param"] is None
    for path in ("/api/chat", "/api/generate", "/api/embed", "/api/show"):
        ollama_error(post_raw(m, path, b"{not json"), 400)
    # Valid JSON that is not an object.
    openai_error(post_raw(m, "/v1/chat/completions", b"[1, 2]"), 400)


def test_missing_and_invalid_fields(setup: Setup) -> None:
    m = setup.meshd
    err = openai_error(m.post("/v1/chat/completions", json={"model": MODEL}), 400)
    assert err["param"] == "messages"
    assert "messages" in err["message"]
    err = openai_error(m.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}), 400)
    assert err["param"] == "model"
    err = openai_error(m.post("/v1/chat/completions", json=chat_body(MODEL, False, temperature=9)), 400)
    assert err["param"] == "temperature"
    assert "messages" in ollama_error(m.post("/api/chat", json={"model": MODEL, "messages": "hi"}), 400)
    # Through the official client: a BadRequestError carrying the parsed body.
    oa = openai.OpenAI(base_url=m.url + "/v1", api_key="unused", timeout=10, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model=MODEL, messages=[])
    assert e.value.status_code == 400 and e.value.param == "messages"


def test_unknown_model(setup: Setup) -> None:
    m = setup.meshd
    err = openai_error(m.post("/v1/chat/completions", json=chat_body("no-such-model", False)), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    for name in ("no-such-model", MODEL, "sim-b", HANG_MODEL):
        assert name in err["message"], err["message"]
    msg = ollama_error(m.post("/api/generate", json={"model": "no-such-model", "prompt": "x"}), 404)
    assert MODEL in msg and "sim-b" in msg
    openai_error(m.get("/v1/models/no-such-model"), 404)
    oa = openai.OpenAI(base_url=m.url + "/v1", api_key="unused", timeout=10, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])


def test_body_too_large(setup: Setup) -> None:
    m = setup.meshd
    big = chat_body(MODEL, False, content="x" * (MAX_BODY * 2))
    err = openai_error(m.post("/v1/chat/completions", json=big), 413)
    assert str(MAX_BODY) in err["message"]
    ollama_error(m.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "x" * (MAX_BODY * 2)}]}), 413)
    # Just under the limit is fine.
    ok = chat_body(MODEL, False, max_tokens=2, content="x" * (MAX_BODY - 200))
    assert m.post("/v1/chat/completions", json=ok).status_code == 200


def test_engine_timeout_is_504(setup: Setup) -> None:
    m = setup.meshd
    t0 = time.monotonic()
    err = openai_error(m.post("/v1/chat/completions", json=chat_body(HANG_MODEL, False, 5)), 504)
    assert err["code"] == "engine_timeout"
    assert time.monotonic() - t0 < 5
    # Streamed: the engine never sends headers, so the client gets a plain 504 before any byte.
    with m.client() as c, c.stream("POST", "/v1/chat/completions", json=chat_body(HANG_MODEL, True, 5)) as r:
        r.read()
        openai_error(r, 504)
    ollama_error(m.post("/api/chat", json={"model": HANG_MODEL, "messages": [{"role": "user", "content": "x"}]}), 504)


def test_wrong_method_and_unknown_path(setup: Setup) -> None:
    m = setup.meshd
    r = m.get("/v1/chat/completions")
    err = openai_error(r, 405)
    assert "POST" in r.headers["allow"]
    assert err["code"] == "method_not_allowed"
    r = m.post("/v1/models", json={})
    openai_error(r, 405)
    assert "GET" in r.headers["allow"]
    ollama_error(m.get("/api/chat"), 405)
    openai_error(m.get("/v1/no/such/path"), 404)
    ollama_error(m.post("/api/nothing-here", json={}), 404)


def test_still_serving_after_errors(setup: Setup) -> None:
    m = setup.meshd
    assert m.proc.alive(), m.fail("meshd died")
    assert m.get("/healthz").status_code == 200
    assert m.get("/readyz").status_code == 200
    oa = openai.OpenAI(base_url=m.url + "/v1", api_key="unused", timeout=10, max_retries=0)
    r = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert r.choices[0].message.content == "tok0 tok1 "
    # The hanging engine is still considered healthy (a timeout is not a connection failure).
    assert all(e["healthy"] for e in m.admin("/v1/engines").json())


def test_no_healthy_engine_is_503(start_meshd: Callable[..., Meshd]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    m = start_meshd([{"kind": "openai", "url": dead}], expect_ready=False)
    r = m.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "not ready"
    err = openai_error(m.post("/v1/chat/completions", json=chat_body(MODEL, False)), 503)
    assert err["type"] == "server_error" and err["code"] == "engine_unavailable"
    ollama_error(m.post("/api/generate", json={"model": MODEL, "prompt": "x"}), 503)
    assert m.proc.alive() and m.get("/healthz").status_code == 200
