"""ReportService: the journal, the trial balance (docs/accounting.md) and the reports read
from the journal read model (docs/reports.md), and the servicer put together from the other
reports' classes (report_base.py). The servicer only checks the request and translates; the
sums and the reports' rules are ledger/journal_queries.py, which `ledger report` calls
too."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ledger.api import page_tokens
from ledger.api.forecast_rpcs import ForecastRpcs
from ledger.api.ledger_service import rpc
from ledger.api.reconciliation_rpcs import ReconciliationRpcs
from ledger.api.report_base import ReportBase, time_range
from ledger.api.report_base import checked as _checked
from ledger.api.report_base import period as _period
from ledger.api.responses import timestamp
from ledger.api.revenue_rpcs import RevenueRpcs
from ledger.journal_queries import JournalQueries, PostingsFilter
from ledger.journal_queries import Movements as MovementLines
from ledger.queries import from_micros
from ledger.runtime import Tally
from ledger.v1 import report_pb2 as pb
from ledger.v1 import report_pb2_grpc as pb_grpc

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class JournalRpcs(ReportBase):
    def __init__(self, tally: Tally, executor: ThreadPoolExecutor) -> None:
        super().__init__(tally, executor)
        self.journal = JournalQueries(self.reads)

    @rpc
    async def GetTrialBalance(self, request: Any, context: Any) -> pb.GetTrialBalanceResponse:
        v = _checked(request)
        as_of = v.timestamp("as_of", request.as_of, request.HasField("as_of"))
        v.raise_if_any()
        await self._program(request, context)
        trial = await self._run(self.journal.trial_balance, request.program_id, as_of)
        return pb.GetTrialBalanceResponse(
            rows=[
                pb.TrialBalanceRow(
                    ledger_account=r.ledger_account,
                    unit=r.unit,
                    debit=r.debit,
                    credit=r.credit,
                    balance=r.balance,
                )
                for r in trial.rows
            ],
            position=trial.position,
        )

    @rpc
    async def GetLiabilities(self, request: Any, context: Any) -> pb.GetLiabilitiesResponse:
        v = _checked(request)
        as_of = v.timestamp("as_of", request.as_of, request.HasField("as_of"))
        v.raise_if_any()
        program = await self._program(request, context)
        found = await self._run(
            self.journal.liabilities,
            request.program_id,
            program.settings.currency,
            program.settings.point_value_minor,
            as_of,
        )
        return pb.GetLiabilitiesResponse(
            points_outstanding=found.points_outstanding,
            points_debt=found.points_debt,
            points_value_minor=found.points_value_minor,
            point_value_minor=found.point_value_minor,
            stored_value_cash_minor=found.stored_value_cash_minor,
            stored_value_bonus_minor=found.stored_value_bonus_minor,
            currency=found.currency,
            rows=[
                pb.StoreLiability(
                    store_id=s.store_id,
                    stored_value_cash_minor=s.stored_value_cash_minor,
                    stored_value_bonus_minor=s.stored_value_bonus_minor,
                )
                for s in found.rows
            ]
            if request.group_by_store
            else [],
            position=found.position,
        )

    @rpc
    async def GetMovements(self, request: Any, context: Any) -> pb.GetMovementsResponse:
        since, until = _period(request)
        program = await self._program(request, context)
        found = await self._run(
            self.journal.movements, request.program_id, program.settings.currency, since, until
        )
        return pb.GetMovementsResponse(
            points=_movements(found.points),
            cash=_movements(found.cash),
            bonus=_movements(found.bonus),
            currency=found.currency,
            position=found.position,
        )

    @rpc
    async def GetSettlement(self, request: Any, context: Any) -> pb.GetSettlementResponse:
        since, until = _period(request)
        program = await self._program(request, context)
        found = await self._run(
            self.journal.settlement, request.program_id, program.settings.currency, since, until
        )
        return pb.GetSettlementResponse(
            rows=[
                pb.SettlementRow(
                    issuing_store_id=r.issuing_store_id,
                    redeeming_store_id=r.redeeming_store_id,
                    cash_minor=r.cash_minor,
                    bonus_minor=r.bonus_minor,
                )
                for r in found.rows
            ],
            net=[
                pb.SettlementNet(
                    debtor_store_id=n.debtor_store_id,
                    creditor_store_id=n.creditor_store_id,
                    cash_minor=n.cash_minor,
                    bonus_minor=n.bonus_minor,
                )
                for n in found.net
            ],
            total_cash_minor=found.total_cash_minor,
            total_bonus_minor=found.total_bonus_minor,
            spent_cash_minor=found.spent_cash_minor,
            spent_bonus_minor=found.spent_bonus_minor,
            currency=found.currency,
            position=found.position,
        )

    @rpc
    async def ListPostings(self, request: Any, context: Any) -> pb.ListPostingsResponse:
        v = _checked(request)
        v.text("transaction_id", request.transaction_id, limit=64)
        v.text("ledger_account", request.ledger_account, limit=200)
        size = v.in_range("page_size", request.page_size or DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        since, until = time_range(v, request)
        chosen = PostingsFilter(
            request.program_id, request.transaction_id, request.ledger_account, since, until
        )
        after = (0, -1)  # before the first posting
        query = page_tokens.fingerprint(*vars(chosen).values())
        if request.page_token:
            decoded = page_tokens.decode(v, request.page_token, query, 2, "filters or time range")
            after = (decoded[0], decoded[1]) if decoded else after
        v.raise_if_any()
        await self._program(request, context)
        page = await self._run(self.journal.postings, chosen, after, size)
        return pb.ListPostingsResponse(
            postings=[
                pb.Posting(
                    position=r.position,
                    transaction_id=r.transaction_id,
                    ledger_account=r.ledger_account,
                    unit=r.unit,
                    amount=r.amount,
                    occurred_at=timestamp(from_micros(r.occurred_at)),
                    recorded_at=timestamp(from_micros(r.recorded_at)),
                    store_id=r.store_id,
                )
                for r in page.rows
            ],
            next_page_token=page_tokens.encode(page.after, query) if page.after else "",
            total_count=page.total_count,
            total_amount=page.total_amount,
        )


def _movements(lines: MovementLines) -> pb.Movements:
    return pb.Movements(**vars(lines))


class ReportServicer(
    JournalRpcs, RevenueRpcs, ForecastRpcs, ReconciliationRpcs, pb_grpc.ReportServiceServicer
):
    """Every ReportService method, one class per concept; an RPC none of them defines is
    UNIMPLEMENTED (the generated base class)."""
