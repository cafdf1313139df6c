"""AuditService: the log streamed (and followed live), one account's history, verification of
the hash chains and checkpoints. Reads the events table directly: nothing here depends on the
read models, so an auditor sees what is stored, not what was derived from it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from ledger.api.errors import InvalidArgument
from ledger.api.ledger_service import abort_for, rpc
from ledger.api.responses import timestamp
from ledger.api.validation import Violations
from ledger.audit.checkpoints import checkpoint_to_head
from ledger.audit.events import AuditEvent, EventReader
from ledger.audit.verify import verify
from ledger.domain import errors
from ledger.runtime import Tally
from ledger.security.principal import visible_programs
from ledger.v1 import audit_pb2 as pb
from ledger.v1 import audit_pb2_grpc as pb_grpc

T = TypeVar("T")
BATCH = 500
# Commits of this process wake a following stream at once; another process's commits are
# seen at the next look, at most this long after.
FOLLOW_POLL_SECONDS = 0.05
# Each open stream holds a task, a cursor and a poll: a bounded number per server, so that
# clients opening streams without end cannot exhaust it (docs/security.md).
MAX_OPEN_STREAMS = 64


def present(event: AuditEvent) -> pb.StreamEventsResponse:
    message = pb.StreamEventsResponse(
        position=event.position,
        program_id=event.program_id,
        member_id=event.member_id,
        event_type=event.event_type,
        transaction_id=event.transaction_id,
        payload_json=event.payload_json,
        hash=event.hash,
        prev_hash=event.prev_hash,
        aggregate_id=event.aggregate_id,
        version=event.version,
    )
    if event.occurred_at is not None:
        message.occurred_at.CopyFrom(timestamp(event.occurred_at))
    if event.recorded_at is not None:
        message.recorded_at.CopyFrom(timestamp(event.recorded_at))
    return message


def _shown(program_id: str, visible: frozenset[str] | None) -> Callable[[str], bool]:
    """Which events a stream passes: the one programme asked for, or else those the caller
    may see (every one without a scope)."""
    if program_id:
        return lambda p: p == program_id
    if visible is None:
        return lambda p: True
    return lambda p: p in visible


class AuditServicer(pb_grpc.AuditServiceServicer):
    max_open_streams = MAX_OPEN_STREAMS

    def __init__(self, tally: Tally, executor: ThreadPoolExecutor) -> None:
        self.tally = tally
        self.executor = executor
        self.open_streams = 0  # changed on the event loop only

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _known_program(self, program_id: str) -> None:
        await self._run(self.tally.app.get_program, program_id)  # ProgramNotFound if not

    async def StreamEvents(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamEventsResponse]:
        try:
            v = Violations()
            if request.from_position < 0:
                v.add("from_position", "must not be negative")
            v.identifier("program_id", request.program_id, required=False)
            v.raise_if_any()
            if request.program_id:
                await self._known_program(request.program_id)
        except (InvalidArgument, errors.DomainError) as e:
            await abort_for(e, context)
            return
        if self.open_streams >= self.max_open_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.max_open_streams} event streams are open on this server already: "
                "close one, or retry later",
            )
            return
        # Read here, in the call's own context: the executor's threads do not carry it.
        shown = _shown(request.program_id, visible_programs())
        reader = EventReader(self.tally.database)
        position = request.from_position
        wake = asyncio.Event()
        self.open_streams += 1
        unsubscribe = self.tally.commits.subscribe(asyncio.get_running_loop(), wake)
        try:
            while True:
                wake.clear()
                # One cursor for catch-up and live alike: each batch starts after the last
                # position read, and positions commit in order, so none is skipped or repeated.
                events, position = await self._run(reader.scan, position, BATCH)
                for event in events:
                    if shown(event.program_id):
                        yield present(event)
                if len(events) == BATCH:
                    continue
                if not request.follow:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), FOLLOW_POLL_SECONDS)
        finally:
            self.open_streams -= 1
            unsubscribe()

    @rpc
    async def GetAccountHistory(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountHistoryResponse:
        v = Violations()
        v.identifier("program_id", request.program_id)
        v.identifier("member_id", request.member_id)
        v.raise_if_any()
        await self._known_program(request.program_id)
        reader = EventReader(self.tally.database)
        events = await self._run(reader.history, request.program_id, request.member_id)
        if not events:
            raise errors.MemberNotFound(
                f"member {request.member_id} is not enrolled in program {request.program_id}",
                member_id=request.member_id,
            )
        return pb.GetAccountHistoryResponse(events=[present(e) for e in events])

    @rpc
    async def VerifyChain(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> pb.VerifyChainResponse:
        v = Violations()
        v.identifier("program_id", request.program_id, required=False)
        v.raise_if_any()
        if request.program_id:
            await self._known_program(request.program_id)
        key = self.tally.checkpoint_public_key
        report = await self._run(verify, self.tally.database, request.program_id, key)
        return pb.VerifyChainResponse(
            ok=report.ok,
            events_checked=report.events_checked,
            first_bad_position=report.first_bad_position,
            detail=report.detail,
            findings=[
                pb.VerifyFinding(position=f.position, kind=f.kind, detail=f.detail)
                for f in sorted(report.findings, key=lambda f: f.position)[:1000]
            ],
            accounts_checked=report.accounts,
            checkpoints_checked=report.checkpoints_checked,
        )

    @rpc
    async def CreateCheckpoint(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> pb.CreateCheckpointResponse:
        # Up to now, in as many checkpoints as the backlog takes: the answer is the last.
        all_made = await self._run(
            checkpoint_to_head, self.tally.database, self.tally.checkpoint_key
        )
        if not all_made:
            return pb.CreateCheckpointResponse(created=False)
        made = all_made[-1]
        return pb.CreateCheckpointResponse(
            created=True,
            checkpoint_id=made.checkpoint_id,
            position=made.position,
            event_count=made.event_count,
            digest=made.digest.hex(),
            signed=made.signature is not None,
        )
