"""Read models built from the event log, and the runner that keeps each up to date.

`REGISTERED` is every projection the server runs: each gets its own runner and tracking
position (`ledger/runtime.py`), `ledger audit replay` rebuilds and compares each, and a query
waits for the ones it reads. A new read model is one projection class added here.
"""

from __future__ import annotations

from projections.insights import InsightsProjection
from projections.journal import JournalProjection
from projections.payments import PaymentsProjection
from projections.points import PointsProjection
from projections.revenue import RevenueProjection
from projections.runner import Projection

REGISTERED: tuple[type[Projection], ...] = (
    PointsProjection,
    JournalProjection,
    RevenueProjection,
    PaymentsProjection,
    InsightsProjection,
)
