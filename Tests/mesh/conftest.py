"""Fixtures of the mesh suite: real meshd nodes joined by a CURVE-encrypted ZeroMQ mesh on loopback.

Every process is killed on teardown (also when a test fails; the report then carries each process'
log tail), and every test is bounded in time. Binaries: MESHD_BIN, MESHCTL_BIN, SIM_ENGINE_BIN
(default .build/debug/...).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

# The process helpers live with the end-to-end suite; make them importable when Tests/mesh runs alone.
_E2E = str(Path(__file__).resolve().parents[1] / "e2e")
if _E2E not in sys.path:
    sys.path.insert(0, _E2E)

from meshd_e2e import E2EError, ProcessPool  # noqa: E402

from mesh_helpers import MeshBinaries, make_secret  # noqa: E402
from pytest_harness import PoolRegistry, bounded  # noqa: E402

_pools = PoolRegistry()
_open = _pools.open
_close = _pools.close

MESH_TEST_TIMEOUT = 60


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    rep = yield
    if "Tests/mesh" in str(item.fspath).replace("\\", "/"):
        _pools.attach_logs(rep)
    return rep


@pytest.fixture(autouse=True)
def _bounded_mesh_test() -> Iterator[None]:
    yield from bounded(MESH_TEST_TIMEOUT)


@pytest.fixture(scope="session")
def mbins(tmp_path_factory: pytest.TempPathFactory) -> MeshBinaries:
    try:
        return MeshBinaries(tmp_path_factory.mktemp("mesh-bin"))
    except E2EError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def mpool(tmp_path: Path) -> Iterator[ProcessPool]:
    """Processes of one test."""
    p = _open(tmp_path)
    yield p
    _close(p)


@pytest.fixture(scope="module")
def module_mpool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessPool]:
    """Processes shared by the tests of one module."""
    p = _open(tmp_path_factory.mktemp("mesh-module"))
    yield p
    _close(p)


@pytest.fixture(scope="module")
def module_secret(tmp_path_factory: pytest.TempPathFactory, mbins: MeshBinaries) -> Path:
    return make_secret(mbins, tmp_path_factory.mktemp("mesh-secret") / "mesh.secret")


@pytest.fixture
def secret(tmp_path: Path, mbins: MeshBinaries) -> Path:
    return make_secret(mbins, tmp_path / "secret" / "mesh.secret")
