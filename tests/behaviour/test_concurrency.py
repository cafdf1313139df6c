"""Concurrent commands on one account never double-spend, on one server or on two."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from tests.support import Client, ServerThread, refusal

CALLERS = 12
ATTEMPTS_PER_CALLER = 8
POINTS_EACH = 10


def _hammer(
    targets: list[str], program: str, member: str, backend: str
) -> tuple[Counter[str], int]:
    """CALLERS threads, each on its own channel, redeem POINTS_EACH repeatedly at once.
    Returns the outcomes and the log position of the last accepted redemption (what a read
    of them all must wait for)."""
    outcomes: Counter[str] = Counter()
    positions = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(CALLERS)

    def caller(i: int) -> None:
        c = Client(targets[i % len(targets)], backend)
        try:
            barrier.wait()
            for _ in range(ATTEMPTS_PER_CALLER):
                try:
                    position = c.redeem(program, member, POINTS_EACH).position
                    result = "ok"
                except grpc.RpcError as e:
                    problem = refusal(e)
                    result, position = problem.reason or problem.code.name, 0
                with lock:
                    outcomes[result] += 1
                    positions.append(position)
        finally:
            c.close()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outcomes, max(positions)


def test_many_callers_redeeming_one_account_never_overdraw(client: Client) -> None:
    program, member = client.member()
    budget = 37 * POINTS_EACH  # fewer than CALLERS * ATTEMPTS_PER_CALLER redemptions fit
    client.earn(program, member, budget)
    outcomes, last = _hammer([client.target], program, member, client.backend)

    assert outcomes == {"ok": 37, "INSUFFICIENT_POINTS": CALLERS * ATTEMPTS_PER_CALLER - 37}
    # Wait for the last accepted redemption: the seeding earn's position let a lagging
    # projection answer with some of the 37 missing.
    history = client.transactions(program, member, min_position=last, page_size=1000)
    assert history.transactions[-1].position == last
    account = client.account(program, member, min_position=last)
    assert account.points_available == 0
    redeems = [t for t in history.transactions if t.points_delta == -POINTS_EACH]
    assert len(redeems) == 37


@pytest.fixture
def second_postgres_server(postgres_url: str) -> Iterator[ServerThread]:
    other = ServerThread(postgres_url)
    yield other
    other.stop()


def test_two_servers_on_one_postgres_never_overdraw(
    postgres_url: str, servers: dict[str, ServerThread], second_postgres_server: ServerThread
) -> None:
    first = servers.get("postgres") or ServerThread(postgres_url)
    servers["postgres"] = first
    c = Client(first.target, "postgres")
    try:
        program, member = c.member()
        c.earn(program, member, 29 * POINTS_EACH)

        outcomes, _ = _hammer(
            [first.target, second_postgres_server.target], program, member, "postgres"
        )

        assert outcomes == {"ok": 29, "INSUFFICIENT_POINTS": CALLERS * ATTEMPTS_PER_CALLER - 29}
        final = c.earn(program, member, 1)
        assert final.account.points_available == 1
    finally:
        c.close()
