"""Helpers of the mesh test suite: meshd nodes joined into a CURVE mesh on loopback, meshctl,
the mesh keypair derived from a secret file, and raw ZeroMQ access to a node's mesh port.

Process management (logs, kill on teardown) comes from Tests/e2e/meshd_e2e.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

import httpx

from meshd_e2e import (E2EError, copy_runnable, ProcessPool, Proc, SimEngine, free_port, http_client, render_config,
                       wait_until)

ROOT = Path(__file__).resolve().parents[2]

# Per-call timeout for the plain HTTP calls the helpers make, seconds.
T = 10.0


def _env_path(var: str, default: str) -> Path:
    raw = os.environ.get(var)
    p = Path(raw) if raw else Path(default)
    return p if p.is_absolute() else ROOT / p


class MeshBinaries:
    """Private copies of meshd, meshctl and the sim engine (a concurrent build cannot swap them)."""

    def __init__(self, into: Path, timeout: float = 120) -> None:
        meshd = _env_path("MESHD_BIN", ".build/debug/meshd")
        self.bin_dir = meshd.parent
        srcs = {
            "meshd": meshd,
            "meshctl": _env_path("MESHCTL_BIN", str(self.bin_dir / "meshctl")),
            "sim": _env_path("SIM_ENGINE_BIN", str(self.bin_dir / "meshd-sim-engine")),
        }
        for attr, src in srcs.items():
            if not src.exists():
                raise E2EError(f"{src} not found: run `swift build --product {src.name}` (or set the *_BIN variable)")
            setattr(self, attr, copy_runnable(src, into, timeout))
        self.meshd: Path
        self.meshctl: Path
        self.sim: Path


NO_SYSTEM_BUS = "unix:path=/nonexistent/meshd-tests-no-system-bus"


def meshctl(bins: MeshBinaries, socket: Path, *args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")}
    return subprocess.run([str(bins.meshctl), *args, "--socket", str(socket)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def make_secret(bins: MeshBinaries, path: Path) -> Path:
    """A fresh mesh secret written by `meshctl init` (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([str(bins.meshctl), "init", "--secret-file", str(path)], capture_output=True, text=True,
                         timeout=15, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"meshctl init failed: {res.stdout}{res.stderr}"
    assert (path.stat().st_mode & 0o777) == 0o600, oct(path.stat().st_mode)
    return path


def curve_keypair(secret_file: Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of the mesh: secret = SHA-256("meshd-curve-v1" || 32 secret bytes)."""
    import zmq
    from zmq.utils import z85

    raw = bytes.fromhex(secret_file.read_text().strip())
    assert len(raw) == 32
    sk = z85.encode(hashlib.sha256(b"meshd-curve-v1" + raw).digest())
    return zmq.curve_public(sk), sk


class MeshNode:
    """One meshd with a mesh section; keeps its ports across `kill9()` / `start()`."""

    def __init__(self, pool: ProcessPool, bins: MeshBinaries, name: str, *, secret: Path | None,
                 engines: list[dict[str, Any]] | None = None, peers: Iterable["MeshNode | str"] = (),
                 heartbeat_ms: int = 1000, dead_after_missed: int = 3, engine_poll_ms: int = 200,
                 extra: dict[str, Any] | None = None, start: bool = True) -> None:
        self.pool = pool
        self.bins = bins
        self.name = name
        self.http_port = free_port()
        self.mesh_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.mesh_endpoint = f"127.0.0.1:{self.mesh_port}"
        self.dir = pool.tmp / f"node-{name}-{self.http_port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.admin_socket = self.dir / "admin" / f"{name}.sock"
        mesh: dict[str, Any] = {
            "listen": self.mesh_endpoint,
            "peers": [p.mesh_endpoint if isinstance(p, MeshNode) else p for p in peers],
            "heartbeat_ms": heartbeat_ms,
            "dead_after_missed": dead_after_missed,
            # A path that does not exist runs the node standalone.
            "secret_file": str(secret) if secret else str(self.dir / "no-such.secret"),
            # Not the default /var/lib/meshd/trusted-keys: `meshctl trust add` writes this file.
            "trusted_keys_file": str(self.dir / "trusted-keys"),
        }
        self.config: dict[str, Any] = {
            "node": {"name": name},
            "state_dir": str(self.dir / "state"),
            "http": {"listen": f"127.0.0.1:{self.http_port}", "shutdown_grace_seconds": 5},
            "admin": {"socket": str(self.admin_socket)},
            "mesh": mesh,
            "discovery": {"mdns": False},
            "engine_poll": {"interval_ms": engine_poll_ms},
            "timeouts": {"connect_ms": 1000},
            "engines": engines if engines is not None else [],
            **(extra or {}),
        }
        self.config_path = self.dir / "meshd.yaml"
        self.config_path.write_text(render_config(self.config))
        self.proc: Proc | None = None
        self.procs: list[Proc] = []
        if start:
            self.start()

    # MARK: process

    def start(self, timeout: float = 30) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
               and not k.startswith("MESHD_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        # Loopback tests never reach a system bus, so a node with discovery on can never publish on
        # the machine's real network through an avahi-daemon that happens to run there.
        env["DBUS_SYSTEM_BUS_ADDRESS"] = NO_SYSTEM_BUS
        self.proc = self.pool.start(f"meshd-{self.name}", [str(self.bins.meshd), "--config", str(self.config_path)], env=env)
        self.procs.append(self.proc)
        proc = self.proc

        def healthz() -> bool:
            if not proc.alive():
                raise proc.fail(f"meshd {self.name} exited with {proc.popen.returncode} during start")
            return self.get("/healthz", timeout=2).status_code == 200

        try:
            wait_until(healthz, timeout, interval=0.05, what=f"meshd {self.name} /healthz")
            wait_until(lambda: self.admin_socket.exists(), timeout, what=f"meshd {self.name} admin socket")
        except E2EError as e:
            raise proc.fail(str(e)) from None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def log(self) -> str:
        """Output of every process this node ran (restarts included)."""
        return "".join(p.log() for p in self.procs)

    def cpu_seconds(self) -> float:
        """utime + stime of the meshd process so far (from /proc/PID/stat)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rfind(")") + 2:].split()
        # Fields 14 and 15 of stat(5); `fields` starts at field 3.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wakes(self) -> int:
        """Times the meshd process's threads went to sleep and were woken so far: the sum of
        `voluntary_ctxt_switches` over /proc/PID/task (threads that ended are not counted)."""
        total = 0
        for status in Path(f"/proc/{self.pid}/task").glob("*/status"):
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError):
                pass  # the thread ended while read
        return total

    # MARK: HTTP

    def client(self, **kw: Any) -> httpx.Client:
        return http_client(self.url, **kw)

    def get(self, path: str, timeout: float = T, **kw: Any) -> httpx.Response:
        with self.client(timeout=timeout) as c:
            return c.get(path, **kw)

    def post(self, path: str, timeout: float = T, **kw: Any) -> httpx.Response:
        with self.client(timeout=timeout) as c:
            return c.post(path, **kw)

    def admin(self, method: str, path: str) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.admin_socket))
        with httpx.Client(transport=transport, base_url="http://meshd", timeout=T, trust_env=False) as c:
            return c.request(method, path)

    def nodes(self) -> dict[str, dict[str, Any]]:
        """GET /v1/nodes on the admin socket, by node name."""
        r = self.admin("GET", "/v1/nodes")
        r.raise_for_status()
        return {n["name"]: n for n in r.json()}

    def meshctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return meshctl(self.bins, self.admin_socket, *args)

    def meshctl_nodes(self) -> dict[str, dict[str, Any]]:
        res = self.meshctl("nodes", "--json")
        assert res.returncode == 0, f"meshctl nodes failed: {res.stdout}{res.stderr}"
        return {n["name"]: n for n in json.loads(res.stdout)}

    def wait_sees(self, expected: dict[str, str], timeout: float = 10, models: dict[str, list[str]] | None = None) -> dict[str, dict[str, Any]]:
        """Waits until this node's /v1/nodes shows every name in `expected` with that state (and the models
        given in `models` among the node's models); returns the view."""

        def ok() -> dict[str, dict[str, Any]] | None:
            view = self.nodes()
            for n, st in expected.items():
                if view.get(n, {}).get("state") != st:
                    return None
                if models and n in models and not set(models[n]) <= set(view[n].get("models", [])):
                    return None
            return view

        try:
            return wait_until(ok, timeout, interval=0.05, what=f"{self.name} to see {expected} (models {models})")
        except E2EError as e:
            raise E2EError(f"{e}; last view: {self._safe_nodes()}") from None

    def _safe_nodes(self) -> Any:
        try:
            return self.nodes()
        except Exception as e:  # noqa: BLE001
            return repr(e)


def sim_entry(sim: SimEngine, kind: str = "openai") -> dict[str, Any]:
    return {"kind": kind, "url": sim.url}


def start_sim(pool: ProcessPool, bins: MeshBinaries, *args: Any) -> SimEngine:
    return SimEngine(pool, bins.sim, *map(str, args))


def chat(model: str, stream: bool = False, max_tokens: int | None = 4, content: str = "hello") -> dict[str, Any]:
    b: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    return b


def ollama_chat(model: str, stream: bool = False, num_predict: int = 4) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream,
            "options": {"num_predict": num_predict}}


def served_by(r: httpx.Response) -> tuple[str | None, str | None]:
    return r.headers.get("x-meshd-node"), r.headers.get("x-meshd-via")


def metric(node: "MeshNode", name: str) -> float:
    """A label-less sample of the node's /metrics."""
    for line in node.get("/metrics").text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return float(parts[1])
    raise AssertionError(f"{name} not in {node.name}'s /metrics")


def count_lines(text: str, *needles: str) -> int:
    return sum(1 for line in text.splitlines() if any(n in line for n in needles))


def sha256(p: Path) -> str:
    """The hex sha256 of a file, read a MiB at a time."""
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def random_file(p: Path, size: int) -> None:
    """A file of `size` random bytes (a stand-in model file for copies)."""
    with p.open("wb") as f:
        left = size
        while left:
            n = min(left, 4 << 20)
            f.write(os.urandom(n))
            left -= n
