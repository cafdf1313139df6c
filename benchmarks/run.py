"""One command: Tally against the hand-written baseline and the in-memory server.

    python -m benchmarks.run            # full: ~5 s per case per server, 3 rounds, medians
    python -m benchmarks.run --quick    # ~1 s per case, 1 round (CI)
    python -m benchmarks.run --smoke    # 0.5 s, six small cases (the test suite)
    python -m benchmarks.run --json out.json --cases earn-16,earn-hot-64 --servers tally

It creates scratch PostgreSQL databases, starts each server as a subprocess on a free
loopback port (Tally as `python -m ledger.cli serve`), waits for gRPC health SERVING, then
runs rounds that alternate between the servers (the order rotates every case and round, so
no server always runs first or right after another's load). Every run uses fresh members:
runs never inherit each other's accounts. After each run against Tally the harness waits
until its projections have caught up (GetAccount min_position) so that catch-up work never
bleeds into the next server's measurement; the wait is reported as `settle_s`.

During every run against a server with projections (`settles`), a probe measures the
projection lag as a distribution (`LagProbe`): the read-your-writes lag (GetAccount with
min_position = the latest acknowledged position, reply - acknowledgement) and each read
model's own lag (ms from every reply until the batch covering it committed).

It prints a table (case, server, calls/s, p50, p99, errors, CPU per call), the ratios of the
measured server over the in-memory server and the baseline (calls/s, p50, p99) next to issue
14's goal for the case and whether it is met (`goals_for`), and the lag; and writes everything
(every run, medians, ratios and goals, machine) as JSON to benchmarks/results/<timestamp>.json
(gitignored) or --json PATH. Subprocesses and databases are cleaned up on failure, Ctrl-C and
SIGTERM too.

New cases (queries, holds) slot in as `Case(name, operation, callers)` with a new
`loadgen.Operation`; new servers as a `ServerSpec`.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.loadgen import (
    CALL_TIMEOUT,
    Acknowledged,
    Batch,
    Earn,
    Operation,
    Redeem,
    Spend,
    TopUp,
    gather_limited,
    percentile,
    run_load,
)
from ledger.commit_notices import PROJECTED, parse_projected
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc
from projections import REGISTERED

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PG_HOST = os.environ.get("TALLY_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TALLY_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("TALLY_BENCH_PG_USER", "postgres")
STARTUP_TIMEOUT = 120.0
SETTLE_TIMEOUT = 120.0
# The read-your-writes probe (GetAccount min_position) every this many ms, when asked for
# (--lag-probe-ms): off by default, because its calls load only the servers with read models
# (at one caller they were a fifth more calls, and 0.8 ms on tally's earn-1 p50).
PROBE_INTERVAL_MS = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ---------------------------------------------------------------------- cases and servers


@dataclass(frozen=True)
class Case:
    """One workload: an operation, how many concurrent callers, and on how many members."""

    name: str
    operation: Operation
    callers: int
    hot: bool = False  # all callers on one member
    member_count: int = 0  # members to spread over (default: one per caller)

    @property
    def members(self) -> int:
        return 1 if self.hot else (self.member_count or self.callers)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "operation": self.operation.name,
            "callers": self.callers,
            "members": self.members,
            "hot": self.hot,
        }


CASES: list[Case] = [
    Case("earn-1", Earn(), 1),
    Case("earn-16", Earn(), 16),
    Case("earn-64", Earn(), 64),
    Case("redeem-1", Redeem(), 1),
    Case("redeem-16", Redeem(), 16),
    Case("redeem-64", Redeem(), 64),
    Case("topup-1", TopUp(), 1),
    Case("topup-64", TopUp(), 64),
    Case("spend-64", Spend(), 64),
    Case("earn-hot-64", Earn(), 64, hot=True),
    Case("redeem-hot-64", Redeem(), 64, hot=True),
    Case("topup-hot-64", TopUp(), 64, hot=True),
    Case("spend-hot-64", Spend(), 64, hot=True),
    Case("batch-100", Batch(100), 8, member_count=2_000),
    Case("batch-1000", Batch(1000), 4, member_count=4_000),
]
SMOKE_CASES: list[Case] = [
    Case("earn-1", Earn(), 1),
    Case("earn-16", Earn(), 16),
    Case("redeem-16", Redeem(), 16),
    Case("topup-1", TopUp(), 1),
    Case("spend-16", Spend(), 16),
    Case("batch-100", Batch(100), 2, member_count=200),
]


# ---------------------------------------------------------------------- issue 14's goals


@dataclass(frozen=True)
class Goal:
    """A goal of issue 14 for a case: the subject's `metric` over the `against` server's,
    at least `bound` (calls/s) or at most `bound` (latencies)."""

    metric: str  # "throughput", "p50_ms" or "p99_ms"
    against: str  # "memory" or "baseline"
    bound: float

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "throughput"

    def text(self) -> str:
        label = {"throughput": "calls/s", "p50_ms": "p50", "p99_ms": "p99"}[self.metric]
        op = ">=" if self.higher_is_better else "<="
        return f"{label} {op} {self.bound:.2f}x {self.against}"

    def met(self, ratio: float | None) -> bool | None:
        if ratio is None:
            return None
        return ratio >= self.bound if self.higher_is_better else ratio <= self.bound


SINGLE_COMMANDS = ("earn", "redeem", "topup", "spend")


def goals_for(case: Case) -> list[Goal]:
    """Issue 14: at 64 callers >= 0.60x in-memory calls/s (>= 0.50x on one hot account) and
    p99 <= the baseline's; at 1 caller p50 <= the baseline's; ExecuteBatch >= 0.40x
    in-memory. Other cases (16 callers) have none."""
    operation = case.operation.name
    if operation in SINGLE_COMMANDS and case.callers == 64:
        return [
            Goal("throughput", "memory", 0.50 if case.hot else 0.60),
            Goal("p99_ms", "baseline", 1.0),
        ]
    if operation in SINGLE_COMMANDS and case.callers == 1:
        return [Goal("p50_ms", "baseline", 1.0)]
    if operation in ("batch-100", "batch-1000"):
        return [Goal("throughput", "memory", 0.40)]
    return []


# Issue 14: live projection lag p99 < 50 ms at the 64-caller load, judged twice: on the
# read-your-writes lag (a read's round trip in it) and on the eager read model's own lag.
LAG_GOAL_MS = 50.0
LAG_GOAL_CALLERS = 64
LAG_GOAL_PROJECTION = "points"  # the eager read model: GetAccount reads it


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: tuple[str, ...]  # after `python -m`; --listen (and --database) are appended
    database: bool
    # Tally answers commands before its projections have caught up: wait for them after a
    # run so their work is not billed to the next server measured.
    settles: bool = False

    def command(self, listen: str, database_url: str | None) -> list[str]:
        cmd = [sys.executable, "-m", *self.argv, "--listen", listen]
        if database_url is not None:
            cmd += ["--database", database_url]
        return cmd


SERVERS: list[ServerSpec] = [
    ServerSpec("tally", ("ledger.cli", "serve"), database=True, settles=True),
    ServerSpec("baseline", ("benchmarks.baseline_server",), database=True),
    ServerSpec("memory", ("benchmarks.memory_server",), database=False),
]
# Asked for by name only (--servers tally,tally-inline,...): the same server with its read
# models in the API process (before decision 31), or in one projections process instead of
# two (before decision 38), for that lever's effect in one run.
EXTRA_SERVERS: list[ServerSpec] = [
    ServerSpec(
        "tally-inline",
        ("ledger.cli", "serve", "--projections", "inline"),
        database=True,
        settles=True,
    ),
    ServerSpec(
        "tally-one-projector",
        ("ledger.cli", "serve", "--projector-processes", "1"),
        database=True,
        settles=True,
    ),
]


# --quick: every operation at least once, under ~2 minutes for the three servers.
QUICK_CASES: list[Case] = CASES


@dataclass(frozen=True)
class Mode:
    name: str
    duration: float
    rounds: int
    cases: list[Case]


MODES = {
    "full": Mode("full", 5.0, 3, CASES),
    "quick": Mode("quick", 1.0, 1, QUICK_CASES),
    "smoke": Mode("smoke", 0.5, 1, SMOKE_CASES),
}


# ---------------------------------------------------------------------- processes, databases


def admin_conninfo() -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres connect_timeout=10"


def create_database(name: str) -> str:
    with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def postgres_version() -> str:
    with psycopg.connect(admin_conninfo()) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc; 0 if unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


_PG_AUXILIARY = ("checkpointer", "background writer", "walwriter", "wal writer")


def postgres_cpu_snapshot(dbname: str | None) -> dict[int, float]:
    """CPU seconds of the local PostgreSQL processes working for us: the backends connected
    to `dbname` and the shared auxiliary processes (WAL writer, checkpointer, ...). Backends
    of other databases (anyone else's work on this machine) are left out."""
    snapshot: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ours = dbname is not None and f" {dbname} " in title
        if ours or any(a in title for a in _PG_AUXILIARY):
            snapshot[int(entry.name)] = process_cpu_seconds(int(entry.name))
    return snapshot


def descendants_cpu_snapshot(pid: int) -> dict[int, float]:
    """CPU seconds of every live descendant of `pid` (the server's projections processes,
    its server processes under --processes, ...)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {child: process_cpu_seconds(child) for child in found}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (pid -> seconds); a pid new in `after` counts
    from zero."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def machine_busy_seconds() -> float:
    """CPU seconds (all cores) the whole machine has been busy, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


class ServerProcess:
    """A server under test: a subprocess in its own session, its output in a log file."""

    def __init__(
        self,
        spec: ServerSpec,
        database_url: str | None,
        log_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        """`env`: settings for this server on top of this process's environment."""
        self.spec = spec
        self.dbname = database_url.rsplit("/", 1)[1] if database_url else None
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{spec.name}.log"
        env = {
            **os.environ,
            **(env or {}),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.spec.command(self.target, database_url),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def returncode_if_dead(self) -> int | None:
        return self.proc.poll()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_serving(self, timeout: float = STARTUP_TIMEOUT) -> float:
        """Poll gRPC health until SERVING; returns the seconds it took."""
        started = time.monotonic()
        async with grpc.aio.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if not self.alive():
                    raise RuntimeError(
                        f"{self.spec.name} exited with {self.proc.returncode} while starting:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - started
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() - started > timeout:
                    raise RuntimeError(
                        f"{self.spec.name} not SERVING after {timeout:.0f} s:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.2)

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


# ---------------------------------------------------------------------- the rounds


@dataclass
class Session:
    """One server during the benchmark: its process and a channel for setup calls."""

    process: ServerProcess
    channel: grpc.aio.Channel
    stub: Any
    program_id: str


async def open_session(process: ServerProcess, program_id: str, tag: str) -> Session:
    channel = grpc.aio.insecure_channel(process.target)
    stub = pb_grpc.LedgerServiceStub(channel)
    await stub.CreateProgram(
        pb.CreateProgramRequest(
            program_id=program_id,
            display_name="Benchmark programme",
            currency="EUR",
            request_id=f"{tag}-program",
        ),
        timeout=CALL_TIMEOUT,
    )
    return Session(process, channel, stub, program_id)


async def enroll(session: Session, member_id: str, request_id: str) -> int:
    response = await session.stub.EnrollMember(
        pb.EnrollMemberRequest(
            program_id=session.program_id, member_id=member_id, request_id=request_id
        ),
        timeout=CALL_TIMEOUT,
    )
    position: int = response.position
    return position


async def settle(session: Session, member_id: str, position: int) -> float:
    """Wait until Tally's projections reached `position`; returns the seconds waited."""
    if not session.process.spec.settles or position <= 0:
        return 0.0
    started = time.perf_counter()
    await session.stub.GetAccount(
        pb.GetAccountRequest(
            program_id=session.program_id, member_id=member_id, min_position=position
        ),
        timeout=SETTLE_TIMEOUT,
    )
    return time.perf_counter() - started


def database_conninfo(dbname: str) -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={dbname} connect_timeout=10"


def distribution(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max (nearest rank) of some samples; zeros if there are none."""
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else 0.0,
    }


def visible_after(
    replies: Sequence[tuple[int, float]], batches: Sequence[tuple[int, float]]
) -> tuple[list[float], int]:
    """For each reply (position, time): ms until the first of a read model's committed
    batches (last position, time its notice arrived; in commit order) that covers it, 0 if
    one did before the reply arrived. Also the count of replies no batch covered."""
    covered: list[int] = []
    for position, _ in batches:  # a running maximum, so that bisect holds
        covered.append(max(position, covered[-1]) if covered else position)
    lags: list[float] = []
    unseen = 0
    for position, at in replies:
        i = bisect.bisect_left(covered, position)
        if i == len(covered):
            unseen += 1
        else:
            lags.append(max(0.0, batches[i][1] - at) * 1000)
    return lags, unseen


class LagProbe:
    """Projection lag measured while a load runs against a server with projections.

    Read-your-writes lag: every `probe_ms` a task on a channel of its own (so it does not
    queue behind the load) waits for the load's next acknowledgement, takes the highest
    position acknowledged so far and the monotonic time of that reply (`Acknowledged`),
    calls GetAccount of a member of its own with min_position = that position, and records
    reply time - acknowledgement time. Waiting for the next acknowledgement (rather than
    taking the last one, up to a call's latency old at 1 caller) keeps the time between the
    acknowledgement and the probe's call (`ack_age_p50_ms`) to the event loop's scheduling;
    the lag includes the probe's own round trip (`rpc_p50_ms`), which at 64 callers queues in
    the server like every other call. A probe that takes longer than `probe_ms` is followed
    by the next at once.

    Projection lag, each read model's own: the harness LISTENs (psycopg) to the PROJECTED
    notices the projections send inside each batch's transaction (ledger/commit_notices.py:
    name and last position, delivered at its commit), and for every reply of the load takes
    the time until the first batch of that read model covering its position committed
    (`visible_after`). No server round trip is in it, and every reply counts, not a sample.
    At the end it waits up to `drain_s` for every registered read model to cover the last
    reply."""

    def __init__(
        self,
        target: str,
        dbname: str | None,
        program_id: str,
        member_id: str,
        acknowledged: Acknowledged,
        probe_ms: float = PROBE_INTERVAL_MS,
        listen: bool = True,
        drain_s: float = 5.0,
    ) -> None:
        self.target = target
        self.dbname = dbname
        self.program_id = program_id
        self.member_id = member_id
        self.acknowledged = acknowledged
        self.probe_ms = probe_ms
        self.listen = listen
        self.drain_s = drain_s
        self.stop = asyncio.Event()
        self.listened = asyncio.Event()
        self.channel: grpc.aio.Channel | None = None
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.lags: list[float] = []
        self.rpcs: list[float] = []
        self.ages: list[float] = []
        self.probe_errors: Counter[str] = Counter()
        self.batches: dict[str, list[tuple[int, float]]] = {}
        self.listen_error = ""

    async def open(self) -> None:
        """Connect both (before the clock starts), then start measuring."""
        if self.probe_ms > 0:
            self.channel = grpc.aio.insecure_channel(
                self.target, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            await asyncio.wait_for(self.channel.channel_ready(), timeout=10)
            self.tasks.append(asyncio.create_task(self._probe(self.channel)))
        if self.listen and self.dbname is not None:
            try:
                self.conn = await psycopg.AsyncConnection.connect(
                    database_conninfo(self.dbname), autocommit=True
                )
                await self.conn.execute(f"LISTEN {PROJECTED}")
            except psycopg.Error as e:
                self.listen_error = str(e).strip()
            else:
                self.tasks.append(asyncio.create_task(self._listen(self.conn)))

    async def close(self) -> dict[str, Any]:
        """Stop probing (a probe in flight is waited for), let the read models cover the
        last reply (at most `drain_s`), and return the figures."""
        self.stop.set()
        deadline = time.monotonic() + self.drain_s
        while self.conn is not None and time.monotonic() < deadline and not self.listen_error:
            if self._cover(self.acknowledged.position):
                break
            await asyncio.sleep(0.02)
        self.listened.set()
        await asyncio.gather(*self.tasks)
        if self.channel is not None:
            await self.channel.close()
        if self.conn is not None:
            await self.conn.close()
        lag = distribution(self.lags)
        return {
            "read_your_writes": {
                "interval_ms": self.probe_ms,
                "probes": len(self.lags),
                "errors": dict(self.probe_errors),
                "p50_ms": lag["p50"],
                "p90_ms": lag["p90"],
                "p99_ms": lag["p99"],
                "max_ms": lag["max"],
                "rpc_p50_ms": distribution(self.rpcs)["p50"],
                "ack_age_p50_ms": distribution(self.ages)["p50"],
            }
            if self.probe_ms > 0
            else None,
            "projection_lag": self._projection_lag()
            if self.listen and self.dbname is not None
            else None,
        }

    def _cover(self, position: int) -> bool:
        """Every registered read model has committed a batch up to `position`."""
        return all(
            (batches := self.batches.get(p.name)) and batches[-1][0] >= position for p in REGISTERED
        )

    def _projection_lag(self) -> dict[str, Any]:
        """Every registered read model's, one that sent no batch too (all its replies
        unseen), so that a silent read model shows rather than drops out of the table."""
        replies = self.acknowledged.replies
        ms = {}
        for name in sorted(p.name for p in REGISTERED):
            batches = self.batches.get(name, [])
            lags, unseen = visible_after(replies, batches)
            ms[name] = {**distribution(lags), "batches": len(batches), "unseen": unseen}
        return {"replies": len(replies), "error": self.listen_error, "ms": ms}

    async def _pause(self, started: float, interval_ms: float) -> None:
        wait = interval_ms / 1000 - (time.monotonic() - started)
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), wait)

    async def _next_acknowledgement(self) -> bool:
        """Wait for the load's next acknowledgement; False if stopped first."""
        advanced = self.acknowledged.advanced
        advanced.clear()
        waits = [asyncio.ensure_future(advanced.wait()), asyncio.ensure_future(self.stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return advanced.is_set() and not self.stop.is_set()

    async def _probe(self, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.LedgerServiceStub(channel)
        while await self._next_acknowledgement():
            position, acked_at = self.acknowledged.position, self.acknowledged.at
            tick = time.monotonic()
            try:
                await stub.GetAccount(
                    pb.GetAccountRequest(
                        program_id=self.program_id,
                        member_id=self.member_id,
                        min_position=position,
                    ),
                    timeout=SETTLE_TIMEOUT,
                )
            except grpc.aio.AioRpcError as e:
                self.probe_errors[e.code().name] += 1
            else:
                replied = time.monotonic()
                self.lags.append((replied - acked_at) * 1000)
                self.rpcs.append((replied - tick) * 1000)
                self.ages.append((tick - acked_at) * 1000)
            await self._pause(tick, self.probe_ms)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while not self.listened.is_set():
            try:
                async for notice in conn.notifies(timeout=0.05):
                    arrived = time.monotonic()
                    projected = parse_projected(notice.payload)
                    if projected is not None:
                        name, position = projected
                        self.batches.setdefault(name, []).append((position, arrived))
            except psycopg.Error as e:
                self.listen_error = str(e).strip()
                return


async def wait_for_quiet(limit: float, threshold: float = 0.25) -> float:
    """On a shared machine: wait (at most `limit` seconds) until the machine is quiet, i.e.
    fewer than `threshold` cores were busy over the last second (our servers are idle then).
    Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = machine_busy_seconds()
        await asyncio.sleep(1.0)
        if machine_busy_seconds() - before < threshold:
            break
    return time.monotonic() - started


async def one_run(
    session: Session,
    case: Case,
    round_no: int,
    duration: float,
    tag: str,
    quiet_wait: float = 0.0,
    channels: int = 1,
    probe_ms: float = PROBE_INTERVAL_MS,
    listen: bool = True,
) -> dict[str, Any]:
    process = session.process
    prefix = f"{tag}-{case.name}-r{round_no}"
    members = [f"{case.name}.r{round_no}.m{i}" for i in range(case.members)]
    # A server with projections gets the lag probe, on a member of its own.
    probing = process.spec.settles and (probe_ms > 0 or listen)
    probe_member = f"{case.name}.r{round_no}.probe"
    enrolled = [*members, probe_member] if probing else members
    positions = await gather_limited(
        [enroll(session, m, f"{prefix}-enroll-{m}") for m in enrolled], limit=16
    )
    seeded = await case.operation.prepare(session.stub, session.program_id, members, prefix)
    await settle(session, members[0], max([*positions, seeded]))
    waited = await wait_for_quiet(quiet_wait) if quiet_wait > 0 else 0.0

    acknowledged = Acknowledged()
    probe = None
    if probing:
        probe = LagProbe(
            process.target,
            process.dbname,
            session.program_id,
            probe_member,
            acknowledged,
            probe_ms,
            listen,
        )
        await probe.open()
    try:
        server_cpu, client_cpu = process.cpu_seconds(), time.process_time()
        pg_before, busy = postgres_cpu_snapshot(process.dbname), machine_busy_seconds()
        children_before = descendants_cpu_snapshot(process.pid)
        result = await run_load(
            process.target,
            case.operation,
            session.program_id,
            members,
            case.callers,
            duration=duration,
            tag=prefix,
            channels=channels,
            acknowledged=acknowledged,
        )
        busy = machine_busy_seconds() - busy
        server_cpu = process.cpu_seconds() - server_cpu
        children_cpu = cpu_delta(children_before, descendants_cpu_snapshot(process.pid))
        pg_cpu = cpu_delta(pg_before, postgres_cpu_snapshot(process.dbname))
        client_cpu = time.process_time() - client_cpu
    finally:
        lag = await probe.close() if probe is not None else {}

    settle_error = ""
    try:
        settle_s = await settle(session, members[0], result.max_position)
    except grpc.aio.AioRpcError as e:
        settle_s, settle_error = SETTLE_TIMEOUT, f"{e.code().name}: {e.details()}"
    calls = max(result.calls, 1)
    wall = max(result.wall_s, 1e-9)
    return {
        "round": round_no,
        "case": case.name,
        "server": process.spec.name,
        **result.summary(),
        "settle_s": round(settle_s, 3),
        "settle_error": settle_error,
        "read_your_writes": lag.get("read_your_writes"),
        "projection_lag": lag.get("projection_lag"),
        "waited_for_quiet_s": round(waited, 1),
        "cpu": {
            # CPU milliseconds per call, and cores busy on average during the run.
            "server_ms_per_call": 1000 * server_cpu / calls,
            # The server's child processes: its projections processes (decisions 31, 38).
            "children_ms_per_call": 1000 * children_cpu / calls,
            "postgres_ms_per_call": 1000 * pg_cpu / calls,
            "client_ms_per_call": 1000 * client_cpu / calls,
            "server_cores": server_cpu / wall,
            "postgres_cores": pg_cpu / wall,
            "client_cores": client_cpu / wall,
            # Everything else the machine did meanwhile (other people's processes): the
            # noise this run was measured under.
            "children_cores": children_cpu / wall,
            "foreign_cores": max(0.0, busy - server_cpu - children_cpu - pg_cpu - client_cpu)
            / wall,
        },
    }


def _progress(run: dict[str, Any], rounds: int) -> None:
    errors = sum(run["errors"].values())
    note = f"  errors {run['errors']}" if errors else ""
    if run["cpu"]["foreign_cores"] >= 0.25:
        note += f"  (noise: {run['cpu']['foreign_cores']:.1f} cores busy elsewhere)"
    if run["settle_s"] >= 0.05:
        note += f"  (projections caught up {run['settle_s']:.2f} s later)"
    if run["settle_error"]:
        note += f"  SETTLE FAILED: {run['settle_error']}"
    rw = run.get("read_your_writes")
    if rw:
        note += (
            f"  read-your-writes lag p50 {rw['p50_ms']:.1f} p99 {rw['p99_ms']:.1f} "
            f"max {rw['max_ms']:.1f} ms ({rw['probes']} probes"
            + (f", errors {rw['errors']}" if rw["errors"] else "")
            + ")"
        )
    tracked = run.get("projection_lag")
    if tracked and tracked["error"]:
        note += f"  PROJECTION LAG LISTENING FAILED: {tracked['error']}"
    print(
        f"[round {run['round'] + 1}/{rounds}] {run['case']:<14} {run['server']:<9}"
        f"{run['throughput']:9.1f} calls/s {run['commands_per_s']:8.0f} cmds/s  "
        f"p50 {run['p50_ms']:7.2f} ms  "
        f"p99 {run['p99_ms']:8.2f} ms{note}",
        file=sys.stderr,
        flush=True,
    )


async def benchmark(
    processes: list[ServerProcess],
    cases: Sequence[Case],
    rounds: int,
    duration: float,
    tag: str,
    quiet_wait: float = 0.0,
    channels: int = 1,
    probe_ms: float = PROBE_INTERVAL_MS,
    listen: bool = True,
) -> list[dict[str, Any]]:
    startup = await asyncio.gather(*(p.wait_serving() for p in processes))
    for p, seconds in zip(processes, startup, strict=True):
        print(
            f"{p.spec.name} SERVING on {p.target} after {seconds:.1f} s (pid {p.pid})",
            file=sys.stderr,
            flush=True,
        )
    program_id = f"bench-{tag}"[:64]
    sessions = [await open_session(p, program_id, tag) for p in processes]
    runs: list[dict[str, Any]] = []
    try:
        for round_no in range(rounds):
            for index, case in enumerate(cases):
                shift = (round_no + index) % len(sessions)
                for session in sessions[shift:] + sessions[:shift]:
                    if not session.process.alive():
                        raise RuntimeError(
                            f"{session.process.spec.name} died (exit "
                            f"{session.process.proc.returncode}):\n"
                            f"{session.process.log_tail()}"
                        )
                    run = await one_run(
                        session,
                        case,
                        round_no,
                        duration,
                        tag,
                        quiet_wait,
                        channels,
                        probe_ms,
                        listen,
                    )
                    _progress(run, rounds)
                    runs.append(run)
    finally:
        for session in sessions:
            await session.channel.close()
    return runs


# ---------------------------------------------------------------------- the report

REFERENCES = ("memory", "baseline")  # the yardsticks; every other server is measured by them


def _lag_medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Over rounds: the read-your-writes lag percentiles' medians (max: the max), and each
    projection's lag in ms likewise (unseen: summed). None for a server not probed."""
    out: dict[str, Any] = {
        "read_your_writes": None,
        "projection_lag_ms": None,
        "projection_lag_errors": [],
    }
    probed = [r["read_your_writes"] for r in runs if r.get("read_your_writes")]
    if probed:
        out["read_your_writes"] = {
            "probes": sum(p["probes"] for p in probed),
            "errors": sum(sum(p["errors"].values()) for p in probed),
            **{
                k: float(statistics.median(p[k] for p in probed))
                for k in ("p50_ms", "p90_ms", "p99_ms", "rpc_p50_ms", "ack_age_p50_ms")
            },
            "max_ms": max(p["max_ms"] for p in probed),
        }
    tracked = [r["projection_lag"] for r in runs if r.get("projection_lag")]
    if tracked:
        names = sorted({n for t in tracked for n in t["ms"]})
        out["projection_lag_ms"] = {
            name: {
                **{
                    k: float(statistics.median(t["ms"][name][k] for t in tracked))
                    for k in ("p50", "p90", "p99")
                },
                "max": max(t["ms"][name]["max"] for t in tracked),
                "unseen": sum(t["ms"][name]["unseen"] for t in tracked),
            }
            for name in names
            if all(name in t["ms"] for t in tracked)
        }
        out["projection_lag_errors"] = [t["error"] for t in tracked if t["error"]]
    return out


def summarise(
    runs: list[dict[str, Any]], cases: Sequence[Case], servers: Sequence[str]
) -> list[dict[str, Any]]:
    """Per case and server: medians over rounds (each metric on its own), errors summed."""
    rows = []
    for case in cases:
        for server in servers:
            mine = [r for r in runs if r["case"] == case.name and r["server"] == server]
            if not mine:
                continue
            errors: dict[str, int] = {}
            for r in mine:
                for code, n in r["errors"].items():
                    errors[code] = errors.get(code, 0) + n

            def med(key: str, runs_: list[dict[str, Any]] = mine) -> float:
                return float(statistics.median(r[key] for r in runs_))

            def med_cpu(key: str, runs_: list[dict[str, Any]] = mine) -> float:
                return float(statistics.median(r["cpu"][key] for r in runs_))

            rows.append(
                {
                    "case": case.name,
                    "server": server,
                    "rounds": len(mine),
                    "calls": sum(r["calls"] for r in mine),
                    "throughput": med("throughput"),
                    "commands_per_s": med("commands_per_s"),
                    "throughput_min": min(r["throughput"] for r in mine),
                    "throughput_max": max(r["throughput"] for r in mine),
                    "p50_ms": med("p50_ms"),
                    "p90_ms": med("p90_ms"),
                    "p99_ms": med("p99_ms"),
                    "max_ms": max(r["max_ms"] for r in mine),
                    "errors": errors,
                    "error_count": sum(errors.values()),
                    "settle_s": med("settle_s"),
                    "server_ms_per_call": med_cpu("server_ms_per_call"),
                    "children_ms_per_call": med_cpu("children_ms_per_call"),
                    "postgres_ms_per_call": med_cpu("postgres_ms_per_call"),
                    "client_ms_per_call": med_cpu("client_ms_per_call"),
                    "server_cores": med_cpu("server_cores"),
                    "postgres_cores": med_cpu("postgres_cores"),
                    "client_cores": med_cpu("client_cores"),
                    "children_cores": med_cpu("children_cores"),
                    "foreign_cores": med_cpu("foreign_cores"),
                    **_lag_medians(mine),
                }
            )
    return rows


def _over(a: float, b: float) -> float | None:
    return a / b if b else None


def ratios(rows: list[dict[str, Any]], cases: Sequence[Case]) -> list[dict[str, Any]]:
    """Per case and measured server (every one but the references): its calls/s, p50 and p99
    over the in-memory server's and the baseline's, and issue 14's goals for the case with
    whether each is met (None: the reference it needs was not run). The keys say "tally"
    for whichever server is measured (`server`)."""
    out = []
    by = {(r["case"], r["server"]): r for r in rows}
    subjects = list(dict.fromkeys(r["server"] for r in rows if r["server"] not in REFERENCES))
    for case in cases:
        for server in subjects:
            subject = by.get((case.name, server))
            if subject is None:
                continue
            entry: dict[str, Any] = {"case": case.name, "server": server}
            for other in REFERENCES:
                o = by.get((case.name, other))
                if o is None:
                    continue
                for metric, key in (
                    ("throughput", "throughput"),
                    ("p50_ms", "p50"),
                    ("p99_ms", "p99"),
                ):
                    entry[f"{key}_tally_over_{other}"] = _over(subject[metric], o[metric])
            if len(entry) == 2:
                continue
            goals = []
            for goal in goals_for(case):
                key = {"throughput": "throughput", "p50_ms": "p50", "p99_ms": "p99"}[goal.metric]
                value = entry.get(f"{key}_tally_over_{goal.against}")
                goals.append(
                    {
                        "goal": goal.text(),
                        "metric": goal.metric,
                        "against": goal.against,
                        "bound": goal.bound,
                        "ratio": value,
                        "met": goal.met(value),
                    }
                )
            entry["goals"] = goals
            out.append(entry)
    return out


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _fmt_met(met: bool | None) -> str:
    return "-" if met is None else "yes" if met else "NO"


def lag_goal(case: str, callers: int | None, lag: dict[str, Any]) -> bool | None:
    """Issue 14's live projection lag goal (p99 < 50 ms) for a 64-caller case, else None."""
    if callers != LAG_GOAL_CALLERS or case.startswith("batch-"):
        return None
    return bool(lag["p99_ms"] < LAG_GOAL_MS)


def render(
    rows: list[dict[str, Any]],
    ratio_rows: list[dict[str, Any]],
    rounds: int,
    callers: dict[str, int] | None = None,
) -> str:
    """The text report: one row per case and server, the ratios against issue 14's goals,
    and the lag of the servers with projections. `callers` (case -> callers) names the
    64-caller cases the lag goal is for (without it, the lag table has no goal column)."""
    width = max([9, *(len(r["server"]) for r in rows)])
    head = (
        f"{'case':<14} {'server':<{width}} {'calls/s':>9} {'cmds/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6}  {'cpu ms/call: server':>19} {'children':>8} "
        f"{'postgres':>8} {'client':>6} {'other cores':>11}"
    )
    lines = [f"medians of {rounds} round(s)", head, "-" * len(head)]
    previous = ""
    for r in rows:
        case = r["case"] if r["case"] != previous else ""
        previous = r["case"]
        lines.append(
            f"{case:<14} {r['server']:<{width}} {r['throughput']:9.1f} "
            f"{r['commands_per_s']:9.0f} {r['p50_ms']:8.2f} "
            f"{r['p99_ms']:8.2f} {r['error_count']:6d}  {r['server_ms_per_call']:19.2f} "
            f"{r.get('children_ms_per_call', 0.0):8.2f} "
            f"{r['postgres_ms_per_call']:8.2f} {r['client_ms_per_call']:6.2f} "
            f"{r['foreign_cores']:11.2f}"
        )
    if ratio_rows:
        lines += ["", *render_ratios(ratio_rows)]
    lag_lines = render_lag(rows, callers)
    if lag_lines:
        lines += ["", *lag_lines]
    errors = [r for r in rows if r["error_count"]]
    for r in errors:
        lines.append(f"ERRORS {r['case']} {r['server']}: {r['errors']}")
    return "\n".join(lines)


def render_ratios(ratio_rows: list[dict[str, Any]]) -> list[str]:
    head = (
        f"{'case':<14} {'server':<9} {'calls/s /mem':>12} {'/base':>6} {'p50 /mem':>9} "
        f"{'/base':>6} {'p99 /mem':>9} {'/base':>6}  {'goal (issue 14)':<26} {'ratio':>6} met"
    )
    lines = ["the measured server over the in-memory server (/mem) and the baseline (/base)", head]
    lines.append("-" * len(head))
    for e in ratio_rows:
        cells = (
            f"{e['case']:<14} {e.get('server', 'tally'):<9} "
            f"{_fmt_ratio(e.get('throughput_tally_over_memory')):>12} "
            f"{_fmt_ratio(e.get('throughput_tally_over_baseline')):>6} "
            f"{_fmt_ratio(e.get('p50_tally_over_memory')):>9} "
            f"{_fmt_ratio(e.get('p50_tally_over_baseline')):>6} "
            f"{_fmt_ratio(e.get('p99_tally_over_memory')):>9} "
            f"{_fmt_ratio(e.get('p99_tally_over_baseline')):>6}"
        )
        goals = e.get("goals") or [{"goal": "-", "ratio": None, "met": None}]
        for i, g in enumerate(goals):
            prefix = cells if i == 0 else " " * len(cells)
            ratio = _fmt_ratio(g["ratio"]) if g["goal"] != "-" else ""
            met = _fmt_met(g["met"]) if g["goal"] != "-" else ""
            lines.append(f"{prefix}  {g['goal']:<26} {ratio:>6} {met}".rstrip())
    return lines


def _projection_names(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({n for r in rows for n in (r.get("projection_lag_ms") or {})})


def projection_lag_goal(case: str, callers: int | None, lags: dict[str, Any] | None) -> bool | None:
    """The same goal on the eager read model's own lag (no read's round trip in it)."""
    if not lags or LAG_GOAL_PROJECTION not in lags:
        return None
    return lag_goal(case, callers, {"p99_ms": lags[LAG_GOAL_PROJECTION]["p99"]})


def render_lag(rows: list[dict[str, Any]], callers: dict[str, int] | None) -> list[str]:
    lagged = [r for r in rows if r.get("read_your_writes") or r.get("projection_lag_ms")]
    if not lagged:
        return []
    names = _projection_names(lagged)
    head = (
        f"{'case':<14} {'server':<9} {'probes':>6} {'p50':>7} {'p90':>7} {'p99':>7} "
        f"{'max':>7} {'rpc p50':>7}  {'p99<50':>6}  "
        + " ".join(f"{n + ' p50/p99':>17}" for n in names)
        + f"  {LAG_GOAL_PROJECTION + ' p99<50':>13}"
    )
    lines = [
        "read-your-writes lag, ms (GetAccount min_position = the latest acknowledged position, "
        "every ~20 ms; reply - acknowledgement, the read's own round trip in it) and each read "
        "model's lag, ms (every reply until the batch covering it committed)",
        head,
        "-" * len(head),
    ]
    for r in lagged:
        rw = r.get("read_your_writes")
        wanted = (callers or {}).get(r["case"])
        if rw:
            goal = lag_goal(r["case"], wanted, rw)
            cells = (
                f"{rw['probes']:6d} {rw['p50_ms']:7.1f} {rw['p90_ms']:7.1f} {rw['p99_ms']:7.1f} "
                f"{rw['max_ms']:7.1f} {rw['rpc_p50_ms']:7.1f}  {_fmt_met(goal):>6}"
            )
        else:
            cells = f"{'-':>6} {'-':>7} {'-':>7} {'-':>7} {'-':>7} {'-':>7}  {'-':>6}"
        lags = r.get("projection_lag_ms") or {}
        tracked = " ".join(
            f"{lags[n]['p50']:>8.1f}/{lags[n]['p99']:<8.1f}" if n in lags else f"{'-':>17}"
            for n in names
        )
        met = _fmt_met(projection_lag_goal(r["case"], wanted, lags))
        lines.append(f"{r['case']:<14} {r['server']:<9} {cells}  {tracked}  {met:>13}".rstrip())
    return lines


def machine() -> dict[str, Any]:
    def version(package: str) -> str:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as v

        try:
            return v(package)
        except PackageNotFoundError:
            return "?"

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        # Tracked files changed since the commit: the server measured is not that commit.
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                check=False,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    # A snapshot outside git (e.g. `git archive` of the commit under test) names its commit.
    commit = commit or os.environ.get("TALLY_BENCH_COMMIT", "?")
    try:
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        loadavg = []
    return {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": postgres_version(),
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "eventsourcing": version("eventsourcing"),
        "psycopg": version("psycopg"),
        "commit": commit,
        "dirty": dirty,
        "loadavg_at_start": loadavg,
    }


# ---------------------------------------------------------------------- the command


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="~1 s per case, 1 round (CI)")
    which.add_argument(
        "--smoke",
        action="store_true",
        help="0.5 s per case, 3 small cases, 1 round (the test suite)",
    )
    parser.add_argument(
        "--json", type=Path, help="write results here (default benchmarks/results/<timestamp>.json)"
    )
    parser.add_argument("--duration", type=float, help="seconds per case per server")
    parser.add_argument("--rounds", type=int, help="rounds (medians are reported)")
    parser.add_argument(
        "--cases", help=f"comma-separated case names (of: {', '.join(c.name for c in CASES)})"
    )
    parser.add_argument(
        "--servers",
        help="comma-separated servers (of: "
        + ", ".join(s.name for s in [*SERVERS, *EXTRA_SERVERS])
        + "; default: all but tally-inline and tally-one-projector)",
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=1,
        help="connections the callers are spread over (default 1; a server of several "
        "processes sharing a port, TALLY_PROCESSES=2, needs several)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on a shared machine: before each run wait up to SECONDS until "
        "other processes leave the cores idle (default 0: don't wait)",
    )
    parser.add_argument(
        "--lag-probe-ms",
        type=float,
        nargs="?",
        const=PROBE_INTERVAL_MS,
        default=0.0,
        metavar="MS",
        help="servers with projections: probe read-your-writes every MS during every run "
        f"(MS {PROBE_INTERVAL_MS:g} if not given; default: no probe, as its calls would load "
        "those servers only)",
    )
    parser.add_argument(
        "--no-projection-lag",
        action="store_true",
        help="servers with projections: do not listen to the read models' batches during "
        "the runs (their lag, ms from each reply until the batch covering it committed)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    args = parser.parse_args(argv)
    if args.duration is not None and not 0.1 <= args.duration <= 600:
        parser.error("--duration must be between 0.1 and 600 seconds")
    if not 0 <= args.quiet_wait <= 600:
        parser.error("--quiet-wait must be between 0 and 600 seconds")
    if args.rounds is not None and not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    if not 0 <= args.lag_probe_ms <= 10_000:
        parser.error("--lag-probe-ms must be between 0 and 10000")
    return args


def _select(
    names: str | None, items: Sequence[Any], what: str, extra: Sequence[Any] = ()
) -> list[Any]:
    if not names:
        return list(items)
    known = {i.name: i for i in [*items, *extra]}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[n] for n in wanted]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    all_cases = CASES if args.cases else mode.cases
    cases: list[Case] = _select(args.cases, all_cases, "cases")
    specs: list[ServerSpec] = _select(args.servers, SERVERS, "servers", EXTRA_SERVERS)
    duration = args.duration if args.duration is not None else mode.duration
    rounds = args.rounds if args.rounds is not None else mode.rounds
    tag = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:4]
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)

    info = machine()
    print(
        f"Tally benchmark ({mode.name}: {duration:g} s x {len(cases)} cases x "
        f"{len(specs)} servers x {rounds} round(s)); {info['nproc']} cores, "
        f"PostgreSQL {info['postgresql']}",
        file=sys.stderr,
        flush=True,
    )

    log_dir = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    databases: list[str] = []
    processes: list[ServerProcess] = []
    failed = True
    started = time.time()
    try:
        for spec in specs:
            url = None
            if spec.database:
                name = f"tally_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}_{spec.name}"
                url = create_database(name)
                databases.append(name)
            processes.append(ServerProcess(spec, url, log_dir))
        runs = asyncio.run(
            benchmark(
                processes,
                cases,
                rounds,
                duration,
                tag,
                args.quiet_wait,
                args.channels,
                args.lag_probe_ms,
                not args.no_projection_lag,
            )
        )
        exits = {p.spec.name: p.returncode_if_dead() for p in processes}
        failed = False
    except KeyboardInterrupt:
        print("interrupted: stopping servers, dropping databases", file=sys.stderr)
        failed = False
        return 130
    finally:
        for p in processes:
            code = p.stop()
            if code not in (0, None, -signal.SIGTERM):
                failed = True
                print(
                    f"{p.spec.name} exited with {code}; log tail:\n{p.log_tail()}", file=sys.stderr
                )
        for name in databases:
            try:
                drop_database(name)
            except psycopg.Error as e:
                print(f"could not drop database {name}: {e}", file=sys.stderr)
        if failed or args.keep_logs:
            print(f"server logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)

    rows = summarise(runs, cases, [s.name for s in specs])
    ratio_rows = ratios(rows, cases)
    print(render(rows, ratio_rows, rounds, {c.name: c.callers for c in cases}))
    report = {
        "tag": tag,
        "mode": mode.name,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "duration_s": duration,
        "rounds": rounds,
        "quiet_wait_s": args.quiet_wait,
        "channels": args.channels,
        "lag_probe_ms": args.lag_probe_ms,
        "projection_lag_listened": not args.no_projection_lag,
        "tally_processes": int(os.environ.get("TALLY_PROCESSES", "1")),
        "machine": info,
        "cases": [c.describe() for c in cases],
        "servers": [s.name for s in specs],
        "server_exits_during_run": exits,
        "summary": rows,
        "ratios": ratio_rows,
        "runs": runs,
    }
    path = args.json or RESULTS / f"{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
