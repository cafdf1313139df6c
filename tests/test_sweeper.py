"""The in-server sweeper expires due lots and ends timed-out holds with nobody calling."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ledger.application import commands as c
from ledger.domain.program import ProgramSettings
from ledger.runtime import Tally
from tests.support import open_tally


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tally(clock: Clock) -> Iterator[Tally]:
    with open_tally("sqlite", clock=clock) as t:
        t.writer.start()  # sweeps write through the accounts' writers
        yield t


def test_scheduled_sweep_expires_due_lots_once(tally: Tally, clock: Clock) -> None:
    app = tally.app
    app.create_program(
        c.CreateProgram(program_id="p", request_id="p", settings=ProgramSettings("P", "EUR"))
    )
    for member in ("a", "b"):
        app.execute(c.EnrollMember(program_id="p", member_id=member, request_id=member))
        app.execute(
            c.EarnPoints(
                program_id="p",
                member_id=member,
                points=40,
                request_id=f"{member}1",
                expires_at=clock.now + timedelta(days=1),
            )
        )
        app.execute(
            c.EarnPoints(
                program_id="p",
                member_id=member,
                points=7,
                request_id=f"{member}2",
                expires_at=clock.now + timedelta(days=3),
            )
        )
    tally.points.run_until_caught_up()

    clock.now += timedelta(days=2)
    assert tally.sweeper.sweep_lots() == 80
    tally.points.run_until_caught_up()
    assert tally.sweeper.sweep_lots() == 0

    assert app.get_account("p", "a").available == 7
    assert app.get_account("p", "b").available == 7


def test_sweep_ends_holds_whose_ttl_ran_out(tally: Tally, clock: Clock) -> None:
    app = tally.app
    app.create_program(
        c.CreateProgram(program_id="p", request_id="p", settings=ProgramSettings("P", "EUR"))
    )
    app.execute(c.EnrollMember(program_id="p", member_id="a", request_id="a"))
    app.execute(c.EarnPoints(program_id="p", member_id="a", points=50, request_id="e"))
    app.execute(
        c.HoldPoints(program_id="p", member_id="a", points=20, ttl_seconds=60, request_id="h")
    )
    tally.points.run_until_caught_up()
    assert tally.sweeper.sweep_holds() == 0

    clock.now += timedelta(seconds=61)
    assert tally.sweeper.sweep_holds() == 1
    account = app.get_account("p", "a")
    assert (account.available, account.held) == (50, 0)
