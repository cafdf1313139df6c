"""Fixtures: one real server per backend for the session; tests isolate by program id."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support import MEMORY_FOLDER, Client, ServerThread, scratch_postgres

BACKENDS = ["sqlite", "postgres"]

# Property tests: CI runs a fixed set of examples (derandomized: the same seeds every run, so
# a green CI is not luck); before stopping, run the random `hunt` profile with many examples:
#   HYPOTHESIS_PROFILE=hunt TALLY_HUNT_EXAMPLES=20000 .venv/bin/pytest --timeout 0 tests/unit
settings.register_profile("ci", derandomize=True, max_examples=300, print_blob=True)
settings.register_profile(
    "hunt",
    derandomize=False,
    max_examples=int(os.environ.get("TALLY_HUNT_EXAMPLES", "5000")),
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# scripts/test runs the suite in two steps: first every file but these, in two pytest-xdist
# workers (--dist loadfile: a file is one unit of work, so its module fixtures are made
# once); then these, marked `one_at_a_time`, in one process. Each starts several servers,
# PostgreSQL clusters, a pip install or a flood of processes: beside another worker's
# servers they overran the shared PostgreSQL's 100 connections ("too many clients"), and
# they are written to survive a loaded machine, not to share it with each other.
ONE_AT_A_TIME = {
    "test_benchmark_smoke",
    "test_crash_safety",
    "test_database_restart",
    "test_failover",
    "test_graceful_shutdown",
    "test_import",
    "test_projection_recovery",
    "test_projector_process",
    "test_relay",
    "test_replica",
    "test_resource_limits",
    "test_routing",
    "test_server",
    "test_several_processes",
    "test_telemetry",
    "test_wheel",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in ONE_AT_A_TIME:
            item.add_marker(pytest.mark.one_at_a_time)


# The session's servers (the behaviour suite's thousands of commands) commit without waiting
# for the disk: SQLite on tmpfs, PostgreSQL with synchronous_commit off (tests/support.py).
# What they prove is what every session sees, which is the same; only a crash of the
# machine or of the PostgreSQL server could tell, and no test here makes one.
@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with scratch_postgres(durable=False) as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="tally-test-", dir=MEMORY_FOLDER) as folder:
        yield f"sqlite:///{Path(folder) / 'ledger.db'}"


@pytest.fixture(scope="session")
def servers(postgres_url: str, sqlite_url: str) -> Iterator[dict[str, ServerThread]]:
    """Started lazily, stopped before their databases are dropped."""
    started: dict[str, ServerThread] = {}
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, servers: dict[str, ServerThread]) -> ServerThread:
    backend: str = request.param
    if backend not in servers:
        url = request.getfixturevalue(f"{backend}_url")
        servers[backend] = ServerThread(url, lot_sweep_interval=3600)
    return servers[backend]


@pytest.fixture
def client(server: ServerThread, request: pytest.FixtureRequest) -> Iterator[Client]:
    c = Client(server.target, backend=request.node.callspec.params["server"])
    yield c
    c.close()
