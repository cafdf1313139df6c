"""Health follows the database: NOT_SERVING while it cannot be reached (or cannot take
writes: a standby), SERVING again once it can. Load balancers and clients that watch the
standard health service then route around this process until the database is back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from ledger.runtime import Tally

log = logging.getLogger(__name__)
# About a second between checks: an outage shows within one or two, and a check is one
# `SELECT pg_is_in_recovery()` on a connection kept for it (database.reachable).
CHECK_INTERVAL_SECONDS = 1.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def watch_database(
    tally: Tally,
    health: HealthServicer,
    services: Sequence[str],
    interval: float = CHECK_INTERVAL_SECONDS,
) -> None:
    """NOT_SERVING while the database cannot be reached, SERVING again once it can. Runs
    until cancelled (RunningServer.stop); the server set SERVING before starting it."""
    loop = asyncio.get_running_loop()
    serving = True
    while True:
        await asyncio.sleep(interval)
        reachable = await loop.run_in_executor(None, tally.database.reachable)
        if reachable == serving:
            continue
        serving = reachable
        if serving:
            log.info("database %s is reachable again: SERVING", tally.config.display)
        else:
            log.warning("database %s cannot be reached: NOT_SERVING", tally.config.display)
        for name in services:
            await health.set(name, SERVING if serving else NOT_SERVING)
