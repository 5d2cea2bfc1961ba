"""Hostile frames from a client that holds the mesh key (a compromised or buggy member): a raw
pyzmq DEALER with the keypair derived from the secret file sends malformed messages, then a flood,
to A's mesh port. A must not crash, must keep serving HTTP and forwarding to B all along, and must
count every reject in its log."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import zmq

from meshd_e2e import ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat, count_lines, curve_keypair, metric, sim_entry, start_sim

MODEL = "b-model"
V = 1  # protocol version
REJECT_LINES = ("rejected mesh frame", "malformed mesh message")
REJECT_METRIC = "meshd_mesh_rejected_frames_total"

HELLO, STATE, REQUEST, HEAD, CHUNK, END, ERROR, CANCEL, CREDIT, RESPONSE = 0x01, 0x02, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17
CACHE_DELTA, CACHE_SNAPSHOT_REQUEST = 0x30, 0x31


def pre(t: int, version: int = V) -> bytes:
    return bytes([version, t])


# Messages the codec (or the loop's size check) must reject and count, by name.
MALFORMED: dict[str, list[bytes]] = {
    "1 frame": [pre(HELLO)],
    "empty frame": [b""],
    "5 frames": [pre(STATE), b'{"id":"Z"}', b"", b"", b""],
    "65 frames": [pre(CHUNK)] + [b"x"] * 64,
    "short prelude": [b"\x01", b"{}"],
    "long prelude": [b"\x01\x02\x03", b"{}"],
    "bad version byte": [pre(HELLO, version=0x07), b'{"node":"Z","name":"Z","proto":1}'],
    "version 0": [pre(STATE, version=0), b'{"id":"Z"}'],
    "unknown type": [pre(0x7F), b"{}"],
    "type 0": [pre(0x00), b"{}"],
    "header not JSON": [pre(STATE), b"{not json"],
    "header binary garbage": [pre(REQUEST), bytes(range(256)), b""],
    "header invalid UTF-8": [pre(STATE), b'{"id":"\xff\xfe"}'],
    "header JSON array": [pre(STATE), b'[{"id":"Z"}]'],
    "header JSON string": [pre(HELLO), b'"hello"'],
    "header JSON number": [pre(CREDIT), b"42"],
    "header empty": [pre(STATE), b""],
    "header nested 100k deep": [pre(STATE), b"[" * 100_000 + b"]" * 100_000],
    "hello missing proto": [pre(HELLO), b'{"node":"Z","name":"Z"}'],
    "state missing id": [pre(STATE), b'{"name":"Z","seq":1}'],
    "state id not a string": [pre(STATE), b'{"id":7}'],
    "state with wrong types": [pre(STATE), b'{"id":"Z","seq":"soon","engines":7}'],
    "request without req": [pre(REQUEST), b'{"path":"/v1/chat/completions"}', b"{}"],
    "chunk without req": [pre(CHUNK), b"{}", b"data"],
    "credit req not a string": [pre(CREDIT), b'{"req":1,"bytes":5}'],
    "header > 1 MiB": [pre(STATE), b'{"id":"' + b"z" * ((1 << 20) + 16) + b'"}'],
    "payload > max": [pre(REQUEST), b'{"req":"h1","path":"/v1/chat/completions"}', b"\0" * ((8 << 20) + 16)],
    "cache delta without n": [pre(CACHE_DELTA), b'{"node":"Z","engines":[]}'],
    "cache delta, counts over the payload": [pre(CACHE_DELTA), b'{"node":"Z","n":1,"engines":[{"id":"e","count":5}]}', b"\0" * 9],
    "cache delta, unknown tier": [pre(CACHE_DELTA), b'{"node":"Z","n":1,"engines":[{"id":"e","count":1}]}', b"\0" * 8 + b"\x07"],
    "frames sum > max": [pre(REQUEST), b'{"req":"h2","path":"/v1/chat/completions"}', b"\0" * (5 << 20), b"\0" * (5 << 20)],
}

# Well-formed but meaningless or hostile in content: ignored, never fatal (not counted as rejects).
ODD: dict[str, list[bytes]] = {
    "reply for an unknown request": [pre(HEAD), b'{"req":"nope","status":200,"headers":[]}'],
    "chunk for an unknown request": [pre(CHUNK), b'{"req":"nope"}', b"data"],
    "end for an unknown request": [pre(END), b'{"req":"nope"}'],
    "whole response for an unknown request": [pre(RESPONSE), b'{"req":"nope","status":200,"headers":[]}', b"data"],
    "whole response with junk fields": [pre(RESPONSE), b'{"req":"nope","status":"x","headers":7}'],
    "error for an unknown request": [pre(ERROR), b'{"req":"nope","status":500,"message":"x"}'],
    "cancel of an unknown request": [pre(CANCEL), b'{"req":"nope"}'],
    "credit, negative": [pre(CREDIT), b'{"req":"nope","bytes":-99999999999}'],
    "credit, huge": [pre(CREDIT), b'{"req":"nope","bytes":1e308}'],
    "hello claiming to be A": [pre(HELLO), b'{"node":"A","name":"A","proto":1}'],
    "state claiming to be A": [pre(STATE), b'{"id":"A"}'],
    "request with bad headers": [pre(REQUEST), b'{"req":"odd-1","path":"/v1/chat/completions","headers":[1,[2],"x",[null,null]]}', b"{"],
    "request for an unknown path": [pre(REQUEST), b'{"req":"odd-2","path":"/../../etc/passwd"}', b""],
}

# A single frame over ZMQ_MAXMSGSIZE: libzmq drops the connection before meshd sees it.
OVERSIZED = [pre(REQUEST), b'{"req":"h3","path":"/v1/chat/completions"}', b"\0" * (10 << 20)]


class HostileSetup:
    def __init__(self, pool: ProcessPool, bins: MeshBinaries, secret: Path) -> None:
        self.secret = secret
        self.sim_b = start_sim(pool, bins, "--models", MODEL)
        self.b = MeshNode(pool, bins, "B", secret=secret, engines=[sim_entry(self.sim_b)])
        self.a = MeshNode(pool, bins, "A", secret=secret, peers=[self.b])
        self.a.wait_sees({"B": "up"}, models={"B": [MODEL]})


@pytest.fixture(scope="module")
def mesh(module_mpool: ProcessPool, mbins: MeshBinaries, module_secret: Path) -> HostileSetup:
    return HostileSetup(module_mpool, mbins, module_secret)


class HTTPProbe:
    """Requests through A to B in a loop (bounded) while the attack runs; every answer must be 200 from B."""

    def __init__(self, a: MeshNode, limit: int = 400) -> None:
        self.a = a
        self.limit = limit
        self.results: list[Any] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self) -> None:
        with self.a.client(timeout=10) as c:
            for _ in range(self.limit):
                if self.stop.is_set():
                    return
                try:
                    r = c.post("/v1/chat/completions", json=chat(MODEL))
                    self.results.append((r.status_code, r.headers.get("x-meshd-node"), r.headers.get("x-meshd-via")))
                except httpx.HTTPError as e:
                    self.results.append(repr(e))
                time.sleep(0.02)

    def finish(self) -> list[Any]:
        self.stop.set()
        self.thread.join(20)
        return self.results


def dealer(ctx: zmq.Context, mesh: HostileSetup) -> zmq.Socket:
    pub, sec = curve_keypair(mesh.secret)
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.sndtimeo = 2000
    s.rcvtimeo = 2000
    s.sndhwm = 10_000
    s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, pub
    s.connect(f"tcp://{mesh.a.mesh_endpoint}")
    return s


def rejects(a: MeshNode) -> int:
    return count_lines(a.log(), *REJECT_LINES)


def check_a(mesh: HostileSetup, what: str) -> None:
    assert mesh.a.alive(), f"A died after: {what}"
    r = mesh.a.post("/v1/chat/completions", json=chat(MODEL))
    assert (r.status_code, r.headers.get("x-meshd-node"), r.headers.get("x-meshd-via")) == (200, "B", "A"), (what, r.text)


def answered(s: zmq.Socket, req: str, timeout: float = 3) -> dict[str, Any]:
    """Sends a valid request and returns the response head A sends back."""
    s.send_multipart([pre(REQUEST), json.dumps({"req": req, "path": "/v1/chat/completions", "from": "raw",
                                                "headers": []}).encode(), json.dumps(chat(MODEL)).encode()])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.poll(100):
            f = s.recv_multipart()
            if f[0] in (pre(HEAD), pre(ERROR)) and json.loads(f[1]).get("req") == req:
                return json.loads(f[1])
    raise AssertionError(f"A did not answer request {req} within {timeout}s")


def test_malformed_frames_are_rejected_and_counted(mesh: HostileSetup) -> None:
    ctx = zmq.Context()
    probe = HTTPProbe(mesh.a)
    try:
        s = dealer(ctx, mesh)
        answered(s, "hello-1")  # connected and accepted
        before = rejects(mesh.a)
        metric_before = metric(mesh.a, REJECT_METRIC)
        for name, frames in MALFORMED.items():
            s.send_multipart(frames)
            check_a(mesh, name)
        wait_until(lambda: rejects(mesh.a) >= before + len(MALFORMED), 5,
                   what=f"A to log {len(MALFORMED)} rejects (has {rejects(mesh.a) - before})")
        for name, frames in ODD.items():
            s.send_multipart(frames)
            check_a(mesh, name)
        s.send_multipart(OVERSIZED)
        check_a(mesh, "a frame over ZMQ_MAXMSGSIZE")
        # libzmq reconnects the dealer by itself; A still answers a member afterwards.
        head = answered(s, "after-1", timeout=5)
        assert head["status"] in (404, 503), head
        s.close()
    finally:
        results = probe.finish()
        ctx.term()
    assert results and all(r == (200, "B", "A") for r in results), [r for r in results if r != (200, "B", "A")][:5]
    counted = rejects(mesh.a) - before
    metered = metric(mesh.a, REJECT_METRIC) - metric_before
    print(f"\n[mesh] hostile frames: {len(MALFORMED)} malformed sent, {counted} rejects logged by A, "
          f"{metered:.0f} counted in {REJECT_METRIC}; {len(results)} HTTP requests through A meanwhile, all 200")
    assert counted >= len(MALFORMED)
    assert metered >= len(MALFORMED)
    assert set(mesh.a.nodes()) == {"A", "B"}, mesh.a.nodes()


def test_flood_is_absorbed(mesh: HostileSetup) -> None:
    n = 5000
    kinds = [MALFORMED[k] for k in ("1 frame", "bad version byte", "unknown type", "header JSON array",
                                    "state missing id", "request without req", "header not JSON")]
    ctx = zmq.Context()
    probe = HTTPProbe(mesh.a)
    try:
        s = dealer(ctx, mesh)
        answered(s, "pre-flood")
        before = rejects(mesh.a)
        metric_before = metric(mesh.a, REJECT_METRIC)
        t0 = time.monotonic()
        sent = 0
        for i in range(n):
            if time.monotonic() - t0 > 5:
                break
            try:
                s.send_multipart(kinds[i % len(kinds)])
                sent += 1
            except zmq.Again:
                time.sleep(0.01)
        send_s = time.monotonic() - t0
        wait_until(lambda: rejects(mesh.a) >= before + sent, 15, interval=0.1,
                   what=f"A to count {sent} rejects (has {rejects(mesh.a) - before})")
        absorbed_s = time.monotonic() - t0
        check_a(mesh, "the flood")
        head = answered(s, "post-flood")
        assert head["status"] in (404, 503)
        s.close()
    finally:
        results = probe.finish()
        ctx.term()
    rss_kib = int(next(line.split()[1] for line in Path(f"/proc/{mesh.a.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:")))
    print(f"\n[mesh] flood: {sent} bad messages sent in {send_s:.2f}s, all counted by A after {absorbed_s:.2f}s; "
          f"{len(results)} HTTP requests through A meanwhile; A RSS {rss_kib // 1024} MiB")
    assert sent == n and send_s <= 5
    assert metric(mesh.a, REJECT_METRIC) - metric_before >= sent
    assert results and all(r == (200, "B", "A") for r in results), [r for r in results if r != (200, "B", "A")][:5]
    assert mesh.a.nodes()["B"]["state"] == "up"


def cache_delta(n: int, entries: list[tuple[int, int]], snapshot: bool = False, node: str = "Y") -> list[bytes]:
    header = {"node": node, "instance": "raw-1", "n": n, "snapshot": snapshot, "engines": [{"id": "e", "count": len(entries)}]}
    payload = b"".join(h.to_bytes(8, "little") + bytes([t]) for h, t in entries)
    return [pre(CACHE_DELTA), json.dumps(header).encode(), payload]


def snapshot_asked(s: zmq.Socket, timeout: float = 3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.poll(100):
            f = s.recv_multipart()
            if f[0] == pre(CACHE_SNAPSHOT_REQUEST):
                assert json.loads(f[1]) == {"node": "A"}
                return True
    return False


def test_cache_deltas_out_of_order_or_corrupted_are_repaired_by_a_snapshot(mesh: HostileSetup) -> None:
    ctx = zmq.Context()
    try:
        s = dealer(ctx, mesh)
        answered(s, "cache-1")
        before = metric(mesh.a, REJECT_METRIC)
        # A first delta from a peer A holds no snapshot of: A asks for one.
        s.send_multipart(cache_delta(1, [(1, 2)]))
        assert snapshot_asked(s)
        # The snapshot, then the next delta in order: no question.
        s.send_multipart(cache_delta(1, [(1, 2), (2, 2)], snapshot=True))
        s.send_multipart(cache_delta(2, [(3, 2)]))
        assert not snapshot_asked(s, timeout=0.5)
        # A corrupted delta is rejected and counted; the next one shows the gap: a snapshot is asked.
        bad = cache_delta(3, [(4, 2)])
        bad[2] = bad[2][:-1]
        s.send_multipart(bad)
        s.send_multipart(cache_delta(4, [(5, 2)]))
        assert snapshot_asked(s)
        wait_until(lambda: metric(mesh.a, REJECT_METRIC) >= before + 1, 5, what="the corrupted delta counted")
        asked = [l for l in mesh.a.get("/metrics").text.splitlines() if l.startswith('meshd_cache_snapshots_total{kind="asked"}')]
        assert asked and float(asked[0].split()[-1]) >= 2, asked
        s.close()
    finally:
        ctx.term()
    check_a(mesh, "cache deltas")
