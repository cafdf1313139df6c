"""ReportService: the journal and the trial balance (docs/accounting.md), read from the
journal read model. The servicer only translates; the sums are SQL over rm_postings."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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
        after = (
            _decode(v, request.page_token, _fingerprint(chosen)) if request.page_token else (0, -1)
        )
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
            next_page_token=_encode(page.after, _fingerprint(chosen)) if page.after else "",
            total_count=page.total_count,
            total_amount=page.total_amount,
        )


def _fingerprint(chosen: PostingsFilter) -> str:
    key = "|".join(str(x) for x in vars(chosen).values())
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _encode(after: tuple[int, int], fingerprint: str) -> str:
    raw = json.dumps({"after": list(after), "query": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(v: Violations, token: str, fingerprint: str) -> tuple[int, int]:
    try:
        if len(token) > 512:
            raise ValueError("too long")
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position, seq = payload["after"]
        if not all(type(x) is int and 0 <= x < 2**63 for x in (position, seq)):
            raise ValueError("bad position")
    except (ValueError, KeyError, TypeError):
        v.add("page_token", "not a page token this server issued")
        return (0, -1)
    if payload.get("query") != fingerprint:
        v.add("page_token", "belongs to a different query (filters or time range changed)")
        return (0, -1)
    return (int(position), int(seq))
