"""Model copy between hosts of the test bed (issue 15): h1 holds the models in its store; copies go
host to host over the mesh (two hosts, then three: the nearest holder), survive kill -9 of the
receiving and of the sending host mid-copy (resumed, from the other holder), reject a corrupted
partial copy by its sha256, report a full disk (h4's store is a small tmpfs in its own mount
namespace), and a host with another mesh secret (h5) gets nothing. Copies are paced at 24 MB/s
(`models.copy_bytes_per_second`) so that the kills land mid-copy."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from meshd_e2e import wait_until
from mesh_helpers import MeshBinaries, make_secret, random_file, sha256
from testbed_helpers import Bed, BedNode

HOSTS = 5
BIG = 48 << 20
SMALL = 3 << 20
MEMBERS = ["h1", "h2", "h3", "h4"]


class ModelsBed:
    def __init__(self, bed: Bed, bins: MeshBinaries) -> None:
        self.bed, self.bins = bed, bins
        secret = make_secret(bins, bed.run / "models.secret")
        other = make_secret(bins, bed.run / "models-other.secret")
        self.stores = {h: bed.dir(h) / "store" for h in bed.hosts}
        for d in self.stores.values():
            d.mkdir(parents=True, exist_ok=True)
        # h4's store is a 16 MiB tmpfs, mounted in h4's own mount namespace (meshd there sees it; nothing else does).
        bed.exec("h4", "mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(self.stores["h4"]))
        for name, size in (("big", BIG), ("small", SMALL)):
            random_file(self.stores["h1"] / f"{name}.gguf", size)
        self.want = {n: sha256(self.stores["h1"] / f"{n}.gguf") for n in ("big", "small")}
        self.nodes: dict[str, BedNode] = {}
        for h in bed.hosts:
            self.nodes[h] = BedNode(bed, bins, h, other if h == "h5" else secret, mdns=False,
                                    peers=[] if h == "h1" else ["h1"], engines=[],
                                    extra={"models": {"dir": str(self.stores[h]), "rescan_seconds": 1,
                                                      "copy_bytes_per_second": 24_000_000}})
            self.nodes[h].start()
        for n in self.nodes.values():
            n.wait_ready()
        self.wait_formed()

    def wait_formed(self) -> None:
        wait_until(lambda: all(all(state_of(self.nodes[h], p) == "up" for p in MEMBERS) for h in MEMBERS), 30, interval=0.2,
                   what="h1..h4 up in each other's views")
        wait_until(lambda: all("big" in self.models(h) for h in MEMBERS), 20, interval=0.2, what="h1's models in every member's list")

    def meshctl(self, host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bins.meshctl), *args, "--socket", str(self.nodes[host].admin_socket)],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def copy_in_background(self, model: str, to: str, via: str) -> subprocess.Popen[str]:
        """meshctl models copy on `via`'s admin socket."""
        return subprocess.Popen([str(self.bins.meshctl), "models", "copy", model, "--to", to, "--socket", str(self.nodes[via].admin_socket)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def models(self, host: str) -> dict[str, dict[str, str]]:
        r = self.meshctl(host, "models", "--json", timeout=15)
        if r.returncode != 0:
            return {}
        return {m["name"]: {w["node"]: w["state"] for w in m["where"]} for m in json.loads(r.stdout)}

    def partial(self, host: str, model: str) -> Path:
        return self.stores[host] / f".{model}.gguf.partial"

    def sent(self, host: str) -> int:
        return self.nodes[host].log().count("sending a stored model")

    def kill(self, host: str) -> None:
        self.bed.sh("kill", host)

    def revive(self, host: str) -> None:
        self.bed.sh("revive", host)
        self.nodes[host].wait_ready()
        self.wait_formed()


def state_of(node: BedNode, peer: str) -> str | None:
    """`peer`'s state in `node`'s view (None while the view cannot be read)."""
    view = node.safe_nodes()
    return view.get(peer, {}).get("state") if isinstance(view, dict) else None


@pytest.fixture(scope="module")
def mb(bed: Bed, tbins: MeshBinaries) -> Iterator[ModelsBed]:
    m = ModelsBed(bed, tbins)
    yield m
    for h in bed.hosts:
        bed.sh("stop-meshd", h, check=False)


def test_copies_between_hosts_resume_after_the_receiver_or_the_sender_is_killed(mb: ModelsBed) -> None:
    # Two hosts: h3 copies big from h1, the only holder.
    r = mb.meshctl("h1", "models", "copy", "big", "--to", "h3")
    assert r.returncode == 0 and "h3: done" in r.stdout, r.stdout + r.stderr
    assert sha256(mb.stores["h3"] / "big.gguf") == mb.want["big"]
    wait_until(lambda: mb.models("h2").get("big", {}).get("h3") == "available", 10, what="h2 to see big on h3")

    # Three hosts: h2 copies from the nearer of h1 and h3; h2 is killed mid-copy, comes back, resumes.
    p = mb.copy_in_background("big", "h2", via="h1")
    partial = mb.partial("h2", "big")
    wait_until(lambda: partial.exists() and partial.stat().st_size > 0, 20, interval=0.01, what="h2 to start receiving")
    mb.kill("h2")
    out = p.communicate(timeout=30)[0]
    got = partial.stat().st_size
    assert 0 < got < BIG, (got, out)
    assert "h2: error" in out and p.returncode == 1, out
    mb.revive("h2")
    before = {h: mb.sent(h) for h in ("h1", "h3")}
    # Asked on h2 itself this time: the sender is killed mid-way, and h2 goes on from the other holder.
    p = mb.copy_in_background("big", "h2", via="h2")
    wait_until(lambda: any(mb.sent(h) > before[h] for h in before) and partial.exists() and partial.stat().st_size > got + (BIG - got) // 4,
               20, interval=0.01, what="the resumed copy to pass a quarter of what was left")
    sender = [h for h in before if mb.sent(h) > before[h]]
    assert len(sender) == 1, sender
    mb.kill(sender[0])
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 0 and "h2: done" in out, out
    assert sha256(mb.stores["h2"] / "big.gguf") == mb.want["big"]
    log = mb.nodes["h2"].log()
    assert log.count("resuming a model copy") >= 2, log[-3000:]
    mb.revive(sender[0])


def test_a_corrupted_copy_is_rejected_a_full_disk_reported_and_a_node_without_the_secret_refused(mb: ModelsBed) -> None:
    # A partial copy that is not the file's beginning: the sha256 rejects it, the next copy starts over.
    mb.partial("h2", "small").write_bytes(b"\0" * (SMALL // 2))
    r = mb.meshctl("h1", "models", "copy", "small", "--to", "h2")
    assert r.returncode == 1 and "does not match its sha256" in r.stdout, r.stdout + r.stderr
    assert not mb.partial("h2", "small").exists()
    r = mb.meshctl("h1", "models", "copy", "small", "--to", "h2")
    assert r.returncode == 0 and sha256(mb.stores["h2"] / "small.gguf") == mb.want["small"], r.stdout + r.stderr

    # h4's store has 16 MiB: big (48 MiB) is refused before a byte is written, saying why; small fits.
    r = mb.meshctl("h1", "models", "copy", "big", "--to", "h4")
    assert r.returncode == 1 and "not enough free disk for 'big'" in r.stdout, r.stdout + r.stderr
    r = mb.meshctl("h1", "models", "copy", "small", "--to", "h4")
    assert r.returncode == 0, r.stdout + r.stderr
    listing = mb.bed.exec("h4", "ls", "-la", str(mb.stores["h4"])).stdout
    assert "small.gguf" in listing and "big" not in listing, listing

    # h5 holds another mesh secret: h1 does not count it as a node, and h5 finds no holder.
    r = mb.meshctl("h1", "models", "copy", "big", "--to", "h5")
    assert r.returncode == 1 and "no live node 'h5'" in r.stderr, r.stdout + r.stderr
    r = mb.meshctl("h5", "models", "copy", "big", "--to", "h5")
    assert r.returncode == 1 and "in no other node's store" in r.stdout, r.stdout + r.stderr
    assert not any(mb.stores["h5"].iterdir())
