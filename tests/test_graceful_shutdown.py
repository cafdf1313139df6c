"""SIGTERM with calls in flight: the server stops accepting, finishes and answers every
command it took, exits 0 within its grace period plus a bound, and loses nothing it
acknowledged. The same for `ledger serve --processes 2`: both children exit 0."""

from __future__ import annotations

import signal
import time

import grpc

from ledger.v1 import ledger_pb2 as pb
from tests.load import (
    CommandLoad,
    ServerProcess,
    balance,
    command_events,
    ledger_stub,
    log_head,
    logged_requests,
    retry,
    serving,
    set_up_members,
    transaction_id,
)
from tests.support import scratch_postgres

PROGRAM = "shutdown"
MEMBERS = [f"m{i}" for i in range(10)]
OPENING = 100_000
GRACE = 4.0
# Beyond the grace period: stopping the writers, projections and sweeper, and the exit.
EXIT_BOUND = 20.0


# How a call ends that the server never handed to its handler: still queued inside gRPC
# core when the shutdown began (core cancels those), or sent after the port closed.
NOT_TAKEN = {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}


def _assert_nothing_lost(url: str, target: str, load: CommandLoad, signalled: float) -> None:
    """Every command the server answered is in the log once; none that failed is there
    (it was never taken, so a retry with its request_id is safe, and applies it once); and
    some answers came after the SIGTERM: calls in flight were finished, not dropped."""
    assert load.acknowledged, "the load never ran"
    assert set(load.failed.values()) <= NOT_TAKEN, load.failed
    assert any(at > signalled for at in load.acknowledged_at.values()), "nothing was in flight"
    records = logged_requests(url, PROGRAM)
    assert {rid for rid in load.sent if records[rid]} == set(load.acknowledged)
    retry(target, PROGRAM, [load.sent[rid] for rid in load.failed])
    records = logged_requests(url, PROGRAM)
    events = command_events(target, PROGRAM)
    assert all(records[rid] == 1 for rid in load.sent)
    assert all(events[transaction_id(PROGRAM, rid)] == 1 for rid in load.sent)
    expected = dict.fromkeys(MEMBERS, OPENING)
    for command in load.sent.values():
        expected[command.member] += command.delta
    head = log_head(url)
    assert {m: balance(target, PROGRAM, m, head) for m in MEMBERS} == expected


def test_sigterm_finishes_in_flight_commands_and_exits_0() -> None:
    with scratch_postgres() as url:
        server = ServerProcess(url, "--grace", str(GRACE))
        try:
            server.wait_serving()
            set_up_members(server.target, PROGRAM, MEMBERS, OPENING)
            load = CommandLoad([server.target], PROGRAM, MEMBERS, threads=16).start()
            load.wait_acknowledged(100)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            load.join()  # each thread ends at its first refused call
            code = server.process.wait(timeout=GRACE + EXIT_BOUND)
        finally:
            server.close()
        assert code == 0
        assert '"stopped"' in server.stderr()

        with serving(url) as restarted:
            _assert_nothing_lost(url, restarted.target, load, signalled)


def test_sigterm_refuses_new_calls_during_the_grace_period_then_exits_in_time() -> None:
    with scratch_postgres() as url:
        server = ServerProcess(url, "--grace", str(GRACE))
        try:
            server.wait_serving()
            set_up_members(server.target, PROGRAM, MEMBERS[:1], OPENING)
            # A read that waits for a position nobody writes keeps the server draining for
            # the whole grace period.
            channel, stub = ledger_stub(server.target)
            waiting = stub.GetAccount.future(
                pb.GetAccountRequest(program_id=PROGRAM, member_id="m0", min_position=10**12),
                timeout=120,
            )
            time.sleep(0.5)  # let the call reach the server before the signal
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            refused = _refused_while_draining(server)
            code = server.process.wait(timeout=GRACE + EXIT_BOUND)
            stopped_after = time.monotonic() - signalled
            failure = waiting.exception(timeout=30)
            channel.close()
        finally:
            server.close()

        assert code == 0, server.stderr()
        # Draining (ledger/api/draining.py): a new call is refused UNAVAILABLE, retryable,
        # before any of our code runs; never CANCELLED, which leaves a client unsure.
        assert refused == grpc.StatusCode.UNAVAILABLE
        assert stopped_after <= GRACE + EXIT_BOUND
        # The call still running when the grace period ended was cut off, not answered.
        assert isinstance(failure, grpc.RpcError)
        assert failure.code() in {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}


def _refused_while_draining(server: ServerProcess) -> grpc.StatusCode:
    """While the process is still draining (the long read keeps it from exiting), a new
    call on a new connection is refused."""
    deadline = time.monotonic() + GRACE + EXIT_BOUND
    while time.monotonic() < deadline:
        assert server.process.poll() is None, "the server exited before refusing a call"
        channel, stub = ledger_stub(server.target)
        with channel:
            try:
                stub.GetProgram(pb.GetProgramRequest(program_id=PROGRAM), timeout=2)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    return e.code()
        time.sleep(0.05)
    raise AssertionError("new calls were still accepted")


def test_sigterm_stops_both_processes_of_processes_2_and_each_exits_0() -> None:
    with scratch_postgres() as url:
        server = ServerProcess(url, "--processes", "2", "--grace", str(GRACE))
        try:
            server.wait_serving()
            set_up_members(server.target, PROGRAM, MEMBERS, OPENING)
            # Many connections: the kernel spreads them over both processes.
            load = CommandLoad([server.target], PROGRAM, MEMBERS, threads=16).start()
            load.wait_acknowledged(100)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            load.join()
            code = server.process.wait(timeout=GRACE + EXIT_BOUND)
        finally:
            server.close()
        stderr = server.stderr()
        assert code == 0, stderr  # the parent exits 1 if a child did not exit 0
        assert stderr.count('"stopped"') == 2, stderr

        with serving(url) as restarted:
            _assert_nothing_lost(url, restarted.target, load, signalled)
