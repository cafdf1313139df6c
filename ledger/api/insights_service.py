"""InsightsService (protos/ledger/v1/insights.proto, docs/insights.md): member behaviour for
marketing. The servicer checks the request and translates; the figures are
ledger/insights_queries.py's (which `ledger report insights` calls too), read from the
insights read model (and the points read model's qualifying rows) on the report replica
when the server has one, like ReportService."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from ledger.api import page_tokens
from ledger.api.ledger_service import rpc
from ledger.api.report_base import ReportBase, checked
from ledger.api.responses import timestamp
from ledger.api.validation import Violations
from ledger.domain.insights import Segment, Stage
from ledger.insights_queries import (
    READS,
    InsightsQueries,
    MemberInsight,
    Page,
    SegmentFilter,
)
from ledger.queries import from_micros
from ledger.runtime import Tally
from ledger.v1 import insights_pb2 as pb
from ledger.v1 import insights_pb2_grpc as pb_grpc
from projections.points import micros

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_ANNIVERSARY_DAYS = 366
MAX_POINTS = 10**15
STAGE_PREFIX, SEGMENT_PREFIX = "LIFECYCLE_STAGE_", "RFM_SEGMENT_"


class InsightsServicer(ReportBase, pb_grpc.InsightsServiceServicer):
    def __init__(self, tally: Tally, executor: ThreadPoolExecutor) -> None:
        super().__init__(tally, executor)
        self.insights = InsightsQueries(self.reads)

    @rpc
    async def GetMemberInsights(self, request: Any, context: Any) -> pb.GetMemberInsightsResponse:
        v = checked(request)
        v.identifier("member_id", request.member_id)
        as_of = self._as_of(v, request)
        v.raise_if_any()
        program = await self._program(request, context, READS)
        found = await self._run(self.insights.member_insights, program, request.member_id, as_of)
        return pb.GetMemberInsightsResponse(
            insights=member_insights(found.insights),
            as_of=timestamp(as_of),
            position=found.position,
        )

    @rpc
    async def ListSegmentMembers(self, request: Any, context: Any) -> pb.ListSegmentMembersResponse:
        v = checked(request)
        stage = _enum(v, "lifecycle_stage", request.lifecycle_stage, pb.LifecycleStage, Stage)
        segment = _enum(v, "rfm_segment", request.rfm_segment, pb.RfmSegment, Segment)
        if stage is not None and segment is not None:
            v.add("rfm_segment", "give at most one of lifecycle_stage and rfm_segment")
        points = None
        if request.HasField("points_to_next_tier_at_most"):
            points = v.non_negative(
                "points_to_next_tier_at_most", request.points_to_next_tier_at_most, MAX_POINTS
            )
        days = None
        if request.HasField("enrolment_anniversary_within_days"):
            days = v.in_range(
                "enrolment_anniversary_within_days",
                request.enrolment_anniversary_within_days,
                0,
                MAX_ANNIVERSARY_DAYS,
            )
        size = v.in_range("page_size", request.page_size or DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        as_of = self._as_of(v, request)
        # The token is bound to the selection, and carries the as_of of the first page, so
        # that every page of an "as of now" walk reads the same instant.
        query = page_tokens.fingerprint(
            "segment-members",
            request.program_id,
            request.lifecycle_stage,
            request.rfm_segment,
            points,
            days,
            micros(as_of) if request.HasField("as_of") else "now",
        )
        after = ""
        if request.page_token:
            found = page_tokens.decode_keyed(
                v, request.page_token, query, 1, "the programme, a filter or as_of"
            )
            if found is not None:
                (first_as_of,), after = found
                as_of = from_micros(first_as_of)
        v.raise_if_any()
        program = await self._program(request, context, READS)
        page = await self._run(
            self.insights.segment_members,
            program,
            SegmentFilter(stage, segment, points, days),
            as_of,
            Page(size, after),
        )
        token = ""
        if page.next_after_member:
            token = page_tokens.encode_keyed((micros(as_of),), page.next_after_member, query)
        return pb.ListSegmentMembersResponse(
            members=[member_insights(m) for m in page.members],
            next_page_token=token,
            total=page.total,
            as_of=timestamp(as_of),
            position=page.position,
        )

    @rpc
    async def GetProgramInsights(self, request: Any, context: Any) -> pb.GetProgramInsightsResponse:
        v = checked(request)
        as_of = self._as_of(v, request)
        v.raise_if_any()
        program = await self._program(request, context, READS)
        found = await self._run(self.insights.program_insights, program, as_of)
        return pb.GetProgramInsightsResponse(
            members=found.members,
            purchasing_members=found.purchasing_members,
            stages=[
                pb.StageCount(stage=_stage_value(s), members=n) for s, n in found.stages.items()
            ],
            segments=[
                pb.SegmentCount(segment=_segment_value(s), members=n)
                for s, n in found.segments.items()
            ],
            revenue_minor=found.revenue_minor,
            top_20_percent_revenue_share_ppm=found.top_20_percent_revenue_share_ppm,
            repeat_purchase_rate_ppm=found.repeat_purchase_rate_ppm,
            points_redemption_rate_ppm=found.points_redemption_rate_ppm,
            stored_value_usage_rate_ppm=found.stored_value_usage_rate_ppm,
            revenue_by_store=[
                pb.StoreRevenue(
                    store_id=s.store_id,
                    net_purchases_minor=s.net_purchases_minor,
                    purchases=s.purchases,
                )
                for s in found.revenue_by_store
            ],
            as_of=timestamp(as_of),
            position=found.position,
        )

    def _as_of(self, v: Violations, request: Any) -> datetime:
        """The request's as_of in business time (unset: now), not in the future."""
        now = self.tally.app.clock()
        as_of = v.timestamp("as_of", request.as_of, request.HasField("as_of"))
        if as_of is not None and as_of > now:
            v.add("as_of", "must not be in the future")
        return as_of or now


def member_insights(m: MemberInsight) -> pb.MemberInsights:
    b = m.behaviour
    message = pb.MemberInsights(
        member_id=m.member_id,
        enrolled_at=timestamp(m.enrolled_at),
        recency_days=b.recency_days,
        frequency=b.frequency,
        monetary_minor=b.monetary_minor,
        average_order_minor=b.average_order_minor,
        purchase_cycle_days=b.purchase_cycle_days,
        lifetime_value_minor=b.lifetime_value_minor,
        lifetime_purchases=b.lifetime_purchases,
        favourite_store_id=b.favourite_store_id,
        lifecycle_stage=_stage_value(m.stage),
        recency_score=m.scores.recency,
        frequency_score=m.scores.frequency,
        monetary_score=m.scores.monetary,
        rfm_segment=(
            _segment_value(m.scores.segment) if m.scores.segment else pb.RFM_SEGMENT_UNSPECIFIED
        ),
        next_tier_code=m.next_tier_code,
        points_to_next_tier=m.points_to_next_tier,
    )
    if b.first_purchase_at is not None:
        message.first_purchase_at.CopyFrom(timestamp(b.first_purchase_at))
    if b.last_purchase_at is not None:
        message.last_purchase_at.CopyFrom(timestamp(b.last_purchase_at))
    return message


def _stage_value(stage: Stage) -> Any:
    return pb.LifecycleStage.Value(STAGE_PREFIX + stage.value)


def _segment_value(segment: Segment) -> Any:
    return pb.RfmSegment.Value(SEGMENT_PREFIX + segment.value)


def _enum(v: Violations, field: str, value: int, wire: Any, kind: type[Stage | Segment]) -> Any:
    """A request's stage or segment (None: unspecified); an unknown number is a violation."""
    if value == 0:
        return None
    try:
        name: str = wire.Name(value)
    except ValueError:
        v.add(field, f"{value} is not a {wire.DESCRIPTOR.name}")
        return None
    return kind(name.removeprefix(STAGE_PREFIX if kind is Stage else SEGMENT_PREFIX))
