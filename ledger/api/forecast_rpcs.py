"""ReportService's GetExpiryForecast and GetPrepaidCustody."""

from __future__ import annotations

from ledger.api.report_base import ReportBase


class ForecastRpcs(ReportBase):
    pass
