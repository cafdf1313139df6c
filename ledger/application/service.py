"""The ledger application: programs, account commands, expiry.

An account command is decided by its handler (handlers.py) against its account and saved
with its idempotency record in ONE transaction, in a group with the commands that arrived
with it (group.py; the server's writers, group_commit.py, form the groups). A concurrent
writer of the same account or the same request_id makes the save fail with IntegrityError;
the group is then run again, and a request recorded meanwhile is answered from its record
(idempotency.py). A refused command writes nothing.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
    project_aggregate,
)
from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import IntegrityError, JSONTranscoder, Recording

from ledger.application import commands as c
from ledger.application.group import Answer, CommandCrashed, CommandGroup
from ledger.application.handlers import CommandContext, handler_for
from ledger.application.idempotency import MAX_ATTEMPTS, EventKey, Idempotency, backoff
from ledger.application.results import ExpiryResult
from ledger.application.transcodings import account_transcodings
from ledger.application.views import AccountView, Outcome, ProgramView
from ledger.domain import errors
from ledger.domain.account import MemberAccount
from ledger.domain.ids import (
    account_id_key,
    derived_transaction_id,
    program_id_key,
    request_id_key,
)
from ledger.domain.program import Program, ProgramSettingsAsDict
from ledger.domain.provenance import Provenance, ProvenanceAsDict
from ledger.infrastructure.database import Database
from ledger.infrastructure.eventlog import event_at, existing_originators, stored_events_of

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


# A load that had to replay this many events leaves a snapshot behind (decision 10).
SNAPSHOT_AFTER_REPLAYING = 200


class LedgerApplication(Application[UUID]):
    name = "Ledger"
    is_snapshotting_enabled = True

    def __init__(
        self,
        env: dict[str, str],
        database: Database,
        clock: Callable[[], datetime] = utc_now,
        on_saved: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(env)
        self.database = database
        self.clock = clock
        self._programs: dict[UUID, Program] = {}
        self._programs_lock = threading.Lock()
        self.on_saved = on_saved
        self.idempotency = Idempotency(database, self.mapper.transcoder)

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """The library's save() without its per-object runtime Protocol checks (about 18 µs
        an aggregate, an eighth of a group commit): everything we save is an aggregate."""
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        for obj in objs:
            processing_event.events.extend(obj.collect_events())
            processing_event.aggregates[obj.id] = obj
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        return recordings

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(ProvenanceAsDict())
        transcoder.register(ProgramSettingsAsDict())
        for transcoding in account_transcodings():
            transcoder.register(transcoding)

    # ------------------------------------------------------------------ programs

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

        return self.idempotency.retrying(cmd, attempt)

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

        return self.idempotency.retrying(cmd, attempt)

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
                updated: Program | None = project_aggregate(copy.copy(current), newer)
                assert updated is not None
                program = updated
        with self._programs_lock:
            cached = self._programs.get(key)
            if cached is None or cached.version < program.version:
                self._programs[key] = program
            else:
                program = cached
        return program

    # ------------------------------------------------------------------ members

    def enroll(self, cmd: c.EnrollMember, program: Program) -> tuple[Outcome, MemberAccount]:
        """A new account (unsaved); the caller has checked that the member is not enrolled."""
        now = self.clock()
        provenance = self._provenance(cmd, now)
        account = MemberAccount(
            program_id=cmd.program_id,
            member_id=cmd.member_id,
            referrer_member_id=cmd.referrer_member_id,
            provenance=provenance,
        )
        view = AccountView.of(account, program.settings, now)
        return Outcome(provenance.transaction_id, 0, account=view), account

    def get_account(self, program_id: str, member_id: str) -> MemberAccount:
        account_id = account_id_key(program_id, member_id)
        account = self.load_accounts([account_id]).get(account_id)
        if account is None:
            raise errors.MemberNotFound(
                f"member {member_id} is not enrolled in program {program_id}",
                member_id=member_id,
            )
        return account

    # ------------------------------------------------------------------ account commands

    def execute(self, cmd: c.AccountCommand, at_occurred: bool = False) -> Outcome:
        """One account command on its own, against freshly loaded state (tools and tests;
        the server sends every account command through its account's writer)."""
        answer = self.execute_group([cmd], {}, look_for_duplicates=True, at_occurred=at_occurred)
        if isinstance(answer[0], errors.DomainError):
            raise answer[0]
        return answer[0]

    def execute_group(
        self,
        cmds: Sequence[c.AccountCommand],
        cache: MutableMapping[UUID, MemberAccount],
        atomic: bool = False,
        look_for_duplicates: bool = False,
        at_occurred: bool = False,
        attempt: int = 1,
    ) -> list[Answer]:
        """Group commit: decide every command against its account, in order, and save all
        their events and request records in ONE transaction (the steps: group.py).

        `cache` holds the caller's accounts between groups (the caller is the only writer of
        them in this process). Another process writing one of them makes our save conflict:
        the group is then run again, looking for recorded requests first, and if it still
        conflicts, in halves, down to single commands retried with a backoff, so no innocent
        command fails. A refused command is answered with its DomainError and changes
        nothing. A command whose own code raises (a bug) is answered INTERNAL and the group
        is run again without it.

        `atomic`: all or nothing. Recorded requests are looked up first; if any command is
        refused (a reused request_id included), nothing is saved and the others are
        answered with AtomicBatchAborted.

        `at_occurred` (imports of history): each command is decided as of its occurred_at
        when that is in the past, so expiry and holds are judged as they stood then.
        """
        group = CommandGroup(self, cmds, cache, atomic, look_for_duplicates, at_occurred)
        try:
            return group.run()
        except IntegrityError:
            group.forget()
            if atomic:
                raise  # execute_atomic starts the whole group again
            return self._after_conflict(cmds, cache, look_for_duplicates, at_occurred, attempt)
        except CommandCrashed as crash:
            group.forget()
            return self._without(crash, cmds, cache, atomic, at_occurred)
        except BaseException:
            group.forget()
            raise

    def _after_conflict(
        self,
        cmds: Sequence[c.AccountCommand],
        cache: MutableMapping[UUID, MemberAccount],
        looked: bool,
        at_occurred: bool,
        attempt: int,
    ) -> list[Answer]:
        if not looked:  # perhaps a retried request: look for records first
            return self.execute_group(
                cmds, cache, look_for_duplicates=True, at_occurred=at_occurred
            )
        if len(cmds) > 1:
            half = len(cmds) // 2
            return [
                *self.execute_group(cmds[:half], cache, False, True, at_occurred),
                *self.execute_group(cmds[half:], cache, False, True, at_occurred),
            ]
        if attempt >= MAX_ATTEMPTS:
            return [errors.WriteConflict("the command kept conflicting with concurrent writers")]
        backoff()
        return self.execute_group(cmds, cache, False, True, at_occurred, attempt + 1)

    def _without(
        self,
        crash: CommandCrashed,
        cmds: Sequence[c.AccountCommand],
        cache: MutableMapping[UUID, MemberAccount],
        atomic: bool,
        at_occurred: bool,
    ) -> list[Answer]:
        cmd = cmds[crash.index]
        log.error(
            "%s %s for member %s of program %s failed; the rest of its group goes on",
            cmd.name,
            cmd.request_id or "(housekeeping)",
            cmd.member_id,
            cmd.program_id,
            exc_info=crash.error,
        )
        failed = errors.InternalFault(
            f"the server could not apply this {cmd.name} command; it was not applied"
        )
        if atomic:
            return [
                failed
                if i == crash.index
                else errors.AtomicBatchAborted(
                    "not applied: another command of this atomic batch failed"
                )
                for i in range(len(cmds))
            ]
        rest = [x for i, x in enumerate(cmds) if i != crash.index]
        answers = self.execute_group(rest, cache, at_occurred=at_occurred) if rest else []
        answers.insert(crash.index, failed)
        return answers

    def execute_atomic(
        self,
        cmds: Sequence[c.AccountCommand],
        cache: MutableMapping[UUID, MemberAccount] | None = None,
    ) -> list[Answer]:
        """All or nothing, in one transaction."""
        for _ in range(MAX_ATTEMPTS):
            try:
                return self.execute_group(cmds, {} if cache is None else cache, atomic=True)
            except IntegrityError:
                backoff()
        raise errors.WriteConflict("the atomic batch kept conflicting with concurrent writers")

    def decide(
        self,
        cmd: c.AccountCommand,
        program: Program,
        account: MemberAccount,
        at_occurred: bool = False,
    ) -> Outcome:
        """Let the account decide `cmd` (raising a DomainError to refuse); nothing is saved."""
        now = self.clock()
        if at_occurred and cmd.occurred_at is not None and cmd.occurred_at < now:
            now = cmd.occurred_at
        provenance = self._provenance(cmd, now)
        result = handler_for(type(cmd))(cmd, CommandContext(program, account, provenance, now))
        view = AccountView.of(account, program.settings, now) if cmd.recorded else None
        return Outcome(provenance.transaction_id, 0, account=view, result=result)

    # ------------------------------------------------------------------ expiry

    def run_expiry(
        self,
        cmd: c.RunExpiry,
        member_ids: Callable[[datetime], Iterable[str]],
        execute: Callable[[list[c.AccountCommand]], list[Answer]],
    ) -> Outcome:
        """Expire every due lot of the program as of `cmd.as_of` (default now).

        `member_ids(as_of)` names the accounts that may have due lots (from the lots read
        model); each is checked against its aggregate, so a stale candidate does no harm.
        `execute` runs the per-account ExpireLots commands (the server: through each
        account's writer), 200 at a time. The request's record is saved after the last of
        them, so a retried request after a crash expires what is left (expiry is
        idempotent per instant) and then records its answer.
        """

        def attempt() -> Outcome:
            now = self.clock()
            as_of = cmd.as_of or now
            if as_of > now:
                raise errors.ExpiryInFuture("as_of is in the future; nothing can expire yet")
            self.get_program(cmd.program_id)
            transaction_id = cmd_transaction_id(cmd)
            totals = self._expire(cmd.program_id, member_ids(as_of), as_of, transaction_id, execute)
            result = ExpiryResult(*totals[:3])
            outcome = Outcome(transaction_id, totals[3], result=result)
            return self._commit(cmd, "", [], outcome, answered_by=totals[4])

        return self.idempotency.retrying(cmd, attempt)

    def sweep_expired_lots(
        self,
        program_id: str,
        as_of: datetime,
        member_ids: list[str],
        execute: Callable[[list[c.AccountCommand]], list[Answer]],
    ) -> int:
        """The scheduled sweep: expire due lots of the given accounts. Returns points expired."""
        transaction_id = derived_transaction_id(f"{program_id}@{as_of.isoformat()}", "sweep")
        return self._expire(program_id, member_ids, as_of, transaction_id, execute)[0]

    def _expire(
        self,
        program_id: str,
        member_ids: Iterable[str],
        as_of: datetime,
        transaction_id: str,
        execute: Callable[[list[c.AccountCommand]], list[Answer]],
    ) -> tuple[int, int, int, int, EventKey | None]:
        """(points, lots, accounts, position of the newest event, that event)."""
        points = lots = accounts = position = 0
        newest: EventKey | None = None
        for chunk in _chunks(member_ids, 200):
            commands: list[c.AccountCommand] = [
                c.ExpireLots(
                    program_id=program_id,
                    member_id=m,
                    as_of=as_of,
                    run_transaction_id=transaction_id,
                    occurred_at=as_of,
                )
                for m in chunk
            ]
            for answer in execute(commands):
                if isinstance(answer, errors.MemberNotFound):
                    continue  # a stale candidate
                if isinstance(answer, errors.DomainError):
                    raise answer
                assert isinstance(answer.result, ExpiryResult)
                points += answer.result.expired_points
                lots += answer.result.lots_expired
                accounts += answer.result.accounts_touched
                position = max(position, answer.position)
        if position:
            newest = self._event_at(position)
        return points, lots, accounts, position, newest

    def expire_holds(
        self,
        program_id: str,
        member_ids: list[str],
        execute: Callable[[list[c.AccountCommand]], list[Answer]],
    ) -> int:
        """Release the holds of these accounts whose TTL has run out (the sweeper's command).
        Idempotent by state: a hold already ended is left alone. Returns accounts changed."""
        now = self.clock()
        commands: list[c.AccountCommand] = [
            c.ExpireHolds(
                program_id=program_id,
                member_id=m,
                sweep_transaction_id=derived_transaction_id(
                    f"{account_id_key(program_id, m)}@{now.isoformat()}", "sweep"
                ),
            )
            for m in member_ids
        ]
        return sum(1 for a in execute(commands) if isinstance(a, Outcome) and a.position)

    # ------------------------------------------------------------------ machinery

    def _commit(
        self,
        cmd: c.Command,
        member_id: str,
        aggregates: Sequence[Aggregate],
        outcome: Outcome,
        answered_by: EventKey | None = None,
    ) -> Outcome:
        """Save the aggregates' new events and the request's record in one transaction.
        `answered_by`: the event whose position the answer reports (default: the newest
        event of the last of `aggregates`)."""
        if answered_by is None and aggregates:
            answered_by = (aggregates[-1].id, aggregates[-1].version)
        record = self.idempotency.record(cmd, member_id, outcome, answered_by)
        recordings = self.save(*aggregates, requests=[record])
        if not recordings:
            return outcome
        position = max(r.notification.id for r in recordings)
        self.saved(position)
        return replace(outcome, position=position)

    def load_accounts(self, account_ids: list[UUID]) -> dict[UUID, MemberAccount]:
        """The current state of these accounts (absent: no events), from the newest snapshot
        and the events after it. A load that replayed SNAPSHOT_AFTER_REPLAYING events or more
        saves a snapshot, so the next one does not: the cost falls on cold loads, which are
        slow anyway, never on the write path of an account a writer keeps in memory."""
        accounts: dict[UUID, MemberAccount] = {}
        snapshots: list[Snapshot] = []
        for account_id, stored in stored_events_of(self.database, account_ids).items():
            events = [self.mapper.to_domain_event(e) for e in stored]
            account: MemberAccount | None = project_aggregate(None, events)
            if account is None:
                continue
            accounts[account_id] = account
            replayed = len(events) - (1 if isinstance(events[0], Snapshot) else 0)
            if replayed >= SNAPSHOT_AFTER_REPLAYING:
                snapshots.append(Snapshot.take(account))
        if snapshots and self.snapshots is not None:
            with contextlib.suppress(IntegrityError):  # another process took the same one
                self.snapshots.put(snapshots)
        return accounts

    def _exists(self, aggregate_id: UUID) -> bool:
        return aggregate_id in existing_originators(self.database, [aggregate_id])

    def _event_at(self, position: int) -> EventKey | None:
        return event_at(self.database, position)

    def _provenance(self, cmd: c.AccountCommand, now: datetime) -> Provenance:
        notes = cmd.notes()
        return Provenance(
            transaction_id=cmd.new_transaction_id(),
            request_id=cmd.request_id,
            occurred_at=cmd.occurred_at or now,
            store_id=cmd.store_id,
            order_ref=notes.order_ref,
            reason=notes.reason,
            operator_id=notes.operator_id,
            reverses_transaction_id=notes.reverses_transaction_id,
        )

    def saved(self, position: int) -> None:
        if self.on_saved is not None:
            self.on_saved(position)


def cmd_transaction_id(cmd: c.Command) -> str:
    return str(request_id_key(cmd.program_id, cmd.request_id))


def _chunks(items: Iterable[str], size: int) -> Iterable[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
