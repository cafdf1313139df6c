"""The benchmark harness runs (so it never rots): `python -m benchmarks.run --smoke` against
all three servers. No thresholds: only that it ran, measured every case on every server, and
saw no errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import SERVERS, SMOKE_CASES

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_benchmark_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--json", str(out)],
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
    assert {r["case"] for r in report["ratios"]} == cases
    assert all(code in (0, None) for code in report["server_exits_during_run"].values())
    assert "calls/s" in done.stdout


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
        "rebuild",
        "list-first-page",
        "list-deep-page",
        "list-all-pages",
        "as-of-account",
        "as-of-lots",
        "accounts-rss",
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
    assert rows["verify"]["rate"] > 0
    assert rows["reports-catch-up"]["rate"] > 0
    assert all(r["p50"] > 0 for name, r in rows.items() if name.startswith("report-"))
    assert rows["insights-catch-up"]["rate"] > 0
    assert rows["insights-catch-up"]["purchasing_members"] > 0
    assert "cumulative" in rows["insights-program"]["profile"]
    assert all(
        r["p50"] > 0 for name, r in rows.items() if name.startswith("insights-") and "p50" in r
    )
