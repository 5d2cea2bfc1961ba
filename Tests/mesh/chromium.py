"""Debian's headless Chromium driven over the DevTools protocol (one page), for the dashboard test.

Chromium may reach loopback only: every host name but 127.0.0.1 resolves to nothing, and the
background services that phone home are off. `CHROMIUM` names the binary (default: `chromium` on PATH)."""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import websocket

from meshd_e2e import ProcessPool, wait_until


def chromium_binary() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


class Chromium:
    def __init__(self, pool: ProcessPool, profile: Path) -> None:
        binary = chromium_binary()
        assert binary, "chromium is not installed (tools/test.sh installs Debian's chromium package)"
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = pool.start("chromium", [
            binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--no-default-browser-check", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", "--metrics-recording-only", "--mute-audio",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--window-size=1400,1000", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0", "about:blank"])

        def endpoint() -> str | None:
            if not self.proc.alive():
                raise self.proc.fail("chromium exited during start")
            for line in self.proc.log().splitlines():
                if "DevTools listening on ws://" in line:
                    return line.split("ws://", 1)[1].split("/", 1)[0]
            return None

        self.http = f"http://{wait_until(endpoint, 30, interval=0.1, what='the DevTools endpoint')}"
        pages = [t for t in httpx.get(f"{self.http}/json/list", timeout=10).json() if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=15, suppress_origin=True)
        self.ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        mid = next(self.ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def wait(self, expression: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        # (The page may still be loading: a missing element is a no, not an error.)
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        while True:
            v = self.eval(guarded)
            if v:
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what} ({expression})")
            time.sleep(0.1)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - closing what may already be gone
            pass
        # Its own session (ProcessPool starts each so): the whole group goes, renderers included.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)
