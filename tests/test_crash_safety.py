"""Crash safety with real processes: `kill -9` of a `ledger serve` under a load of concurrent
commands loses nothing acknowledged and applies nothing twice, and a retry on another process
gets the original answer; a projection killed while it catches up with a backlog resumes
without loss or double count (its read models equal a rebuild from the log)."""

from __future__ import annotations

import subprocess
import time
from collections import Counter

import grpc
import psycopg

from ledger.application import commands as c
from ledger.domain.program import ProgramSettings
from ledger.infrastructure.database import parse_database_url
from ledger.runtime import Tally
from projections import REGISTERED
from tests.load import (
    LEDGER,
    Command,
    CommandLoad,
    ServerProcess,
    balance,
    command_events,
    log_head,
    logged_requests,
    retry,
    server_env,
    serving,
    set_up_members,
    transaction_id,
    wait_for_orphaned_statements,
)
from tests.support import scratch_postgres

PROGRAM = "crash"
OPENING = 100_000  # every member's points before the load: no Redeem of the load is refused
MEMBERS = [f"m{i}" for i in range(12)]


def test_kill_9_under_load_loses_no_acknowledged_command_and_applies_none_twice() -> None:
    with scratch_postgres() as url, serving(url) as other:
        victim = ServerProcess(url)
        try:
            victim.wait_serving()
            set_up_members(victim.target, PROGRAM, MEMBERS, OPENING)
            load = CommandLoad([victim.target], PROGRAM, MEMBERS, threads=8).start()
            load.wait_acknowledged(200)
            victim.kill()
            load.join()  # each thread stops at its first failed call
        finally:
            victim.close()
        # An in-flight group commit may still be committing: read the database after it.
        wait_for_orphaned_statements(url)
        acknowledged = dict(load.acknowledged)
        unanswered = [cmd for rid, cmd in load.sent.items() if rid not in acknowledged]
        assert len(unanswered) == load.threads  # each thread had one call in flight
        assert set(load.failed.values()) == {grpc.StatusCode.UNAVAILABLE}, load.failed

        # Every acknowledged command is recorded once, with exactly one event.
        records = logged_requests(url, PROGRAM)
        events = command_events(other.target, PROGRAM)
        assert all(records[rid] == 1 for rid in acknowledged)
        assert all(events[transaction_id(PROGRAM, rid)] == 1 for rid in acknowledged)
        assert max(events.values()) == 1
        in_log = {rid for rid in load.sent if records[rid]}
        assert set(acknowledged) <= in_log
        # The balances are what the log holds: the acknowledged, and any in-flight command
        # that committed before the kill (its answer never left the process).
        head = log_head(url)
        assert _balances(other.target, head) == _expected(load.sent, in_log)

        # Retried on ANOTHER process with the same request_ids: the acknowledged get their
        # original answers, the unanswered are applied now or answered from their record.
        again = retry(other.target, PROGRAM, list(load.sent.values()))
        for rid, response in acknowledged.items():
            assert again[rid] == response, rid
        records = logged_requests(url, PROGRAM)
        events = command_events(other.target, PROGRAM)
        assert all(records[rid] == 1 for rid in load.sent)
        assert all(events[transaction_id(PROGRAM, rid)] == 1 for rid in load.sent)
        assert max(events.values()) == 1
        expected = _expected(load.sent, set(load.sent))
        assert _balances(other.target, log_head(url)) == expected

        # And a restarted server on the same database sees the same.
        with serving(url) as restarted:
            assert _balances(restarted.target, log_head(url)) == expected


def _expected(sent: dict[str, Command], applied: set[str]) -> dict[str, int]:
    totals = dict.fromkeys(MEMBERS, OPENING)
    for rid in applied:
        totals[sent[rid].member] += sent[rid].delta
    return totals


def _balances(target: str, min_position: int) -> dict[str, int]:
    return {m: balance(target, PROGRAM, m, min_position) for m in MEMBERS}


# ---------------------------------------------------------------------- a projection killed


BACKLOG_MEMBERS = 40
BACKLOG_ROUNDS = 100  # x 40 members: 4,000 commands, written while no projection runs


def _write_backlog(url: str) -> dict[str, int]:
    """Commands written by a Tally whose projections never run: the log grows, the read
    models stay at zero. Returns each member's balance."""
    tally = Tally.from_url(url)
    tally.writer.start()
    try:
        tally.app.create_program(
            c.CreateProgram(
                program_id=PROGRAM, request_id="setup", settings=ProgramSettings("P", "EUR")
            )
        )
        members = [f"b{i}" for i in range(BACKLOG_MEMBERS)]
        tally.execute(
            [c.EnrollMember(program_id=PROGRAM, member_id=m, request_id=m) for m in members]
        )
        balances = Counter[str]()
        for round_ in range(BACKLOG_ROUNDS):
            batch: list[c.AccountCommand] = []
            for m in members:
                if round_ % 4 == 3:
                    batch.append(
                        c.RedeemPoints(
                            program_id=PROGRAM, member_id=m, points=5, request_id=f"{m}-{round_}"
                        )
                    )
                    balances[m] -= 5
                else:
                    batch.append(
                        c.EarnPoints(
                            program_id=PROGRAM,
                            member_id=m,
                            points=10 + round_ % 7,
                            request_id=f"{m}-{round_}",
                        )
                    )
                    balances[m] += 10 + round_ % 7
            answers = tally.execute(batch)
            assert not [a for a in answers if isinstance(a, Exception)], answers
        return dict(balances)
    finally:
        tally.close()


def _positions(url: str) -> dict[str, int]:
    with psycopg.connect(parse_database_url(url).conninfo()) as conn:
        rows = conn.execute("SELECT name, position FROM projection_tracking").fetchall()
    return {str(name): int(position) for name, position in rows}


def test_projection_killed_while_catching_up_resumes_without_loss_or_double_count() -> None:
    with scratch_postgres() as url:
        balances = _write_backlog(url)
        head = log_head(url)
        assert set(_positions(url).values()) <= {0}  # nothing projected yet

        # Inline: the kill -9 hits the process whose threads write the read models (a killed
        # `ledger project` child: tests/test_projector_process.py).
        server = ServerProcess(url, "--projections", "inline")
        try:
            # Kill -9 the moment a projection has committed part of the backlog.
            deadline = time.monotonic() + 120
            while not any(0 < p < head for p in _positions(url).values()):
                assert server.process.poll() is None, server.stderr()
                assert time.monotonic() < deadline, "no projection started catching up"
                time.sleep(0.005)
            server.kill()
        finally:
            server.close()
        at_kill = _positions(url)
        assert any(0 < p < head for p in at_kill.values()), at_kill

        with serving(url) as restarted:
            deadline = time.monotonic() + 120
            while set(_positions(url).values()) != {head}:
                assert time.monotonic() < deadline, _positions(url)
                time.sleep(0.1)
            assert {m: balance(restarted.target, PROGRAM, m, head) for m in balances} == balances
            assert restarted.terminate(timeout=60) == 0

        assert set(_positions(url)) == {p.name for p in REGISTERED}
        # Every read model equals a rebuild from the log (row by row).
        replay = subprocess.run(
            [LEDGER, "audit", "replay", "--database", url],
            capture_output=True,
            text=True,
            timeout=120,
            env=server_env(),
            check=False,
        )
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert f"log replayed to {head}" in replay.stdout, replay.stdout
