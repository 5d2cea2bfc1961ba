"""The calls Continue, VS Code's Ollama mode (GitHub Copilot Chat's Ollama provider) and AnythingLLM
make, as recorded from their source (request bodies as they send them), replayed against one meshd
that fronts an Ollama-dialect engine, an OpenAI-dialect engine and a real llama-server; each answer
is checked for what that client reads from it, and how (see each test). Sources, read in:
- Continue `core/llm/llms/Ollama.ts` (listModels, ensureModelInfo, _streamChat, _streamFim,
  _streamComplete, _embed) and its OpenAI adapter;
- Copilot Chat `src/extension/byok/vscode-node/ollamaProvider.ts` (_checkOllamaVersion, 0.6.4;
  /api/tags `model`; /api/show `capabilities`, `model_info`) and its SSE reader (`stream.ts`);
- AnythingLLM `server/utils/AiProviders/ollama/index.js` (cacheContextWindows, getModelCapabilities,
  streamGetChatCompletion, handleStream), through ollama-js (a stream must end with `done: true`)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
import pytest

from meshd_e2e import Binaries, E2EError, LlamaServer, Meshd, ProcessPool, SimEngine, wait_until

OL_MODEL, OA_MODEL, LLAMA_MODEL = "ol-small", "oa-small", "meshd-tiny"
MODELS = [OL_MODEL, OA_MODEL, LLAMA_MODEL]


@dataclass
class Setup:
    meshd: Meshd

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.meshd.url, timeout=60, trust_env=False, headers=headers)


@pytest.fixture(scope="module")
def setup(module_pool: ProcessPool, bins: Binaries) -> Setup:
    ol = SimEngine(module_pool, bins.sim_bin(), "--models", OL_MODEL, "--loaded", OL_MODEL, "--gen-tps", "0")
    oa = SimEngine(module_pool, bins.sim_bin(), "--models", OA_MODEL, "--loaded", OA_MODEL, "--gen-tps", "0")
    try:
        llama = LlamaServer(module_pool, bins.llama_server_bin(), bins.tiny_model(), alias=LLAMA_MODEL,
                            args=["-c", "1024", "--embeddings", "--pooling", "mean"])
    except E2EError as e:
        pytest.fail(str(e), pytrace=False)
    m = Meshd(module_pool, bins.meshd_bin(), [{"kind": "ollama", "url": ol.url}, {"kind": "openai", "url": oa.url},
                                             {"kind": "openai", "url": llama.url}], name="e2e-clients")
    wait_until(lambda: all(e["healthy"] for e in m.admin("/v1/engines").json()), 15, what="every engine healthy")
    wait_until(lambda: {x["name"] for x in m.get("/api/tags").json()["models"]} >= set(MODELS), 10, what="every model listed")
    return Setup(m)


def ndjson(r: httpx.Response) -> list[dict[str, Any]]:
    """NDJSON as ollama-js and Continue read it: split on newlines, blank lines skipped."""
    return [json.loads(line) for line in r.text.split("\n") if line.strip()]


def sse(r: httpx.Response) -> Iterator[dict[str, Any] | str]:
    """SSE as Copilot reads it: lines split on `\\n`, blanks and `:` comments skipped, `data:` cut off; `[DONE]` as a string."""
    for line in r.text.split("\n"):
        if not line.strip() or line.startswith(":"):
            continue
        assert line.startswith("data:"), line
        payload = line[5:].strip()
        yield payload if payload == "[DONE]" else json.loads(payload)


# MARK: Continue (provider "ollama", and "openai" with apiBase .../v1/)


def test_continue_lists_reads_model_info_chats_completes_and_embeds(setup: Setup) -> None:
    with setup.client() as c:
        # listModels (AUTODETECT): GET /api/tags, models[].name.
        names = [x["name"] for x in c.get("/api/tags").json()["models"]]
        assert set(MODELS) <= set(names)
        for model in MODELS:
            # ensureModelInfo: {"name": ...}; `parameters` lines must match its regex, a `stop` value must be a
            # JSON string; `template` a string (".Suffix" in it turns fill-in-the-middle on).
            show = c.post("/api/show", json={"name": model})
            assert show.status_code == 200, show.text
            info = show.json()
            assert isinstance(info.get("parameters", ""), str) and isinstance(info.get("template", ""), str), info
            for line in info.get("parameters", "").split("\n"):
                if not line.strip():
                    continue
                m = re.match(r"^(\S+)\s+((?:\".*\")|\S+)$", line)
                assert m, line
                if m.group(1) == "stop":
                    assert isinstance(json.loads(m.group(2)), str)
            # _streamChat: no "stream" key (the server must stream), keep_alive in seconds, num_ctx/num_predict.
            r = c.post("/api/chat", json={"model": model, "messages": [{"role": "system", "content": "Be brief."},
                                                                       {"role": "user", "content": "hi"}],
                                          "options": {"num_predict": 4, "num_ctx": 1024}, "keep_alive": 1800})
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson"), r.text
            lines = ndjson(r)
            assert len(lines) >= 2 and lines[-1]["done"] is True
            # Every line, the done line included, carries a `message` with role assistant (Continue destructures it).
            assert all(isinstance(x.get("message"), dict) and x["message"]["role"] == "assistant" for x in lines), lines
            assert "".join(x["message"]["content"] for x in lines).strip()
            # Tools are sent whenever tools exist, still streamed.
            tools = [{"type": "function", "function": {"name": "read_file", "description": "Read a file",
                                                       "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]
            r = c.post("/api/chat", json={"model": model, "messages": [{"role": "user", "content": "hi"}], "tools": tools,
                                          "options": {"num_predict": 4, "num_ctx": 1024}, "keep_alive": 1800})
            assert r.status_code == 200 and all("message" in x for x in ndjson(r)), r.text
            # Autocomplete, fill-in-the-middle: {prompt, suffix}, no stream key; each line's `response`.
            r = c.post("/api/generate", json={"model": model, "prompt": "def add(a, b):\n    return", "suffix": "\n\nprint(add(1, 2))",
                                              "options": {"temperature": 0.01, "num_predict": 4, "stop": ["\n\n"]}, "keep_alive": 1800})
            assert r.status_code == 200, r.text
            lines = ndjson(r)
            assert lines and all("response" in x or "error" not in x for x in lines) and lines[-1]["done"] is True, lines
            # Autocomplete without FIM: raw, the prompt rendered by Continue.
            r = c.post("/api/generate", json={"model": model, "prompt": "<PRE> x = <SUF> <MID>", "raw": True,
                                              "options": {"temperature": 0.01, "num_predict": 4}, "keep_alive": 1800})
            assert r.status_code == 200 and all("error" not in x for x in ndjson(r)), r.text
        # _embed: {model, input: [...]}; `embeddings` non-empty (the Ollama engine and llama-server embed).
        for model in (OL_MODEL, LLAMA_MODEL):
            r = c.post("/api/embed", json={"model": model, "input": ["chunk one", "chunk two"]})
            assert r.status_code == 200 and len(r.json()["embeddings"]) == 2 and r.json()["embeddings"][0], r.text
        # A 404 body must be JSON (Continue JSON.parses it).
        r = c.post("/api/chat", json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 404 and "no-such-model" in r.json()["error"]


def test_continue_as_an_openai_client(setup: Setup) -> None:
    with setup.client(Authorization="Bearer unused") as c:
        assert set(MODELS) <= {x["id"] for x in c.get("/v1/models").json()["data"]}
        for model in MODELS:
            # chat: the openai SDK, streamed with include_usage; an empty content goes as " ".
            r = c.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "system", "content": " "}, {"role": "user", "content": "hi"}],
                                                     "max_tokens": 4, "temperature": 0.5, "top_p": 1, "frequency_penalty": 0,
                                                     "presence_penalty": 0, "stream": True, "stream_options": {"include_usage": True}})
            events = list(sse(r))
            assert events[-1] == "[DONE]"
            chunks = [e for e in events if isinstance(e, dict)]
            assert "".join((ch["choices"][0]["delta"].get("content") or "") for ch in chunks if ch["choices"])
            usage = [ch for ch in chunks if not ch["choices"] and ch.get("usage")]
            assert usage and usage[-1]["usage"]["completion_tokens"] > 0, chunks[-2:]
            # autocomplete: the legacy /v1/completions, streamed, reading choices[0].text.
            r = c.post("/v1/completions", json={"model": model, "prompt": "x = ", "max_tokens": 4, "temperature": 0.01,
                                                "stop": ["\n"], "stream": True})
            texts = [e["choices"][0]["text"] for e in sse(r) if isinstance(e, dict) and e["choices"]]
            assert texts and all(isinstance(t, str) for t in texts)
        r = c.post("/v1/embeddings", json={"model": LLAMA_MODEL, "input": ["a", "b"]})
        assert r.status_code == 200 and [len(d["embedding"]) > 0 for d in r.json()["data"]] == [True, True], r.text


# MARK: VS Code (GitHub Copilot Chat's Ollama provider)


def test_vscode_copilot_version_gate_model_info_and_streamed_chat(setup: Setup) -> None:
    with setup.client() as c:
        # _checkOllamaVersion: every dotted part numeric, at least 0.6.4 (else no model is listed).
        version = c.get("/api/version").json()["version"]
        parts = [int(p) for p in version.split(".")]
        assert parts >= [0, 6, 4], version
        # /api/tags: the model id is `model`.
        ids = [x["model"] for x in c.get("/api/tags").json()["models"]]
        assert set(MODELS) <= set(ids)
        for model in ids:
            # /api/show {"model"} for every listed model: `capabilities` an array; model_info's architecture and
            # "<arch>.context_length" give the window. A failure here empties the whole list.
            show = c.post("/api/show", json={"model": model}, headers={"Content-Type": "application/json"})
            assert show.status_code == 200, (model, show.text)
            info = show.json()
            assert isinstance(info["capabilities"], list) and "completion" in info["capabilities"], info
            arch = info["model_info"]["general.architecture"]
            assert isinstance(arch, str) and arch, info
            if model != OA_MODEL:
                # The Ollama engine says, and llama-server's GGUF file tells (the model's trained context, as Ollama
                # reports it); a generic OpenAI-compatible server does not, and Copilot falls back to 32768.
                assert arch == "llama" and info["model_info"][f"{arch}.context_length"] > 0, info
        for model in MODELS:
            # Chat: always streamed to /v1/chat/completions, an empty bearer key, include_usage, array contents
            # and extra message fields it adds (copilot_cache_control), tools.
            body = {"model": model, "stream": True, "n": 1, "temperature": 0.1, "top_p": 1, "stream_options": {"include_usage": True},
                    "messages": [{"role": "system", "content": "You are a helpful assistant.", "copilot_cache_control": {"type": "ephemeral"}},
                                 {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                    "tools": [{"type": "function", "function": {"name": "run", "description": "Run", "parameters": {"type": "object", "properties": {}}}}]}
            # Copilot sends "Bearer " (an empty key); HTTP drops the trailing space, so a server sees "Bearer".
            r = c.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer"})
            assert r.status_code == 200, (model, r.text)
            events = list(sse(r))
            assert events[-1] == "[DONE]"
            chunks = [e for e in events if isinstance(e, dict)]
            assert all("error" not in ch for ch in chunks), chunks
            assert any(ch["choices"] and ch["choices"][0].get("finish_reason") for ch in chunks), chunks
            assert chunks[-1].get("usage") and chunks[-1]["usage"]["total_tokens"] > 0, chunks[-1]


# MARK: AnythingLLM


def test_anythingllm_context_windows_capabilities_chats_and_embeds(setup: Setup) -> None:
    ollama_js = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "ollama-js/0.5.16 (x64 linux Node.js/v20.0.0)"}
    with setup.client(**ollama_js) as c:
        # The embedder's #isAlive: GET / answers 2xx.
        assert c.get("/").status_code == 200
        names = [x["name"] for x in c.get("/api/tags").json()["models"]]
        windows = {}
        for model in names:
            # cacheContextWindows: /api/show {"model"} for every model; `capabilities` an array, `model_info` an object
            # whose first key ending ".context_length" is the window (one failure drops the whole cache).
            info = c.post("/api/show", json={"model": model}).json()
            assert isinstance(info["capabilities"], list) and isinstance(info["model_info"], dict), info
            ctx = [v for k, v in info["model_info"].items() if k.endswith(".context_length")]
            windows[model] = ctx[0] if ctx else 4096
            assert isinstance(windows[model], int) and windows[model] > 0
        assert windows[LLAMA_MODEL] > 0 and windows[OL_MODEL] > 0
        for model in MODELS:
            body = {"model": model, "keep_alive": 300, "options": {"temperature": 0.7, "num_ctx": min(windows[model], 16384)},
                    "messages": [{"role": "system", "content": "Answer.\nContext:\n[CONTEXT 0]:\nnothing\n[END CONTEXT 0]"},
                                 {"role": "user", "content": "hi"}]}
            # Streamed: message.content a string in every chunk; the stream must end with done: true (ollama-js
            # throws otherwise) carrying prompt_eval_count, eval_count, eval_duration.
            r = c.post("/api/chat", json={**body, "stream": True})
            lines = ndjson(r)
            assert lines[-1]["done"] is True, lines
            for x in lines[:-1]:
                assert isinstance(x["message"]["content"], str), x
            last = lines[-1]
            assert last["prompt_eval_count"] > 0 and last["eval_count"] > 0 and last["eval_duration"] > 0, last
            # Not streamed: one object, content non-empty.
            one = c.post("/api/chat", json={**body, "stream": False}).json()
            assert one["message"]["content"] and one["done"] is True and one["eval_count"] > 0, one
        # getModelCapabilities: "tools" / "thinking" / "vision" read from the same array (any answer works).
        # The embedder: /api/embed with options.num_ctx.
        r = c.post("/api/embed", json={"model": LLAMA_MODEL, "input": ["a chunk"], "options": {"num_ctx": 512}})
        assert r.status_code == 200 and len(r.json()["embeddings"]) == 1, r.text
        # An old AnythingLLM: /api/embeddings {"prompt"}, reading `embedding`; it sends no Content-Type.
    with httpx.Client(base_url=setup.meshd.url, timeout=60, trust_env=False) as raw:
        r = raw.post("/api/embeddings", content=json.dumps({"model": LLAMA_MODEL, "prompt": "a chunk"}))
        assert r.status_code == 200 and len(r.json()["embedding"]) > 0, r.text
