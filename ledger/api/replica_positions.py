"""min_position on a report replica: the read models a report reads there are as far as the
replica's own projection_tracking rows say (streamed from the primary, later), so a report
waits on those, polled, not on this process's runners."""

from __future__ import annotations

import asyncio

import grpc
import psycopg

from ledger.api.ledger_service import MAX_WAIT_SECONDS
from ledger.infrastructure.database import Database

POLL_SECONDS = 0.01


def replica_position(replica: Database, reads: tuple[str, ...]) -> int:
    """The log position every read model in `reads` has reached on the replica (0 while it
    has not replayed the tables yet: a replica made just before the primary migrated)."""
    try:
        with replica.read() as cur:
            cur.execute("SELECT name, position FROM projection_tracking")
            positions = {str(name): int(position) for name, position in cur.fetchall()}
    except psycopg.errors.UndefinedTable:
        return 0
    return min(positions.get(name, 0) for name in reads)


async def replica_reached(
    replica: Database, position: int, context: grpc.aio.ServicerContext, reads: tuple[str, ...]
) -> None:
    """As ledger_service.reached, on the replica: wait until its read models `reads` have
    `position`, within the call's deadline (30 s at most): DEADLINE_EXCEEDED when the caller
    set a deadline, UNAVAILABLE when it did not; UNAVAILABLE as well while the replica
    cannot be reached."""
    if position <= 0:
        return
    loop = asyncio.get_running_loop()
    remaining = context.time_remaining()
    budget = MAX_WAIT_SECONDS if remaining is None else min(remaining, MAX_WAIT_SECONDS)
    deadline = loop.time() + budget
    while True:
        try:
            # The default executor: the servicers' pool may be busy with the reports waited for.
            at = await loop.run_in_executor(None, replica_position, replica, reads)
        except psycopg.OperationalError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the report replica cannot be reached")
        if at >= position:
            return
        if loop.time() >= deadline:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED
                if remaining is not None
                else grpc.StatusCode.UNAVAILABLE,
                f"the report replica's projections are at position {at}, not yet {position}",
            )
        await asyncio.sleep(POLL_SECONDS)
