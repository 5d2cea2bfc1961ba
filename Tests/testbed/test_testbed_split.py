"""Splits on the multi-host bed (issue 13): h1 has the model file (a managed llama.cpp engine entry),
h1..h3 each offer 8 MiB (`hardware.offer_bytes`), less than the tiny model needs, so a request makes
h1 split it over all three. h4 holds no mesh secret. Over the mesh relay (the default) and
`split.transport: direct`:
- the split answers from every host with the unsplit model's temperature-0 output;
- nothing on the LAN reaches a worker's RPC port (relay: loopback only; h4 cannot connect);
- kill -9 of a worker mid-stream, a cut link, an avahi restart: the client sees a clean end or
  error, never a hang; the split ends within 2 s of a worker's death or silence; no rpc-server is
  left; the head dying frees its workers when their leases lapse;
- a worker on another llama.cpp build is left out, naming both builds.
Measured times are printed as `[testbed split]` lines (pytest -s)."""
from __future__ import annotations

import json
import subprocess
import time
from typing import Any, Iterator

import pytest

from meshd_e2e import Binaries, wait_until
from mesh_helpers import MeshBinaries, make_secret
from testbed_helpers import HTTP_PORT, MODEL, SCRIPT, Bed, BedNode, netns_of

HOSTS = 4
PROMPT = "The quick brown fox"
MEMBERS = ["h1", "h2", "h3"]


class SplitBed:
    serial = 0

    def __init__(self, bed: Bed, bins: MeshBinaries, transport: str, *, lease_seconds: int = 4,
                 binaries: dict[str, str] | None = None) -> None:
        self.bed, self.bins = bed, bins
        paths = Binaries()
        self.model = paths.tiny_model()
        SplitBed.serial += 1
        secret = make_secret(bins, bed.run / f"split-{transport}-{SplitBed.serial}.secret")
        extra = {"split": {"transport": transport, "lease_seconds": lease_seconds},
                 "hardware": {"offer_bytes": 8 << 20}, "timeouts": {"connect_ms": 1000, "between_chunks_ms": 5000}}
        self.nodes: dict[str, BedNode] = {}
        for h in MEMBERS:
            engines: list[dict[str, Any]] = []
            if h == "h1":
                engines = [{"kind": "llama.cpp", "model": str(self.model), "args": ["-c", "512", "-t", "1"]}]
            elif binaries and h in binaries:
                # A node on another build: its llama.cpp is found through this engine entry's binary
                # (whose model does not exist: it serves nothing itself).
                engines = [{"kind": "llama.cpp", "model": str(bed.run / "no-such-model.gguf"), "binary": binaries[h]}]
            self.nodes[h] = BedNode(bed, bins, h, secret, mdns=False, peers=[p for p in MEMBERS if p != h], engines=engines,
                                    extra=extra)
        for n in self.nodes.values():
            n.start()
        for n in self.nodes.values():
            n.wait_ready()
        wait_until(lambda: all(all(v.get(h, {}).get("state") == "up" and v[h].get("offer_bytes") for h in MEMBERS)
                               for v in (n.nodes() for n in self.nodes.values())), 30, interval=0.1,
                   what="h1..h3 up with their offers in every view")

    def stop(self) -> None:
        for h in MEMBERS:
            self.bed.sh("stop-meshd", h, check=False)
        # meshd stops its rpc-servers when it stops.
        wait_until(lambda: not any(self.rpc_servers(h) for h in MEMBERS), 10, interval=0.1, what="no rpc-server after meshd stopped")

    def admin(self, host: str, path: str) -> Any:
        return json.loads(self.meshctl(host, path))

    def meshctl(self, host: str, *args: str) -> str:
        res = subprocess.run([str(self.bins.meshctl), *args, "--socket", str(self.nodes[host].admin_socket), "--json"],
                             capture_output=True, text=True, timeout=15)
        return res.stdout

    def splits(self, host: str) -> dict[str, Any]:
        return json.loads(self.meshctl(host, "splits"))

    def completion(self, host: str, n: int = 24) -> str:
        status, headers, body = self.bed.curl(host, "POST", "/v1/completions",
                                              {"model": MODEL, "prompt": PROMPT, "max_tokens": n, "temperature": 0}, timeout=120)
        assert status == 200, (host, status, body[:800])
        return json.loads(body)["choices"][0]["text"]

    def stream(self, host: str, max_tokens: int = 400) -> subprocess.Popen[str]:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}],
                           "max_tokens": max_tokens, "stream": True})
        return subprocess.Popen([str(SCRIPT), "--prefix", self.bed.prefix, "exec", host, "curl", "-sSN", "-m", "60",
                                 "-H", "content-type: application/json", "--data-binary", body,
                                 f"http://127.0.0.1:{HTTP_PORT}/v1/chat/completions"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def rpc_servers(self, host: str) -> list[str]:
        """rpc-server processes running in `host`'s network namespace (the bed shares one PID namespace)."""
        keeper = int((self.bed.dir(host) / "keeper.pid").read_text().strip())
        ns = netns_of(keeper)
        out = subprocess.run(["pgrep", "-a", "-f", "rpc-server -H"], capture_output=True, text=True, timeout=10).stdout
        return [line for line in out.splitlines() if "pgrep" not in line and netns_of(int(line.split()[0])) == ns]

    def split_ended(self) -> bool:
        s = self.splits("h1")
        return not s["heads"] and s["head_stats"]["failed"] >= 1


@pytest.fixture(params=["mesh", "direct"])
def split_bed(request: pytest.FixtureRequest, bed: Bed, tbins: MeshBinaries) -> Iterator[SplitBed]:
    sb = SplitBed(bed, tbins, request.param)
    sb.transport = request.param  # type: ignore[attr-defined]
    try:
        yield sb
    finally:
        sb.stop()


def unsplit_answer(bed: Bed) -> str:
    """The model's temperature-0 answer from a plain llama-server on h4."""
    paths = Binaries()
    bed.spawn("h4", "plain-llama", str(paths.llama_server_bin()), "-m", str(paths.tiny_model()), "--host", "127.0.0.1",
              "--port", "8090", "-t", "1", "-c", "512")
    wait_until(lambda: bed.curl("h4", "GET", "/health", port=8090, timeout=5)[0] == 200, 60, interval=0.2, what="llama-server on h4")
    status, _, body = bed.curl("h4", "POST", "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 24, "temperature": 0},
                               port=8090)
    bed.sh("stop", "h4", "plain-llama", check=False)
    assert status == 200, body
    return json.loads(body)["choices"][0]["text"]


def test_split_answers_from_every_host_and_no_rpc_port_is_on_the_lan(split_bed: SplitBed, bed: Bed) -> None:
    want = unsplit_answer(bed)
    t0 = time.monotonic()
    assert split_bed.completion("h2") == want
    first = time.monotonic() - t0
    t0 = time.monotonic()
    for h in MEMBERS:
        assert split_bed.completion(h) == want, h
    warm = (time.monotonic() - t0) / 3
    head = split_bed.splits("h1")["heads"][0]
    assert [p["node"] for p in head["parts"]][-1] == "h1" and {p["node"] for p in head["parts"]} == set(MEMBERS), head
    print(f"\n[testbed split {split_bed.transport}] first answer via h2 (plan, leases, load) {first:.2f}s; "
          f"then {warm * 1000:.0f} ms per 24-token answer; plan: {head['reason']}")

    # No RPC port reachable from the LAN: h4 (no mesh secret) tries every worker's rpc-server port.
    for w in ("h2", "h3"):
        lease = split_bed.splits(w)["leases"][0]
        port = lease["port"]
        res = bed.exec("h4", "sh", "-c", f"timeout 3 bash -c 'exec 3<>/dev/tcp/{bed.ip(w)}/{port}' && echo open || echo closed",
                       check=False)
        if split_bed.transport == "mesh":
            assert res.stdout.strip().endswith("closed"), (w, port, res.stdout, res.stderr)
            # The worker's secure relay is on the LAN, but takes only mesh keys: a hello with a key
            # of h4's own gets the connection closed, nothing answered.
            relay = split_bed.splits(w)["relay_port"]
            probe = ("import os,socket;s=socket.create_connection(('%s',%d),3);s.settimeout(3);"
                     "s.sendall(b'MRL1'+os.urandom(64));d=s.recv(100);print('got',len(d))") % (bed.ip(w), relay)
            res = bed.exec("h4", "python3", "-c", probe, check=False)
            assert "got 0" in res.stdout or "ConnectionResetError" in res.stderr, (w, relay, res.stdout, res.stderr)
        else:
            # direct: documented as trusted-LAN only; the port is on the LAN for the life of the lease.
            assert res.stdout.strip().endswith("open"), (w, port, res.stdout, res.stderr)


def test_killed_worker_ends_the_split_in_2s_and_leaves_no_rpc_server(split_bed: SplitBed, bed: Bed) -> None:
    assert split_bed.completion("h1", 4)
    p = split_bed.stream("h2")
    assert p.stdout is not None
    first = p.stdout.readline()
    assert first.startswith("data: "), first
    t_kill = time.monotonic()
    bed.sh("kill", "h3")
    out, _ = p.communicate(timeout=30)
    stream_over = time.monotonic() - t_kill
    wait_until(split_bed.split_ended, 10, interval=0.05, what="the split to end at h1")
    ended = time.monotonic() - t_kill
    lines = [x for x in out.splitlines() if x.startswith("data: ")]
    assert lines and (lines[-1] == "data: [DONE]" or any('"error"' in x for x in lines)), out[-800:]
    print(f"\n[testbed split {split_bed.transport}] kill -9 of worker h3 mid-stream: stream over after "
          f"{stream_over:.2f}s, split ended after {ended:.2f}s")
    assert ended <= 2.5, ended
    assert split_bed.rpc_servers("h3") == []
    stats = split_bed.splits("h1")["head_stats"]
    assert "h3" in stats["backing_off"], stats
    # Without h3 (8 + 8 MiB < 19 MiB) no split can hold it: a clear error, no hang.
    status, _, body = bed.curl("h1", "POST", "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 4}, timeout=30)
    assert status == 503 and "no node can hold" in body, (status, body[:600])
    bed.sh("revive", "h3")


def test_cut_link_ends_the_split_and_never_hangs_the_client(split_bed: SplitBed, bed: Bed) -> None:
    assert split_bed.completion("h1", 4)
    p = split_bed.stream("h1")
    assert p.stdout is not None
    assert p.stdout.readline().startswith("data: ")
    t_cut = time.monotonic()
    bed.sh("cut", "h2")
    try:
        out, _ = p.communicate(timeout=30)
        stream_over = time.monotonic() - t_cut
        wait_until(split_bed.split_ended, 10, interval=0.05, what="the split to end at h1")
        ended = time.monotonic() - t_cut
    finally:
        bed.sh("heal", "h2")
    print(f"\n[testbed split {split_bed.transport}] link of worker h2 cut mid-stream: stream over after "
          f"{stream_over:.2f}s, split ended after {ended:.2f}s")
    assert stream_over <= 5.0 + 1.0, "a client waits no longer than timeouts.between_chunks_ms"
    assert ended <= 2.5, ended
    # The worker's rpc-server goes when its lease lapses (its head is unreachable): 4 s.
    wait_until(lambda: split_bed.rpc_servers("h2") == [], 15, interval=0.2, what="h2's rpc-server to stop")


def test_dead_head_frees_its_workers_and_an_avahi_restart_changes_nothing(split_bed: SplitBed, bed: Bed) -> None:
    assert split_bed.completion("h2", 4)
    bed.sh("restart-avahi", "h2")
    assert split_bed.completion("h2", 4)
    assert split_bed.splits("h1")["head_stats"]["failed"] == 0
    assert split_bed.rpc_servers("h2") and split_bed.rpc_servers("h3")
    t_kill = time.monotonic()
    bed.sh("kill", "h1")
    wait_until(lambda: split_bed.rpc_servers("h2") == [] and split_bed.rpc_servers("h3") == [], 15, interval=0.2,
               what="the workers' rpc-servers to stop after their head died")
    freed = time.monotonic() - t_kill
    print(f"\n[testbed split {split_bed.transport}] head killed: workers' rpc-servers stopped after {freed:.2f}s (lease 4 s)")
    assert freed <= 4 + 2
    bed.sh("revive", "h1")


def test_a_worker_on_another_build_is_left_out_naming_both_builds(bed: Bed, tbins: MeshBinaries) -> None:
    paths = Binaries()
    real = paths.llama_server_bin()
    fake = bed.run / "other-build" / "llama-server"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'version: 9999 (fffffff)'; exit 0; fi\nexec {real} \"$@\"\n")
    fake.chmod(0o755)
    for tool in ("ggml-rpc-server",):
        target = fake.parent / tool
        if not target.exists():
            target.symlink_to(real.parent / tool)
    sb = SplitBed(bed, tbins, "mesh", binaries={"h3": str(fake)})
    try:
        wait_until(lambda: sb.nodes["h1"].nodes().get("h3", {}).get("llama_build") == "b9999-fffffff", 20, interval=0.1,
                   what="h3's other build in h1's view")
        route = json.loads(sb.meshctl("h1", "route", MODEL))
        own = sb.nodes["h1"].nodes()["h1"]["llama_build"]
        assert f"h3 runs llama.cpp b9999-fffffff, not {own}" in route["split"], route
        status, _, body = bed.curl("h1", "POST", "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 4}, timeout=30)
        assert status == 503 and "b9999-fffffff" in body and own in body, (status, body[:600])
        assert sb.rpc_servers("h2") == [] and sb.rpc_servers("h3") == []
    finally:
        sb.stop()
