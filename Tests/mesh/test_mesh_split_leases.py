"""The worker side of splits (issue 13): a head asks a worker's meshd over the mesh for a lease; the
worker runs a llama.cpp RPC server on loopback for it while the lease is renewed, and stops it when the
lease lapses, is released, or meshd itself dies: no orphan rpc-server. A raw pyzmq peer holding the
mesh key plays the head (the wire is the same a meshd head uses); refusals name what differs."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import zmq

from meshd_e2e import ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode, curve_keypair

REQUEST, RESPONSE = 0x10, 0x17


def ask(s: zmq.Socket, req: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    header = {"req": req, "path": path, "from": "head", "headers": [], "whole": True}
    s.send_multipart([bytes([1, REQUEST]), json.dumps(header).encode(), json.dumps(body).encode()])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not s.poll(1000):
            continue
        f = s.recv_multipart()
        h = json.loads(f[1])
        if h.get("req") == req:
            assert f[0][1] == RESPONSE, (f[0], h)
            return h["status"], json.loads(f[2])
    raise AssertionError(f"no answer to {path}")


def listening(port: int) -> list[str]:
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp, IPv4)."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":
            out.append(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def test_lease_runs_a_loopback_rpc_server_until_it_lapses_and_none_outlives_meshd(
        mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[])
    build = wait_until(lambda: b.meshctl_nodes()["B"].get("llama_build"), 15, what="B's llama.cpp build")
    assert b.meshctl_nodes()["B"]["rpc_server"] is True
    ctx = zmq.Context()
    pub, sec = curve_keypair(secret)
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, pub
    s.connect(f"tcp://{b.mesh_endpoint}")
    try:
        lease = {"split": "s1", "head": "head", "model": "big", "bytes": 64 << 20, "build": build, "ttlSeconds": 3}
        # A head on another llama.cpp build is refused before anything starts, naming both builds.
        status, body = ask(s, "m1", "/_mesh/split/lease", {**lease, "build": "b9-fffffff"})
        assert status == 409 and body["code"] == "build_mismatch", body
        assert "b9-fffffff" in body["error"] and build in body["error"], body

        t0 = time.monotonic()
        status, body = ask(s, "l1", "/_mesh/split/lease", lease)
        assert status == 200, body
        port = body["port"]
        print(f"\n[split] lease granted with its rpc-server listening after {(time.monotonic() - t0) * 1000:.0f} ms")
        # Loopback only: nothing on the LAN reaches an RPC port.
        assert listening(port) == ["127.0.0.1"], listening(port)
        view = json.loads(b.meshctl("splits", "--json").stdout)["leases"]
        assert [(v["split"], v["head"], v["model"], v["state"], v["port"]) for v in view] == [("s1", "head", "big", "serving", port)]
        pid = view[0]["pid"]
        assert alive(pid)
        table = b.meshctl("splits").stdout
        assert "s1" in table and f"127.0.0.1:{port}" in table, table
        # One split at a time: another head is told who holds the node.
        status, body = ask(s, "l2", "/_mesh/split/lease", {**lease, "split": "s2"})
        assert status == 409 and body["code"] == "busy" and "s1" in body["error"], body
        # Renewed for a while, it lives past its ttl...
        for i in range(4):
            time.sleep(1)
            status, body = ask(s, f"r{i}", "/_mesh/split/renew", {"split": "s1"})
            assert status == 200 and body["port"] == port, body
        assert alive(pid)
        # ...and once the head stops renewing, the rpc-server is gone within the ttl (3 s) plus a sweep.
        t_last = time.monotonic()
        gone = wait_until(lambda: not alive(pid) and time.monotonic(), 6, interval=0.05, what="the lapsed lease's rpc-server to exit")
        print(f"[split] rpc-server stopped {gone - t_last:.2f} s after the last renewal (ttl 3 s)")
        assert 2.5 <= gone - t_last <= 4.5
        assert json.loads(b.meshctl("splits", "--json").stdout)["leases"] == []
        status, body = ask(s, "r9", "/_mesh/split/renew", {"split": "s1"})
        assert status == 404 and body["code"] == "unknown", body

        # Released by its head: stopped at once.
        status, body = ask(s, "l3", "/_mesh/split/lease", {**lease, "split": "s3", "ttlSeconds": 60})
        assert status == 200, body
        pid3 = json.loads(b.meshctl("splits", "--json").stdout)["leases"][0]["pid"]
        status, body = ask(s, "x3", "/_mesh/split/release", {"split": "s3"})
        assert status == 200 and not alive(pid3)

        # meshd killed with a lease held: its rpc-server dies with it (no orphan).
        status, body = ask(s, "l4", "/_mesh/split/lease", {**lease, "split": "s4", "ttlSeconds": 60})
        assert status == 200, body
        pid4 = json.loads(b.meshctl("splits", "--json").stdout)["leases"][0]["pid"]
        b.kill9()
        wait_until(lambda: not alive(pid4), 3, interval=0.05, what="the rpc-server to die with meshd")
    finally:
        s.close()
        ctx.term()
