"""Expiry: the on-demand RunExpiry of a program, the sweeper's scheduled sweeps of due lots
and of holds past their TTL, and the chunks of ExpireLots commands they send.

A mixin of LedgerApplication (service.py; why mixins: base.py). These never decide an
account themselves: they make one ExpireLots or ExpireHolds command per account and hand
them to `execute` (the server: each account's writer), so expiry is decided and saved like
any account command. Expiry is idempotent per instant, so a run repeated after a crash
expires what is left. It derives from ProgramUseCases because RunExpiry reads its program
first (`get_program`: the program must exist).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from ledger.application import commands as c
from ledger.application.base import cmd_transaction_id
from ledger.application.group import Answer
from ledger.application.idempotency import EventKey
from ledger.application.programs import ProgramUseCases
from ledger.application.results import ExpiryResult
from ledger.application.views import Outcome
from ledger.domain import errors
from ledger.domain.ids import account_id_key, derived_transaction_id


class ExpiryRuns(ProgramUseCases):
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


def _chunks(items: Iterable[str], size: int) -> Iterable[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
