"""HTTPS for clients (`http.tls`, issue 17): the real openai and ollama clients connect with a CA file,
streamed and not; plain HTTP and a client trusting another CA are refused; a client that stalls in the
TLS handshake is cut off by the head timeout like one that stalls in its head; a reload (SIGHUP)
serves a renewed certificate to new connections while a stream on the old one ends whole. The test
CAs and certificates come from Tests/cloud/make-test-ca.sh (openssl)."""
from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import ollama
import openai
import pytest

from meshd_e2e import Meshd, SimEngine, render_config, wait_until

CA_SCRIPT = Path(__file__).resolve().parents[1] / "cloud" / "make-test-ca.sh"
MSGS = [{"role": "user", "content": "hello over tls"}]


def trust(d: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(d / "ca.pem"))


def make_ca(d: Path) -> Path:
    subprocess.run(["bash", str(CA_SCRIPT), str(d)], check=True, capture_output=True, timeout=60)
    return d


def test_https_clients_stalled_handshakes_and_certificate_reload(start_sim: Callable[..., SimEngine],
                                                                  start_meshd: Callable[..., Meshd], tmp_path: Path) -> None:
    first, renewed = make_ca(tmp_path / "tls1"), make_ca(tmp_path / "tls2")
    sim = start_sim("--models", "tls-model", "--gen-tps", 25)
    m = start_meshd([{"kind": "openai", "url": sim.url}], wait=False,
                    http={"tls": {"cert_file": str(first / "server.pem"), "key_file": str(first / "server.key")}, "header_timeout_ms": 1000})
    url = f"https://127.0.0.1:{m.port}"

    def get(path: str, ca: Path, **kw: Any) -> httpx.Response:
        with httpx.Client(base_url=url, verify=trust(ca), trust_env=False, timeout=10) as c:
            return c.get(path, **kw)

    def up() -> bool:
        if not m.proc.alive():
            raise m.proc.fail("meshd exited")
        try:
            return get("/readyz", first).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 30, interval=0.1, what="meshd ready over https")

    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                       http_client=httpx.Client(verify=trust(first), trust_env=False, timeout=20))
    r = oa.chat.completions.create(model="tls-model", messages=MSGS, max_tokens=4)
    assert r.choices[0].message.content and r.usage.completion_tokens == 4
    text = "".join(ch.choices[0].delta.content or "" for ch in oa.chat.completions.create(model="tls-model", messages=MSGS, max_tokens=4,
                                                                                        stream=True) if ch.choices)
    assert text == r.choices[0].message.content
    ol = ollama.Client(host=url, verify=trust(first), trust_env=False, timeout=20)
    parts = list(ol.chat(model="tls-model", messages=MSGS, options={"num_predict": 4}, stream=True))
    assert "".join(p.message.content for p in parts) == text and parts[-1].done

    # Plain HTTP on the TLS port, and a client that trusts another CA: refused.
    with pytest.raises(httpx.HTTPError):
        with httpx.Client(trust_env=False, timeout=5) as c:
            c.get(f"http://127.0.0.1:{m.port}/healthz")
    with pytest.raises(httpx.ConnectError):
        get("/healthz", renewed)

    # Stalled in the handshake (nothing, or half a ClientHello): cut off after the 1 s head timeout.
    for sent in (b"", b"\x16\x03\x01\x02\x00\x01"):
        s = socket.create_connection(("127.0.0.1", m.port), timeout=10)
        s.sendall(sent)
        t0 = time.monotonic()
        try:
            got = s.recv(4096)
        except ConnectionResetError:
            got = b""
        waited = time.monotonic() - t0
        s.close()
        assert got == b"" and 0.5 < waited < 5, (sent, got, waited)
    print(f"\n[tls] a handshake stalled with {len(sent)} bytes sent was cut off after {waited:.2f} s")

    # Reload with a renewed certificate (another CA here) while a 3 s stream runs on the old one.
    done: dict[str, Any] = {}

    def stream() -> None:
        with httpx.Client(base_url=url, verify=trust(first), trust_env=False, timeout=30) as c:
            with c.stream("POST", "/v1/chat/completions", json={"model": "tls-model", "messages": MSGS, "max_tokens": 75, "stream": True}) as s:
                lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
        done["last"] = lines[-1] if lines else None
        done["chunks"] = sum(1 for ln in lines if '"content":"' in ln and '"content":""' not in ln)

    t = threading.Thread(target=stream)
    t.start()
    wait_until(lambda: sim.stats()["in_flight"] == 1, 5, what="the stream to start")
    m.config["http"]["tls"] = {"cert_file": str(renewed / "server.pem"), "key_file": str(renewed / "server.key")}
    m.config_path.write_text(render_config(m.config))
    m.proc.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in m.proc.log(), 10, interval=0.1, what="the reload")
    assert get("/healthz", renewed).status_code == 200
    with pytest.raises(httpx.ConnectError):
        get("/healthz", first)
    t.join(20)
    assert done == {"last": "data: [DONE]", "chunks": 75}, done

    # A key file that does not match: the reload is refused and the renewed identity stays.
    m.config["http"]["tls"] = {"cert_file": str(renewed / "server.pem"), "key_file": str(first / "server.key")}
    m.config_path.write_text(render_config(m.config))
    before = m.proc.log().count("reload refused")
    m.proc.signal(signal.SIGHUP)
    wait_until(lambda: m.proc.log().count("reload refused") > before, 10, interval=0.1, what="the refusal")
    line = next(ln for ln in reversed(m.proc.log().splitlines()) if "reload refused" in ln)
    assert "http.tls.key_file" in line, line
    assert get("/healthz", renewed).status_code == 200


def test_tls_needs_both_files_and_readable_ones(start_meshd: Callable[..., Meshd], bins: Any, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "tls")
    cfg = tmp_path / "half.yaml"
    cfg.write_text(render_config({"node": {"name": "t"}, "http": {"tls": {"cert_file": str(ca / "server.pem")}}}))
    res = subprocess.run([str(bins.meshd_bin()), "--config", str(cfg), "--check-config"], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "http.tls.cert_file: TLS needs both http.tls.cert_file and http.tls.key_file; set http.tls.key_file too" in res.stderr, res.stderr
    # A key file that is not there: meshd does not start, and says which key and file.
    m = start_meshd([], wait=False, http={"tls": {"cert_file": str(ca / "server.pem"), "key_file": str(tmp_path / "nope.key")}})
    assert m.proc.wait(20) not in (None, 0)
    assert "configuration error" in m.proc.log() and "http.tls.key_file" in m.proc.log() and "nope.key" in m.proc.log(), m.proc.log()


def test_connection_cap_over_tls_answers_503_inside_tls(start_meshd: Callable[..., Meshd], tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "tls")
    m = start_meshd([], wait=False, http={"tls": {"cert_file": str(ca / "server.pem"), "key_file": str(ca / "server.key")},
                                          "max_connections": 2})
    url = f"https://127.0.0.1:{m.port}"

    def up() -> bool:
        try:
            with httpx.Client(verify=trust(ca), trust_env=False, timeout=5) as c:
                return c.get(f"{url}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 30, interval=0.1, what="meshd over https")
    held = []
    for _ in range(2):
        raw = socket.create_connection(("127.0.0.1", m.port), timeout=10)
        held.append(trust(ca).wrap_socket(raw, server_hostname="127.0.0.1"))  # handshake done, then idle
    try:
        with httpx.Client(verify=trust(ca), trust_env=False, timeout=10) as c:
            r = c.get(f"{url}/healthz")
        assert r.status_code == 503 and "connections" in r.text, r.text
    finally:
        for s in held:
            s.close()
    wait_until(up, 10, interval=0.1, what="a place again once the held connections closed")
