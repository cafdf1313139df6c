"""A projection that dies mid-batch loses nothing and counts nothing twice: after restarts
its read models equal a rebuild from zero."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from ledger.application import commands as c
from ledger.domain.program import ProgramSettings
from ledger.infrastructure.database import Cursor
from ledger.infrastructure.dialect import Dialect
from ledger.runtime import Tally
from projections.points import PointsProjection
from projections.runner import ProjectionRunner
from tests.support import open_tally

READ_MODELS = tuple(PointsProjection.tables)  # every table the projection writes


class CrashingProjection(PointsProjection):
    """Writes its rows, then dies before the batch commits, every `every`-th batch."""

    def __init__(self, dialect: Dialect, every: int) -> None:
        super().__init__(dialect)
        self.every = every
        self.calls = 0
        self.crashes = 0

    def process(self, cur: Cursor, events: Sequence[tuple[int, Any]]) -> None:
        super().process(cur, events)
        self.calls += 1
        if self.calls % self.every == 0:
            self.crashes += 1
            raise RuntimeError("simulated crash mid-batch")


@pytest.fixture(params=["sqlite", "postgres"])
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    with open_tally(request.param) as t:
        yield t


def _write_history(tally: Tally) -> None:
    app = tally.app
    app.create_program(
        c.CreateProgram(program_id="p", request_id="p", settings=ProgramSettings("P", "EUR"))
    )
    for m in range(12):
        member = f"m{m}"
        app.execute(c.EnrollMember(program_id="p", member_id=member, request_id=member))
        for i in range(8):
            earn = app.execute(
                c.EarnPoints(
                    program_id="p", member_id=member, points=10 + i, request_id=f"{member}-e{i}"
                )
            )
            if i % 3 == 0:
                app.execute(
                    c.RedeemPoints(
                        program_id="p", member_id=member, points=5, request_id=f"{member}-r{i}"
                    )
                )
            if i == 5:
                app.execute(
                    c.ReverseTransaction(
                        program_id="p",
                        member_id=member,
                        transaction_id=earn.transaction_id,
                        request_id=f"{member}-x{i}",
                    )
                )
        hold = app.execute(
            c.HoldPoints(
                program_id="p",
                member_id=member,
                points=3,
                ttl_seconds=600,
                request_id=f"{member}-h",
            )
        )
        app.execute(
            c.CaptureHold(
                program_id="p",
                member_id=member,
                points=2,
                hold_id=hold.result.hold_id,  # type: ignore[union-attr]
                request_id=f"{member}-c",
            )
        )


def _snapshot(tally: Tally) -> dict[str, list[tuple[Any, ...]]]:
    tables = {}
    with tally.database.read() as cur:
        for table in READ_MODELS:
            cur.execute(f"SELECT * FROM {table}")
            tables[table] = sorted(cur.fetchall(), key=lambda row: [str(v) for v in row])
    return tables


def _reset(tally: Tally) -> None:
    with tally.database.transaction() as cur:
        for table in READ_MODELS:
            cur.execute(f"DELETE FROM {table}")
        cur.execute("DELETE FROM projection_tracking")


def test_crashes_mid_batch_leave_read_models_equal_to_a_rebuild(tally: Tally) -> None:
    _write_history(tally)
    last = tally.app.recorder.max_notification_id() or 0
    crashing = CrashingProjection(tally.database.dialect, every=3)
    runner = ProjectionRunner(
        tally.database,
        tally.app.recorder,
        tally.app.mapper.to_domain_event,
        crashing,
        batch_size=17,
    )
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while runner.position < last and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runner.stop()
    assert runner.position == last
    assert crashing.crashes >= 3, "the test must actually crash the projection"
    after_crashes = _snapshot(tally)

    _reset(tally)
    rebuilt = ProjectionRunner(
        tally.database,
        tally.app.recorder,
        tally.app.mapper.to_domain_event,
        PointsProjection(tally.database.dialect),
        batch_size=500,
    ).run_until_caught_up()

    assert rebuilt == last
    assert _snapshot(tally) == after_crashes
    # And the balances are the aggregates' own: nothing counted twice.
    with tally.database.read() as cur:
        cur.execute("SELECT member_id, points_available, points_held FROM rm_accounts")
        rows = cur.fetchall()
    assert len(rows) == 12
    for member_id, available, held in rows:
        account = tally.app.get_account("p", member_id)
        assert (available, held) == (account.available, account.held)
