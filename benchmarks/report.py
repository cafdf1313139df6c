"""Render a saved benchmark report (the JSON `benchmarks.run` writes) again: as the text
tables, or as Markdown tables for docs/performance.md (the runs; the measured server over the
in-memory server and the baseline, against issue 14's goals; the lag of the servers with
projections).

    python -m benchmarks.report benchmarks/results/20250101T120000-ab12.json --markdown
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.run import LAG_GOAL_PROJECTION, lag_goal, projection_lag_goal, render


def _callers(report: dict[str, Any]) -> dict[str, int]:
    return {c["name"]: c["callers"] for c in report.get("cases", [])}


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _met(met: bool | None) -> str:
    return "–" if met is None else "yes" if met else "**no**"


def _ratios_table(ratio_rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| case | server | calls/s ÷ in-memory | ÷ baseline | p50 ÷ in-memory | ÷ baseline "
        "| p99 ÷ in-memory | ÷ baseline | goal (issue 14) | met |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for e in ratio_rows:
        goals = e.get("goals") or []
        goal = "<br>".join(
            g["goal"].replace(">=", "≥").replace("<=", "≤").replace("x ", "× ") for g in goals
        )
        met = "<br>".join(f"{_met(g['met'])} ({_ratio(g['ratio'])})" for g in goals)
        lines.append(
            f"| {e['case']} | {e.get('server', 'tally')} | "
            f"{_ratio(e.get('throughput_tally_over_memory'))} | "
            f"{_ratio(e.get('throughput_tally_over_baseline'))} | "
            f"{_ratio(e.get('p50_tally_over_memory'))} | "
            f"{_ratio(e.get('p50_tally_over_baseline'))} | "
            f"{_ratio(e.get('p99_tally_over_memory'))} | "
            f"{_ratio(e.get('p99_tally_over_baseline'))} | {goal or '–'} | {met or '–'} |"
        )
    return lines


def _lag_table(report: dict[str, Any]) -> list[str]:
    rows = [r for r in report["summary"] if r.get("read_your_writes") or r.get("projection_lag_ms")]
    if not rows:
        return []
    names = sorted({n for r in rows for n in (r.get("projection_lag_ms") or {})})
    callers = _callers(report)
    lines = [
        "Read-your-writes lag (ms): while the load ran, every "
        f"~{report.get('lag_probe_ms', 20):g} ms, at the load's next reply, a GetAccount on a "
        "channel of its own with min_position = the highest position acknowledged so far; "
        "reply time − acknowledgement time, medians over rounds (max: the max), `rpc` = the "
        "probe's own round trip. "
        "Read models' lag (ms): for every reply of the load, the time until the batch of that "
        "read model covering its position committed (its PROJECTED notice), p50/p99.",
        "",
        "| case | server | probes | p50 | p90 | p99 | max | rpc p50 | p99 < 50 ms | "
        + " | ".join(f"{n} p50/p99" for n in names)
        + f" | {LAG_GOAL_PROJECTION} p99 < 50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|" + "---:|" * len(names) + "---|",
    ]
    for r in rows:
        rw = r.get("read_your_writes")
        wanted = callers.get(r["case"])
        if rw:
            cells = (
                f"{rw['probes']} | {rw['p50_ms']:.1f} | {rw['p90_ms']:.1f} | "
                f"{rw['p99_ms']:.1f} | {rw['max_ms']:.1f} | {rw['rpc_p50_ms']:.1f} | "
                f"{_met(lag_goal(r['case'], wanted, rw))}"
            )
        else:
            cells = " | ".join(["–"] * 7)
        lags = r.get("projection_lag_ms") or {}
        tracked = " | ".join(
            f"{lags[n]['p50']:.1f}/{lags[n]['p99']:.1f}" if n in lags else "–" for n in names
        )
        met = _met(projection_lag_goal(r["case"], wanted, lags))
        lines.append(f"| {r['case']} | {r['server']} | {cells} | {tracked} | {met} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    rounds = report["rounds"]
    lines = [
        f"Medians of {rounds} round(s) of {report['duration_s']:g} s; calls/s range over "
        "rounds in brackets. CPU columns: CPU milliseconds per call of the server process, "
        "of its children (the projections processes), of the PostgreSQL processes serving "
        "it, and of the load generator; `other` = cores busy with other people's processes "
        "during the run (noise).",
        "",
        "| case | server | calls/s | p50 ms | p99 ms | errors | CPU ms/call server "
        "| children | postgres | client | other cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    previous = ""
    for r in report["summary"]:
        case = r["case"] if r["case"] != previous else ""
        previous = r["case"]
        errors = ", ".join(f"{n} {code}" for code, n in sorted(r["errors"].items())) or "0"
        spread = (
            f" ({r['throughput_min']:.0f}–{r['throughput_max']:.0f})" if r["rounds"] > 1 else ""
        )
        lines.append(
            f"| {case} | {r['server']} | {r['throughput']:.0f}{spread} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {errors} | {r['server_ms_per_call']:.2f} | "
            f"{r.get('children_ms_per_call', 0.0):.2f} | {r['postgres_ms_per_call']:.2f} | "
            f"{r['client_ms_per_call']:.2f} | "
            f"{r['foreign_cores']:.2f} |"
        )
    if report["ratios"]:
        lines += ["", *_ratios_table(report["ratios"])]
    lag = _lag_table(report)
    if lag:
        lines += ["", *lag]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", type=Path, help="a JSON report written by benchmarks.run")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    report = json.loads(args.path.read_text())
    if args.markdown:
        print(markdown(report))
    else:
        print(render(report["summary"], report["ratios"], report["rounds"], _callers(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
