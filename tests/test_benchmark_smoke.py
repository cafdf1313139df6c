"""The benchmark harness runs (so it never rots): `python -m benchmarks.run --smoke` against
all three servers. No thresholds: only that it ran, measured every case (TopUp and Spend among
them) on every server, saw no errors, printed and saved the ratios against issue 14's goals
and the projection lag of the server with projections, and that `benchmarks.report` renders
the saved report again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import SERVERS, SMOKE_CASES, goals_for, visible_after
from projections import REGISTERED

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_benchmark_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--lag-probe-ms", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report = json.loads(out.read_text())

    servers = {s.name for s in SERVERS}
    cases = {c.name for c in SMOKE_CASES}
    measured = {(row["case"], row["server"]) for row in report["summary"]}
    assert measured == {(c, s) for c in cases for s in servers}
    for row in report["summary"]:
        assert row["error_count"] == 0, (row["case"], row["server"], row["errors"])
        assert row["calls"] > 0, row
        assert row["throughput"] > 0, row
    for run in report["runs"]:
        assert run["settle_error"] == "", run
    assert {"topup", "spend"} <= {c.operation.name for c in SMOKE_CASES}
    assert all(code in (0, None) for code in report["server_exits_during_run"].values())
    assert "calls/s" in done.stdout

    # The ratios of every case, with the goals issue 14 sets for it evaluated.
    subjects = {s.name for s in SERVERS if s.name not in ("memory", "baseline")}
    assert {(r["case"], r["server"]) for r in report["ratios"]} == {
        (c, s) for c in cases for s in subjects
    }
    for entry in report["ratios"]:
        for metric in ("throughput", "p50", "p99"):
            for other in ("memory", "baseline"):
                assert entry[f"{metric}_tally_over_{other}"] > 0, entry
        case = next(c for c in SMOKE_CASES if c.name == entry["case"])
        assert [g["goal"] for g in entry["goals"]] == [g.text() for g in goals_for(case)]
        assert all(isinstance(g["met"], bool) for g in entry["goals"]), entry
    assert any(entry["goals"] for entry in report["ratios"])
    assert "goal (issue 14)" in done.stdout

    # Projection lag, on the servers with projections only.
    probed = {s.name for s in SERVERS if s.settles}
    for run in report["runs"]:
        rw, tracked = run["read_your_writes"], run["projection_lag"]
        if run["server"] not in probed:
            assert rw is None, run
            assert tracked is None, run
            continue
        assert rw["probes"] > 0, (run["case"], rw)
        assert rw["errors"] == {}, (run["case"], rw)
        assert 0 < rw["p50_ms"] <= rw["p90_ms"] <= rw["p99_ms"] <= rw["max_ms"], rw
        assert tracked["error"] == "", tracked
        assert tracked["replies"] > 0, tracked
        # Every registered read model sent its batches, and they covered every reply.
        assert set(tracked["ms"]) == {p.name for p in REGISTERED}, tracked
        for lag in tracked["ms"].values():
            assert lag["batches"] > 0, tracked
            assert lag["unseen"] == 0, tracked
            assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"], tracked
    for row in report["summary"]:
        assert (row["read_your_writes"] is not None) == (row["server"] in probed), row
    assert "read-your-writes lag" in done.stdout
    assert "points p50/p99" in done.stdout
    assert "points p99<50" in done.stdout

    # The saved report renders again, as text and as Markdown.
    for extra in ([], ["--markdown"]):
        again = subprocess.run(
            [sys.executable, "-m", "benchmarks.report", str(out), *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 0, again.stderr
        assert "read-your-writes lag" in again.stdout.lower(), again.stdout
        assert "goal (issue 14)" in again.stdout, again.stdout


@pytest.mark.timeout(240)
def test_bulk_cases_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "offline.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.offline", "--smoke", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    rows = {row["case"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {
        "import",
        "import-inline",
        "import-one-projector",
        "rebuild",
        "list-first-page",
        "list-deep-page",
        "list-all-pages",
        "as-of-account",
        "as-of-lots",
        "accounts-rss",
        "accounts-rss-50k",
        "cold-1",
        "cold-64",
        "verify",
        "reports-catch-up",
        "report-liabilities",
        "report-liabilities-as-of",
        "report-movements",
        "report-settlement",
        "report-trial-balance",
        "report-deferred-revenue",
        "report-breakage",
        "report-expiry-forecast",
        "report-custody",
        "report-reconcile-week",
        "insights-catch-up",
        "insights-member",
        "insights-member-as-of",
        "insights-program",
        "insights-program-as-of",
        "insights-segment-page",
        "insights-segment-page-as-of",
        "insights-walk",
        "insights-walk-as-of",
        "insights-cli",
    }
    assert rows["import"]["rate"] > 0
    assert rows["rebuild"]["rate"] > 0
    assert rows["list-first-page"]["p50"] > 0
    assert rows["accounts-rss"]["rss_mib"] > 0
    assert rows["cold-1"]["p50"] > 0
    assert rows["cold-1"]["reference_p50"] > 0
    assert rows["cold-64"]["rate"] > 0
    assert rows["cold-64"]["reference_rate"] > 0
    assert rows["verify"]["rate"] > 0
    assert rows["reports-catch-up"]["rate"] > 0
    assert all(r["p50"] > 0 for name, r in rows.items() if name.startswith("report-"))
    assert rows["insights-catch-up"]["rate"] > 0
    assert rows["insights-catch-up"]["purchasing_members"] > 0
    assert "cumulative" in rows["insights-program"]["profile"]
    assert all(
        r["p50"] > 0 for name, r in rows.items() if name.startswith("insights-") and "p50" in r
    )


def test_a_read_models_lag_is_the_time_until_the_first_batch_covering_a_reply() -> None:
    """`visible_after` (the projection lag the benchmark reports), on made-up times."""
    batches = [(3, 10.000), (7, 10.020), (7, 10.030), (12, 10.050)]
    replies = [
        (2, 10.005),  # covered by a batch that committed before the reply arrived: 0
        (5, 10.010),  # the batch ending at 7 committed 10 ms later
        (7, 10.015),  # the same batch: 5 ms
        (8, 10.015),  # the batch ending at 12: 35 ms
        (13, 10.060),  # no batch covers it
    ]
    lags, unseen = visible_after(replies, batches)
    assert [round(x, 3) for x in lags] == [0.0, 10.0, 5.0, 35.0]
    assert unseen == 1
    assert visible_after(replies, []) == ([], len(replies))
