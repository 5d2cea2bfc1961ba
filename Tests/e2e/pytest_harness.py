"""Pieces both pytest suites (Tests/e2e, Tests/mesh) share: a registry of open process pools
(their logs go into failure reports; leftovers are killed at exit) and a per-test time bound."""
from __future__ import annotations

import atexit
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from meshd_e2e import ProcessPool


class PoolRegistry:
    """Process pools still open, newest last."""

    def __init__(self) -> None:
        self.pools: list[ProcessPool] = []
        atexit.register(self.close_all)

    def open(self, tmp: Path) -> ProcessPool:
        pool = ProcessPool(tmp)
        self.pools.append(pool)
        return pool

    def close(self, pool: ProcessPool) -> None:
        try:
            pool.close()
        finally:
            if pool in self.pools:
                self.pools.remove(pool)

    def close_all(self) -> None:
        for pool in list(self.pools):
            pool.close()

    def attach_logs(self, rep: pytest.TestReport) -> None:
        """Adds every open process' log tail to a failed test's report."""
        if rep.failed:
            for pool in self.pools:
                for title, text in pool.logs():
                    rep.sections.append((f"log: {title}", text or "(empty)"))


class TestTimeout(Exception):
    pass


def bounded(seconds: int) -> Iterator[None]:
    """Fixture body: the test (setup, call and teardown each) is bounded in time (SIGALRM in the
    main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise TestTimeout(f"test exceeded {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
