"""ReportService's reconciliation: ReconcileStatement, GetReconciliation,
SignOffReconciliation."""

from __future__ import annotations

from ledger.api.report_base import ReportBase


class ReconciliationRpcs(ReportBase):
    pass
