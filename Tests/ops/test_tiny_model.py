"""llama-server serves the tiny random-weight model (tools/make-tiny-model.sh).

Env: LLAMA_BIN_DIR (holds llama-server; tools/build-llama.sh prints it) and TINY_GGUF
(tools/make-tiny-model.sh prints it). Without them the default cache locations are tried,
and the test is skipped when nothing is there (building takes minutes; not done here).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("MESHD_CACHE") or Path.home() / ".cache" / "meshd")
DEFAULT_BIN = CACHE / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp" / "build" / "bin"
DEFAULT_GGUF = CACHE / "models" / "meshd-tiny.gguf"
STARTUP_TIMEOUT = 60.0
REQUEST_TIMEOUT = 60.0
MAX_TOKENS = 16


def _paths() -> tuple[Path, Path]:
    bin_dir = Path(os.environ.get("LLAMA_BIN_DIR") or DEFAULT_BIN)
    gguf = Path(os.environ.get("TINY_GGUF") or DEFAULT_GGUF)
    server = bin_dir / "llama-server"
    if not os.access(server, os.X_OK):
        pytest.skip(f"no llama-server in {bin_dir} (set LLAMA_BIN_DIR; tools/build-llama.sh builds it)")
    if not gguf.is_file():
        pytest.skip(f"no model at {gguf} (set TINY_GGUF; tools/make-tiny-model.sh writes it)")
    return server, gguf


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | None = None, timeout: float = REQUEST_TIMEOUT):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=timeout)


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.proc, self.base, self.log = proc, base, log

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    exe, gguf = _paths()
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [str(exe), "-m", str(gguf), "-c", "512", "--host", "127.0.0.1", "--port", str(port),
             "-np", "1", "--threads", "1"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
    srv = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited with {proc.returncode}:\n{srv.log_tail()}")
            try:
                with _request(srv.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 503 while loading
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server not healthy after {STARTUP_TIMEOUT}s:\n{srv.log_tail()}")
            time.sleep(0.1)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


CHAT = {
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": MAX_TOKENS,
    "ignore_eos": True,  # random weights may sample </s> at once; we want tokens
    "seed": 42,
}


def test_chat_completion(server: Server) -> None:
    with _request(server.base + "/v1/chat/completions", CHAT) as r:
        body = json.load(r)
    assert body["object"] == "chat.completion", body
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert 0 < body["usage"]["completion_tokens"] <= MAX_TOKENS
    assert body["usage"]["prompt_tokens"] > 0


def test_chat_completion_stream(server: Server) -> None:
    req = dict(CHAT, stream=True, stream_options={"include_usage": True})
    chunks, done = [], False
    with _request(server.base + "/v1/chat/completions", req) as r:
        assert r.headers.get_content_type() == "text/event-stream"
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                break
            chunks.append(json.loads(data))
    assert done, chunks[-3:]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    # llama-server opens with a role-only delta and, with include_usage, closes with a
    # choices-less chunk carrying usage (and llama.cpp's own "timings").
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    assert chunks[-1]["choices"] == [] and "usage" in chunks[-1]
    finish = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert finish == ["length"], finish
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text, chunks[:3]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage and 0 < usage[-1]["completion_tokens"] <= MAX_TOKENS, chunks[-2:]
