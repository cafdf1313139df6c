"""The ledger application: one method per use case.

Each command method loads the aggregates it needs, lets them decide, and saves their new
events together with the request's idempotency record in ONE transaction (`save(a, record)`).
A concurrent writer of the same account or the same request_id makes that save fail with
IntegrityError; the method then starts again from the top, where it either finds the other
writer's record (a duplicate: answer with the recorded response) or re-decides against the
account's new state. A refused command raises before anything is saved.
"""

from __future__ import annotations

import contextlib
import copy
import random
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
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
from ledger.application.transcodings import account_transcodings
from ledger.application.views import AccountView, Outcome, ProgramView
from ledger.domain import errors
from ledger.domain.account import MemberAccount
from ledger.domain.ids import account_id_key, derived_transaction_id, program_id_key
from ledger.domain.program import Program, ProgramSettingsAsDict
from ledger.domain.provenance import Provenance, ProvenanceAsDict
from ledger.domain.request import RequestRecord
from ledger.infrastructure.database import Database
from ledger.infrastructure.eventlog import existing_originators, stored_events_of
from ledger.infrastructure.requests import StoredRequest, existing_requests, find_request

MAX_ATTEMPTS = 20
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class CommandContext:
    """What a use case body works with, loaded fresh on every attempt."""

    program: Program
    account: MemberAccount
    provenance: Provenance
    now: datetime


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
            transaction_id = str(RequestRecord.create_id(cmd.program_id, cmd.request_id))
            program = Program(
                program_id=cmd.program_id, settings=cmd.settings, transaction_id=transaction_id
            )
            return self._commit(
                cmd, "", [program], Outcome(transaction_id, 0, program=ProgramView.of(program))
            )

        return self._idempotent(cmd, attempt)

    def update_program(self, cmd: c.UpdateProgram) -> Outcome:
        def attempt() -> Outcome:
            try:
                program: Program = self.repository.get(program_id_key(cmd.program_id))
            except AggregateNotFoundError:
                raise errors.ProgramNotFound(
                    f"program {cmd.program_id} does not exist", program_id=cmd.program_id
                ) from None
            transaction_id = str(RequestRecord.create_id(cmd.program_id, cmd.request_id))
            program.update(cmd.changes, transaction_id)
            return self._commit(
                cmd, "", [program], Outcome(transaction_id, 0, program=ProgramView.of(program))
            )

        return self._idempotent(cmd, attempt)

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

    def enroll_member(self, cmd: c.EnrollMember) -> Outcome:
        def attempt() -> Outcome:
            program = self.get_program(cmd.program_id)
            if self._exists(account_id_key(cmd.program_id, cmd.member_id)):
                raise errors.MemberAlreadyEnrolled(
                    f"member {cmd.member_id} is already enrolled", member_id=cmd.member_id
                )
            outcome, account = self._enroll(cmd, program)
            return self._commit(cmd, cmd.member_id, [account], outcome)

        return self._idempotent(cmd, attempt)

    def _enroll(self, cmd: c.EnrollMember, program: Program) -> tuple[Outcome, MemberAccount]:
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
        account = self._load_accounts([account_id]).get(account_id)
        if account is None:
            raise errors.MemberNotFound(
                f"member {member_id} is not enrolled in program {program_id}",
                member_id=member_id,
            )
        return account

    # ------------------------------------------------------------------ points

    def earn(self, cmd: c.EarnPoints) -> Outcome:
        return self.execute(cmd)

    def redeem(self, cmd: c.RedeemPoints) -> Outcome:
        return self.execute(cmd)

    def hold(self, cmd: c.HoldPoints) -> Outcome:
        return self.execute(cmd)

    def capture_hold(self, cmd: c.CaptureHold) -> Outcome:
        return self.execute(cmd)

    def release_hold(self, cmd: c.ReleaseHold) -> Outcome:
        return self.execute(cmd)

    def adjust(self, cmd: c.AdjustPoints) -> Outcome:
        return self.execute(cmd)

    def reverse(self, cmd: c.ReverseTransaction) -> Outcome:
        return self.execute(cmd)

    def execute(self, cmd: c.AccountCommand, at_occurred: bool = False) -> Outcome:
        """Run one account command on its own (the group-commit writer runs many at once)."""
        if isinstance(cmd, c.EnrollMember):
            return self.enroll_member(cmd)

        def attempt() -> Outcome:
            program = self.get_program(cmd.program_id)
            account = self.get_account(cmd.program_id, cmd.member_id)
            outcome = self.decide(cmd, program, account, at_occurred)
            return self._commit(cmd, cmd.member_id, [account], outcome)

        return self._idempotent(cmd, attempt)

    def execute_group(
        self,
        cmds: Sequence[c.AccountCommand],
        cache: MutableMapping[UUID, MemberAccount],
        atomic: bool = False,
        look_for_duplicates: bool = False,
        at_occurred: bool = False,
    ) -> list[Outcome | errors.DomainError]:
        """Group commit: decide every command against its account, in order, and save all
        their events and request records in ONE transaction.

        `cache` holds the caller's accounts between groups (the caller is the only writer of
        them in this process; another process writing one makes our save conflict, and the
        conflicting group is then re-run in halves against fresh state, down to single
        commands, so no innocent command fails). A refused command is answered with its
        DomainError and changes nothing (aggregates decide before they mutate).

        `atomic`: all or nothing. If any command is refused, nothing is saved and the others
        are answered with AtomicBatchAborted; a conflict re-runs the whole group.

        Requests already recorded are not looked up first: a retried request is rare, and its
        record's id makes the save fail like any conflict. The group is then run again with
        `look_for_duplicates`, which answers those from their records, before it is split.

        EnrollMember may be one of the commands (an import enrolls its members this way): it
        creates the account, which later commands of the group then use.

        `at_occurred` (imports of history): each command is decided as of its occurred_at
        when that is in the past, so expiry and holds are judged as they stood then.
        """
        record_ids = [RequestRecord.create_id(x.program_id, x.request_id) for x in cmds]
        enrolling = [
            account_id_key(x.program_id, x.member_id) for x in cmds if isinstance(x, c.EnrollMember)
        ]
        enrolled = existing_originators(self.database, enrolling) if enrolling else set()
        # Accounts this writer has not cached: read them all in one query, not one each.
        cold = {
            key
            for x in cmds
            if not isinstance(x, c.EnrollMember)
            and (key := account_id_key(x.program_id, x.member_id)) not in cache
        }
        loaded = self._load_accounts(list(cold)) if len(cold) > 1 else {}
        recorded = (
            existing_requests(self.database, record_ids) if look_for_duplicates or atomic else set()
        )
        results: list[Outcome | errors.DomainError | None] = [None] * len(cmds)
        first_of: dict[UUID, int] = {}
        touched: dict[UUID, MemberAccount] = {}
        records: list[StoredRequest] = []
        answered_by: dict[UUID, tuple[UUID, int]] = {}  # record id -> its account event
        programs: dict[str, Program] = {}
        try:
            for i, cmd in enumerate(cmds):
                record_id = record_ids[i]
                if record_id in recorded or record_id in first_of:
                    continue  # answered after the commit, from the recorded outcome
                try:
                    if cmd.program_id not in programs:
                        programs[cmd.program_id] = self.get_program(cmd.program_id)
                    account_id = account_id_key(cmd.program_id, cmd.member_id)
                    if isinstance(cmd, c.EnrollMember):
                        if account_id in touched or account_id in cache or account_id in enrolled:
                            raise errors.MemberAlreadyEnrolled(
                                f"member {cmd.member_id} is already enrolled",
                                member_id=cmd.member_id,
                            )
                        outcome, touched[account_id] = self._enroll(cmd, programs[cmd.program_id])
                        first_of[record_id] = i
                        results[i] = outcome
                        answered_by[record_id] = (account_id, 1)
                        records.append(
                            self._stored(cmd, cmd.member_id, outcome, touched[account_id])
                        )
                        continue
                    if account_id not in touched:
                        known = cache.get(account_id)
                        if known is None:
                            known = loaded.get(account_id)
                        touched[account_id] = (
                            known
                            if known is not None
                            else (self.get_account(cmd.program_id, cmd.member_id))
                        )
                    account = touched[account_id]
                    outcome = self.decide(cmd, programs[cmd.program_id], account, at_occurred)
                except errors.DomainError as refusal:
                    results[i] = refusal
                    continue
                first_of[record_id] = i
                results[i] = outcome
                answered_by[record_id] = (account.id, account.version)
                records.append(self._stored(cmd, cmd.member_id, outcome, account))
            positions: dict[tuple[UUID, int], int] = {}
            if atomic and any(isinstance(r, errors.DomainError) for r in results):
                for account_id in touched:
                    cache.pop(account_id, None)
                return [
                    r
                    if isinstance(r, errors.DomainError)
                    else errors.AtomicBatchAborted(
                        "not applied: another command of this atomic batch was refused"
                    )
                    for r in results
                ]
            if records:
                recordings = self.save(*touched.values(), requests=records)
                positions = {
                    (r.domain_event.originator_id, r.domain_event.originator_version): (
                        r.notification.id
                    )
                    for r in recordings
                }
                self._saved(max(positions.values()))
        except IntegrityError:
            for account_id in touched:
                cache.pop(account_id, None)
            if atomic:
                raise  # execute_atomic starts the whole group again
            if not look_for_duplicates:
                return self.execute_group(
                    cmds, cache, look_for_duplicates=True, at_occurred=at_occurred
                )
            if len(cmds) == 1:
                return [self._answer(lambda: self.execute(cmds[0], at_occurred))]
            half = len(cmds) // 2
            return [
                *self.execute_group(
                    cmds[:half], cache, look_for_duplicates=True, at_occurred=at_occurred
                ),
                *self.execute_group(
                    cmds[half:], cache, look_for_duplicates=True, at_occurred=at_occurred
                ),
            ]
        except BaseException:
            for account_id in touched:
                cache.pop(account_id, None)
            raise
        cache.update(touched)
        if not look_for_duplicates:
            # A refusal may be a replay of a request recorded earlier: answer those from
            # their records (one query, only when something was refused).
            refused = [
                record_ids[i] for i, r in enumerate(results) if isinstance(r, errors.DomainError)
            ]
            for record_id in existing_requests(self.database, refused) if refused else ():
                for i, other in enumerate(record_ids):
                    if other == record_id:
                        results[i] = None
        answers: list[Outcome | errors.DomainError] = []
        for i, cmd in enumerate(cmds):
            result = results[i]
            if isinstance(result, Outcome):
                result = replace(result, position=positions[answered_by[record_ids[i]]])
            elif result is None:  # recorded before, or earlier in this group
                result = self._answer(lambda cmd=cmd: self.execute(cmd))  # type: ignore[misc]
            answers.append(result)
        return answers

    def execute_atomic(
        self, cmds: Sequence[c.AccountCommand]
    ) -> list[Outcome | errors.DomainError]:
        """All or nothing, in one transaction, against freshly loaded accounts."""
        for _ in range(MAX_ATTEMPTS):
            try:
                return self.execute_group(cmds, {}, atomic=True)
            except IntegrityError:
                _backoff()
        raise errors.WriteConflict("the atomic batch kept conflicting with concurrent writers")

    @staticmethod
    def _answer(run: Callable[[], Outcome]) -> Outcome | errors.DomainError:
        try:
            return run()
        except errors.DomainError as e:
            return e

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
        details = decide(cmd, CommandContext(program, account, provenance, now))
        view = AccountView.of(account, program.settings, now)
        return Outcome(provenance.transaction_id, 0, account=view, details=details)

    # ------------------------------------------------------------------ expiry and holds

    def run_expiry(
        self, cmd: c.RunExpiry, member_ids: Callable[[datetime], Iterable[str]]
    ) -> Outcome:
        """Expire every due lot of the program as of `cmd.as_of` (default now).

        `member_ids(as_of)` names the accounts that may have due lots (from the lots read
        model); each is checked against its aggregate, so a stale candidate does no harm.
        Accounts are saved in chunks; the request record goes with the last chunk, so a
        retried request after a crash simply expires what is left (expiry is idempotent).
        """

        def attempt() -> Outcome:
            now = self.clock()
            as_of = cmd.as_of or now
            if as_of > now:
                raise errors.ExpiryInFuture("as_of is in the future; nothing can expire yet")
            transaction_id = str(RequestRecord.create_id(cmd.program_id, cmd.request_id))
            self.get_program(cmd.program_id)
            provenance = Provenance(
                transaction_id=transaction_id,
                request_id=cmd.request_id,
                occurred_at=as_of,
                reason="points expired",
            )
            expired_points = lots = accounts = position = 0
            last: MemberAccount | None = None  # the newest event written answers for us
            for chunk in _chunks(member_ids(as_of), 200):
                points, count, touched, saved = self._expire_chunk(
                    cmd.program_id, chunk, as_of, provenance
                )
                expired_points += points
                lots += count
                accounts += len(touched)
                if touched:
                    last, position = touched[-1], saved
            details = {
                "expired_points": expired_points,
                "lots_expired": lots,
                "accounts_touched": accounts,
            }
            outcome = Outcome(transaction_id, position, details=details)
            return self._commit(cmd, "", [], outcome, answered_by=last)

        return self._idempotent(cmd, attempt)

    def _expire_chunk(
        self, program_id: str, member_ids: list[str], as_of: datetime, provenance: Provenance
    ) -> tuple[int, int, list[MemberAccount], int]:
        """(points expired, lots expired, accounts saved, position of the newest event)."""
        for _ in range(MAX_ATTEMPTS):
            touched: list[MemberAccount] = []
            points = lots = 0
            for member_id in member_ids:
                account = self.get_account(program_id, member_id)
                due = account.expire_lots(as_of, provenance)
                if due:
                    touched.append(account)
                    points += sum(due.values())
                    lots += len(due)
            if not touched:
                return 0, 0, [], 0
            try:
                recordings = self.save(*touched)
            except IntegrityError:
                _backoff()
                continue
            position = max(r.notification.id for r in recordings)
            self._saved(position)
            return points, lots, touched, position
        raise errors.WriteConflict("expiry kept conflicting with other writers")

    def sweep_expired_lots(self, program_id: str, as_of: datetime, member_ids: list[str]) -> int:
        """The scheduled sweep: expire due lots of the given accounts. Returns points expired."""
        provenance = Provenance(
            transaction_id=derived_transaction_id(f"{program_id}@{as_of.isoformat()}", "sweep"),
            request_id="",
            occurred_at=as_of,
            reason="points expired",
        )
        expired = 0
        for chunk in _chunks(member_ids, 200):
            expired += self._expire_chunk(program_id, chunk, as_of, provenance)[0]
        return expired

    def expire_holds(self, program_id: str, member_id: str) -> int:
        """Release the holds of one account whose TTL has run out (the sweeper's command).

        Idempotent by state: a hold already ended is left alone. Returns the position."""
        for _ in range(MAX_ATTEMPTS):
            account = self.get_account(program_id, member_id)
            now = self.clock()
            if not any(h.expires_at <= now for h in account.holds.values()):
                return 0
            sweep = Provenance(
                transaction_id=derived_transaction_id(f"{account.id}@{now.isoformat()}", "sweep"),
                request_id="",
                occurred_at=now,
                reason="hold sweep",
            )
            account.bring_up_to(now, sweep)
            try:
                recordings = self.save(account)
            except IntegrityError:
                _backoff()
                continue
            position = max(r.notification.id for r in recordings)
            self._saved(position)
            return position
        raise errors.WriteConflict("hold expiry kept conflicting with other writers")

    # ------------------------------------------------------------------ machinery

    def _idempotent(self, cmd: c.Command, attempt: Callable[[], Outcome]) -> Outcome:
        record_id = RequestRecord.create_id(cmd.program_id, cmd.request_id)
        for _ in range(MAX_ATTEMPTS):
            previous = self._find_request(record_id)
            if previous is not None:
                return self._replay(*previous, cmd)
            try:
                return attempt()
            except IntegrityError:
                # Another writer got there first: the account moved on, or the same
                # request_id was recorded. Look again.
                _backoff()
            except errors.DomainError:
                # A copy of this request may have committed after we looked: then its
                # outcome is the answer, not a refusal decided against the state it made.
                previous = self._find_request(record_id)
                if previous is not None:
                    return self._replay(*previous, cmd)
                raise
        raise errors.WriteConflict("the command kept conflicting with concurrent writers")

    def _stored(
        self, cmd: c.Command, member_id: str, outcome: Outcome, answered_by: Aggregate | None
    ) -> StoredRequest:
        """The request's idempotency record, encoded for the requests table."""
        return StoredRequest(
            record_id=RequestRecord.create_id(cmd.program_id, cmd.request_id),
            program_id=cmd.program_id,
            request_id=cmd.request_id,
            command=cmd.name,
            request_hash=cmd.fingerprint(),
            member_id=member_id,
            response=self.mapper.transcoder.encode(outcome.to_record()),
            originator_id=answered_by.id if answered_by else None,
            originator_version=answered_by.version if answered_by else None,
        )

    def _commit(
        self,
        cmd: c.Command,
        member_id: str,
        aggregates: Sequence[Aggregate],
        outcome: Outcome,
        answered_by: Aggregate | None = None,
    ) -> Outcome:
        """Save the aggregates' new events and the request's record in one transaction.
        `answered_by`: the aggregate whose newest event's position the answer reports
        (default: the last of `aggregates`)."""
        if answered_by is None and aggregates:
            answered_by = aggregates[-1]
        record = self._stored(cmd, member_id, outcome, answered_by)
        recordings = self.save(*aggregates, requests=[record])
        if not recordings:
            return outcome
        position = max(r.notification.id for r in recordings)
        self._saved(position)
        return replace(outcome, position=position)

    def _replay(self, record: RequestRecord, position: int, cmd: c.Command) -> Outcome:
        if record.request_hash != cmd.fingerprint() or record.command != cmd.name:
            raise errors.IdempotencyKeyReused(
                f"request_id {cmd.request_id!r} was used for a different request",
                request_id=cmd.request_id,
            )
        return replace(Outcome.from_record(record.response, position), replayed=True)

    def _find_request(self, record_id: UUID) -> tuple[RequestRecord, int] | None:
        found = find_request(self.database, record_id)
        if found is None:
            return None
        row, position = found
        record = RequestRecord(
            program_id=row.program_id,
            request_id=row.request_id,
            command=row.command,
            request_hash=row.request_hash,
            member_id=row.member_id,
            response=self.mapper.transcoder.decode(row.response),
            originator_id=row.originator_id,
            originator_version=row.originator_version,
        )
        return record, position

    def _load_accounts(self, account_ids: list[UUID]) -> dict[UUID, MemberAccount]:
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

    def _provenance(self, cmd: c.AccountCommand, now: datetime) -> Provenance:
        return Provenance(
            transaction_id=str(RequestRecord.create_id(cmd.program_id, cmd.request_id)),
            request_id=cmd.request_id,
            occurred_at=cmd.occurred_at or now,
            store_id=cmd.store_id,
            order_ref=getattr(cmd, "order_ref", ""),
            reason=getattr(cmd, "reason", ""),
            operator_id=getattr(cmd, "operator_id", ""),
            reverses_transaction_id=(
                cmd.transaction_id if isinstance(cmd, c.ReverseTransaction) else ""
            ),
        )

    def _saved(self, position: int) -> None:
        if self.on_saved is not None:
            self.on_saved(position)


# ---------------------------------------------------------------------- decisions


def decide(cmd: c.AccountCommand, ctx: CommandContext) -> dict[str, Any]:
    """Call the account's method for `cmd`; return the command-specific response fields."""
    account, provenance, now = ctx.account, ctx.provenance, ctx.now
    settings = ctx.program.settings
    if isinstance(cmd, c.EarnPoints):
        expires_at = cmd.expires_at or settings.expiry_policy.expires_at(
            provenance.occurred_at, settings.time_zone
        )
        repaid = account.earn(
            provenance, now, cmd.points, cmd.purchase_minor, expires_at, cmd.qualifying
        )
        return {"lot_id": provenance.transaction_id, "debt_repaid": repaid}
    if isinstance(cmd, c.RedeemPoints):
        return {"consumed": account.redeem(provenance, now, cmd.points)}
    if isinstance(cmd, c.HoldPoints):
        hold = account.hold(provenance, now, cmd.points, timedelta(seconds=cmd.ttl_seconds))
        return {"hold_id": hold.hold_id, "expires_at": hold.expires_at}
    if isinstance(cmd, c.CaptureHold):
        consumed, released = account.capture_hold(provenance, now, cmd.hold_id, cmd.points)
        return {
            "consumed": consumed,
            "points_captured": sum(consumed.values()),
            "points_released": sum(released.values()),
        }
    if isinstance(cmd, c.ReleaseHold):
        returned = account.release_hold(provenance, now, cmd.hold_id)
        return {"points_released": sum(returned.values())}
    if isinstance(cmd, c.AdjustPoints):
        expires_at = settings.expiry_policy.expires_at(provenance.occurred_at, settings.time_zone)
        account.adjust(provenance, now, cmd.points, expires_at)
        return {}
    if isinstance(cmd, c.ReverseTransaction):
        points, debt_added = account.reverse(provenance, now, cmd.transaction_id, cmd.points)
        return {
            "points_reversed": points,
            "debt_added": debt_added,
            "reverses_transaction_id": cmd.transaction_id,
        }
    raise TypeError(f"not an account command: {type(cmd).__name__}")


def _backoff() -> None:
    time.sleep(random.uniform(0.0005, 0.005))


def _chunks(items: Iterable[str], size: int) -> Iterable[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
