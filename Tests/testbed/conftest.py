"""Fixtures of the multi-host test bed suite (tools/testbed.sh; needs root).

`bed` brings a bed of `HOSTS` hosts (a module-level constant, default 4) up for one module and always
tears it down (also when a test fails or pytest is interrupted: atexit). Without root every test is
skipped ("needs root"); as root, a bed that cannot come up fails the tests. Failure reports carry the
tail of every host's logs (meshd, llama-server, dbus, avahi).
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

# The process helpers live with the end-to-end and mesh suites; make them importable when run alone.
for _suite in ("e2e", "mesh"):
    _p = str(Path(__file__).resolve().parents[1] / _suite)
    if _p not in sys.path:
        sys.path.insert(0, _p)

from meshd_e2e import E2EError  # noqa: E402
from mesh_helpers import MeshBinaries  # noqa: E402
from pytest_harness import bounded  # noqa: E402

from testbed_helpers import Bed, BedRegistry, needs_root_reason  # noqa: E402

_beds = BedRegistry()


def pytest_sessionstart(session: pytest.Session) -> None:
    # A SIGTERM (a CI time limit) unwinds like Ctrl-C, so fixture teardown and atexit take the beds down.
    if needs_root_reason() is None and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        def terminated(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt("SIGTERM")

        signal.signal(signal.SIGTERM, terminated)
        for prefix in BedRegistry.down_orphans():
            print(f"[testbed] tore down {prefix}, left by an earlier session")

TESTBED_TEST_TIMEOUT = 120


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    rep = yield
    if "Tests/testbed" in str(item.fspath).replace("\\", "/"):
        _beds.attach_logs(rep)
    return rep


@pytest.fixture(autouse=True)
def _bounded_testbed_test() -> Iterator[None]:
    yield from bounded(TESTBED_TEST_TIMEOUT)


@pytest.fixture(scope="session")
def tbins(tmp_path_factory: pytest.TempPathFactory) -> MeshBinaries:
    try:
        return MeshBinaries(tmp_path_factory.mktemp("testbed-bin"))
    except E2EError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def bed(request: pytest.FixtureRequest) -> Iterator[Bed]:
    reason = needs_root_reason()
    if reason:
        pytest.skip(reason)
    try:
        b = _beds.open_bed(getattr(request.module, "HOSTS", 4))
    except E2EError as e:
        pytest.fail(str(e), pytrace=False)
    yield b
    _beds.close(b)
