"""One group commit: account commands decided in order and saved in ONE transaction.

The steps, each a method of `CommandGroup`:
1. `answer_known`: requests already answered: a request_id earlier in this group (the same
   payload gets the same answer, another payload is refused), and, when asked to look,
   requests recorded before (answered from their records).
2. `prefetch`: the accounts the group needs and the writer has not cached, in one query.
3. `decide`: each command against its account, in order; a refusal changes nothing.
4. atomic only: any refusal aborts every command (`aborted`).
5. `save`: the accounts' new events and the commands' idempotency records, in one
   transaction. The programmes are taken as the application last read them (no read per
   group): the insert checks, under the events table's lock, that none of them has a newer
   version, and if one has (`ProgramChanged`) the group is decided again on it. A group
   that saves nothing but refused a command reads them instead (decision 29).
6. `answers`: each command's answer with its position; a refusal that is the replay of a
   request recorded earlier is answered from that record.

What goes wrong around a group (a conflict with another process, a command whose code
raised) is handled by `LedgerApplication.execute_group`, which re-runs the group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from ledger.application import commands as c
from ledger.application.idempotency import EventKey, record_id, reused, same_request
from ledger.application.views import Outcome
from ledger.domain import errors
from ledger.domain.account import MemberAccount
from ledger.domain.ids import account_id_key
from ledger.domain.program import Program
from ledger.infrastructure.database import database_lost
from ledger.infrastructure.eventlog import existing_originators, latest_versions
from ledger.infrastructure.recorders import ProgramChanged
from ledger.infrastructure.requests import RequestRecord

if TYPE_CHECKING:
    from ledger.application.service import LedgerApplication

log = logging.getLogger(__name__)
Answer = Outcome | errors.DomainError
T = TypeVar("T")


def answer_of(refusal: errors.DomainError) -> errors.DomainError:
    """A refusal kept as a command's answer, without its traceback: the traceback's frames
    hold this group, and the group holds the answer, a reference cycle that outlives the
    group until a full collection finds it (decision 33). A refusal is an answer, not a
    crash: nobody reads where it was raised."""
    refusal.__context__ = None
    return refusal.with_traceback(None)


def drop_tracebacks(error: BaseException) -> None:
    """Forget where `error`, and each error it was raised from or during, was raised, once
    it is handled. A traceback's frames often hold the error itself (a context manager's
    `__exit__` has it as an argument): a cycle that only a full collection frees, and one
    the server's freeze may keep for ever (decision 33)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


class CommandCrashed(Exception):
    """A command's own code raised something that is not a refusal (a bug): the group is
    re-run without it, and it alone is answered INTERNAL."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(f"command {index} raised {error!r}")
        self.index = index
        self.error = error


@dataclass
class _Slot:
    cmd: c.AccountCommand
    account_id: UUID
    record_id: UUID | None  # None: keeps no record (housekeeping)
    answer: Answer | None = None
    # The event whose position answers it; None: it wrote none, or it is a replay.
    event: EventKey | None = None
    same_as: int | None = None  # a repeat of the command at this index
    decided: bool = False  # answered by deciding it (not from a record or a repeat)


class CommandGroup:
    def __init__(
        self,
        app: LedgerApplication,
        cmds: Sequence[c.AccountCommand],
        cache: MutableMapping[UUID, MemberAccount],
        atomic: bool,
        look_for_duplicates: bool,
        at_occurred: bool,
    ) -> None:
        self.app = app
        self.cache = cache
        self.atomic = atomic
        self.look_for_duplicates = look_for_duplicates or atomic
        self.at_occurred = at_occurred
        self.slots = [
            _Slot(
                x, account_id_key(x.program_id, x.member_id), record_id(x) if x.recorded else None
            )
            for x in cmds
        ]
        self.touched: dict[UUID, MemberAccount] = {}
        self.from_cache: set[UUID] = set()  # accounts decided on as the writer had them
        self.records: list[RequestRecord] = []
        self.positions: dict[EventKey, int] = {}
        # The programmes the group is decided under, as the application last read them
        # (no read per group): the insert checks that none has a newer version (decision 29).
        self.programs: dict[str, Program] = {}

    def run(self) -> list[Answer]:
        self.answer_known()
        self.prefetch()
        self.decide()
        if self.atomic and self.refused():
            self._check_programs()
            return self.aborted()
        if not any(s.event for s in self.slots):
            self._check_programs()
        self.save()
        return self.answers()

    def forget(self) -> None:
        """The accounts this group changed are no longer what the database has: drop them
        from the writer's cache, so the next group reads them fresh."""
        for account_id in self.touched:
            self.cache.pop(account_id, None)

    # ------------------------------------------------------------------ steps

    def answer_known(self) -> None:
        first: dict[UUID, int] = {}
        conflicting: list[_Slot] = []
        for i, slot in enumerate(self.slots):
            if slot.record_id is None:
                continue
            if slot.record_id in first:
                earlier = self.slots[first[slot.record_id]]
                if same_request(slot.cmd, earlier.cmd.name, earlier.cmd.fingerprint()):
                    slot.same_as = first[slot.record_id]
                else:
                    slot.answer = reused(slot.cmd)
                    conflicting += [earlier, slot]
                continue
            first[slot.record_id] = i
        if conflicting and not self.look_for_duplicates:
            # One request_id, two payloads: if it was recorded before, the record says which
            # of them is the retry (rare: a query per such command).
            for slot in conflicting:
                assert slot.record_id is not None  # only recorded commands repeat a key
                known = self.app.idempotency.recorded([slot.cmd]).get(slot.record_id)
                if known is not None:
                    slot.answer, slot.same_as = known, None
        if self.look_for_duplicates:
            recorded = self.app.idempotency.recorded([s.cmd for s in self.pending()])
            for slot in self.pending():
                assert slot.record_id is not None
                slot.answer = recorded.get(slot.record_id)

    def prefetch(self) -> None:
        cold = {
            s.account_id
            for s in self.slots
            if s.answer is None
            and s.same_as is None
            and not isinstance(s.cmd, c.EnrollMember)
            and s.account_id not in self.cache
        }
        if len(cold) > 1:  # one account is read by get_account below, as cheaply
            try:
                self.touched.update(self.app.load_accounts(list(cold)))
            except errors.DomainError:
                raise
            except Exception:
                # One account that cannot be loaded must not fail the others: they load
                # one by one, and only the command of the broken one fails (decide).
                log.exception("reading %d accounts together failed; one by one", len(cold))
        enrolling = [s.account_id for s in self.pending() if isinstance(s.cmd, c.EnrollMember)]
        self.enrolled = existing_originators(self.app.database, enrolling) if enrolling else set()

    def decide(self) -> None:
        programs = self.programs
        for slot in self.slots:
            if slot.answer is not None or slot.same_as is not None:
                continue
            cmd = slot.cmd
            if cmd.program_id not in programs:
                try:
                    programs[cmd.program_id] = self.app.cached_program(cmd.program_id)
                except errors.DomainError as refusal:
                    slot.answer = answer_of(refusal)
                    continue
            slot.decided = True
            try:
                if isinstance(cmd, c.EnrollMember):
                    self._check_not_enrolled(slot)
                    outcome, account = self._guarded(slot, self._enroll, slot, programs)
                else:
                    account = self._guarded(slot, self._account, slot)
                    version = account.version
                    program = programs[cmd.program_id]
                    outcome = self._guarded(
                        slot, self.app.decide, cmd, program, account, self.at_occurred
                    )
                    if account.version == version:  # wrote nothing (housekeeping only)
                        slot.answer = outcome
                        continue
            except errors.DomainError as refusal:
                slot.answer = answer_of(refusal)
                continue
            slot.answer = outcome
            slot.event = (account.id, account.version)
            if slot.record_id is not None:
                self.records.append(
                    self.app.idempotency.record(cmd, cmd.member_id, outcome, slot.event)
                )

    def _guarded(self, slot: _Slot, decide: Callable[..., T], *args: Any) -> T:
        """Run one command's own code: a refusal passes through, anything else is a bug in
        that command, which must not cost the others theirs."""
        try:
            return decide(*args)
        except errors.DomainError:
            raise
        except Exception as crash:
            if database_lost(crash):
                raise  # not this command's fault: the group fails, and is answered UNAVAILABLE
            raise CommandCrashed(self.slots.index(slot), crash) from crash

    def refused(self) -> bool:
        return any(isinstance(s.answer, errors.DomainError) for s in self.slots)

    def aborted(self) -> list[Answer]:
        self.forget()
        return [
            s.answer
            if isinstance(s.answer, errors.DomainError)
            else errors.AtomicBatchAborted(
                "not applied: another command of this atomic batch was refused"
            )
            for s in self.slots
        ]

    def _check_programs(self) -> None:
        """A group that saves nothing is not checked by an insert: if it refused a command,
        that refusal may rest on a programme another process (or UpdateProgram here) has
        changed since this one read it. Read them (one query each, only then); if one
        moved, the group is decided again on it (ProgramChanged, as from the insert)."""
        if not any(s.decided and isinstance(s.answer, errors.DomainError) for s in self.slots):
            return
        moved = [
            program_id
            for program_id, program in self.programs.items()
            if self.app.get_program(program_id).version != program.version
        ]
        if moved:
            raise ProgramChanged(f"programme {moved[0]} was updated after the group was decided")

    def save(self) -> None:
        if not any(s.event for s in self.slots):
            return
        try:
            recordings = self.app.save(
                *self.touched.values(),
                requests=self.records,
                programs=[(p.id, p.version) for p in self.programs.values()],
            )
        except ProgramChanged:
            # Bring them forward (a read each) before the group is decided again.
            for program_id in self.programs:
                self.app.get_program(program_id)
            raise
        self.positions = {
            (r.domain_event.originator_id, r.domain_event.originator_version): r.notification.id
            for r in recordings
        }
        self.app.saved(max(self.positions.values()))
        self.cache.update(self.touched)

    def answers(self) -> list[Answer]:
        refused_before = [
            s
            for s in self.slots
            if isinstance(s.answer, errors.DomainError)
            and s.record_id is not None
            and not self.look_for_duplicates
        ]
        if refused_before:
            # A refusal may be a retry of a request recorded earlier, refused now against
            # the state it made: its answer is its record (one query, only on refusals).
            recorded = self.app.idempotency.recorded([s.cmd for s in refused_before])
            for slot in refused_before:
                assert slot.record_id is not None
                slot.answer = recorded.get(slot.record_id, slot.answer)
        self._decide_stale_refusals_again()
        out: list[Answer] = []
        for slot in self.slots:
            if slot.same_as is not None:
                first = self.slots[slot.same_as]
                answer = self._final(first)
                out.append(
                    replace(answer, replayed=True) if isinstance(answer, Outcome) else answer
                )
            else:
                out.append(self._final(slot))
        return out

    def _decide_stale_refusals_again(self) -> None:
        """A refusal decided on a cached account that another process has written since
        (`ledger serve --processes`) was decided on stale state: nothing was saved, so no
        conflict showed it. Such accounts are read again and their refused commands decided
        again (one query, only when a refusal was made on a cached account)."""
        refused = [
            s
            for s in self.slots
            if isinstance(s.answer, errors.DomainError) and s.account_id in self.from_cache
        ]
        if not refused:
            return
        latest = latest_versions(self.app.database, list({s.account_id for s in refused}))
        stale = {
            account_id
            for account_id, version in latest.items()
            if (known := self.cache.get(account_id)) is not None and version > known.version
        }
        again = [s for s in refused if s.account_id in stale]
        if not again:
            return
        for account_id in stale:
            self.cache.pop(account_id, None)
        answers = self.app.execute_group(
            [s.cmd for s in again],
            self.cache,
            look_for_duplicates=True,
            at_occurred=self.at_occurred,
        )
        for slot, answer in zip(again, answers, strict=True):
            slot.answer, slot.event = answer, None

    # ------------------------------------------------------------------ helpers

    def pending(self) -> list[_Slot]:
        return [
            s
            for s in self.slots
            if s.answer is None and s.same_as is None and s.record_id is not None
        ]

    def _final(self, slot: _Slot) -> Answer:
        assert slot.answer is not None
        if isinstance(slot.answer, Outcome) and slot.event is not None:
            return replace(slot.answer, position=self.positions[slot.event])
        return slot.answer

    def _account(self, slot: _Slot) -> MemberAccount:
        account = self.touched.get(slot.account_id)
        if account is None:
            account = self.cache.get(slot.account_id)
            if account is not None:
                self.from_cache.add(slot.account_id)
        if account is None:
            account = self.app.get_account(slot.cmd.program_id, slot.cmd.member_id)
        self.touched[slot.account_id] = account
        return account

    def _check_not_enrolled(self, slot: _Slot) -> None:
        if (
            slot.account_id in self.touched
            or slot.account_id in self.cache
            or slot.account_id in self.enrolled
        ):
            raise errors.MemberAlreadyEnrolled(
                f"member {slot.cmd.member_id} is already enrolled", member_id=slot.cmd.member_id
            )

    def _enroll(self, slot: _Slot, programs: dict[str, Program]) -> tuple[Outcome, MemberAccount]:
        cmd = slot.cmd
        assert isinstance(cmd, c.EnrollMember)
        outcome, account = self.app.enroll(cmd, programs[cmd.program_id])
        self.touched[slot.account_id] = account
        return outcome, account
