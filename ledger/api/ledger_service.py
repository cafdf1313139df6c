"""LedgerService: each RPC parses its request into a command or query, runs it, and maps the
outcome (or the domain error) to the response. Blocking work runs on a thread pool; the
event loop only translates."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import grpc

from ledger.api import descriptors, page_tokens
from ledger.api import requests as parse
from ledger.api import responses as present
from ledger.api.errors import (
    InvalidArgument,
    Unavailable,
    domain_status,
    invalid_argument_status,
    to_grpc,
    unexpected_status,
)
from ledger.api.validation import Violations
from ledger.application.commands import AccountCommand
from ledger.application.group_commit import Overloaded
from ledger.application.views import Outcome
from ledger.domain import errors
from ledger.domain.tier_history import TierCause
from ledger.runtime import Tally
from ledger.tier_queries import TierQueries, rules_versions
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc
from projections.points import NAME as POINTS

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_WAIT_SECONDS = 30.0
# The read models the account queries read (GetAccount, ListTransactions, ListLots, and
# RunExpiry's candidates).
READS = (POINTS,)

Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def rpc(method: Handler) -> Handler:
    """Map failures to rich statuses. Bad input never becomes INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except (InvalidArgument, errors.DomainError, Unavailable) as e:
            await abort_for(e, context)
        except grpc.aio.AbortError:
            raise  # the method ended the call with its own status
        except Exception as e:
            if (status := unexpected_status(e)) is not None:  # the database is away: retryable
                await context.abort_with_status(to_grpc(status))
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "the server failed on this request")

    return wrapper


async def abort_for(
    error: InvalidArgument | errors.DomainError | Unavailable, context: grpc.aio.ServicerContext
) -> None:
    """End the call with the status for one of our errors (a streaming RPC calls this itself:
    `rpc` cannot wrap an async generator)."""
    if isinstance(error, InvalidArgument):
        await context.abort_with_status(to_grpc(invalid_argument_status(error)))
    elif isinstance(error, errors.DomainError):
        await context.abort_with_status(to_grpc(domain_status(error)))
    else:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))


def processed(tally: Tally, reads: tuple[str, ...]) -> int:
    """The log position every read model in `reads` has processed."""
    return min(tally.projections[name].position for name in reads)


async def reached(
    tally: Tally, position: int, context: grpc.aio.ServicerContext, reads: tuple[str, ...]
) -> None:
    """Read-your-writes (`min_position`): wait until the read models a query reads have
    processed `position`, within the call's deadline (30 s at most)."""
    if processed(tally, reads) >= position:
        return
    remaining = context.time_remaining()
    budget = MAX_WAIT_SECONDS if remaining is None else min(remaining, MAX_WAIT_SECONDS)
    deadline = asyncio.get_running_loop().time() + budget
    for name in reads:
        tally.projections[name].wake()
    while (at := processed(tally, reads)) < position:
        if asyncio.get_running_loop().time() >= deadline:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED
                if remaining is not None
                else grpc.StatusCode.UNAVAILABLE,
                f"projections are at position {at}, not yet {position}",
            )
        await asyncio.sleep(0.002)


class LedgerServicer(pb_grpc.LedgerServiceServicer):
    def __init__(self, tally: Tally, executor: ThreadPoolExecutor) -> None:
        self.tally = tally
        self.app = tally.app
        self.executor = executor

    async def _command(self, cmd: AccountCommand) -> Outcome:
        """Account commands go to their account's group-commit writer."""
        try:
            future = self.tally.writer.submit(cmd)
        except Overloaded as e:
            raise Unavailable(str(e)) from None
        return await asyncio.wrap_future(future)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    def _position(self, reads: tuple[str, ...]) -> int:
        return processed(self.tally, reads)

    async def _reached(
        self, position: int, context: grpc.aio.ServicerContext, reads: tuple[str, ...] = READS
    ) -> None:
        await reached(self.tally, position, context, reads)

    # ------------------------------------------------------------------ programs

    @rpc
    async def CreateProgram(self, request: Any, context: Any) -> pb.CreateProgramResponse:
        outcome = await self._run(self.app.create_program, parse.create_program(request))
        return pb.CreateProgramResponse(
            program=present.program(outcome.program),
            transaction_id=outcome.transaction_id,
            position=outcome.position,
        )

    @rpc
    async def UpdateProgram(self, request: Any, context: Any) -> pb.UpdateProgramResponse:
        outcome = await self._run(self.app.update_program, parse.update_program(request))
        return pb.UpdateProgramResponse(
            program=present.program(outcome.program),
            transaction_id=outcome.transaction_id,
            position=outcome.position,
        )

    @rpc
    async def GetProgram(self, request: Any, context: Any) -> pb.GetProgramResponse:
        program_id, as_of = parse.get_program(request, self.app.clock())
        view = await self._run(self.app.program_view, program_id, as_of)
        return pb.GetProgramResponse(program=present.program(view))

    # ------------------------------------------------------------------ tier history

    @rpc
    async def ListTierHistory(self, request: Any, context: Any) -> pb.ListTierHistoryResponse:
        """Projected from the points read model at each call (ledger/tier_queries.py,
        decision 21); `until` may be later than now: the changes the window makes by then
        to what is recorded now."""
        v = Violations()
        v.identifier("program_id", request.program_id)
        v.identifier("member_id", request.member_id)
        v.non_negative("min_position", request.min_position, limit=2**63 - 1)
        since = v.timestamp("since", request.since, request.HasField("since"))
        until = v.timestamp("until", request.until, request.HasField("until"))
        if since is not None and until is not None and since >= until:
            v.add("until", "must be after since")
        v.raise_if_any()
        await self._reached(request.min_position, context)
        versions = await self._run(self.app.program_versions, request.program_id)
        history = await self._run(
            TierQueries(self.tally.database).history,
            request.program_id,
            request.member_id,
            rules_versions(versions),
            since,
            self.app.clock() if until is None else until,
            until is None,
        )
        if history is None:
            raise errors.MemberNotFound(
                f"member {request.member_id} is not enrolled in program {request.program_id}",
                member_id=request.member_id,
            )
        causes = {
            TierCause.EARN: pb.TIER_CHANGE_CAUSE_EARN,
            TierCause.REVERSAL: pb.TIER_CHANGE_CAUSE_REVERSAL,
            TierCause.WINDOW: pb.TIER_CHANGE_CAUSE_WINDOW,
            TierCause.RULES: pb.TIER_CHANGE_CAUSE_RULES,
        }
        return pb.ListTierHistoryResponse(
            changes=[
                pb.TierChange(
                    changed_at=present.timestamp(c.changed_at),
                    from_tier_code=c.from_tier_code,
                    to_tier_code=c.to_tier_code,
                    cause=causes[c.cause],
                    transaction_id=c.transaction_id,
                    qualifying_points=c.qualifying_points,
                    program_version=c.program_version,
                )
                for c in history.changes
            ],
            tier_code=history.tier_code,
        )

    # ------------------------------------------------------------------ commands

    # Account commands (EnrollMember, Earn, ...): made from ledger/api/descriptors.py below.

    @rpc
    async def RunExpiry(self, request: Any, context: Any) -> pb.RunExpiryResponse:
        cmd = parse.run_expiry(request, self.app.clock())
        # The lots read model names the candidates: let it catch up with the log first.
        latest = await self._run(self.tally.app.recorder.max_notification_id)
        await self._reached(latest or 0, context)
        queries = self.tally.queries
        outcome = await self._run(
            self.app.run_expiry,
            cmd,
            lambda as_of: queries.members_with_due_lots(cmd.program_id, as_of),
            self.tally.execute,
        )
        return present.run_expiry(outcome)

    @rpc
    async def ExecuteBatch(self, request: Any, context: Any) -> pb.ExecuteBatchResponse:
        """Many commands in one call: each idempotent, validated and decided like a single
        one. Not atomic: they go to their accounts' writers and commit in groups. Atomic:
        one transaction, all or nothing."""
        parsed = parse.batch(request, self.app.clock())
        commands = [p for p in parsed if not isinstance(p, InvalidArgument)]
        answers: list[Outcome | errors.DomainError]
        if request.atomic:
            if len(commands) < len(parsed):
                answers = [
                    errors.AtomicBatchAborted(
                        "not applied: another command of this atomic batch was invalid"
                    )
                    for _ in commands
                ]
            else:
                answers = await self._atomic(commands)
        else:
            answers = await self._commands(commands)
        results: list[pb.BatchResult] = []
        position = 0
        outcomes = iter(answers)
        for index, item in enumerate(parsed):
            if isinstance(item, InvalidArgument):
                results.append(pb.BatchResult(error=invalid_argument_status(item)))
                continue
            answer = next(outcomes)
            if isinstance(answer, errors.DomainError):
                # A field the account refused is named where it sits in the batch, as the
                # stateless checks name theirs.
                kind = request.commands[index].WhichOneof("command")
                prefix = f"commands[{index}].{kind}."
                results.append(pb.BatchResult(error=domain_status(answer, prefix)))
            else:
                position = max(position, answer.position)
                field = descriptors.of(item).batch_field
                assert field is not None
                results.append(pb.BatchResult(**{field: descriptors.of(item).present(answer)}))
        return pb.ExecuteBatchResponse(results=results, position=position)

    async def _atomic(self, cmds: list[AccountCommand]) -> list[Outcome | errors.DomainError]:
        try:
            future = self.tally.writer.submit_atomic(cmds)
        except Overloaded as e:
            raise Unavailable(str(e)) from None
        return await asyncio.wrap_future(future)

    async def _commands(self, cmds: list[AccountCommand]) -> list[Outcome | errors.DomainError]:
        try:
            future = self.tally.writer.submit_batch(cmds)
        except Overloaded as e:
            raise Unavailable(str(e)) from None
        return await asyncio.wrap_future(future)

    # ------------------------------------------------------------------ queries

    @rpc
    async def GetAccount(self, request: Any, context: Any) -> pb.GetAccountResponse:
        program_id, member_id, min_position = parse.member_query(request)
        as_of = self._as_of(request)
        if as_of is not None:
            await self._reached_as_of(min_position, context)
            program = await self._run(self.app.program_as_of, program_id, as_of)
            position = self._position(READS)
            view = await self._run(
                self.tally.queries.account_as_of, program_id, member_id, program.settings, as_of
            )
            if view is None:
                await self._known_member(program_id, member_id)
                raise self._not_yet_enrolled(program_id, member_id, as_of)
            return pb.GetAccountResponse(account=present.account(view), position=position)
        await self._reached(min_position, context)
        program = await self._run(self.app.get_program, program_id)
        position = self._position(READS)
        view = await self._run(
            self.tally.queries.account, program_id, member_id, program.settings, self.app.clock()
        )
        if view is None:
            raise errors.MemberNotFound(
                f"member {member_id} is not enrolled in program {program_id}",
                member_id=member_id,
            )
        return pb.GetAccountResponse(account=present.account(view), position=position)

    @rpc
    async def ListTransactions(self, request: Any, context: Any) -> pb.ListTransactionsResponse:
        query, as_of = self._transactions_query(request)
        if as_of is None:
            await self._reached(query.min_position, context)
            await self._known_member(query.program_id, query.member_id)
        else:
            await self._reached_as_of(query.min_position, context)
            await self._known_member_at(query.program_id, query.member_id, as_of)
        page = await self._run(
            self.tally.queries.transactions,
            query.program_id,
            query.member_id,
            query.page_size,
            query.after_position,
            query.since,
            query.until,
            as_of,
        )
        token = ""
        if page.last_position is not None:
            token = page_tokens.encode(
                (page.last_position,), _transactions_fingerprint(query, as_of)
            )
        return pb.ListTransactionsResponse(
            transactions=[present.transaction(r) for r in page.rows], next_page_token=token
        )

    @rpc
    async def ListLots(self, request: Any, context: Any) -> pb.ListLotsResponse:
        program_id, member_id, min_position = parse.member_query(request)
        as_of = self._as_of(request)
        if as_of is not None:
            await self._reached_as_of(min_position, context)
            await self._known_member_at(program_id, member_id, as_of)
            rows = await self._run(
                self.tally.queries.lots_as_of,
                program_id,
                member_id,
                request.include_closed,
                as_of,
            )
            return pb.ListLotsResponse(lots=[present.lot(r) for r in rows])
        await self._reached(min_position, context)
        await self._known_member(program_id, member_id)
        rows = await self._run(
            self.tally.queries.lots, program_id, member_id, request.include_closed
        )
        return pb.ListLotsResponse(lots=[present.lot(r) for r in rows])

    # as_of reads (GetAccount, ListTransactions, ListLots): recorded time, decision 20.

    def _as_of(self, request: Any) -> datetime | None:
        """The request's as_of (None: now): a valid instant, not in the future."""
        v = Violations()
        as_of = v.timestamp("as_of", request.as_of, request.HasField("as_of"))
        if as_of is not None and as_of > self.app.clock():
            v.add("as_of", "must not be in the future")
        v.raise_if_any()
        return as_of

    def _transactions_query(self, request: Any) -> tuple[parse.TransactionsQuery, datetime | None]:
        """ListTransactions' query and its as_of; the page token bound to both."""
        v = Violations()
        as_of = v.timestamp("as_of", request.as_of, request.HasField("as_of"))
        if as_of is not None and as_of > self.app.clock():
            v.add("as_of", "must not be in the future")
        without_token = pb.ListTransactionsRequest()
        without_token.CopyFrom(request)
        without_token.page_token = ""
        bad: list[tuple[str, str]] = []
        try:
            query = parse.list_transactions(without_token)
        except InvalidArgument as e:
            # Every bad field at once, the page token's too: check it against the query as
            # given (its fingerprint is what the token must match).
            bad, given = e.violations, Violations()
            query = parse.TransactionsQuery(
                request.program_id,
                request.member_id,
                0,
                0,
                0,
                given.timestamp("since", request.since, request.HasField("since")),
                given.timestamp("until", request.until, request.HasField("until")),
            )
        after = 0
        if request.page_token:
            decoded = page_tokens.decode(
                v,
                request.page_token,
                _transactions_fingerprint(query, as_of),
                1,
                "member, time range or as_of",
            )
            after = decoded[0] if decoded else 0
        if bad or v.items:
            raise InvalidArgument(bad + v.items)
        return replace(query, after_position=after), as_of

    async def _reached_as_of(self, min_position: int, context: grpc.aio.ServicerContext) -> None:
        """Before an as_of read: the read models have processed the whole log as it stood
        when the request came (every event recorded by as_of and committed by then)."""
        latest = await self._run(self.tally.app.recorder.max_notification_id)
        await self._reached(max(min_position, latest or 0), context)

    async def _known_member_at(self, program_id: str, member_id: str, as_of: datetime) -> None:
        """NOT_FOUND unless the programme and the member's enrolment were recorded by as_of."""
        await self._run(self.app.program_as_of, program_id, as_of)
        if not await self._run(self.tally.queries.member_recorded_by, program_id, member_id, as_of):
            await self._known_member(program_id, member_id)
            raise self._not_yet_enrolled(program_id, member_id, as_of)

    @staticmethod
    def _not_yet_enrolled(
        program_id: str, member_id: str, as_of: datetime
    ) -> errors.MemberNotFound:
        return errors.MemberNotFound(
            f"member {member_id} did not exist in program {program_id} at {as_of.isoformat()}",
            member_id=member_id,
        )

    async def _known_member(self, program_id: str, member_id: str) -> None:
        await self._run(self.app.get_program, program_id)
        if not await self._run(self.tally.queries.member_exists, program_id, member_id):
            raise errors.MemberNotFound(
                f"member {member_id} is not enrolled in program {program_id}",
                member_id=member_id,
            )


def _transactions_fingerprint(query: parse.TransactionsQuery, as_of: datetime | None) -> str:
    """What a ListTransactions page token is bound to: the query's member and time range,
    and its as_of when given (a token made without as_of stays valid without it)."""
    if as_of is None:
        return query.fingerprint()
    return page_tokens.fingerprint(query.fingerprint(), "as_of", as_of.isoformat())


def _account_command_rpc(descriptor: descriptors.CommandRpc) -> Handler:
    async def call(self: LedgerServicer, request: Any, context: Any) -> Any:
        cmd = descriptor.parse(request, self.app.clock())
        return descriptor.present(await self._command(cmd))

    call.__name__ = call.__qualname__ = descriptor.rpc
    return rpc(call)


for _descriptor in descriptors.ACCOUNT_COMMANDS:
    setattr(LedgerServicer, _descriptor.rpc, _account_command_rpc(_descriptor))
