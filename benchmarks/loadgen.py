"""An asyncio gRPC load generator for LedgerService.

N concurrent callers share one channel and issue one kind of call (an `Operation`) back to
back, for a fixed duration or a fixed number of calls each. Every call has a unique
request_id. Callers are spread over the given members (caller i uses member i mod M), so one
member per caller is the default and a single member is the "hot account" case.

The result holds throughput (successful calls per second of wall time), latency percentiles
of every call (errors included: a refusal costs time too) and the error count by status code.
While it runs, `Acknowledged` holds the highest event-log position a reply has reported so
far and the monotonic time of that reply: what a read-your-writes probe beside the load waits
for (benchmarks/run.py).

Operations: Earn, Redeem (seeded with one large Earn per member), TopUp, Spend (seeded with
one large TopUp per member) and Batch (ExecuteBatch of Earns). New kinds of calls (queries,
holds, ...) slot in as new `Operation`s.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc

CALL_TIMEOUT = 30.0
SEED_POINTS = 10**12
SEED_CASH_MINOR = 10**12  # a Spend case's stored value per member: 10^10 spends of 100
STORE_ID = "bench-store"

Stub = Any  # ledger.v1 LedgerServiceAsyncStub (generated stubs are not typed for aio here)


class Operation(Protocol):
    """One kind of call. `prepare` runs before the clock starts (e.g. seeding points) and
    returns the highest event-log position it produced (0 if none)."""

    @property
    def name(self) -> str: ...

    @property
    def commands_per_call(self) -> int: ...

    async def prepare(
        self, stub: Stub, program_id: str, member_ids: list[str], tag: str
    ) -> int: ...

    async def call(self, stub: Stub, program_id: str, member_id: str, request_id: str) -> int:
        """Make one call; return the event-log position it reported (0 if none)."""
        ...


@dataclass(frozen=True)
class Earn:
    points: int = 10
    name: str = "earn"
    commands_per_call: int = 1

    async def prepare(self, stub: Stub, program_id: str, member_ids: list[str], tag: str) -> int:
        return 0

    async def call(self, stub: Stub, program_id: str, member_id: str, request_id: str) -> int:
        response: pb.EarnResponse = await stub.Earn(
            pb.EarnRequest(
                program_id=program_id,
                member_id=member_id,
                points=self.points,
                purchase_minor=self.points * 10,
                store_id=STORE_ID,
                order_ref=request_id,
                request_id=request_id,
            ),
            timeout=CALL_TIMEOUT,
        )
        return response.position


@dataclass(frozen=True)
class Redeem:
    """Redeems a few points; `prepare` seeds every member with one large Earn first."""

    points: int = 1
    seed_points: int = SEED_POINTS
    name: str = "redeem"
    commands_per_call: int = 1

    async def prepare(self, stub: Stub, program_id: str, member_ids: list[str], tag: str) -> int:
        positions = await gather_limited(
            [
                Earn(self.seed_points).call(stub, program_id, m, f"{tag}-seed-{m}")
                for m in member_ids
            ],
            limit=16,
        )
        return max(positions, default=0)

    async def call(self, stub: Stub, program_id: str, member_id: str, request_id: str) -> int:
        response: pb.RedeemResponse = await stub.Redeem(
            pb.RedeemRequest(
                program_id=program_id,
                member_id=member_id,
                points=self.points,
                store_id=STORE_ID,
                order_ref=request_id,
                request_id=request_id,
            ),
            timeout=CALL_TIMEOUT,
        )
        return response.position


@dataclass(frozen=True)
class TopUp:
    """Tops up stored value as a till sells it: cash paid, the bonus left to the programme's
    schedule (unset), the store of issue and the payment processor's reference."""

    cash_minor: int = 10_000
    name: str = "topup"
    commands_per_call: int = 1

    async def prepare(self, stub: Stub, program_id: str, member_ids: list[str], tag: str) -> int:
        return 0

    async def call(self, stub: Stub, program_id: str, member_id: str, request_id: str) -> int:
        response: pb.TopUpResponse = await stub.TopUp(
            pb.TopUpRequest(
                program_id=program_id,
                member_id=member_id,
                cash_minor=self.cash_minor,
                store_id=STORE_ID,
                payment_ref=f"pay-{request_id}",
                request_id=request_id,
            ),
            timeout=CALL_TIMEOUT,
        )
        return response.position


@dataclass(frozen=True)
class Spend:
    """Pays a small amount from stored value; `prepare` tops every member up with one large
    TopUp first (as Redeem's seed Earn)."""

    amount_minor: int = 100
    seed_cash_minor: int = SEED_CASH_MINOR
    name: str = "spend"
    commands_per_call: int = 1

    async def prepare(self, stub: Stub, program_id: str, member_ids: list[str], tag: str) -> int:
        positions = await gather_limited(
            [
                TopUp(self.seed_cash_minor).call(stub, program_id, m, f"{tag}-seed-{m}")
                for m in member_ids
            ],
            limit=16,
        )
        return max(positions, default=0)

    async def call(self, stub: Stub, program_id: str, member_id: str, request_id: str) -> int:
        response: pb.SpendResponse = await stub.Spend(
            pb.SpendRequest(
                program_id=program_id,
                member_id=member_id,
                amount_minor=self.amount_minor,
                store_id=STORE_ID,
                order_ref=request_id,
                request_id=request_id,
            ),
            timeout=CALL_TIMEOUT,
        )
        return response.position


@dataclass(frozen=True)
class Batch:
    """ExecuteBatch of `size` Earns (not atomic), spread over all the case's members: what an
    offline store uploading its day looks like. Each caller starts at its own member."""

    size: int = 100
    points: int = 10
    members: list[str] = field(default_factory=list, compare=False)

    @property
    def name(self) -> str:
        return f"batch-{self.size}"

    @property
    def commands_per_call(self) -> int:
        return self.size

    async def prepare(self, stub: Stub, program_id: str, member_ids: list[str], tag: str) -> int:
        self.members[:] = member_ids
        return 0

    async def call(self, stub: Stub, program_id: str, member_id: str, request_id: str) -> int:
        start = self.members.index(member_id) if member_id in self.members else 0
        count = len(self.members)
        response: pb.ExecuteBatchResponse = await stub.ExecuteBatch(
            pb.ExecuteBatchRequest(
                program_id=program_id,
                commands=[
                    pb.BatchCommand(
                        earn=pb.EarnRequest(
                            program_id=program_id,
                            member_id=self.members[(start + k) % count],
                            points=self.points,
                            purchase_minor=self.points * 10,
                            store_id=STORE_ID,
                            order_ref=f"{request_id}.{k}",
                            request_id=f"{request_id}.{k}",
                        )
                    )
                    for k in range(self.size)
                ],
            ),
            timeout=CALL_TIMEOUT,
        )
        failed = [r.error for r in response.results if r.WhichOneof("result") == "error"]
        if failed:
            raise BatchItemFailed(f"{len(failed)} of {self.size} items failed: {failed[0]}")
        return response.position


class BatchItemFailed(Exception):
    """Some items of a batch were answered with an error (counted as a failed call)."""


async def gather_limited(coros: list[Any], limit: int) -> list[Any]:
    """Run awaitables with at most `limit` in flight; the first failure propagates."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty list)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Acknowledged:
    """The highest event-log position any reply of the load has reported so far, and the
    time.monotonic() at which that reply arrived (0, 0.0 before the first); `advanced` is
    set whenever they change (a probe clears it to wait for the next one). `replies`: every
    reply's (position, time), for the time each write took to reach the read models."""

    position: int = 0
    at: float = 0.0
    advanced: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    replies: list[tuple[int, float]] = field(default_factory=list, repr=False)

    def record(self, position: int, at: float) -> None:
        self.replies.append((position, at))
        if position > self.position:
            self.position, self.at = position, at
            self.advanced.set()


@dataclass
class LoadResult:
    operation: str
    callers: int
    members: int
    wall_s: float
    calls: int
    ok: int
    errors: dict[str, int]
    error_samples: dict[str, str]
    throughput: float
    commands_per_s: float  # throughput x commands per call (batches)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    # Successful calls/s in the first and second half of the run: a drop flags slow-down
    # as the accounts grow.
    throughput_first_half: float
    throughput_second_half: float
    max_position: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        """Everything but the raw latencies: what goes into the JSON report."""
        return {k: v for k, v in self.__dict__.items() if k != "latencies_ms"}


async def run_load(
    target: str,
    operation: Operation,
    program_id: str,
    member_ids: list[str],
    callers: int,
    duration: float | None = None,
    count: int | None = None,
    tag: str = "load",
    channels: int = 1,
    acknowledged: Acknowledged | None = None,
) -> LoadResult:
    """Drive `target` with `callers` concurrent callers for `duration` seconds or `count`
    calls per caller (exactly one of the two), spread over `channels` connections (a server
    of several processes on one port gets connections, not calls, spread over them).
    `acknowledged`, if given, is kept at the highest position replied so far while it runs."""
    if (duration is None) == (count is None):
        raise ValueError("give exactly one of duration and count")
    if not member_ids:
        raise ValueError("need at least one member")
    # A local subchannel pool per channel: otherwise gRPC shares one connection among them.
    opened = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, channels))
    ]
    try:
        for channel in opened:
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
        stubs = [pb_grpc.LedgerServiceStub(channel) for channel in opened]
        latencies: list[float] = []
        finished_at: list[float] = []
        errors: Counter[str] = Counter()
        samples: dict[str, str] = {}
        max_position = 0

        start = time.perf_counter()
        deadline = start + duration if duration is not None else math.inf

        async def caller(index: int) -> None:
            nonlocal max_position
            stub = stubs[index % len(stubs)]
            member_id = member_ids[index % len(member_ids)]
            seq = 0
            while time.perf_counter() < deadline and (count is None or seq < count):
                request_id = f"{tag}-c{index}-{seq}"
                seq += 1
                began = time.perf_counter()
                try:
                    position = await operation.call(stub, program_id, member_id, request_id)
                except grpc.aio.AioRpcError as e:
                    code = e.code().name
                    errors[code] += 1
                    samples.setdefault(code, e.details() or "")
                except BatchItemFailed as e:
                    errors["ITEM_ERROR"] += 1
                    samples.setdefault("ITEM_ERROR", str(e))
                else:
                    max_position = max(max_position, position)
                    if acknowledged is not None:
                        acknowledged.record(position, time.monotonic())
                    finished_at.append(time.perf_counter() - start)
                finally:
                    latencies.append((time.perf_counter() - began) * 1000.0)

        await asyncio.gather(*(caller(i) for i in range(callers)))
        wall = time.perf_counter() - start
    finally:
        for channel in opened:
            await channel.close()

    latencies.sort()
    ok = len(finished_at)
    half = (duration if duration is not None else wall) / 2
    first = sum(1 for t in finished_at if t < half)
    return LoadResult(
        operation=operation.name,
        callers=callers,
        members=min(len(member_ids), callers),
        wall_s=round(wall, 3),
        calls=len(latencies),
        ok=ok,
        errors=dict(errors),
        error_samples=samples,
        throughput=ok / wall if wall > 0 else 0.0,
        commands_per_s=ok * operation.commands_per_call / wall if wall > 0 else 0.0,
        p50_ms=percentile(latencies, 0.50),
        p90_ms=percentile(latencies, 0.90),
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else 0.0,
        mean_ms=sum(latencies) / len(latencies) if latencies else 0.0,
        throughput_first_half=first / half if half > 0 else 0.0,
        throughput_second_half=(ok - first) / (wall - half) if wall > half else 0.0,
        max_position=max_position,
        latencies_ms=latencies,
    )
