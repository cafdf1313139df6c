"""Member behaviour for marketing (docs/insights.md, decision 28): the facts that
ledger/insights_queries.py gives to the rules of ledger/domain/insights.py.

- `rm_insight_purchases`: one row per purchase (an Earn with purchase_minor > 0) and
  `rm_insight_refunds` one per refund of it (a reversal of that Earn, at its own
  occurred_at, with the money the till named, or the purchase pro rata to the points when
  the event predates `refund_purchase_minor`): any as_of can be answered from them.
- `rm_insight_members`: per member, the enrolment (and its local day) and the lifetime
  facts once everything recorded so far has occurred (behaviour_at at the member's newest
  purchase or refund), with their Lifetime's gap counts and store nets and that newest
  instant. A batch whose purchases of a member all come after that instant, with no
  refund, adds them to the Lifetime without reading the member's purchases (so a
  purchase costs the same however long the member's history); any other change of a
  member is recomputed from all of their purchases.
- `rm_insight_values`: per programme and score (R: last purchase day, F: lifetime
  purchases, M: lifetime net money), how many purchasing members have each value: the
  distribution the quintile cuts are read from, kept by adding and removing the members
  whose facts a batch changes.
- `rm_insight_member_facts`: per member, the lifetime facts a list of members reads
  (purchases, net money, cycle, last purchase day) from each instant at which one of their
  purchases or refunds occurred until the next: the facts at any as_of are the row whose
  span holds it, one row per member for a read of the past.
- `rm_insight_cuts`: the programme's quintile cuts (the values of ranks `start_ranks` in
  that distribution) and, with each, how many members are at or below it: at the end of a
  batch each cut moves from where it was over the values the batch's changes passed, so a
  batch costs what it changed, not the programme's size (decision 28). The cuts change only
  when events arrive, so between batches they are exact.
- `rm_insight_stores`: per store the net money and the purchases that still count.
- `rm_insight_flows` (+ `_daily`): points earned and redeemed, stored value loaded and used,
  for the redemption and stored-value usage rates at any as_of.
- `rm_insight_programs`: time zone, and `facts_until` (the newest occurred_at of an
  enrolment, purchase or refund): from it on, the "now" tables above are the facts.

Every row depends only on the events, never on how they were batched, so the live read
model equals a rebuild (`ledger audit replay`). It keeps its own account -> member table,
so it depends on no other read model's progress.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from ledger.domain import events
from ledger.domain.account import NOT_RECORDED
from ledger.domain.insights import (
    Behaviour,
    InsightSettings,
    Lifetime,
    Purchase,
    Refund,
    behaviour_at,
    lifetime_of,
    local_day,
    refund_pro_rata,
    start_ranks,
)
from ledger.infrastructure.database import Cursor
from ledger.infrastructure.dialect import Dialect
from projections.accounts import members_of
from projections.points import micros

NAME = "insights"
CHUNK = 400  # keys per lookup statement
DAY_MICROS = 86_400_000_000
# Lifetime facts do not depend on the thresholds (only `frequency` does, which is not kept).
_LIFETIME = InsightSettings()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A new member's lifetime facts (lifetime_columns of no purchase), its Lifetime's state
# (life_state) and its newest fact's instant (none).
_NO_PURCHASE = (0, 0, 0, None, None, None, "", "[]", "[]", 0)
# What _load_lives reads of a member enrolled in the batch (no row yet).
_NO_LIFE = (0, 0, None, None, None, "[]", "[]", 0)
# The scores in rm_insight_values, in the order of a member's values (_scored).
SCORES = ("R", "F", "M")
# A purchasing member's values: (last purchase day's ordinal, lifetime purchases, lifetime
# net money); None: no purchase, not scored.
Values = tuple[int, int, int] | None

_REDEMPTIONS = frozenset({events.PointsRedeemed, events.HoldCaptured, events.PointsConverted})
_UNREDEMPTIONS = frozenset({events.RedemptionReversed, events.ConversionReversed})
# Events that change none of the facts: holds move no points for good, adjustments are
# neither earned nor redeemed, expiry is neither.
_IGNORED = frozenset(
    {
        events.ProgramUpdated,
        events.PointsHeld,
        events.HoldReleased,
        events.HoldExpired,
        events.PointsAdjusted,
        events.LotsExpired,
    }
)


@dataclass
class _Purchase:
    """A purchase and its refunds as the batch has them."""

    program_id: str
    member_id: str
    transaction_id: str
    occurred_at: datetime
    store_id: str
    purchase_minor: int
    points: int
    refunds: list[tuple[str, datetime, int, int]]  # (transaction, occurred_at, money, points)
    new: bool = False
    loaded_refunds: int = 0  # how many of `refunds` were recorded before this batch

    def purchase(self, refunds: int | None = None) -> Purchase:
        """The purchase with its refunds (`refunds`: only the first ones)."""
        return Purchase(
            self.transaction_id,
            self.occurred_at,
            self.store_id,
            self.purchase_minor,
            tuple(Refund(at, money) for _, at, money, _ in self.refunds[:refunds]),
        )


@dataclass
class _Batch:
    members: dict[str, tuple[str, str]] = field(default_factory=dict)  # account -> member
    # (program, member) -> transaction id -> purchase, for the members the batch touches.
    purchases: dict[tuple[str, str], dict[str, _Purchase]] = field(default_factory=dict)
    touched: set[tuple[str, str]] = field(default_factory=set)
    # (program, member) -> their values before the batch, for the members it may change.
    before: dict[tuple[str, str], Values] = field(default_factory=dict)
    # (program, member) -> the earliest occurred_at of the batch's purchases and refunds.
    earliest: dict[tuple[str, str], datetime] = field(default_factory=dict)
    # The members whose purchases in the batch all come after their newest fact, with no
    # refund: their Lifetime before the batch, and that newest fact's instant (0: none).
    lives: dict[tuple[str, str], Lifetime] = field(default_factory=dict)
    newest: dict[tuple[str, str], int] = field(default_factory=dict)
    enrolled: list[tuple[str, str, datetime]] = field(default_factory=list)
    new_refunds: list[tuple[Any, ...]] = field(default_factory=list)
    changed: set[tuple[str, str, str]] = field(default_factory=set)  # purchases changed
    facts_until: dict[str, int] = field(default_factory=dict)
    flows: list[tuple[Any, ...]] = field(default_factory=list)
    flows_daily: dict[tuple[str, int], list[int]] = field(default_factory=dict)


class UnknownEvent(LookupError):
    """An event type this projection has no rule for: stop rather than skip it."""


class InsightsProjection:
    name: ClassVar[str] = NAME
    tables: ClassVar[dict[str, tuple[str, ...]]] = {
        "rm_insight_programs": ("program_id",),
        "rm_insight_accounts": ("account_id",),
        "rm_insight_purchases": ("program_id", "member_id", "transaction_id"),
        "rm_insight_refunds": ("program_id", "member_id", "transaction_id"),
        "rm_insight_members": ("program_id", "member_id"),
        "rm_insight_member_facts": ("program_id", "member_id", "since"),
        "rm_insight_values": ("program_id", "score", "value"),
        "rm_insight_cuts": ("program_id",),
        "rm_insight_stores": ("program_id", "store_id"),
        "rm_insight_flows": ("program_id", "position"),
        "rm_insight_flows_daily": ("program_id", "day"),
    }
    handled: ClassVar[frozenset[type]] = frozenset(events.ALL)
    # Lazy: marketing reads seldom, and a batch's fixed cost (its statements, moving the
    # cuts of the programmes it touched) is paid less often in bigger batches. A query with
    # min_position wakes it.
    poll_interval: ClassVar[float] = 1.0

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._zones: dict[str, ZoneInfo] = {}  # never change once a programme exists

    # ------------------------------------------------------------------ batch

    def process(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]]) -> None:
        for _, event in batch_events:
            if type(event) not in self.handled:
                raise UnknownEvent(f"the insights projection has no rule for {type(event)}")
        b = _Batch()
        self._load(cur, batch_events, b)
        for position, event in batch_events:
            kind = type(event)
            if kind is events.ProgramCreated:
                self._program_created(cur, event)
            elif kind in _IGNORED:
                continue
            else:
                self._account_event(position, event, b)
        self._write(cur, b)

    def _program_created(self, cur: Cursor, event: Any) -> None:
        program_id: str = event.program_id
        cur.execute(
            "INSERT INTO rm_insight_programs (program_id, program_key, time_zone, facts_until)"
            " VALUES (?, ?, ?, 0)",
            (program_id, event.originator_id.hex, event.settings.time_zone),
        )
        self._zones[program_id] = ZoneInfo(event.settings.time_zone)

    def _account_event(self, position: int, event: Any, b: _Batch) -> None:
        account = b.members.get(event.originator_id.hex)
        if account is None:
            raise LookupError(f"account {event.originator_id} has events but no enrolment")
        program_id, member_id = account
        p = event.provenance
        kind = type(event)
        earned = redeemed = loaded = used = 0
        if kind is events.MemberEnrolled:
            b.enrolled.append((program_id, member_id, p.occurred_at))
            self._fact_at(b, program_id, p.occurred_at)
        elif kind is events.PointsEarned:
            earned = event.points
            if event.purchase_minor > 0:
                b.purchases.setdefault(account, {})[p.transaction_id] = _Purchase(
                    program_id,
                    member_id,
                    p.transaction_id,
                    p.occurred_at,
                    p.store_id,
                    event.purchase_minor,
                    event.points,
                    [],
                    new=True,
                )
                self._changed(b, account, p.transaction_id, p.occurred_at)
        elif kind is events.EarnReversed:
            earned = -event.points
            self._refund(b, account, event)
        elif kind in _REDEMPTIONS:
            redeemed = sum(event.consumed.values())
            if kind is events.PointsConverted:
                loaded = event.value  # bonus put on the card
        elif kind in _UNREDEMPTIONS:
            redeemed = -event.points
            if kind is events.ConversionReversed:
                loaded = -event.value
        elif kind is events.StoredValueToppedUp:
            loaded = event.cash + event.bonus
        elif kind is events.TopUpCashedOut:
            loaded = -(event.cash_taken + event.bonus_forfeited)  # what left the card
        elif kind is events.StoredValueSpent:
            used = event.cash + event.bonus
        elif kind is events.SpendRefunded:
            used = -(event.cash + event.bonus)
            # Cash a cash-out withheld comes back on the card: the cash-out shrinks.
            loaded = sum(event.cash_unwithheld.values())
        else:
            raise UnknownEvent(f"the insights projection has no rule for {kind.__qualname__}")
        if earned or redeemed or loaded or used:
            at = micros(p.occurred_at)
            figures = (earned, redeemed, loaded, used)
            b.flows.append((program_id, position, at, *figures))
            sums = b.flows_daily.setdefault((program_id, at // DAY_MICROS), [0, 0, 0, 0])
            for i, value in enumerate(figures):
                sums[i] += value

    def _refund(self, b: _Batch, account: tuple[str, str], event: Any) -> None:
        """A reversal of an Earn: a refund of its purchase, if it had one."""
        p = event.provenance
        bought = b.purchases.get(account, {}).get(p.reverses_transaction_id)
        if bought is None:
            return  # an Earn without money: nothing was bought, nothing is refunded
        money: int = event.refund_purchase_minor
        if money == NOT_RECORDED:  # recorded before refunds were: the pro rata, as replay does
            money = refund_pro_rata(
                bought.purchase_minor,
                bought.points,
                sum(points for *_, points in bought.refunds),
                event.points,
                sum(m for _, _, m, _ in bought.refunds),
            )
        bought.refunds.append((p.transaction_id, p.occurred_at, money, event.points))
        b.new_refunds.append(
            (
                bought.program_id,
                bought.member_id,
                p.transaction_id,
                bought.transaction_id,
                micros(p.occurred_at),
                money,
                event.points,
            )
        )
        self._changed(b, account, bought.transaction_id, p.occurred_at)

    def _changed(
        self, b: _Batch, account: tuple[str, str], transaction_id: str, at: datetime
    ) -> None:
        b.touched.add(account)
        b.changed.add((*account, transaction_id))
        b.earliest[account] = min(b.earliest.get(account, at), at)
        self._fact_at(b, account[0], at)

    @staticmethod
    def _fact_at(b: _Batch, program_id: str, at: datetime) -> None:
        b.facts_until[program_id] = max(b.facts_until.get(program_id, 0), micros(at))

    # ------------------------------------------------------------------ reading

    def _load(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]], b: _Batch) -> None:
        """The batch's accounts, and every purchase (with its refunds) of the members whose
        purchases it changes: their facts are recomputed from all of them."""
        accounts = {
            e.originator_id.hex
            for _, e in batch_events
            if type(e) not in _IGNORED and type(e) is not events.ProgramCreated
        }
        b.members = members_of(cur, self.dialect, "rm_insight_accounts", batch_events, accounts)
        first_bought: dict[tuple[str, str], int] = {}  # the earliest of the batch's purchases
        refunding: set[tuple[str, str]] = set()
        for _, e in batch_events:
            if type(e) is events.PointsEarned and e.purchase_minor > 0:  # type: ignore[attr-defined]
                account = b.members[e.originator_id.hex]
                at = micros(e.provenance.occurred_at)  # type: ignore[attr-defined]
                first_bought[account] = min(first_bought.get(account, at), at)
            elif type(e) is events.EarnReversed:
                refunding.add(b.members[e.originator_id.hex])
        buyers = first_bought.keys() | refunding
        for program_id, members in _by_program(buyers).items():
            for chunk in _chunks(sorted(members)):
                self._load_lives(cur, program_id, chunk, b, first_bought, refunding)
        for program_id, members in _by_program(buyers - b.lives.keys()).items():
            for chunk in _chunks(sorted(members)):
                self._load_purchases(cur, program_id, chunk, b)

    def _load_lives(
        self,
        cur: Cursor,
        program_id: str,
        members: list[str],
        b: _Batch,
        first_bought: dict[tuple[str, str], int],
        refunding: set[tuple[str, str]],
    ) -> None:
        """The members' values before the batch, and the Lifetime of each whose purchases
        in the batch all come after their newest fact, with no refund: those are added to
        it, their other purchases are not read."""
        marks = self.dialect.placeholders(len(members))
        cur.execute(
            "SELECT member_id, lifetime_purchases, lifetime_value_minor, first_purchase_at,"
            " last_purchase_at, last_purchase_day, purchase_gaps, store_nets, newest_fact_at"
            f" FROM rm_insight_members WHERE program_id = ? AND member_id IN ({marks})",
            (program_id, *members),
        )
        rows = {str(row[0]): row[1:] for row in cur.fetchall()}
        for member_id in members:
            account = (program_id, member_id)
            row = rows.get(member_id)  # none: enrolled in this batch
            purchases, value, first, last, day, gaps, stores, newest = row or _NO_LIFE
            b.before[account] = (int(day), int(purchases), int(value)) if purchases else None
            if account in refunding or first_bought[account] <= int(newest):
                continue
            b.newest[account] = int(newest)
            b.lives[account] = Lifetime(
                purchases=int(purchases),
                value_minor=int(value),
                first_purchase_at=_moment(int(first)) if first is not None else None,
                last_purchase_at=_moment(int(last)) if last is not None else None,
                last_purchase_day=date.fromordinal(int(day)) if day is not None else None,
                gaps=tuple((int(g), int(n)) for g, n in json.loads(gaps)),
                stores=tuple((str(s), int(m)) for s, m in json.loads(stores)),
            )

    def _load_purchases(self, cur: Cursor, program_id: str, members: list[str], b: _Batch) -> None:
        marks = self.dialect.placeholders(len(members))
        cur.execute(
            "SELECT member_id, transaction_id, occurred_at, store_id, purchase_minor, points"
            f" FROM rm_insight_purchases WHERE program_id = ? AND member_id IN ({marks})",
            (program_id, *members),
        )
        for member_id, transaction_id, at, store_id, money, points in cur.fetchall():
            b.purchases.setdefault((program_id, str(member_id)), {})[str(transaction_id)] = (
                _Purchase(
                    program_id,
                    str(member_id),
                    str(transaction_id),
                    _moment(int(at)),
                    str(store_id),
                    int(money),
                    int(points),
                    [],
                )
            )
        cur.execute(
            "SELECT member_id, transaction_id, purchase_id, occurred_at, amount_minor, points"
            f" FROM rm_insight_refunds WHERE program_id = ? AND member_id IN ({marks})"
            " ORDER BY member_id, purchase_id, transaction_id",
            (program_id, *members),
        )
        rows = cur.fetchall()
        for member_id, transaction_id, purchase_id, at, money, points in rows:
            bought = b.purchases[(program_id, str(member_id))][str(purchase_id)]
            bought.refunds.append((str(transaction_id), _moment(int(at)), int(money), int(points)))
            bought.loaded_refunds += 1

    # ------------------------------------------------------------------ writing

    def _write(self, cur: Cursor, b: _Batch) -> None:
        d = self.dialect
        d.insert_rows(
            cur,
            "INSERT INTO rm_insight_members (program_id, member_id, enrolled_at, enrolled_day,"
            " lifetime_purchases, lifetime_value_minor, purchase_cycle_days, first_purchase_at,"
            " last_purchase_at, last_purchase_day, favourite_store_id, purchase_gaps,"
            " store_nets, newest_fact_at) {rows}",
            [
                (p, m, micros(at), local_day(at, self._zone(cur, p)).toordinal(), *_NO_PURCHASE)
                for p, m, at in b.enrolled
            ],
        )
        new = [
            bought
            for account in sorted(b.touched)
            for bought in b.purchases[account].values()
            if bought.new
        ]
        d.insert_rows(
            cur,
            "INSERT INTO rm_insight_purchases (program_id, member_id, transaction_id,"
            " occurred_at, store_id, purchase_minor, points) {rows}",
            [
                (
                    x.program_id,
                    x.member_id,
                    x.transaction_id,
                    micros(x.occurred_at),
                    x.store_id,
                    x.purchase_minor,
                    x.points,
                )
                for x in new
            ],
        )
        d.insert_rows(
            cur,
            "INSERT INTO rm_insight_refunds (program_id, member_id, transaction_id,"
            " purchase_id, occurred_at, amount_minor, points) {rows}",
            b.new_refunds,
        )
        self._write_stores(cur, b)
        cur.executemany(
            "UPDATE rm_insight_programs SET facts_until = ? WHERE program_id = ?"
            " AND facts_until < ?",
            [(at, program_id, at) for program_id, at in sorted(b.facts_until.items())],
        )
        moved = self._write_members(cur, b)
        # In a pipelined transaction psycopg (3.3.9) can hand a fetch that follows a long
        # executemany one of its statements' results instead ("the last operation didn't
        # produce records (command status: UPDATE 1)", at 20,000 members): reading the
        # rowcount reads every result back first (database._PgCursor), before the cuts'.
        _ = cur.rowcount
        for program_id, changes in sorted(moved.items()):
            self._move_cuts(cur, program_id, changes)
        d.insert_rows(
            cur,
            "INSERT INTO rm_insight_flows (program_id, position, occurred_at, points_earned,"
            " points_redeemed, value_loaded, value_used) {rows}",
            b.flows,
        )
        d.insert_rows(
            cur,
            "INSERT INTO rm_insight_flows_daily (program_id, day, points_earned,"
            " points_redeemed, value_loaded, value_used) {rows}"
            " ON CONFLICT (program_id, day) DO UPDATE SET"
            " points_earned = rm_insight_flows_daily.points_earned + excluded.points_earned,"
            " points_redeemed = rm_insight_flows_daily.points_redeemed"
            " + excluded.points_redeemed,"
            " value_loaded = rm_insight_flows_daily.value_loaded + excluded.value_loaded,"
            " value_used = rm_insight_flows_daily.value_used + excluded.value_used",
            [(*key, *sums) for key, sums in sorted(b.flows_daily.items())],
        )

    def _write_members(self, cur: Cursor, b: _Batch) -> dict[str, list[tuple[Values, Values]]]:
        """Each touched member's lifetime facts, from all of their purchases: now, and from
        each instant of one of their purchases or refunds on, from the batch's earliest for
        them (rm_insight_member_facts, each row until the next instant; the row before
        that earliest instant now ends at the first rewritten one); per programme touched,
        the members' values (before, after) that changed."""
        rows = []
        history: list[tuple[Any, ...]] = []
        rewritten: list[tuple[str, str, int]] = []
        ended: list[tuple[int, str, str, int]] = []
        changes: dict[str, list[tuple[Values, Values]]] = {}
        for account in sorted(b.touched):
            program_id, member_id = account
            zone = self._zone(cur, program_id)
            kept = b.purchases[account].values()
            life = b.lives.get(account)
            if life is not None:  # only purchases after every fact: added to the Lifetime
                new = sorted(kept, key=lambda x: (x.occurred_at, x.transaction_id))
                if b.newest[account]:
                    ended.append(
                        (micros(new[0].occurred_at), program_id, member_id, b.newest[account])
                    )
                for i, x in enumerate(new):
                    life = life.bought(x.occurred_at, x.store_id, x.purchase_minor, zone)
                    if i + 1 < len(new) and new[i + 1].occurred_at == x.occurred_at:
                        continue  # one row per instant, once all of its purchases count
                    until = micros(new[i + 1].occurred_at) if i + 1 < len(new) else None
                    row = history_columns(life.behaviour())
                    history.append((program_id, member_id, micros(x.occurred_at), until, *row))
                facts, newest = life.behaviour(), micros(new[-1].occurred_at)
            else:  # a refund, or a purchase before a kept fact: from all the purchases
                bought = [x.purchase() for x in kept]
                facts, newest, life = self._recomputed(
                    account, kept, bought, zone, b, history, rewritten, ended
                )
            rows.append(
                (*lifetime_columns(facts), *life_state(life), newest, program_id, member_id)
            )
            before, after = b.before.get(account), _scored(facts)
            moved = changes.setdefault(program_id, [])
            if before != after:
                moved.append((before, after))
        cur.executemany(
            "UPDATE rm_insight_members SET lifetime_purchases = ?, lifetime_value_minor = ?,"
            " purchase_cycle_days = ?, first_purchase_at = ?, last_purchase_at = ?,"
            " last_purchase_day = ?, favourite_store_id = ?, purchase_gaps = ?,"
            " store_nets = ?, newest_fact_at = ? WHERE program_id = ? AND member_id = ?",
            rows,
        )
        cur.executemany(
            "DELETE FROM rm_insight_member_facts WHERE program_id = ? AND member_id = ?"
            " AND since >= ?",
            rewritten,
        )
        cur.executemany(
            "UPDATE rm_insight_member_facts SET until = ?"
            " WHERE program_id = ? AND member_id = ? AND since = ?",
            ended,
        )
        self.dialect.insert_rows(
            cur,
            "INSERT INTO rm_insight_member_facts (program_id, member_id, since, until,"
            " lifetime_purchases, lifetime_value_minor, purchase_cycle_days,"
            " last_purchase_day) {rows}",
            history,
        )
        return changes

    @staticmethod
    def _recomputed(
        account: tuple[str, str],
        kept: Iterable[_Purchase],
        bought: list[Purchase],
        zone: ZoneInfo,
        b: _Batch,
        history: list[tuple[Any, ...]],
        rewritten: list[tuple[str, str, int]],
        ended: list[tuple[int, str, str, int]],
    ) -> tuple[Behaviour, int, Lifetime]:
        """A member's facts from all their purchases: the rows of rm_insight_member_facts
        from the batch's earliest fact for them on (those kept from then on rewritten, the
        row before ended at the first), and (facts now, the newest instant, the Lifetime)."""
        program_id, member_id = account
        since = b.earliest[account]
        instants = sorted(
            {at for x in bought for at in (x.occurred_at, *(r.occurred_at for r in x.refunds))}
        )
        first = bisect_left(instants, since)  # instants before it are kept as they are
        if any(
            at >= since
            for x in kept
            if not x.new
            for at in (x.occurred_at, *(r[1] for r in x.refunds[: x.loaded_refunds]))
        ):
            rewritten.append((program_id, member_id, micros(since)))  # rows from since on
        if first:
            ended.append(
                (micros(instants[first]), program_id, member_id, micros(instants[first - 1]))
            )
        facts = Behaviour()
        for i in range(first, len(instants)):
            facts = behaviour_at(bought, instants[i], zone, _LIFETIME)
            until = micros(instants[i + 1]) if i + 1 < len(instants) else None
            history.append(
                (program_id, member_id, micros(instants[i]), until, *history_columns(facts))
            )
        # The last instant is the newest: the facts once everything has occurred.
        return facts, micros(instants[-1]), lifetime_of(bought, zone)

    def _write_stores(self, cur: Cursor, b: _Batch) -> None:
        """Per store, what the batch's new and refunded purchases changed."""
        sums: dict[tuple[str, str], list[int]] = {}
        for program_id, member_id, transaction_id in sorted(b.changed):
            bought = b.purchases[(program_id, member_id)][transaction_id]
            after = bought.purchase().net_at(_END)
            before = 0 if bought.new else bought.purchase(bought.loaded_refunds).net_at(_END)
            change = sums.setdefault((program_id, bought.store_id), [0, 0])
            change[0] += after - before
            change[1] += (after > 0) - (before > 0)
        self.dialect.insert_rows(
            cur,
            "INSERT INTO rm_insight_stores (program_id, store_id, net_minor, purchases) {rows}"
            " ON CONFLICT (program_id, store_id) DO UPDATE SET"
            " net_minor = rm_insight_stores.net_minor + excluded.net_minor,"
            " purchases = rm_insight_stores.purchases + excluded.purchases",
            [(*key, *change) for key, change in sorted(sums.items())],
        )

    def _move_cuts(
        self, cur: Cursor, program_id: str, changes: list[tuple[Values, Values]]
    ) -> None:
        """The programme's value counts and cuts after the batch's `changes` (a member's
        values before and after; None: not scored). Each cut starts from where it was, its
        count at or below it corrected by the changes, and moves to the value of its new
        rank (`start_ranks`) over the values in between: no more of them than the changes
        can have moved it past, whatever the programme's size. The result is the cuts
        programme_cuts makes of every member's values (as a rebuild does)."""
        deltas: dict[tuple[str, int], int] = {}
        for before, after in changes:
            for values, sign in ((before, -1), (after, 1)):
                if values is not None:
                    for score, value in zip(SCORES, values, strict=True):
                        deltas[(score, value)] = deltas.get((score, value), 0) + sign
        moved = sorted((key, delta) for key, delta in deltas.items() if delta)
        self.dialect.insert_rows(
            cur,
            "INSERT INTO rm_insight_values (program_id, score, value, members) {rows}"
            " ON CONFLICT (program_id, score, value) DO UPDATE SET"
            " members = rm_insight_values.members + excluded.members",
            [(program_id, score, value, delta) for (score, value), delta in moved],
        )
        if any(delta < 0 for _, delta in moved):  # values whose last member left
            cur.execute(
                "DELETE FROM rm_insight_values WHERE program_id = ? AND members = 0",
                (program_id,),
            )
        cur.execute(
            "SELECT scored_members, recency_starts, frequency_starts, monetary_starts,"
            " recency_counts, frequency_counts, monetary_counts"
            " FROM rm_insight_cuts WHERE program_id = ?",
            (program_id,),
        )
        row = cur.fetchone()
        was = int(row[0]) if row else 0
        members = was + sum((a is not None) - (b is not None) for b, a in changes)
        ranks = start_ranks(members)
        columns: list[str] = []
        counts: list[str] = []
        for i, score in enumerate(SCORES):
            starts = starts_of(str(row[1 + i])) if row else ()
            at_or_below = starts_of(str(row[4 + i])) if row else ()
            found: list[tuple[int, int]] = []  # (start, members at or below it)
            for k, rank in enumerate(ranks):
                start: int | None
                if k < len(starts):
                    start = starts[k]
                    count = at_or_below[k] + sum(
                        (a is not None and a[i] <= start) - (b is not None and b[i] <= start)
                        for b, a in changes
                    )
                elif found:  # more cuts than before: on from the one below
                    start, count = found[-1]
                else:
                    start, count = None, 0
                found.append(self._walk(cur, program_id, score, start, count, rank))
            columns.append(starts_text(tuple(v for v, _ in found)))
            counts.append(starts_text(tuple(c for _, c in found)))
        cur.execute("DELETE FROM rm_insight_cuts WHERE program_id = ?", (program_id,))
        cur.execute(
            "INSERT INTO rm_insight_cuts (program_id, scored_members, recency_starts,"
            " frequency_starts, monetary_starts, recency_counts, frequency_counts,"
            " monetary_counts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (program_id, members, *columns, *counts),
        )

    @staticmethod
    def _walk(
        cur: Cursor, program_id: str, score: str, start: int | None, count: int, rank: int
    ) -> tuple[int, int]:
        """(the value of `rank`, the members at or below it), from `start` (None: below
        every value) with `count` members at or below it. Every value kept has a member, so
        the walk reads at most |count - rank| + 1 values, in one statement."""
        if start is not None and count >= rank:
            # Down to the smallest value still holding the rank. The first row is start, or
            # the next value below it if start has no member left: `count` at or below both.
            cur.execute(
                "SELECT value, members FROM rm_insight_values WHERE program_id = ?"
                " AND score = ? AND value <= ? ORDER BY value DESC LIMIT ?",
                (program_id, score, start, count - rank + 1),
            )
            for value, members in cur.fetchall():
                if count - int(members) < rank:
                    return int(value), count
                count -= int(members)
        else:
            # Up to the first value that reaches the rank.
            above = "" if start is None else " AND value > ?"
            cur.execute(
                "SELECT value, members FROM rm_insight_values WHERE program_id = ?"
                f" AND score = ?{above} ORDER BY value LIMIT ?",
                (program_id, score, *(() if start is None else (start,)), rank - count),
            )
            for value, members in cur.fetchall():
                count += int(members)
                if count >= rank:
                    return int(value), count
        raise LookupError(
            f"program {program_id}: the {score} value counts disagree with the cuts (rank"
            f" {rank}, {count} members at or below {start}): rebuild the insights read model"
        )

    def _zone(self, cur: Cursor, program_id: str) -> ZoneInfo:
        zone = self._zones.get(program_id)
        if zone is None:
            cur.execute(
                "SELECT time_zone FROM rm_insight_programs WHERE program_id = ?", (program_id,)
            )
            row = cur.fetchone()
            if row is None:
                raise LookupError(f"program {program_id} has members but no creation")
            zone = self._zones[program_id] = ZoneInfo(str(row[0]))
        return zone


_END = datetime(9999, 12, 31, tzinfo=UTC)  # after everything: the net once all occurred


def _moment(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _scored(facts: Behaviour) -> Values:
    """The values a member is scored on (ProgrammeCuts.scores); None: no purchase."""
    if facts.last_purchase_day is None:
        return None
    return (
        facts.last_purchase_day.toordinal(),
        facts.lifetime_purchases,
        facts.lifetime_value_minor,
    )


def life_state(life: Lifetime) -> tuple[str, str]:
    """What rm_insight_members keeps of a Lifetime beside its lifetime facts."""
    return json.dumps(life.gaps), json.dumps(life.stores)


def history_columns(facts: Behaviour) -> tuple[Any, ...]:
    """A member's lifetime facts as `rm_insight_member_facts` keeps them: what a list of
    the programme's members reads (the stage, the scores, the programme's figures)."""
    return (
        facts.lifetime_purchases,
        facts.lifetime_value_minor,
        facts.purchase_cycle_days,
        facts.last_purchase_day.toordinal() if facts.last_purchase_day else None,
    )


def lifetime_columns(facts: Behaviour) -> tuple[Any, ...]:
    """A member's lifetime facts as `rm_insight_members` keeps them."""
    return (
        facts.lifetime_purchases,
        facts.lifetime_value_minor,
        facts.purchase_cycle_days,
        micros(facts.first_purchase_at),
        micros(facts.last_purchase_at),
        facts.last_purchase_day.toordinal() if facts.last_purchase_day else None,
        facts.favourite_store_id,
    )


def starts_text(starts: tuple[int, ...]) -> str:
    return ",".join(str(s) for s in starts)


def starts_of(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",")) if text else ()


def _by_program(accounts: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    grouped: dict[str, set[str]] = {}
    for program_id, member_id in accounts:
        grouped.setdefault(program_id, set()).add(member_id)
    return grouped


def _chunks(keys: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(keys), CHUNK):
        yield keys[start : start + CHUNK]
