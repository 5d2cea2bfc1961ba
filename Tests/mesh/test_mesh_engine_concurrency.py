"""How many requests one node keeps open to an engine follows what the engine can run (its slots),
never a hidden constant: 1,000 concurrent streams through one node to a sim engine with 1,200 slots
all run at once and complete in about the time the engine needs. Peak RSS and CPU are recorded
(benches/engine-concurrency.md)."""
from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from pathlib import Path

from meshd_e2e import ProcessPool, render_config, wait_until
from mesh_helpers import MeshBinaries, MeshNode, metric, sim_entry, start_sim

STREAMS = int(os.environ.get("MESHD_CONCURRENCY_STREAMS", "1000"))
# benches/engine_concurrency.sh runs this test against release binaries and sets this.
RELEASE = os.environ.get("MESHD_BENCH_RELEASE") == "1"
TOKENS, TPS = 50, 10  # each stream needs 5 s on the engine


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{key} not in /proc/{pid}/status")


async def one_stream(port: int, i: int, deadline: float) -> tuple[int, int, bool]:
    """A raw HTTP/1.1 streamed chat; returns (status, content chunks, saw [DONE])."""
    body = json.dumps({"model": "sim", "stream": True, "max_tokens": TOKENS,
                       "messages": [{"role": "user", "content": f"stream {i}"}]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(1, deadline - time.monotonic()))
        status = int(head.split(b" ", 2)[1])
        content, done = 0, False
        while True:
            line = await asyncio.wait_for(reader.readline(), max(1, deadline - time.monotonic()))
            if not line:
                break
            if line.startswith(b"data: [DONE]"):
                done = True
            elif line.startswith(b"data: ") and b'"content":"tok' in line:
                content += 1
        return status, content, done
    finally:
        writer.close()


async def all_streams(port: int, n: int, budget: float) -> list[tuple[int, int, bool] | BaseException]:
    deadline = time.monotonic() + budget
    return await asyncio.gather(*(one_stream(port, i, deadline) for i in range(n)), return_exceptions=True)


def test_thousand_concurrent_streams_to_one_engine(mpool: ProcessPool, mbins: MeshBinaries) -> None:
    raise_fd_limit()  # inherited by the engine and meshd started below
    sim = start_sim(mpool, mbins, "--models", "sim", "--loaded", "sim", "--gen-tps", TPS, "--slots", 1200,
                    "--max-tokens", TOKENS)
    node = MeshNode(mpool, mbins, "A", secret=None, engines=[sim_entry(sim)], start=False)
    # 1,000 clients in one Python process on 2 cores (with a debug meshd) can take longer than the
    # 10 s header timeout to write a request after connecting, and meshd then rightly closes them
    # (a reset, seen in CI): this test is about concurrency to the engine, not slow clients.
    node.config["http"]["header_timeout_ms"] = 60_000
    node.config_path.write_text(render_config(node.config))
    node.start()
    wait_until(lambda: node.admin("GET", "/v1/engines").json()[0].get("limit") == 1200, 10,
               what="the engine's 1200 slots as meshd's limit")
    rss0 = vm(node.pid, "VmRSS")
    cpu0 = node.cpu_seconds()
    peak_open = {"engine": 0, "meshd": 0}
    stop = False

    async def watch() -> None:
        while not stop:
            peak_open["engine"] = max(peak_open["engine"], (await asyncio.to_thread(sim.stats))["in_flight"])
            await asyncio.sleep(0.25)

    async def main() -> list[tuple[int, int, bool] | BaseException]:
        nonlocal stop
        w = asyncio.create_task(watch())
        try:
            return await all_streams(node.http_port, STREAMS, 45)
        finally:
            stop = True
            await w

    t0 = time.monotonic()
    results = asyncio.run(main())
    took = time.monotonic() - t0
    cpu = node.cpu_seconds() - cpu0
    hwm, rss1 = vm(node.pid, "VmHWM"), vm(node.pid, "VmRSS")
    timed_out = metric(node, "meshd_http_connections_timed_out_total")
    errors = [r for r in results if isinstance(r, BaseException)]
    bad = [r for r in results if not isinstance(r, BaseException) and r != (200, TOKENS, True)]
    engine_needs = TOKENS / TPS
    chunks = STREAMS * TOKENS
    print(f"\n[concurrency] {STREAMS} streams x {TOKENS} tokens at {TPS} tok/s (engine needs {engine_needs:.1f} s): "
          f"all done in {took:.1f} s; engine saw up to {peak_open['engine']} at once; meshd RSS {rss0 / 2**20:.0f} MB idle, "
          f"peak {hwm / 2**20:.0f} MB, {rss1 / 2**20:.0f} MB after; meshd CPU {cpu:.2f} s = {cpu / chunks * 1e6:.0f} us per chunk, "
          f"{cpu / STREAMS * 1e3:.2f} ms per stream; connections closed by meshd's timeouts: {timed_out:.0f}")
    out = os.environ.get("MESHD_BENCH_OUT")
    if out:
        Path(out).write_text(json.dumps({"streams": STREAMS, "tokens": TOKENS, "tps": TPS, "seconds": round(took, 2),
                                         "engine_peak_open": peak_open["engine"], "rss_idle_mb": round(rss0 / 2**20, 1),
                                         "rss_peak_mb": round(hwm / 2**20, 1), "rss_after_mb": round(rss1 / 2**20, 1),
                                         "cpu_seconds": round(cpu, 2), "cpu_us_per_chunk": round(cpu / chunks * 1e6, 1)}))
    assert not errors, errors[:3]
    assert not bad, bad[:5]
    # Far more than libcurl's old per-host cap of 16 ran at once: with 16 the streams would need
    # 1000 / 16 x 5 s = 5 min. A release build has all 1,000 open together and finishes in ~8 s on 2
    # cores (benches/engine-concurrency.md); the debug build the suite runs is CPU-bound while it
    # dispatches them (~450-550 at once, ~20 s), so the bounds here leave room for that.
    assert peak_open["engine"] >= (0.9 * STREAMS if RELEASE else 0.2 * STREAMS), peak_open
    assert took < engine_needs * (3 if RELEASE else 8), f"{took:.1f} s for streams that need {engine_needs:.1f} s each"
    assert metric(node, "meshd_requests_in_flight") == 0
    assert hwm < 150 * 2**20, f"meshd peak RSS {hwm / 2**20:.0f} MB over the 150 MB target"


def test_requests_over_the_limit_wait_in_meshd_and_show_in_metrics_and_meshctl(mpool: ProcessPool, mbins: MeshBinaries) -> None:
    sim = start_sim(mpool, mbins, "--models", "sim", "--loaded", "sim", "--gen-tps", 20, "--slots", 2)
    # The engine's own queue in meshd (issue 12): the mesh queue, which would hold these requests
    # on the deciding node before any engine (Tests/mesh/test_mesh_queue.py), is off here.
    node = MeshNode(mpool, mbins, "A", secret=None, engines=[sim_entry(sim)], extra={"routing": {"max_queue": 0}})
    wait_until(lambda: node.admin("GET", "/v1/engines").json()[0].get("limit") == 2, 10, what="limit 2 from the engine's slots")

    async def main() -> list[tuple[int, int, bool] | BaseException]:
        task = asyncio.create_task(all_streams(node.http_port, 6, 30))
        # 2 open at the engine, 4 waiting in meshd's queue: the engine itself never queues.
        def seen() -> bool:
            e = node.admin("GET", "/v1/engines").json()[0]
            return e["open"] == 2 and e["queued"] == 4
        await asyncio.to_thread(wait_until, seen, 10, 0.02, "2 open and 4 queued")
        text = (await asyncio.to_thread(node.get, "/metrics")).text
        assert f'meshd_engine_open_requests{{engine="openai@127.0.0.1:{sim.port}"}} 2' in text, text[-800:]
        assert f'meshd_engine_queued_requests{{engine="openai@127.0.0.1:{sim.port}"}} 4' in text
        assert f'meshd_engine_concurrency_limit{{engine="openai@127.0.0.1:{sim.port}"}} 2' in text
        status = await asyncio.to_thread(node.meshctl, "status")
        assert status.returncode == 0, status.stderr
        assert "2 open of 2, 4 waiting" in status.stdout, status.stdout
        assert (await asyncio.to_thread(sim.stats))["in_flight"] <= 2
        return await task

    results = asyncio.run(main())
    assert all(r == (200, TOKENS, True) for r in results), results
    e = node.admin("GET", "/v1/engines").json()[0]
    assert (e["open"], e["queued"]) == (0, 0), e
