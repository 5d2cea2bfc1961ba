"""Fixtures of the meshd end-to-end suite.

Processes (sim engines, llama-server, meshd) start on free loopback ports and are always killed
on teardown, also when a test fails; a failing test's report carries the last lines of every
process' log. Binaries come from MESHD_BIN, SIM_ENGINE_BIN, LLAMA_BIN_DIR and TINY_GGUF (defaults:
.build/debug/..., and the tools/build-llama.sh / tools/make-tiny-model.sh cache paths).
"""
from __future__ import annotations

import atexit
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from meshd_e2e import Binaries, E2EError, LlamaServer, Meshd, ProcessPool, SimEngine

# Pools still open, newest last: their logs go into failure reports; atexit kills leftovers.
_open_pools: list[ProcessPool] = []


@atexit.register
def _kill_leftovers() -> None:
    for pool in list(_open_pools):
        pool.close()


def _open_pool(tmp: Path) -> ProcessPool:
    pool = ProcessPool(tmp)
    _open_pools.append(pool)
    return pool


def _close_pool(pool: ProcessPool) -> None:
    try:
        pool.close()
    finally:
        if pool in _open_pools:
            _open_pools.remove(pool)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    rep = yield
    if rep.failed:
        for pool in _open_pools:
            for title, text in pool.logs():
                rep.sections.append((f"log: {title}", text or "(empty)"))
    return rep


# Upper bound for one test (setup, call and teardown each), seconds.
TEST_TIMEOUT = 120


class TestTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _bounded_test() -> Iterator[None]:
    """Every test is bounded in time, whatever it waits on (SIGALRM in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise TestTimeout(f"test exceeded {TEST_TIMEOUT}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def bins(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    b = Binaries()
    try:
        b.snapshot(tmp_path_factory.mktemp("bin"))
    except E2EError as e:
        pytest.fail(str(e), pytrace=False)
    return b


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[ProcessPool]:
    """Processes of one test."""
    p = _open_pool(tmp_path)
    yield p
    _close_pool(p)


@pytest.fixture(scope="module")
def module_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessPool]:
    """Processes shared by the tests of one module."""
    p = _open_pool(tmp_path_factory.mktemp("e2e-module"))
    yield p
    _close_pool(p)


@pytest.fixture
def start_sim(pool: ProcessPool, bins: Binaries) -> Callable[..., SimEngine]:
    """start_sim("--models", "a", ...) -> a running SimEngine (killed on teardown)."""

    def start(*args: Any, port: int = 0) -> SimEngine:
        return SimEngine(pool, bins.sim_bin(), *map(str, args), port=port)

    return start


@pytest.fixture
def start_meshd(pool: ProcessPool, bins: Binaries) -> Callable[..., Meshd]:
    """start_meshd(engines, http=..., timeouts=..., env=..., expect_ready=..., wait=...) -> Meshd."""

    def start(engines: list[dict[str, Any]] | None, **kw: Any) -> Meshd:
        return Meshd(pool, bins.meshd_bin(), engines, **kw)

    return start


def sim_engine_entry(sim: SimEngine, kind: str) -> dict[str, Any]:
    return {"kind": kind, "url": sim.url}


@pytest.fixture(scope="module")
def llama_server(module_pool: ProcessPool, bins: Binaries) -> LlamaServer:
    try:
        return LlamaServer(module_pool, bins.llama_server_bin(), bins.tiny_model())
    except E2EError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def meshd_llama(module_pool: ProcessPool, bins: Binaries, llama_server: LlamaServer) -> Meshd:
    """meshd in front of the real llama-server as an OpenAI-compatible engine."""
    return Meshd(module_pool, bins.meshd_bin(), [{"kind": "openai", "url": llama_server.url}], name="e2e-llama")
