"""Per-node keys (mesh.trust: keys): holding the mesh secret is no longer enough to join; a node
joins once its own key is trusted (meshctl trust add), and `meshctl trust revoke` shuts one machine
out, its open connections included. Key and trust files are mode 0600."""
from __future__ import annotations

import stat
import time
from pathlib import Path

from meshd_e2e import ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat, sim_entry, start_sim

MODEL = "trust-model"


def trust_node(pool: ProcessPool, bins: MeshBinaries, name: str, secret: Path, **kw) -> MeshNode:
    node = MeshNode(pool, bins, name, secret=secret, start=False, **kw)
    node.config["mesh"].update({"trust": "keys", "node_key_file": str(node.dir / "node.key"),
                                "trusted_keys_file": str(node.dir / "trusted-keys")})
    from meshd_e2e import render_config
    node.config_path.write_text(render_config(node.config))
    node.start()
    return node


def test_keys_mode_admits_only_trusted_nodes_and_revokes(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    sim = start_sim(mpool, mbins, "--models", MODEL)
    b = trust_node(mpool, mbins, "B", secret, engines=[sim_entry(sim)])
    a = trust_node(mpool, mbins, "A", secret, peers=[b])

    # Same secret, but no trusted keys yet: they never see each other and A cannot serve B's model.
    time.sleep(2.5)
    assert "B" not in a.nodes() or a.nodes()["B"]["state"] != "up"
    assert a.post("/v1/chat/completions", json=chat(MODEL)).status_code in (404, 503)
    assert sim.stats()["requests"] == 0

    key_a = a.meshctl("trust", "show").stdout.strip()
    key_b = b.meshctl("trust", "show").stdout.strip()
    assert len(key_a) == 64 and len(key_b) == 64 and key_a != key_b
    for node in (a, b):
        assert stat.S_IMODE((node.dir / "node.key").stat().st_mode) == 0o600

    assert a.meshctl("trust", "add", key_b, "--name", "B").returncode == 0
    assert b.meshctl("trust", "add", key_a, "--name", "A").returncode == 0
    assert stat.S_IMODE((a.dir / "trusted-keys").stat().st_mode) == 0o600
    listed = a.meshctl("trust", "list", "--json").stdout
    assert key_b in listed and '"keys"' in listed

    # Refused dialers retry with backoff (1 s, 2 s, 4 s...): trusted now, they join.
    a.wait_sees({"A": "up", "B": "up"}, timeout=15, models={"B": [MODEL]})
    r = a.post("/v1/chat/completions", json=chat(MODEL))
    assert r.status_code == 200 and r.headers["x-meshd-node"] == "B"

    # Revoke B on A while B is running and connected: B is out of A's view at once (its open
    # connection is not grandfathered in), A routes nothing to it, and A leaves B's view once its
    # heartbeats stop reaching B (A closed the connection it had dialled to B).
    t0 = time.monotonic()
    revoked = a.meshctl("trust", "revoke", key_b)
    assert revoked.returncode == 0 and "note:" not in revoked.stderr, revoked.stderr
    wait_until(lambda: a.nodes().get("B", {}).get("state") != "up", 3, what="B out of A's view after revoke")
    out_a = time.monotonic() - t0
    wait_until(lambda: b.nodes().get("A", {}).get("state") != "up", 10, what="A out of B's view")
    out_b = time.monotonic() - t0
    time.sleep(2)
    assert a.nodes().get("B", {}).get("state") != "up" and b.nodes().get("A", {}).get("state") != "up"
    before = sim.stats()["requests"]
    assert a.post("/v1/chat/completions", json=chat(MODEL)).status_code in (404, 503)
    assert sim.stats()["requests"] == before
    assert "dropping messages from a revoked key" in a.log()
    print(f"\n[mesh] revoke of a connected node: gone from the revoker's view in {out_a:.2f}s, "
          f"the revoker gone from its view in {out_b:.2f}s")

    # A restarted B stays out: its new connections are refused by the handshake.
    b.kill9()
    b.start()
    time.sleep(3)
    assert a.nodes().get("B", {}).get("state") != "up"
    assert a.post("/v1/chat/completions", json=chat(MODEL)).status_code in (404, 503)
    assert sim.stats()["requests"] == before

    # Trusted again: B rejoins (its redial backoff is at most a few seconds here) and serves.
    assert a.meshctl("trust", "add", key_b, "--name", "B").returncode == 0
    a.wait_sees({"A": "up", "B": "up"}, timeout=20, models={"B": [MODEL]})
    r = a.post("/v1/chat/completions", json=chat(MODEL))
    assert r.status_code == 200 and r.headers["x-meshd-node"] == "B"


def test_trust_list_in_secret_mode_says_it_has_no_effect(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    node = MeshNode(mpool, mbins, "S", secret=secret)  # mesh.trust: secret (the default)
    key = "ab" * 32
    for verb in ("add", "revoke"):
        res = node.meshctl("trust", verb, key)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "takes effect only with mesh.trust: keys" in res.stderr, res.stderr
    listed = node.meshctl("trust", "list", "--json").stdout
    assert '"secret"' in listed
