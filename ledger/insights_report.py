"""`ledger report insights`: the members to reach, for an SMS, 微信 or e-mail tool, or with
`--summary` the programme's figures (docs/insights.md). Read by the same functions as
InsightsService (ledger/insights_queries.py), so both give the same answers;
ledger/report_commands.py runs it like the other reports (the database, the programme, the
read model caught up first).

The list's control total (how many members the selection holds) is one line on stderr, so
that stdout is exactly the list: a CSV is a header and one row per member, nothing after it.
`--as-of` is business time (when members bought), not recorded time as in finance's reports.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from ledger.api.validation import Violations
from ledger.domain.insights import Segment, Stage
from ledger.insights_queries import MemberInsight, ProgramInsights, SegmentPage

# The list's columns, as MemberInsights names them; member_id first, for the tool's join.
COLUMNS = (
    "member_id",
    "lifecycle_stage",
    "rfm_segment",
    "recency_score",
    "frequency_score",
    "monetary_score",
    "recency_days",
    "frequency",
    "monetary_minor",
    "average_order_minor",
    "purchase_cycle_days",
    "lifetime_value_minor",
    "lifetime_purchases",
    "first_purchase_at",
    "last_purchase_at",
    "favourite_store_id",
    "next_tier_code",
    "points_to_next_tier",
    "enrolled_at",
)
SUMMARY_COLUMNS = ("figure", "key", "value", "purchases")
MAX_POINTS = 10**15  # as InsightsService's points_to_next_tier_at_most
MAX_ANNIVERSARY_DAYS = 366


def add_arguments(parser: argparse.ArgumentParser) -> None:
    stages = ", ".join(s.value.lower() for s in Stage)
    segments = ", ".join(s.value.lower() for s in Segment)
    parser.add_argument("--stage", help=f"only members in this lifecycle stage: {stages}")
    parser.add_argument("--segment", help=f"only members in this RFM segment: {segments}")
    parser.add_argument(
        "--points-to-next-tier-at-most",
        help="only members within this many qualifying points of their next tier",
    )
    parser.add_argument(
        "--anniversary-within-days",
        help="only members whose enrolment anniversary falls within the next N local days "
        f"(0: today; at most {MAX_ANNIVERSARY_DAYS})",
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="the programme's figures instead of a list: members per stage and segment, "
        "revenue share of the top 20%%, repeat-purchase, redemption and stored-value usage "
        "rates, revenue by store",
    )


def check(v: Violations, args: argparse.Namespace) -> None:
    """The flags, before the database is opened: a mistake is one line."""
    args.stage = _named(v, "--stage", args.stage, Stage)
    args.segment = _named(v, "--segment", args.segment, Segment)
    if args.stage and args.segment:
        v.add("--segment", "select by --stage or by --segment, not both")
    args.points_to_next_tier_at_most = _whole(
        v, "--points-to-next-tier-at-most", args.points_to_next_tier_at_most, MAX_POINTS
    )
    args.anniversary_within_days = _whole(
        v, "--anniversary-within-days", args.anniversary_within_days, MAX_ANNIVERSARY_DAYS
    )
    if args.summary:
        chosen = [
            flag
            for flag, value in (
                ("--stage", args.stage),
                ("--segment", args.segment),
                ("--points-to-next-tier-at-most", args.points_to_next_tier_at_most),
                ("--anniversary-within-days", args.anniversary_within_days),
            )
            if value is not None
        ]
        if chosen:
            v.add("--summary", f"is the whole programme's figures: drop {', '.join(chosen)}")


def _named(v: Violations, flag: str, text: str | None, names: Any) -> Any:
    if text is None:
        return None
    try:
        return names(text.strip().upper())
    except ValueError:
        choices = ", ".join(n.value.lower() for n in names)
        v.add(flag, f"{text!r} is not one of {choices}")
        return None


def _whole(v: Violations, flag: str, text: str | None, high: int) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) > high:
        v.add(flag, f"must be a whole number from 0 to {high}, not {text!r}")
        return None
    return int(text)


# ---------------------------------------------------------------------- as plain data


def selection(page: SegmentPage, as_of: datetime) -> dict[str, Any]:
    """The JSON document of a list: the members, the control total, as_of and position."""
    return {
        "members": [member_row(m) for m in page.members],
        "total": page.total,
        "as_of": _time(as_of),
        "position": page.position,
    }


def member_row(m: MemberInsight) -> dict[str, Any]:
    """One member, named as MemberInsights names its fields; a stage and a segment by their
    names without the enum's prefix ("" for an unscored member's segment), times in UTC
    ("" for a purchase that has not happened)."""
    b, scores = m.behaviour, m.scores
    return {
        "member_id": m.member_id,
        "lifecycle_stage": m.stage.value,
        "rfm_segment": scores.segment.value if scores.segment else "",
        "recency_score": scores.recency,
        "frequency_score": scores.frequency,
        "monetary_score": scores.monetary,
        "recency_days": b.recency_days,
        "frequency": b.frequency,
        "monetary_minor": b.monetary_minor,
        "average_order_minor": b.average_order_minor,
        "purchase_cycle_days": b.purchase_cycle_days,
        "lifetime_value_minor": b.lifetime_value_minor,
        "lifetime_purchases": b.lifetime_purchases,
        "first_purchase_at": _time(b.first_purchase_at),
        "last_purchase_at": _time(b.last_purchase_at),
        "favourite_store_id": b.favourite_store_id,
        "next_tier_code": m.next_tier_code,
        "points_to_next_tier": m.points_to_next_tier,
        "enrolled_at": _time(m.enrolled_at),
    }


def summary(found: ProgramInsights, as_of: datetime) -> dict[str, Any]:
    """The JSON document of --summary, named as GetProgramInsightsResponse names its fields."""
    return {
        "members": found.members,
        "purchasing_members": found.purchasing_members,
        "stages": [{"stage": s.value, "members": n} for s, n in found.stages.items()],
        "segments": [{"segment": s.value, "members": n} for s, n in found.segments.items()],
        "revenue_minor": found.revenue_minor,
        "top_20_percent_revenue_share_ppm": found.top_20_percent_revenue_share_ppm,
        "repeat_purchase_rate_ppm": found.repeat_purchase_rate_ppm,
        "points_redemption_rate_ppm": found.points_redemption_rate_ppm,
        "stored_value_usage_rate_ppm": found.stored_value_usage_rate_ppm,
        "revenue_by_store": [
            {
                "store_id": s.store_id,
                "net_purchases_minor": s.net_purchases_minor,
                "purchases": s.purchases,
            }
            for s in found.revenue_by_store
        ],
        "as_of": _time(as_of),
        "position": found.position,
    }


def _time(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------- printing


def tabulated_members(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    return list(COLUMNS), [[m[c] for c in COLUMNS] for m in report["members"]]


def tabulated_summary(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The programme's figures as one rectangular table: a row per figure, per stage, per
    segment and per store (`purchases` only for stores)."""
    rows: list[list[Any]] = [
        ["members", "", r["members"], ""],
        ["purchasing_members", "", r["purchasing_members"], ""],
    ]
    rows += [["stage", s["stage"], s["members"], ""] for s in r["stages"]]
    rows += [["segment", s["segment"], s["members"], ""] for s in r["segments"]]
    for figure in (
        "revenue_minor",
        "top_20_percent_revenue_share_ppm",
        "repeat_purchase_rate_ppm",
        "points_redemption_rate_ppm",
        "stored_value_usage_rate_ppm",
    ):
        rows.append([figure, "", r[figure], ""])
    rows += [
        ["store_revenue_minor", s["store_id"], s["net_purchases_minor"], s["purchases"]]
        for s in r["revenue_by_store"]
    ]
    return list(SUMMARY_COLUMNS), rows


def summary_note(report: dict[str, Any]) -> str:
    """The line under the figures' table (stdout: --summary writes nothing on stderr)."""
    return f"as of {report['as_of']}, insights position {report['position']}"


def control_total(report: dict[str, Any]) -> str:
    """The stderr line of a list: a script compares it with the rows it received."""
    return (
        f"ledger report insights: {report['total']} members (as of {report['as_of']}, "
        f"insights position {report['position']})"
    )
