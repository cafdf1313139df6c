"""The server as an operator meets it: health, reflection, the `ledger` command, migrations."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ledger.infrastructure.database import parse_database_url
from ledger.infrastructure.migrations import Migration, available_migrations, migrate
from tests import ledger_cli
from tests.support import ServerThread, scratch_postgres

# The `ledger` script installed beside the interpreter running the tests.
LEDGER = str(Path(sys.executable).parent / "ledger")
SERVICE = "ledger.v1.LedgerService"
HEALTH = "grpc.health.v1.Health"


def run_ledger(
    *args: str, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`ledger *args` to completion in a process of its own (tests/ledger_cli.py)."""
    return ledger_cli.run(list(args), env=_env(), cwd=cwd, timeout=timeout)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("TALLY_LISTEN", "TALLY_DATABASE_URL"):
        env.pop(name, None)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_status(target: str, service: str, timeout: float = 10) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return int(response.status)


# ---------------------------------------------------------------------- health, reflection


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_reports_serving_once_started(server: ServerThread, service: str) -> None:
    assert health_status(server.target, service) == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(server: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        health_status(server.target, "no.such.Service")
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
        )

    assert len(responses) == 1
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE, HEALTH} <= names


def test_reflection_describes_the_ledger_service(server: ServerThread) -> None:
    """A reflection-based client can find every RPC without our .proto files."""
    from google.protobuf import descriptor_pb2

    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
        responses = list(stub.ServerReflectionInfo(iter([request]), timeout=10))

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[0].file_descriptor_response.file_descriptor_proto
    ]
    services = {
        f"{f.package}.{s.name}": [m.name for m in s.method] for f in files for s in f.service
    }
    assert {"Earn", "Redeem", "GetAccount", "ListTransactions", "CreateProgram"} <= set(
        services[SERVICE]
    )


# ---------------------------------------------------------------------- the ledger command


def test_serve_refuses_a_non_loopback_address_without_credentials(tmp_path: Path) -> None:
    result = run_ledger(
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--database",
        f"sqlite:///{tmp_path / 'l.db'}",
        timeout=30,
    )

    assert result.returncode != 0
    assert "credentials" in result.stderr
    assert "0.0.0.0:0" in result.stderr


def test_serve_refuses_a_non_loopback_address_from_the_environment(tmp_path: Path) -> None:
    env = {
        **_env(),
        "TALLY_LISTEN": "0.0.0.0:0",
        "TALLY_DATABASE_URL": f"sqlite:///{tmp_path / 'l.db'}",
    }
    result = subprocess.run(
        [LEDGER, "serve"], capture_output=True, text=True, timeout=30, env=env, check=False
    )

    assert result.returncode != 0
    assert "credentials" in result.stderr


def test_migrate_applies_then_has_nothing_to_do(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    expected = available_migrations("sqlite")
    assert expected

    first = run_ledger("migrate", "--database", url)
    second = run_ledger("migrate", "--database", url)

    assert first.returncode == 0, first.stderr
    assert [line for line in first.stdout.splitlines() if line.startswith("applied ")] == [
        f"applied {m.version:04d}_{m.name}" for m in expected
    ]
    assert f"{len(expected)} migration(s) applied" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "0 migration(s) applied" in second.stdout
    assert not [line for line in second.stdout.splitlines() if line.startswith("applied ")]
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert sorted(versions) == [m.version for m in expected]


def test_serve_no_migrate_refuses_an_empty_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"

    result = run_ledger("serve", "--no-migrate", "--listen", "127.0.0.1:0", "--database", url)

    assert result.returncode != 0
    assert "pending migrations" in result.stderr
    assert "ledger migrate" in result.stderr


def test_serve_no_migrate_refuses_an_empty_postgres_database() -> None:
    with scratch_postgres() as url:
        result = run_ledger("serve", "--no-migrate", "--listen", "127.0.0.1:0", "--database", url)
        with psycopg.connect(parse_database_url(url).conninfo()) as conn:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_name <> 'schema_migrations'"
            ).fetchall()

    assert result.returncode != 0
    assert "pending migrations" in result.stderr
    assert tables == []  # it refused before creating anything


def test_serve_bad_database_url_is_refused(tmp_path: Path) -> None:
    result = run_ledger("serve", "--listen", "127.0.0.1:0", "--database", "mysql://x/y")
    assert result.returncode != 0
    assert "unsupported database URL" in result.stderr


# ---------------------------------------------------------------------- racing migrations


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_concurrent_migrations_apply_each_version_once(backend: str, tmp_path: Path) -> None:
    with fresh_database(backend, tmp_path) as url:
        config = parse_database_url(url)
        barrier = threading.Barrier(2)
        applied: list[list[Migration]] = []
        failures: list[BaseException] = []

        def run() -> None:
            barrier.wait(timeout=30)
            try:
                applied.append(migrate(config))
            except BaseException as e:  # reported below
                failures.append(e)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)

        rows = _schema_migrations(backend, url)

    expected = [m.version for m in available_migrations(config.kind)]
    assert failures == []
    assert len(applied) == 2
    assert sorted(m.version for run in applied for m in run) == expected
    assert sorted(rows) == [(v, 1) for v in expected]


@contextmanager
def fresh_database(backend: str, folder: Path) -> Iterator[str]:
    """The URL of an empty database on `backend`, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'fresh.db'}"
    else:
        with scratch_postgres() as url:
            yield url


def _schema_migrations(backend: str, url: str) -> list[tuple[int, int]]:
    sql = "SELECT version, COUNT(*) FROM schema_migrations GROUP BY version"
    if backend == "sqlite":
        with sqlite3.connect(parse_database_url(url).sqlite_path) as conn:
            return [(int(v), int(n)) for v, n in conn.execute(sql)]
    with psycopg.connect(parse_database_url(url).conninfo()) as conn:
        return [(int(v), int(n)) for v, n in conn.execute(sql).fetchall()]


# ---------------------------------------------------------------------- a real process


def _wait_serving(target: str, process: subprocess.Popen[str], limit: float = 60) -> int:
    deadline = time.monotonic() + limit
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"ledger serve exited early ({process.returncode}): {err}")
        try:
            last = health_status(target, "", timeout=1)
            if last == health_pb2.HealthCheckResponse.SERVING:
                return last
        except grpc.RpcError as e:
            last = e.code()
        time.sleep(0.1)
    pytest.fail(f"ledger serve never answered health: {last}")


def _serve(
    target: str, url: str, *options: str, ledger: str = LEDGER, cwd: Path | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [ledger, "serve", "--listen", target, "--database", url, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=cwd,
    )


def _sigterm(process: subprocess.Popen[str], timeout: float) -> str:
    """Ask the server to stop; its stderr once it has."""
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=timeout)
    return stderr


def _kill_if_running(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_serve_answers_health_and_stops_gracefully_on_sigterm(backend: str, tmp_path: Path) -> None:
    with fresh_database(backend, tmp_path) as url:
        target = f"127.0.0.1:{free_port()}"
        process = _serve(target, url)
        try:
            assert _wait_serving(target, process) == health_pb2.HealthCheckResponse.SERVING
            assert health_status(target, SERVICE) == health_pb2.HealthCheckResponse.SERVING

            stderr = _sigterm(process, timeout=20)
        finally:
            _kill_if_running(process)

    assert process.returncode == 0, stderr
    assert "shutting down" in stderr
    assert '"stopped"' in stderr


def test_several_processes_share_one_port_and_all_stop_on_sigterm(tmp_path: Path) -> None:
    with fresh_database("postgres", tmp_path) as url:
        target = f"127.0.0.1:{free_port()}"
        process = _serve(target, url, "--processes", "2")
        try:
            assert _wait_serving(target, process) == health_pb2.HealthCheckResponse.SERVING
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the second process may still be starting
                listening = subprocess.run(
                    ["ss", "-Hltnp", f"sport = :{target.rsplit(':', 1)[1]}"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                if len(listening.splitlines()) == 2:
                    break
                time.sleep(0.2)
            assert len(listening.splitlines()) == 2, listening
            stderr = _sigterm(process, timeout=30)
        finally:
            _kill_if_running(process)

    assert process.returncode == 0, stderr
    assert stderr.count('"stopped"') == 2


def test_several_processes_are_refused_on_sqlite(tmp_path: Path) -> None:
    done = subprocess.run(
        [LEDGER, "serve", "--database", f"sqlite:///{tmp_path / 'l.db'}", "--processes", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(),
        check=False,
    )
    assert done.returncode == 2
    assert "needs a PostgreSQL database" in done.stderr


def test_migration_0007_drops_the_snapshots_an_older_release_took(tmp_path: Path) -> None:
    """Snapshots of the old state shape (no debt_of, the tier window keyed by occurred_at)
    would restore broken accounts: the migration that ships the new shape drops them."""
    config = parse_database_url(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(config)
    with sqlite3.connect(config.sqlite_path) as conn:
        conn.execute(
            "INSERT INTO stored_snapshots VALUES"
            " ('00', 200, 'ledger.domain.account:MemberAccount', x'7b7d')"
        )
        conn.execute("DELETE FROM schema_migrations WHERE version = 7")  # as before 0007
    assert [m.version for m in migrate(config)] == [7]
    with sqlite3.connect(config.sqlite_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM stored_snapshots").fetchone() == (0,)
