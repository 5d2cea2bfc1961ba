"""API keys, the off-loopback safety rule, and configuration errors (exit status 2, messages that
name the file and the key), and `--check-config` output with the keys redacted."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import ollama
import openai
import pytest

from meshd_e2e import Binaries, Meshd, SimEngine, free_port

MODEL = "sim-a"
KEY = "k1-secret-e2e-key"


@pytest.fixture
def sim(start_sim: Callable[..., SimEngine]) -> SimEngine:
    return start_sim("--models", MODEL, "--gen-tps", 0)


def test_api_keys(sim: SimEngine, start_meshd: Callable[..., Meshd]) -> None:
    m = start_meshd([{"kind": "openai", "url": sim.url}], http={"api_keys": [KEY, "k2-other"]})
    # Health endpoints stay open.
    assert m.get("/healthz").status_code == 200
    assert m.get("/readyz").status_code == 200
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}, {"Authorization": "Bearer"}):
        r = m.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers.get("www-authenticate", "").startswith("Bearer")
        err = r.json()["error"]
        assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
        assert KEY not in r.text
    r = m.post("/api/chat", json={"model": MODEL, "messages": []})
    assert r.status_code == 401 and isinstance(r.json()["error"], str)
    assert m.get("/v1/models").status_code == 401
    assert m.get("/api/tags").status_code == 401

    # The right key through the official clients.
    oa = openai.OpenAI(base_url=m.url + "/v1", api_key=KEY, timeout=10, max_retries=0)
    r2 = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r2.choices[0].message.content == "tok0 tok1 "
    assert MODEL in [x.id for x in oa.models.list()]
    assert openai.OpenAI(base_url=m.url + "/v1", api_key="k2-other", timeout=10, max_retries=0).models.list().data
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=m.url + "/v1", api_key="nope", timeout=10, max_retries=0).models.list()
    ol = ollama.Client(host=m.url, timeout=10, trust_env=False, headers={"Authorization": f"Bearer {KEY}"})
    assert ol.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2}).done
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=m.url, timeout=10, trust_env=False).list()
    assert e.value.status_code == 401
    # The key never reaches the log.
    assert KEY not in m.proc.log()


def run_meshd(bins: Binaries, *args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bins.meshd_bin()), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_refuses_off_loopback_without_keys(bins: Binaries, start_meshd: Callable[..., Meshd],
                                           sim: SimEngine) -> None:
    m = start_meshd([{"kind": "openai", "url": sim.url}], wait=False, http={"listen": f"0.0.0.0:{free_port()}"})
    rc = m.proc.wait(15)
    assert rc == 2, m.fail(f"exit status {rc}, expected 2")
    log = m.proc.log()
    assert "api key" in log.lower() or "api_keys" in log, log
    assert "http.listen" in log and str(m.config_path) in log, log

    # With auth: none it starts (and serves on loopback too).
    port = free_port()
    m2 = start_meshd([{"kind": "openai", "url": sim.url}], http={"listen": f"0.0.0.0:{port}", "auth": "none"}, wait=False)
    m2.port = port
    m2.url = f"http://127.0.0.1:{port}"
    m2.wait_started(expect_ready=True)
    assert m2.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).status_code == 200

    # And with keys it starts too.
    port = free_port()
    m3 = start_meshd([{"kind": "openai", "url": sim.url}], http={"listen": f"0.0.0.0:{port}", "api_keys": [KEY]}, wait=False)
    m3.url = f"http://127.0.0.1:{port}"
    m3.wait_started(expect_ready=True)
    assert m3.get("/v1/models").status_code == 401


CASES = {
    "broken_yaml": ("http:\n  listen: \"127.0.0.1:1\n  api_keys: [a\n", ["(syntax)"]),
    "tab_indent": ("http:\n\tlisten: \"127.0.0.1:11435\"\n", ["(syntax)"]),
    "unknown_key": ("http:\n  listn: \"127.0.0.1:11435\"\n", ["http.listn", "listen"]),
    "unknown_top_key": ("enginez: []\n", ["enginez", "engines"]),
    "bad_url": ("engines:\n  - kind: openai\n    url: \"ftp://127.0.0.1:8080\"\n", ["engines[0].url", "http://"]),
    "bad_port": ("engines:\n  - kind: ollama\n    url: \"http://127.0.0.1:99999\"\n", ["engines[0].url"]),
    "bad_kind": ("engines:\n  - kind: vllmx\n    url: \"http://127.0.0.1:8000\"\n", ["engines[0].kind"]),
    "bad_type": ("http:\n  max_body_bytes: lots\n", ["http.max_body_bytes", "integer"]),
    "bad_listen": ("http:\n  listen: \"http://127.0.0.1:80\"\n", ["http.listen"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_errors(bins: Binaries, tmp_path: Path, case: str) -> None:
    text, needles = CASES[case]
    cfg = tmp_path / f"{case}.yaml"
    cfg.write_text(text)
    for extra in ([], ["--check-config"]):
        res = run_meshd(bins, "--config", str(cfg), *extra)
        assert res.returncode == 2, (extra, res.returncode, res.stdout, res.stderr)
        assert str(cfg) in res.stderr, res.stderr
        for n in needles:
            assert n in res.stderr, (n, res.stderr)


def test_missing_config_file(bins: Binaries, tmp_path: Path) -> None:
    res = run_meshd(bins, "--config", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and str(tmp_path / "nope.yaml") in res.stderr


def test_check_config_redacts_keys(bins: Binaries, tmp_path: Path) -> None:
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(
        "node:\n  name: checker\n"
        f"http:\n  listen: \"127.0.0.1:{free_port()}\"\n  api_keys: [\"{KEY}\", \"second-secret-key\"]\n"
        "admin:\n  socket: \"" + str(tmp_path / "admin.sock") + "\"\n"
        "engines:\n  - kind: openai\n    url: \"http://127.0.0.1:8080\"\n")
    res = run_meshd(bins, "--config", str(cfg), "--check-config")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert KEY not in out and "second-secret-key" not in out and KEY not in res.stderr
    assert '["***", "***"]' in out, out
    assert "name: \"checker\"" in out
    assert "http://127.0.0.1:8080" in out
    assert str(cfg) in out
    # The printed configuration loads again (keys aside): round trip through --check-config.
    again = tmp_path / "again.yaml"
    again.write_text(out.replace('["***", "***"]', "[]"))
    res2 = run_meshd(bins, "--config", str(again), "--check-config")
    assert res2.returncode == 0, res2.stderr
    # And the redaction placeholder itself is refused as a key.
    again.write_text(out)
    res3 = run_meshd(bins, "--config", str(again), "--check-config")
    assert res3.returncode == 2 and "http.api_keys" in res3.stderr


def test_named_api_keys(sim: SimEngine, start_meshd: Callable[..., Meshd]) -> None:
    """`NAME:KEY` entries name a key (for per-key budgets); the client presents only KEY."""
    m = start_meshd([{"kind": "openai", "url": sim.url}], http={"api_keys": ["ci:named-key-1", "plain-key-2"]})
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for key, status in (("named-key-1", 200), ("plain-key-2", 200), ("ci:named-key-1", 401), ("ci", 401)):
        r = m.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}",
                                                                "X-Meshd-Key-Name": "spoofed"})
        assert r.status_code == status, (key, r.status_code, r.text)
    assert "named-key-1" not in m.proc.log()

