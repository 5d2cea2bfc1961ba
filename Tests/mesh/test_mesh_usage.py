"""Usage and audit (issue 16): every request, local, forwarded or cloud, is recorded by the node that
answered it (refusals by the node that refused), with the client key's name and the forwarded user,
and `meshctl usage` on any node reports the whole mesh: its token totals equal the usage the real
openai and ollama clients received, streams included, and its cost equals the gateway's ledger.
The grouping, merging, `--since` and CSV rules are unit-tested in UsageReportTests, the log's
retention and batching in UsageLogTests."""
from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import httpx
import ollama
import openai

from cloud_helpers import PRICES, FakeCloud
from meshd_e2e import ProcessPool, render_config, wait_until
from mesh_helpers import MeshBinaries, MeshNode, sim_entry, start_sim

KEYS = ["ci:ci-key-123", "dev:dev-key-456"]


def _node(pool: ProcessPool, bins: MeshBinaries, name: str, secret: Path, **kw: object) -> MeshNode:
    n = MeshNode(pool, bins, name, secret=secret, start=False, **kw)  # type: ignore[arg-type]
    n.config["http"]["api_keys"] = KEYS
    n.config_path.write_text(render_config(n.config))
    n.start()
    return n


def test_usage_is_recorded_where_answered_and_reported_mesh_wide(mpool: ProcessPool, mbins: MeshBinaries, secret: Path,
                                                                 tmp_path: Path) -> None:
    cloud = FakeCloud(mpool, tmp_path / "tls")
    sim_a = start_sim(mpool, mbins, "--models", "model-a")
    sim_b = start_sim(mpool, mbins, "--models", "model-b")
    a = _node(mpool, mbins, "A", secret, engines=[sim_entry(sim_a)],
              extra={"cloud": {"providers": [p for p in cloud.providers(tmp_path / "k") if p["name"] == "openai"], "prices": PRICES,
                               "prices_file": str(tmp_path / "none.yaml")},
                     "budget": {"daily_usd": 1.0}})
    b = _node(mpool, mbins, "B", secret, engines=[sim_entry(sim_b)], peers=[a])
    a.wait_sees({"A": "up", "B": "up"}, timeout=15, models={"B": ["model-b"]})

    ci = openai.OpenAI(base_url=f"{a.url}/v1", api_key="ci-key-123", max_retries=0, timeout=20,
                       http_client=httpx.Client(trust_env=False, timeout=20),
                       default_headers={"X-OpenWebUI-User-Email": "alice@example.org"})
    dev = ollama.Client(host=a.url, timeout=20, trust_env=False, headers={"Authorization": "Bearer dev-key-456"})
    got: dict[str, list[int]] = {"ci": [0, 0, 0], "dev": [0, 0, 0]}  # requests, prompt, output tokens the clients saw

    def saw(key: str, prompt: int, output: int) -> None:
        got[key][0] += 1
        got[key][1] += prompt
        got[key][2] += output

    msgs = [{"role": "user", "content": "count the tokens of this prompt"}]
    # ci: local on A, forwarded to B (streamed, with usage), from the cloud (streamed and not).
    r = ci.chat.completions.create(model="model-a", messages=msgs, max_tokens=5)
    saw("ci", r.usage.prompt_tokens, r.usage.completion_tokens)
    for model in ("model-b", "gpt-4o-mini"):
        last = None
        for ch in ci.chat.completions.create(model=model, messages=msgs, max_tokens=6, stream=True, stream_options={"include_usage": True}):
            last = ch.usage or last
        assert last is not None, f"no usage in the {model} stream"
        saw("ci", last.prompt_tokens, last.completion_tokens)
    r = ci.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=7)
    saw("ci", r.usage.prompt_tokens, r.usage.completion_tokens)
    # dev, in Ollama's dialect: forwarded to B streamed, local on A not streamed.
    final = None
    for part in dev.chat(model="model-b", messages=msgs, options={"num_predict": 4}, stream=True):
        final = part if part.done else final
    assert final is not None
    saw("dev", final.prompt_eval_count, final.eval_count)
    g = dev.generate(model="model-a", prompt="one two three", options={"num_predict": 3})
    saw("dev", g.prompt_eval_count, g.eval_count)
    # A refusal (no such model) is recorded by A, as an error.
    try:
        dev.chat(model="no-such-model", messages=msgs)
        raise AssertionError("no-such-model was served")
    except ollama.ResponseError as e:
        assert e.status_code == 404
    got["dev"][0] += 1

    def report(node: MeshNode, *args: str) -> dict:
        p = node.meshctl("usage", *args, "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def by_name(rep: dict) -> dict[str, dict]:
        return {g["name"]: g for g in rep["groups"]}

    # Asked on B, the report covers both nodes (records may still be on their way to the log: a
    # stream's record is written once its last byte is sent).
    sent = sum(v[0] for v in got.values())
    assert sent == 7
    wait_until(lambda: report(b, "--by", "key")["total"]["requests"] == sent, 10, interval=0.2,
               what=lambda: f"all {sent} requests in B's report: {report(b, '--by', 'key')}")
    rep = report(b, "--by", "key")
    assert sorted(n["node"] for n in rep["nodes"] if n["ok"]) == ["A", "B"], rep["nodes"]
    keys = by_name(rep)
    for key, (n, prompt, output) in got.items():
        assert keys[key]["requests"] == n, (key, keys[key], got)
        assert (keys[key]["prompt_tokens"], keys[key]["output_tokens"]) == (prompt, output), (key, keys[key], got)
    assert keys["dev"]["errors"] == 1 and keys["ci"]["errors"] == 0

    # Where each was answered: A served 2 locally + 2 from the cloud + refused 1, B served 2 forwarded ones.
    nodes = by_name(report(a, "--by", "node"))
    assert (nodes["A"]["requests"], nodes["B"]["requests"]) == (5, 2), nodes
    providers = by_name(report(a, "--by", "provider"))
    assert providers["openai"]["requests"] == 2 and providers["openai"]["cost_micros"] > 0, providers
    assert providers[""]["cost_micros"] == 0
    spent = json.loads(a.meshctl("budget", "--json").stdout)["daily"]["spent_usd"]
    assert abs(providers["openai"]["cost_micros"] / 1e6 - spent) < 1e-6, (providers["openai"], spent)
    users = by_name(report(a, "--by", "user"))
    assert users["alice@example.org"]["requests"] == 4, users

    # B's own log holds the forwarded requests, with the key, user and the node the client asked.
    db = sqlite3.connect(b.dir / "state" / "usage.sqlite")
    rows = db.execute("SELECT key, user, via, node, status, api FROM usage ORDER BY id").fetchall()
    db.close()
    assert sorted(rows) == [("ci", "alice@example.org", "A", "B", 200, "/v1/chat/completions"), ("dev", "", "A", "B", 200, "/api/chat")], rows
    assert (b.dir / "state" / "usage.sqlite").stat().st_mode & 0o777 == 0o600

    # The table and CSV print the same groups; --local counts one node; bad input names the field.
    table = a.meshctl("usage", "--by", "model").stdout
    assert "MODEL" in table and "model-b" in table and "TOTAL" in table and "2 of 2 node(s) counted" in table, table
    rows_csv = list(csv.reader(io.StringIO(a.meshctl("usage", "--by", "model", "--csv").stdout)))
    assert rows_csv[0][:3] == ["model", "requests", "errors"] and rows_csv[-1][0] == "TOTAL" and rows_csv[-1][1] == "7", rows_csv
    assert report(b, "--by", "key", "--local")["total"]["requests"] == 2
    assert report(b, "--by", "key", "--since", "2099-01-01")["total"]["requests"] == 0
    bad = a.meshctl("usage", "--by", "colour")
    assert bad.returncode != 0 and "--by must be one of key, model, node, provider, user, engine" in bad.stderr, bad.stderr
    bad = a.meshctl("usage", "--since", "last tuesday")
    assert bad.returncode != 0 and "since: 'last tuesday' is neither a duration" in bad.stderr, bad.stderr

    # A node that is down is named, not silently left out (while it is listed, and once it is lost).
    b.kill9()
    wait_until(lambda: "not counted: B" in a.meshctl("usage").stderr, 15, interval=0.5, what="A to name B as not counted")
    p = a.meshctl("usage", "--by", "key")
    assert p.returncode == 0 and "1 of 2 node(s) counted" in p.stdout, (p.stdout, p.stderr)
