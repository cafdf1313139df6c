"""ReportService's points-revenue reports: GetDeferredRevenue (IFRS 15) and GetBreakage."""

from __future__ import annotations

from ledger.api.report_base import ReportBase


class RevenueRpcs(ReportBase):
    pass
