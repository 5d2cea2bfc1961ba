"""A forwarded stream whose serving node goes silent without being lost (frozen shorter than the
heartbeat expiry, a credit lost) ends with an error event after `timeouts.between_chunks_ms` of
silence instead of hanging until the peer is declared lost (found by the chaos suite, issue 17).
A client that is merely slow to read is not cut off: the silence counts only while the node waits
for the next chunk."""
from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx

from meshd_e2e import ProcessPool
from mesh_helpers import MeshBinaries, MeshNode, chat, sim_entry, start_sim

MODEL = "slow-model"


def test_silent_serving_node_ends_the_stream_with_an_error(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    sim = start_sim(mpool, mbins, "--models", MODEL, "--gen-tps", 10)
    timeouts = {"timeouts": {"connect_ms": 1000, "between_chunks_ms": 2000}}
    # Expiry 10 heartbeats: a 6 s freeze does not make B lost.
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[sim_entry(sim)], dead_after_missed=10, extra=timeouts)
    a = MeshNode(mpool, mbins, "A", secret=secret, peers=[b], dead_after_missed=10, extra=timeouts)
    a.wait_sees({"B": "up"}, models={"B": [MODEL]})

    # A slow reader first: it pauses 4 s (twice the silence limit) and still gets the whole stream.
    with httpx.Client(base_url=a.url, timeout=30, trust_env=False) as cl:
        with cl.stream("POST", "/v1/chat/completions", json=chat(MODEL, stream=True, max_tokens=30)) as r:
            assert r.headers["x-meshd-node"] == "B"
            lines = []
            for i, line in enumerate(r.iter_lines()):
                if i == 2:
                    time.sleep(4)
                lines.append(line)
    data = [ln for ln in lines if ln.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and not any('"error"' in ln for ln in data), data[-3:]

    # Now B's meshd freezes mid-stream: A ends the stream with an error event about 2 s later.
    ended: dict[str, float | str] = {}
    frozen_at: list[float] = []

    def stream() -> None:
        with httpx.Client(base_url=a.url, timeout=30, trust_env=False) as cl:
            with cl.stream("POST", "/v1/chat/completions", json=chat(MODEL, stream=True, max_tokens=100)) as r:
                got = []
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        got.append(line)
                        if len(got) == 5:
                            b.proc.signal(signal.SIGSTOP)
                            frozen_at.append(time.monotonic())
        ended["at"] = time.monotonic()
        ended["last"] = got[-1]

    t = threading.Thread(target=stream)
    t.start()
    t.join(15)
    b.proc.signal(signal.SIGCONT)
    assert not t.is_alive(), "the stream hung while B was frozen"
    took = float(ended["at"]) - frozen_at[0]
    print(f"stream ended {took:.2f} s after B froze (between_chunks_ms 2000)")
    assert 1.5 <= took <= 4.5, took
    last = json.loads(str(ended["last"])[len("data: "):])
    assert "error" in last and "sent nothing for 2000 ms" in last["error"]["message"], last
    assert "forwarded response stalled" in a.log()
    # B thawed is still a member and serves again.
    r = a.post("/v1/chat/completions", json=chat(MODEL, max_tokens=2), timeout=20)
    assert r.status_code == 200 and r.headers["x-meshd-node"] == "B"
