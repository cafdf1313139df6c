"""Temporary PostgreSQL clusters for tests that stop, restart or fail over a database: never
the shared one at 127.0.0.1:5432.

`temporary_cluster()`: one cluster (initdb, pg_ctl) on a free loopback port.
`auto_failover_formation()`: a pg_auto_failover monitor, a primary and a synchronous
secondary, three clusters on free loopback ports, with the monitor's timeouts cut from tens
of seconds to about one, so that a failover takes seconds.

PostgreSQL refuses to run as root: when the tests run as root, every server command runs as
the `postgres` user (runuser), in a temporary folder it owns. Everything started is stopped
and removed on the way out, also when the test fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_AUTOCTL = shutil.which("pg_autoctl") or "/usr/bin/pg_autoctl"
SERVER_USER = "postgres"  # who runs the servers when the tests run as root
# The monitor's health checks, in milliseconds (pg_auto_failover's defaults in comments):
# a stopped primary is marked unhealthy after about 2 s, not 20, and the secondary is
# promoted without waiting 30 s for the old primary to confirm its demotion.
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": 1000,  # 5000
    "pgautofailover.health_check_timeout": 1000,  # 5000
    "pgautofailover.health_check_max_retries": 1,  # 2
    "pgautofailover.health_check_retry_delay": 500,  # 2000
    "pgautofailover.node_considered_unhealthy_timeout": 2000,  # 20000
    "pgautofailover.primary_demote_timeout": 2000,  # 30000
    "pgautofailover.startup_grace_period": 1000,  # 10000
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


class _Runner:
    """Runs server commands as a user PostgreSQL accepts, with a private environment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.as_root = os.geteuid() == 0
        self.env = {
            "PATH": f"{PG_BIN}:/usr/bin:/bin",
            # pg_autoctl keeps its configuration and state under these: in our folder.
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_DATA_HOME": str(root / "share"),
            "XDG_RUNTIME_DIR": str(root / "run"),
            "HOME": str(root),
            "LANG": "C.UTF-8",
        }
        for folder in ("config", "share", "run"):
            (root / folder).mkdir(exist_ok=True)
        if self.as_root:
            shutil.chown(root, SERVER_USER)
            for folder in ("config", "share", "run"):
                shutil.chown(root / folder, SERVER_USER)

    def command(self, *args: str) -> list[str]:
        env = [f"{k}={v}" for k, v in self.env.items()]
        prefix = ["runuser", "-u", SERVER_USER, "--"] if self.as_root else []
        return [*prefix, "env", "-i", *env, *args]

    def run(self, *args: str, timeout: float = 120.0) -> str:
        done = subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def start(self, log: Path, *args: str) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(self.command(*args), stdout=out, stderr=subprocess.STDOUT)


@contextmanager
def _scratch_folder() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tally-pg-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------- one cluster


@dataclass
class Cluster:
    data: Path
    port: int
    runner: _Runner
    log: Path

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=3"

    def start(self) -> None:
        self.runner.run(
            str(PG_BIN / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
            "-l", str(self.log),
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`fast`: disconnect every client, then a clean shutdown (pg_ctl stop -m fast)."""
        self.runner.run(str(PG_BIN / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data))

    def running(self) -> bool:
        status = subprocess.run(
            self.runner.command(str(PG_BIN / "pg_ctl"), "status", "-D", str(self.data)),
            capture_output=True,
            check=False,
        )
        return status.returncode == 0

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def temporary_cluster() -> Iterator[Cluster]:
    """A fresh PostgreSQL 15 cluster on a free loopback port, trust authentication, removed
    afterwards."""
    with _scratch_folder() as root:
        runner = _Runner(root)
        cluster = Cluster(root / "data", free_port(), runner, root / "postgres.log")
        runner.run(
            str(PG_BIN / "initdb"), "-D", str(cluster.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        with open(cluster.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {cluster.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{root / 'run'}'\n"
                "max_connections = 100\nshared_buffers = 32MB\n"
            )
        try:
            cluster.start()
            yield cluster
        finally:
            if cluster.running():
                cluster.stop("immediate")


# ---------------------------------------------------------------------- pg_auto_failover


@dataclass
class Node:
    name: str
    data: Path
    port: int
    process: subprocess.Popen[bytes] | None = None


@dataclass
class Formation:
    """A monitor and two PostgreSQL nodes, each run by its own `pg_autoctl run`."""

    runner: _Runner
    monitor: Node
    nodes: list[Node] = field(default_factory=list)
    dbname: str = "tally"

    def url(self) -> str:
        """Tally's URL: every node, and only the one that takes writes will do."""
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"postgresql://postgres@{hosts}/{self.dbname}?target_session_attrs=read-write"

    def conninfo(self, node: Node) -> str:
        return f"host=127.0.0.1 port={node.port} user=postgres dbname={self.dbname}"

    def states(self) -> dict[str, tuple[str, str]]:
        """node name -> (reported state, goal state), as the monitor has them."""
        monitor = f"host=127.0.0.1 port={self.monitor.port} user=postgres dbname=pg_auto_failover"
        with psycopg.connect(monitor, connect_timeout=3) as conn:
            rows = conn.execute(
                "SELECT nodename, reportedstate::text, goalstate::text FROM pgautofailover.node"
            ).fetchall()
        return {name: (reported, goal) for name, reported, goal in rows}

    def node_in(self, state: str) -> Node | None:
        for node in self.nodes:
            if self.states().get(node.name) == (state, state):
                return node
        return None

    def wait_for(self, states: dict[str, str], timeout: float = 60.0) -> None:
        """Until each named node reports (and is assigned) its state."""

        def reached() -> bool:
            now = self.states()
            return all(now.get(name) == (s, s) for name, s in states.items())

        wait_until(f"nodes in {states} (now {self.states()})", reached, timeout)

    def stop_node(self, node: Node) -> None:
        """Stop the node's keeper and its PostgreSQL (`pg_autoctl stop`): gone for good."""
        self.runner.run(PG_AUTOCTL, "stop", "--pgdata", str(node.data))
        if node.process is not None:
            node.process.wait(timeout=30)


def _start_node(runner: _Runner, node: Node) -> None:
    node.process = runner.start(
        node.data.with_suffix(".log"), PG_AUTOCTL, "run", "--pgdata", str(node.data)
    )


def _stop(runner: _Runner, node: Node) -> None:
    if node.process is None or node.process.poll() is not None:
        return
    try:
        runner.run(PG_AUTOCTL, "stop", "--pgdata", str(node.data), timeout=30)
        node.process.wait(timeout=30)
    except (RuntimeError, subprocess.TimeoutExpired):
        runner.run(PG_AUTOCTL, "stop", "--immediate", "--pgdata", str(node.data), timeout=30)
        node.process.wait(timeout=30)


@contextmanager
def auto_failover_formation(dbname: str = "tally") -> Iterator[Formation]:
    """A monitor, a primary ("node1") and a secondary ("node2") with synchronous
    replication (pg_auto_failover's default for one standby: the primary's
    synchronous_standby_names names it), ready when yielded."""
    if not os.access(PG_AUTOCTL, os.X_OK):
        # Not a skip: the failover test must run. scripts/test installs it on a fresh machine.
        raise RuntimeError(
            f"{PG_AUTOCTL} is missing: install Debian's postgresql-15-auto-failover and "
            "pg-auto-failover-cli (scripts/test does when run as root) to run the failover test"
        )
    with _scratch_folder() as root, ExitStack() as cleanup:
        runner = _Runner(root)
        formation = Formation(runner, Node("monitor", root / "monitor", free_port()), [], dbname)
        common = ("--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl")
        monitor = formation.monitor
        runner.run(
            PG_AUTOCTL, "create", "monitor", "--pgdata", str(monitor.data),
            "--pgport", str(monitor.port), "--pgctl", str(PG_BIN / "pg_ctl"), *common,
        )  # fmt: skip
        _start_node(runner, monitor)
        cleanup.callback(_stop, runner, monitor)
        monitor_conninfo = (
            f"host=127.0.0.1 port={monitor.port} user=postgres dbname=pg_auto_failover"
        )
        wait_until("the monitor", lambda: _accepts(monitor_conninfo), 60)
        with psycopg.connect(monitor_conninfo, autocommit=True) as conn:
            for name, value in MONITOR_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = {value}")
            conn.execute("SELECT pg_reload_conf()")
        monitor_uri = (
            f"postgres://autoctl_node@127.0.0.1:{monitor.port}/pg_auto_failover?sslmode=disable"
        )
        for name in ("node1", "node2"):  # one after the other: the first is the primary
            node = Node(name, root / name, free_port())
            runner.run(
                PG_AUTOCTL, "create", "postgres", "--pgdata", str(node.data),
                "--pgport", str(node.port), "--pgctl", str(PG_BIN / "pg_ctl"),
                "--monitor", monitor_uri, "--dbname", dbname, "--name", name, *common,
            )  # fmt: skip
            _start_node(runner, node)
            cleanup.callback(_stop, runner, node)
            formation.nodes.append(node)
            if name == "node1":
                formation.wait_for({"node1": "single"}, 60)
        formation.wait_for({"node1": "primary", "node2": "secondary"}, 90)
        yield formation


def _accepts(conninfo: str) -> bool:
    try:
        psycopg.connect(conninfo, connect_timeout=2).close()
        return True
    except psycopg.Error:
        return False
