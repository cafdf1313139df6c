"""LedgerService: each RPC parses its request into a command or query, runs it, and maps the
outcome (or the domain error) to the response. Blocking work runs on a thread pool; the
event loop only translates."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from ledger.api import descriptors
from ledger.api import requests as parse
from ledger.api import responses as present
from ledger.api.errors import (
    InvalidArgument,
    Unavailable,
    domain_status,
    invalid_argument_status,
    to_grpc,
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
        except Exception:
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

    # ------------------------------------------------------------------ not yet built

    async def TopUp(self, request: Any, context: Any) -> pb.TopUpResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "stored value is not available yet")
        raise AssertionError("unreachable")

    async def Spend(self, request: Any, context: Any) -> pb.SpendResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "stored value is not available yet")
        raise AssertionError("unreachable")

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
        for item in parsed:
            if isinstance(item, InvalidArgument):
                results.append(pb.BatchResult(error=invalid_argument_status(item)))
                continue
            answer = next(outcomes)
            if isinstance(answer, errors.DomainError):
                results.append(pb.BatchResult(error=domain_status(answer)))
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
        if request.HasField("as_of"):
            raise InvalidArgument([("as_of", "as_of reads are not available yet")])
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
        query = parse.list_transactions(request)
        await self._reached(query.min_position, context)
        await self._known_member(query.program_id, query.member_id)
        page = await self._run(
            self.tally.queries.transactions,
            query.program_id,
            query.member_id,
            query.page_size,
            query.after_position,
            query.since,
            query.until,
        )
        token = query.token_for(page.last_position) if page.last_position is not None else ""
        return pb.ListTransactionsResponse(
            transactions=[present.transaction(r) for r in page.rows], next_page_token=token
        )

    @rpc
    async def ListLots(self, request: Any, context: Any) -> pb.ListLotsResponse:
        program_id, member_id, min_position = parse.member_query(request)
        await self._reached(min_position, context)
        await self._known_member(program_id, member_id)
        rows = await self._run(
            self.tally.queries.lots, program_id, member_id, request.include_closed
        )
        return pb.ListLotsResponse(lots=[present.lot(r) for r in rows])

    async def _known_member(self, program_id: str, member_id: str) -> None:
        await self._run(self.app.get_program, program_id)
        if not await self._run(self.tally.queries.member_exists, program_id, member_id):
            raise errors.MemberNotFound(
                f"member {member_id} is not enrolled in program {program_id}",
                member_id=member_id,
            )


def _account_command_rpc(descriptor: descriptors.CommandRpc) -> Handler:
    async def call(self: LedgerServicer, request: Any, context: Any) -> Any:
        cmd = descriptor.parse(request, self.app.clock())
        return descriptor.present(await self._command(cmd))

    call.__name__ = call.__qualname__ = descriptor.rpc
    return rpc(call)


for _descriptor in descriptors.ACCOUNT_COMMANDS:
    setattr(LedgerServicer, _descriptor.rpc, _account_command_rpc(_descriptor))
