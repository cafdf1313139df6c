"""Several `ledger serve` processes on one PostgreSQL database (each on its own port): a
command is correct from any of them, even when all of them hit the same account at once;
each projection has exactly one writer (its advisory lock), taken over by another process
when the holder is killed; `min_position` works on every process. The race runs each server
with its own `ledger project` child (the default on PostgreSQL: one of the three children
writes, the others follow); the takeover is between the servers themselves
(`--projections inline`); tests/test_projector_process.py kills a projections process."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import grpc
import psycopg

from ledger.infrastructure.database import parse_database_url
from projections import REGISTERED
from tests.load import (
    ServerProcess,
    balance,
    earn_request,
    ledger_stub,
    log_head,
    redeem_request,
    set_up_members,
)
from tests.support import refusal, scratch_postgres

PROGRAM = "shared"
MEMBER = "everyone"
# The key each projection's runner locks (projections/runner.py _WriterLock).
LOCK_KEYS = {zlib.crc32(f"tally-projection:{p.name}".encode()): p.name for p in REGISTERED}


@contextmanager
def three_servers(*options: str) -> Iterator[tuple[str, list[ServerProcess]]]:
    """Three servers on one scratch database. The first starts alone, so it (or its
    projections process) holds every projection's lock before the others arrive."""
    with scratch_postgres() as database, ExitStack() as stack:
        # A smaller event-store pool (8 by default): three servers and their projections
        # processes stay well inside a max_connections of 100 shared with other tests.
        url = f"{database}?pool_size=4"
        first = ServerProcess(url, *options)
        stack.callback(first.close)
        first.wait_serving()
        others = [ServerProcess(url, *options), ServerProcess(url, *options)]
        for server in others:
            stack.callback(server.close)
        for server in others:
            server.wait_serving()
        yield url, [first, *others]


def lock_holders(url: str) -> dict[str, list[int | None]]:
    """Projection -> the OS pids of the processes whose connections hold its advisory lock
    (None: no live process, a killed one whose session PostgreSQL has not ended yet)."""
    with psycopg.connect(parse_database_url(url).conninfo()) as conn:
        rows = conn.execute(
            "SELECT l.objid, a.client_port FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    holders: dict[str, list[int | None]] = {}
    for key, client_port in rows:
        if int(key) in LOCK_KEYS:
            holders.setdefault(LOCK_KEYS[int(key)], []).append(_owner(int(client_port)))
    return holders


def _owner(client_port: int) -> int | None:
    """The pid of the local process whose socket has this port (ss -p), or None if none has
    it. Asked a few times: a socket being set up or torn down may show no process for a
    moment, and the socket of a process just killed stays in pg_locks' view until
    PostgreSQL sees the connection gone."""
    for _ in range(20):
        listing = subprocess.run(
            ["ss", "-Htnp", f"sport = :{client_port}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        if found := re.search(r"pid=(\d+)", listing):
            return int(found.group(1))
        time.sleep(0.1)
    return None


def _race(targets: list[str], calls_per_thread: int, kind: str, points: int) -> list[object]:
    """Three threads per server, all on the one account at once: each answer, or the
    refusal's (status, reason)."""
    answers: list[object] = []
    lock = threading.Lock()
    start = threading.Barrier(3 * len(targets))

    def run(target: str, index: int) -> None:
        channel, stub = ledger_stub(target)
        with channel:
            start.wait(timeout=60)
            for n in range(calls_per_thread):
                rid = f"{kind}-{target}-{index}-{n}"
                answer = _call(stub, kind, points, rid)
                with lock:
                    answers.append(answer)

    threads = [threading.Thread(target=run, args=(t, i)) for t in targets for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    return answers


def _call(stub: Any, kind: str, points: int, rid: str) -> object:
    """One command, not retried: a write conflict between processes is the server's to
    re-run, never the client's."""
    try:
        if kind == "redeem":
            return stub.Redeem(redeem_request(PROGRAM, MEMBER, points, rid), timeout=60)
        return stub.Earn(earn_request(PROGRAM, MEMBER, points, rid), timeout=60)
    except grpc.RpcError as e:
        return (e.code(), refusal(e).reason)


def test_several_processes_share_one_database_correctly() -> None:
    with three_servers() as (url, servers):
        targets = [s.target for s in servers]
        set_up_members(targets[0], PROGRAM, [MEMBER], points=1000)

        # min_position on every process: written on one, read at once on each other.
        for writer in targets:
            channel, stub = ledger_stub(writer)
            with channel:
                earned = stub.Earn(earn_request(PROGRAM, MEMBER, 10, f"ryw-{writer}"), timeout=30)
            for reader in targets:
                assert balance(reader, PROGRAM, MEMBER, earned.position) == (
                    earned.account.points_available
                )
        opening = 1000 + 10 * len(targets)

        # The same account from all processes at once: every earn applies, exactly once.
        earns = _race(targets, calls_per_thread=15, kind="earn", points=7)
        assert all(not isinstance(a, tuple) for a in earns), [
            a for a in earns if isinstance(a, tuple)
        ]
        after_earns = opening + 7 * len(earns)
        for target in targets:
            assert balance(target, PROGRAM, MEMBER, log_head(url)) == after_earns

        # Redeem races: more asked for than there is; no point is spent twice.
        redeems = _race(targets, calls_per_thread=15, kind="redeem", points=20)
        granted = [a for a in redeems if not isinstance(a, tuple)]
        refused = [a for a in redeems if isinstance(a, tuple)]
        assert len(granted) == after_earns // 20
        assert set(refused) == {(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS")}
        for target in targets:
            assert balance(target, PROGRAM, MEMBER, log_head(url)) == after_earns % 20


def test_one_writer_per_projection_and_a_takeover_when_it_is_killed() -> None:
    with three_servers("--projections", "inline") as (url, servers):
        first, *others = servers
        holders = lock_holders(url)
        # Every projection has exactly one writer: the first process, which started alone.
        assert holders == {name: [first.pid] for name in LOCK_KEYS.values()}

        first.kill()
        survivors = {s.pid for s in others}
        deadline = time.monotonic() + 60
        while True:
            holders = lock_holders(url)
            if set(holders) == set(LOCK_KEYS.values()) and all(
                len(pids) == 1 and pids[0] in survivors for pids in holders.values()
            ):
                break
            assert time.monotonic() < deadline, f"no takeover: {holders}"
            time.sleep(0.1)

        # The new writers project: written on one survivor, read with min_position on both.
        set_up_members(others[0].target, PROGRAM, [MEMBER], points=500)
        head = log_head(url)
        for server in others:
            assert balance(server.target, PROGRAM, MEMBER, head) == 500
