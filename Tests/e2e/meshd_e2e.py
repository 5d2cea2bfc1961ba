"""Process and protocol helpers for the meshd end-to-end suite (used by conftest.py and the tests).

Everything listens on 127.0.0.1 with ports picked free at start; every wait is bounded in time;
every process started here is registered with a `ProcessPool` that kills it on teardown.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import httpx

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MESHD_CACHE") or Path.home() / ".cache" / "meshd")

# Per-request timeout for plain HTTP calls made by the helpers, seconds.
T = 10.0


class E2EError(AssertionError):
    """A process did not start or behave as the suite needs (shown with its log)."""


# MARK: binaries


def _from_env(var: str, default: Path) -> Path:
    raw = os.environ.get(var)
    p = Path(raw) if raw else default
    return p if p.is_absolute() else ROOT / p


def copy_runnable(src: Path, into: Path, timeout: float = 120) -> Path:
    """Copies a binary into `into` and checks the copy runs (`--help`); a copy taken while a build
    is still writing the file fails that check and is taken again, for up to `timeout` seconds."""
    into.mkdir(parents=True, exist_ok=True)
    dst = into / src.name
    deadline = time.monotonic() + timeout
    while True:
        problem = ""
        try:
            shutil.copy2(src, dst)
            res = subprocess.run([str(dst), "--help"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
            if res.returncode == 0:
                return dst
            problem = f"exit {res.returncode}: {res.stderr[-300:]!r}"
        except (OSError, subprocess.TimeoutExpired) as e:
            problem = repr(e)
        if time.monotonic() > deadline:
            raise E2EError(f"{src} does not run ({problem}); is a build still writing it?")
        time.sleep(1)


class Binaries:
    """Paths of everything the suite runs, from the environment with the documented fallbacks."""

    def __init__(self) -> None:
        self.meshd = _from_env("MESHD_BIN", Path(".build/debug/meshd"))
        self.sim = _from_env("SIM_ENGINE_BIN", Path(".build/debug/meshd-sim-engine"))
        self.llama_dir = _from_env("LLAMA_BIN_DIR", CACHE / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp" / "build" / "bin")
        self.llama_server = self.llama_dir / "llama-server"
        self.tiny_gguf = _from_env("TINY_GGUF", CACHE / "models" / "meshd-tiny.gguf")

    @staticmethod
    def require(path: Path, what: str, hint: str) -> Path:
        if not path.exists():
            raise E2EError(f"{what} not found at {path}: {hint}")
        if path.suffix != ".gguf" and not os.access(path, os.X_OK):
            raise E2EError(f"{what} at {path} is not executable")
        return path

    def snapshot(self, into: Path, timeout: float = 120) -> None:
        """Runs private copies of meshd and the sim engine: others may relink .build while the suite
        runs (exec of a file being written fails with ETXTBSY, and a new binary mid-run would mix
        versions). A copy taken mid-link fails its `--help` check and is taken again, for up to
        `timeout` seconds."""
        for attr, what, hint in (("meshd", "meshd", "run `swift build --product meshd` or set MESHD_BIN"),
                                 ("sim", "meshd-sim-engine", "run `swift build --product meshd-sim-engine` or set SIM_ENGINE_BIN")):
            src = self.require(getattr(self, attr), what, hint)
            setattr(self, attr, copy_runnable(src, into, timeout))

    def meshd_bin(self) -> Path:
        return self.require(self.meshd, "meshd", "run `swift build --product meshd` or set MESHD_BIN")

    def sim_bin(self) -> Path:
        return self.require(self.sim, "meshd-sim-engine",
                            "run `swift build --product meshd-sim-engine` or set SIM_ENGINE_BIN")

    def llama_server_bin(self) -> Path:
        return self.require(self.llama_server, "llama-server",
                            "run tools/build-llama.sh and set LLAMA_BIN_DIR to the directory it prints")

    def tiny_model(self) -> Path:
        return self.require(self.tiny_gguf, "tiny GGUF model",
                            "run tools/make-tiny-model.sh and set TINY_GGUF to the path it prints")


# MARK: small utilities


_issued_ports: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago, and not handed out before in this run (two
    calls in a row can get the same port from the kernel: a node's HTTP and mesh ports collided)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _issued_ports:
            _issued_ports.add(port)
            return port
    raise RuntimeError("no fresh loopback port in 100 tries")


def wait_until(cond: Callable[[], Any], timeout: float, interval: float = 0.05,
               what: str | Callable[[], str] = "condition") -> Any:
    """Polls `cond` until it returns a truthy value (returned) or `timeout` seconds pass (raises).
    `what` names the condition in the error; a callable is asked only then (for state seen at the timeout)."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - the condition may fail while a server starts
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise E2EError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}{extra}")
        time.sleep(interval)


def http_client(base_url: str, **kw: Any) -> httpx.Client:
    kw.setdefault("timeout", T)
    return httpx.Client(base_url=base_url, trust_env=False, **kw)


def yaml_value(v: Any) -> str:
    """JSON is valid YAML flow syntax: good enough for generated configs."""
    return json.dumps(v)


def render_config(cfg: dict[str, Any]) -> str:
    """Two-level YAML from nested dicts; lists and scalars in flow (JSON) style."""
    lines: list[str] = []
    for key, val in cfg.items():
        if isinstance(val, dict):
            lines.append(f"{key}:")
            for k2, v2 in val.items():
                lines.append(f"  {k2}: {yaml_value(v2)}")
        elif key == "engines" and isinstance(val, list) and val:
            lines.append("engines:")
            for eng in val:
                first = True
                for k2, v2 in eng.items():
                    lines.append(f"{'  - ' if first else '    '}{k2}: {yaml_value(v2)}")
                    first = False
        else:
            lines.append(f"{key}: {yaml_value(val)}")
    return "\n".join(lines) + "\n"


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the ")" that closes the command name.
        rest = stat[stat.rfind(")") + 2:].split()
        if len(rest) > 1 and int(rest[1]) == pid:
            out.append(int(d.name))
    return out


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def processes_with_arg(*needles: str) -> list[int]:
    """Pids whose command line contains every one of `needles` as an argument (exact match)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            args = cmdline(int(d.name))
            if args and all(n in args for n in needles) and pid_alive(int(d.name)):
                out.append(int(d.name))
    return out


# MARK: processes


class Proc:
    """A process started by the suite, with its combined output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            if self.wait(grace) is None:
                self.kill()
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)
            self.wait(5)

    def fail(self, msg: str) -> E2EError:
        return E2EError(f"{msg}\n--- {self.name} ({' '.join(self.argv)}) output, last lines ---\n{self.log_tail()}")


class ProcessPool:
    """Every process a test (or module) starts; `close()` kills them all, their leftovers too."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        # Extra pids to kill at the end (children of meshd seen during the test).
        self.extra_pids: set[int] = set()
        self._n = 0

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        self._n += 1
        p = Proc(name, argv, self.tmp / f"{self._n:02d}-{name}.log", env=env)
        self.procs.append(p)
        return p

    def logs(self) -> list[tuple[str, str]]:
        return [(f"{p.name} [{p.pid}] {p.log_path}", p.log_tail(80)) for p in self.procs]

    def close(self) -> None:
        for p in reversed(self.procs):
            try:
                self.extra_pids.update(children_of(p.pid))
            except Exception:  # noqa: BLE001
                pass
            try:
                p.stop(grace=3.0)
            except Exception:  # noqa: BLE001
                p.kill()
        for pid in self.extra_pids:
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


# MARK: the simulated engine


class SimEngine:
    """A running meshd-sim-engine (`restart()` brings it back on the same port)."""

    def __init__(self, pool: ProcessPool, binary: Path, *args: str, port: int = 0) -> None:
        self.pool = pool
        self.binary = binary
        self.args = [str(a) for a in args]
        self.port = port
        self.proc: Proc | None = None
        self.start()

    def start(self) -> None:
        port_file = self.pool.tmp / f"sim-{os.getpid()}-{id(self)}-{time.monotonic_ns()}.port"
        argv = [str(self.binary), "--host", "127.0.0.1", "--port", str(self.port), "--port-file", str(port_file), *self.args]
        self.proc = self.pool.start("sim-engine", argv)
        proc = self.proc

        def ready() -> bool:
            if not proc.alive():
                raise proc.fail("sim engine exited during start")
            return port_file.exists() and port_file.read_text().strip().isdigit()

        try:
            wait_until(ready, 10, what="sim engine port file")
            self.port = int(port_file.read_text().strip())
            self.url = f"http://127.0.0.1:{self.port}"
            wait_until(lambda: self.stats() is not None, 10, what="sim engine /sim/stats")
        except E2EError as e:
            raise proc.fail(str(e)) from None

    def restart(self) -> None:
        """Starts a fresh process on the same port (after `kill()`)."""
        assert self.proc is None or not self.proc.alive()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.start()
                return
            except E2EError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def stats(self) -> dict[str, Any]:
        with http_client(self.url) as c:
            return c.get("/sim/stats").raise_for_status().json()

    def control(self, **settings: Any) -> dict[str, Any]:
        with http_client(self.url) as c:
            return c.post("/sim/control", json=settings).raise_for_status().json()


# MARK: llama-server


class LlamaServer:
    """A llama-server over the tiny model, on a free port, waited on until /health is 200."""

    def __init__(self, pool: ProcessPool, binary: Path, model: Path, alias: str = "meshd-tiny",
                 args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.alias = alias
        argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), "-t", "1",
                *(args if args is not None else ["-c", "512", "--embeddings", "--pooling", "mean"]), "--alias", alias]
        self.proc = pool.start("llama-server", argv)

        def healthy() -> bool:
            if not self.proc.alive():
                raise self.proc.fail("llama-server exited during start")
            with http_client(self.url, timeout=2) as c:
                return c.get("/health").status_code == 200

        try:
            wait_until(healthy, 60, interval=0.1, what="llama-server /health 200")
        except E2EError as e:
            raise self.proc.fail(str(e)) from None


# MARK: meshd


class Meshd:
    """meshd with a generated YAML config in a temp dir."""

    def __init__(self, pool: ProcessPool, binary: Path, engines: list[dict[str, Any]] | None, *,
                 http: dict[str, Any] | None = None, timeouts: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 expect_ready: bool | None = None, wait: bool = True, name: str = "e2e") -> None:
        self.pool = pool
        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = pool.tmp / f"meshd-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.admin_socket = self.dir / "admin" / "meshd.sock"
        cfg: dict[str, Any] = {
            "node": {"name": name},
            "state_dir": str(self.dir / "state"),
            "http": {"listen": f"127.0.0.1:{self.port}", "shutdown_grace_seconds": 20, **(http or {})},
            "admin": {"socket": str(self.admin_socket)},
            # Keep the mesh listener's port away from ours (it is only validated today).
            "mesh": {"listen": f"127.0.0.1:{free_port()}"},
            "discovery": {"mdns": False},
            "engine_poll": {"interval_ms": 200},
            "timeouts": {"connect_ms": 1000, **(timeouts or {})},
            "engines": engines if engines is not None else [],
            **(extra or {}),
        }
        self.config = cfg
        self.config_path = self.dir / "meshd.yaml"
        self.config_path.write_text(render_config(cfg))
        e = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
             and not k.startswith("MESHD_") and k not in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")}
        # Never reach a system bus (and through it an avahi-daemon on the machine's real network).
        e["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent/meshd-tests-no-system-bus"
        e.update(env or {})
        self.proc = pool.start("meshd", [str(binary), "--config", str(self.config_path)], env=e)
        if wait:
            self.wait_started(expect_ready=bool(engines) if expect_ready is None else expect_ready)

    def client(self, **kw: Any) -> httpx.Client:
        return http_client(self.url, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        with self.client() as c:
            return c.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        with self.client() as c:
            return c.post(path, **kw)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        with self.client() as c:
            return c.request(method, path, **kw)

    def wait_started(self, expect_ready: bool, timeout: float = 30) -> None:
        def healthz() -> bool:
            if not self.proc.alive():
                raise self.proc.fail(f"meshd exited with {self.proc.popen.returncode} during start")
            return self.get("/healthz").status_code == 200

        try:
            wait_until(healthz, timeout, interval=0.05, what="meshd /healthz")
            if expect_ready:
                wait_until(lambda: self.get("/readyz").status_code == 200, timeout, what="meshd /readyz 200")
        except E2EError as e:
            raise self.proc.fail(str(e)) from None

    def admin(self, path: str) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.admin_socket))
        with httpx.Client(transport=transport, base_url="http://meshd", timeout=T, trust_env=False) as c:
            return c.get(path)

    def engine_children(self) -> list[int]:
        """Live child processes of meshd (managed engines)."""
        kids = [p for p in children_of(self.proc.pid) if pid_alive(p)]
        self.pool.extra_pids.update(kids)
        return kids

    def fail(self, msg: str) -> E2EError:
        return self.proc.fail(msg)


# MARK: wire formats


def sse_events(lines: Iterable[str]) -> list[str]:
    """The `data:` payloads of an SSE stream, in order."""
    out = []
    for line in lines:
        if line.startswith("data:"):
            out.append(line[5:].lstrip(" "))
    return out


def read_sse(resp: httpx.Response) -> list[str]:
    return sse_events(resp.iter_lines())


def ndjson(resp: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in resp.iter_lines() if line.strip()]


def chat_body(model: str, stream: bool, max_tokens: int | None = None, content: str = "Say hello", **extra: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    b.update(extra)
    return b
