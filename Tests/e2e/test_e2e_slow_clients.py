"""Slow clients (issue 12, point 3): a slowloris of 2,000 half-sent request heads is closed by the
server (http.header_timeout_ms) while normal requests keep being answered, and connections over
http.max_connections get a 503 instead of being accepted and starved.

Only 127.0.0.1; every loop is bounded in count and time."""
from __future__ import annotations

import errno
import json
import re
import resource
import select
import socket
import time
from pathlib import Path

import httpx

from meshd_e2e import Meshd, SimEngine, chat_body, wait_until

MODEL = "sim-a"
SLOW = 2000
HALF_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le"


def raise_nofile(needed: int) -> int:
    """Raises this process' soft open-file limit to the hard one; fails clearly when too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    assert soft >= needed, f"open-file limit {soft} (hard {hard}) is below the {needed} this test needs; raise ulimit -Hn"
    return soft


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def nofile_soft(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-file limit for pid {pid}")


def metric(m: Meshd, name: str) -> float:
    text = m.get("/metrics").raise_for_status().text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} missing from /metrics"
    return float(found.group(1))


def open_half_heads(port: int, count: int, deadline: float) -> tuple[list[socket.socket], list[float]]:
    socks: list[socket.socket] = []
    opened: list[float] = []
    for i in range(count):
        assert time.monotonic() < deadline, f"opening the slow connections took too long ({i} of {count})"
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(HALF_HEAD)
        s.setblocking(False)
        socks.append(s)
        opened.append(time.monotonic())
    return socks, opened


def server_closed(s: socket.socket) -> bool:
    """True when the server closed (EOF or reset); the socket only ever gets EOF from it."""
    try:
        data = s.recv(4096)
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    except OSError as e:
        return e.errno in (errno.ECONNRESET, errno.EPIPE)
    # A 408 or other bytes before the close would also be fine; the close is what counts.
    return data == b""


def watch_closes(socks: list[socket.socket], opened: list[float], until: float) -> list[float | None]:
    """Seconds from each socket's open to the server closing it (None: still open at `until`)."""
    closed_after: list[float | None] = [None] * len(socks)
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN | select.POLLERR | select.POLLHUP)
    remaining = len(socks)
    for _ in range(100_000):  # bounded; each round waits up to 50 ms
        now = time.monotonic()
        if remaining == 0 or now >= until:
            break
        for fd, _ev in poller.poll(50):
            i = by_fd[fd]
            if closed_after[i] is None and server_closed(socks[i]):
                closed_after[i] = time.monotonic() - opened[i]
                poller.unregister(fd)
                remaining -= 1
    return closed_after


def percentile_time(times: list[float | None], fraction: float) -> float | None:
    done = sorted(t for t in times if t is not None)
    k = int(len(times) * fraction + 0.999999) - 1
    return done[k] if 0 <= k < len(done) else None


def chat_ok(m: Meshd) -> None:
    with m.client() as c:
        r = c.post("/v1/chat/completions", json=chat_body(MODEL, stream=False, max_tokens=4))
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.json()["choices"][0]["message"]["content"]


def test_slowloris_is_closed_and_normal_requests_are_served(start_sim, start_meshd) -> None:
    raise_nofile(SLOW + 512)
    sim: SimEngine = start_sim("--models", MODEL, "--gen-tps", 0)
    m: Meshd = start_meshd([{"kind": "openai", "url": sim.url}],
                           http={"header_timeout_ms": 10_000, "max_connections": 4096})
    port = m.port
    chat_ok(m)
    assert nofile_soft(m.proc.pid) >= SLOW + 256, "meshd did not raise its open-file limit"
    rss_before = rss_kb(m.proc.pid)

    t0 = time.monotonic()
    socks, opened = open_half_heads(port, SLOW, deadline=t0 + 60)
    open_took = time.monotonic() - t0
    try:
        rss_with = rss_kb(m.proc.pid)
        # Normal requests are answered while the 2,000 are open (well within the header timeout).
        answered = 0
        for _ in range(12):
            chat_ok(m)
            answered += 1
        with m.client() as c:
            assert c.get("/healthz").status_code == 200
        normal_took = time.monotonic() - t0
        assert normal_took < 9, f"the normal requests took {normal_took:.1f}s; the measurement needs them before 10 s"
        assert metric(m, "meshd_http_connections") >= SLOW, "meshd does not count the slow connections as open"

        closed_after = watch_closes(socks, opened, until=opened[-1] + 25)
    finally:
        for s in socks:
            s.close()

    within = [t for t in closed_after if t is not None and t <= 25]
    wait_until(lambda: metric(m, "meshd_http_connections") < 10, 10, what="meshd to count its connections closed")
    rss_after = rss_kb(m.proc.pid)
    timed_out = metric(m, "meshd_http_connections_timed_out_total")
    p50, p90, p100 = (percentile_time(closed_after, f) for f in (0.5, 0.9, 1.0))
    fmt = lambda t: "n/a" if t is None else f"{t:.2f}s"  # noqa: E731
    print(f"\nslowloris: {SLOW} half heads opened in {open_took:.2f}s; {answered} chats answered meanwhile; "
          f"closed by the server within 25 s: {len(within)}/{SLOW}; after open, 50% closed at {fmt(p50)}, "
          f"90% at {fmt(p90)}, 100% at {fmt(p100)}; fastest {fmt(min(within, default=None))}; "
          f"meshd RSS before {rss_before / 1024:.1f} MB, with {rss_with / 1024:.1f} MB, after {rss_after / 1024:.1f} MB; "
          f"meshd_http_connections_timed_out_total {timed_out:.0f}")
    assert len(within) >= 0.9 * SLOW, f"only {len(within)} of {SLOW} slow connections were closed within 25 s"
    # Not before the header timeout (10 s from accept; connect-to-accept is immediate here).
    assert min(within) >= 9.5, f"a slow connection was closed after {min(within):.2f}s, before the 10 s header timeout"
    assert timed_out >= len(within)
    chat_ok(m)


def read_until_closed(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        if time.monotonic() >= deadline:
            raise AssertionError(f"no close within {timeout}s; got {b''.join(chunks)!r}")
        try:
            b = s.recv(4096)
        except ConnectionResetError:
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def test_connections_over_the_cap_get_503(start_sim, start_meshd) -> None:
    cap = 50
    raise_nofile(cap + 256)
    sim = start_sim("--models", MODEL, "--gen-tps", 0)
    m = start_meshd([{"kind": "openai", "url": sim.url}], http={"max_connections": cap})
    chat_ok(m)
    # The readiness checks' connections are gone before the cap is filled.
    wait_until(lambda: metric(m, "meshd_http_connections") <= 1, 10, what="meshd idle")
    idle = [socket.create_connection(("127.0.0.1", m.port), timeout=5) for _ in range(cap)]
    try:
        raw = b""
        # Until meshd has accepted all of them (bounded: 50 x 0.1 s); a probe accepted before
        # that gets its answer and is closed (Connection: close), freeing its slot again.
        for _ in range(50):
            over = socket.create_connection(("127.0.0.1", m.port), timeout=5)
            over.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw = read_until_closed(over, 5)
            over.close()
            if raw.startswith(b"HTTP/1.1 503"):
                break
            time.sleep(0.1)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), raw
        assert b"Connection: close" in head and b"Content-Type: application/json" in head, head
        err = json.loads(body)["error"]
        assert err["code"] == "too_many_connections" and "http.max_connections" in err["message"], err
        assert f"cap {cap}" in err["message"], err

        # Room again once some of the idle ones close: a normal request succeeds.
        for s in idle[:5]:
            s.close()

        def served() -> bool:
            try:
                chat_ok(m)
                return True
            except (AssertionError, httpx.HTTPError):
                return False

        wait_until(served, 10, what="a chat request after idle connections closed")
        assert metric(m, "meshd_http_connections_refused_total") >= 1
    finally:
        for s in idle:
            s.close()


def test_a_trickled_body_is_cut_by_the_minimum_rate(start_sim, start_meshd) -> None:
    """A slow POST: one body byte every 0.4 s never stalls for http.body_timeout_ms (1 s), but at
    2.5 bytes a second it is far under http.min_body_bytes_per_second (default 500): the server
    closes it about 1 s after its head, while another client is answered."""
    sim = start_sim("--models", MODEL, "--gen-tps", 0)
    m = start_meshd([{"kind": "openai", "url": sim.url}], http={"body_timeout_ms": 1000})
    chat_ok(m)
    before = metric(m, "meshd_http_connections_timed_out_total")
    s = socket.create_connection(("127.0.0.1", m.port), timeout=5)
    try:
        t0 = time.monotonic()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{")
        s.setblocking(False)
        closed_after = None
        for _ in range(25):  # bounded: 25 x 0.4 s
            time.sleep(0.4)
            if server_closed(s):
                closed_after = time.monotonic() - t0
                break
            try:
                s.send(b" ")
            except OSError:
                closed_after = time.monotonic() - t0
                break
        chat_ok(m)
    finally:
        s.close()
    assert closed_after is not None, "a body trickled at 2.5 bytes/s was still open after 10 s"
    assert 0.9 <= closed_after <= 4, f"closed {closed_after:.2f}s after its head"
    assert metric(m, "meshd_http_connections_timed_out_total") == before + 1
