"""A response larger than one mesh message may carry (8 MiB payload limit, 9 MiB ZeroMQ message limit)
crosses the mesh intact: the serving node splits it, the requester reassembles it, and the link
between the two nodes survives."""
from __future__ import annotations

import time
from pathlib import Path

from meshd_e2e import ProcessPool
from mesh_helpers import MeshBinaries, MeshNode, sim_entry, start_sim

MODEL = "b-model"


def test_response_over_the_message_limits(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    sim_b = start_sim(mpool, mbins, "--models", MODEL, "--embedding-dim", 4096)
    # Generous expiry: this test is about payload sizes, not about a busy debug build's heartbeats.
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[sim_entry(sim_b)], dead_after_missed=10)
    a = MeshNode(mpool, mbins, "A", secret=secret, peers=[b], dead_after_missed=10)
    a.wait_sees({"B": "up"}, models={"B": [MODEL]})
    body = {"model": MODEL, "input": [f"text {i}" for i in range(240)]}  # about 12 MB of JSON
    direct = b.post("/v1/embeddings", json=body, timeout=60)
    assert direct.status_code == 200
    assert len(direct.content) > 10 << 20, len(direct.content)
    t0 = time.monotonic()
    r = a.post("/v1/embeddings", json=body, timeout=60)
    took = time.monotonic() - t0
    assert (r.status_code, r.headers.get("x-meshd-node"), r.headers.get("x-meshd-via")) == (200, "B", "A"), r.text[:300]
    assert len(r.content) == len(direct.content)
    assert r.json()["data"] == direct.json()["data"]
    print(f"\n[mesh] {len(r.content) / 1e6:.1f} MB response forwarded B -> A in {took:.2f}s")
    assert a.nodes()["B"]["state"] == "up"
    assert "peer lost" not in a.log() and "rejected mesh frame" not in a.log()
