"""Operations: an engine that dies and comes back, graceful shutdown under systemd's notify
protocol (READY/WATCHDOG/STOPPING, draining in-flight streams), Prometheus metrics, and the admin
unix socket."""
from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import openai

from meshd_e2e import Binaries, Meshd, ProcessPool, SimEngine, chat_body, wait_until

MODEL = "sim-a"


class NotifyListener:
    """AF_UNIX datagram socket collecting sd_notify messages (as in Tests/ops/test_sd_notify.py)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.address = str(path)
        self.received: list[tuple[float, str]] = []

    def wait_for(self, assignment: str, timeout: float) -> float:
        """Receives until a datagram holds `assignment`; returns when it arrived (monotonic)."""
        for t, msg in self.received:
            if assignment in msg.split("\n"):
                return t
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                msg = self.sock.recv(65536).decode()
            except socket.timeout:
                break
            now = time.monotonic()
            self.received.append((now, msg))
            if assignment in msg.split("\n"):
                return now
        raise AssertionError(f"no {assignment} within {timeout}s; got {[m for _, m in self.received]}")

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                self.received.append((time.monotonic(), self.sock.recv(65536).decode()))
            except socket.timeout:
                break

    def count(self, assignment: str) -> int:
        return sum(assignment in m.split("\n") for _, m in self.received)

    def close(self) -> None:
        self.sock.close()


# MARK: engine dies and comes back


def test_engine_dies_and_comes_back(start_sim: Callable[..., SimEngine], start_meshd: Callable[..., Meshd]) -> None:
    sim = start_sim("--models", MODEL, "--gen-tps", 0)
    m = start_meshd([{"kind": "openai", "url": sim.url}])
    body = chat_body(MODEL, False, 2)
    assert m.post("/v1/chat/completions", json=body).status_code == 200

    sim.kill()
    t0 = time.monotonic()
    wait_until(lambda: m.get("/readyz").status_code == 503, 3, what="/readyz 503 after the engine died")
    r = m.post("/v1/chat/completions", json=body)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "engine_unavailable"
    assert m.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).status_code == 503
    assert time.monotonic() - t0 < 3.5
    engines = m.admin("/v1/engines").json()
    assert engines[0]["healthy"] is False and engines[0]["detail"]

    sim.restart()  # same port
    t1 = time.monotonic()
    wait_until(lambda: m.get("/readyz").status_code == 200, 3, what="/readyz 200 after the engine came back")
    wait_until(lambda: m.post("/v1/chat/completions", json=body).status_code == 200, 3 - (time.monotonic() - t1),
               what="requests served again")
    assert m.proc.alive()


# MARK: graceful shutdown with sd_notify


def test_graceful_shutdown_with_systemd_notify(tmp_path: Path, start_sim: Callable[..., SimEngine],
                                               start_meshd: Callable[..., Meshd]) -> None:
    sim = start_sim("--models", MODEL, "--gen-tps", 5)
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        m = start_meshd([{"kind": "openai", "url": sim.url}], wait=False,
                        env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000"})
        t_ready = listener.wait_for("READY=1", 20)
        assert m.get("/healthz").status_code == 200, "serving once READY=1 is sent"
        wait_until(lambda: m.get("/readyz").status_code == 200, 10, what="engine ready")
        # Watchdog pings every WATCHDOG_USEC/2 = 1 s.
        listener.wait_for("WATCHDOG=1", 3)
        listener.drain(2.2)
        assert listener.count("WATCHDOG=1") >= 2, listener.received
        assert listener.count("READY=1") == 1
        assert listener.count("STOPPING=1") == 0
        assert t_ready > 0

        # A slow stream: 10 tokens at 5 tok/s.
        lines: list[str] = []
        first_token = threading.Event()
        errors: list[BaseException] = []

        def consume() -> None:
            try:
                with httpx.Client(timeout=20, trust_env=False) as c, \
                        c.stream("POST", m.url + "/v1/chat/completions", json=chat_body(MODEL, True, 10)) as r:
                    assert r.status_code == 200
                    for line in r.iter_lines():
                        if line:
                            lines.append(line)
                        if '"content":"tok' in line:
                            first_token.set()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                first_token.set()

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        assert first_token.wait(5), "stream did not start"
        assert not errors, errors
        m.proc.signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1", 3)

        # New connections are refused while the in-flight stream drains. (The first attempt waits
        # a moment: a connection that races the listener's close is another test's subject.)
        time.sleep(0.3)

        def refused() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", m.port), timeout=1):
                    return False
            except ConnectionRefusedError:
                return True

        wait_until(refused, 2, interval=0.2, what="the listener to close")
        assert t.is_alive(), "the stream must still be in flight when the listener closes"

        t.join(15)
        assert not t.is_alive(), "stream did not finish"
        assert not errors, errors
        assert lines[-1] == "data: [DONE]", lines[-3:]
        text = "".join(re.findall(r'"content":"(tok\d+ )"', "".join(lines)))
        assert text == "".join(f"tok{i} " for i in range(10))
        assert not any('"error"' in line for line in lines)

        rc = m.proc.wait(20)
        assert rc == 0, m.fail(f"meshd exited with {rc} after SIGTERM")
        assert "stopped" in m.proc.log()
    finally:
        listener.close()


def test_connections_during_shutdown_do_not_crash(pool: ProcessPool, bins: Binaries) -> None:
    """Clients that connect while meshd begins its graceful shutdown must be turned away (or served),
    never crash it: every SIGTERM ends with exit status 0. The race is timing-dependent, so several
    short rounds run (each ~0.3 s when meshd behaves); several event-loop threads (a supported
    `http.threads` setting) make it likely in every round."""
    rounds, crashed = 10, []
    t_end = time.monotonic() + 25
    for i in range(rounds):
        if time.monotonic() > t_end:
            break
        m = Meshd(pool, bins.meshd_bin(), [], expect_ready=False, name=f"e2e-race{i}", http={"threads": 4},
                  env={"SWIFT_BACKTRACE": "enable=no"})
        stop = threading.Event()

        def hammer() -> None:
            deadline = time.monotonic() + 5
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", m.port), timeout=1).close()
                except ConnectionRefusedError:
                    return  # the listener is closed
                except OSError:
                    continue  # accept queue momentarily full: try again

        t = threading.Thread(target=hammer, daemon=True)
        t.start()
        time.sleep(0.01)
        m.proc.signal(signal.SIGTERM)
        rc = m.proc.wait(10)
        stop.set()
        t.join(5)
        if rc != 0:
            fatal = [line for line in m.proc.log().splitlines() if "Fatal error" in line or "crashed" in line]
            crashed.append((i, rc, fatal[:2]))
            break
    assert not crashed, f"meshd crashed on SIGTERM while clients were connecting: {crashed}"


# MARK: metrics


def metric_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


def labels(line: str) -> dict[str, str]:
    inner = line[line.index("{") + 1:line.rindex("}")]
    return dict(re.findall(r'(\w+)="([^"]*)"', inner))


def value(line: str) -> float:
    return float(line.rsplit(" ", 1)[1])


def test_metrics(start_sim: Callable[..., SimEngine], start_meshd: Callable[..., Meshd]) -> None:
    sim = start_sim("--models", MODEL, "--gen-tps", 0)
    m = start_meshd([{"kind": "openai", "url": sim.url}])
    oa = openai.OpenAI(base_url=m.url + "/v1", api_key="unused", timeout=10, max_retries=0)
    oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one two"}], max_tokens=3)
    list(oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one two"}], max_tokens=4, stream=True))
    assert m.post("/api/generate", json={"model": MODEL, "prompt": "a b c", "stream": False,
                                         "options": {"num_predict": 2}}).status_code == 200
    assert m.post("/v1/chat/completions", json=chat_body("missing-model", False)).status_code == 404

    # A request is counted just after its last byte is written: the client can read /metrics first
    # (seen under load), so wait for the four to be counted, then check everything in one reading.
    def by_route(text: str) -> dict[tuple[str, str, str], float]:
        return {(labels(x)["api"], labels(x)["model"], labels(x)["status"]): value(x)
                for x in metric_lines(text, "meshd_requests_total")}
    deadline = time.monotonic() + 10
    while True:
        r = m.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        if sum(by_route(text).values()) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    totals = metric_lines(text, "meshd_requests_total")
    assert totals, text
    by = by_route(text)
    assert by.get(("openai", MODEL, "200")) == 2, by
    assert by.get(("ollama", MODEL, "200")) == 1, by
    # Unknown model names share one label: clients cannot grow the metric set without bound.
    assert by.get(("openai", "(unknown)", "404")) == 1, by
    assert not any(k[1] == "missing-model" for k in by), by
    assert all("route" in labels(x) for x in totals)

    buckets = metric_lines(text, "meshd_request_duration_seconds_bucket")
    assert buckets and all("le" in labels(x) for x in buckets)
    inf = [x for x in buckets if labels(x)["le"] == "+Inf" and labels(x)["api"] == "openai" and labels(x)["model"] == MODEL]
    assert inf and value(inf[0]) == 2
    assert metric_lines(text, "meshd_request_duration_seconds_count")
    assert metric_lines(text, "meshd_request_duration_seconds_sum")

    ttft = metric_lines(text, "meshd_time_to_first_token_seconds_bucket")
    assert ttft, "streamed requests record time to first token"
    assert any(labels(x).get("le") == "+Inf" and value(x) >= 1 for x in ttft)

    tin = {labels(x)["model"]: value(x) for x in metric_lines(text, "meshd_tokens_in_total")}
    tout = {labels(x)["model"]: value(x) for x in metric_lines(text, "meshd_tokens_out_total")}
    # Prompt words: 2 + 2 + 3; generated: 3 + 4 + 2.
    assert tin.get(MODEL) == 7, tin
    assert tout.get(MODEL) == 9, tout

    inflight = metric_lines(text, "meshd_requests_in_flight")
    assert inflight and value(inflight[0]) == 0

    # Swift tasks run on the event loops that own the connections (meshd installs the runtime's
    # global-executor hook itself, which also works with a statically linked Swift runtime).
    on_loops = metric_lines(text, "meshd_tasks_on_event_loops")
    assert on_loops and value(on_loops[0]) == 1, text

    # ...and run there as the runtime runs its own global jobs (on the generic executor), so a
    # request's task does not park and re-enqueue itself at every hop between an actor and
    # nonisolated code: 27 jobs a request when they ran as the event loop's serial executor, ~2 now
    # (heartbeats and engine polls add a few while the requests run).
    def jobs() -> float:
        lines = metric_lines(m.get("/metrics").text, "meshd_executor_jobs_total")
        assert lines, "meshd_executor_jobs_total missing"
        return value(lines[0])
    before, n = jobs(), 40
    with httpx.Client(base_url=m.url, timeout=10) as c:
        for _ in range(n):
            assert c.post("/v1/chat/completions", json=chat_body(MODEL, False)).status_code == 200
    per_request = (jobs() - before) / n
    assert per_request <= 8, f"{per_request:.1f} executor jobs per request"


# MARK: admin socket


def test_admin_socket(start_sim: Callable[..., SimEngine], start_meshd: Callable[..., Meshd]) -> None:
    sim = start_sim("--models", f"{MODEL},sim-b", "--loaded", MODEL, "--gen-tps", 0)
    m = start_meshd([{"kind": "ollama", "url": sim.url}], name="e2e-admin")
    st = os.stat(m.admin_socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)

    s = m.admin("/v1/status")
    assert s.status_code == 200 and s.headers["content-type"].startswith("application/json")
    status: dict[str, Any] = s.json()
    assert status["node"] == "e2e-admin"
    assert status["engines_total"] == 1 and status["engines_healthy"] == 1
    assert set(status["models"]) >= {MODEL, "sim-b"}
    assert status["uptime_seconds"] >= 0

    engines = m.admin("/v1/engines").json()
    assert len(engines) == 1
    e = engines[0]
    assert e["kind"] == "ollama" and e["url"].rstrip("/") == sim.url and e["healthy"] is True
    assert {x["name"] for x in e["models"]} >= {MODEL, "sim-b"}
    assert {x["name"]: x["loaded"] for x in e["models"]}[MODEL] is True

    route = m.admin(f"/v1/route?model={MODEL}").json()
    assert route["model"] == MODEL and route["engine"] == e["id"] and route["loaded"] is True
    assert route["node"] == "e2e-admin" and route["reason"]
    missing = m.admin("/v1/route?model=nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    assert m.admin("/v1/route").status_code == 400

    models = m.admin("/v1/models").json()
    assert {x["name"] for x in models} >= {MODEL, "sim-b"}
    assert m.admin("/v1/nothing").status_code == 404


def test_meshctl_takes_the_socket_before_or_after_the_command_or_from_the_environment(pool: ProcessPool, bins: Binaries) -> None:
    """tools/run-node.sh tells a newcomer to run `meshctl --socket PATH status`: that command works as printed,
    as does the option after the command and MESHD_ADMIN_SOCKET."""
    m = Meshd(pool, bins.meshd_bin(), [], expect_ready=False, name="e2e-meshctl")
    exe = os.environ.get("MESHCTL_BIN") or str(bins.meshd_bin().parent / "meshctl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")}
    sock = str(m.admin_socket)
    for argv, extra_env in (([exe, "--socket", sock, "status"], {}), ([exe, "status", "--socket", sock], {}),
                            ([exe, f"--socket={sock}", "--json", "status"], {}), ([exe, "status"], {"MESHD_ADMIN_SOCKET": sock})):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=15, env={**env, **extra_env}, stdin=subprocess.DEVNULL)
        assert r.returncode == 0 and "e2e-meshctl" in r.stdout, (argv, r.stdout, r.stderr)
    printed = (Path(__file__).resolve().parents[2] / "tools" / "run-node.sh").read_text()
    assert "meshctl --socket $SOCK status" in printed
