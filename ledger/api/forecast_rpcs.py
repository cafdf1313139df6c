"""ReportService's GetExpiryForecast (the points read model's lots) and GetPrepaidCustody (the
journal). The servicer checks the request and translates; the SQL and the rules are
ledger/forecast_queries.py, which `ledger report` calls too (docs/reports.md)."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from zoneinfo import ZoneInfo

from ledger.api import page_tokens
from ledger.api.ledger_service import rpc
from ledger.api.report_base import ReportBase, checked, time_range
from ledger.api.responses import timestamp
from ledger.api.validation import Violations
from ledger.domain import errors
from ledger.forecast_queries import PPM, ForecastQueries, expiry_window
from ledger.periods import MAX_PERIODS, Period, period_ends
from ledger.queries import from_micros
from ledger.runtime import Tally
from ledger.v1 import report_pb2 as pb
from projections.points import NAME as POINTS
from projections.points import micros

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
PERIODS = {
    pb.CUSTODY_PERIOD_MONTH: Period.MONTH,
    pb.CUSTODY_PERIOD_QUARTER: Period.QUARTER,
    pb.CUSTODY_PERIOD_YEAR: Period.YEAR,
}


class ForecastRpcs(ReportBase):
    def __init__(self, tally: Tally, executor: ThreadPoolExecutor) -> None:
        super().__init__(tally, executor)
        self.forecasts = ForecastQueries(self.reads)

    @rpc
    async def GetExpiryForecast(self, request: Any, context: Any) -> pb.GetExpiryForecastResponse:
        v = checked(request)
        v.identifier("member_id", request.member_id, required=False)
        size = v.in_range("page_size", request.page_size or DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        since = v.timestamp("since", request.since, request.HasField("since"))
        until = v.timestamp("until", request.until, request.HasField("until"))
        query = page_tokens.fingerprint(
            "expiry-forecast",
            request.program_id,
            micros(since),
            micros(until),
            request.member_id,
        )
        after: tuple[int, str] | None = None
        if request.page_token:
            decoded = decode_token(v, request.page_token, query)
            if decoded is not None:
                # The window the first page resolved (since unset: that page's now).
                since, after = from_micros(decoded[0]), (decoded[1], decoded[2])
        v.raise_if_any()
        since = since or self.tally.app.clock()
        window = expiry_window(v, since, until)
        v.raise_if_any()
        assert window is not None
        program = await self._program(request, context, reads=(POINTS,))
        if request.member_id and not await self._run(
            self.tally.queries.member_exists, request.program_id, request.member_id
        ):
            raise errors.MemberNotFound(
                f"member {request.member_id} is not enrolled in program {request.program_id}",
                member_id=request.member_id,
            )
        found = await self._run(
            self.forecasts.expiry_forecast,
            request.program_id,
            ZoneInfo(program.settings.time_zone),
            window[0],
            window[1],
            request.member_id,
            after,
            size,
        )
        return pb.GetExpiryForecastResponse(
            buckets=[
                pb.ExpiryBucket(
                    date=b.date.isoformat(),
                    expires_at=timestamp(from_micros(b.expires_at)),
                    points=b.points,
                    members=b.members,
                )
                for b in found.buckets
            ],
            members=[
                pb.ExpiringMember(
                    member_id=m.member_id,
                    points=m.points,
                    expires_at=timestamp(from_micros(m.expires_at)),
                )
                for m in found.members
            ],
            next_page_token=encode_token((micros(since), *found.after), query)
            if found.after
            else "",
            total_points=found.total_points,
            total_members=found.total_members,
            position=found.position,
        )

    @rpc
    async def GetPrepaidCustody(self, request: Any, context: Any) -> pb.GetPrepaidCustodyResponse:
        v = checked(request)
        period = PERIODS.get(request.period)
        if period is None:
            v.add("period", "required: CUSTODY_PERIOD_MONTH, _QUARTER or _YEAR")
        v.in_range("ratio_ppm", request.ratio_ppm, 0, PPM)
        since, until = time_range(v, request)
        v.raise_if_any()
        assert period is not None
        program = await self._program(request, context)
        zone = ZoneInfo(program.settings.time_zone)
        since = since or program.created_on
        until = until or self.tally.app.clock()
        ends = period_ends(period, zone, since, until) if since < until else []
        if ends is None:
            v.add("until", f"at most {MAX_PERIODS} periods in (since, until]")
            v.raise_if_any()
        assert ends is not None
        found = await self._run(
            self.forecasts.prepaid_custody,
            request.program_id,
            program.settings.currency,
            zone,
            ends,
            request.ratio_ppm,
        )
        return pb.GetPrepaidCustodyResponse(
            periods=[
                pb.CustodyPeriodRow(
                    period_end=timestamp(p.period_end),
                    period_label=p.period_label,
                    cash_balance_minor=p.cash_balance_minor,
                    custody_minor=p.custody_minor,
                    stores=[
                        pb.CustodyStore(
                            store_id=s.store_id,
                            cash_balance_minor=s.cash_balance_minor,
                            custody_minor=s.custody_minor,
                        )
                        for s in p.stores
                    ],
                )
                for p in found.periods
            ],
            ratio_ppm=found.ratio_ppm,
            currency=found.currency,
            position=found.position,
        )


# A forecast's page token: where the last page ended, (points, member_id), and the window's
# since as the first page resolved it, bound to the query like page_tokens' tokens.


def encode_token(after: tuple[int, int, str], query: str) -> str:
    payload = {"after": list(after), "query": query}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(v: Violations, token: str, query: str) -> tuple[int, int, str] | None:
    try:
        if len(token) > page_tokens.MAX_TOKEN:
            raise ValueError("too long")
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        since, points, member_id = payload["after"]
        if not (
            type(since) is int
            and type(points) is int
            and 0 <= since < 2**63
            and 0 < points < 2**63
            and isinstance(member_id, str)
            and 0 < len(member_id) <= 64
        ):
            raise ValueError("bad position")
    except (ValueError, KeyError, TypeError):
        v.add("page_token", "not a page token this server issued")
        return None
    if payload.get("query") != query:
        v.add("page_token", "belongs to a different query (member or time range changed)")
        return None
    return since, points, member_id
