"""meshd on the bed with static peers (`mesh.peers`): h1..h3 share a secret, h3 serves the tiny model
with a real llama-server, h4 holds another secret (and a model only it has) and peers to h1.
A request on h1 is served on h3; a killed host leaves every view within 3 s and comes back when
revived; a cut link separates a host and heals; h4 never joins nor gets work. Measured times are
printed as `[testbed]` lines (pytest -s)."""
from __future__ import annotations

import time

import pytest

from meshd_e2e import E2EError
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
