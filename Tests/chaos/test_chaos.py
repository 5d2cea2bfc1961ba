"""A short chaos run (issue 17): five hosts on the test bed under mixed load (OpenAI and Ollama,
streamed and not, local and forwarded, a fake cloud behind a gateway with a small budget) while a
seeded driver kills -9 and revives hosts, freezes them, cuts and heals links, kills engines and
restarts avahi-daemon. Each invariant is its own test; the figures print with -s (`[chaos]` lines).
The long run is `tools/chaos.sh` (see README)."""
from __future__ import annotations

import chaos


def violations(rep: chaos.Report, number: str) -> list[str]:
    [key] = [k for k in rep.violations if k.startswith(number + " ")]
    return rep.violations[key]


def test_the_run_exercised_every_fault_and_both_dialects(chaos_report: chaos.Report) -> None:
    assert violations(chaos_report, "0") == []
    f = chaos_report.figures
    assert all(n >= 1 for n in f["faults"].values()), f["faults"]
    assert all(n >= 5 for n in f["by_dialect_stream"].values()), f["by_dialect_stream"]
    assert f["non-streamed"]["forwarded_ok"] >= 5 and f["non-streamed"]["in_scope"] >= 20, f["non-streamed"]
    # The budget was reached: some cloud requests were served, later ones refused.
    assert f["budget"]["cloud_billed_answers"] >= 1 and f["non-streamed"]["budget_refused"] >= 1, f


def test_no_request_to_a_live_node_failed_while_a_live_node_had_its_model(chaos_report: chaos.Report) -> None:
    assert violations(chaos_report, "1") == []


def test_every_stream_ended_within_between_chunks_of_a_fault(chaos_report: chaos.Report) -> None:
    assert violations(chaos_report, "2") == []


def test_spend_within_the_cap_and_ledger_not_below_the_bill(chaos_report: chaos.Report) -> None:
    assert violations(chaos_report, "3") == []


def test_views_equal_within_5_s_of_the_last_repair(chaos_report: chaos.Report) -> None:
    assert violations(chaos_report, "4") == []


def test_no_child_process_leaked(chaos_report: chaos.Report) -> None:
    assert violations(chaos_report, "5") == []


def test_rss_bounded(chaos_report: chaos.Report) -> None:
    assert violations(chaos_report, "6") == []
