"""sd_notify protocol checks: a NOTIFY_SOCKET listener as systemd would run it.

`NotifyListener` is meant for the meshd end-to-end test (start meshd with NOTIFY_SOCKET set,
expect READY=1, WATCHDOG=1, STOPPING=1). Here it checks
  * itself, against systemd-notify (Swift-free), for path and abstract (@) sockets;
  * Sources/MeshNode/SystemdNotify.swift, compiled standalone with swiftc and a tiny driver.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTIFIER_SWIFT = ROOT / "Sources" / "MeshNode" / "SystemdNotify.swift"


class NotifyListener:
    """AF_UNIX SOCK_DGRAM socket that collects sd_notify datagrams."""

    def __init__(self, tmp: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"meshd-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = tmp / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["NOTIFY_SOCKET"] = self.address
        env.update(extra)
        return env

    def messages(self, timeout: float = 0.5) -> list[str]:
        """Datagrams received until none arrives for `timeout` seconds."""
        out = []
        self.sock.settimeout(timeout)
        try:
            while True:
                out.append(self.sock.recv(65536).decode())
        except (socket.timeout, BlockingIOError):
            pass
        return out

    def wait_for(self, assignment: str, timeout: float) -> list[str]:
        """All datagrams up to and including the first holding `assignment` (e.g. READY=1)."""
        deadline = time.monotonic() + timeout
        out: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                msg = self.sock.recv(65536).decode()
            except socket.timeout:
                break
            out.append(msg)
            if assignment in msg.split("\n"):
                return out
        raise AssertionError(f"no {assignment} within {timeout}s; got {out}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path):
    lst = NotifyListener(tmp_path, abstract=request.param == "abstract")
    yield lst
    lst.close()


@pytest.mark.skipif(shutil.which("systemd-notify") is None, reason="systemd-notify not installed")
def test_listener_with_systemd_notify(listener: NotifyListener) -> None:
    # --no-block: no BARRIER=1 round trip (there is no systemd to answer it).
    res = subprocess.run(["systemd-notify", "--no-block", "--ready", "--status=up"],
                         env=listener.env(), capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, res.stderr
    msgs = listener.wait_for("READY=1", timeout=5)
    assert "STATUS=up" in msgs[-1].split("\n")


DRIVER = r'''
import Glibc
let n = SystemdNotifier()
print("enabled=\(n.isEnabled)")
print("watchdog=\(n.watchdogInterval.map { "\($0)" } ?? "nil")")
print("ping=\(n.watchdogPingInterval.map { "\($0)" } ?? "nil")")
print("sent=\(n.ready()),\(n.status("a\nb")),\(n.watchdog()),\(n.stopping())")
print("raw=\(n.notify("X=1\nY=2"))")
print("missing=\(SystemdNotifier(environment: ["NOTIFY_SOCKET": "/nonexistent/sock"]).ready())")
print("toolong=\(SystemdNotifier(environment: ["NOTIFY_SOCKET": "/" + String(repeating: "a", count: 200)]).ready())")
print("unset=\(SystemdNotifier(environment: [:]).isEnabled),\(SystemdNotifier(environment: [:]).ready())")
print("otherpid=\(SystemdNotifier(environment: ["WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"]).watchdogInterval.map { "\($0)" } ?? "nil")")
'''


@pytest.fixture(scope="module")
def notifier_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    swiftc = shutil.which("swiftc")
    if swiftc is None:
        pytest.skip("swiftc not installed")
    d = tmp_path_factory.mktemp("sdnotify")
    (d / "main.swift").write_text(DRIVER)
    exe = d / "driver"
    res = subprocess.run([swiftc, "-swift-version", "6", str(NOTIFIER_SWIFT), str(d / "main.swift"),
                          "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return exe


def test_swift_notifier(listener: NotifyListener, notifier_driver: Path) -> None:
    res = subprocess.run([str(notifier_driver)], env=listener.env(WATCHDOG_USEC="30000000"),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    out = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert out["enabled"] == "true"
    assert out["watchdog"] == "30.0 seconds"
    assert out["ping"] == "15.0 seconds"
    assert out["sent"] == "true,true,true,true"
    assert out["raw"] == "true"
    assert out["missing"] == "false"
    assert out["toolong"] == "false"
    assert out["unset"] == "false,false"
    assert out["otherpid"] == "nil"
    assert listener.messages() == ["READY=1", "STATUS=a b", "WATCHDOG=1", "STOPPING=1", "X=1\nY=2"]


def test_swift_notifier_disabled_without_socket(notifier_driver: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    res = subprocess.run([str(notifier_driver)], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "enabled=false" in res.stdout and "sent=false,false,false,false" in res.stdout
