"""Streaming behaviour with the simulated engine: chunks are relayed as they come (no buffering),
a client that goes away cancels the engine request, and an engine that dies mid-stream becomes an
error event in the client's dialect."""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import ollama
import openai
import pytest

from meshd_e2e import Meshd, SimEngine, chat_body, wait_until

MODEL = "sim-a"
ROUTES = {"openai": "/v1/chat/completions", "ollama": "/api/chat"}


def body_for(api: str, n: int) -> dict[str, Any]:
    if api == "openai":
        return chat_body(MODEL, stream=True, max_tokens=n)
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": n}}


def content_of(api: str, line: str) -> str | None:
    """The generated text in one SSE/NDJSON line (None for lines without content)."""
    if api == "openai":
        if not line.startswith("data: ") or line == "data: [DONE]":
            return None
        o = json.loads(line[6:])
        return (o["choices"][0]["delta"].get("content") or None) if o.get("choices") else None
    if not line.strip():
        return None
    return json.loads(line).get("message", {}).get("content") or None


@pytest.mark.parametrize("engine_kind", ["openai", "ollama"])
@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_no_buffering(start_sim: Callable[..., SimEngine], start_meshd: Callable[..., Meshd],
                      api: str, engine_kind: str) -> None:
    sim = start_sim("--models", MODEL, "--gen-tps", 5)
    m = start_meshd([{"kind": engine_kind, "url": sim.url}])
    stamps: list[tuple[float, str]] = []
    with m.client(timeout=15) as c:
        t0 = time.monotonic()
        with c.stream("POST", ROUTES[api], json=body_for(api, 10)) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                text = content_of(api, line)
                if text:
                    stamps.append((time.monotonic() - t0, text))
        total = time.monotonic() - t0
    assert [t for _, t in stamps] == [f"tok{i} " for i in range(10)]
    first, last = stamps[0][0], stamps[-1][0]
    assert first < 1.0, f"first token after {first:.2f}s: buffered? {stamps}"
    assert last >= 1.5, f"10 tokens at 5 tok/s cannot all arrive by {last:.2f}s"
    assert last - first >= 1.2, f"tokens arrived together: {stamps}"
    assert total < 6


@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_client_disconnect_cancels_engine_request(start_sim: Callable[..., SimEngine], start_meshd: Callable[..., Meshd],
                                                  api: str) -> None:
    sim = start_sim("--models", MODEL, "--gen-tps", 5)
    m = start_meshd([{"kind": "openai" if api == "ollama" else "ollama", "url": sim.url}])
    before = sim.stats()
    got = 0
    c = m.client(timeout=15)
    with c.stream("POST", ROUTES[api], json=body_for(api, 100)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if content_of(api, line):
                got += 1
                if got == 2:
                    break
    c.close()  # drops the connection mid-stream
    t0 = time.monotonic()
    wait_until(lambda: sim.stats()["cancelled"] > before["cancelled"], 2.5, interval=0.05,
               what="the sim engine to see the request cancelled")
    elapsed = time.monotonic() - t0
    s = sim.stats()
    assert s["in_flight"] == 0, s
    assert s["completed"] == before["completed"], "the request was not generated to the end"
    assert elapsed < 2.5
    # meshd still serves.
    assert m.get("/healthz").status_code == 200


def test_openai_client_close_cancels(start_sim: Callable[..., SimEngine], start_meshd: Callable[..., Meshd]) -> None:
    sim = start_sim("--models", MODEL, "--gen-tps", 5)
    m = start_meshd([{"kind": "openai", "url": sim.url}])
    before = sim.stats()["cancelled"]
    oa = openai.OpenAI(base_url=m.url + "/v1", api_key="unused", timeout=15, max_retries=0)
    stream = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=100, stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    oa.close()
    wait_until(lambda: sim.stats()["cancelled"] > before, 2.5, what="cancel to reach the engine")


@pytest.mark.parametrize("engine_kind", ["openai", "ollama"])
def test_mid_stream_failure_openai(start_sim: Callable[..., SimEngine], start_meshd: Callable[..., Meshd],
                                   engine_kind: str) -> None:
    sim = start_sim("--models", MODEL, "--gen-tps", 0, "--fail", "die-mid-stream", "--fail-after-tokens", 3)
    m = start_meshd([{"kind": engine_kind, "url": sim.url}])
    with m.client() as c, c.stream("POST", "/v1/chat/completions", json=chat_body(MODEL, True, 10)) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    payloads = [e[6:] for e in events]
    assert "[DONE]" not in payloads, "a failed stream must not end with [DONE]"
    err = json.loads(payloads[-1])
    assert set(err) == {"error"}, err
    assert err["error"]["message"] and err["error"]["type"] and "code" in err["error"] and "param" in err["error"]
    contents = [content_of("openai", "data: " + p) for p in payloads[:-1]]
    assert [t for t in contents if t] == ["tok0 ", "tok1 ", "tok2 "]

    oa = openai.OpenAI(base_url=m.url + "/v1", api_key="unused", timeout=15, max_retries=0)
    got: list[str] = []
    with pytest.raises(openai.APIError) as e:
        for chunk in oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=10, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert got == ["tok0 ", "tok1 ", "tok2 "]
    assert str(e.value)
    assert m.get("/healthz").status_code == 200


@pytest.mark.parametrize("engine_kind", ["openai", "ollama"])
def test_mid_stream_failure_ollama(start_sim: Callable[..., SimEngine], start_meshd: Callable[..., Meshd],
                                   engine_kind: str) -> None:
    sim = start_sim("--models", MODEL, "--gen-tps", 0, "--fail", "die-mid-stream", "--fail-after-tokens", 3)
    m = start_meshd([{"kind": engine_kind, "url": sim.url}])
    with m.client() as c, c.stream("POST", "/api/chat", json=body_for("ollama", 10)) as r:
        assert r.status_code == 200
        lines = [json.loads(x) for x in r.iter_lines() if x.strip()]
    last = lines[-1]
    assert set(last) == {"error"} and isinstance(last["error"], str) and last["error"], last
    assert not any(x.get("done") for x in lines[:-1]), "no done line before the error"
    assert "".join(x["message"]["content"] for x in lines[:-1]) == "tok0 tok1 tok2 "

    ol = ollama.Client(host=m.url, timeout=15, trust_env=False)
    got = []
    with pytest.raises(ollama.ResponseError):
        for part in ol.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 10},
                            stream=True):
            got.append(part.message.content)
    assert "".join(got) == "tok0 tok1 tok2 "
