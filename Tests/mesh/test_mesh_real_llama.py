"""The mesh in front of a real llama.cpp llama-server: node A (no engines) forwards to node B, whose
engine is the tiny model served by a real llama-server; the official openai and ollama clients
talk to A, streamed and not."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import ollama
import openai

from meshd_e2e import Binaries, E2EError, LlamaServer, ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode


def test_real_llama_server_behind_a_peer(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    paths = Binaries()
    try:
        llama = LlamaServer(mpool, paths.llama_server_bin(), paths.tiny_model())
    except E2EError as e:
        raise AssertionError(f"a real llama-server is required (tools/build-llama.sh, tools/make-tiny-model.sh): {e}")
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[{"kind": "openai", "url": llama.url}])
    a = MeshNode(mpool, mbins, "A", secret=secret, peers=[b])
    a.wait_sees({"A": "up", "B": "up"}, timeout=15, models={"B": ["meshd-tiny"]})
    # Each node advertises its llama.cpp build and RPC server (for splits); A sees B's over the mesh.
    version = subprocess.run([str(paths.llama_server_bin()), "--version"], capture_output=True, text=True, timeout=20)
    m = re.search(r"build (\d+), commit ([0-9a-f]+)", version.stdout + version.stderr)
    assert m, version.stderr
    build = f"b{m.group(1)}-{m.group(2)}"
    # Both probes run in the background after start: wait for A's own build as well as B's.
    seen = wait_until(lambda: (lambda n: n if all(n.get(x, {}).get("llama_build") for x in "AB") else None)(
        a.meshctl_nodes()), 15, what="A's and B's llama.cpp builds in A's view")
    assert (seen["A"]["llama_build"], seen["B"]["llama_build"]) == (build, build), seen
    assert seen["A"]["rpc_server"] is True and seen["B"]["rpc_server"] is True
    table = a.meshctl("nodes").stdout
    assert f"{build} +rpc" in table, table

    oa = openai.OpenAI(base_url=a.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    raw = oa.chat.completions.with_raw_response.create(
        model="meshd-tiny", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert raw.headers["x-meshd-node"] == "B" and raw.headers["x-meshd-via"] == "A"
    r = raw.parse()
    assert r.choices[0].message.content and r.usage.completion_tokens > 0

    chunks = list(oa.chat.completions.create(model="meshd-tiny", messages=[{"role": "user", "content": "Count."}],
                                             max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    oc = ollama.Client(host=a.url, timeout=60)
    parts = list(oc.chat(model="meshd-tiny", messages=[{"role": "user", "content": "Hi"}], stream=True,
                         options={"num_predict": 8}))
    assert parts[-1].done and parts[-1].eval_count > 0
    assert "".join(p.message.content or "" for p in parts)
