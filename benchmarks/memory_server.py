"""The in-memory server: the same contract (CreateProgram, EnrollMember, Earn, Redeem) over
dicts, with no persistence. What is left is the cost of gRPC and protobuf in Python (and of
the load generator beside it): the upper bound for any server of this contract in this stack.

Everything runs on the event loop, so no locks are needed. Idempotent by request_id like
the others: a repeated request gets the recorded response.

    python -m benchmarks.memory_server --listen 127.0.0.1:50061
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from benchmarks.serving import listen_arg, serve_until_signalled
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc

R = TypeVar("R", bound=Message)
NAMESPACE = uuid.UUID("7d8f3c1e-2b6a-4f0e-9a51-0c3e8d2f4b10")


@dataclass
class Balance:
    points: int
    version: int
    enrolled_at: Timestamp


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
            enrolled_at=b.enrolled_at,
            version=b.version,
        )

    async def _replayed(self, request: Any, context: Any) -> Message | None:
        previous = self.requests.get((request.program_id, request.request_id))
        if previous is None:
            return None
        if previous[0] != request:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, "request_id was used for a different request"
            )
        return previous[1]

    async def _check(self, request: Any, context: Any, points: bool = True) -> None:
        if not (request.program_id and request.member_id and request.request_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "program_id, member_id and request_id are required",
            )
        if points and request.points <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "points must be > 0")

    def _record(self, request: Any, response: R) -> R:
        self.requests[(request.program_id, request.request_id)] = (request, response)
        return response

    def _transaction_id(self, request: Any) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{request.program_id}/{request.request_id}"))

    async def CreateProgram(self, request: Any, context: Any) -> pb.CreateProgramResponse:
        replay = await self._replayed(request, context)
        if replay is not None:
            return replay  # type: ignore[return-value]
        if request.program_id in self.programs:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "program exists")
        now = _now()
        program = pb.Program(
            program_id=request.program_id,
            display_name=request.display_name,
            currency=request.currency,
            time_zone=request.time_zone or "UTC",
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

    async def EnrollMember(self, request: Any, context: Any) -> pb.EnrollMemberResponse:
        await self._check(request, context, points=False)
        replay = await self._replayed(request, context)
        if replay is not None:
            return replay  # type: ignore[return-value]
        if request.program_id not in self.programs:
            await context.abort(grpc.StatusCode.NOT_FOUND, "program does not exist")
        key = (request.program_id, request.member_id)
        if key in self.accounts:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "member is already enrolled")
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

    async def _balance(self, request: Any, context: Any) -> Balance:
        balance = self.accounts.get((request.program_id, request.member_id))
        if balance is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "member is not enrolled")
            raise AssertionError("unreachable")
        return balance

    async def Earn(self, request: Any, context: Any) -> pb.EarnResponse:
        await self._check(request, context)
        replay = await self._replayed(request, context)
        if replay is not None:
            return replay  # type: ignore[return-value]
        balance = await self._balance(request, context)
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

    async def Redeem(self, request: Any, context: Any) -> pb.RedeemResponse:
        await self._check(request, context)
        replay = await self._replayed(request, context)
        if replay is not None:
            return replay  # type: ignore[return-value]
        balance = await self._balance(request, context)
        if balance.points < request.points:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "insufficient points")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="in-memory server of the ledger contract")
    listen_arg(parser)
    args = parser.parse_args(argv)
    asyncio.run(serve_until_signalled(MemoryServicer(), args.listen))  # type: ignore[abstract]  # the rest: UNIMPLEMENTED


if __name__ == "__main__":
    main()
