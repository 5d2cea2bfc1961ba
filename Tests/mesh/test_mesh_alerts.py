"""Alerts meshd raises itself (issue 16): a cloud provider degraded (the fake cloud rate-limits it) and a
node lost (a peer killed, then back), each logged, counted in /metrics, shown by `meshctl status`
while open, and POSTed to the webhook when it opens and when it resolves. The rules behind them
(cost spike, failover rate, split failed included) are unit-tested in AlertEvaluatorTests."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from cloud_helpers import PRICES, FakeCloud
from meshd_e2e import ProcessPool, wait_until
from mesh_helpers import MeshBinaries, MeshNode, chat


class Webhook:
    """A local receiver of the alert POSTs."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        received = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                n = int(self.headers.get("content-length", "0"))
                received.append(json.loads(self.rfile.read(n)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def saw(self, alert: str, state: str, subject: str) -> bool:
        return any(e.get("event") == "alert" and e["alert"] == alert and e["state"] == state and e["subject"] == subject for e in self.events)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    w = Webhook()
    yield w
    w.close()


def test_provider_degraded_and_node_lost_are_logged_counted_shown_and_sent(mpool: ProcessPool, mbins: MeshBinaries, secret: Path,
                                                                          tmp_path: Path, webhook: Webhook) -> None:
    cloud = FakeCloud(mpool, tmp_path / "tls")
    cloud_cfg = {"providers": cloud.providers(tmp_path / "cloud.key"), "prices": PRICES, "prices_file": str(tmp_path / "no-prices.yaml")}
    a = MeshNode(mpool, mbins, "A", secret=secret, heartbeat_ms=300, dead_after_missed=3,
                 extra={"cloud": cloud_cfg, "budget": {"daily_usd": 1.0},
                        "alerts": {"webhook": webhook.url, "interval_seconds": 0.2, "provider_degraded_seconds": 0.5}})
    b = MeshNode(mpool, mbins, "B", secret=secret, peers=[a], heartbeat_ms=300, dead_after_missed=3)
    a.wait_sees({"A": "up", "B": "up"}, timeout=15)
    assert webhook.events == []

    # The provider answers 429 (retry-after 2 s): it cools down, and after half a second is degraded.
    r = a.post("/v1/chat/completions", json=chat("fail-429-gpt", max_tokens=2))
    assert r.status_code >= 400, r.text
    wait_until(lambda: webhook.saw("provider_degraded", "firing", "openai"), 10, interval=0.1, what="the provider_degraded webhook")
    status = json.loads(a.meshctl("status", "--json").stdout)
    assert any(x["alert"] == "provider_degraded" and x["subject"] == "openai" for x in status["alerts"]), status["alerts"]
    # Its cooldown ends: resolved.
    wait_until(lambda: webhook.saw("provider_degraded", "resolved", "openai"), 10, interval=0.1, what="the provider to recover")

    # B dies: node lost, shown in meshctl status, counted; back up: resolved.
    b.kill9()
    wait_until(lambda: webhook.saw("node_lost", "firing", "B"), 10, interval=0.1, what="the node_lost webhook")
    text = a.meshctl("status").stdout
    assert "ALERT:    node_lost" in text and "node B is down" in text, text
    metrics = a.get("/metrics").text
    assert 'meshd_alerts_total{alert="node_lost"} 1' in metrics and 'meshd_alerts_open{alert="node_lost"} 1' in metrics, metrics
    assert 'meshd_alerts_total{alert="provider_degraded"} 1' in metrics
    assert "alert: node B is down" in a.log()
    b.start()
    wait_until(lambda: webhook.saw("node_lost", "resolved", "B"), 15, interval=0.1, what="B to come back")
    assert 'meshd_alerts_open{alert="node_lost"} 0' in a.get("/metrics").text
    hook = next(e for e in webhook.events if e["alert"] == "node_lost")
    assert hook["node"] == "A" and hook["message"].startswith("node B is down") and hook["since"].endswith("Z"), hook
