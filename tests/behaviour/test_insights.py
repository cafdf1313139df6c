"""InsightsService over gRPC on both backends: small histories written with occurred_at in
the past, read at `as_of` instants (never by waiting), every figure computed by hand.

The programme (UTC, SILVER at 100 qualifying points, GOLD at 500), days before now:
- none:     enrolled 100 days ago; no purchase; tops up 100.00 (-10), spends 25.00 (-5),
            5.00 of the spend refunded (-1)
- one:      enrolled -100; one purchase, 50.00 at s1 (-20, 50 points); redeems 40 points (-15)
- refunded: enrolled -100; 30.00 at s2 (-40, 30 points), reversed whole (-35): pro rata, all
- partial:  enrolled -100; 100.00 at s1 (-60, 100 points), 50 points of it reversed with
            25.00 refunded (-50); 40.00 at s2 (-30, 40 points)
- atrisk:   enrolled -100; 20.00 at s1 (-50, 20 points)
- anniv:    enrolled -360 (its anniversary in 5 or 6 days); no purchase
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.audit.replay import read_live, rebuild
from ledger.domain.insights import (
    behaviour_at,
    lifetime_of,
    local_day,
    programme_cuts,
    stage_at,
    stage_of,
)
from ledger.infrastructure.database import open_database, parse_database_url
from ledger.insights_queries import InsightsQueries, _fast, _past, _purchases_of, _stores_at
from ledger.v1 import insights_pb2 as ipb
from ledger.v1 import insights_pb2_grpc as ipb_grpc
from ledger.v1 import ledger_pb2 as pb
from projections.insights import InsightsProjection, life_state, lifetime_columns
from tests.support import Client, ServerThread, log_head, new_id, refused, ts

DAY = timedelta(days=1)
ACTIVE, AT_RISK, DORMANT = (
    ipb.LIFECYCLE_STAGE_ACTIVE,
    ipb.LIFECYCLE_STAGE_AT_RISK,
    ipb.LIFECYCLE_STAGE_DORMANT,
)
CHAMPIONS, LOYAL, SEG_AT_RISK = (
    ipb.RFM_SEGMENT_CHAMPIONS,
    ipb.RFM_SEGMENT_LOYAL,
    ipb.RFM_SEGMENT_AT_RISK,
)
TIERS = [
    pb.Tier(code="SILVER", name="Silver", threshold=100),
    pb.Tier(code="GOLD", name="Gold", threshold=500),
]


@dataclass
class History:
    program: str
    now: datetime
    anniversary_in_days: int
    head: int


def _write(client: Client, server: ServerThread) -> History:
    now = datetime.now(UTC)

    def ago(days: int) -> Timestamp:
        return ts(now - days * DAY)

    program = client.create_program(tiers=TIERS)
    for member in ("none", "one", "refunded", "partial", "atrisk"):
        client.enroll(program, member, occurred_at=ago(100))
    enrolled = (now - 360 * DAY).date()
    days_back = 361 if (enrolled.month, enrolled.day) == (2, 29) else 360
    client.enroll(program, "anniv", occurred_at=ago(days_back))
    first = (now - days_back * DAY).date()
    gap = (date(first.year + 1, first.month, first.day) - now.date()).days

    def earn(member: str, points: int, money: int, store: str, days: int) -> str:
        response = client.earn(
            program, member, points, purchase_minor=money, store_id=store, occurred_at=ago(days)
        )
        return str(response.transaction_id)

    top_up = client.top_up(program, "none", 10000, bonus_minor=0, occurred_at=ago(10))
    assert top_up.transaction_id
    spend = client.spend(program, "none", 2500, occurred_at=ago(5))
    client.refund(program, "none", spend.transaction_id, 500, occurred_at=ago(1))
    earn("one", 50, 5000, "s1", 20)
    client.redeem(program, "one", 40, occurred_at=ago(15))
    refunded = earn("refunded", 30, 3000, "s2", 40)
    client.reverse(program, "refunded", refunded, occurred_at=ago(35))
    big = earn("partial", 100, 10000, "s1", 60)
    client.reverse(program, "partial", big, 50, refund_purchase_minor=2500, occurred_at=ago(50))
    earn("partial", 40, 4000, "s2", 30)
    earn("atrisk", 20, 2000, "s1", 50)
    return History(program, now, gap, log_head(server))


@pytest.fixture
def insights(client: Client) -> Any:
    return ipb_grpc.InsightsServiceStub(client.channel)


@pytest.fixture
def history(client: Client, server: ServerThread) -> History:
    return _write(client, server)


def member(stub: Any, h: History, member_id: str, as_of: datetime | None = None) -> Any:
    request = ipb.GetMemberInsightsRequest(
        program_id=h.program, member_id=member_id, min_position=h.head
    )
    if as_of is not None:
        request.as_of.CopyFrom(ts(as_of))
    return stub.GetMemberInsights(request, timeout=30).insights


def listed(stub: Any, h: History, **fields: Any) -> Any:
    fields.setdefault("min_position", h.head)
    if "as_of" in fields:
        fields["as_of"] = ts(fields["as_of"])
    request = ipb.ListSegmentMembersRequest(program_id=h.program, **fields)
    return stub.ListSegmentMembers(request, timeout=30)


def ids(response: Any) -> list[str]:
    return [m.member_id for m in response.members]


# ---------------------------------------------------------------------- one member


def test_a_member_with_a_partial_refund(insights: Any, history: History) -> None:
    m = member(insights, history, "partial")
    assert (m.recency_days, m.frequency, m.monetary_minor) == (30, 2, 11500)
    assert (m.average_order_minor, m.purchase_cycle_days) == (5750, 30)
    assert (m.lifetime_value_minor, m.lifetime_purchases) == (11500, 2)
    assert m.first_purchase_at.ToDatetime(tzinfo=UTC) == history.now - 60 * DAY
    assert m.last_purchase_at.ToDatetime(tzinfo=UTC) == history.now - 30 * DAY
    assert m.favourite_store_id == "s1"  # 75.00 against 40.00
    assert m.lifecycle_stage == ACTIVE  # 30 days of a 30-day cycle: not past 45
    # N = 3: R by last day (-50, -30, -20) -> 2, 4, 5; F (1, 1, 2) -> 4, 4, 5; M (2000,
    # 5000, 11500) -> 2, 4, 5.
    assert (m.recency_score, m.frequency_score, m.monetary_score) == (4, 5, 5)
    assert m.rfm_segment == CHAMPIONS
    assert (m.next_tier_code, m.points_to_next_tier) == ("SILVER", 10)  # 100 + 40 - 50


def test_one_purchase_and_segments_of_the_others(insights: Any, history: History) -> None:
    one = member(insights, history, "one")
    assert (one.recency_days, one.lifetime_purchases, one.lifetime_value_minor) == (20, 1, 5000)
    assert (one.purchase_cycle_days, one.average_order_minor) == (0, 5000)
    assert one.first_purchase_at == one.last_purchase_at
    assert (one.recency_score, one.frequency_score, one.monetary_score) == (5, 4, 4)
    assert (one.lifecycle_stage, one.rfm_segment) == (ACTIVE, LOYAL)
    assert (one.next_tier_code, one.points_to_next_tier) == ("SILVER", 50)  # redeeming keeps them
    risk = member(insights, history, "atrisk")
    # One purchase 50 days ago: 5000 > 30 x 150.
    assert (risk.recency_days, risk.lifecycle_stage) == (50, AT_RISK)
    assert (risk.recency_score, risk.frequency_score, risk.monetary_score) == (2, 4, 2)
    assert risk.rfm_segment == SEG_AT_RISK  # R 2, FM 3


def test_members_without_purchases(insights: Any, history: History) -> None:
    for member_id in ("none", "refunded"):
        m = member(insights, history, member_id)
        assert (m.recency_days, m.lifetime_purchases, m.lifetime_value_minor) == (-1, 0, 0)
        assert not m.HasField("first_purchase_at")
        assert not m.HasField("last_purchase_at")
        assert (m.recency_score, m.rfm_segment) == (0, ipb.RFM_SEGMENT_UNSPECIFIED)
        assert m.lifecycle_stage == DORMANT  # enrolled 100 days, never bought (to now)
        assert (m.next_tier_code, m.points_to_next_tier) == ("SILVER", 100)
        assert m.enrolled_at.ToDatetime(tzinfo=UTC) == history.now - 100 * DAY


def test_the_refunded_purchase_counted_until_its_refund(insights: Any, history: History) -> None:
    # 38 days ago: bought 2 days before, the refund (-35) still ahead. Purchasing then:
    # partial (75.00 on -60), atrisk (20.00 on -50), refunded (30.00 on -40): R 2, 4, 5;
    # F all 1 -> 5; M 2000, 3000, 7500 -> 2, 4, 5. FM = 4.5 -> 5: CHAMPIONS.
    m = member(insights, history, "refunded", history.now - 38 * DAY)
    assert (m.recency_days, m.lifetime_purchases, m.lifetime_value_minor) == (2, 1, 3000)
    assert m.lifecycle_stage == ACTIVE
    assert (m.recency_score, m.frequency_score, m.monetary_score) == (5, 5, 4)
    assert m.rfm_segment == CHAMPIONS
    assert (m.next_tier_code, m.points_to_next_tier) == ("SILVER", 70)  # 30 earned by then


def test_stages_change_with_as_of(insights: Any, history: History) -> None:
    # atrisk's only purchase was 50 days ago: ACTIVE 45 days after it, AT_RISK from 46.

    def at(days: int) -> datetime:
        return history.now - days * DAY

    assert member(insights, history, "atrisk", at(5)).lifecycle_stage == ACTIVE
    assert member(insights, history, "atrisk", at(4)).lifecycle_stage == AT_RISK
    # Before its purchase (enrolled 100 days ago): never bought, past the first month.
    before = member(insights, history, "atrisk", at(51))
    assert (before.lifecycle_stage, before.lifetime_purchases) == (DORMANT, 0)
    # In its first month with no purchase yet: NEW.
    assert member(insights, history, "atrisk", at(80)).lifecycle_stage == ipb.LIFECYCLE_STAGE_NEW
    # partial as of -45: the partly refunded 100.00 counts as 75.00. Scored against atrisk
    # alone (20.00 on -50): R (-60, -50) -> 3, 5; F both 1 -> 5; M 7500 -> 5: LOYAL.
    p = member(insights, history, "partial", at(45))
    assert (p.lifetime_purchases, p.lifetime_value_minor, p.recency_days) == (1, 7500, 15)
    assert (p.recency_score, p.frequency_score, p.monetary_score) == (3, 5, 5)
    assert p.rfm_segment == LOYAL


# ---------------------------------------------------------------------- members to reach


def test_lists_by_stage_and_segment(insights: Any, history: History) -> None:
    dormant = listed(insights, history, lifecycle_stage=DORMANT)
    assert (ids(dormant), dormant.total, dormant.next_page_token) == (
        ["anniv", "none", "refunded"],
        3,
        "",
    )
    assert ids(listed(insights, history, lifecycle_stage=ACTIVE)) == ["one", "partial"]
    assert ids(listed(insights, history, rfm_segment=CHAMPIONS)) == ["partial"]
    assert ids(listed(insights, history, rfm_segment=SEG_AT_RISK)) == ["atrisk"]
    everyone = listed(insights, history)
    assert everyone.total == 6
    assert ids(everyone) == ["anniv", "atrisk", "none", "one", "partial", "refunded"]
    # The listed members carry their whole insights (here: the fast path's page read).
    partial = next(m for m in everyone.members if m.member_id == "partial")
    assert (partial.frequency, partial.monetary_minor, partial.favourite_store_id) == (
        2,
        11500,
        "s1",
    )


def test_lists_by_points_to_the_next_tier(insights: Any, history: History) -> None:
    # To SILVER (100): partial 10, one 50, atrisk 80, the others 100.
    assert ids(listed(insights, history, points_to_next_tier_at_most=10)) == ["partial"]
    assert ids(listed(insights, history, points_to_next_tier_at_most=9)) == []
    assert ids(listed(insights, history, points_to_next_tier_at_most=50)) == ["one", "partial"]
    assert listed(insights, history, points_to_next_tier_at_most=100).total == 6
    risky = listed(insights, history, lifecycle_stage=AT_RISK, points_to_next_tier_at_most=80)
    assert ids(risky) == ["atrisk"]
    # 38 days ago: refunded had 30 (70 to go), partial 50 (75.00 and 50 points reversed).
    past = listed(insights, history, points_to_next_tier_at_most=70, as_of=history.now - 38 * DAY)
    assert ids(past) == ["partial", "refunded"]


def test_lists_by_enrolment_anniversary(insights: Any, history: History) -> None:
    gap = history.anniversary_in_days
    assert gap in (5, 6)
    near = listed(insights, history, enrolment_anniversary_within_days=gap)
    assert ids(near) == ["anniv"]
    assert ids(listed(insights, history, enrolment_anniversary_within_days=gap - 1)) == []
    # Enrolled 100 days ago: their first anniversary is 265 days ahead.
    assert listed(insights, history, enrolment_anniversary_within_days=265).total == 6
    assert listed(insights, history, enrolment_anniversary_within_days=264).total == 1


def test_paging_with_the_control_total(insights: Any, history: History) -> None:
    first = listed(insights, history, page_size=4)
    assert (ids(first), first.total) == (["anniv", "atrisk", "none", "one"], 6)
    assert first.next_page_token
    second = listed(insights, history, page_size=4, page_token=first.next_page_token)
    assert (ids(second), second.total, second.next_page_token) == (["partial", "refunded"], 6, "")
    assert second.as_of == first.as_of  # every page reads the first page's instant
    dormant = listed(insights, history, lifecycle_stage=DORMANT, page_size=2)
    rest = listed(
        insights, history, lifecycle_stage=DORMANT, page_size=2, page_token=dormant.next_page_token
    )
    assert (ids(dormant), ids(rest), rest.total) == (["anniv", "none"], ["refunded"], 3)
    # A token belongs to its selection.
    problem = refused(
        lambda: listed(insights, history, lifecycle_stage=ACTIVE, page_token=first.next_page_token)
    )
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in problem.fields


# ---------------------------------------------------------------------- programme figures


def program(stub: Any, h: History, as_of: datetime | None = None) -> Any:
    request = ipb.GetProgramInsightsRequest(program_id=h.program, min_position=h.head)
    if as_of is not None:
        request.as_of.CopyFrom(ts(as_of))
    return stub.GetProgramInsights(request, timeout=30)


def test_programme_figures(insights: Any, history: History) -> None:
    p = program(insights, history)
    assert (p.members, p.purchasing_members) == (6, 3)
    stages = {s.stage: s.members for s in p.stages}
    assert stages == {
        ipb.LIFECYCLE_STAGE_NEW: 0,
        ACTIVE: 2,
        AT_RISK: 1,
        DORMANT: 3,
        ipb.LIFECYCLE_STAGE_LOST: 0,
    }
    segments = {s.segment: s.members for s in p.segments if s.members}
    assert segments == {CHAMPIONS: 1, LOYAL: 1, SEG_AT_RISK: 1}
    assert p.revenue_minor == 18500  # 50.00 + 115.00 + 20.00
    assert p.top_20_percent_revenue_share_ppm == 621622  # 11500 / 18500, ceil(3/5) = 1
    assert p.repeat_purchase_rate_ppm == 333333  # 1 of 3
    # Earned 50 + (30 - 30) + (100 - 50 + 40) + 20 = 160; redeemed 40.
    assert p.points_redemption_rate_ppm == 250000
    # Loaded 100.00; used 25.00 - 5.00.
    assert p.stored_value_usage_rate_ppm == 200000
    stores = [(s.store_id, s.net_purchases_minor, s.purchases) for s in p.revenue_by_store]
    assert stores == [("s1", 14500, 3), ("s2", 4000, 1)]
    assert p.position >= history.head


def test_programme_figures_as_of_the_past(insights: Any, history: History) -> None:
    # -3 days: the spend's refund (-1) is still ahead: 25.00 of 100.00.
    assert program(insights, history, history.now - 3 * DAY).stored_value_usage_rate_ppm == 250000
    p = program(insights, history, history.now - 38 * DAY)
    # By then: anniv, and the five enrolled 100 days ago; purchases of partial (75.00 at s1),
    # atrisk (20.00 at s1), refunded (30.00 at s2, refund ahead).
    assert (p.members, p.purchasing_members, p.revenue_minor) == (6, 3, 12500)
    assert p.top_20_percent_revenue_share_ppm == 600000  # 7500 / 12500
    assert p.repeat_purchase_rate_ppm == 0
    # Earned by then: 100 - 50 + 20 + 30 = 100; nothing redeemed, nothing loaded.
    assert (p.points_redemption_rate_ppm, p.stored_value_usage_rate_ppm) == (0, 0)
    stores = [(s.store_id, s.net_purchases_minor, s.purchases) for s in p.revenue_by_store]
    assert stores == [("s1", 9500, 2), ("s2", 3000, 1)]
    stages = {s.stage: s.members for s in p.stages}
    # one: never bought by then, 62 days enrolled: DORMANT, as none and anniv.
    assert (stages[ACTIVE], stages[DORMANT], stages[AT_RISK]) == (3, 3, 0)


# ---------------------------------------------------------------------- live equals a rebuild


def test_the_read_model_after_a_rebuild_equals_the_live_one(
    client: Client, server: ServerThread, insights: Any, history: History
) -> None:
    program(insights, history)  # caught up with the history
    config = parse_database_url(server.database_url)
    positions, live = read_live(config)

    def mine(rows: dict[Any, tuple[Any, ...]]) -> dict[Any, tuple[Any, ...]]:
        return {key: row for key, row in rows.items() if history.program in (row[0], row[1])}

    with tempfile.TemporaryDirectory() as folder:
        scratch_path = Path(folder) / "replay.db"
        replayed = rebuild(config, positions, scratch_path)
        scratch = open_database(parse_database_url(f"sqlite:///{scratch_path}"))
        try:
            prog = server.tally.app.get_program(history.program)
            again = InsightsQueries(scratch).program_insights(prog, history.now)
        finally:
            scratch.close()
    for table in InsightsProjection.tables:
        assert mine(live[table]), table  # the history wrote to every table
        assert mine(live[table]) == mine(replayed[table]), table
    assert len(mine(live["rm_insight_refunds"])) == 2
    live_figures = InsightsQueries(server.tally.database).program_insights(prog, history.now)
    assert again.revenue_minor == live_figures.revenue_minor == 18500
    assert again.stages == live_figures.stages
    assert again.segments == live_figures.segments


# ---------------------------------------------------------------------- bad input


def test_bad_input_and_unknown_names(insights: Any, client: Client, history: History) -> None:
    future = ts(datetime.now(UTC) + timedelta(hours=1))

    def bad(call: Any) -> dict[str, str]:
        problem = refused(call)
        assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
        return problem.fields

    assert set(
        bad(
            lambda: insights.GetMemberInsights(
                ipb.GetMemberInsightsRequest(program_id="", member_id="bad id!", as_of=future)
            )
        )
    ) == {"program_id", "member_id", "as_of"}
    assert set(
        bad(
            lambda: insights.ListSegmentMembers(
                ipb.ListSegmentMembersRequest(
                    program_id=history.program,
                    lifecycle_stage=ACTIVE,
                    rfm_segment=CHAMPIONS,
                    points_to_next_tier_at_most=-1,
                    enrolment_anniversary_within_days=367,
                    page_size=1001,
                    page_token="not-a-token",
                )
            )
        )
    ) == {
        "rfm_segment",
        "points_to_next_tier_at_most",
        "enrolment_anniversary_within_days",
        "page_size",
        "page_token",
    }
    assert "lifecycle_stage" in bad(
        lambda: insights.ListSegmentMembers(
            ipb.ListSegmentMembersRequest(
                program_id=history.program, lifecycle_stage=ipb.LifecycleStage.ValueType(99)
            )
        )
    )
    assert "min_position" in bad(
        lambda: insights.GetProgramInsights(
            ipb.GetProgramInsightsRequest(program_id=history.program, min_position=-1)
        )
    )
    unknown = refused(
        lambda: insights.GetProgramInsights(ipb.GetProgramInsightsRequest(program_id=new_id("p")))
    )
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")
    nobody = refused(lambda: member(insights, history, "nobody"))
    assert (nobody.code, nobody.reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    # Enrolled 100 days ago: not a member 101 days ago.
    early = refused(lambda: member(insights, history, "one", history.now - 101 * DAY))
    assert (early.code, early.reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")


def test_the_stored_facts_equal_the_facts_computed_from_the_purchases(
    server: ServerThread, insights: Any, history: History
) -> None:
    """Now (the stored lifetime facts and cuts) and in the past (each member's facts row at
    as_of, the cuts made of them, the stores summed in SQL) give what behaviour_at over every
    member's purchases gives at the same instant, stage and scores included."""
    program(insights, history)  # caught up with the history
    extra = [history.now - d * DAY for d in (101, 99, 45, 25, 2)]
    assert facts_agree(server, history.program, extra) > 10
    prog = server.tally.app.get_program(history.program)
    zone, now = ZoneInfo(prog.settings.time_zone), datetime.now(UTC)
    with server.tally.database.read() as cur:
        fast = _fast(cur, history.program, zone, now)
        past = _past(cur, history.program, zone, now)
    assert fast.cuts == past.cuts
    assert fast.cuts.frequency.members == 3
    assert sorted((m.member_id, m.behaviour) for m in fast.members) == sorted(
        (m.member_id, m.behaviour) for m in past.members
    )


def test_late_purchases_and_refunds_rewrite_a_members_past(
    client: Client, server: ServerThread, insights: Any
) -> None:
    """Facts recorded in another order than they occurred, each in a batch of its own (the
    projection waited for between them): a till uploading an older purchase, a refund of
    it, a purchase on the day of another, a refund dated before an earlier-recorded one.
    And purchases in order, each after every fact of its member, which update the kept
    Lifetime without reading the others. Every member's facts at every instant still equal
    behaviour_at's, and a rebuild's. In Shanghai's days, not UTC's."""
    now = datetime.now(UTC)
    program_id = client.create_program(tiers=TIERS, time_zone="Asia/Shanghai")

    def ago(days: float) -> Timestamp:
        return ts(now - timedelta(days=days))

    # Enrolled at 20:00 UTC: already the next day in Shanghai, the day the stage counts from.
    enrolled = (now - timedelta(days=200)).replace(hour=20, minute=0, second=0, microsecond=0)

    def settle() -> None:
        request = ipb.GetProgramInsightsRequest(
            program_id=program_id, min_position=log_head(server)
        )
        insights.GetProgramInsights(request, timeout=30)
        rows_agree(server, program_id)  # after each batch, not only at the end

    for member_id in ("late", "other", "steady"):
        client.enroll(program_id, member_id, occurred_at=ts(enrolled))
    settle()
    steps: list[tuple[str, int, int, str, float]] = [
        ("late", 10, 1000, "s1", 10),
        ("other", 30, 3000, "s2", 40),
        ("late", 20, 2000, "s2", 30),  # uploaded late: before the one above
        ("late", 50, 5000, "s3", 10.5),  # the same local day as the first, probably
        ("late", 40, 4000, "s1", 60),
        ("other", 5, 500, "s1", 41),
        # In order, each after every fact: added to the member's kept Lifetime.
        ("steady", 10, 1000, "s2", 100),
        ("steady", 10, 1000, "s1", 99.9),  # a tie between two stores
        ("steady", 5, 500, "s1", 93),
        ("steady", 25, 2500, "s3", 80),
        ("steady", 3, 300, "s2", 80),  # at the very instant of the one before
    ]
    earned: dict[float, str] = {}
    for member_id, points, money, store, days in steps:
        response = client.earn(
            program_id,
            member_id,
            points,
            purchase_minor=money,
            store_id=store,
            occurred_at=ago(days),
        )
        earned[days] = str(response.transaction_id)
        settle()
    client.reverse(program_id, "late", earned[30], occurred_at=ago(5))  # whole, late
    settle()
    client.reverse(
        program_id, "late", earned[60], 10, refund_purchase_minor=1500, occurred_at=ago(55)
    )
    settle()
    client.reverse(program_id, "other", earned[40], occurred_at=ago(35))
    settle()
    client.reverse(
        program_id, "steady", earned[93], 2, refund_purchase_minor=200, occurred_at=ago(79)
    )
    settle()
    client.earn(program_id, "steady", 7, purchase_minor=700, store_id="s1", occurred_at=ago(70))
    settle()
    # 15:00 UTC 31 days on: 31 days in UTC (DORMANT), 30 in Shanghai (still NEW).
    edge = enrolled.replace(hour=15) + timedelta(days=31)
    extra = [edge, *(now - timedelta(days=d) for d in (100, 50, 20, 7))]
    assert facts_agree(server, program_id, extra)
    config = parse_database_url(server.database_url)
    positions, live = read_live(config)
    with tempfile.TemporaryDirectory() as folder:
        replayed = rebuild(config, positions, Path(folder) / "replay.db")
    for table in InsightsProjection.tables:
        rows = {k: r for k, r in live[table].items() if program_id in (r[0], r[1])}
        again = {k: r for k, r in replayed[table].items() if program_id in (r[0], r[1])}
        assert rows == again, table
    with server.tally.database.read() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM rm_insight_member_facts WHERE program_id = ? AND member_id = ?",
            (program_id, "late"),
        )
        assert cur.fetchone() == (6,)  # four purchases and two refunds: an instant each


def facts_agree(server: ServerThread, program_id: str, extra: list[datetime]) -> int:
    """Checks _past (and _stores_at) against behaviour_at over every member's purchases at
    every instant a fact changes, a microsecond either side, and at `extra` and now; returns
    at how many of them some member had bought."""
    prog = server.tally.app.get_program(program_id)
    zone, settings = ZoneInfo(prog.settings.time_zone), prog.settings.insights
    checked = 0
    with server.tally.database.read() as cur:
        cur.execute(
            "SELECT member_id, enrolled_at FROM rm_insight_members WHERE program_id = ?",
            (program_id,),
        )
        enrolled = [(str(m), int(at)) for m, at in cur.fetchall()]
        cur.execute(
            "SELECT occurred_at FROM rm_insight_purchases WHERE program_id = ? UNION"
            " SELECT occurred_at FROM rm_insight_refunds WHERE program_id = ?",
            (program_id, program_id),
        )
        instants = sorted({int(at) + d for (at,) in cur.fetchall() for d in (-1, 0, 1)})
        moments = [_EPOCH_TEST + timedelta(microseconds=at) for at in instants]
        for as_of in [*moments, *extra, datetime.now(UTC)]:
            members = [m for m, at in enrolled if at <= micros_of(as_of)]
            bought = _purchases_of(cur, program_id, members, as_of)
            exact = {m: behaviour_at(bought.get(m, []), as_of, zone, settings) for m in members}
            cuts = programme_cuts(exact.values())
            got = _past(cur, program_id, zone, as_of)
            assert got.cuts == cuts, as_of
            assert sorted(m.member_id for m in got.members) == sorted(members)
            for m in got.members:
                e, g = exact[m.member_id], m.behaviour
                assert listed_fields(g) == listed_fields(e), (as_of, m.member_id)
                # The list's stage, from the stored enrolment day, is stage_at's.
                today = local_day(as_of, zone).toordinal()
                assert stage_of(g, today - m.enrolled_day, settings) == stage_at(
                    e, m.enrolled_at, as_of, zone, settings
                )
                assert got.cuts.scores(g) == cuts.scores(e)
            stores: dict[str, list[int]] = {}
            for purchases in bought.values():
                for p in purchases:
                    if (net := p.net_at(as_of)) > 0:
                        stores.setdefault(p.store_id, [0, 0])
                        stores[p.store_id][0] += net
                        stores[p.store_id][1] += 1
            summed = _stores_at(cur, program_id, as_of)
            assert [(s.store_id, s.net_purchases_minor, s.purchases) for s in summed] == [
                (k, *v) for k, v in sorted(stores.items())
            ]
            checked += any(b.lifetime_purchases for b in exact.values())
    rows_agree(server, program_id)
    return checked


def rows_agree(server: ServerThread, program_id: str) -> None:
    """Each member's row of now: the lifetime facts of all their purchases, and the
    Lifetime kept for the purchases to come."""
    prog = server.tally.app.get_program(program_id)
    zone, settings = ZoneInfo(prog.settings.time_zone), prog.settings.insights
    with server.tally.database.read() as cur:
        cur.execute("SELECT member_id FROM rm_insight_members WHERE program_id = ?", (program_id,))
        members = [str(m) for (m,) in cur.fetchall()]
        after_all = datetime.now(UTC) + timedelta(days=1)
        bought = _purchases_of(cur, program_id, members, after_all)
        cur.execute(
            "SELECT member_id, lifetime_purchases, lifetime_value_minor, purchase_cycle_days,"
            " first_purchase_at, last_purchase_at, last_purchase_day, favourite_store_id,"
            " purchase_gaps, store_nets, newest_fact_at FROM rm_insight_members"
            " WHERE program_id = ?",
            (program_id,),
        )
        for m, *stored in cur.fetchall():
            mine = bought.get(str(m), [])
            newest = max(
                (at for p in mine for at in (p.occurred_at, *(r.occurred_at for r in p.refunds))),
                default=None,
            )
            facts = behaviour_at(mine, newest or after_all, zone, settings)
            life = lifetime_of(mine, zone)
            assert tuple(stored) == (
                *lifetime_columns(facts),
                *life_state(life),
                micros_of(newest) if newest else 0,
            ), m


def listed_fields(b: Any) -> tuple[Any, ...]:
    """What a list of members reads of each (_fast, _past)."""
    return (
        b.lifetime_purchases,
        b.lifetime_value_minor,
        b.purchase_cycle_days,
        b.last_purchase_day,
        b.recency_days,
    )


_EPOCH_TEST = datetime(1970, 1, 1, tzinfo=UTC)


def micros_of(moment: datetime) -> int:
    return (moment - _EPOCH_TEST) // timedelta(microseconds=1)
