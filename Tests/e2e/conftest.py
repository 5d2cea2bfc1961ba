"""Fixtures of the meshd end-to-end suite.

Processes (sim engines, llama-server, meshd) start on free loopback ports and are always killed
on teardown, also when a test fails; a failing test's report carries the last lines of every
process' log. Binaries come from MESHD_BIN, SIM_ENGINE_BIN, LLAMA_BIN_DIR and TINY_GGUF (defaults:
.build/debug/..., and the tools/build-llama.sh / tools/make-tiny-model.sh cache paths).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from meshd_e2e import Binaries, E2EError, LlamaServer, Meshd, ProcessPool, SimEngine
from pytest_harness import PoolRegistry, bounded

_pools = PoolRegistry()
_open_pool = _pools.open
_close_pool = _pools.close

# Upper bound for one test (setup, call and teardown each), seconds.
TEST_TIMEOUT = 120


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    rep = yield
    _pools.attach_logs(rep)
    return rep


@pytest.fixture(autouse=True)
def _bounded_test() -> Iterator[None]:
    yield from bounded(TEST_TIMEOUT)


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
