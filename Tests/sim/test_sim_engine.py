"""Black-box tests for meshd-sim-engine.

The binary is not built here: set SIM_ENGINE_BIN (default .build/debug/meshd-sim-engine).
Every server listens on 127.0.0.1 with --port 0; every request has a timeout.
"""

import http.client
import json
import math
import os
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

BIN = os.environ.get("SIM_ENGINE_BIN", ".build/debug/meshd-sim-engine")
T = 5  # default per-request timeout, seconds


class Sim:
    """A running meshd-sim-engine process."""

    def __init__(self, *args):
        if not os.path.exists(BIN):
            pytest.skip(f"sim engine binary not found at {BIN} (set SIM_ENGINE_BIN)")
        self.dir = tempfile.TemporaryDirectory()
        port_file = os.path.join(self.dir.name, "port")
        cmd = [BIN, "--host", "127.0.0.1", "--port", "0", "--port-file", port_file, *map(str, args)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(port_file):
            if self.proc.poll() is not None:
                raise RuntimeError(f"sim engine exited: {self.proc.stderr.read()}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("sim engine did not start")
            time.sleep(0.01)
        with open(port_file) as f:
            self.port = int(f.read().strip())
        line = self.proc.stdout.readline().strip()
        assert line == f"LISTENING 127.0.0.1:{self.port}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()
        self.http.trust_env = False

    def get(self, path, **kw):
        kw.setdefault("timeout", T)
        return self.http.get(self.url + path, **kw)

    def post(self, path, body=None, **kw):
        kw.setdefault("timeout", T)
        if body is not None and not isinstance(body, (str, bytes)):
            kw["json"] = body
        elif body is not None:
            kw["data"] = body
        return self.http.post(self.url + path, **kw)

    def fresh_post(self, path, body, **kw):
        """POST on a brand-new connection (no keep-alive reuse)."""
        s = requests.Session()
        s.trust_env = False
        try:
            kw.setdefault("timeout", T)
            return s.post(self.url + path, json=body, **kw)
        finally:
            s.close()

    def stats(self):
        return self.get("/sim/stats").json()

    def wait_stats(self, pred, timeout=3.0):
        deadline = time.monotonic() + timeout
        st = self.stats()
        while not pred(st):
            if time.monotonic() > deadline:
                raise AssertionError(f"stats condition not reached: {st}")
            time.sleep(0.01)
            st = self.stats()
        return st

    def close(self):
        if getattr(self, "http", None):
            self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.dir.cleanup()


@pytest.fixture
def sim_factory():
    started = []

    def make(*args):
        s = Sim(*args)
        started.append(s)
        return s

    yield make
    for s in started:
        s.close()


@pytest.fixture(scope="module")
def fast():
    s = Sim("--gen-tps", 0, "--prompt-tps", 0, "--models", "sim-small,sim-large", "--loaded", "sim-small")
    yield s
    s.close()


def chat_body(content="hello there general kenobi", **extra):
    body = {"model": "sim-small", "messages": [{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": content}]}
    body.update(extra)
    return body


def sse_events(resp):
    """Data payloads of an SSE response, in order."""
    out = []
    for line in resp.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            out.append(line[len("data: "):])
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return out


# ---------------------------------------------------------------- OpenAI


def test_openai_chat_nonstream(fast):
    r = fast.post("/v1/chat/completions", chat_body(max_tokens=3))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    j = r.json()
    assert j["id"].startswith("chatcmpl-")
    assert j["object"] == "chat.completion"
    assert isinstance(j["created"], int) and j["created"] > 1_600_000_000
    assert j["model"] == "sim-small"
    assert len(j["choices"]) == 1
    c = j["choices"][0]
    assert c["index"] == 0
    assert c["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 "}
    assert c["finish_reason"] == "length"
    # "be brief" + "hello there general kenobi" = 6 words
    assert j["usage"] == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9,
                          "prompt_tokens_details": {"cached_tokens": 0}}

    # No limit in the request: server default (--max-tokens 16), natural stop.
    j = fast.post("/v1/chat/completions", chat_body()).json()
    assert j["usage"]["completion_tokens"] == 16
    assert j["choices"][0]["finish_reason"] == "stop"
    # max_completion_tokens is honoured too.
    j = fast.post("/v1/chat/completions", chat_body(max_completion_tokens=2)).json()
    assert j["choices"][0]["message"]["content"] == "tok0 tok1 "


def test_openai_chat_stream_with_usage(fast):
    r = fast.post("/v1/chat/completions",
                  chat_body(max_tokens=4, stream=True, stream_options={"include_usage": True}), stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers.get("transfer-encoding") == "chunked"
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "sim-small" for c in chunks)
    first = chunks[0]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = chunks[1:5]
    assert [c["choices"][0]["delta"]["content"] for c in content] == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:5])
    fin = chunks[5]
    assert fin["choices"][0]["delta"] == {} and fin["choices"][0]["finish_reason"] == "length"
    usage = chunks[6]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10,
                              "prompt_tokens_details": {"cached_tokens": 0}}
    assert len(chunks) == 7
    # With include_usage every other chunk carries "usage": null (as OpenAI does).
    assert all("usage" in c and c["usage"] is None for c in chunks[:6])


def test_openai_chat_stream_without_usage(fast):
    r = fast.post("/v1/chat/completions", chat_body(max_tokens=2, stream=True), stream=True)
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 4  # role, tok0, tok1, finish
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_openai_completions(fast):
    j = fast.post("/v1/completions", {"model": "sim-small", "prompt": "once upon a time", "max_tokens": 2}).json()
    assert j["id"].startswith("cmpl-") and j["object"] == "text_completion"
    assert j["choices"] == [{"text": "tok0 tok1 ", "index": 0, "logprobs": None, "finish_reason": "length"}]
    assert j["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6,
                          "prompt_tokens_details": {"cached_tokens": 0}}

    r = fast.post("/v1/completions", {"model": "sim-small", "prompt": ["a b", "c"], "max_tokens": 2, "stream": True,
                                      "stream_options": {"include_usage": True}}, stream=True)
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["text"] for c in chunks[:3]] == ["tok0 ", "tok1 ", ""]
    assert chunks[2]["choices"][0]["finish_reason"] == "length"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["prompt_tokens"] == 3


def test_openai_models(fast):
    j = fast.get("/v1/models").json()
    assert j["object"] == "list"
    assert [m["id"] for m in j["data"]] == ["sim-small", "sim-large"]
    for m in j["data"]:
        assert m["object"] == "model" and isinstance(m["created"], int) and isinstance(m["owned_by"], str)
    assert fast.get("/v1/models/sim-large").json()["id"] == "sim-large"
    assert fast.get("/v1/models/nope").status_code == 404


def test_openai_embeddings(fast):
    j = fast.post("/v1/embeddings", {"model": "sim-small", "input": ["hello world", "foo", "hello world"]}).json()
    assert j["object"] == "list" and j["model"] == "sim-small"
    assert [d["index"] for d in j["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in j["data"])
    v0, v1, v2 = (d["embedding"] for d in j["data"])
    assert v0 == v2 and v0 != v1
    assert math.isclose(sum(x * x for x in v0), 1.0, rel_tol=1e-4)
    assert j["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    single = fast.post("/v1/embeddings", {"model": "sim-small", "input": "hello world"}).json()
    assert single["data"][0]["embedding"] == v0


# ---------------------------------------------------------------- Ollama


def ndjson(resp):
    return [json.loads(line) for line in resp.iter_lines(decode_unicode=True) if line]


def test_ollama_chat_stream(fast):
    r = fast.post("/api/chat", {"model": "sim-small", "messages": [{"role": "user", "content": "why is the sky blue"}],
                                "options": {"num_predict": 3}}, stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson(r)
    assert len(lines) == 4
    for k, line in enumerate(lines[:3]):
        assert line["model"] == "sim-small" and line["created_at"].endswith("Z")
        assert line["message"] == {"role": "assistant", "content": f"tok{k} "}
        assert line["done"] is False
    fin = lines[3]
    assert fin["done"] is True and fin["done_reason"] == "length"
    assert fin["message"] == {"role": "assistant", "content": ""}
    assert fin["prompt_eval_count"] == 5 and fin["eval_count"] == 3
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(fin[key], int) and fin[key] >= 0
    assert fin["total_duration"] > 0


def test_ollama_chat_nonstream(fast):
    j = fast.post("/api/chat", {"model": "sim-small", "stream": False,
                                "messages": [{"role": "user", "content": "hi"}]}).json()
    assert j["message"]["role"] == "assistant"
    assert j["message"]["content"] == "".join(f"tok{k} " for k in range(16))
    assert j["done"] is True and j["done_reason"] == "stop" and j["eval_count"] == 16
    assert j["prompt_eval_count"] == 1


def test_ollama_generate(fast):
    r = fast.post("/api/generate", {"model": "sim-small", "prompt": "a b c", "options": {"num_predict": 2}}, stream=True)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson(r)
    assert [l["response"] for l in lines] == ["tok0 ", "tok1 ", ""]
    assert [l["done"] for l in lines] == [False, False, True]
    assert "message" not in lines[0]
    assert lines[-1]["eval_count"] == 2 and lines[-1]["prompt_eval_count"] == 3
    j = fast.post("/api/generate", {"model": "sim-small", "prompt": "x", "stream": False,
                                    "options": {"num_predict": 1}}).json()
    assert j["response"] == "tok0 " and j["done"] is True and j["done_reason"] == "length"
    # Empty prompt = load request.
    j = fast.post("/api/generate", {"model": "sim-small", "stream": False}).json()
    assert j["done"] is True and j["done_reason"] == "load"


def test_ollama_embed(fast):
    j = fast.post("/api/embed", {"model": "sim-small", "input": ["hello world", "foo"]}).json()
    assert j["model"] == "sim-small"
    assert len(j["embeddings"]) == 2 and all(len(v) == 8 for v in j["embeddings"])
    assert j["prompt_eval_count"] == 3
    assert isinstance(j["total_duration"], int) and isinstance(j["load_duration"], int)
    oa = fast.post("/v1/embeddings", {"model": "sim-small", "input": "hello world"}).json()
    assert oa["data"][0]["embedding"] == j["embeddings"][0]  # same deterministic vectors on both APIs
    j = fast.post("/api/embed", {"model": "sim-small", "input": "foo"}).json()
    assert len(j["embeddings"]) == 1


def test_ollama_metadata(fast):
    tags = fast.get("/api/tags").json()
    assert [m["name"] for m in tags["models"]] == ["sim-small", "sim-large"]
    for m in tags["models"]:
        assert m["model"] == m["name"] and m["modified_at"] and isinstance(m["size"], int) and len(m["digest"]) == 64
        d = m["details"]
        assert d["format"] == "gguf" and d["family"] and d["parameter_size"] and d["quantization_level"]
    ps = fast.get("/api/ps").json()
    assert "sim-small" in [m["name"] for m in ps["models"]]
    for m in ps["models"]:
        assert isinstance(m["size_vram"], int) and m["expires_at"] and m["context_length"] == 4096
    show = fast.post("/api/show", {"model": "sim-small"}).json()
    assert show["model_info"]["llama.context_length"] == 4096
    assert "completion" in show["capabilities"] and show["details"]["format"] == "gguf"
    assert fast.post("/api/show", {"model": "nope"}).status_code == 404
    assert fast.get("/api/version").json() == {"version": "0.0.0-sim"}


def test_errors(fast):
    r = fast.post("/v1/chat/completions", {"model": "nope", "messages": []})
    assert r.status_code == 404
    assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "invalid_request_error",
                                  "param": "model", "code": "model_not_found"}}
    r = fast.post("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    assert r.json() == {"error": 'model "nope" not found, try pulling it first'}
    r = fast.post("/v1/chat/completions", '{"model": "sim-small",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = fast.post("/api/generate", "not json")
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = fast.post("/v1/embeddings", {"model": "nope", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = fast.post("/api/embed", {"model": "nope", "input": "x"})
    assert r.status_code == 404 and "not found" in r.json()["error"]
    assert fast.get("/no/such/route").status_code == 404


def test_llama_and_vllm_extras(fast):
    assert fast.get("/health").json() == {"status": "ok"}
    slots = fast.get("/slots").json()
    assert len(slots) == 4 and all(set(s) >= {"id", "is_processing"} for s in slots)
    props = fast.get("/props").json()
    assert props["total_slots"] == 4 and props["default_generation_settings"]["n_ctx"] == 4096
    metrics = fast.get("/metrics").text
    assert "vllm:num_requests_running" in metrics and "vllm:num_requests_waiting" in metrics
    assert "# TYPE vllm:num_requests_running gauge" in metrics


def test_keepalive_connection_reuse(fast):
    conn = http.client.HTTPConnection("127.0.0.1", fast.port, timeout=T)
    try:
        conn.connect()
        sock = conn.sock
        for k in range(3):
            conn.request("POST", "/api/chat", json.dumps({"model": "sim-small", "options": {"num_predict": 2},
                                                          "messages": [{"role": "user", "content": "x"}]}))
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("transfer-encoding") == "chunked"
            assert len(r.read().splitlines()) == 3
            conn.request("GET", "/health")
            assert json.loads(conn.getresponse().read()) == {"status": "ok"}
        assert conn.sock is sock  # same TCP connection throughout
    finally:
        conn.close()


def test_expect_100_continue(fast):
    body = json.dumps(chat_body(max_tokens=1)).encode()
    with socket.create_connection(("127.0.0.1", fast.port), timeout=T) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        resp = b""
        while b"tok0" not in resp:
            chunk = sock.recv(4096)
            assert chunk
            resp += chunk
        assert resp.startswith(b"HTTP/1.1 200 OK\r\n")


# ---------------------------------------------------------------- scheduling, timing


def test_slots_and_queue_limit(sim_factory):
    s = sim_factory("--slots", 1, "--queue", 1, "--gen-tps", 50, "--prompt-tps", 0)
    body = {"model": "sim-small", "max_tokens": 15, "messages": [{"role": "user", "content": "x"}]}
    results = {}
    done_at = {}

    def call(name):
        r = s.fresh_post("/v1/chat/completions", body)
        results[name] = r.status_code
        done_at[name] = time.monotonic()

    t1 = threading.Thread(target=call, args=("first",))
    t1.start()
    s.wait_stats(lambda st: st["in_flight"] == 1)
    t2 = threading.Thread(target=call, args=("second",))
    t2.start()
    s.wait_stats(lambda st: st["queued"] == 1)
    assert s.get("/metrics").text.count("vllm:num_requests_waiting{") == 1
    assert 'vllm:num_requests_waiting{model_name="sim-small"} 1.0' in s.get("/metrics").text
    assert [x["is_processing"] for x in s.get("/slots").json()] == [True]
    r3 = s.fresh_post("/v1/chat/completions", body)
    assert r3.status_code == 503
    assert "error" in r3.json() and "message" in r3.json()["error"]
    r4 = s.fresh_post("/api/chat", {"model": "sim-small", "messages": [{"role": "user", "content": "x"}]})
    assert r4.status_code == 503 and isinstance(r4.json()["error"], str)
    t1.join(T)
    t2.join(T)
    assert results == {"first": 200, "second": 200}
    assert done_at["first"] < done_at["second"]  # FIFO, one at a time
    st = s.wait_stats(lambda st: st["completed"] == 2)
    assert st["max_concurrent"] == 1 and st["rejected"] == 2 and st["in_flight"] == 0 and st["queued"] == 0


def test_parallel_slots(sim_factory):
    s = sim_factory("--slots", 3, "--gen-tps", 50, "--prompt-tps", 0, "--threads", 2)
    body = {"model": "sim-small", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    codes = []
    threads = [threading.Thread(target=lambda: codes.append(s.fresh_post("/v1/chat/completions", body).status_code))
               for _ in range(5)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    elapsed = time.monotonic() - t0
    assert codes == [200] * 5
    st = s.stats()
    assert st["max_concurrent"] == 3 and st["completed"] == 5
    assert 0.35 <= elapsed < 2.0  # two waves of ~0.18 s


def test_timing_gen_tps(sim_factory):
    s = sim_factory("--gen-tps", 50, "--prompt-tps", 0)
    t0 = time.monotonic()
    r = s.post("/v1/chat/completions", chat_body(max_tokens=10, stream=True), stream=True)
    arrivals = []
    for line in r.iter_lines(decode_unicode=True):
        if line.startswith("data: {"):
            arrivals.append(time.monotonic() - t0)
    elapsed = time.monotonic() - t0
    assert len(arrivals) == 12  # role+tok0 arrive together, then 9 more tokens, then finish
    assert elapsed >= 0.175, elapsed
    assert elapsed < 1.0, elapsed
    assert arrivals[1] < 0.1  # first token is not delayed (latency 0, prompt instant)

    t0 = time.monotonic()
    j = s.post("/api/generate", {"model": "sim-small", "prompt": "x", "stream": False,
                                 "options": {"num_predict": 10}}).json()
    elapsed = time.monotonic() - t0
    assert 0.175 <= elapsed < 1.0
    assert j["eval_count"] == 10


def test_latency_and_prompt_tps(sim_factory):
    s = sim_factory("--gen-tps", 0, "--latency-ms", 150, "--prompt-tps", 100)
    t0 = time.monotonic()
    j = s.post("/api/generate", {"model": "sim-small", "prompt": "one two three four five six seven eight nine ten",
                                 "stream": False, "options": {"num_predict": 3}}).json()
    elapsed = time.monotonic() - t0
    assert 0.24 <= elapsed < 1.0  # 150 ms + 10 words / 100 tok/s
    assert j["prompt_eval_duration"] >= 240_000_000


# ---------------------------------------------------------------- failure injection


def test_fail_refuse(sim_factory):
    s = sim_factory("--fail", "refuse")
    with pytest.raises(requests.exceptions.ConnectionError):
        s.fresh_post("/v1/chat/completions", chat_body(max_tokens=1))
    with pytest.raises(requests.exceptions.ConnectionError):
        s.fresh_post("/api/chat", chat_body())
    assert s.get("/health").status_code == 200  # metadata routes keep working
    assert s.stats()["failed"] == 2


def test_fail_rate_half(sim_factory):
    s = sim_factory("--fail", "refuse", "--fail-rate", 0.5, "--gen-tps", 0)
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append(s.fresh_post("/v1/chat/completions", chat_body(max_tokens=1)).status_code)
        except requests.exceptions.ConnectionError:
            outcomes.append("refused")
    assert outcomes == [200, "refused", 200, "refused"]


def test_fail_hang_and_cancel_count(sim_factory):
    s = sim_factory("--fail", "hang")
    with pytest.raises(requests.exceptions.ReadTimeout):
        s.fresh_post("/v1/chat/completions", chat_body(max_tokens=1), timeout=0.4)
    # The client gave up and closed its connection: the hanging request counts as cancelled.
    st = s.wait_stats(lambda st: st["cancelled"] == 1)
    assert st["hanging"] == 0 and st["completed"] == 0


def test_die_mid_stream(sim_factory):
    s = sim_factory("--fail", "die-mid-stream", "--fail-after-tokens", 3, "--gen-tps", 200)
    # Ollama NDJSON: three token lines, then the connection drops without a final line or chunk terminator.
    lines = []
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        r = s.fresh_post("/api/chat", {"model": "sim-small", "messages": [{"role": "user", "content": "x"}],
                                       "options": {"num_predict": 10}}, stream=True)
        for line in r.iter_lines(decode_unicode=True):
            if line:
                lines.append(json.loads(line))
    assert [l["message"]["content"] for l in lines] == ["tok0 ", "tok1 ", "tok2 "]
    assert not any(l["done"] for l in lines)

    # OpenAI SSE: role chunk + three content chunks, no [DONE].
    events = []
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        r = s.fresh_post("/v1/chat/completions", chat_body(max_tokens=10, stream=True), stream=True)
        for line in r.iter_lines(decode_unicode=True):
            if line:
                events.append(line)
    assert len(events) == 4 and "[DONE]" not in events[-1]

    # Non-streamed: closed without a response.
    with pytest.raises(requests.exceptions.ConnectionError):
        s.fresh_post("/v1/chat/completions", chat_body(max_tokens=10))
    st = s.wait_stats(lambda st: st["failed"] == 3 and st["in_flight"] == 0)
    assert st["completed"] == 0


def test_cancel_on_client_disconnect(sim_factory):
    s = sim_factory("--gen-tps", 20, "--prompt-tps", 0, "--slots", 1)
    body = json.dumps({"model": "sim-small", "messages": [{"role": "user", "content": "x"}],
                       "options": {"num_predict": 100}}).encode()
    req = (b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body)) + body
    # A running request and a queued one; both clients hang up.
    running = socket.create_connection(("127.0.0.1", s.port), timeout=T)
    running.sendall(req)
    got = b""
    while got.count(b"tok") < 2:
        chunk = running.recv(4096)
        assert chunk
        got += chunk
    queued = socket.create_connection(("127.0.0.1", s.port), timeout=T)
    queued.sendall(req)
    s.wait_stats(lambda st: st["queued"] == 1 and st["in_flight"] == 1)
    queued.close()
    s.wait_stats(lambda st: st["cancelled"] == 1 and st["queued"] == 0)
    running.close()
    st = s.wait_stats(lambda st: st["cancelled"] == 2 and st["in_flight"] == 0)
    assert st["completed"] == 0
    assert st["generated_tokens"] < 20  # generation stopped early
    # The slot is free again.
    r = s.post("/api/generate", {"model": "sim-small", "prompt": "x", "stream": False, "options": {"num_predict": 1}})
    assert r.status_code == 200


def test_control_endpoint(sim_factory):
    s = sim_factory("--gen-tps", 0, "--prompt-tps", 0)
    assert s.post("/v1/chat/completions", chat_body(max_tokens=1)).status_code == 200
    j = s.post("/sim/control", {"fail": "refuse", "fail_rate": 1.0}).json()
    assert j["settings"]["fail"] == "refuse"
    with pytest.raises(requests.exceptions.ConnectionError):
        s.fresh_post("/v1/chat/completions", chat_body(max_tokens=1))
    s.post("/sim/control", {"fail": "hang"})
    with pytest.raises(requests.exceptions.ReadTimeout):
        s.fresh_post("/api/generate", {"model": "sim-small", "prompt": "x"}, timeout=0.3)
    s.post("/sim/control", {"fail": "none", "latency_ms": 200, "gen_tps": 100})
    t0 = time.monotonic()
    r = s.post("/v1/chat/completions", chat_body(max_tokens=5))
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and 0.23 <= elapsed < 1.5  # 200 ms + 4 * 10 ms
    got = s.get("/sim/control").json()["settings"]
    assert got["latency_ms"] == 200 and got["gen_tps"] == 100 and got["fail"] == "none"
    assert s.post("/sim/control", {"fail": "explode"}).status_code == 400
    assert s.post("/sim/control", "{nope").status_code == 400
    assert s.post("/sim/reset").json() == {"ok": True}
    assert s.stats()["requests"] == 0
