"""The mesh's response messages and flow control, seen from the wire and from a slow HTTP client.

A raw pyzmq DEALER holding the mesh key plays a requesting node against B (a meshd with a simulated
engine): a request that says `whole` gets a non-streamed answer as one `response` message; one that
does not (an older requester) gets head, chunks and end; a streamed answer always comes as head
(announcing the credit window), chunks and end. Without credit B stops at its window; credit moves it
on; every piece is at most half the window. Through A, a client that stops reading a large stream
makes neither A nor B buffer it, and the whole stream still arrives once the client reads again."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from meshd_e2e import ProcessPool
from mesh_helpers import MeshBinaries, MeshNode, chat, curve_keypair, sim_entry, start_sim

MODEL = "b-model"
V = 1
REQUEST, HEAD, CHUNK, END, ERROR, CANCEL, CREDIT, RESPONSE = 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17
WINDOW = 512 * 1024  # MeshServiceConfiguration.creditWindowBytes


def pre(t: int) -> bytes:
    return bytes([V, t])


class WireSetup:
    def __init__(self, pool: ProcessPool, bins: MeshBinaries, secret: Path) -> None:
        self.secret = secret
        self.sim_b = start_sim(pool, bins, "--models", MODEL, "--gen-tps", 0, "--prompt-tps", 0)
        self.b = MeshNode(pool, bins, "B", secret=secret, engines=[sim_entry(self.sim_b)])
        self.a = MeshNode(pool, bins, "A", secret=secret, peers=[self.b])
        self.a.wait_sees({"B": "up"}, models={"B": [MODEL]})


@pytest.fixture(scope="module")
def mesh(module_mpool: ProcessPool, mbins: MeshBinaries, module_secret: Path) -> WireSetup:
    return WireSetup(module_mpool, mbins, module_secret)


@pytest.fixture
def dealer(mesh: WireSetup):
    ctx = zmq.Context()
    pub, sec = curve_keypair(mesh.secret)
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.rcvhwm = 0  # this test is the flow control: libzmq must not hold back on its own
    s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, pub
    s.connect(f"tcp://{mesh.b.mesh_endpoint}")
    yield s
    s.close()
    ctx.term()


def send_request(s: zmq.Socket, req: str, body: dict[str, Any], whole: bool | None) -> None:
    header: dict[str, Any] = {"req": req, "path": "/v1/chat/completions", "from": "raw", "headers": []}
    if whole is not None:
        header["whole"] = whole
    s.send_multipart([pre(REQUEST), json.dumps(header).encode(), json.dumps(body).encode()])


def receive(s: zmq.Socket, req: str, quiet: float, limit: float = 20) -> list[tuple[int, dict[str, Any], bytes]]:
    """Messages for `req` until `quiet` seconds pass without one, or an end/error/response arrives."""
    out: list[tuple[int, dict[str, Any], bytes]] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not s.poll(int(quiet * 1000)):
            return out
        f = s.recv_multipart()
        header = json.loads(f[1])
        if header.get("req") != req:
            continue
        out.append((f[0][1], header, f[2] if len(f) > 2 else b""))
        if f[0][1] in (END, ERROR, RESPONSE):
            return out
    raise AssertionError(f"no end for {req} within {limit}s ({len(out)} messages)")


def headers_of(h: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in h["headers"]}


def test_whole_response_is_one_message(mesh: WireSetup, dealer: zmq.Socket) -> None:
    send_request(dealer, "w1", chat(MODEL, max_tokens=5), whole=True)
    msgs = receive(dealer, "w1", quiet=5)
    assert [m[0] for m in msgs] == [RESPONSE], msgs
    _, header, payload = msgs[0]
    assert header["status"] == 200
    assert headers_of(header)["x-meshd-node"] == "B"
    answer = json.loads(payload)
    assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] == 5
    # Nothing else follows for that request (no chunk, no end).
    assert receive(dealer, "w1", quiet=0.5) == []


def test_requester_without_whole_gets_head_chunks_end(mesh: WireSetup, dealer: zmq.Socket) -> None:
    send_request(dealer, "o1", chat(MODEL, max_tokens=5), whole=None)
    msgs = receive(dealer, "o1", quiet=5)
    kinds = [m[0] for m in msgs]
    assert kinds[0] == HEAD and kinds[-1] == END and set(kinds[1:-1]) == {CHUNK}, kinds
    assert msgs[0][1]["status"] == 200 and msgs[0][1]["window"] == WINDOW
    body = b"".join(m[2] for m in msgs if m[0] == CHUNK)
    assert json.loads(body)["usage"]["completion_tokens"] == 5


def test_errors_come_whole_too(mesh: WireSetup, dealer: zmq.Socket) -> None:
    send_request(dealer, "e1", chat("no-such-model"), whole=True)
    msgs = receive(dealer, "e1", quiet=5)
    assert [m[0] for m in msgs] == [RESPONSE], msgs
    assert msgs[0][1]["status"] == 404
    assert "no-such-model" in json.loads(msgs[0][2])["error"]["message"]


def test_stream_is_credit_limited(mesh: WireSetup, dealer: zmq.Socket) -> None:
    tokens = 12_000  # ~2 MB of SSE: four windows
    send_request(dealer, "s1", chat(MODEL, stream=True, max_tokens=tokens), whole=True)
    msgs = receive(dealer, "s1", quiet=1.5)
    assert msgs and msgs[0][0] == HEAD and msgs[0][1]["window"] == WINDOW, msgs[:1]
    assert msgs[-1][0] == CHUNK, "B finished a 2 MB stream without any credit"
    first = sum(len(m[2]) for m in msgs if m[0] == CHUNK)
    assert 0 < first <= WINDOW, first
    assert all(len(m[2]) <= WINDOW // 2 for m in msgs if m[0] == CHUNK)

    # Credit for what arrived moves B on; granting as we read gets the whole stream.
    body = bytearray(b"".join(m[2] for m in msgs if m[0] == CHUNK))
    dealer.send_multipart([pre(CREDIT), json.dumps({"req": "s1", "bytes": len(body)}).encode()])
    stalls = 1
    while True:
        more = receive(dealer, "s1", quiet=1.5)
        assert more, f"B stalled after {len(body)} bytes although every byte was credited"
        got = b"".join(m[2] for m in more if m[0] == CHUNK)
        assert len(got) <= WINDOW and all(len(m[2]) <= WINDOW // 2 for m in more if m[0] == CHUNK)
        body += got
        if more[-1][0] == END:
            break
        stalls += 1
        dealer.send_multipart([pre(CREDIT), json.dumps({"req": "s1", "bytes": len(got)}).encode()])
    events = [line for line in body.decode().split("\n") if line.startswith("data: {")]
    content = [e for e in events if json.loads(e[6:])["choices"] and json.loads(e[6:])["choices"][0]["delta"].get("content")]
    assert len(content) == tokens and body.decode().rstrip().endswith("data: [DONE]")
    assert stalls >= 3, f"{len(body)} bytes in {stalls} credit rounds: the window did not hold B back"
    print(f"\n[mesh] {len(body) / 1e6:.1f} MB stream pulled from B by credit in {stalls} rounds of <= {WINDOW} bytes")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_client_through_a_is_not_buffered(mesh: WireSetup) -> None:
    tokens = 120_000  # ~20 MB of SSE
    body = json.dumps(chat(MODEL, stream=True, max_tokens=tokens)).encode()
    port = int(mesh.a.url.rsplit(":", 1)[1])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # a client that really stops reading
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200") and b"x-meshd-via: a" in first.lower(), first[:300]
        a0, b0 = rss_kib(mesh.a.pid), rss_kib(mesh.b.pid)
        time.sleep(3)  # the stream is ~20 MB; B's engine can write it all in this time
        a1, b1 = rss_kib(mesh.a.pid), rss_kib(mesh.b.pid)
        grew_a, grew_b = (a1 - a0) // 1024, (b1 - b0) // 1024
        print(f"\n[mesh] client paused 3 s on a ~20 MB stream: A RSS grew {grew_a} MiB, B {grew_b} MiB")
        assert grew_a < 8 and grew_b < 8, (grew_a, grew_b)
        # Reading again gets the whole stream.
        data = bytearray(first)
        while not data.endswith(b"\r\n0\r\n\r\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        assert b"data: [DONE]" in data[-200:]
        assert data.count(b'"content":"') >= tokens
        print(f"[mesh] then read {len(data) / 1e6:.1f} MB in full")
    finally:
        s.close()
