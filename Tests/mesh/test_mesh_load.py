"""Load between heartbeats: while requests start and end, a node sends its peers a small `load`
message (engine load and speeds) instead of its whole state, and the whole state to a peer that does
not say it reads `load` (an older node).

Heartbeats are 10 s here, so anything a peer learns within a second comes from these messages. Two
raw pyzmq peers (a ROUTER that B dials, a DEALER that joins B with a state) stand in for an older
node and a current one, to see which messages B sends each of them."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from meshd_e2e import ProcessPool, free_port, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat, curve_keypair, metric, sim_entry, start_sim

MODEL = "slow"
HELLO, STATE, LOAD = 0x01, 0x02, 0x03
HEARTBEAT_MS = 10_000


def streams(node: MeshNode, n: int, max_tokens: int) -> list[threading.Thread]:
    def one() -> None:
        with node.client(timeout=30) as cl:
            with cl.stream("POST", "/v1/chat/completions", json=chat(MODEL, stream=True, max_tokens=max_tokens)) as r:
                assert r.status_code == 200
                for _ in r.iter_lines():
                    pass

    ts = [threading.Thread(target=one) for _ in range(n)]
    for t in ts:
        t.start()
    return ts


def test_peer_sees_load_between_heartbeats(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    sim = start_sim(mpool, mbins, "--models", MODEL, "--loaded", MODEL, "--gen-tps", 20, "--slots", 4)
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[sim_entry(sim)], heartbeat_ms=HEARTBEAT_MS)
    a = MeshNode(mpool, mbins, "A", secret=secret, peers=[b], heartbeat_ms=HEARTBEAT_MS)
    a.wait_sees({"B": "up"}, models={"B": [MODEL]})
    b.wait_sees({"A": "up"})
    assert a.nodes()["B"]["in_flight"] == 0
    ts = streams(b, 2, 40)  # 2 s each at 20 tokens/s
    t0 = time.monotonic()
    wait_until(lambda: a.nodes()["B"]["in_flight"] == 2, 1.5, interval=0.01, what="A to see B's two requests")
    seen = time.monotonic() - t0
    for t in ts:
        t.join(30)
    t1 = time.monotonic()
    wait_until(lambda: a.nodes()["B"]["in_flight"] == 0, 1.5, interval=0.01, what="A to see B idle again")
    idle = time.monotonic() - t1
    assert a.wait_sees({"B": "up"}, models={"B": [MODEL]})  # the rest of B's state is still there
    assert metric(a, "meshd_mesh_rejected_frames_total") == 0
    print(f"\n[mesh] with {HEARTBEAT_MS} ms heartbeats A saw B busy after {seen * 1000:.0f} ms and idle {idle * 1000:.0f} ms after")


class RawPeer:
    """A peer made of pyzmq sockets: a DEALER to B's ROUTER that joins with a hello and a state, and
    a ROUTER at the state's `meshEndpoint`, which B then dials: B's own messages arrive there. (A
    raw CURVE ROUTER without a ZAP handler admits any client: fine for a test peer.)"""

    def __init__(self, ctx: zmq.Context, secret: Path, b: MeshNode, name: str, accepts_load: bool | None) -> None:
        pub, sec = curve_keypair(secret)
        self.name = name
        self.endpoint = f"127.0.0.1:{free_port()}"
        self.router = ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.router.curve_server = True
        self.router.curve_publickey, self.router.curve_secretkey = pub, sec
        self.router.bind(f"tcp://{self.endpoint}")
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        self.dealer.curve_publickey, self.dealer.curve_secretkey, self.dealer.curve_serverkey = pub, sec, pub
        self.dealer.connect(f"tcp://{b.mesh_endpoint}")
        state: dict[str, Any] = {
            "id": name, "name": name, "proto": 1, "meshEndpoint": self.endpoint, "httpEndpoint": "127.0.0.1:9",
            "seq": 1, "draining": False, "vramTotalBytes": 0, "vramFreeBytes": 0, "gpuSummary": "cpu",
            "engines": [], "knownPeers": [], "instance": name + "-1"}
        if accepts_load is not None:
            state["acceptsLoad"] = accepts_load
        hello = {"node": name, "name": name, "proto": 1, "endpoint": self.endpoint, "instance": name + "-1"}
        self.dealer.send_multipart([bytes([1, HELLO]), json.dumps(hello).encode()])
        self.dealer.send_multipart([bytes([1, STATE]), json.dumps(state).encode()])

    def drain(self, seconds: float) -> list[tuple[int, dict[str, Any]]]:
        """What B sent to the ROUTER during `seconds`: (type, header)."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.router.poll(int(left * 1000) + 1):
                f = self.router.recv_multipart()  # [routing id, prelude, header(, payload)]
                out.append((f[1][1], json.loads(f[2])))
        return out

    def close(self) -> None:
        self.router.close()
        self.dealer.close()


def test_older_peer_gets_whole_states_newer_gets_load(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    sim = start_sim(mpool, mbins, "--models", MODEL, "--loaded", MODEL, "--gen-tps", 20, "--slots", 4)
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[sim_entry(sim)], heartbeat_ms=HEARTBEAT_MS)
    b.wait_sees({"B": "up"}, models={"B": [MODEL]})
    ctx = zmq.Context()
    old = RawPeer(ctx, secret, b, "OLD", None)
    new = RawPeer(ctx, secret, b, "NEW", True)
    try:
        wait_until(lambda: {"OLD", "NEW"} <= set(b.nodes()), 10, what="B to list both raw peers")
        # B dials each from its state and greets it (hello, state): wait for that, then go quiet.
        for p in (old, new):
            wait_until(lambda p=p: STATE in [t for t, _ in p.drain(0.1)], 5, what=f"B's state at {p.name}")
        old.drain(0.3)
        new.drain(0.05)
        ts = streams(b, 2, 20)  # 1 s each
        got_old = old.drain(1.6)
        for t in ts:
            t.join(30)
        got_old += old.drain(0.3)
        got_new = new.drain(0.3)
        # Within a 10 s heartbeat: the older peer followed B's load through whole states only, the
        # newer one through `load` messages (and no whole state).
        old_types = [t for t, _ in got_old]
        new_types = [t for t, _ in got_new]
        assert LOAD not in old_types and old_types.count(STATE) >= 2, old_types
        assert STATE not in new_types and new_types.count(LOAD) >= 2, new_types
        busy = [sum(e["load"]["inFlight"] for e in h["engines"]) for t, h in got_new if t == LOAD]
        assert max(busy) == 2 and busy[-1] == 0, busy
        last = [h for t, h in got_new if t == LOAD][-1]
        assert last["node"] == "B" and last["instance"], last
        assert [e["id"] for e in last["engines"]] == [e["id"] for e in b.admin("GET", "/v1/engines").json()], last
        assert "models" not in last["engines"][0] and "knownPeers" not in last, last
        olds = [h for t, h in got_old if t == STATE]
        assert max(sum(e["load"]["inFlight"] for e in h["engines"]) for h in olds) == 2
        assert all(h["engines"][0]["models"] for h in olds)  # whole states: models and all
    finally:
        old.close()
        new.close()
        ctx.term()
