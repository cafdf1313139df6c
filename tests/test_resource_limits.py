"""Resource limits of a real `ledger serve`: no request, and no number of them, makes the
server hold unbounded memory. A message above the cap is refused; a deadline ends a
min_position wait and the server stops waiting with it; a flood beyond the writer's queue is
refused at once (the queue is bounded by commands, not by calls: one ExecuteBatch is up to
1,000 of them); a client that never reads its StreamEvents stream is held back by gRPC's
flow control instead of being buffered for."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from ledger.v1 import audit_pb2, audit_pb2_grpc
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc
from tests.load import (
    ServerProcess,
    balance,
    earn_request,
    health,
    ledger_stub,
    log_head,
    serving,
    set_up_members,
)
from tests.support import scratch_postgres

PROGRAM = "limits"
MEMBERS = [f"m{i}" for i in range(100)]
MEMORY_BOUND_KIB = 200 * 1024  # generous: a memory bound, not a measurement


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with scratch_postgres() as url:
        yield url


@pytest.fixture(scope="module")
def server(database: str) -> Iterator[ServerProcess]:
    with serving(database) as running:
        set_up_members(running.target, PROGRAM, MEMBERS, points=0)
        yield running


def test_a_message_above_the_cap_is_refused_and_the_server_keeps_serving(
    server: ServerProcess,
) -> None:
    channel, stub = ledger_stub(server.target)
    with channel:
        huge = earn_request(PROGRAM, "m0", 1, "huge")
        huge.reason = "x" * (5 * 1024 * 1024)  # above the 4 MiB cap
        with pytest.raises(grpc.RpcError) as failure:
            stub.Earn(huge, timeout=30)
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        earned = stub.Earn(earn_request(PROGRAM, "m0", 5, "after-huge"), timeout=30)
    assert earned.account.points_available >= 5
    assert health(server.target) == 1  # SERVING


def test_a_deadline_ends_a_min_position_wait_and_the_server_stops_waiting(
    server: ServerProcess,
) -> None:
    deadline = 0.5
    far = 10**12  # a position nobody will write

    async def wait_all() -> list[tuple[grpc.StatusCode, float]]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.LedgerServiceStub(channel)

            async def one() -> tuple[grpc.StatusCode, float]:
                started = time.monotonic()
                try:
                    await stub.GetAccount(
                        pb.GetAccountRequest(program_id=PROGRAM, member_id="m1", min_position=far),
                        timeout=deadline,
                    )
                except grpc.aio.AioRpcError as e:
                    return e.code(), time.monotonic() - started
                return grpc.StatusCode.OK, time.monotonic() - started

            return await asyncio.gather(*(one() for _ in range(200)))

    ended = asyncio.run(wait_all())
    assert {code for code, _ in ended} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    assert max(took for _, took in ended) < deadline + 10  # generous: ended, not hung

    # Had the server kept polling for 200 abandoned waits (every 2 ms each), it would burn
    # a core; idle, it uses a few percent (its projections look at the log every 50 ms).
    before = server.cpu_seconds()
    time.sleep(2.0)
    assert server.cpu_seconds() - before < 1.0
    assert health(server.target) == 1


def test_a_flood_beyond_the_writer_queue_is_refused_at_once_and_memory_stays_bounded(
    server: ServerProcess, database: str
) -> None:
    batches, size = 30, 1000  # 30,000 commands at once; the writer queues 10,000
    opening = {m: balance(server.target, PROGRAM, m, log_head(database)) for m in MEMBERS}
    peak = _PeakRss(server)
    with peak:

        async def flood() -> list[grpc.StatusCode]:
            channels = [grpc.aio.insecure_channel(server.target) for _ in range(4)]
            try:

                async def one(i: int) -> grpc.StatusCode:
                    stub = pb_grpc.LedgerServiceStub(channels[i % len(channels)])
                    request = pb.ExecuteBatchRequest(
                        program_id=PROGRAM,
                        commands=[
                            pb.BatchCommand(
                                earn=earn_request(PROGRAM, MEMBERS[j % 100], 1, f"flood-{i}-{j}")
                            )
                            for j in range(size)
                        ],
                    )
                    try:
                        await stub.ExecuteBatch(request, timeout=120)
                    except grpc.aio.AioRpcError as e:
                        return e.code()
                    return grpc.StatusCode.OK

                return await asyncio.gather(*(one(i) for i in range(batches)))
            finally:
                for channel in channels:
                    await channel.close()

        outcomes = Counter(asyncio.run(flood()))
    # The contract (ledger.proto): RESOURCE_EXHAUSTED, the writer queue is full; retry.
    assert set(outcomes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, outcomes
    assert peak.growth_kib < MEMORY_BOUND_KIB
    # What was taken was applied, all of it: one point per command to each member.
    head = log_head(database)
    before = sum(opening.values())
    applied = sum(balance(server.target, PROGRAM, m, head) for m in MEMBERS) - before
    assert applied == outcomes[grpc.StatusCode.OK] * size


def test_a_client_that_never_reads_its_stream_is_not_buffered_for(
    server: ServerProcess, database: str
) -> None:
    _grow_log(server, database, events=10_000)
    streams = 10
    request = audit_pb2.StreamEventsRequest(program_id=PROGRAM, follow=True)
    channels = [grpc.insecure_channel(server.target) for _ in range(streams)]
    try:
        with _PeakRss(server) as peak:
            # Started, never read (the synchronous client receives only when iterated).
            stalled = [
                audit_pb2_grpc.AuditServiceStub(ch).StreamEvents(request, timeout=120)
                for ch in channels
            ]
            time.sleep(3.0)
        # Read out, each stream delivers the whole log: it was held back, not dropped.
        head = log_head(database)
        sizes = []
        for stream in stalled:
            total = 0
            for event in stream:
                total += event.ByteSize()
                if event.position >= head:
                    break
            sizes.append(total)
            stream.cancel()
    finally:
        for channel in channels:
            channel.close()
    buffered_if_unbounded_kib = sum(sizes) // 1024
    assert buffered_if_unbounded_kib > 10 * 1024  # the streams are big enough to tell
    assert peak.growth_kib < min(MEMORY_BOUND_KIB, buffered_if_unbounded_kib // 2)


def _grow_log(server: ServerProcess, database: str, events: int) -> None:
    """Earns, a batch of 1,000 at a time, until the log holds `events`."""
    channel, stub = ledger_stub(server.target)
    with channel:
        n = 0
        while log_head(database) < events:
            n += 1
            stub.ExecuteBatch(
                pb.ExecuteBatchRequest(
                    program_id=PROGRAM,
                    commands=[
                        pb.BatchCommand(earn=earn_request(PROGRAM, m, 1, f"grow-{n}-{m}-{k}"))
                        for m in MEMBERS
                        for k in range(10)
                    ],
                ),
                timeout=120,
            )


class _PeakRss:
    """The server's largest resident set while the block runs, above its size before."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.growth_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _PeakRss:
        self._before = self.server.rss_kib()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.growth_kib = max(self.growth_kib, self.server.rss_kib() - self._before)
            self._stop.wait(0.05)
