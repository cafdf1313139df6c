"""Stopping the runners of a process: each is asked before any is waited for, so that one
runner's slow batch does not hold up the others' stop (a projections process must be gone
before its supervisor's deadline)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from ledger.application import commands as c
from ledger.domain.program import ProgramSettings
from ledger.infrastructure.database import Cursor
from ledger.infrastructure.dialect import Dialect
from projections.runner import ProjectionRunner, stop_all
from tests.support import open_tally

HELD_SECONDS = 5.0


class Waiting:
    """A read model whose batch waits until `stopping` is set (or HELD_SECONDS pass) and
    records whether it was: a batch in hand while the process stops."""

    name: ClassVar[str] = "waiting"
    tables: ClassVar[dict[str, tuple[str, ...]]] = {}
    handled: ClassVar[frozenset[type]] = frozenset()
    poll_interval: ClassVar[float] = 0.0

    def __init__(self, dialect: Dialect, stopping: threading.Event) -> None:
        self.stopping = stopping
        self.in_batch = threading.Event()
        self.saw_stop: list[bool] = []

    def process(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]]) -> None:
        self.in_batch.set()
        self.saw_stop.append(self.stopping.wait(HELD_SECONDS))


class Idle(Waiting):
    name: ClassVar[str] = "idle"

    def process(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]]) -> None:
        pass


def test_every_runner_is_asked_to_stop_before_any_is_waited_for() -> None:
    with open_tally("sqlite") as tally:
        tally.app.create_program(
            c.CreateProgram(program_id="p", request_id="p", settings=ProgramSettings("P", "EUR"))
        )
        dialect = tally.database.dialect

        def runner(projection: Any) -> ProjectionRunner:
            return ProjectionRunner(
                tally.database, tally.app.recorder, tally.app.mapper.to_domain_event, projection
            )

        idle = runner(Idle(dialect, threading.Event()))
        # The first runner's batch holds until the second one has been asked to stop:
        # stopping them one after the other would wait out HELD_SECONDS, and say so.
        waiting_projection = Waiting(dialect, idle._stop)
        waiting = runner(waiting_projection)
        # The idle one first, caught up: its start writes its tracking row, which on SQLite
        # would wait for the write lock that the waiting one's batch holds.
        idle.start()
        assert idle.ready.wait(10)
        waiting.start()
        assert waiting_projection.in_batch.wait(10)

        stop_all([waiting, idle])

        assert waiting_projection.saw_stop == [True]
        assert not any(r._thread is not None and r._thread.is_alive() for r in (waiting, idle))
