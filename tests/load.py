"""Real `ledger serve` processes, a load of concurrent commands against them, and what the
log holds afterwards: the helpers of the process tests (crash safety, several processes,
resource limits, graceful shutdown)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.domain.ids import request_id_key
from ledger.infrastructure.database import parse_database_url
from ledger.v1 import audit_pb2, audit_pb2_grpc
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc

LEDGER = str(Path(sys.executable).parent / "ledger")
START_LIMIT_SECONDS = 90.0
COMMAND_EVENTS = {"earn": "PointsEarned", "redeem": "PointsRedeemed"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("TALLY_LISTEN", "TALLY_DATABASE_URL", "TALLY_PROCESSES"):
        env.pop(name, None)
    return env


class ServerProcess:
    """One `ledger serve` subprocess on 127.0.0.1:<free port>. Its stderr goes to a file (a
    pipe nobody reads would block a chatty server)."""

    def __init__(self, database_url: str, *options: str, port: int = 0) -> None:
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="tally-serve-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            [LEDGER, "serve", "--listen", self.target, "--database", database_url, *options],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=server_env(),
        )
        self.pid = self.process.pid
        self._stderr = ""

    def wait_serving(self, limit: float = START_LIMIT_SECONDS) -> None:
        deadline = time.monotonic() + limit
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"ledger serve exited early ({self.process.returncode}): {self.stderr()}"
                )
            try:
                if health(self.target) == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as e:
                last = e.code()
            time.sleep(0.1)
        raise AssertionError(f"ledger serve never became SERVING ({last}): {self.stderr()}")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float) -> int:
        """SIGTERM, then wait (at most `timeout` seconds) for the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def rss_kib(self) -> int:
        """The resident set of the server process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stderr(self) -> str:
        if self._log.closed:
            return self._stderr
        return Path(self._log.name).read_text(errors="replace")

    def close(self) -> None:
        """Kill it if it still runs; its stderr stays readable."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        if not self._log.closed:
            self._stderr = self.stderr()
            self._log.close()


@contextmanager
def serving(database_url: str, *options: str) -> Iterator[ServerProcess]:
    """A started, SERVING `ledger serve`, killed afterwards if the test left it running."""
    server = ServerProcess(database_url, *options)
    try:
        server.wait_serving()
        yield server
    finally:
        server.close()


def health(target: str, timeout: float = 1.0) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout).status)


def ledger_stub(target: str) -> tuple[grpc.Channel, pb_grpc.LedgerServiceStub]:
    channel = grpc.insecure_channel(target)
    return channel, pb_grpc.LedgerServiceStub(channel)


def set_up_members(target: str, program: str, members: list[str], points: int) -> int:
    """A programme, its members, each with `points` to spend; the log position at the end."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.LedgerServiceStub(channel)
        stub.CreateProgram(
            pb.CreateProgramRequest(
                program_id=program, display_name="Load", currency="EUR", request_id="setup"
            ),
            timeout=30,
        )
        position = 0
        for member in members:
            stub.EnrollMember(
                pb.EnrollMemberRequest(
                    program_id=program, member_id=member, request_id=f"enroll-{member}"
                ),
                timeout=30,
            )
            if points:
                earned = stub.Earn(
                    earn_request(program, member, points, f"opening-{member}"), timeout=30
                )
                position = max(position, earned.position)
        return position


def earn_request(program: str, member: str, points: int, request_id: str) -> pb.EarnRequest:
    return pb.EarnRequest(
        program_id=program,
        member_id=member,
        points=points,
        store_id="store-1",
        request_id=request_id,
    )


def redeem_request(program: str, member: str, points: int, request_id: str) -> pb.RedeemRequest:
    return pb.RedeemRequest(
        program_id=program,
        member_id=member,
        points=points,
        store_id="store-1",
        request_id=request_id,
    )


@dataclass(frozen=True)
class Command:
    kind: str  # "earn" or "redeem"
    member: str
    points: int
    request_id: str

    def request(self, program: str) -> Any:
        build = earn_request if self.kind == "earn" else redeem_request
        return build(program, self.member, self.points, self.request_id)

    @property
    def delta(self) -> int:
        return self.points if self.kind == "earn" else -self.points


@dataclass
class CommandLoad:
    """Threads sending Earn and Redeem (every third) with unique request_ids to `targets`
    (round robin by thread), recording what was sent, what was acknowledged (with its
    response) and how the rest failed. A thread stops at its first failure, or at stop()."""

    targets: list[str]
    program: str
    members: list[str]
    threads: int = 8
    prefix: str = "load"
    sent: dict[str, Command] = field(default_factory=dict)
    acknowledged: dict[str, Any] = field(default_factory=dict)
    acknowledged_at: dict[str, float] = field(default_factory=dict)
    failed: dict[str, grpc.StatusCode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)
        ]

    def start(self) -> CommandLoad:
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def join(self, timeout: float = 60) -> None:
        for worker in self._workers:
            worker.join(timeout)
            assert not worker.is_alive(), "a load thread hung"

    def wait_acknowledged(self, count: int, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, f"only {len(self.acknowledged)} acknowledged"
            assert any(w.is_alive() for w in self._workers), f"load ended: {self.failed}"
            time.sleep(0.01)

    def _run(self, index: int) -> None:
        target = self.targets[index % len(self.targets)]
        channel, stub = ledger_stub(target)
        try:
            n = 0
            while not self._stop.is_set():
                n += 1
                member = self.members[(index + n) % len(self.members)]
                kind = "redeem" if n % 3 == 0 else "earn"
                command = Command(kind, member, 1 + n % 7, f"{self.prefix}-{index}-{n}")
                with self._lock:
                    self.sent[command.request_id] = command
                call = stub.Redeem if kind == "redeem" else stub.Earn
                try:
                    response = call(command.request(self.program), timeout=30)
                except grpc.RpcError as e:
                    with self._lock:
                        self.failed[command.request_id] = e.code()
                    return
                with self._lock:
                    self.acknowledged[command.request_id] = response
                    self.acknowledged_at[command.request_id] = time.monotonic()
        finally:
            channel.close()


def retry(target: str, program: str, commands: list[Command]) -> dict[str, Any]:
    """Send each command again, same request_id, to `target`: request_id -> response."""
    channel, stub = ledger_stub(target)
    with channel:
        return {
            c.request_id: (stub.Redeem if c.kind == "redeem" else stub.Earn)(
                c.request(program), timeout=30
            )
            for c in commands
        }


def wait_for_orphaned_statements(database_url: str, limit: float = 30) -> None:
    """After a `kill -9` of a server: until no backend of the database is still running a
    statement. PostgreSQL finishes the statement of a client that died in the middle of it
    (the group commit's insert, COMMIT included) and only then notices it is gone, so an
    in-flight command may commit after its server died; what the database holds is only
    final once those statements are done."""
    deadline = time.monotonic() + limit
    with psycopg.connect(parse_database_url(database_url).conninfo(), autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'active' AND pid <> pg_backend_pid()"
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            assert time.monotonic() < deadline, "a statement of the dead server still runs"
            time.sleep(0.02)


def logged_requests(database_url: str, program: str) -> Counter[str]:
    """How many idempotency records each request_id of `program` has in the database."""
    with psycopg.connect(parse_database_url(database_url).conninfo()) as conn:
        rows = conn.execute(
            "SELECT request_id FROM ledger_requests WHERE program_id = %s", (program,)
        ).fetchall()
    return Counter(str(r[0]) for r in rows)


def command_events(target: str, program: str) -> Counter[str]:
    """How many PointsEarned / PointsRedeemed events the log holds per transaction id, as
    the AuditService streams the log."""
    with grpc.insecure_channel(target) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        stream = stub.StreamEvents(audit_pb2.StreamEventsRequest(program_id=program), timeout=60)
        return Counter(e.transaction_id for e in stream if e.event_type in COMMAND_EVENTS.values())


def transaction_id(program: str, request_id: str) -> str:
    return str(request_id_key(program, request_id))


def log_head(database_url: str) -> int:
    with psycopg.connect(parse_database_url(database_url).conninfo()) as conn:
        row = conn.execute("SELECT COALESCE(MAX(notification_id), 0) FROM ledger_events").fetchone()
    return int(row[0]) if row else 0


def balance(target: str, program: str, member: str, min_position: int) -> int:
    channel, stub = ledger_stub(target)
    with channel:
        response = stub.GetAccount(
            pb.GetAccountRequest(program_id=program, member_id=member, min_position=min_position),
            timeout=60,
        )
    return int(response.account.points_available)
