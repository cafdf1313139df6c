"""Reads of the insights read model (projections/insights.py), fed to the rules of
ledger/domain/insights.py: one member's insights, the members of a selection (paged, with
the control total) and the programme's figures. InsightsService and `ledger report
insights` both call these, so they give the same answers. Protobuf-free.

Time is business time (docs/insights.md, decision 28): `as_of` is an instant of occurred_at;
what occurred by it counts, and recency is measured to it. The thresholds (the programme's
`insights` settings) and the tier ladder are the programme's as they are now: an as_of moves
the members' facts, not the rules they are read by.

Two ways to the programme's facts at `as_of`:
- now, when as_of is at or after the programme's `facts_until` (the newest occurred_at of
  any enrolment, purchase or refund: always so for "now" unless a till's clock runs ahead):
  every member's lifetime facts and the programme's RFM cuts as the projection keeps them,
  which are then exactly the facts at as_of; one read of the members' rows, no purchases.
- past, for an earlier as_of: each member's lifetime facts as they stood at as_of (their
  row of `rm_insight_member_facts` with the latest instant at or before it), the cuts made
  from them, and the stores' money summed from the purchases and refunds by then: one read
  of a row per member, as now, plus the cuts' sort; no purchase is read into Python.
Both give every member's lifetime facts only; a member whose whole insights are answered
(GetMemberInsights, a page of a list) has behaviour_at run over their own purchases.

Every read is one snapshot (repeatable read on PostgreSQL; SQLite's read transaction), so
members, cuts and stores are of one batch, and `position` says which.
"""

from __future__ import annotations

import calendar
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from ledger.domain import errors
from ledger.domain.deferred_revenue import round_half_up
from ledger.domain.insights import (
    Behaviour,
    InsightSettings,
    ProgrammeCuts,
    Purchase,
    QuintileCuts,
    Refund,
    Scores,
    Segment,
    Stage,
    behaviour_at,
    local_day,
    programme_cuts,
    stage_of,
)
from ledger.domain.program import Program
from ledger.infrastructure.database import Cursor, Database
from projections.insights import DAY_MICROS, starts_of
from projections.insights import NAME as INSIGHTS
from projections.points import NAME as POINTS
from projections.points import micros

# The read models these queries read: the insights projection, and the points projection's
# qualifying rows for the distance to the next tier.
READS = (INSIGHTS, POINTS)
PPM = 1_000_000
CHUNK = 400  # keys per lookup statement
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class MemberInsight:
    """One member at as_of: their behaviour, stage, scores and distance to the next tier."""

    member_id: str
    enrolled_at: datetime
    behaviour: Behaviour
    stage: Stage
    scores: Scores
    next_tier_code: str  # "": at the top tier (or no ladder)
    points_to_next_tier: int


@dataclass(frozen=True)
class MemberInsightsAt:
    insights: MemberInsight
    position: int  # the log position the read models reflected


@dataclass(frozen=True)
class SegmentFilter:
    """A selection of members: at most one of stage or segment (neither: every member),
    narrowed by the optional distance to the next tier and the coming anniversary."""

    stage: Stage | None = None
    segment: Segment | None = None
    points_to_next_tier_at_most: int | None = None
    anniversary_within_days: int | None = None


@dataclass(frozen=True)
class Page:
    size: int = 100
    after_member: str = ""  # the last member id of the previous page; "": the first page


@dataclass(frozen=True)
class SegmentPage:
    members: list[MemberInsight]  # in member id order
    total: int  # the control total: members in the whole selection, every page
    next_after_member: str  # the last member id here when more follow, else ""
    position: int


@dataclass(frozen=True)
class StoreRevenue:
    store_id: str
    net_purchases_minor: int
    purchases: int


@dataclass(frozen=True)
class ProgramInsights:
    members: int  # enrolled by as_of
    purchasing_members: int
    stages: dict[Stage, int]  # every stage, in declaration order
    segments: dict[Segment, int]  # every segment; the unscored are in none
    revenue_minor: int
    top_20_percent_revenue_share_ppm: int
    repeat_purchase_rate_ppm: int
    points_redemption_rate_ppm: int
    stored_value_usage_rate_ppm: int
    revenue_by_store: list[StoreRevenue]  # by store id
    position: int


@dataclass(frozen=True)
class _Member:
    member_id: str
    enrolled: int  # enrolled_at in microseconds
    enrolled_day: int  # its local day's ordinal
    # In a programme's list: the lifetime facts at as_of, measured to it (what the stage,
    # the scores and the programme's figures read); answered in full: behaviour_at's.
    behaviour: Behaviour

    @property
    def enrolled_at(self) -> datetime:
        return _moment(self.enrolled)


@dataclass(frozen=True)
class _Programme:
    """A programme's members enrolled by as_of with their lifetime facts, and its cuts."""

    members: list[_Member]
    cuts: ProgrammeCuts
    now: bool  # the stored "now" facts (as_of at or after facts_until), else those of the past


class InsightsQueries:
    def __init__(self, database: Database) -> None:
        self.database = database

    # ------------------------------------------------------------------ the three reads

    def member_insights(
        self, program: Program, member_id: str, as_of: datetime
    ) -> MemberInsightsAt:
        """One member at `as_of` (business time). Milliseconds: the member's purchases, the
        stored cuts and the member's qualifying rows; an as_of before the programme's newest
        fact makes the cuts at as_of of every member's facts then (module doc).
        MemberNotFound: not enrolled, or enrolled after as_of."""
        program_id, zone, settings = _rules(program)
        with self._snapshot() as cur:
            position = _position(cur)
            cur.execute(
                "SELECT enrolled_at, enrolled_day FROM rm_insight_members"
                " WHERE program_id = ? AND member_id = ?",
                (program_id, member_id),
            )
            row = cur.fetchone()
            if row is None:
                raise errors.MemberNotFound(
                    f"member {member_id} is not enrolled in program {program_id}",
                    member_id=member_id,
                )
            enrolled_at = _moment(int(row[0]))
            if enrolled_at > as_of:
                raise errors.MemberNotFound(
                    f"member {member_id} was not yet enrolled in program {program_id} at"
                    f" {as_of.isoformat()}",
                    member_id=member_id,
                )
            bought = _purchases_of(cur, program_id, [member_id], as_of).get(member_id, [])
            if self._facts_until(cur, program_id) <= as_of:
                cuts = _stored_cuts(cur, program_id)
            else:
                cuts = _past(cur, program_id, zone, as_of).cuts
            qualifying = _qualifying(cur, program_id, as_of, [member_id])
        behaviour = behaviour_at(bought, as_of, zone, settings)
        member = _Member(member_id, int(row[0]), int(row[1]), behaviour)
        insight = _insight(program, member, as_of, cuts, qualifying)
        return MemberInsightsAt(insight, position)

    def segment_members(
        self, program: Program, filters: SegmentFilter, as_of: datetime, page: Page
    ) -> SegmentPage:
        """The members of the selection at `as_of`, in member id order, `page.size` after
        `page.after_member`, and the whole selection's count. Every member's stage or
        segment is read (one read of a row per member); the distance to the next tier is
        one grouped read of the qualifying rows in the window; the page's members' full
        insights then one read of their purchases."""
        program_id, zone, settings = _rules(program)
        with self._snapshot() as cur:
            position = _position(cur)
            state = self._programme(cur, program_id, zone, settings, as_of)
            qualifying: dict[str, int] | None = None
            if filters.points_to_next_tier_at_most is not None:
                qualifying = _qualifying(cur, program_id, as_of, None)
            today = local_day(as_of, zone)
            selected = [
                m
                for m in state.members
                if _selected(program, m, filters, today, state.cuts, qualifying)
            ]
            selected.sort(key=lambda m: m.member_id)
            after = [m for m in selected if m.member_id > page.after_member]
            shown, more = after[: page.size], len(after) > page.size
            ids = [m.member_id for m in shown]
            bought = _purchases_of(cur, program_id, ids, as_of)
            shown = [
                _Member(
                    m.member_id,
                    m.enrolled,
                    m.enrolled_day,
                    behaviour_at(bought.get(m.member_id, []), as_of, zone, settings),
                )
                for m in shown
            ]
            if qualifying is None:
                qualifying = _qualifying(cur, program_id, as_of, ids)
        return SegmentPage(
            members=[_insight(program, m, as_of, state.cuts, qualifying) for m in shown],
            total=len(selected),
            next_after_member=shown[-1].member_id if more and shown else "",
            position=position,
        )

    def program_insights(self, program: Program, as_of: datetime) -> ProgramInsights:
        """The programme's figures at `as_of`: every member's stage and segment (one read of
        a row per member), the stores' revenue (stored per store for now, summed from the
        purchases and refunds by as_of for the past) and the rates (per-day sums and the
        events of as_of's own day)."""
        program_id, zone, settings = _rules(program)
        with self._snapshot() as cur:
            position = _position(cur)
            state = self._programme(cur, program_id, zone, settings, as_of)
            stores = (
                _stored_stores(cur, program_id) if state.now else _stores_at(cur, program_id, as_of)
            )
            earned, redeemed, loaded, used = _flows(cur, program_id, as_of)
        today = local_day(as_of, zone).toordinal()
        stages = Counter(
            stage_of(m.behaviour, today - m.enrolled_day, settings) for m in state.members
        )
        purchasing = [m.behaviour for m in state.members if m.behaviour.lifetime_purchases]
        segments = Counter(state.cuts.scores(b).segment for b in purchasing)
        values = sorted((b.lifetime_value_minor for b in purchasing), reverse=True)
        revenue = sum(values)
        top = -(-len(values) // 5)  # ceil(20 % of the purchasing members)
        return ProgramInsights(
            members=len(state.members),
            purchasing_members=len(purchasing),
            stages={s: stages.get(s, 0) for s in Stage},
            segments={s: segments.get(s, 0) for s in Segment},
            revenue_minor=revenue,
            top_20_percent_revenue_share_ppm=ppm(sum(values[:top]), revenue),
            repeat_purchase_rate_ppm=ppm(
                sum(1 for b in purchasing if b.lifetime_purchases >= 2), len(purchasing)
            ),
            points_redemption_rate_ppm=ppm(redeemed, earned),
            stored_value_usage_rate_ppm=ppm(used, loaded),
            revenue_by_store=stores,
            position=position,
        )

    # ------------------------------------------------------------------ the programme at as_of

    def _programme(
        self,
        cur: Cursor,
        program_id: str,
        zone: ZoneInfo,
        settings: InsightSettings,
        as_of: datetime,
    ) -> _Programme:
        if self._facts_until(cur, program_id) <= as_of:
            return _fast(cur, program_id, zone, as_of)
        return _past(cur, program_id, zone, as_of)

    @staticmethod
    def _facts_until(cur: Cursor, program_id: str) -> datetime:
        cur.execute(
            "SELECT facts_until FROM rm_insight_programs WHERE program_id = ?", (program_id,)
        )
        row = cur.fetchone()
        return _moment(int(row[0]) if row else 0)

    @contextmanager
    def _snapshot(self) -> Iterator[Cursor]:
        with self.database.read() as cur:
            if self.database.dialect.several_processes:  # PostgreSQL: one snapshot for all
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield cur


def _rules(program: Program) -> tuple[str, ZoneInfo, InsightSettings]:
    settings = program.settings
    return program.program_id, ZoneInfo(settings.time_zone), settings.insights


# What a list of the programme's members reads of each: the stage, the scores and the
# programme's figures need no more (a member answered in full has behaviour_at run).
_LIST_COLUMNS = "lifetime_purchases, lifetime_value_minor, purchase_cycle_days, last_purchase_day"


def _fast(cur: Cursor, program_id: str, zone: ZoneInfo, as_of: datetime) -> _Programme:
    """Every member's stored lifetime facts, measured to as_of: exact when nothing of the
    programme occurred after as_of."""
    today = local_day(as_of, zone)
    cur.execute(
        f"SELECT member_id, enrolled_at, enrolled_day, {_LIST_COLUMNS}"
        " FROM rm_insight_members WHERE program_id = ?",
        (program_id,),
    )
    members = [
        _Member(str(m), int(at), int(d), _lifetime(purchases, value, cycle, day, today))
        for m, at, d, purchases, value, cycle, day in cur.fetchall()
    ]
    return _Programme(members, _stored_cuts(cur, program_id), now=True)


def _past(cur: Cursor, program_id: str, zone: ZoneInfo, as_of: datetime) -> _Programme:
    """The members enrolled by as_of, each with their lifetime facts as they stood at as_of
    (their row of rm_insight_member_facts whose span holds as_of; none: no purchase by
    then), measured to as_of, and the cuts made of them."""
    today, at = local_day(as_of, zone), micros(as_of)
    cur.execute(
        f"SELECT member_id, {_LIST_COLUMNS} FROM rm_insight_member_facts"
        " WHERE program_id = ? AND since <= ? AND (until IS NULL OR until > ?)",
        (program_id, at, at),
    )
    facts = {
        str(m): _lifetime(purchases, value, cycle, day, today)
        for m, purchases, value, cycle, day in cur.fetchall()
    }
    cur.execute(
        "SELECT member_id, enrolled_at, enrolled_day FROM rm_insight_members"
        " WHERE program_id = ? AND enrolled_at <= ?",
        (program_id, at),
    )
    none = Behaviour()
    members = [
        _Member(str(m), int(enrolled), int(d), facts.get(str(m), none))
        for m, enrolled, d in cur.fetchall()
    ]
    return _Programme(members, programme_cuts(m.behaviour for m in members), now=False)


def _lifetime(purchases: Any, value: Any, cycle: Any, day: Any, today: date) -> Behaviour:
    """A member's lifetime facts as the read model keeps them for a list, with recency
    measured to `today` as behaviour_at measures it: local days from the last purchase
    day."""
    last_day = date.fromordinal(int(day)) if day is not None else None
    return Behaviour(
        lifetime_purchases=int(purchases),
        lifetime_value_minor=int(value),
        purchase_cycle_days=int(cycle),
        last_purchase_day=last_day,
        recency_days=(today - last_day).days if last_day else -1,
    )


def _purchases_of(
    cur: Cursor, program_id: str, members: list[str], as_of: datetime
) -> dict[str, list[Purchase]]:
    """member -> their purchases that occurred by as_of, each with its refunds by then."""
    at = micros(as_of)
    found: dict[str, dict[str, tuple[tuple[str, datetime, str, int], list[Refund]]]] = {}
    for chunk in _chunks(members):
        where = (
            f"program_id = ? AND occurred_at <= ? AND member_id IN ({','.join('?' * len(chunk))})"
        )
        params: list[object] = [program_id, at, *chunk]
        cur.execute(
            "SELECT member_id, transaction_id, occurred_at, store_id, purchase_minor"
            f" FROM rm_insight_purchases WHERE {where}",
            params,
        )
        for member_id, transaction_id, occurred, store_id, money in cur.fetchall():
            found.setdefault(str(member_id), {})[str(transaction_id)] = (
                (str(transaction_id), _moment(int(occurred)), str(store_id), int(money)),
                [],
            )
        cur.execute(
            "SELECT member_id, purchase_id, occurred_at, amount_minor"
            f" FROM rm_insight_refunds WHERE {where}",
            params,
        )
        for member_id, purchase_id, occurred, money in cur.fetchall():
            bought = found.get(str(member_id), {}).get(str(purchase_id))
            if bought is not None:  # a refund dated before its purchase's as_of cut
                bought[1].append(Refund(_moment(int(occurred)), int(money)))
    return {
        member_id: [
            Purchase(t, occurred, store, money, tuple(refunds))
            for (t, occurred, store, money), refunds in by_id.values()
        ]
        for member_id, by_id in found.items()
    }


def _stored_cuts(cur: Cursor, program_id: str) -> ProgrammeCuts:
    cur.execute(
        "SELECT scored_members, recency_starts, frequency_starts, monetary_starts"
        " FROM rm_insight_cuts WHERE program_id = ?",
        (program_id,),
    )
    row = cur.fetchone()
    if row is None:  # nobody has bought yet
        return programme_cuts(())
    members, r, f, m = int(row[0]), str(row[1]), str(row[2]), str(row[3])
    return ProgrammeCuts(
        QuintileCuts(starts_of(r), members),
        QuintileCuts(starts_of(f), members),
        QuintileCuts(starts_of(m), members),
    )


def _qualifying(
    cur: Cursor, program_id: str, as_of: datetime, members: list[str] | None
) -> dict[str, int]:
    """member -> qualifying points counting at as_of in business time: the qualifying
    rows of the points read model (earns, and reversals of them) that occurred by as_of and
    whose window (each earn's qualifies_until, fixed when recorded) still holds at as_of.
    `members` None: every member of the programme, in one grouped read."""
    at = micros(as_of)
    sums: dict[str, int] = {}
    for chunk in [None] if members is None else _chunks(members):
        sql = (
            "SELECT member_id, SUM(qualifying_delta) FROM rm_transactions"
            " WHERE program_id = ? AND qualifying_delta <> 0 AND qualifies_until >= ?"
            " AND occurred_at <= ?"
        )
        params: list[object] = [program_id, at, at]
        if chunk is not None:
            sql += f" AND member_id IN ({','.join('?' * len(chunk))})"
            params += chunk
        cur.execute(sql + " GROUP BY member_id", params)
        sums.update((str(m), int(q)) for m, q in cur.fetchall())
    return sums


def _stored_stores(cur: Cursor, program_id: str) -> list[StoreRevenue]:
    cur.execute(
        "SELECT store_id, net_minor, purchases FROM rm_insight_stores"
        " WHERE program_id = ? AND purchases > 0 ORDER BY store_id",
        (program_id,),
    )
    return [StoreRevenue(str(s), int(n), int(p)) for s, n, p in cur.fetchall()]


def _stores_at(cur: Cursor, program_id: str, as_of: datetime) -> list[StoreRevenue]:
    """Per store, the net money and the number of the purchases that count at as_of, of the
    members enrolled by then: each purchase that occurred by as_of less its refunds by then
    (Purchase.net_at), counted when something is left."""
    at = micros(as_of)
    cur.execute(
        "SELECT p.store_id, SUM(p.purchase_minor - COALESCE(r.refunded, 0)), COUNT(*)"
        " FROM rm_insight_purchases p LEFT JOIN (SELECT member_id, purchase_id,"
        " SUM(amount_minor) AS refunded FROM rm_insight_refunds"
        " WHERE program_id = ? AND occurred_at <= ? GROUP BY member_id, purchase_id) r"
        " ON r.member_id = p.member_id AND r.purchase_id = p.transaction_id"
        " WHERE p.program_id = ? AND p.occurred_at <= ?"
        " AND p.purchase_minor > COALESCE(r.refunded, 0)"
        " AND p.member_id IN (SELECT member_id FROM rm_insight_members"
        " WHERE program_id = ? AND enrolled_at <= ?)"
        " GROUP BY p.store_id ORDER BY p.store_id",
        (program_id, at, program_id, at, program_id, at),
    )
    return [StoreRevenue(str(s), int(n), int(c)) for s, n, c in cur.fetchall()]


def _flows(cur: Cursor, program_id: str, as_of: datetime) -> tuple[int, int, int, int]:
    """Points earned and redeemed, stored value loaded and used, by events that occurred by
    as_of: the whole UTC days before as_of's day, and the events of its day up to as_of."""
    at = micros(as_of)
    day = at // DAY_MICROS
    columns = (
        "COALESCE(SUM(points_earned), 0), COALESCE(SUM(points_redeemed), 0),"
        " COALESCE(SUM(value_loaded), 0), COALESCE(SUM(value_used), 0)"
    )
    cur.execute(
        f"SELECT {columns} FROM rm_insight_flows_daily WHERE program_id = ? AND day < ?",
        (program_id, day),
    )
    whole = cur.fetchone() or (0, 0, 0, 0)
    cur.execute(
        f"SELECT {columns} FROM rm_insight_flows"
        " WHERE program_id = ? AND occurred_at >= ? AND occurred_at <= ?",
        (program_id, day * DAY_MICROS, at),
    )
    part = cur.fetchone() or (0, 0, 0, 0)
    earned, redeemed, loaded, used = (int(a) + int(b) for a, b in zip(whole, part, strict=True))
    return earned, redeemed, loaded, used


def _position(cur: Cursor) -> int:
    """The log position both read models have processed (as of this snapshot)."""
    cur.execute("SELECT name, position FROM projection_tracking WHERE name IN (?, ?)", READS)
    positions = {str(n): int(p) for n, p in cur.fetchall()}
    return min(positions.get(name, 0) for name in READS)


# ---------------------------------------------------------------------- one member


def _insight(
    program: Program,
    member: _Member,
    as_of: datetime,
    cuts: ProgrammeCuts,
    qualifying: dict[str, int],
) -> MemberInsight:
    settings = program.settings
    standing = settings.standing(qualifying.get(member.member_id, 0))
    today = local_day(as_of, ZoneInfo(settings.time_zone)).toordinal()
    return MemberInsight(
        member_id=member.member_id,
        enrolled_at=member.enrolled_at,
        behaviour=member.behaviour,
        stage=stage_of(member.behaviour, today - member.enrolled_day, settings.insights),
        scores=cuts.scores(member.behaviour),
        next_tier_code=standing.next_tier_code,
        points_to_next_tier=standing.points_to_next_tier,
    )


def _selected(
    program: Program,
    member: _Member,
    filters: SegmentFilter,
    today: date,
    cuts: ProgrammeCuts,
    qualifying: dict[str, int] | None,
) -> bool:
    """Whether the member is in the selection at as_of (`today`: its local day)."""
    settings = program.settings
    if filters.stage is not None:
        stage = stage_of(
            member.behaviour, today.toordinal() - member.enrolled_day, settings.insights
        )
        if stage is not filters.stage:
            return False
    if filters.segment is not None and cuts.scores(member.behaviour).segment is not filters.segment:
        return False
    if filters.points_to_next_tier_at_most is not None:
        assert qualifying is not None
        standing = settings.standing(qualifying.get(member.member_id, 0))
        if not standing.next_tier_code:
            return False  # at the top tier: no next tier to nudge towards
        if standing.points_to_next_tier > filters.points_to_next_tier_at_most:
            return False
    if filters.anniversary_within_days is not None:
        enrolled = date.fromordinal(member.enrolled_day)
        return anniversary_between(enrolled, today, filters.anniversary_within_days)
    return True


def anniversary_within(enrolled_at: datetime, as_of: datetime, zone: ZoneInfo, days: int) -> bool:
    """Whether an anniversary of the enrolment (its local month and day, in a later year
    than the enrolment: the day of enrolment is not its own anniversary) falls within
    [as_of's local day, that day + `days`]. A member enrolled on 29 February has their
    anniversary on 28 February in a year that has no 29 February."""
    return anniversary_between(local_day(enrolled_at, zone), local_day(as_of, zone), days)


def anniversary_between(enrolled: date, today: date, days: int) -> bool:
    """anniversary_within, given the enrolment's and as_of's local days."""
    for year in (today.year, today.year + 1):
        if year <= enrolled.year:
            continue
        anniversary = anniversary_in(enrolled, year)
        if anniversary >= today:
            return (anniversary - today).days <= days
    return False


def anniversary_in(enrolled: date, year: int) -> date:
    if (enrolled.month, enrolled.day) == (2, 29) and not calendar.isleap(year):
        return date(year, 2, 28)
    return enrolled.replace(year=year)


def ppm(part: int, whole: int) -> int:
    """part / whole in parts per million, rounded half up; 0 when whole is 0 or less."""
    if whole <= 0:
        return 0
    return round_half_up(Fraction(part * PPM, whole))


def _moment(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _chunks(keys: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(keys), CHUNK):
        yield keys[start : start + CHUNK]
