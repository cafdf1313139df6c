"""ReportService's points-revenue reports: GetDeferredRevenue (IFRS 15) and GetBreakage,
read from the revenue read model by ledger/revenue_queries.py (which `ledger report` calls
too)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ledger.api.ledger_service import rpc
from ledger.api.report_base import ReportBase, checked, time_range
from ledger.api.responses import timestamp
from ledger.periods import Period
from ledger.revenue_queries import RevenueQueries
from ledger.runtime import Tally
from ledger.v1 import report_pb2 as pb
from projections.revenue import NAME as REVENUE

READS = (REVENUE,)
COHORTS = {
    pb.COHORT_MONTH: Period.MONTH,
    pb.COHORT_QUARTER: Period.QUARTER,
    pb.COHORT_YEAR: Period.YEAR,
}


class RevenueRpcs(ReportBase):
    def __init__(self, tally: Tally, executor: ThreadPoolExecutor) -> None:
        super().__init__(tally, executor)
        self.revenue = RevenueQueries(self.reads)

    @rpc
    async def GetDeferredRevenue(self, request: Any, context: Any) -> pb.GetDeferredRevenueResponse:
        v = checked(request)
        as_of = v.timestamp("as_of", request.as_of, request.HasField("as_of"))
        rate = None
        if request.HasField("expected_redemption_rate_ppm"):
            rate = v.in_range(
                "expected_redemption_rate_ppm", request.expected_redemption_rate_ppm, 1, 1_000_000
            )
        v.raise_if_any()
        await self._program(request, context, READS)
        found = await self._run(self.revenue.deferred_revenue, request.program_id, as_of, rate)
        return pb.GetDeferredRevenueResponse(**vars(found))

    @rpc
    async def GetBreakage(self, request: Any, context: Any) -> pb.GetBreakageResponse:
        v = checked(request)
        cohort = COHORTS.get(request.cohort)
        if cohort is None:
            v.add("cohort", "must be COHORT_MONTH, COHORT_QUARTER or COHORT_YEAR")
        since, until = time_range(v, request)
        v.raise_if_any()
        assert cohort is not None
        program = await self._program(request, context, READS)
        found = await self._run(
            self.revenue.breakage,
            request.program_id,
            cohort,
            since,
            until,
            program.settings.expected_redemption_rate_ppm,
        )
        return pb.GetBreakageResponse(
            rows=[
                pb.BreakageRow(
                    cohort_start=timestamp(r.cohort_start),
                    cohort_label=r.cohort_label,
                    issued=r.issued,
                    redeemed=r.redeemed,
                    expired=r.expired,
                    reversed=r.reversed,
                    outstanding=r.outstanding,
                    closed=r.closed,
                    observed_redemption_rate_ppm=r.observed_redemption_rate_ppm,
                    projected_redemption_rate_ppm=r.projected_redemption_rate_ppm,
                )
                for r in found.rows
            ],
            closed_redeemed_share_ppm=found.closed_redeemed_share_ppm,
            position=found.position,
        )
