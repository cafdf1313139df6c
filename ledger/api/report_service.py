"""ReportService: the journal and the trial balance (docs/accounting.md), read from the
journal read model. The servicer only translates; the sums are SQL over rm_postings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ledger.api import page_tokens
from ledger.api.ledger_service import processed, reached, rpc
from ledger.api.responses import timestamp
from ledger.api.validation import Violations
from ledger.journal_queries import JournalQueries, PostingsFilter
from ledger.queries import from_micros
from ledger.runtime import Tally
from ledger.v1 import report_pb2 as pb
from ledger.v1 import report_pb2_grpc as pb_grpc
from projections.journal import NAME as JOURNAL

T = TypeVar("T")
READS = (JOURNAL,)
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class ReportServicer(pb_grpc.ReportServiceServicer):
    def __init__(self, tally: Tally, executor: ThreadPoolExecutor) -> None:
        self.tally = tally
        self.executor = executor
        self.journal = JournalQueries(tally.database)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @rpc
    async def GetTrialBalance(self, request: Any, context: Any) -> pb.GetTrialBalanceResponse:
        v = Violations()
        v.identifier("program_id", request.program_id)
        v.non_negative("min_position", request.min_position, limit=2**63 - 1)
        as_of = v.timestamp("as_of", request.as_of, request.HasField("as_of"))
        v.raise_if_any()
        await reached(self.tally, request.min_position, context, READS)
        await self._run(self.tally.app.get_program, request.program_id)  # NOT_FOUND if not
        position = processed(self.tally, READS)
        rows = await self._run(self.journal.trial_balance, request.program_id, as_of)
        return pb.GetTrialBalanceResponse(
            rows=[
                pb.TrialBalanceRow(
                    ledger_account=r.ledger_account,
                    unit=r.unit,
                    debit=r.debit,
                    credit=r.credit,
                    balance=r.balance,
                )
                for r in rows
            ],
            position=position,
        )

    @rpc
    async def ListPostings(self, request: Any, context: Any) -> pb.ListPostingsResponse:
        v = Violations()
        v.identifier("program_id", request.program_id)
        v.non_negative("min_position", request.min_position, limit=2**63 - 1)
        v.text("transaction_id", request.transaction_id, limit=64)
        v.text("ledger_account", request.ledger_account, limit=200)
        size = v.in_range("page_size", request.page_size or DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        since = v.timestamp("since", request.since, request.HasField("since"))
        until = v.timestamp("until", request.until, request.HasField("until"))
        if since and until and since >= until:
            v.add("until", "must be after since")
        chosen = PostingsFilter(
            request.program_id, request.transaction_id, request.ledger_account, since, until
        )
        after = (0, -1)  # before the first posting
        query = page_tokens.fingerprint(*vars(chosen).values())
        if request.page_token:
            decoded = page_tokens.decode(v, request.page_token, query, 2, "filters or time range")
            after = (decoded[0], decoded[1]) if decoded else after
        v.raise_if_any()
        await reached(self.tally, request.min_position, context, READS)
        await self._run(self.tally.app.get_program, request.program_id)
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
