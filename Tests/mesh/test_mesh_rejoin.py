"""A restarted node sees the mesh as fast as the mesh sees it (found by the chaos suite, issue 17).

A node learns a peer's state only over the peer's own connection to it. While a node is down its
peers' connections to it keep failing and libzmq backs their reconnects off, doubling up to its cap:
with the old 5 s cap a node restarted after a long outage was `up` in every peer's view at once but
saw its peers only up to 5 s later (meshd caps the back-off at one heartbeat now). Four peers, so a
lucky reconnect of one cannot hide a slow one."""
from __future__ import annotations

import time
from pathlib import Path

from meshd_e2e import ProcessPool
from mesh_helpers import MeshBinaries, MeshNode

PEERS = ["A1", "A2", "A3", "A4"]


def test_a_node_restarted_after_a_long_outage_sees_its_peers_within_two_heartbeats(
        mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    b = MeshNode(mpool, mbins, "B", secret=secret)
    peers = [MeshNode(mpool, mbins, name, secret=secret, peers=[b]) for name in PEERS]
    b.wait_sees({p: "up" for p in PEERS}, timeout=15)
    b.kill9()
    for p in peers:
        p.wait_sees({"B": "down"}, timeout=10)
    # Long enough for the peers' reconnect attempts to B to back off to libzmq's old 5 s cap.
    time.sleep(12)
    b.start()
    t0 = time.monotonic()
    for p in peers:
        p.wait_sees({"B": "up"}, timeout=10)
    b.wait_sees({p: "up" for p in PEERS}, timeout=10)
    took = time.monotonic() - t0
    print(f"\n[rejoin] B restarted after a 12 s outage sees its 4 peers up {took:.2f}s after it answered")
    assert took <= 2.5, f"B saw its peers only {took:.2f}s after it was back"
