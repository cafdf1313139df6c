"""Temporary PostgreSQL 15 clusters for the replica and routing tests: a plain primary on a
loopback port of its own, and a hot standby streaming from it (`pg_basebackup -R`). Each runs
as the `postgres` user (postgres refuses root) from a temporary directory that is removed,
with its server stopped, however the test ends."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

BIN = Path("/usr/lib/postgresql/15/bin")
START_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Cluster:
    port: int
    data: Path

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*args: str | Path) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *map(str, args)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=START_TIMEOUT_SECONDS,
    )


@contextmanager
def _workdir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tally-pg-"))
    shutil.chown(root, "postgres", "postgres")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _running(data: Path, port: int, sockets: Path) -> Iterator[Cluster]:
    _as_postgres(
        BIN / "pg_ctl",
        "-D",
        data,
        "-l",
        data.parent / f"{data.name}.log",
        "-o",
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1",
        "-w",
        "-t",
        str(START_TIMEOUT_SECONDS),
        "start",
    )
    try:
        yield Cluster(port, data)
    finally:
        _as_postgres(BIN / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")


@contextmanager
def temporary_cluster() -> Iterator[Cluster]:
    """A new primary (wal_level=replica, so a standby can stream from it)."""
    with _workdir() as root:
        data = root / "primary"
        _as_postgres(BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with open(data / "postgresql.conf", "a") as conf:
            # Scratch data: no need to wait for the disk. Small, for a shared 2-core machine.
            conf.write(
                "wal_level = replica\nmax_wal_senders = 4\nfsync = off\n"
                "synchronous_commit = off\nshared_buffers = 32MB\nmax_connections = 60\n"
            )
        with _running(data, free_port(), root) as cluster:
            yield cluster


@contextmanager
def standby_of(primary: Cluster) -> Iterator[Cluster]:
    """A hot standby of `primary`, streaming from it (asynchronous replication)."""
    with _workdir() as root:
        data = root / "standby"
        _as_postgres(
            BIN / "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            data,
            "-R",  # standby.signal and primary_conninfo: it follows the primary
            "-X",
            "stream",
            "-c",
            "fast",  # an immediate checkpoint, not one spread over minutes
        )
        with _running(data, free_port(), root) as standby:
            wait_until_streaming(primary)
            yield standby


def wait_until_streaming(primary: Cluster, timeout: float = START_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(primary.conninfo(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()
            if row and row[0] > 0:
                return
            time.sleep(0.1)
    raise TimeoutError(f"no standby streams from port {primary.port}")


def create_database(cluster: Cluster, name: str) -> str:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return cluster.url(name)


def wait_for_database(cluster: Cluster, name: str, timeout: float = 30.0) -> None:
    """A database created on the primary appears on its standby once replayed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(cluster.conninfo(name), connect_timeout=5).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
