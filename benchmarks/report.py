"""Render a saved benchmark report (the JSON `benchmarks.run` writes) again: as the text
table, or as Markdown tables for docs/performance.md.

    python -m benchmarks.report benchmarks/results/20250101T120000-ab12.json --markdown
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.run import render


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def markdown(report: dict[str, Any]) -> str:
    rounds = report["rounds"]
    lines = [
        f"Medians of {rounds} round(s) of {report['duration_s']:g} s; calls/s range over "
        "rounds in brackets. CPU columns: CPU milliseconds per call of the server process, "
        "of the PostgreSQL processes serving it, and of the load generator; `other` = cores "
        "busy with other people's processes during the run (noise).",
        "",
        "| case | server | calls/s | p50 ms | p99 ms | errors | CPU ms/call server "
        "| postgres | client | other cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
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
            f"{r['postgres_ms_per_call']:.2f} | {r['client_ms_per_call']:.2f} | "
            f"{r['foreign_cores']:.2f} |"
        )
    if report["ratios"]:
        lines += [
            "",
            "| case | calls/s Tally/baseline | calls/s Tally/in-memory "
            "| p99 Tally/baseline | p99 Tally/in-memory |",
            "|---|---:|---:|---:|---:|",
        ]
        for e in report["ratios"]:
            lines.append(
                f"| {e['case']} | {_ratio(e.get('throughput_tally_over_baseline'))} | "
                f"{_ratio(e.get('throughput_tally_over_memory'))} | "
                f"{_ratio(e.get('p99_tally_over_baseline'))} | "
                f"{_ratio(e.get('p99_tally_over_memory'))} |"
            )
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
        print(render(report["summary"], report["ratios"], report["rounds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
