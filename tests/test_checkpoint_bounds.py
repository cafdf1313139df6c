"""A checkpoint covers at most MAX_EVENTS_PER_CHECKPOINT events: a backlog (after an import,
which writes none) becomes several in a row, each holding only its own heads, and they
verify like one."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

import pytest

from ledger.application import commands as c
from ledger.audit.checkpoints import (
    Checkpointer,
    checkpoint_to_head,
    load_checkpoints,
    write_checkpoint,
)
from ledger.audit.verify import verify
from ledger.domain.program import ProgramSettings
from ledger.runtime import Tally
from tests.support import open_tally


@pytest.fixture(params=["sqlite", "postgres"])
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    with open_tally(request.param, durable=False) as t:
        settings = ProgramSettings("P", "EUR")
        t.app.create_program(c.CreateProgram(program_id="p", request_id="p", settings=settings))
        # 30 members, one event each, then 30 earns: 61 events with the programme's.
        t.app.execute_group(
            [
                c.EnrollMember(program_id="p", member_id=f"m{i}", request_id=f"n{i}")
                for i in range(30)
            ],
            {},
        )
        t.app.execute_group(
            [
                c.EarnPoints(
                    program_id="p", member_id=f"m{i}", points=5, request_id=f"e{i}", store_id="s"
                )
                for i in range(30)
            ],
            {},
        )
        yield t


def _log(tally: Tally) -> list[tuple[int, str, int]]:
    """(position, account, version) of every event."""
    return [
        (e.id, str(e.originator_id), e.originator_version)
        for e in tally.app.recorder.select_notifications(1, 1000)
    ]


def _head(tally: Tally) -> int:
    return tally.app.recorder.max_notification_id() or 0


def test_a_backlog_becomes_bounded_checkpoints_that_reach_the_head_and_verify(
    tally: Tally,
) -> None:
    made = checkpoint_to_head(tally.database, limit=25)

    counts = [made[0].event_count] + [b.event_count - a.event_count for a, b in pairwise(made)]
    assert counts == [25, 25, 11]
    # Each holds the newest event of every account written in its range, and no other.
    log = _log(tally)
    since = 0
    for checkpoint in made:
        newest: dict[str, int] = {}
        for position, account, version in log:
            if since < position <= checkpoint.position:
                newest[account] = max(newest.get(account, 0), version)
        assert {str(h.originator_id): h.version for h in checkpoint.heads} == newest
        since = checkpoint.position
    assert made[-1].position == _head(tally)
    assert [m.checkpoint_id for m in load_checkpoints(tally.database)] == [1, 2, 3]
    report = verify(tally.database)
    assert report.ok, report.detail
    assert report.checkpoints_checked == 3
    assert checkpoint_to_head(tally.database, limit=25) == []  # nothing left to cover


def test_one_checkpoint_is_bounded_and_the_next_goes_on_from_it(tally: Tally) -> None:
    first = write_checkpoint(tally.database, limit=40)
    assert first is not None
    assert first.event_count == 40
    assert first.position < _head(tally)
    second = write_checkpoint(tally.database, limit=40)
    assert second is not None
    assert (second.event_count, second.position) == (61, _head(tally))
    assert write_checkpoint(tally.database, limit=40) is None


def test_the_servers_checkpointer_writes_one_bounded_checkpoint_a_tick(tally: Tally) -> None:
    checkpointer = Checkpointer(tally.database, None, every=10)
    checkpointer.tick()
    (only,) = load_checkpoints(tally.database)
    assert only.event_count == 61  # under the default bound: all of it, in one
