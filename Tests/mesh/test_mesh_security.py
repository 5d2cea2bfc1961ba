"""Security: only holders of the mesh secret join. A node D with another secret, peered to A, never
shows up anywhere and never receives a request, even for a model only it has; A logs the refusal.
Raw ZeroMQ clients with a random CURVE keypair (knowing A's public key) or without CURVE get nothing."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import zmq

from meshd_e2e import ProcessPool
from mesh_helpers import (MeshBinaries, MeshNode, chat, count_lines, curve_keypair, make_secret, metric,
                          ollama_chat, sim_entry, start_sim)

B_MODEL = "b-model"
D_MODEL = "d-only"


class Intruded:
    def __init__(self, pool: ProcessPool, bins: MeshBinaries, secret: Path, other_secret: Path) -> None:
        self.secret = secret
        self.sim_b = start_sim(pool, bins, "--models", B_MODEL)
        self.sim_d = start_sim(pool, bins, "--models", D_MODEL)
        self.b = MeshNode(pool, bins, "B", secret=secret, engines=[sim_entry(self.sim_b)])
        self.a = MeshNode(pool, bins, "A", secret=secret, peers=[self.b])
        self.d = MeshNode(pool, bins, "D", secret=other_secret, engines=[sim_entry(self.sim_d)], peers=[self.a])
        self.a.wait_sees({"A": "up", "B": "up"}, models={"B": [B_MODEL]})
        # Several heartbeats and reconnect attempts of D.
        time.sleep(2.5)


@pytest.fixture(scope="module")
def mesh(module_mpool: ProcessPool, mbins: MeshBinaries, module_secret: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Intruded:
    other = make_secret(mbins, tmp_path_factory.mktemp("other-secret") / "mesh.secret")
    assert other.read_text() != module_secret.read_text()
    return Intruded(module_mpool, mbins, module_secret, other)


def test_other_secret_never_joins(mesh: Intruded) -> None:
    for n in (mesh.a, mesh.b):
        view = n.meshctl_nodes()
        assert set(view) == {"A", "B"}, (n.name, view)
        assert all(v["state"] == "up" for v in view.values())
    assert set(mesh.d.meshctl_nodes()) == {"D"}
    ids = [m["id"] for m in mesh.a.get("/v1/models").json()["data"]]
    assert ids == [B_MODEL]


def test_other_secret_never_gets_requests(mesh: Intruded) -> None:
    r = mesh.a.post("/v1/chat/completions", json=chat(D_MODEL))
    assert r.status_code in (404, 503), r.text
    assert "error" in r.json()
    r = mesh.a.post("/api/chat", json=ollama_chat(D_MODEL, stream=True))
    assert r.status_code in (404, 503), r.text
    r = mesh.a.post("/api/generate", json={"model": D_MODEL, "prompt": "x"})
    assert r.status_code in (404, 503)
    # D cannot use the mesh either.
    r = mesh.d.post("/v1/chat/completions", json=chat(B_MODEL))
    assert r.status_code in (404, 503)
    assert mesh.sim_d.stats()["requests"] == 0
    # ...while A forwards to B as usual.
    r = mesh.a.post("/v1/chat/completions", json=chat(B_MODEL))
    assert (r.status_code, r.headers.get("x-meshd-node"), r.headers.get("x-meshd-via")) == (200, "B", "A")
    assert mesh.sim_d.stats()["requests"] == 0


def test_refusal_is_logged(mesh: Intruded) -> None:
    a_log = mesh.a.log()
    refusals = count_lines(a_log, "mesh peer refused")
    assert refusals >= 1, a_log[-3000:]
    assert count_lines(mesh.d.log(), "handshake with peer failed", "mesh handshake failed") >= 1
    # Not a log flood: reconnects back off (at most 5 s apart).
    assert refusals < 200, refusals
    failures = metric(mesh.a, "meshd_mesh_auth_failures_total")
    assert failures >= 1
    assert metric(mesh.a, "meshd_mesh_peers") == 1  # B only
    print(f"\n[mesh] A logged {refusals} refusals of D so far; meshd_mesh_auth_failures_total {failures:.0f}")


def _raw_dealer(ctx: zmq.Context, endpoint: str, *, public: bytes | None = None, secret: bytes | None = None,
                server: bytes | None = None) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.sndtimeo = 1000
    s.rcvtimeo = 1000
    if server is not None:
        s.curve_publickey = public
        s.curve_secretkey = secret
        s.curve_serverkey = server
    s.connect(f"tcp://{endpoint}")
    return s


def _probe(s: zmq.Socket, join: bool = True) -> list[list[bytes]]:
    """Sends a hello and a state (when `join`) and a request as a member would; returns whatever comes
    back in 1.5 s."""
    hello = {"node": "X", "name": "X", "proto": 1, "endpoint": "127.0.0.1:9"}
    state = {"id": "X", "name": "X", "proto": 1, "meshEndpoint": "127.0.0.1:9", "httpEndpoint": "127.0.0.1:9",
             "seq": 1, "draining": False, "vramTotalBytes": 0, "vramFreeBytes": 0, "gpuSummary": "cpu",
             "engines": [], "knownPeers": []}
    req = {"req": "x-1", "path": "/v1/chat/completions", "from": "X", "headers": []}
    messages = [[b"\x01\x01", json.dumps(hello).encode()], [b"\x01\x02", json.dumps(state).encode()]] if join else []
    messages.append([b"\x01\x10", json.dumps(req).encode(), json.dumps(chat(B_MODEL)).encode()])
    for frames in messages:
        try:
            s.send_multipart(frames)
        except zmq.Again:
            pass  # not even connected: nothing to send to
    got = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        if s.poll(100):
            got.append(s.recv_multipart())
    return got


def test_raw_client_with_random_key_gets_nothing(mesh: Intruded) -> None:
    a_pub, _ = curve_keypair(mesh.secret)
    pub, sec = zmq.curve_keypair()
    ctx = zmq.Context()
    try:
        s = _raw_dealer(ctx, mesh.a.mesh_endpoint, public=pub, secret=sec, server=a_pub)
        assert _probe(s) == []
        s.close()
        # No CURVE at all.
        s = _raw_dealer(ctx, mesh.a.mesh_endpoint)
        assert _probe(s) == []
        s.close()
    finally:
        ctx.term()
    time.sleep(0.3)
    log = mesh.a.log()
    assert count_lines(log, "ZAP refused a client") >= 1 and pub.decode() in log, log[-3000:]
    assert count_lines(log, "mechanism mismatch", "handshake aborted") >= 1, log[-3000:]
    assert "X" not in mesh.a.nodes() and "X" not in mesh.b.nodes()
    assert mesh.sim_b.stats()["requests"] <= 1  # only the forwarded request of the test above


def test_member_key_is_answered(mesh: Intruded) -> None:
    """Control for the test above: the same probe with the mesh keypair does get an answer."""
    pub, sec = curve_keypair(mesh.secret)
    ctx = zmq.Context()
    try:
        s = _raw_dealer(ctx, mesh.a.mesh_endpoint, public=pub, secret=sec, server=pub)
        got = _probe(s, join=False)  # joining would add a node "X" to the shared mesh
        s.close()
    finally:
        ctx.term()
    heads = [f for f in got if f[0] == b"\x01\x11"]
    assert heads, got
    # A serves forwarded requests on its own engines only: it has none.
    assert json.loads(heads[0][1])["status"] in (404, 503)
