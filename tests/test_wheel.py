"""A wheel built from the repository works anywhere: installed into a fresh virtualenv
outside the checkout, `ledger serve` in an empty folder migrates its SQLite file and serves.

Regression: the migrations lived outside the package, so an installed server stopped with
"no migrations folder at .../site-packages/migrations/sqlite".
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from grpc_health.v1 import health_pb2

from tests.test_server import _serve, _sigterm, _wait_serving, free_port

ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_installed_elsewhere_serves(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("tally_ledger-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ledger/migrations/sqlite/0001_event_store.sql" in names
    assert "ledger/migrations/postgres/0001_event_store.sql" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    target = f"127.0.0.1:{free_port()}"
    process = _serve(target, "sqlite:///ledger.db", ledger=str(venv / "bin" / "ledger"), cwd=empty)
    try:
        assert _wait_serving(target, process) == health_pb2.HealthCheckResponse.SERVING
        stderr = _sigterm(process, timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert (empty / "ledger.db").is_file()
