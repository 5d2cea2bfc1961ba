"""Prometheus and Grafana files shipped in Config/: the alert rules pass `promtool check rules` and their
unit tests (`promtool test rules`: budget threshold and exhaustion, provider degraded, cost spike,
high failover rate, node lost, split failed), and every metric the rules and the Grafana dashboard
use is one a node of a real mesh exports (a gateway with a managed llama.cpp engine and a peer,
after a local and a cloud request). promtool comes from Debian's `prometheus` package (tools/test.sh)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cloud_helpers import PRICES, FakeCloud
from meshd_e2e import Binaries, E2EError, ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "Config" / "prometheus" / "meshd-rules.yml"
DASHBOARD = ROOT / "Config" / "grafana" / "meshd-dashboard.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install Debian's prometheus package (tools/test.sh does)", pytrace=False)
    return exe


def used_metrics() -> set[str]:
    """meshd_* metric names in the rules' expressions and the dashboard's queries (histogram suffixes stripped)."""
    exprs = re.findall(r"expr: \|?\s*((?:.|\n)*?)\n\s+(?:for|labels):", RULES.read_text())
    dash = json.loads(DASHBOARD.read_text())
    for p in dash["panels"]:
        exprs += [t["expr"] for t in p.get("targets", [])]
    names = set()
    for e in exprs:
        for n in re.findall(r"\bmeshd_[a-z_]+\b", e):
            for s in HISTOGRAM_SUFFIXES:
                if n.endswith(s) and n != "meshd_requests_total":
                    n = n[: -len(s)]
            names.add(n)
    return names


def exported(node: MeshNode) -> set[str]:
    text = node.get("/metrics").text
    return set(re.findall(r"^# TYPE (meshd_[a-z_]+) ", text, re.M))


def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    exe = promtool()
    r = subprocess.run([exe, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS: 7 rules found" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([exe, "test", "rules", "meshd-rules.test.yml"], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parent)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    alerts = re.findall(r"- alert: (\w+)", RULES.read_text())
    assert alerts == ["MeshdBudgetThreshold", "MeshdBudgetExhausted", "MeshdProviderDegraded", "MeshdCostSpike",
                      "MeshdHighFailoverRate", "MeshdNodeLost", "MeshdSplitFailed"]


def test_every_metric_the_rules_and_the_dashboard_use_is_exported(mpool: ProcessPool, mbins: MeshBinaries, secret: Path, tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] == "meshd" and all(p.get("targets") for p in dash["panels"] if p["type"] != "row")
    try:
        tiny, server = Binaries().tiny_model(), Binaries().llama_server_bin()
    except E2EError as e:
        pytest.fail(str(e), pytrace=False)
    cloud = FakeCloud(mpool, tmp_path / "tls")
    cloud_cfg = {"providers": cloud.providers(tmp_path / "cloud.key"), "prices": PRICES, "prices_file": str(tmp_path / "no-prices.yaml")}
    g = MeshNode(mpool, mbins, "G", secret=secret,
                 engines=[{"kind": "llama.cpp", "model": str(tiny), "alias": "meshd-tiny", "binary": str(server), "args": ["-t", "1", "-c", "512"]}],
                 extra={"cloud": cloud_cfg, "budget": {"daily_usd": 1.0, "monthly_usd": 10.0}})
    b = MeshNode(mpool, mbins, "B", secret=secret, peers=[g])
    b.wait_sees({"B": "up", "G": "up"}, timeout=15)
    wait_until(lambda: g.post("/v1/chat/completions", json=chat("meshd-tiny", max_tokens=2)).status_code == 200, 60, interval=0.5,
               what="G's llama-server to answer")
    with g.client(timeout=60) as c, c.stream("POST", "/v1/chat/completions", json={**chat("meshd-tiny", max_tokens=3), "stream": True}) as r:
        assert r.status_code == 200 and r.read()
    assert b.post("/v1/chat/completions", json=chat("gpt-4o-mini", max_tokens=3)).status_code == 200
    have = exported(g) | exported(b)
    missing = sorted(used_metrics() - have)
    assert not missing, f"used by the rules or the dashboard but exported by no node: {missing}"
    assert {"meshd_failovers_total", "meshd_cloud_spend_usd_total", "meshd_mesh_nodes_down", "meshd_splits_failed_total"} <= used_metrics()
    spend = re.search(r'^meshd_cloud_spend_usd_total\{provider="openai"\} ([0-9.e-]+)$', g.get("/metrics").text, re.M)
    assert spend and float(spend.group(1)) > 0, "the cloud request's cost is counted"
