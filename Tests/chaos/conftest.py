"""Fixtures of the chaos suite (Tests/chaos; needs root, as Tests/testbed): `chaos_report` runs one
short chaos (chaos.py) on a bed of five hosts for the module and always tears the bed down."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaos  # noqa: E402  (puts Tests/e2e, Tests/mesh and Tests/testbed on sys.path)

from meshd_e2e import E2EError  # noqa: E402
from mesh_helpers import MeshBinaries  # noqa: E402
from pytest_harness import bounded  # noqa: E402
from testbed_helpers import BedRegistry, needs_root_reason  # noqa: E402

_beds = BedRegistry()

# Seconds of load and faults of the short run (tools/test.sh), and its seed.
SHORT_DURATION = float(os.environ.get("MESHD_CHAOS_SECONDS", "75"))
SHORT_SEED = int(os.environ.get("MESHD_CHAOS_SEED", "17"))


def pytest_sessionstart(session: pytest.Session) -> None:
    if needs_root_reason() is None and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        def terminated(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt("SIGTERM")

        signal.signal(signal.SIGTERM, terminated)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    rep = yield
    if "Tests/chaos" in str(item.fspath).replace("\\", "/"):
        _beds.attach_logs(rep)
    return rep


@pytest.fixture(autouse=True)
def _bounded_chaos_test() -> Iterator[None]:
    # Setup of the first test runs the whole chaos: bed, mesh, load and faults, drain, checks.
    yield from bounded(int(SHORT_DURATION) + 240)


@pytest.fixture(scope="module")
def chaos_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[chaos.Report]:
    reason = needs_root_reason()
    if reason:
        pytest.skip(reason)
    try:
        bins = MeshBinaries(tmp_path_factory.mktemp("chaos-bin"))
        bed = _beds.open_bed(len(chaos.HOSTS))
    except E2EError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        rep = chaos.run(bed, bins, SHORT_SEED, SHORT_DURATION, tmp_path_factory.mktemp("chaos") / "run.json")
        print("\n" + rep.text())
        yield rep
    finally:
        _beds.close(bed)
