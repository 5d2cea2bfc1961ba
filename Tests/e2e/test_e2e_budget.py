"""The gateway's budget (issue 5, first part): a node that lists cloud providers opens its durable
ledger (state_dir/ledger.sqlite, mode 0600) and `meshctl budget` shows every cap; a node without
providers says it keeps no budget; a broken prices file stops meshd with file, key and exit 2."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Callable

from meshd_e2e import Binaries, Meshd

REPO = Path(__file__).resolve().parents[2]


def meshctl(bins: Binaries, socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(os.environ.get("MESHCTL_BIN") or bins.meshd_bin().parent / "meshctl")
    return subprocess.run([str(exe), *args, "--socket", str(socket)], capture_output=True, text=True, timeout=15,
                          stdin=subprocess.DEVNULL)


KEYS = {"TEST_OPENAI_KEY": "sk-test-openai", "TEST_ANTHROPIC_KEY": "sk-test-anthropic"}


def gateway_config(prices: Path) -> dict:
    return {
        "cloud": {"prices_file": str(prices),
                  "providers": [{"name": "openai", "kind": "openai", "key_env": "TEST_OPENAI_KEY"},
                                {"name": "claude", "kind": "anthropic", "key_env": "TEST_ANTHROPIC_KEY"}]},
        "budget": {"daily_usd": 5.0, "monthly_usd": 100, "time_zone": "Europe/Berlin",
                   "per_provider": {"openai": {"daily_usd": 2.0}}},
    }


def test_gateway_keeps_a_durable_budget(bins: Binaries, start_meshd: Callable[..., Meshd]) -> None:
    m = start_meshd([], extra=gateway_config(REPO / "Config" / "prices.yaml"), expect_ready=False, env=KEYS)
    assert "sk-test-openai" not in m.proc.log()
    ledger = m.dir / "state" / "ledger.sqlite"
    assert ledger.exists() and (ledger.stat().st_mode & 0o777) == 0o600, oct(ledger.stat().st_mode)
    res = meshctl(bins, m.admin_socket, "budget", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    b = json.loads(res.stdout)
    assert b["gateway"] is True and b["time_zone"] == "Europe/Berlin"
    assert b["daily"]["limit_usd"] == 5.0 and b["daily"]["spent_usd"] == 0 and b["daily"]["reserved_usd"] == 0
    assert b["monthly"]["limit_usd"] == 100.0 and b["monthly"]["remaining_usd"] == 100.0
    assert b["daily"]["resets_at"].endswith("Z") and b["providers"]["openai"]["daily"]["limit_usd"] == 2.0
    table = meshctl(bins, m.admin_socket, "budget")
    assert table.returncode == 0 and "global" in table.stdout and "provider openai" in table.stdout and "$5.00" in table.stdout


def test_non_gateway_and_broken_prices(bins: Binaries, start_meshd: Callable[..., Meshd], tmp_path: Path) -> None:
    m = start_meshd([], expect_ready=False)
    res = meshctl(bins, m.admin_socket, "budget")
    assert res.returncode == 1 and "not a gateway" in res.stderr, res.stdout + res.stderr
    bad = tmp_path / "prices.yaml"
    bad.write_text("models:\n  gpt-4o-mini: { input: 0.15 }\n")
    g = start_meshd([], extra=gateway_config(bad), wait=False, env=KEYS)
    rc = g.proc.wait(15)
    log = g.proc.log()
    assert rc == 2, log
    assert str(bad) in log and "models.gpt-4o-mini.output" in log, log
    # A provider key that is not there: exit 2 naming the provider and the variable, never a value.
    nokey = start_meshd([], extra=gateway_config(REPO / "Config" / "prices.yaml"), wait=False, env={"TEST_OPENAI_KEY": "sk-test-openai"})
    rc = nokey.proc.wait(15)
    log = nokey.proc.log()
    assert rc == 2, log
    assert "cloud.providers[1].key_env" in log and "TEST_ANTHROPIC_KEY" in log and "sk-test-openai" not in log, log
