"""meshd on the bed with static peers (`mesh.peers`): h1..h3 share a secret, h3 serves the tiny model
with a real llama-server, h4 holds another secret (and a model only it has) and peers to h1.
A request on h1 is served on h3; a killed host leaves every view within 3 s and comes back when
revived; a cut link separates a host and heals; h4 never joins nor gets work. Measured times are
printed as `[testbed]` lines (pytest -s)."""
from __future__ import annotations

import json
import time

import pytest

from meshd_e2e import E2EError, render_config, wait_until
from mesh_helpers import MeshBinaries, count_lines
from testbed_helpers import Bed, BedMesh

HOSTS = 4


@pytest.fixture(scope="module")
def mesh(bed: Bed, tbins: MeshBinaries) -> BedMesh:
    try:
        return BedMesh(bed, tbins, mdns=False)
    except E2EError as e:
        pytest.fail(f"meshd on the bed did not start: {e}", pytrace=False)


def test_static_mesh_forms(mesh: BedMesh) -> None:
    t = mesh.wait_formed(15)
    print(f"\n[testbed] static peers: h1..h3 up in every view {t - mesh.t_ready:.2f}s after every meshd answered "
          f"({t - mesh.t_launch:.2f}s after the first launch)")


def test_request_on_h1_served_by_llama_on_h3(mesh: BedMesh) -> None:
    mesh.wait_formed(15)
    took = [mesh.request_served_by_h3("h1"), mesh.request_served_by_h3("h2"), mesh.request_served_by_h3("h3")]
    print(f"\n[testbed] static peers: chat via h1, h2, h3 served by llama-server on h3 in "
          f"{', '.join(f'{t:.2f}s' for t in took)}")


def test_other_secret_never_joins_nor_gets_work(mesh: BedMesh) -> None:
    # h4 has had several heartbeats' time to try.
    time.sleep(max(0.0, 3.0 - (time.monotonic() - mesh.t_ready)))
    mesh.other_secret_isolated()
    assert count_lines(mesh.member("h1").log(), "mesh peer refused") >= 1, mesh.member("h1").log()[-3000:]


def test_killed_host_leaves_and_revived_comes_back(mesh: BedMesh) -> None:
    mesh.kill_and_revive("h3", "static peers")
    mesh.request_served_by_h3("h1")


def test_cut_link_heals(mesh: BedMesh) -> None:
    mesh.cut_and_heal("h2", "static peers")
    mesh.request_served_by_h3("h2")


def test_dashboard_off_loopback_needs_an_admin_key(mesh: BedMesh, bed: Bed, tbins: MeshBinaries) -> None:
    """A second meshd on h2 serving its API on h2's bed address (api_keys and admin_keys set): from h1,
    the dashboard needs an admin key (HTTP Basic password or Bearer), never a client key."""
    d = bed.dir("h2") / "dash"
    d.mkdir(exist_ok=True)
    url = f"http://{bed.ip('h2')}:11445"
    cfg = {"node": {"name": "h2-dash"}, "state_dir": str(d / "state"), "admin": {"socket": str(d / "admin.sock")},
           "http": {"listen": f"{bed.ip('h2')}:11445", "api_keys": ["ci:client-key-0001"], "admin_keys": ["ops:admin-key-0001"]},
           "mesh": {"secret_file": str(d / "no-secret")}, "discovery": {"mdns": False}, "engines": []}
    (d / "meshd.yaml").write_text(render_config(cfg))
    bed.spawn("h2", "meshd-dash", str(tbins.meshd), "--config", str(d / "meshd.yaml"))
    try:
        def status(*args: str, path: str = "/ui") -> tuple[str, str]:
            r = bed.exec("h1", "curl", "-sS", "-m", "5", "-o", "/dev/stdout", "-w", "\n%{http_code}", *args, url + path, check=False)
            body, _, code = r.stdout.rpartition("\n")
            return code, body
        wait_until(lambda: status(path="/healthz")[0] == "200", 15, interval=0.2, what="the second meshd on h2")
        code, body = status()
        assert code == "401" and "admin key" in body, body
        assert status("-H", "Authorization: Bearer client-key-0001")[0] == "401"
        assert status("-u", "x:wrong-key")[0] == "401"
        code, page = status("-u", "anyone:admin-key-0001")
        assert code == "200" and "<title>meshd</title>" in page, page[:200]
        code, state = status("-H", "Authorization: Bearer admin-key-0001", path="/ui/state")
        assert code == "200" and json.loads(state)["node"] == "h2-dash", state[:300]
        # The client key still works on the API, and the admin key does not.
        assert status("-H", "Authorization: Bearer client-key-0001", path="/v1/models")[0] == "200"
        assert status("-H", "Authorization: Bearer admin-key-0001", path="/v1/models")[0] == "401"
    finally:
        bed.sh("stop", "h2", "meshd-dash", check=False)
