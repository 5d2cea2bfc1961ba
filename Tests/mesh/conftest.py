"""Fixtures of the mesh suite: real meshd nodes joined by a CURVE-encrypted ZeroMQ mesh on loopback.

Every process is killed on teardown (also when a test fails; the report then carries each process'
log tail), and every test is bounded in time. Binaries: MESHD_BIN, MESHCTL_BIN, SIM_ENGINE_BIN
(default .build/debug/...).
"""
from __future__ import annotations

import atexit
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

# The process helpers live with the end-to-end suite; make them importable when Tests/mesh runs alone.
_E2E = str(Path(__file__).resolve().parents[1] / "e2e")
if _E2E not in sys.path:
    sys.path.insert(0, _E2E)

from meshd_e2e import E2EError, ProcessPool  # noqa: E402

from mesh_helpers import MeshBinaries, make_secret  # noqa: E402

_open_pools: list[ProcessPool] = []


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_open_pools):
        p.close()


def _open(tmp: Path) -> ProcessPool:
    p = ProcessPool(tmp)
    _open_pools.append(p)
    return p


def _close(p: ProcessPool) -> None:
    try:
        p.close()
    finally:
        if p in _open_pools:
            _open_pools.remove(p)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    rep = yield
    if rep.failed and "Tests/mesh" in str(item.fspath).replace("\\", "/"):
        for p in _open_pools:
            for title, text in p.logs():
                rep.sections.append((f"log: {title}", text or "(empty)"))
    return rep


MESH_TEST_TIMEOUT = 60


class MeshTestTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _bounded_mesh_test() -> Iterator[None]:
    """Every test (setup, call and teardown) is bounded in time (SIGALRM in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise MeshTestTimeout(f"mesh test exceeded {MESH_TEST_TIMEOUT}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(MESH_TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


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
