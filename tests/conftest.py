"""Fixtures: one real server per backend for the session; tests isolate by program id."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Client, ServerThread, scratch_postgres

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with scratch_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="tally-test-") as folder:
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
