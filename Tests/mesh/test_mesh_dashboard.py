"""The dashboard (`/ui`, issue 16) in Debian's headless Chromium: three nodes (a gateway with the fake
cloud, two with sim engines), requests served locally, by a peer and by the cloud. The figures on the
page equal `meshctl nodes --json` and `meshctl budget --json`; the last requests include those a
peer answered; hop times are measured while the page is open; a killed node's card disappears within
5 s and its node_lost alert shows. A screenshot is written (its path is printed; `MESHD_SCREENSHOT_DIR`
keeps it). Who may open the page (loopback, admin keys; never client keys) is unit-tested in
DashboardAccessTests, and from another host on the multi-host test bed."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from chromium import Chromium, chromium_binary
from cloud_helpers import PRICES, FakeCloud
from meshd_e2e import ProcessPool
from mesh_helpers import MeshBinaries, MeshNode, chat, sim_entry, start_sim

pytestmark = pytest.mark.skipif(chromium_binary() is None, reason="Debian's chromium package is not installed (tools/test.sh installs it)")

CARDS = "Array.from(document.querySelectorAll('section.node')).map(e => Object.assign({}, e.dataset))"


def test_dashboard_shows_the_mesh_as_meshctl_does(mpool: ProcessPool, mbins: MeshBinaries, secret: Path, tmp_path: Path) -> None:
    cloud = FakeCloud(mpool, tmp_path / "tls")
    sims = {n: start_sim(mpool, mbins, "--models", f"model-{n.lower()}") for n in "ABC"}
    a = MeshNode(mpool, mbins, "A", secret=secret, engines=[sim_entry(sims["A"])], heartbeat_ms=300, dead_after_missed=3,
                 extra={"cloud": {"providers": [p for p in cloud.providers(tmp_path / "k") if p["name"] == "openai"], "prices": PRICES,
                                  "prices_file": str(tmp_path / "none.yaml")},
                        "budget": {"daily_usd": 1.0, "monthly_usd": 20.0, "per_provider": {"openai": {"daily_usd": 0.5}}},
                        "alerts": {"interval_seconds": 0.2}})
    b = MeshNode(mpool, mbins, "B", secret=secret, engines=[sim_entry(sims["B"])], peers=[a], heartbeat_ms=300, dead_after_missed=3)
    c = MeshNode(mpool, mbins, "C", secret=secret, engines=[sim_entry(sims["C"])], peers=[a], heartbeat_ms=300, dead_after_missed=3)
    a.wait_sees({"A": "up", "B": "up", "C": "up"}, timeout=15, models={"B": ["model-b"], "C": ["model-c"]})
    for model in ("model-a", "model-b", "model-c", "gpt-4o-mini"):
        r = a.post("/v1/chat/completions", json=chat(model, max_tokens=5))
        assert r.status_code == 200, r.text

    browser = Chromium(mpool, tmp_path / "chromium")
    try:
        browser.navigate(f"{a.url}/ui")
        browser.wait("document.body.dataset.updated && document.querySelectorAll('section.node').length === 3", 15, "three node cards")
        # The nodes, as meshctl nodes --json says (figures that do not move while idle).
        nodes = {n["name"]: n for n in json.loads(a.meshctl("nodes", "--json").stdout)}
        cards = {card["node"]: card for card in browser.eval(CARDS)}
        assert sorted(cards) == sorted(nodes) == ["A", "B", "C"]
        for name, n in nodes.items():
            card = cards[name]
            assert card["state"] == n["state"] == "up"
            for attr, key in (("vramTotal", "vram_total_bytes"), ("vramFree", "vram_free_bytes"), ("ramTotal", "ram_total_bytes"),
                              ("inFlight", "in_flight")):
                assert card[attr] == str(n[key]), (name, attr, card, n)
            assert card["models"] == ",".join(n["models"]), (card, n)
        # Engines and their models, per node.
        assert browser.eval("document.querySelector('section.node[data-node=B] [data-model=\"model-b\"]').dataset.loaded") == "true"
        # The budget, as meshctl budget --json says.
        budget = json.loads(a.meshctl("budget", "--json").stdout)
        caps = {(x["cap"], x["period"]): x for x in browser.eval("Array.from(document.querySelectorAll('.cap')).map(e => Object.assign({}, e.dataset))")}
        for (cap, period), want in ((("global", "daily"), budget["daily"]), (("global", "monthly"), budget["monthly"]),
                                    (("provider openai", "daily"), budget["providers"]["openai"]["daily"])):
            got = caps[(cap, period)]
            assert float(got["spent"]) == want["spent_usd"] > 0 and float(got["reserved"]) == want["reserved_usd"], (cap, got, want)
            assert float(got["limit"]) == want["limit_usd"], (cap, got, want)
        # The last requests, those B and C answered included (gathered from them).
        served = browser.wait("Array.from(document.querySelectorAll('tr[data-request]')).map(e => e.dataset.node)", 5, "the last requests")
        assert sorted(served) == ["A", "A", "B", "C"], served
        # Hop times, measured while the page is open (A's row: to B and C).
        hops = browser.wait("(() => { const v = ['A>B', 'A>C'].map(k => document.querySelector(`[data-hop='${k}']`).textContent);"
                            " return v.every(x => x !== '-') && v; })()", 10, "A's hop times")
        assert all(0 < float(x) < 1000 for x in hops), hops

        shot = browser.screenshot(Path(os.environ.get("MESHD_SCREENSHOT_DIR", str(tmp_path))) / "meshd-dashboard.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        print(f"\n[dashboard] screenshot: {shot}")

        # B killed: its card goes within 5 s, and A's node_lost alert shows.
        b.kill9()
        t0 = time.monotonic()
        browser.wait("!document.querySelector('section.node[data-node=B]') && document.querySelectorAll('section.node').length === 2", 5,
                     "B's card to disappear")
        gone = time.monotonic() - t0
        print(f"[dashboard] B's card gone {gone:.2f} s after kill -9")
        browser.wait("!!document.querySelector('.alert[data-alert=node_lost][data-subject=B]')", 5, "the node_lost alert on the page")
        assert "lost lately: B" in browser.eval("document.getElementById('lost').textContent")
    finally:
        browser.close()
