"""Two machines with the same node name (cloned VMs keep their host name, the default node name):
the first keeps the name, the second is ignored (never routed to, never takes over the name's
endpoint), both log it, and `meshctl doctor` on each of them says what to fix. A node that merely
restarts under its name (same endpoint) is not a conflict."""
from __future__ import annotations

import json
import time
from pathlib import Path

from meshd_e2e import ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat, count_lines, served_by, sim_entry, start_sim

CONFLICT_LINE = "another machine uses a node name that is taken"


def doctor_checks(node: MeshNode) -> dict[str, dict]:
    report = json.loads(node.meshctl("doctor", "--json").stdout)
    return {c["check"]: c for c in report["checks"]}


def test_duplicate_node_name_is_ignored_and_reported(mpool: ProcessPool, mbins: MeshBinaries, secret: Path) -> None:
    sim1 = start_sim(mpool, mbins, "--models", "first-model")
    sim2 = start_sim(mpool, mbins, "--models", "clone-model")
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[sim_entry(sim1)])
    a = MeshNode(mpool, mbins, "A", secret=secret, peers=[b])
    a.wait_sees({"A": "up", "B": "up"}, models={"B": ["first-model"]})

    # The clone: also "B", its own port and engine, dialling A.
    clone = MeshNode(mpool, mbins, "B", secret=secret, engines=[sim_entry(sim2)], peers=[a])
    wait_until(lambda: count_lines(a.log(), CONFLICT_LINE) >= 1, 10, what="A to notice the second B")
    wait_until(lambda: count_lines(b.log(), CONFLICT_LINE) >= 1, 10, what="B to notice the machine using its name")
    wait_until(lambda: count_lines(clone.log(), CONFLICT_LINE) >= 1, 10, what="the clone to notice it uses a taken name")

    # A keeps the first B: its endpoint and models, every request served by it, for several heartbeats.
    for _ in range(8):
        nodes = a.nodes()
        assert nodes["B"]["mesh_endpoint"] == b.mesh_endpoint and nodes["B"]["state"] == "up", nodes["B"]
        r = a.post("/v1/chat/completions", json=chat("first-model"))
        assert r.status_code == 200 and served_by(r) == ("B", "A"), (r.status_code, served_by(r))
        assert a.post("/v1/chat/completions", json=chat("clone-model")).status_code == 404
        time.sleep(0.3)
    assert sim2.stats()["requests"] == 0
    assert count_lines(a.log(), CONFLICT_LINE) == 1  # once, not at every heartbeat

    checks_a = doctor_checks(a)
    assert checks_a["node name B"]["status"] == "fail" and clone.mesh_endpoint in checks_a["node name B"]["detail"]
    assert "node.name" in checks_a["node name B"]["fix"]
    checks_clone = doctor_checks(clone)
    assert checks_clone["node name B"]["status"] == "fail", checks_clone.get("node name B")
    assert "also calls itself B" in checks_clone["node name B"]["detail"]

    # A restart of the real B (same endpoint, new process) is not a conflict: A takes it back.
    b.kill9()
    b.start()
    a.wait_sees({"B": "up"}, models={"B": ["first-model"]})
    assert a.nodes()["B"]["mesh_endpoint"] == b.mesh_endpoint
    r = a.post("/v1/chat/completions", json=chat("first-model"))
    assert r.status_code == 200 and served_by(r) == ("B", "A")
