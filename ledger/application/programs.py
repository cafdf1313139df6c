"""Programs: CreateProgram, UpdateProgram, and the program as recorded now (`get_program`),
kept in memory per application and brought forward by its new events.

A mixin of LedgerApplication (service.py; why mixins: base.py). Every account command, query
and expiry run reads its program through `get_program`; only `update_program` changes a
program, on its own freshly loaded copy, and the cache takes the update from the event log
like an update by any other process.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from ledger.application import commands as c
from ledger.application.base import LedgerBase, cmd_transaction_id, utc_now
from ledger.application.views import Outcome, ProgramView
from ledger.domain import errors
from ledger.domain.ids import program_id_key
from ledger.domain.program import Program, ProgramSettings
from ledger.domain.replay import replay
from ledger.infrastructure.database import Database


@dataclass(frozen=True)
class ProgramVersion:
    """One version of a programme: what its CreateProgram (version 1) or an UpdateProgram
    made it, when that was recorded and the log position of that event. Commands recorded
    after it are decided under it until the next version."""

    version: int
    recorded_at: datetime
    position: int
    settings: ProgramSettings
    transaction_id: str


class ProgramUseCases(LedgerBase):
    def __init__(
        self,
        env: dict[str, str],
        database: Database,
        clock: Callable[[], datetime] = utc_now,
        on_saved: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(env, database, clock, on_saved)
        self._programs: dict[UUID, Program] = {}
        self._programs_lock = threading.Lock()

    def create_program(self, cmd: c.CreateProgram) -> Outcome:
        def attempt() -> Outcome:
            if self._exists(program_id_key(cmd.program_id)):
                raise errors.ProgramAlreadyExists(
                    f"program {cmd.program_id} exists", program_id=cmd.program_id
                )
            transaction_id = cmd_transaction_id(cmd)
            program = Program(
                program_id=cmd.program_id, settings=cmd.settings, transaction_id=transaction_id
            )
            return self._commit(
                cmd, "", [program], Outcome(transaction_id, 0, program=ProgramView.of(program))
            )

        return _effective(self.idempotency.retrying(cmd, attempt))

    def update_program(self, cmd: c.UpdateProgram) -> Outcome:
        def attempt() -> Outcome:
            try:
                program: Program = self.repository.get(program_id_key(cmd.program_id))
            except AggregateNotFoundError:
                raise errors.ProgramNotFound(
                    f"program {cmd.program_id} does not exist", program_id=cmd.program_id
                ) from None
            transaction_id = cmd_transaction_id(cmd)
            program.update(cmd.changes, transaction_id)
            return self._commit(
                cmd, "", [program], Outcome(transaction_id, 0, program=ProgramView.of(program))
            )

        return _effective(self.idempotency.retrying(cmd, attempt))

    def get_program(self, program_id: str) -> Program:
        """The program as recorded now. Kept in memory and brought forward by its new events
        (one indexed read), so an update by any process applies to commands after it.
        Callers read it; only update_program changes a program, on its own fresh copy."""
        key = program_id_key(program_id)
        program = self._programs.get(key)
        if program is None:
            try:
                program = self.repository.get(key)
            except AggregateNotFoundError:
                raise errors.ProgramNotFound(
                    f"program {program_id} does not exist", program_id=program_id
                ) from None
        else:
            # Read outside the lock: writers must not queue behind each other's SELECT.
            newer = list(self.events.get(key, gt=program.version))
            if not newer:
                return program
            with self._programs_lock:
                current = self._programs.get(key, program)
                newer = [e for e in newer if e.originator_version > current.version]
                updated: Program | None = replay(copy.copy(current), newer)
                assert updated is not None
                program = updated
        with self._programs_lock:
            cached = self._programs.get(key)
            if cached is None or cached.version < program.version:
                self._programs[key] = program
            else:
                program = cached
        return program

    def cached_program(self, program_id: str) -> Program:
        """The program as this process last brought it forward, without a read (one read
        if it is not cached). For the group commit only: its insert checks, under the events
        table's lock, that no newer version of the programmes it decided under has been
        recorded, and the group is decided again on the newer one if so (decision 29)."""
        program = self._programs.get(program_id_key(program_id))
        return program if program is not None else self.get_program(program_id)

    def program_as_of(self, program_id: str, as_of: datetime) -> Program:
        """The program as recorded at `as_of` (inclusive): its last version whose event was
        recorded then or before. ProgramNotFound if it did not exist yet. Programs have few
        events, so this reads them all (one indexed read) rather than keep a history."""
        key = program_id_key(program_id)
        recorded = [e for e in self.events.get(key) if e.timestamp <= as_of]  # type: ignore[attr-defined]
        if not recorded:
            raise errors.ProgramNotFound(
                f"program {program_id} did not exist at {as_of.isoformat()}",
                program_id=program_id,
            )
        program: Program | None = replay(None, recorded)
        assert program is not None
        return program

    def program_view(self, program_id: str, as_of: datetime | None = None) -> ProgramView:
        """GetProgram: the version in force now, or at `as_of` (recorded time, inclusive),
        with the log position of the event that made it. ProgramNotFound before creation."""
        program = (
            self.get_program(program_id) if as_of is None else self.program_as_of(program_id, as_of)
        )
        position = self._program_positions(program.id).get(program.version, 0)
        return replace(ProgramView.of(program), effective_position=position)

    def program_versions(self, program_id: str) -> list[ProgramVersion]:
        """Every version of the programme, oldest first (ProgramNotFound: none). Programs
        have few events: one read of them and one of their positions."""
        key = program_id_key(program_id)
        events = list(self.events.get(key))
        if not events:
            raise errors.ProgramNotFound(
                f"program {program_id} does not exist", program_id=program_id
            )
        positions = self._program_positions(key)
        versions: list[ProgramVersion] = []
        program: Program | None = None
        for e in events:
            program = replay(program, [e])
            assert program is not None
            versions.append(
                ProgramVersion(
                    version=program.version,
                    recorded_at=e.timestamp,  # type: ignore[attr-defined]
                    position=positions.get(program.version, 0),
                    settings=program.settings,
                    transaction_id=str(getattr(e, "transaction_id", "")),
                )
            )
        return versions

    def _program_positions(self, key: UUID) -> dict[int, int]:
        """version -> log position of each of the programme's events."""
        dialect = self.database.dialect
        sql = (
            f"SELECT originator_version, {dialect.position_column} FROM {dialect.events_table}"
            " WHERE originator_id = ?"
        )
        with self.database.read() as cur:
            cur.execute(sql, (dialect.stored_id(key),))
            return {int(v): int(p) for v, p in cur.fetchall()}


def _effective(outcome: Outcome) -> Outcome:
    """CreateProgram's and UpdateProgram's answer: the position it reports is that of the
    programme event it recorded (also when replayed from its request record), which is the
    new version's effective position."""
    if outcome.program is None or outcome.program.effective_position or not outcome.position:
        return outcome
    return replace(outcome, program=replace(outcome.program, effective_position=outcome.position))
