"""The official `openai` and `ollama` Python clients against meshd in front of a real llama-server
(tiny random-weight model), configured as an OpenAI-compatible engine (`kind: openai`)."""
from __future__ import annotations

import ollama
import openai
import pytest

from meshd_e2e import Meshd

MODEL = "meshd-tiny"
# Fixed sampling so the tiny random model's answers are reproducible.
SAMPLING = {"temperature": 0.0, "seed": 7}


@pytest.fixture(scope="module")
def oa(meshd_llama: Meshd) -> openai.OpenAI:
    return openai.OpenAI(base_url=meshd_llama.url + "/v1", api_key="unused", timeout=30, max_retries=0)


@pytest.fixture(scope="module")
def ol(meshd_llama: Meshd) -> ollama.Client:
    return ollama.Client(host=meshd_llama.url, timeout=30, trust_env=False)


# MARK: openai client


def test_openai_chat(oa: openai.OpenAI) -> None:
    raw = oa.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=8, **SAMPLING)
    assert raw.headers["x-meshd-node"] == "e2e-llama"
    assert raw.headers["x-meshd-engine"]
    assert raw.headers["x-meshd-route"]
    r = raw.parse()
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert r.id
    assert len(r.choices) == 1
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage is not None
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_openai_chat_stream_with_usage(oa: openai.OpenAI) -> None:
    chunks = list(oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=8, stream=True,
        stream_options={"include_usage": True}, **SAMPLING))
    assert len(chunks) >= 3
    assert {c.id for c in chunks} == {chunks[0].id}, "one id across the stream"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant", "the first chunk carries the role"
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text, "content deltas"
    assert content_chunks[-1].choices[0].finish_reason in ("length", "stop")
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, "include_usage: a final usage chunk"
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    # Usage appears only in that final chunk.
    assert all(c.usage is None for c in chunks[:-1])


def test_openai_chat_stream_without_usage(oa: openai.OpenAI) -> None:
    # meshd asks the engine for usage itself; the client did not, so it must not see a usage chunk.
    chunks = list(oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=6, stream=True, **SAMPLING))
    assert chunks
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "no choices-less usage chunk"


def test_openai_completion(oa: openai.OpenAI) -> None:
    r = oa.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, **SAMPLING)
    assert r.object == "text_completion"
    assert r.model == MODEL
    assert r.choices[0].text
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage is not None and r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


def test_openai_completion_stream(oa: openai.OpenAI) -> None:
    chunks = list(oa.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, stream=True, **SAMPLING))
    assert chunks
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals and finals[-1] in ("length", "stop")


def test_openai_models_list(oa: openai.OpenAI) -> None:
    models = list(oa.models.list())
    assert MODEL in [m.id for m in models]
    m = oa.models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model"


def test_openai_embeddings(oa: openai.OpenAI) -> None:
    r = oa.embeddings.create(model=MODEL, input=["hello world", "good night"])
    assert len(r.data) == 2
    assert [d.index for d in r.data] == [0, 1]
    dims = {len(d.embedding) for d in r.data}
    assert len(dims) == 1 and dims.pop() > 0
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens > 0


def test_openai_embeddings_of_token_ids(oa: openai.OpenAI) -> None:
    # LangChain's OpenAIEmbeddings and others send token ids, not text: relayed to the engine as they are.
    text = oa.embeddings.create(model=MODEL, input="hello world")
    dim = len(text.data[0].embedding)
    one = oa.embeddings.create(model=MODEL, input=[15043, 3186])
    assert len(one.data) == 1 and len(one.data[0].embedding) == dim
    two = oa.embeddings.create(model=MODEL, input=[[15043, 3186], [1781, 4646, 29991]])
    assert [d.index for d in two.data] == [0, 1]
    assert {len(d.embedding) for d in two.data} == {dim}
    assert two.data[0].embedding != two.data[1].embedding
    with pytest.raises(openai.BadRequestError) as e:
        oa.embeddings.create(model=MODEL, input=[[15043], [-1]])
    assert e.value.status_code == 400 and e.value.param == "input[1][0]"


# MARK: ollama client


def _check_final(resp: ollama.ChatResponse | ollama.GenerateResponse) -> None:
    assert resp.done is True
    assert resp.done_reason in ("length", "stop")
    assert resp.eval_count and resp.eval_count > 0
    assert resp.prompt_eval_count and resp.prompt_eval_count > 0
    assert resp.total_duration and resp.total_duration > 0
    assert resp.eval_duration and resp.eval_duration > 0
    assert resp.prompt_eval_duration and resp.prompt_eval_duration > 0
    assert resp.load_duration is None or resp.load_duration >= 0


def test_ollama_chat(ol: ollama.Client) -> None:
    r = ol.chat(model=MODEL, messages=[{"role": "user", "content": "Hello there"}],
                options={"num_predict": 8, **SAMPLING})
    assert r.model == MODEL
    assert r.message.role == "assistant"
    assert r.message.content
    _check_final(r)


def test_ollama_chat_stream(ol: ollama.Client) -> None:
    parts = list(ol.chat(model=MODEL, messages=[{"role": "user", "content": "Hello there"}],
                         options={"num_predict": 8, **SAMPLING}, stream=True))
    assert len(parts) >= 2
    assert all(p.done is False for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts)
    _check_final(parts[-1])
    assert all(p.model == MODEL for p in parts)


def test_ollama_generate(ol: ollama.Client) -> None:
    r = ol.generate(model=MODEL, prompt="Once upon a time", options={"num_predict": 8, **SAMPLING})
    assert r.model == MODEL
    assert r.response
    _check_final(r)


def test_ollama_generate_stream(ol: ollama.Client) -> None:
    parts = list(ol.generate(model=MODEL, prompt="Once upon a time", options={"num_predict": 8, **SAMPLING}, stream=True))
    assert len(parts) >= 2
    assert all(p.done is False for p in parts[:-1])
    assert "".join(p.response or "" for p in parts)
    _check_final(parts[-1])


def test_ollama_list_ps_show(ol: ollama.Client) -> None:
    tags = ol.list()
    assert MODEL in [m.model for m in tags.models]
    tag = next(m for m in tags.models if m.model == MODEL)
    assert tag.digest and tag.modified_at is not None

    ps = ol.ps()
    assert MODEL in [m.model for m in ps.models], "llama-server's model is loaded"

    show = ol.show(MODEL)
    assert show.details is not None and show.details.format == "gguf"
    assert show.capabilities and "completion" in show.capabilities
    assert show.modelinfo is not None and "general.architecture" in show.modelinfo

    with pytest.raises(ollama.ResponseError) as e:
        ol.show("no-such-model")
    assert e.value.status_code == 404


def test_ollama_embed(ol: ollama.Client) -> None:
    r = ol.embed(model=MODEL, input=["hello world", "good night"])
    assert len(r.embeddings) == 2
    assert len(r.embeddings[0]) == len(r.embeddings[1]) > 0
    single = ol.embed(model=MODEL, input="hello world")
    assert len(single.embeddings) == 1


def test_ollama_show_names_the_architecture_from_the_gguf_file(meshd_llama: Meshd) -> None:
    """llama-server does not say its model's architecture; meshd reads it from the GGUF file `/props`
    names (an engine on this machine), so `/api/show` is not `unknown` (Open WebUI's model page reads it)."""
    info = meshd_llama.post("/api/show", json={"model": MODEL}).json()["model_info"]
    assert info["general.architecture"] == "llama", info
    assert info["llama.context_length"] > 0, info
