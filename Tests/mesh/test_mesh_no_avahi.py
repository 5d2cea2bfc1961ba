"""Discovery on, but no avahi-daemon reachable (these nodes see no system bus at all): each node logs
one clear warning, reports the state in /v1/status, `meshctl doctor` says what to fix, and static
peers still form the mesh. `meshctl doctor` also catches a secret file others can read."""
from __future__ import annotations

import json
import os
from pathlib import Path

from meshd_e2e import ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat, count_lines, metric, sim_entry, start_sim


def test_without_avahi_static_peers_work_and_doctor_explains(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    sim = start_sim(mpool, mbins, "--models", "m1")
    mdns = {"discovery": {"mdns": True}}
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[sim_entry(sim)], extra=mdns)
    a = MeshNode(mpool, mbins, "A", secret=secret, peers=[b], extra=mdns)
    a.wait_sees({"A": "up", "B": "up"}, models={"B": ["m1"]})
    r = a.post("/v1/chat/completions", json=chat("m1"))
    assert r.status_code == 200, r.text
    assert r.headers["x-meshd-node"] == "B"

    for n in (a, b):
        st = n.admin("GET", "/v1/status").json()["discovery"]
        assert st["enabled"] is True and st["daemon"] in ("unavailable", "connecting"), st
        assert st["published_name"] is None and st["services"] == []
        # One warning, not one per retry.
        assert count_lines(n.log(), "mDNS discovery unavailable") == 1, n.log()[-2000:]

    res = a.meshctl("doctor")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "✗ avahi-daemon" in res.stdout and "systemctl enable --now avahi-daemon" in res.stdout, res.stdout
    assert "✓ secret file" in res.stdout
    assert f"✓ peer {b.mesh_endpoint}: static peer" in res.stdout or f"✓ peer {b.mesh_endpoint}: node B" in res.stdout, res.stdout
    assert "✓ engine" not in res.stdout  # A has no engine: a warning, not a pass
    report = json.loads(a.meshctl("doctor", "--json").stdout)
    assert report["status"] == "fail"
    by = {c["check"]: c for c in report["checks"]}
    assert by["avahi-daemon"]["status"] == "fail" and by["avahi-daemon"]["fix"]
    assert by[f"peer {b.mesh_endpoint}"]["status"] == "ok"

    # A secret others can read is a failure with the command that fixes it.
    os.chmod(secret, 0o644)
    try:
        report = json.loads(b.meshctl("doctor", "--json").stdout)
        by = {c["check"]: c for c in report["checks"]}
        assert by["secret file"]["status"] == "fail" and by["secret file"]["fix"] == f"chmod 600 {secret}", by["secret file"]
        engines = [c for name, c in by.items() if name.startswith("engine ")]
        assert len(engines) == 1 and engines[0]["status"] == "ok", engines
        # A's doctor probed B's mesh port (TCP connect, then close): B counts an aborted handshake,
        # not a refused machine, so its own doctor raises no false authentication alarm.
        wait_until(lambda: metric(b, "meshd_mesh_handshakes_aborted_total") >= 1, 5, what="B to count A's probe")
        assert "mesh authentication" not in by, by.get("mesh authentication")
        assert metric(b, "meshd_mesh_auth_failures_total") == 0
    finally:
        os.chmod(secret, 0o600)


def test_doctor_without_meshd(mpool: ProcessPool, mbins: MeshBinaries, tmp_path: Path) -> None:
    from mesh_helpers import meshctl
    res = meshctl(mbins, tmp_path / "nothing.sock", "doctor")
    assert res.returncode == 3
    assert "cannot reach meshd" in res.stdout and "systemctl start meshd" in res.stdout
    res = meshctl(mbins, tmp_path / "nothing.sock", "doctor", "--json")
    assert res.returncode == 3 and json.loads(res.stdout)["status"] == "fail"
