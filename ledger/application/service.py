"""The ledger application: the account commands (enroll, execute and its group commit, the
retries after a conflict, decide, loading accounts), and LedgerApplication, composed of
them and the mixins for programs (programs.py) and expiry (expiry.py) on what they all stand
on (base.py: the clock, the request records, one transaction per save; why mixins: there).

An account command is decided by its handler (handlers.py) against its account and saved
with its idempotency record in ONE transaction, in a group with the commands that arrived
with it (group.py; the server's writers, group_commit.py, form the groups). A concurrent
writer of the same account or the same request_id makes the save fail with IntegrityError;
the group is then run again, and a request recorded meanwhile is answered from its record
(idempotency.py). A refused command writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence
from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Snapshot
from eventsourcing.persistence import IntegrityError

from ledger.application import commands as c
from ledger.application.base import utc_now
from ledger.application.expiry import ExpiryRuns
from ledger.application.group import Answer, CommandCrashed, CommandGroup, drop_tracebacks
from ledger.application.handlers import CommandContext, handler_for
from ledger.application.idempotency import MAX_ATTEMPTS, backoff
from ledger.application.programs import ProgramUseCases
from ledger.application.views import AccountView, Outcome
from ledger.domain import errors
from ledger.domain.account import MemberAccount
from ledger.domain.ids import account_id_key
from ledger.domain.program import Program
from ledger.domain.provenance import Provenance
from ledger.domain.replay import replay
from ledger.infrastructure.eventlog import stored_events_of

# utc_now (base.py) is re-exported: ledger/runtime.py imports it from here.
__all__ = ["SNAPSHOT_AFTER_REPLAYING", "LedgerApplication", "utc_now"]

log = logging.getLogger(__name__)


# A load that had to replay this many events leaves a snapshot behind (decision 10).
SNAPSHOT_AFTER_REPLAYING = 200


class LedgerApplication(ExpiryRuns, ProgramUseCases):
    """Programs (programs.py), expiry (expiry.py), the account commands (here), all on
    LedgerBase (base.py)."""

    name = "Ledger"
    is_snapshotting_enabled = True

    # ------------------------------------------------------------------ members

    def enroll(self, cmd: c.EnrollMember, program: Program) -> tuple[Outcome, MemberAccount]:
        """A new account (unsaved); the caller has checked that the member is not enrolled."""
        now = self.clock()
        provenance = self._provenance(cmd, now, program)
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
        failed: dict[int, errors.InternalFault] = {}  # commands whose own code raised
        while True:
            kept = [i for i in range(len(cmds)) if i not in failed]
            group = CommandGroup(
                self, [cmds[i] for i in kept], cache, atomic, look_for_duplicates, at_occurred
            )
            try:
                answers = group.run()
            except IntegrityError as conflict:
                group.forget()
                drop_tracebacks(conflict)
                if atomic:
                    raise  # execute_atomic starts the whole group again
                answers = self._after_conflict(
                    [cmds[i] for i in kept], cache, look_for_duplicates, at_occurred, attempt
                )
            except CommandCrashed as crash:
                # Again without it (a loop, not a recursion: a whole group may fail so).
                group.forget()
                index = kept[crash.index]
                failed[index] = self._fault(cmds[index], crash.error)  # logged, with where
                drop_tracebacks(crash)
                if atomic:
                    return [
                        failed.get(i)
                        or errors.AtomicBatchAborted(
                            "not applied: another command of this atomic batch failed"
                        )
                        for i in range(len(cmds))
                    ]
                continue
            except BaseException:
                group.forget()
                raise
            merged: list[Answer] = []
            answered = iter(answers)
            for i in range(len(cmds)):
                merged.append(failed[i] if i in failed else next(answered))
            return merged

    @staticmethod
    def _fault(cmd: c.AccountCommand, error: BaseException) -> errors.InternalFault:
        log.error(
            "%s %s for member %s of program %s failed; the rest of its group goes on",
            cmd.name,
            cmd.request_id or "(housekeeping)",
            cmd.member_id,
            cmd.program_id,
            exc_info=error,
        )
        return errors.InternalFault(
            f"the server could not apply this {cmd.name} command; it was not applied"
        )

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
        backoff(attempt)
        return self.execute_group(cmds, cache, False, True, at_occurred, attempt + 1)

    def execute_atomic(
        self,
        cmds: Sequence[c.AccountCommand],
        cache: MutableMapping[UUID, MemberAccount] | None = None,
    ) -> list[Answer]:
        """All or nothing, in one transaction."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                return self.execute_group(cmds, {} if cache is None else cache, atomic=True)
            except IntegrityError as conflict:
                drop_tracebacks(conflict)
                backoff(attempt)
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
        provenance = self._provenance(cmd, now, program)
        result = handler_for(type(cmd))(cmd, CommandContext(program, account, provenance, now))
        view = AccountView.of(account, program.settings, now) if cmd.recorded else None
        return Outcome(provenance.transaction_id, 0, account=view, result=result)

    # ------------------------------------------------------------------ loading and provenance

    def load_accounts(self, account_ids: list[UUID]) -> dict[UUID, MemberAccount]:
        """The current state of these accounts (absent: no events), from the newest snapshot
        and the events after it. A load that replayed SNAPSHOT_AFTER_REPLAYING events or more
        saves a snapshot, so the next one does not: the cost falls on cold loads, which are
        slow anyway, never on the write path of an account a writer keeps in memory."""
        accounts: dict[UUID, MemberAccount] = {}
        snapshots: list[Snapshot] = []
        for account_id, stored in stored_events_of(self.database, account_ids).items():
            events = [self.mapper.to_domain_event(e) for e in stored]
            account: MemberAccount | None = replay(None, events)
            if account is None:
                continue
            accounts[account_id] = account
            replayed = len(events) - (1 if isinstance(events[0], Snapshot) else 0)
            if replayed >= SNAPSHOT_AFTER_REPLAYING:
                snapshots.append(Snapshot.take(account))
        if snapshots and self.snapshots is not None:
            try:
                self.snapshots.put(snapshots)
            except IntegrityError as taken:  # another process took the same one
                drop_tracebacks(taken)
        return accounts

    def _provenance(self, cmd: c.AccountCommand, now: datetime, program: Program) -> Provenance:
        """Who, where, why, and the programme version the command is decided under."""
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
            program_version=program.version,
        )
