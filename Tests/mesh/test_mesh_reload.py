"""Reload (`systemctl reload meshd`, SIGHUP; issue 16): a gateway node re-reads its file while a stream
runs through it. Client keys, the budget's caps, providers, static peers and engines change, and the
stream ends whole; a broken file is refused with the errors `--check-config` prints and nothing
changes; a section that needs a restart (http.listen) is named in the log and keeps its running value.
(systemd itself is not PID 1 here: the unit's `ExecReload=` is checked by test_systemd_unit.py.)"""
from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import httpx

from cloud_helpers import PRICES, FakeCloud
from meshd_e2e import ProcessPool, render_config, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat, sim_entry, start_sim

KEY1 = {"Authorization": "Bearer key-one-0001"}
KEY2 = {"Authorization": "Bearer key-two-0002"}


def test_reload_changes_keys_budget_providers_peers_and_engines_without_dropping_a_stream(
        mpool: ProcessPool, mbins: MeshBinaries, secret: Path, tmp_path: Path) -> None:
    cloud = FakeCloud(mpool, tmp_path / "tls")
    slow = start_sim(mpool, mbins, "--models", "model-a", "--gen-tps", 25)
    extra_sim = start_sim(mpool, mbins, "--models", "model-new")
    providers = cloud.providers(tmp_path / "k")
    a = MeshNode(mpool, mbins, "A", secret=secret, engines=[sim_entry(slow)], heartbeat_ms=300, dead_after_missed=3, start=False,
                 extra={"cloud": {"providers": [p for p in providers if p["name"] == "openai"], "prices": PRICES,
                                  "prices_file": str(tmp_path / "none.yaml")},
                        "budget": {"daily_usd": 1.0}})
    a.config["http"]["api_keys"] = ["one:key-one-0001"]
    a.config_path.write_text(render_config(a.config))
    a.start()
    c = MeshNode(mpool, mbins, "C", secret=secret, engines=[], heartbeat_ms=300, dead_after_missed=3)

    def reload(cfg: dict, expect: str) -> None:
        before = a.log().count(expect)
        a.config_path.write_text(render_config(cfg))
        a.proc.signal(signal.SIGHUP)
        wait_until(lambda: a.log().count(expect) > before, 10, interval=0.1, what=f"'{expect}' in A's log")

    assert a.post("/v1/chat/completions", json=chat("model-a"), headers=KEY2).status_code == 401
    assert a.post("/v1/chat/completions", json=chat("gpt-4o-mini", max_tokens=4), headers=KEY1).status_code == 200
    assert "C" not in a.nodes()

    # A stream of 75 tokens at 25/s (3 s) through A while it reloads.
    got: dict[str, object] = {}

    def stream() -> None:
        with httpx.Client(base_url=a.url, timeout=30, trust_env=False) as cl:
            with cl.stream("POST", "/v1/chat/completions", json=chat("model-a", stream=True, max_tokens=75), headers=KEY1) as r:
                lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        got["chunks"] = sum(1 for ln in lines if '"content":"' in ln and '"content":""' not in ln)
        got["done"] = lines[-1] == "data: [DONE]" if lines else False

    t = threading.Thread(target=stream)
    t.start()
    wait_until(lambda: slow.stats()["in_flight"] == 1, 5, what="the stream to start")
    cfg = json.loads(json.dumps(a.config))
    cfg["http"]["api_keys"] = ["one:key-one-0001", "two:key-two-0002"]
    cfg["budget"] = {"daily_usd": 0.000001}
    cfg["cloud"]["providers"] = [p for p in providers if p["name"] in ("openai", "claude")]
    cfg["mesh"]["peers"] = [c.mesh_endpoint]
    cfg["engines"] = [sim_entry(slow), sim_entry(extra_sim)]
    reload(cfg, "configuration reloaded")
    t.join(20)
    assert got == {"chunks": 75, "done": True}, got

    # Keys: the new one works, the old one still does.
    assert a.get("/v1/models", headers=KEY2).status_code == 200 and a.get("/v1/models", headers=KEY1).status_code == 200
    # Engines: the new one serves.
    wait_until(lambda: a.post("/v1/chat/completions", json=chat("model-new"), headers=KEY2).status_code == 200, 10,
               what="the added engine to serve")
    # Peers: C (listed now) joins.
    a.wait_sees({"A": "up", "C": "up"}, timeout=10)
    # Budget: the new cap refuses; providers: the new one is in the budget's view.
    r = a.post("/v1/chat/completions", json=chat("gpt-4o-mini", max_tokens=4), headers=KEY1)
    assert r.status_code == 429 and "budget" in r.text, r.text
    budget = json.loads(a.meshctl("budget", "--json").stdout)
    assert budget["daily"]["limit_usd"] == 0.000001 and budget["daily"]["spent_usd"] > 0
    assert sorted(h["name"] for h in budget["provider_health"]) == ["claude", "openai"]

    # A broken file: refused with --check-config's own errors; nothing changes.
    broken = json.loads(json.dumps(cfg))
    broken["http"]["api_keys"] = ["one:key-one-0001"]
    broken["routing"] = {"policy": "fastest-please"}
    a.config_path.write_text(render_config(broken))
    check = subprocess.run([str(mbins.meshd), "--config", str(a.config_path), "--check-config"], capture_output=True, text=True, timeout=30)
    assert check.returncode != 0
    error_line = next(ln for ln in check.stderr.splitlines() if "routing.policy" in ln)
    before = a.log().count("reload refused")
    a.proc.signal(signal.SIGHUP)
    wait_until(lambda: a.log().count("reload refused") > before, 10, interval=0.1, what="the refusal in A's log")
    assert error_line.strip() in a.log(), (error_line, a.log()[-2000:])
    assert a.get("/v1/models", headers=KEY2).status_code == 200, "a refused reload changed the keys"

    # Removing the engine and the peer, and a change only a restart applies (http.listen).
    later = json.loads(json.dumps(cfg))
    later["engines"] = [sim_entry(slow)]
    later["mesh"]["peers"] = []
    later["http"]["listen"] = "127.0.0.1:1"
    reload(later, "only a restart applies it")
    line = next(ln for ln in reversed(a.log().splitlines()) if "only a restart applies it" in ln)
    assert "sections=http" in line, line
    assert a.get("/healthz").status_code == 200  # still on its running port
    wait_until(lambda: a.post("/v1/chat/completions", json=chat("model-new"), headers=KEY2).status_code == 404, 10,
               what="the removed engine's model to go")
