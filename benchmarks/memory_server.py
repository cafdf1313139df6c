"""The in-memory server: the same contract (CreateProgram, EnrollMember, Earn, Redeem, TopUp,
Spend, and ExecuteBatch of Earns, not atomic) over dicts, with no persistence. What is left
is the cost of gRPC and protobuf in Python (and of the load generator beside it): the upper
bound for any server of this contract in this stack.

Everything runs on the event loop, so no locks are needed. Idempotent by request_id like
the others: a repeated request gets the recorded response. A batch applies its items one
after the other exactly as Earn does (an item without program_id takes the batch's), each
refusal becoming that item's error instead of failing the call.

Stored value is two balances per account, cash and bonus, with no lots: TopUp adds its cash
and a bonus (the request's, or the programme's top_up_bonus schedule: the highest step met),
Spend takes its amount split proportionally (the cash part rounded down, as Tally's
PROPORTIONAL split), refusing more than the card holds.

    python -m benchmarks.memory_server --listen 127.0.0.1:50061
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from benchmarks.serving import listen_arg, serve_until_signalled
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc

R = TypeVar("R", bound=Message)
NAMESPACE = uuid.UUID("7d8f3c1e-2b6a-4f0e-9a51-0c3e8d2f4b10")


class Refused(Exception):
    """A command refused: the RPC aborts with it, a batch item answers with it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def status(self) -> status_pb2.Status:
        return status_pb2.Status(code=self.code.value[0], message=self.message)


INT64_MAX = 2**63 - 1
MAX_AMOUNT = 10**15


@dataclass
class Balance:
    points: int
    version: int
    enrolled_at: Timestamp
    cash: int = 0
    bonus: int = 0


def _now() -> Timestamp:
    t = Timestamp()
    t.FromDatetime(datetime.now(UTC))
    return t


class MemoryServicer(pb_grpc.LedgerServiceServicer):
    def __init__(self) -> None:
        self.programs: dict[str, pb.Program] = {}
        self.accounts: dict[tuple[str, str], Balance] = {}
        # (program_id, request_id) -> (the request, the response): idempotent replays.
        self.requests: dict[tuple[str, str], tuple[Message, Message]] = {}
        self.position = 0

    def _account(self, program_id: str, member_id: str, b: Balance) -> pb.Account:
        return pb.Account(
            program_id=program_id,
            member_id=member_id,
            points_available=b.points,
            stored_value_cash_minor=b.cash,
            stored_value_bonus_minor=b.bonus,
            enrolled_at=b.enrolled_at,
            version=b.version,
        )

    def _replayed(self, request: Any) -> Message | None:
        previous = self.requests.get((request.program_id, request.request_id))
        if previous is None:
            return None
        if previous[0] != request:
            raise Refused(
                grpc.StatusCode.ALREADY_EXISTS, "request_id was used for a different request"
            )
        return previous[1]

    def _check(self, request: Any, points: bool = True) -> None:
        if not (request.program_id and request.member_id and request.request_id):
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "program_id, member_id and request_id are required",
            )
        if points and request.points <= 0:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "points must be > 0")

    @staticmethod
    def _check_amount(field: str, value: int, *, zero: bool = False) -> None:
        if value < 0 or (value == 0 and not zero) or value > MAX_AMOUNT:
            low = ">= 0" if zero else "> 0"
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT, f"{field} must be {low} and <= {MAX_AMOUNT}"
            )

    def _record(self, request: Any, response: R) -> R:
        self.requests[(request.program_id, request.request_id)] = (request, response)
        return response

    def _transaction_id(self, request: Any) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{request.program_id}/{request.request_id}"))

    async def _answer(self, handle: Callable[[Any], R], request: Any, context: Any) -> R:
        try:
            return handle(request)
        except Refused as e:
            await context.abort(e.code, e.message)
            raise AssertionError("unreachable") from e

    async def CreateProgram(self, request: Any, context: Any) -> pb.CreateProgramResponse:
        return await self._answer(self._create_program, request, context)

    async def EnrollMember(self, request: Any, context: Any) -> pb.EnrollMemberResponse:
        return await self._answer(self._enroll, request, context)

    async def Earn(self, request: Any, context: Any) -> pb.EarnResponse:
        return await self._answer(self._earn, request, context)

    async def Redeem(self, request: Any, context: Any) -> pb.RedeemResponse:
        return await self._answer(self._redeem, request, context)

    async def TopUp(self, request: Any, context: Any) -> pb.TopUpResponse:
        return await self._answer(self._top_up, request, context)

    async def Spend(self, request: Any, context: Any) -> pb.SpendResponse:
        return await self._answer(self._spend, request, context)

    async def ExecuteBatch(self, request: Any, context: Any) -> pb.ExecuteBatchResponse:
        """Earns only, not atomic: each item as Earn would do it, its refusal its error."""
        if request.atomic:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "atomic batches are not implemented here"
            )
        results: list[pb.BatchResult] = []
        position = 0
        for item in request.commands:
            kind = item.WhichOneof("command")
            if kind != "earn":
                refused = Refused(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{kind or 'nothing'}: not implemented in a batch here",
                )
                results.append(pb.BatchResult(error=refused.status()))
                continue
            earn = item.earn
            if not earn.program_id:
                earn.program_id = request.program_id
            try:
                response = self._earn(earn)
            except Refused as e:
                results.append(pb.BatchResult(error=e.status()))
                continue
            position = max(position, response.position)
            results.append(pb.BatchResult(earn=response))
        return pb.ExecuteBatchResponse(results=results, position=position)

    # ------------------------------------------------------------------ the commands

    def _create_program(self, request: Any) -> pb.CreateProgramResponse:
        replay = self._replayed(request)
        if replay is not None:
            return replay  # type: ignore[return-value]
        if request.program_id in self.programs:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, "program exists")
        now = _now()
        program = pb.Program(
            program_id=request.program_id,
            display_name=request.display_name,
            currency=request.currency,
            time_zone=request.time_zone or "UTC",
            stored_value_split=request.stored_value_split,
            top_up_bonus=request.top_up_bonus,
            created_at=now,
            updated_at=now,
            version=1,
        )
        self.programs[request.program_id] = program
        self.position += 1
        return self._record(
            request,
            pb.CreateProgramResponse(
                program=program,
                transaction_id=self._transaction_id(request),
                position=self.position,
            ),
        )

    def _enroll(self, request: Any) -> pb.EnrollMemberResponse:
        self._check(request, points=False)
        replay = self._replayed(request)
        if replay is not None:
            return replay  # type: ignore[return-value]
        if request.program_id not in self.programs:
            raise Refused(grpc.StatusCode.NOT_FOUND, "program does not exist")
        key = (request.program_id, request.member_id)
        if key in self.accounts:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, "member is already enrolled")
        balance = self.accounts[key] = Balance(0, 1, _now())
        self.position += 1
        return self._record(
            request,
            pb.EnrollMemberResponse(
                account=self._account(*key, balance),
                transaction_id=self._transaction_id(request),
                position=self.position,
            ),
        )

    def _balance(self, request: Any) -> Balance:
        balance = self.accounts.get((request.program_id, request.member_id))
        if balance is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, "member is not enrolled")
        return balance

    def _earn(self, request: Any) -> pb.EarnResponse:
        self._check(request)
        replay = self._replayed(request)
        if replay is not None:
            return replay  # type: ignore[return-value]
        balance = self._balance(request)
        balance.points += request.points
        balance.version += 1
        self.position += 1
        transaction_id = self._transaction_id(request)
        return self._record(
            request,
            pb.EarnResponse(
                transaction_id=transaction_id,
                position=self.position,
                lot_id=transaction_id,
                account=self._account(request.program_id, request.member_id, balance),
            ),
        )

    def _redeem(self, request: Any) -> pb.RedeemResponse:
        self._check(request)
        replay = self._replayed(request)
        if replay is not None:
            return replay  # type: ignore[return-value]
        balance = self._balance(request)
        if balance.points < request.points:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "insufficient points")
        balance.points -= request.points
        balance.version += 1
        self.position += 1
        return self._record(
            request,
            pb.RedeemResponse(
                transaction_id=self._transaction_id(request),
                position=self.position,
                account=self._account(request.program_id, request.member_id, balance),
            ),
        )

    def _top_up(self, request: Any) -> pb.TopUpResponse:
        self._check(request, points=False)
        self._check_amount("cash_minor", request.cash_minor)
        named = request.HasField("bonus_minor")
        if named:
            self._check_amount("bonus_minor", request.bonus_minor, zero=True)
        replay = self._replayed(request)
        if replay is not None:
            return replay  # type: ignore[return-value]
        balance = self._balance(request)
        cash = request.cash_minor
        step: pb.TopUpBonusStep | None = None
        if named:
            bonus = request.bonus_minor
        else:
            program = self.programs[request.program_id]
            met = [s for s in program.top_up_bonus if s.min_cash_minor <= cash]
            step = max(met, key=lambda s: s.min_cash_minor, default=None)
            bonus = 0 if step is None else step.bonus_minor + cash * step.bonus_ppm // 1_000_000
        if balance.cash + cash > INT64_MAX or balance.bonus + bonus > INT64_MAX:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "the stored value would pass int64")
        balance.cash += cash
        balance.bonus += bonus
        balance.version += 1
        self.position += 1
        response = pb.TopUpResponse(
            transaction_id=self._transaction_id(request),
            position=self.position,
            account=self._account(request.program_id, request.member_id, balance),
            bonus_minor=bonus,
            cash_minor=cash,
        )
        if step is not None:
            response.bonus_step_min_cash_minor = step.min_cash_minor
        return self._record(request, response)

    def _spend(self, request: Any) -> pb.SpendResponse:
        self._check(request, points=False)
        self._check_amount("amount_minor", request.amount_minor)
        replay = self._replayed(request)
        if replay is not None:
            return replay  # type: ignore[return-value]
        balance = self._balance(request)
        amount = request.amount_minor
        if amount > balance.cash + balance.bonus:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "insufficient stored value")
        cash = amount * balance.cash // (balance.cash + balance.bonus)
        balance.cash -= cash
        balance.bonus -= amount - cash
        balance.version += 1
        self.position += 1
        return self._record(
            request,
            pb.SpendResponse(
                transaction_id=self._transaction_id(request),
                position=self.position,
                account=self._account(request.program_id, request.member_id, balance),
                cash_minor=cash,
                bonus_minor=amount - cash,
            ),
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="in-memory server of the ledger contract")
    listen_arg(parser)
    args = parser.parse_args(argv)
    asyncio.run(serve_until_signalled(MemoryServicer(), args.listen))  # type: ignore[abstract]  # the rest: UNIMPLEMENTED


if __name__ == "__main__":
    main()
