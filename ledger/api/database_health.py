"""Health follows the database. STUB: the failover work fills this in."""

from __future__ import annotations

from collections.abc import Sequence

from grpc_health.v1._async import HealthServicer

from ledger.runtime import Tally


async def watch_database(tally: Tally, health: HealthServicer, services: Sequence[str]) -> None:
    """NOT_SERVING while the database cannot be reached, SERVING again once it can."""
    return
