"""A managed llama.cpp engine (`kind: llama.cpp`): meshd starts llama-server itself, restarts it
when it dies, and leaves none behind when it stops."""
from __future__ import annotations

import os
import signal
import time

import ollama
import openai
import pytest

from meshd_e2e import Binaries, E2EError, Meshd, ProcessPool, cmdline, pid_alive, processes_with_arg, wait_until

ALIAS = "meshd-tiny"


@pytest.fixture
def managed(pool: ProcessPool, bins: Binaries) -> Meshd:
    try:
        model, binary = bins.tiny_model(), bins.llama_server_bin()
    except E2EError as e:
        pytest.fail(str(e), pytrace=False)
    engine = {"kind": "llama.cpp", "model": str(model), "alias": ALIAS, "args": ["-t", "1", "-c", "512"],
              "binary": str(binary)}
    return Meshd(pool, bins.meshd_bin(), [engine], name="e2e-managed")


def llama_children(m: Meshd) -> list[int]:
    """meshd's llama-server children (a setpriv wrapper execs into llama-server, same pid)."""
    return [p for p in m.engine_children() if any(a.endswith("llama-server") for a in cmdline(p)[:3])]


def engine_port(m: Meshd) -> int:
    engines = m.admin("/v1/engines").json()
    assert len(engines) == 1 and engines[0]["kind"] == "llama.cpp", engines
    return int(engines[0]["url"].rsplit(":", 1)[1])


def chat_both(m: Meshd) -> None:
    oa = openai.OpenAI(base_url=m.url + "/v1", api_key="unused", timeout=30, max_retries=0)
    r = oa.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0)
    assert r.choices[0].message.content and r.usage and r.usage.completion_tokens > 0
    ol = ollama.Client(host=m.url, timeout=30, trust_env=False)
    c = ol.chat(model=ALIAS, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 6, "temperature": 0})
    assert c.done and c.message.content and (c.eval_count or 0) > 0


def test_managed_engine_serves_restarts_and_stops(managed: Meshd) -> None:
    m = managed
    chat_both(m)

    kids = llama_children(m)
    assert len(kids) == 1, f"one llama-server child, got {[cmdline(k) for k in kids]}"
    first = kids[0]
    port = engine_port(m)
    args = cmdline(first)
    assert "--port" in args and args[args.index("--port") + 1] == str(port), args
    assert args[args.index("--alias") + 1] == ALIAS
    # What llama-server does not tell (the architecture) comes from the GGUF file itself.
    info = m.post("/api/show", json={"model": ALIAS}).json()["model_info"]
    assert info["general.architecture"] == "llama" and info["llama.context_length"] == 512, info

    # Kill the engine: meshd notices, restarts it, and serves again within bounded time.
    os.kill(first, signal.SIGKILL)
    t0 = time.monotonic()
    wait_until(lambda: not pid_alive(first), 5, what="killed llama-server to go away")
    new = wait_until(lambda: [k for k in llama_children(m) if k != first], 20, interval=0.1,
                     what="meshd to start a new llama-server")
    assert len(new) == 1

    def serving() -> bool:
        r = m.post("/v1/chat/completions", json={"model": ALIAS, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        return r.status_code == 200

    wait_until(serving, 20, interval=0.2, what="meshd to serve again after the restart")
    assert time.monotonic() - t0 < 25
    chat_both(m)
    engines = m.admin("/v1/engines").json()
    assert engines[0]["healthy"] is True

    # SIGTERM meshd: it exits 0 and no llama-server of its own survives.
    children = llama_children(m)
    port = engine_port(m)
    m.proc.signal(signal.SIGTERM)
    rc = m.proc.wait(20)
    assert rc == 0, m.fail(f"meshd exit status {rc} after SIGTERM")
    wait_until(lambda: not any(pid_alive(k) for k in children + [first]), 10,
               what="managed llama-server processes to exit with meshd")
    leftovers = [p for p in children if pid_alive(p)]
    assert leftovers == []
    # Found by command line too: nothing serves the managed engine's port any more.
    assert processes_with_arg("--port", str(port), "--alias", ALIAS) == []
