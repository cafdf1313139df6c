"""What every ReportService method shares: the servicer's state, running a query off the
event loop, waiting for the read models it reads (min_position), finding the programme,
and the checks of the fields every report request has.

ReportService is one servicer put together from one class per concept (report_service.py:
the journal's reports; revenue_rpcs.py, forecast_rpcs.py, reconciliation_rpcs.py), each of
which derives from ReportBase."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

from ledger.api.ledger_service import reached
from ledger.api.replica_positions import replica_reached
from ledger.api.validation import Violations
from ledger.infrastructure.database import Database
from ledger.runtime import Tally
from projections.journal import NAME as JOURNAL

T = TypeVar("T")


class ReportBase:
    def __init__(self, tally: Tally, executor: ThreadPoolExecutor) -> None:
        self.tally = tally
        self.executor = executor
        # Where the read-only reports read their read models: the replica when the server
        # has one (--report-database), else the primary. Reconciliation writes its runs, so
        # it keeps to the primary (tally.database).
        self.reads: Database = tally.replica or tally.database

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _program(
        self, request: Any, context: Any, reads: tuple[str, ...] = (JOURNAL,)
    ) -> Any:
        """Wait for min_position in the read models `reads` (on the replica, if reports read
        one), then the programme (NOT_FOUND if there is none). The programme's settings come
        from the primary's cached aggregate either way."""
        if self.tally.replica is None:
            await reached(self.tally, request.min_position, context, reads)
        else:
            await replica_reached(self.tally.replica, request.min_position, context, reads)
        return await self._run(self.tally.app.get_program, request.program_id)


def checked(request: Any) -> Violations:
    """The checks every report request shares: its programme's id and min_position."""
    v = Violations()
    v.identifier("program_id", request.program_id)
    v.non_negative("min_position", request.min_position, limit=2**63 - 1)
    return v


def time_range(v: Violations, request: Any) -> tuple[datetime | None, datetime | None]:
    """A request's `since` and `until` (either may be unset), checked into `v`: since must
    come before until."""
    since = v.timestamp("since", request.since, request.HasField("since"))
    until = v.timestamp("until", request.until, request.HasField("until"))
    if since and until and since >= until:
        v.add("until", "must be after since")
    return since, until


def period(request: Any) -> tuple[datetime | None, datetime | None]:
    """A report's period (since, until], checked: INVALID_ARGUMENT unless since < until."""
    v = checked(request)
    since, until = time_range(v, request)
    v.raise_if_any()
    return since, until
