"""Cross-dialect translation with the simulated engine: an Ollama-dialect engine (`kind: ollama`)
driven by OpenAI clients, and an OpenAI-dialect engine (`kind: openai`) driven by Ollama clients.
Exact shapes are checked on the raw wire (httpx) as well as through the official clients.

The sim engine counts prompt tokens as words and emits `tokN ` per generated token."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from meshd_e2e import Binaries, Meshd, ProcessPool, SimEngine, wait_until

OL_MODEL = "ol-small"   # served by the Ollama-dialect sim
OA_MODEL = "oa-small"   # served by the OpenAI-dialect sim
PROMPT = "one two three"  # 3 prompt tokens for the sim


@dataclass
class Setup:
    meshd: Meshd
    ol_sim: SimEngine
    oa_sim: SimEngine

    def oa(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.meshd.url + "/v1", api_key="unused", timeout=20, max_retries=0)

    def ol(self) -> ollama.Client:
        return ollama.Client(host=self.meshd.url, timeout=20, trust_env=False)


@pytest.fixture(scope="module")
def setup(module_pool: ProcessPool, bins: Binaries) -> Setup:
    ol_sim = SimEngine(module_pool, bins.sim_bin(), "--models", f"{OL_MODEL},ol-large", "--loaded", OL_MODEL, "--gen-tps", "0")
    oa_sim = SimEngine(module_pool, bins.sim_bin(), "--models", f"{OA_MODEL},oa-large", "--loaded", OA_MODEL, "--gen-tps", "0")
    m = Meshd(module_pool, bins.meshd_bin(), [{"kind": "ollama", "url": ol_sim.url}, {"kind": "openai", "url": oa_sim.url}],
              name="e2e-cross")
    # Both engines healthy (readyz needs only one).
    wait_until(lambda: all(e["healthy"] for e in m.admin("/v1/engines").json()), 10, what="both engines healthy")
    return Setup(m, ol_sim, oa_sim)


def delta(before: dict, after: dict, key: str) -> int:
    return after[key] - before[key]


# MARK: OpenAI client → Ollama-dialect engine


def test_openai_chat_to_ollama_engine(setup: Setup) -> None:
    before = setup.ol_sim.stats()
    raw = setup.oa().chat.completions.with_raw_response.create(
        model=OL_MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=5)
    assert raw.headers["x-meshd-engine"].startswith("ollama")
    r = raw.parse()
    after = setup.ol_sim.stats()
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == OL_MODEL
    assert r.choices[0].index == 0
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 3 == delta(before, after, "prompt_tokens")
    assert r.usage.completion_tokens == 5 == delta(before, after, "generated_tokens")
    assert r.usage.total_tokens == 8


def test_openai_chat_stream_to_ollama_engine(setup: Setup) -> None:
    chunks = list(setup.oa().chat.completions.create(
        model=OL_MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {OL_MODEL}
    assert len({c.created for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == "tok0 tok1 tok2 tok3 "
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)


def test_openai_chat_stream_raw_sse(setup: Setup) -> None:
    body = {"model": OL_MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 3, "stream": True}
    with setup.meshd.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    # Events are `data: ...` lines each followed by a blank line; [DONE] ends the stream.
    assert raw.endswith("data: [DONE]\n\n"), raw[-200:]
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    payloads = [e[len("data: "):] for e in events]
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    objs = [json.loads(p) for p in payloads[:-1]]
    assert len({o["id"] for o in objs}) == 1
    assert objs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert objs[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in o or o["usage"] is None for o in objs), "no usage chunk unless asked"
    assert "".join(o["choices"][0]["delta"].get("content") or "" for o in objs) == "tok0 tok1 tok2 "


def test_openai_completion_to_ollama_engine(setup: Setup) -> None:
    oa = setup.oa()
    r = oa.completions.create(model=OL_MODEL, prompt=PROMPT, max_tokens=3)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == "tok0 tok1 tok2 " and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 3)

    chunks = list(oa.completions.create(model=OL_MODEL, prompt=PROMPT, max_tokens=3, stream=True))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    assert {c.object for c in chunks} == {"text_completion"}
    assert "".join(c.choices[0].text for c in chunks) == "tok0 tok1 tok2 "
    assert chunks[-1].choices[0].finish_reason == "length"


def test_openai_default_finish_reason_is_stop(setup: Setup) -> None:
    r = setup.oa().chat.completions.create(model=OL_MODEL, messages=[{"role": "user", "content": PROMPT}])
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 16  # the sim's default length


def test_openai_embeddings_and_models_via_ollama_engine(setup: Setup) -> None:
    oa = setup.oa()
    e = oa.embeddings.create(model=OL_MODEL, input=["alpha beta", "gamma"])
    assert e.object == "list" and e.model == OL_MODEL
    assert [d.index for d in e.data] == [0, 1] and all(d.object == "embedding" for d in e.data)
    assert all(len(d.embedding) == 8 for d in e.data)  # the sim's default dimension
    assert e.usage.prompt_tokens == 3
    ids = [m.id for m in oa.models.list()]
    assert {OL_MODEL, "ol-large", OA_MODEL, "oa-large"} <= set(ids)


def test_openai_embeddings_of_token_ids_need_an_openai_engine(setup: Setup) -> None:
    # Ollama embeds text only: token ids get a 400 naming the field and the engine, and reach no engine.
    before = setup.ol_sim.stats()
    with pytest.raises(openai.BadRequestError) as e:
        setup.oa().embeddings.create(model=OL_MODEL, input=[[12, 34], [56]])
    assert e.value.status_code == 400 and e.value.param == "input"
    assert "ollama" in e.value.message.lower() and OL_MODEL in e.value.message
    assert setup.ol_sim.stats() == before


# MARK: Ollama client → OpenAI-dialect engine


def test_ollama_chat_to_openai_engine(setup: Setup) -> None:
    before = setup.oa_sim.stats()
    r = setup.ol().chat(model=OA_MODEL, messages=[{"role": "user", "content": PROMPT}], options={"num_predict": 5})
    after = setup.oa_sim.stats()
    assert r.model == OA_MODEL
    assert r.message.role == "assistant" and r.message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert r.done is True and r.done_reason == "length"
    assert r.eval_count == 5 == delta(before, after, "generated_tokens")
    assert r.prompt_eval_count == 3 == delta(before, after, "prompt_tokens")
    assert r.total_duration and r.total_duration > 0


def test_ollama_chat_stream_raw_ndjson(setup: Setup) -> None:
    before = setup.oa_sim.stats()
    body = {"model": OA_MODEL, "messages": [{"role": "user", "content": PROMPT}], "options": {"num_predict": 4}}
    with setup.meshd.client() as c, c.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        assert r.headers["x-meshd-engine"].startswith("openai")
        raw = r.read().decode()
    after = setup.oa_sim.stats()
    assert raw.endswith("\n")
    lines = [json.loads(line) for line in raw.split("\n") if line]
    assert all(line["done"] is False for line in lines[:-1])
    assert all(line["model"] == OA_MODEL and "created_at" in line for line in lines)
    assert "".join(line["message"]["content"] for line in lines) == "tok0 tok1 tok2 tok3 "
    last = lines[-1]
    assert last["done"] is True and last["done_reason"] == "length"
    assert last["eval_count"] == 4 == delta(before, after, "generated_tokens")
    assert last["prompt_eval_count"] == 3 == delta(before, after, "prompt_tokens")
    for k in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(last[k], int) and last[k] >= 0, k
    assert last["total_duration"] > 0


def test_ollama_chat_stream_client(setup: Setup) -> None:
    parts = list(setup.ol().chat(model=OA_MODEL, messages=[{"role": "user", "content": PROMPT}],
                                 options={"num_predict": 3}, stream=True))
    assert "".join(p.message.content for p in parts) == "tok0 tok1 tok2 "
    assert parts[-1].done and parts[-1].done_reason == "length"
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (3, 3)


def test_ollama_generate_to_openai_engine(setup: Setup) -> None:
    ol = setup.ol()
    r = ol.generate(model=OA_MODEL, prompt=PROMPT, options={"num_predict": 3})
    assert r.response == "tok0 tok1 tok2 " and r.done and r.done_reason == "length"
    assert (r.prompt_eval_count, r.eval_count) == (3, 3)
    parts = list(ol.generate(model=OA_MODEL, prompt=PROMPT, options={"num_predict": 3}, stream=True))
    assert "".join(p.response for p in parts) == "tok0 tok1 tok2 "
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (3, 3)
    # Without a limit the sim stops by itself: done_reason stop.
    r = ol.generate(model=OA_MODEL, prompt=PROMPT)
    assert r.done_reason == "stop" and r.eval_count == 16


def test_ollama_embed_list_show_via_openai_engine(setup: Setup) -> None:
    ol = setup.ol()
    e = ol.embed(model=OA_MODEL, input=["alpha beta", "gamma"])
    assert len(e.embeddings) == 2 and all(len(v) == 8 for v in e.embeddings)
    assert e.prompt_eval_count == 3
    names = {m.model for m in ol.list().models}
    assert {OL_MODEL, OA_MODEL, "oa-large"} <= names
    assert OA_MODEL in {m.model for m in ol.ps().models}
    s = ol.show(OA_MODEL)
    assert s.capabilities


def test_cross_dialect_error_is_in_client_dialect(setup: Setup) -> None:
    # The sim answers 400 for a chat whose messages are not a list in its own dialect; meshd validates
    # first and answers in the client's dialect whichever engine would have served.
    r = setup.meshd.post("/api/chat", json={"model": OA_MODEL, "messages": "hi"})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = setup.meshd.post("/v1/chat/completions", json={"model": OL_MODEL})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_api_version_is_the_ollama_api_meshd_implements(setup: Setup) -> None:
    """Clients gate features on `/api/version` (VS Code's Ollama mode refuses anything below 0.6.4); it is
    the Ollama API version meshd serves, with meshd's own version alongside."""
    body = setup.meshd.get("/api/version").json()
    major, minor, patch = (int(x) for x in body["version"].split("."))
    assert (major, minor, patch) >= (0, 6, 4), body
    assert body["meshd_version"] and body["meshd_version"] != body["version"], body


def test_copy_create_blobs_and_push_reach_the_ollama_engine(setup: Setup, tmp_path: Path) -> None:
    """Ollama's copy, blob upload, create and push, through meshd with the real ollama client: made by
    the node's Ollama engine (the blobs a create names must be on the engine that creates), relayed as
    they come; the models made show in meshd's list. Without an Ollama engine: test_e2e_model_store.py."""
    ol = setup.ol()
    assert ol.copy(OL_MODEL, "ol-copy").status == "success"
    wait_until(lambda: "ol-copy" in [m.model for m in ol.list().models], 5, what="meshd to list the copy")
    with pytest.raises(ollama.ResponseError) as e:
        ol.copy("no-such-model", "x")
    assert e.value.status_code == 404
    blob = tmp_path / "made.gguf"
    blob.write_bytes(b"GGUF" + os.urandom(1000))
    digest = ol.create_blob(blob)
    assert digest == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert setup.meshd.request("HEAD", f"/api/blobs/{digest}").status_code == 200
    assert setup.meshd.request("HEAD", "/api/blobs/sha256:" + "0" * 64).status_code == 404
    bad = setup.meshd.post("/api/blobs/sha256:" + "0" * 64, content=b"not these bytes")
    assert bad.status_code == 400, bad.text
    assert ol.create(model="made", files={"made.gguf": digest}).status == "success"
    wait_until(lambda: "made" in [m.model for m in ol.list().models], 5, what="meshd to list the created model")
    assert [x.status for x in ol.push("made", stream=True)][-1] == "success"
    for name in ("ol-copy", "made"):
        ol.delete(name)


def test_api_show_is_the_ollama_engines_own_answer_when_it_has_one(setup: Setup) -> None:
    """A model on an Ollama engine of this node: `/api/show` is that engine's own description (template,
    parameters, model_info with its architecture and context length), plus where meshd found it. A model
    on an OpenAI-compatible engine is described from what meshd knows of it."""
    own = setup.meshd.post("/api/show", json={"model": OL_MODEL}).json()
    assert own["template"] == "{{ .Prompt }}" and own["model_info"]["general.architecture"] == "llama", own
    assert own["model_info"]["llama.context_length"] > 0 and own["meshd"]["engine"].startswith("ollama@"), own
    assert "FROM " + OL_MODEL in own["modelfile"], own
    # The same through the ollama client, which reads the fields into its own types; name:latest is the same model.
    shown = setup.ol().show(OL_MODEL + ":latest")
    assert shown.template == "{{ .Prompt }}" and shown.details.family == "llama", shown
    described = setup.meshd.post("/api/show", json={"model": OA_MODEL}).json()
    assert described["meshd"]["engine"].startswith("openai@") and "general.architecture" in described["model_info"], described


def test_keep_alive_zero_unloads_the_model_where_it_is_loaded(setup: Setup) -> None:
    """Open WebUI's "unload": an empty generate or chat with `keep_alive: 0` reaches the Ollama engine that
    has the model loaded and comes back as Ollama's `done_reason: unload`; an empty one without it loads."""
    r = setup.meshd.post("/api/generate", json={"model": OL_MODEL, "keep_alive": 0})
    assert r.status_code == 200 and r.json()["done_reason"] == "unload", r.text
    wait_until(lambda: OL_MODEL not in [m["name"] for m in httpx.get(setup.ol_sim.url + "/api/ps", timeout=5).json()["models"]], 5,
               what="the engine to unload the model")
    r = setup.meshd.post("/api/chat", json={"model": OL_MODEL, "messages": [], "keep_alive": "0s"})
    assert r.status_code == 200 and r.json()["done_reason"] == "unload", r.text
    r = setup.meshd.post("/api/generate", json={"model": OL_MODEL})
    assert r.status_code == 200 and r.json()["done_reason"] == "load", r.text
    wait_until(lambda: OL_MODEL in [m["name"] for m in httpx.get(setup.ol_sim.url + "/api/ps", timeout=5).json()["models"]], 5,
               what="the engine to load the model again")


def test_a_pull_of_a_model_no_store_has_goes_to_the_ollama_engine_and_delete_reaches_it(setup: Setup) -> None:
    """No node's model store has the model: meshd's /api/pull hands it to its Ollama engine, which pulls
    it from its registry (here the sim, as Ollama would), and relays its progress lines as they come;
    /api/delete deletes it there. The model then shows (and leaves) meshd's list."""
    ol = setup.ol()
    lines = list(ol.pull("fresh-model", stream=True))
    assert lines[0].status == "pulling manifest" and lines[-1].status == "success", lines
    assert any(x.digest and x.completed == x.total for x in lines), lines
    assert "fresh-model" in [m["name"] for m in httpx.get(setup.ol_sim.url + "/api/tags", timeout=5).json()["models"]]
    wait_until(lambda: "fresh-model" in [m.model for m in ol.list().models], 5, what="meshd to list the pulled model")
    r = setup.meshd.post("/api/pull", json={"model": "fresh-model", "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
    assert ol.delete("fresh-model").status == "success"
    wait_until(lambda: "fresh-model" not in [m.model for m in ol.list().models], 5, what="meshd to drop the deleted model")
    with pytest.raises(ollama.ResponseError) as e:
        ol.delete("fresh-model")
    assert e.value.status_code == 404
    # Bad bodies name the field.
    r = setup.meshd.post("/api/pull", json={"stream": False})
    assert r.status_code == 400 and "model" in r.json()["error"], r.text
    r = setup.meshd.request("DELETE", "/api/delete", content=b"{not json")
    assert r.status_code == 400, r.text
