"""`benchmarks.breakdown` (where one command's time goes) runs and nests its stages: a real
Tally, baseline and in-memory server, one round of one second; and its reading of Tally's
Prometheus histograms, on made-up text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.breakdown import STAGES, means

REPO = Path(__file__).resolve().parent.parent

BEFORE = """\
# HELP rpc_server_duration_seconds gRPC calls
rpc_server_duration_seconds_sum{rpc_method="Earn",rpc_grpc_status_code="0"} 1.0
rpc_server_duration_seconds_count{rpc_method="Earn",rpc_grpc_status_code="0"} 100.0
rpc_server_duration_seconds_sum{rpc_method="GetAccount",rpc_grpc_status_code="0"} 9.0
rpc_server_duration_seconds_count{rpc_method="GetAccount",rpc_grpc_status_code="0"} 9.0
tally_command_duration_seconds_sum{tally_command="earn",tally_outcome="accepted"} 0.5
tally_command_duration_seconds_count{tally_command="earn",tally_outcome="accepted"} 100.0
"""
AFTER = """\
rpc_server_duration_seconds_sum{rpc_method="Earn",rpc_grpc_status_code="0"} 3.0
rpc_server_duration_seconds_count{rpc_method="Earn",rpc_grpc_status_code="0"} 1100.0
rpc_server_duration_seconds_sum{rpc_method="Earn",rpc_grpc_status_code="3"} 0.2
rpc_server_duration_seconds_count{rpc_method="Earn",rpc_grpc_status_code="3"} 100.0
rpc_server_duration_seconds_sum{rpc_method="GetAccount",rpc_grpc_status_code="0"} 90.0
rpc_server_duration_seconds_count{rpc_method="GetAccount",rpc_grpc_status_code="0"} 90.0
tally_command_duration_seconds_sum{tally_command="earn",tally_outcome="accepted"} 1.7
tally_command_duration_seconds_count{tally_command="earn",tally_outcome="accepted"} 1300.0
"""


def test_means_are_of_the_calls_between_the_scrapes_of_the_method_asked_for() -> None:
    found = means(BEFORE, AFTER, "Earn")
    # Earn: (3.0 + 0.2 - 1.0) s over (1100 + 100 - 100) calls; GetAccount is left out.
    assert found["in the RPC handler"] == pytest.approx(2.0)
    assert found["submitted until answered"] == pytest.approx(1.0)
    assert "the event-store statement" not in found  # no such histogram: no row


@pytest.mark.timeout(120)
def test_breakdown_runs_against_all_three_servers(tmp_path: Path) -> None:
    out = tmp_path / "breakdown.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.breakdown", "--duration", "1", "--rounds", "1",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    rounds = json.loads(out.read_text())["rounds"]
    assert set(rounds) == {"tally", "baseline", "memory"}
    tally = rounds["tally"][0]
    nested = [tally["client round trip"], *(tally[label] for label, _, _ in STAGES)]
    assert all(v > 0 for v in nested), tally
    # Each stage lies inside the one before it (means over the same calls).
    assert nested == sorted(nested, reverse=True), tally
    assert "the in-memory round trip + the statement" in done.stdout, done.stdout
