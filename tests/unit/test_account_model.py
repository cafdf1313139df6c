"""Model-based test of the MemberAccount aggregate.

A hypothesis state machine drives random command sequences against a real `MemberAccount`
and against `Model`, a plain-Python statement of the points and stored-value rules written
from DESIGN.md and decision 15: lists and dicts, no cleverness. The model is the spec; the
aggregate must agree with it after every step, refuse exactly what the model refuses, and be
rebuilt exactly from its own events after a round trip through the JSON transcoder the
application uses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from math import floor
from typing import Any
from uuid import UUID

from eventsourcing.application import project_aggregate
from eventsourcing.domain import DomainEventProtocol, Snapshot
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    UUIDAsHex,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ledger.application.transcodings import account_transcodings
from ledger.domain import errors, journal
from ledger.domain.account import MemberAccount
from ledger.domain.program import CashOutPolicy, PointsConversion, StoredValueSplit
from ledger.domain.provenance import Provenance, ProvenanceAsDict
from ledger.domain.reversals import Reversal

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# Events a public command may record before it refuses: bringing the account up to `now`.
BRING_UP_EVENTS = {"HoldExpired", "LotsExpired"}


# ---------------------------------------------------------------------------------------
# The model: the rules, stated as simply as possible.
# ---------------------------------------------------------------------------------------


@dataclass
class MLot:
    points: int  # what the lot was opened with (after repaying debt)
    remaining: int  # spendable now
    earned_at: datetime
    expires_at: datetime | None
    held: int = 0  # taken by active holds
    expired: int = 0  # gone by expiry
    expired_reversed: int = 0  # expired points already set against a reversal of the earn
    # Other lots' points taken in place of this lot's when its earn was reversed while its
    # points were away; points coming back to this lot go back to those lots first.
    stood_in: dict[str, int] = field(default_factory=dict)


@dataclass
class MHold:
    taken: list[tuple[str, int]]  # (lot id, points) in the order they were taken
    expires_at: datetime

    @property
    def points(self) -> int:
        return sum(p for _, p in self.taken)


@dataclass
class MRedemption:
    # (lot id, points) in consumption order, less what reversals took back from the end.
    unreversed: list[list[Any]]

    @property
    def reversible(self) -> int:
        return sum(p for _, p in self.unreversed)


@dataclass
class MEarn:
    points: int
    occurred_at: datetime
    qualifying: bool
    reversed: int = 0
    # occurred_at + the tier window in force when it was recorded (None: not qualifying).
    until: datetime | None = None
    purchase: int = 0  # the order's money
    refunded: int = 0  # what its reversals refunded of it
    all_pro_rata: bool = True  # no reversal of it named its refund


@dataclass
class MValueLot:
    """A TopUp's (or ConvertPoints') stored value."""

    store: str  # of issue
    at: datetime  # occurred_at: lots are spent oldest first ...
    opened: int  # ... then in the order they were opened
    cash: int  # paid
    bonus: int  # granted
    cash_left: int
    bonus_left: int
    converted: bool = False
    bonus_spent: int = 0  # bonus of this lot spent, less what refunds put back
    # Cash that cash-outs kept for bonus of this lot spent: never more than is spent now.
    deducted: int = 0
    cash_taken: int = 0  # cash taken off the card by cash-outs (handed back + deducted)
    forfeited: int = 0  # bonus that lapsed on cash-out


@dataclass
class MSpend:
    cash: int
    bonus: int
    # (lot id, amount) in the order drawn; and what is still out, less what refunds took
    # back from the end.
    cash_drawn: list[tuple[str, int]]
    bonus_drawn: list[tuple[str, int]]
    cash_out: list[list[Any]]
    bonus_out: list[list[Any]]
    cash_refunded: int = 0
    bonus_refunded: int = 0

    @property
    def amount(self) -> int:
        return self.cash + self.bonus

    @property
    def refunded(self) -> int:
        return self.cash_refunded + self.bonus_refunded


@dataclass
class Model:
    lots: dict[str, MLot] = field(default_factory=dict)
    holds: dict[str, MHold] = field(default_factory=dict)
    closed_holds: set[str] = field(default_factory=set)
    earns: dict[str, MEarn] = field(default_factory=dict)
    redemptions: dict[str, MRedemption] = field(default_factory=dict)
    others: set[str] = field(default_factory=set)  # holds, releases, adjustments
    debt: int = 0
    # Debt by the reversed earn it came from, oldest first: whatever repays it stands in
    # for that earn's lot.
    debt_of: dict[str, int] = field(default_factory=dict)
    # Stored value: the card's lots (top-ups and conversions), spends, and conversions (each
    # a redemption of points, with the rate it was made at).
    value_lots: dict[str, MValueLot] = field(default_factory=dict)
    spends: dict[str, MSpend] = field(default_factory=dict)
    conversions: dict[str, tuple[PointsConversion, MRedemption]] = field(default_factory=dict)

    def clone(self) -> Model:
        return Model(
            # Deep enough: a refused trial must not touch the real model's stood_in dicts.
            lots={i: replace(lot, stood_in=dict(lot.stood_in)) for i, lot in self.lots.items()},
            holds={i: MHold(list(h.taken), h.expires_at) for i, h in self.holds.items()},
            closed_holds=set(self.closed_holds),
            earns={i: replace(e) for i, e in self.earns.items()},
            redemptions={
                i: MRedemption([list(x) for x in r.unreversed]) for i, r in self.redemptions.items()
            },
            others=set(self.others),
            debt=self.debt,
            debt_of=dict(self.debt_of),
            value_lots={i: replace(v) for i, v in self.value_lots.items()},
            spends={
                i: replace(
                    x,
                    cash_out=[list(p) for p in x.cash_out],
                    bonus_out=[list(p) for p in x.bonus_out],
                )
                for i, x in self.spends.items()
            },
            conversions={
                i: (rate, MRedemption([list(x) for x in r.unreversed]))
                for i, (rate, r) in self.conversions.items()
            },
        )

    # -- reads

    @property
    def available(self) -> int:
        return sum(lot.remaining for lot in self.lots.values())

    @property
    def held(self) -> int:
        return sum(hold.points for hold in self.holds.values())

    @property
    def cash(self) -> int:
        return sum(v.cash_left for v in self.value_lots.values())

    @property
    def bonus(self) -> int:
        return sum(v.bonus_left for v in self.value_lots.values())

    def value_order(self) -> list[str]:
        """Value lots, oldest first, then in the order they were opened."""
        return sorted(
            self.value_lots, key=lambda i: (self.value_lots[i].at, self.value_lots[i].opened)
        )

    def spend_order(self) -> list[str]:
        """Lots with points left: earliest expiry first, never-expiring last, then oldest."""

        def key(lot_id: str) -> tuple[bool, datetime, datetime, str]:
            lot = self.lots[lot_id]
            if lot.expires_at is None:
                return (True, lot.earned_at, lot.earned_at, lot_id)
            return (False, lot.expires_at, lot.earned_at, lot_id)

        return sorted((i for i, lot in self.lots.items() if lot.remaining > 0), key=key)

    # -- helpers

    def take(self, points: int) -> list[tuple[str, int]]:
        taken = []
        for lot_id in self.spend_order():
            if points == 0:
                break
            lot = self.lots[lot_id]
            n = min(lot.remaining, points)
            lot.remaining -= n
            points -= n
            taken.append((lot_id, n))
        assert points == 0
        return taken

    def check_can_spend(self, points: int) -> None:
        if self.debt > 0:
            raise errors.AccountInDebt("model")
        if points > self.available:
            raise errors.InsufficientPoints("model")

    def open_lot(
        self, lot_id: str, points: int, earned_at: datetime, expires_at: datetime | None
    ) -> int:
        repaid = min(self.debt, points)
        self.debt -= repaid
        self.lots[lot_id] = MLot(points - repaid, points - repaid, earned_at, expires_at)
        self.repaid_by(lot_id, repaid)
        return repaid

    def repaid_by(self, lot_id: str, n: int) -> None:
        """`n` of this lot's points repaid debt: they stand in for the reversed lots the
        debt came from, oldest first."""
        for owing in list(self.debt_of):
            k = min(self.debt_of[owing], n)
            n -= k
            self.debt_of[owing] -= k
            if self.debt_of[owing] == 0:
                del self.debt_of[owing]
            if k and owing != lot_id:
                stood_in = self.lots[owing].stood_in
                stood_in[lot_id] = stood_in.get(lot_id, 0) + k

    def return_from_hold(self, hold_id: str) -> list[tuple[str, int]]:
        hold = self.holds.pop(hold_id)
        self.closed_holds.add(hold_id)
        self.come_back(hold.taken)
        return hold.taken

    def come_back(self, pieces: list[tuple[str, int]]) -> None:
        """Held points come back: the first of them repay debt, the rest go to their lots."""
        repay = min(self.debt, sum(n for _, n in pieces))
        self.debt -= repay
        repaying = []
        for lot_id, n in pieces:
            r = min(repay, n)
            repay -= r
            self.lots[lot_id].held -= n
            self.credit(lot_id, n - r)
            repaying.append((lot_id, r))
        for lot_id, r in repaying:
            self.repaid_by(lot_id, r)

    def credit(self, lot_id: str, n: int) -> None:
        """Points coming back to a lot: first to the lots that stood in for it, then to it."""
        stood_in = self.lots[lot_id].stood_in
        for other in list(stood_in):
            give = min(stood_in[other], n)
            self.lots[other].remaining += give
            stood_in[other] -= give
            n -= give
            if stood_in[other] == 0:
                del stood_in[other]
        self.lots[lot_id].remaining += n

    def active_hold(self, hold_id: str) -> MHold:
        if hold_id in self.holds:
            return self.holds[hold_id]
        if hold_id in self.closed_holds:
            raise errors.HoldNotActive("model")
        raise errors.HoldNotFound("model")

    # -- time

    def expire(self, as_of: datetime) -> dict[str, int]:
        """Every lot whose expiry has passed loses what remains in it."""
        gone = {}
        for lot_id, lot in self.lots.items():
            if lot.expires_at is not None and lot.expires_at <= as_of and lot.remaining > 0:
                gone[lot_id] = lot.remaining
                lot.expired += lot.remaining
                lot.remaining = 0
        return gone

    def bring_up_to(self, now: datetime) -> None:
        """Holds past their TTL give their points back, in the order their TTLs ran out (as
        an on-time sweep would have returned them), then due lots expire."""
        due = sorted(
            (h for h in self.holds if self.holds[h].expires_at <= now),
            key=lambda h: (self.holds[h].expires_at, h),
        )
        for hold_id in due:
            self.return_from_hold(hold_id)
        self.expire(now)

    # -- commands (each works on a copy; raising means refused)

    def qualifying_points(self, at: datetime) -> int:
        """Earns count toward the tier until the end of the window they were recorded
        under, that instant included."""
        return sum(
            e.points - e.reversed
            for e in self.earns.values()
            if e.until is not None and e.until >= at
        )

    def earn(
        self,
        tx: str,
        now: datetime,
        points: int,
        earned_at: datetime,
        expires_at: datetime | None,
        qualifying: bool,
        window: timedelta,
        purchase: int = 0,
    ) -> int:
        self.bring_up_to(now)
        repaid = self.open_lot(tx, points, earned_at, expires_at)
        until = earned_at + window if qualifying else None
        self.earns[tx] = MEarn(points, earned_at, qualifying, until=until, purchase=purchase)
        self.bring_up_to(now)
        return repaid

    def redeem(self, tx: str, now: datetime, points: int) -> list[tuple[str, int]]:
        self.bring_up_to(now)
        self.check_can_spend(points)
        taken = self.take(points)
        self.redemptions[tx] = MRedemption([[i, n] for i, n in taken])
        return taken

    def hold(self, tx: str, now: datetime, points: int, ttl: timedelta) -> list[tuple[str, int]]:
        self.bring_up_to(now)
        self.check_can_spend(points)
        taken = self.take(points)
        for lot_id, n in taken:
            self.lots[lot_id].held += n
        self.holds[tx] = MHold(taken, now + ttl)
        self.others.add(tx)
        return taken

    def capture(
        self, tx: str, now: datetime, hold_id: str, points: int
    ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        self.bring_up_to(now)
        hold = self.active_hold(hold_id)
        if points == 0:
            points = hold.points
        if points > hold.points:
            raise errors.CaptureExceedsHold("model")
        self.holds.pop(hold_id)
        self.closed_holds.add(hold_id)
        consumed, released = [], []
        for lot_id, n in hold.taken:
            c = min(n, points)
            points -= c
            self.lots[lot_id].held -= c
            if c:
                consumed.append((lot_id, c))
            if n - c:
                released.append((lot_id, n - c))
        self.come_back(released)
        self.redemptions[tx] = MRedemption([[i, n] for i, n in consumed])
        self.bring_up_to(now)
        return consumed, released

    def release(self, tx: str, now: datetime, hold_id: str) -> list[tuple[str, int]]:
        self.bring_up_to(now)
        self.active_hold(hold_id)
        returned = self.return_from_hold(hold_id)
        self.others.add(tx)
        self.bring_up_to(now)
        return returned

    def adjust(
        self, tx: str, now: datetime, points: int, earned_at: datetime, expires_at: datetime | None
    ) -> None:
        self.bring_up_to(now)
        if points > 0:
            self.open_lot(tx, points, earned_at, expires_at)
        else:
            if -points > self.available:
                raise errors.InsufficientPoints("model")
            self.take(-points)
        self.others.add(tx)
        self.bring_up_to(now)

    def reverse(
        self,
        tx: str,
        now: datetime,
        target: str,
        points: int,
        amount: int = 0,
        policy: CashOutPolicy = CashOutPolicy.FORFEIT_REMAINING_BONUS,
        refund: int | None = None,
    ) -> Reversal:
        """Points of an Earn, a redemption or a conversion; money (`amount`) of a Spend or
        a TopUp. `policy`: the programme's cash-out policy. `refund`: an Earn's only, the
        purchase money refunded (None: pro rata to the points)."""
        self.bring_up_to(now)
        if target in self.earns:
            kind = "earn"
        elif target in self.conversions:
            kind = "conversion"
        elif target in self.redemptions:
            kind = "redemption"
        elif target in self.spends:
            kind = "spend"
        elif target in self.value_lots:
            kind = "top-up"
        elif target in self.others:
            raise errors.TransactionNotReversible("model")
        else:
            raise errors.TransactionNotFound("model")
        if refund is not None and kind != "earn":
            raise errors.RefundNotApplicable("model")
        by_money = kind in ("spend", "top-up")
        if (amount and not by_money) or (points and by_money):
            raise errors.ReversalInWrongUnit("model")
        if kind == "earn":
            reversed_, owed, refunded = self.reverse_earn(target, points, refund)
            result = Reversal(
                points_reversed=reversed_, debt_added=owed, refund_purchase_minor=refunded
            )
        elif kind == "redemption":
            redemption = self.redemptions[target]
            result = Reversal(points_reversed=self.undo(redemption, points))
        elif kind == "conversion":
            result = self.reverse_conversion(target, points)
        elif kind == "spend":
            result = self.refund(target, amount)
        else:
            result = self.cash_out(target, amount, policy)
        self.others.add(tx)
        self.bring_up_to(now)  # points put back into an expired lot expire at once
        return result

    @staticmethod
    def amount(reversible: int, requested: int) -> int:
        if reversible == 0:
            raise errors.NothingLeftToReverse("model")
        if requested > reversible:
            raise errors.ReversalExceedsOriginal("model")
        return requested or reversible

    def reverse_earn(self, target: str, requested: int, refund: int | None) -> tuple[int, int, int]:
        earn = self.earns[target]
        points = self.amount(earn.points - earn.reversed, requested)
        left = earn.purchase - earn.refunded
        if refund is None:
            # The purchase's share of the points, rounded half up; the last points take
            # whatever is left, and no refund exceeds what is left.
            share = floor(Fraction(earn.purchase * points, earn.points) + Fraction(1, 2))
            last = earn.reversed + points == earn.points
            refund = left if last else min(share, left)
        else:
            if refund > left:
                raise errors.RefundExceedsPurchase("model")
            earn.all_pro_rata = False
        earn.refunded += refund
        earn.reversed += points
        owed = points
        own = self.lots[target]
        # From the lot the earn opened ...
        n = min(own.remaining, owed)
        own.remaining -= n
        owed -= n
        # ... its expired points are gone already: nothing to claw back for them ...
        n = min(own.expired - own.expired_reversed, owed)
        own.expired_reversed += n
        owed -= n
        # ... then from other lots, and what is left becomes debt.
        for lot_id in self.spend_order():
            n = min(self.lots[lot_id].remaining, owed)
            self.lots[lot_id].remaining -= n
            owed -= n
            if n and lot_id != target:
                own.stood_in[lot_id] = own.stood_in.get(lot_id, 0) + n
        self.debt += owed
        if owed:
            self.debt_of[target] = self.debt_of.get(target, 0) + owed
        return points, owed, refund

    def undo(self, redemption: MRedemption, requested: int, limit: int | None = None) -> int:
        """Points of a redemption (or a conversion) come back: at most what it consumed and
        was not reversed yet (and `limit`)."""
        reversible = redemption.reversible if limit is None else min(limit, redemption.reversible)
        points = self.amount(reversible, requested)
        repaid = min(self.debt, points)
        self.debt -= repaid
        # Last consumed first: put back into the lots what did not repay debt ...
        self.pop_from_end(redemption, points - repaid, restore=True)
        # ... and count the debt repaid against the next ones.
        self.pop_from_end(redemption, repaid, restore=False)
        return points

    def pop_from_end(self, redemption: MRedemption, points: int, restore: bool) -> None:
        while points:
            entry = redemption.unreversed[-1]
            n = min(entry[1], points)
            if restore:
                self.credit(entry[0], n)
            else:
                self.repaid_by(entry[0], n)
            entry[1] -= n
            points -= n
            if entry[1] == 0:
                redemption.unreversed.pop()

    # -- stored value

    def top_up(
        self, tx: str, now: datetime, cash: int, bonus: int, store: str, at: datetime
    ) -> None:
        self.bring_up_to(now)
        self.value_lots[tx] = MValueLot(store, at, len(self.value_lots), cash, bonus, cash, bonus)

    def spend(
        self, tx: str, now: datetime, amount: int, policy: StoredValueSplit
    ) -> tuple[int, int]:
        """The split is decided on the card's balances; then each part is drawn on its own
        from the lots, oldest first. Points debt does not matter."""
        self.bring_up_to(now)
        cash, bonus = self.cash, self.bonus
        if amount > cash + bonus:
            raise errors.InsufficientStoredValue("model")
        if policy is StoredValueSplit.CASH_FIRST:
            from_cash = min(cash, amount)  # all the cash it can, the rest from bonus
        elif policy is StoredValueSplit.BONUS_FIRST:
            from_cash = amount - min(bonus, amount)  # all the bonus it can, the rest cash
        else:
            # Cash in proportion to the balances, rounded down: a remainder unit is bonus.
            from_cash = amount * cash // (cash + bonus)
        from_bonus = amount - from_cash
        cash_drawn = self.draw(from_cash, cash=True)
        bonus_drawn = self.draw(from_bonus, cash=False)
        self.spends[tx] = MSpend(
            from_cash,
            from_bonus,
            cash_drawn,
            bonus_drawn,
            [list(x) for x in cash_drawn],
            [list(x) for x in bonus_drawn],
        )
        return from_cash, from_bonus

    def draw(self, amount: int, cash: bool) -> list[tuple[str, int]]:
        drawn = []
        for lot_id in self.value_order():
            lot = self.value_lots[lot_id]
            n = min(lot.cash_left if cash else lot.bonus_left, amount)
            if n == 0:
                continue
            if cash:
                lot.cash_left -= n
            else:
                lot.bonus_left -= n
                lot.bonus_spent += n
            drawn.append((lot_id, n))
            amount -= n
        assert amount == 0
        return drawn

    def refund(self, target: str, requested: int) -> Reversal:
        """Pro rata to the spend's split, on the cumulative total refunded; back into the
        lots it was drawn from, last drawn first. A lot never keeps cash for more bonus than
        is spent of it: cash a cash-out kept for bonus that comes back now comes back too,
        onto the card."""
        spend = self.spends[target]
        amount = self.amount(spend.amount - spend.refunded, requested)
        cash_after = spend.cash * (spend.refunded + amount) // spend.amount
        cash = cash_after - spend.cash_refunded
        bonus = amount - cash
        spend.cash_refunded += cash
        spend.bonus_refunded += bonus
        for lot_id, n in self.put_back(spend.cash_out, cash):
            self.value_lots[lot_id].cash_left += n
        unwithheld = 0
        for lot_id, n in self.put_back(spend.bonus_out, bonus):
            lot = self.value_lots[lot_id]
            lot.bonus_left += n
            lot.bonus_spent -= n
            kept_too_much = max(0, lot.deducted - lot.bonus_spent)
            lot.deducted -= kept_too_much
            lot.cash_left += kept_too_much
            unwithheld += kept_too_much
        return Reversal(cash_minor=cash + unwithheld, bonus_minor=bonus)

    @staticmethod
    def put_back(out: list[list[Any]], amount: int) -> list[tuple[str, int]]:
        back = []
        while amount:
            piece = out[-1]
            n = min(piece[1], amount)
            back.append((piece[0], n))
            piece[1] -= n
            amount -= n
            if piece[1] == 0:
                out.pop()
        return back

    def cash_out(self, target: str, requested: int, policy: CashOutPolicy) -> Reversal:
        """Cash off the card (0: all the top-up's cash left); its bonus lapses pro rata
        (all of it with the last of the cash); DEDUCT_SPENT_BONUS keeps the bonus spent of
        this top-up, and not kept before, from the cash handed back."""
        lot = self.value_lots[target]
        if lot.cash_left == 0 and lot.bonus_left == 0:
            raise errors.NothingLeftToReverse("model")
        if requested > lot.cash_left:
            raise errors.ReversalExceedsOriginal("model")
        taken = requested or lot.cash_left
        if taken == lot.cash_left:
            forfeited = lot.bonus_left
        else:
            forfeited = lot.bonus_left * taken // lot.cash_left
        deducted = 0
        if policy is CashOutPolicy.DEDUCT_SPENT_BONUS:
            deducted = max(0, min(taken, lot.bonus_spent - lot.deducted))
        lot.cash_left -= taken
        lot.cash_taken += taken
        lot.bonus_left -= forfeited
        lot.forfeited += forfeited
        lot.deducted += deducted
        return Reversal(
            refunded_cash_minor=taken - deducted,
            forfeited_bonus_minor=forfeited,
            bonus_deducted_minor=deducted,
        )

    def convert(
        self,
        tx: str,
        now: datetime,
        points: int,
        rate: PointsConversion | None,
        store: str,
        at: datetime,
    ) -> tuple[int, list[tuple[str, int]]]:
        """Points taken like a Redeem; their value a bonus-only lot."""
        self.bring_up_to(now)
        if rate is None:
            raise errors.ConversionNotAvailable("model")
        if points % rate.points:
            raise errors.NotAMultipleOfRate("model")
        self.check_can_spend(points)
        taken = self.take(points)
        self.conversions[tx] = (rate, MRedemption([[i, n] for i, n in taken]))
        value = points // rate.points * rate.value_minor
        lot = MValueLot(store, at, len(self.value_lots), 0, value, 0, value, converted=True)
        self.value_lots[tx] = lot
        return value, taken

    def reverse_conversion(self, target: str, requested: int) -> Reversal:
        """By points, in steps of the rate it was made at, at most the points whose value is
        still on the card; they come back like a redemption's, the value goes."""
        rate, redemption = self.conversions[target]
        if requested % rate.points:
            raise errors.NotAMultipleOfRate("model")
        lot = self.value_lots[target]
        on_card = lot.bonus_left // rate.value_minor * rate.points
        points = self.undo(redemption, requested, limit=on_card)
        value = points // rate.points * rate.value_minor
        lot.bonus_left -= value
        return Reversal(points_reversed=points, value_minor=value)


# ---------------------------------------------------------------------------------------
# Events: the JSON round trip the application's event store makes, and totals by kind.
# ---------------------------------------------------------------------------------------


def make_mapper() -> Mapper[UUID]:
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DecimalAsStr())
    transcoder.register(DatetimeAsISO())
    transcoder.register(ProvenanceAsDict())
    for transcoding in account_transcodings():
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


@dataclass
class Totals:
    """Sums over the event log, for the points identities."""

    earned: int = 0
    adjusted_in: int = 0
    adjusted_out: int = 0
    redeemed: int = 0  # including captures
    expired: int = 0
    earn_reversed_clawed: int = 0  # reversed earn points, less those that had expired already
    redemption_reversed: int = 0
    debt_added: int = 0
    debt_repaid: int = 0
    # Points put into lots (opened, restored) and taken out of them (spent, expired, clawed).
    into_lots: int = 0
    out_of_lots: int = 0
    converted: int = 0  # points turned into stored value
    conversion_reversed: int = 0
    # Stored value, in minor units.
    topped_up_cash: int = 0
    topped_up_bonus: int = 0
    converted_value: int = 0
    spent_cash: int = 0
    spent_bonus: int = 0
    refunded_cash: int = 0
    refunded_bonus: int = 0
    unwithheld: int = 0  # withheld cash back on the card with the bonus it was kept for
    cash_taken: int = 0  # by cash-outs: handed back + withheld
    forfeited: int = 0
    conversion_value_reversed: int = 0
    # Per value lot: cash paid, cash and bonus spent net of refunds, cash handed back, cash
    # withheld (net of what came back).
    lot_paid: dict[str, int] = field(default_factory=dict)
    lot_cash_spent: dict[str, int] = field(default_factory=dict)
    lot_bonus_spent: dict[str, int] = field(default_factory=dict)
    lot_unwithheld: dict[str, int] = field(default_factory=dict)
    lot_handed_back: dict[str, int] = field(default_factory=dict)
    lot_withheld: dict[str, int] = field(default_factory=dict)
    # Per earn: the purchase money its reversals refunded.
    earn_refunded: dict[str, int] = field(default_factory=dict)
    # Per spend: its split, and what its refunds put back of each part.
    spend_split: dict[str, tuple[int, int]] = field(default_factory=dict)
    spend_refunded: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, event: Any) -> None:
        kind = type(event).__name__
        if kind == "PointsEarned":
            self.earned += event.points
            self.debt_repaid += event.debt_repaid
            self.into_lots += event.points - event.debt_repaid
        elif kind in ("PointsRedeemed", "HoldCaptured"):
            self.redeemed += sum(event.consumed.values())
            self.out_of_lots += sum(event.consumed.values())
        elif kind == "PointsAdjusted":
            if event.points > 0:
                self.adjusted_in += event.points
                self.debt_repaid += event.debt_repaid
                self.into_lots += event.points - event.debt_repaid
            else:
                assert sum(event.taken.values()) == -event.points
                self.adjusted_out += -event.points
                self.out_of_lots += -event.points
        elif kind == "EarnReversed":
            taken = sum(event.taken.values())
            assert taken + event.from_expired + event.debt_added == event.points
            self.earn_reversed_clawed += event.points - event.from_expired
            self.debt_added += event.debt_added
            target = event.provenance.reverses_transaction_id
            assert event.refund_purchase_minor >= 0  # recorded by this code: never -1
            self.earn_refunded[target] = (
                self.earn_refunded.get(target, 0) + event.refund_purchase_minor
            )
            self.out_of_lots += taken
        elif kind == "RedemptionReversed":
            assert sum(event.restored.values()) + event.debt_repaid == event.points
            self.redemption_reversed += event.points
            self.debt_repaid += event.debt_repaid
            self.into_lots += sum(event.restored.values())
        elif kind == "LotsExpired":
            assert all(n > 0 for n in event.lots.values())
            self.expired += sum(event.lots.values())
            self.out_of_lots += sum(event.lots.values())
        elif kind == "PointsConverted":
            self.converted += sum(event.consumed.values())
            self.out_of_lots += sum(event.consumed.values())
            self.converted_value += event.value
            assert event.value == (
                sum(event.consumed.values()) // event.rate_points * event.rate_value_minor
            )
        elif kind == "ConversionReversed":
            assert sum(event.restored.values()) + event.debt_repaid == event.points
            self.conversion_reversed += event.points
            self.debt_repaid += event.debt_repaid
            self.into_lots += sum(event.restored.values())
            self.conversion_value_reversed += event.value
        elif kind in ("StoredValueToppedUp", "StoredValueSpent", "SpendRefunded", "TopUpCashedOut"):
            self.add_value(event)
        else:
            assert kind in ("MemberEnrolled", "PointsHeld", "HoldReleased", "HoldExpired"), kind
        if kind in ("HoldCaptured", "HoldReleased", "HoldExpired"):
            # Held points that repaid debt leave the lots for good.
            self.debt_repaid += event.debt_repaid
            self.out_of_lots += event.debt_repaid

    def add_value(self, event: Any) -> None:
        kind = type(event).__name__
        tx = event.provenance.transaction_id
        target = event.provenance.reverses_transaction_id
        if kind == "StoredValueToppedUp":
            self.topped_up_cash += event.cash
            self.topped_up_bonus += event.bonus
            self.lot_paid[tx] = event.cash
        elif kind == "StoredValueSpent":
            assert sum(event.cash_drawn.values()) == event.cash
            assert sum(event.bonus_drawn.values()) == event.bonus
            assert all(n > 0 for n in (*event.cash_drawn.values(), *event.bonus_drawn.values()))
            self.spent_cash += event.cash
            self.spent_bonus += event.bonus
            for lot_id, n in event.cash_drawn.items():
                self.lot_cash_spent[lot_id] = self.lot_cash_spent.get(lot_id, 0) + n
            for lot_id, n in event.bonus_drawn.items():
                self.lot_bonus_spent[lot_id] = self.lot_bonus_spent.get(lot_id, 0) + n
            self.spend_split[tx] = (event.cash, event.bonus)
            self.spend_refunded[tx] = (0, 0)
        elif kind == "SpendRefunded":
            assert sum(event.cash_restored.values()) == event.cash
            assert sum(event.bonus_restored.values()) == event.bonus
            self.refunded_cash += event.cash
            self.refunded_bonus += event.bonus
            for lot_id, n in event.cash_restored.items():
                self.lot_cash_spent[lot_id] -= n
            for lot_id, n in event.bonus_restored.items():
                self.lot_bonus_spent[lot_id] -= n
            assert set(event.cash_unwithheld) <= set(event.bonus_restored)
            for lot_id, n in event.cash_unwithheld.items():
                assert n > 0
                self.lot_withheld[lot_id] -= n
                self.lot_unwithheld[lot_id] = self.lot_unwithheld.get(lot_id, 0) + n
                self.unwithheld += n
            cash, bonus = self.spend_refunded[target]
            self.spend_refunded[target] = (cash + event.cash, bonus + event.bonus)
        else:
            assert event.refunded_cash + event.bonus_deducted == event.cash_taken
            self.cash_taken += event.cash_taken
            self.forfeited += event.bonus_forfeited
            self.lot_handed_back[target] = self.lot_handed_back.get(target, 0) + event.refunded_cash
            self.lot_withheld[target] = self.lot_withheld.get(target, 0) + event.bonus_deducted


def state_of(account: MemberAccount) -> dict[str, Any]:
    """Everything the aggregate knows, for before/after and replay comparisons."""
    state = {k: v for k, v in vars(account).items() if not k.startswith("_")}
    state["version"] = account.version
    # A cache, not a fact: a lower bound of the open lots' expiries, tightened by scans.
    earliest = state.pop("earliest_expiry")
    expiries = [
        lot.expires_at
        for lot in account.lots.values()
        if lot.remaining > 0 and lot.expires_at is not None
    ]
    assert earliest is None or not expiries or earliest <= min(expiries)
    assert expiries == [] or earliest is not None
    return state


# ---------------------------------------------------------------------------------------
# The state machine.
# ---------------------------------------------------------------------------------------

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

# When a lot expires: never, at a midnight some days from today (so that lots share expiry
# instants and the earn-time tie-break matters), or at an offset from now.
Expiry = tuple[str, timedelta] | None
EXPIRY: st.SearchStrategy[Expiry] = st.one_of(
    st.none(),
    st.tuples(st.just("midnight"), st.integers(-2, 6).map(lambda d: d * DAY)),
    st.tuples(st.just("now"), st.sampled_from([-HOUR, timedelta(0), HOUR, 12 * HOUR, 2 * DAY])),
)


CURRENCY = "CNY"
STORES = st.sampled_from(["s1", "s2", ""])
RATES = [PointsConversion(10, 100), PointsConversion(3, 7), PointsConversion(1, 2)]
DIMENSIONS = ("points", "cash", "bonus")
MEMBER_ACCOUNTS = {
    "points": {
        journal.member_points("member"),
        journal.member_points_held("member"),
        journal.member_points_debt("member"),
    },
    "cash": {journal.member_cash("member")},
    "bonus": {journal.member_bonus("member")},
}


def dimension_of(posting: journal.Posting) -> str:
    """Points, cash or bonus: what a ledger account measures (each contra kind one)."""
    if posting.unit == journal.POINTS:
        return "points"
    assert posting.unit == CURRENCY
    name = posting.ledger_account
    if name in MEMBER_ACCOUNTS["cash"]:
        return "cash"
    if name in MEMBER_ACCOUNTS["bonus"]:
        return "bonus"
    kind = contra_kind(name)
    assert (kind in journal.CASH_ACCOUNTS) != (kind in journal.BONUS_ACCOUNTS), name
    return "cash" if kind in journal.CASH_ACCOUNTS else "bonus"


def contra_kind(ledger_account: str) -> str:
    """`store:s1:cash_spent` -> `cash_spent`, `program:points_expired` -> `points_expired`."""
    return ledger_account.rsplit(":", 1)[1]


class AccountMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.count = 0
        self.tier_window = 3 * DAY
        self.model = Model()
        self.mapper = make_mapper()
        self.stored: list[StoredEvent] = []
        self.totals = Totals()
        self.journal: dict[tuple[str, str], int] = {}  # (ledger account, unit) -> balance
        # Every posting with the log position of its event, and the account's balances by
        # dimension (points, cash, bonus) at the position each command left it.
        self.postings: list[tuple[int, journal.Posting]] = []
        self.balances_at: dict[int, dict[str, int]] = {0: dict.fromkeys(DIMENSIONS, 0)}
        self.replayed: MemberAccount | None = None
        # The programme's settings (UpdateProgram may change them between commands).
        self.split = StoredValueSplit.PROPORTIONAL
        self.cash_out_policy = CashOutPolicy.FORFEIT_REMAINING_BONUS
        self.rate: PointsConversion | None = RATES[0]
        self.account = MemberAccount(
            program_id="prog",
            member_id="member",
            referrer_member_id="",
            provenance=self.provenance(),
        )
        self.record()

    # -- plumbing

    def provenance(
        self, occurred_at: datetime | None = None, reverses: str = "", store: str = ""
    ) -> Provenance:
        self.count += 1
        return Provenance(
            transaction_id=f"tx-{self.count:04d}",
            request_id=f"req-{self.count:04d}",
            occurred_at=occurred_at or self.now,
            store_id=store,
            order_ref=f"order-{self.count}",
            reverses_transaction_id=reverses,
        )

    def record(self) -> None:
        """Take the new events as the store would: encoded, then decoded for the replay."""
        new: list[DomainEventProtocol[UUID]] = []
        for pending in self.account.collect_events():
            stored = self.mapper.to_stored_event(pending)
            self.stored.append(stored)
            new.append(self.mapper.to_domain_event(stored))
        position = len(self.stored) - len(new)
        for decoded in new:
            position += 1
            self.totals.add(decoded)
            entries = journal.postings(decoded, "member", CURRENCY)
            assert type(decoded) in journal.NO_POSTINGS or entries, type(decoded)
            # Each event balances in each unit, and in each dimension: no posting moves
            # value between cash and bonus (both in the currency) or points.
            for unit in (journal.POINTS, CURRENCY):
                assert sum(p.amount for p in entries if p.unit == unit) == 0, entries
            for dimension in DIMENSIONS:
                assert sum(p.amount for p in entries if dimension_of(p) == dimension) == 0
            for p in entries:
                key = (p.ledger_account, p.unit)
                self.journal[key] = self.journal.get(key, 0) + p.amount
                self.postings.append((position, p))
        self.replayed = project_aggregate(self.replayed, new)
        a = self.account
        self.balances_at[len(self.stored)] = {
            "points": a.available + a.held - a.debt,
            "cash": a.cash,
            "bonus": a.bonus,
        }

    def expires_at(self, expiry: Expiry) -> datetime | None:
        if expiry is None:
            return None
        base, offset = expiry
        if base == "midnight":
            return self.now.replace(hour=0, minute=0, second=0, microsecond=0) + offset
        return self.now + offset

    def peek(self) -> Model:
        """The model as the next command will see it, once brought up to now."""
        model = self.model.clone()
        model.bring_up_to(self.now)
        return model

    def execute(
        self,
        prov: Provenance,
        on_model: Callable[[Model], Any],
        on_account: Callable[[MemberAccount], Any],
    ) -> None:
        trial = self.model.clone()
        model_before = self.model.clone()
        expected_error: type[errors.DomainError] | None = None
        expected: Any = None
        try:
            expected = on_model(trial)
        except errors.DomainError as refusal:
            expected_error = type(refusal)

        before = copy.deepcopy(self.account)
        actual_error: type[errors.DomainError] | None = None
        actual: Any = None
        try:
            actual = on_account(self.account)
        except errors.DomainError as refusal:
            actual_error = type(refusal)

        assert actual_error is expected_error, (actual_error, expected_error)
        if actual_error is None:
            assert actual == expected, (actual, expected)
            self.model = trial
            self.record()
            return

        # Refused: the command recorded nothing of its own. At most it brought the account
        # up to now first, exactly as if the account had been brought up to now alone.
        pending = [type(e).__name__ for e in self.account.collect_events()]
        assert set(pending) <= BRING_UP_EVENTS, pending
        if pending:
            probe = copy.deepcopy(before)
            probe.bring_up_to(self.now, prov)
            assert [type(e).__name__ for e in probe.collect_events()] == pending
            assert state_of(self.account) == state_of(probe)
        else:
            assert state_of(self.account) == state_of(before)
        # The application discards the aggregate: so do we, and the model is untouched.
        self.account = before
        assert not self.account.collect_events()
        assert self.model == model_before

    # -- rules

    @rule(
        points=st.integers(1, 200),
        expiry=EXPIRY,
        backdate=st.sampled_from([timedelta(0), HOUR, DAY, 2 * DAY]),
        qualifying=st.booleans(),
        purchase=st.one_of(st.just(0), st.integers(1, 5000)),
    )
    def earn(
        self, points: int, expiry: Expiry, backdate: timedelta, qualifying: bool, purchase: int
    ) -> None:
        prov = self.provenance(occurred_at=self.now - backdate)
        expires_at = self.expires_at(expiry)
        tx, now, earned_at = prov.transaction_id, self.now, prov.occurred_at
        window = self.tier_window
        until = earned_at + window if qualifying else None
        self.execute(
            prov,
            lambda m: m.earn(tx, now, points, earned_at, expires_at, qualifying, window, purchase),
            lambda a: a.earn(prov, now, points, purchase, expires_at, until),
        )

    @rule(days=st.sampled_from([1, 3, 10]))
    def update_tier_window(self, days: int) -> None:
        """An UpdateProgram: earns recorded from now on count for the new window."""
        self.tier_window = timedelta(days=days)

    def draw_points(self, data: st.DataObject) -> int:
        """Mostly what can be spent, sometimes exactly all of it or one more."""
        available = self.peek().available
        return data.draw(
            st.one_of(
                st.integers(1, max(1, available)),
                st.sampled_from([max(1, available), available + 1]),
                st.integers(1, 400),
            ),
            label="points",
        )

    def draw_target(self, data: st.DataObject, likely: list[str], unlikely: list[str]) -> str:
        """Mostly one of `likely`, now and then one of `unlikely` (which is never empty)."""
        if likely and data.draw(st.integers(0, 4), label="pick") > 0:
            return data.draw(st.sampled_from(likely), label="target")
        return data.draw(st.sampled_from(unlikely), label="target")

    def has_lots(self) -> bool:
        return bool(self.model.lots)

    @precondition(has_lots)
    @rule(data=st.data())
    def redeem(self, data: st.DataObject) -> None:
        points = self.draw_points(data)
        prov = self.provenance()
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.redeem(tx, now, points),
            lambda a: list(a.redeem(prov, now, points).items()),
        )

    @precondition(has_lots)
    @rule(
        data=st.data(),
        ttl=st.sampled_from([timedelta(seconds=1), HOUR, DAY, 3 * DAY]),
    )
    def hold(self, data: st.DataObject, ttl: timedelta) -> None:
        points = self.draw_points(data)
        prov = self.provenance()
        tx, now = prov.transaction_id, self.now

        def on_account(a: MemberAccount) -> list[tuple[str, int]]:
            hold = a.hold(prov, now, points, ttl)
            assert hold.hold_id == tx
            assert hold.expires_at == now + ttl
            assert hold.points == points
            return list(hold.taken.items())

        self.execute(prov, lambda m: m.hold(tx, now, points, ttl), on_account)

    def any_holds(self) -> bool:
        return bool(self.model.holds or self.model.closed_holds)

    def draw_hold(self, data: st.DataObject) -> str:
        return self.draw_target(
            data, sorted(self.model.holds), [*sorted(self.model.closed_holds), "no-such-hold"]
        )

    @precondition(any_holds)
    @rule(data=st.data())
    def capture(self, data: st.DataObject) -> None:
        hold_id = self.draw_hold(data)
        size = self.model.holds[hold_id].points if hold_id in self.model.holds else 50
        points = data.draw(
            st.one_of(st.just(0), st.integers(1, size), st.sampled_from([size, size + 1])),
            label="points",
        )
        prov = self.provenance()
        tx, now = prov.transaction_id, self.now

        def on_account(a: MemberAccount) -> tuple[list[tuple[str, int]], ...]:
            consumed, released = a.capture_hold(prov, now, hold_id, points)
            return list(consumed.items()), list(released.items())

        self.execute(prov, lambda m: m.capture(tx, now, hold_id, points), on_account)

    @precondition(any_holds)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        hold_id = self.draw_hold(data)
        prov = self.provenance()
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.release(tx, now, hold_id),
            lambda a: list(a.release_hold(prov, now, hold_id).items()),
        )

    @rule(
        data=st.data(),
        credit=st.booleans(),
        expiry=EXPIRY,
    )
    def adjust(self, data: st.DataObject, credit: bool, expiry: Expiry) -> None:
        points = (
            data.draw(st.integers(1, 200), label="points") if credit else -self.draw_points(data)
        )
        prov = self.provenance()
        expires_at = self.expires_at(expiry)
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.adjust(tx, now, points, now, expires_at),
            lambda a: a.adjust(prov, now, points, expires_at),
        )

    @precondition(lambda self: bool(self.model.earns))
    @rule(data=st.data())
    def reverse_earn(self, data: st.DataObject) -> None:
        self.reverse(data, sorted(self.model.earns))

    @precondition(lambda self: bool(self.model.redemptions))
    @rule(data=st.data())
    def reverse_redemption(self, data: st.DataObject) -> None:
        """Of a Redeem or of a capture."""
        self.reverse(data, sorted(self.model.redemptions))

    @precondition(lambda self: bool(self.model.earns))
    @rule(data=st.data())
    def spend_all_then_refund_a_purchase(self, data: st.DataObject) -> None:
        """The road into debt: everything spent, then an earn reversed in full."""
        available = self.peek().available
        if available:
            prov = self.provenance()
            tx, now = prov.transaction_id, self.now
            self.execute(
                prov,
                lambda m: m.redeem(tx, now, available),
                lambda a: list(a.redeem(prov, now, available).items()),
            )
        target = data.draw(st.sampled_from(sorted(self.model.earns)), label="target")
        prov = self.provenance(reverses=target)
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.reverse(tx, now, target, 0),
            lambda a: a.reverse(prov, now, target, 0),
        )

    @precondition(lambda self: bool(self.model.earns))
    @rule(data=st.data(), holds=st.integers(2, 3))
    def overdue_holds_on_a_reversed_lot(self, data: st.DataObject, holds: int) -> None:
        """Several holds taken from one lot, its earn reversed while they are out, then all
        of them overdue at once: they come back through the lots that stood in for it."""
        for _ in range(holds):
            available = self.peek().available
            if not available:
                break
            points = data.draw(st.integers(1, max(1, available // holds)), label="held")
            ttl = data.draw(st.sampled_from([timedelta(seconds=1), HOUR]), label="ttl")
            self.place_hold(points, ttl)
        target = data.draw(st.sampled_from(sorted(self.model.earns)), label="target")
        prov = self.provenance(reverses=target)
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.reverse(tx, now, target, 0),
            lambda a: a.reverse(prov, now, target, 0),
        )
        self.now += data.draw(st.sampled_from([HOUR, 2 * HOUR, 2 * DAY]), label="later")

    def place_hold(self, points: int, ttl: timedelta) -> None:
        prov = self.provenance()
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.hold(tx, now, points, ttl),
            lambda a: list(a.hold(prov, now, points, ttl).taken.items()),
        )

    def reverse(self, data: st.DataObject, likely: list[str]) -> None:
        target = self.draw_target(data, likely, [*sorted(self.model.others), "no-such-transaction"])
        refund: int | None = None
        if target in self.model.earns:
            earn = self.model.earns[target]
            reversible = earn.points - earn.reversed
            # Mostly unset (pro rata); else some of what is left, all of it, or one more.
            if data.draw(st.integers(0, 2), label="names refund") == 0:
                refund = draw_up_to(data, earn.purchase - earn.refunded, "refund")
        elif target in self.model.redemptions:
            reversible = self.model.redemptions[target].reversible
        else:
            reversible = 10
        self.reverse_by(target, points=draw_up_to(data, reversible, "points"), refund=refund)

    def reverse_by(
        self, target: str, points: int = 0, amount: int = 0, refund: int | None = None
    ) -> None:
        prov = self.provenance(reverses=target, store=f"s{self.count % 3}")
        tx, now, policy = prov.transaction_id, self.now, self.cash_out_policy
        self.execute(
            prov,
            lambda m: m.reverse(tx, now, target, points, amount, policy, refund),
            lambda a: a.reverse(prov, now, target, points, amount, policy, refund),
        )

    # -- stored value

    @initialize(
        split=st.sampled_from(StoredValueSplit),
        cash_out=st.sampled_from(CashOutPolicy),
        rate=st.sampled_from(RATES),
    )
    def create_program(
        self, split: StoredValueSplit, cash_out: CashOutPolicy, rate: PointsConversion
    ) -> None:
        self.split, self.cash_out_policy, self.rate = split, cash_out, rate

    @rule(
        split=st.sampled_from(StoredValueSplit),
        cash_out=st.sampled_from(CashOutPolicy),
        rate=st.sampled_from([*RATES, *RATES, None]),
    )
    def update_stored_value_settings(
        self, split: StoredValueSplit, cash_out: CashOutPolicy, rate: PointsConversion | None
    ) -> None:
        """An UpdateProgram: commands from now on follow the new policies and rate."""
        self.split, self.cash_out_policy, self.rate = split, cash_out, rate

    @rule(
        cash=st.integers(1, 500),
        bonus=st.one_of(st.just(0), st.integers(1, 150)),
        store=STORES,
        backdate=st.sampled_from([timedelta(0), timedelta(0), HOUR, DAY]),
    )
    def top_up(self, cash: int, bonus: int, store: str, backdate: timedelta) -> None:
        prov = self.provenance(occurred_at=self.now - backdate, store=store)
        tx, now, at = prov.transaction_id, self.now, prov.occurred_at
        self.execute(
            prov,
            lambda m: m.top_up(tx, now, cash, bonus, store, at),
            lambda a: a.top_up(prov, now, cash, bonus, f"pay-{tx}", None, 1),
        )

    def has_value_lots(self) -> bool:
        return bool(self.model.value_lots)

    @precondition(has_value_lots)
    @rule(data=st.data(), store=STORES)
    def spend(self, data: st.DataObject, store: str) -> None:
        total = self.model.cash + self.model.bonus
        amount = data.draw(
            st.one_of(
                st.integers(1, max(1, total)),
                st.sampled_from([max(1, total), total + 1]),
                st.integers(1, 300),
            ),
            label="amount",
        )
        self.place_spend(amount, store)

    def place_spend(self, amount: int, store: str) -> str | None:
        prov = self.provenance(store=store)
        tx, now, policy = prov.transaction_id, self.now, self.split
        cash, bonus = self.account.cash, self.account.bonus
        self.execute(
            prov,
            lambda m: m.spend(tx, now, amount, policy),
            lambda a: a.spend(prov, now, amount, policy),
        )
        if tx not in self.account.spends:
            return None
        # The split sums to the amount, and each part is within its balance.
        record = self.account.spends[tx]
        assert record.cash + record.bonus == amount
        assert 0 <= record.cash <= cash
        assert 0 <= record.bonus <= bonus
        return tx

    def unlikely_targets(self) -> list[str]:
        return [*sorted(self.model.others), "no-such-transaction"]

    @precondition(lambda self: bool(self.model.spends))
    @rule(data=st.data())
    def refund_spend(self, data: st.DataObject) -> None:
        target = self.draw_target(data, sorted(self.model.spends), self.unlikely_targets())
        spend = self.model.spends.get(target)
        refundable = spend.amount - spend.refunded if spend else 10
        self.reverse_by(target, amount=draw_up_to(data, refundable, "amount"))

    @precondition(lambda self: bool(self.model.spends))
    @rule(data=st.data(), pieces=st.integers(2, 4))
    def refund_spend_in_pieces(self, data: st.DataObject, pieces: int) -> None:
        """A spend refunded in a few partial refunds of random sizes, often to the end."""
        target = data.draw(st.sampled_from(sorted(self.model.spends)), label="target")
        for _ in range(pieces):
            spend = self.model.spends[target]
            left = spend.amount - spend.refunded
            if left == 0:
                break
            self.reverse_by(target, amount=data.draw(st.integers(1, left), label="piece"))

    def top_ups(self) -> list[str]:
        return sorted(i for i, v in self.model.value_lots.items() if not v.converted)

    @precondition(lambda self: bool(self.top_ups()))
    @rule(data=st.data())
    def cash_out(self, data: st.DataObject) -> None:
        """Under the programme's cash-out policy."""
        target = self.draw_target(data, self.top_ups(), self.unlikely_targets())
        lot = self.model.value_lots.get(target)
        self.reverse_by(target, amount=draw_up_to(data, lot.cash_left if lot else 10, "amount"))

    @precondition(has_lots)
    @rule(data=st.data(), store=STORES)
    def convert_points(self, data: st.DataObject, store: str) -> None:
        """On the rate, off it (not a multiple), beyond what is available, in debt."""
        step = self.rate.points if self.rate else 10
        available = self.peek().available
        k = data.draw(st.integers(1, max(1, available // step + 1)), label="steps")
        off = data.draw(st.sampled_from([0, 0, 0, 1]), label="off the rate")
        self.place_conversion(k * step + off, store)

    def place_conversion(self, points: int, store: str) -> str | None:
        prov = self.provenance(store=store)
        tx, now, rate, at = prov.transaction_id, self.now, self.rate, prov.occurred_at

        def on_account(a: MemberAccount) -> tuple[int, list[tuple[str, int]]]:
            value, consumed = a.convert_points(prov, now, points, rate)
            return value, list(consumed.items())

        self.execute(prov, lambda m: m.convert(tx, now, points, rate, store, at), on_account)
        return tx if tx in self.model.conversions else None

    @precondition(lambda self: bool(self.model.conversions))
    @rule(data=st.data())
    def reverse_conversion(self, data: st.DataObject) -> None:
        """By points: whole steps of its rate (or not), up to or past the value on the card."""
        target = self.draw_target(data, sorted(self.model.conversions), self.unlikely_targets())
        if target in self.model.conversions:
            rate, redemption = self.model.conversions[target]
            k = data.draw(st.integers(0, redemption.reversible // rate.points + 1), label="steps")
            points = k * rate.points
        else:
            points = data.draw(st.integers(0, 20), label="points")
        points += data.draw(st.sampled_from([0, 0, 0, 1]), label="off the rate")
        self.reverse_by(target, points=points)

    @precondition(has_lots)
    @rule(data=st.data())
    def convert_spend_then_reverse(self, data: st.DataObject) -> None:
        """A conversion whose value is partly spent, then reversed: at most what is left
        (sometimes with the account in debt by then: the points repay it first)."""
        if self.rate is None:
            return
        steps = self.peek().available // self.rate.points
        if steps == 0:
            return
        points = data.draw(st.integers(1, steps), label="steps") * self.rate.points
        target = self.place_conversion(points, "s1")
        assert target is not None
        on_card = self.model.cash + self.model.bonus
        self.place_spend(data.draw(st.integers(1, max(1, on_card)), label="amount"), "s2")
        if bool(self.model.earns) and data.draw(st.booleans(), label="into debt"):
            self.spend_all_then_refund_a_purchase(data)
        rate, redemption = self.model.conversions[target]
        on_card = self.model.value_lots[target].bonus_left // rate.value_minor
        k = data.draw(
            st.one_of(
                st.just(0),
                st.integers(1, max(1, on_card)),
                st.sampled_from([on_card, on_card + 1, redemption.reversible // rate.points]),
            ),
            label="steps",
        )
        self.reverse_by(target, points=k * rate.points)

    @rule(
        data=st.data(),
        cash=st.integers(1, 500),
        bonus=st.integers(1, 150),
        refund=st.sampled_from(["none", "before", "after"]),
    )
    def spend_then_cash_out(self, data: st.DataObject, cash: int, bonus: int, refund: str) -> None:
        """A top-up partly spent, then cashed out (partly or all), perhaps with a refund of
        the spend before or after it: under DEDUCT_SPENT_BONUS the bonus spent of that
        top-up is kept from the cash handed back."""
        prov = self.provenance(store="s1")
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.top_up(tx, now, cash, bonus, "s1", now),
            lambda a: a.top_up(prov, now, cash, bonus, "", None, 1),
        )
        total = self.model.cash + self.model.bonus
        spend = self.place_spend(data.draw(st.integers(1, total), label="amount"), "s2")
        assert spend is not None
        if refund == "before":
            self.refund_part(data, spend)
        spent_from = [
            i
            for i in self.top_ups()
            if self.model.value_lots[i].bonus_spent and self.model.value_lots[i].cash_left
        ]
        target = data.draw(st.sampled_from(spent_from or [tx]), label="target")
        self.reverse_by(
            target, amount=draw_up_to(data, self.model.value_lots[target].cash_left, "amount")
        )
        if refund == "after":
            self.refund_part(data, spend)

    def refund_part(self, data: st.DataObject, spend_id: str) -> None:
        spend = self.model.spends[spend_id]
        left = spend.amount - spend.refunded
        self.reverse_by(spend_id, amount=data.draw(st.integers(0, left), label="refund"))

    @precondition(lambda self: bool(self.model.spends or self.model.value_lots or self.model.earns))
    @rule(data=st.data(), n=st.integers(1, 50))
    def reverse_in_the_wrong_unit(self, data: st.DataObject, n: int) -> None:
        """Money named for a points transaction, points for a Spend or a TopUp."""
        target = data.draw(
            st.sampled_from(
                sorted({*self.model.spends, *self.model.value_lots, *self.model.earns})
            ),
            label="target",
        )
        if target in self.model.spends or target in self.top_ups():
            self.reverse_by(target, points=n)
        else:
            self.reverse_by(target, amount=n)

    @precondition(lambda self: bool(self.model.spends or self.model.value_lots))
    @rule(data=st.data(), refund=st.integers(0, 50))
    def refund_purchase_of_another_kind(self, data: st.DataObject, refund: int) -> None:
        """A purchase refund named for a redemption, a conversion, a Spend or a TopUp."""
        target = data.draw(
            st.sampled_from(
                sorted({*self.model.spends, *self.model.value_lots, *self.model.redemptions})
            ),
            label="target",
        )
        if target in self.model.spends or target in self.top_ups():
            self.reverse_by(target, amount=1, refund=refund)
        else:
            self.reverse_by(target, points=1, refund=refund)

    @rule(
        step=st.sampled_from(
            [timedelta(seconds=1), HOUR, 6 * HOUR, DAY - HOUR, DAY, 3 * DAY, 10 * DAY]
        )
    )
    def advance_time(self, step: timedelta) -> None:
        self.now += step

    @rule(ago=st.sampled_from([timedelta(0), HOUR, DAY, 3 * DAY]))
    def expire_lots(self, ago: timedelta) -> None:
        """The sweep or RunExpiry, at an instant no later than now; twice expires nothing."""
        as_of = self.now - ago
        prov = Provenance(transaction_id=f"sweep-{self.count}", request_id="", occurred_at=as_of)
        self.count += 1
        expected = self.model.expire(as_of)
        due = self.account.expire_lots(as_of, prov)
        assert due == expected
        self.record()
        assert self.account.expire_lots(as_of, prov) == {}
        assert not self.account.collect_events()

    @rule(data=st.data())
    def movements_tie(self, data: st.DataObject) -> None:
        """For random period bounds a < b: opening(a) + the period's movements = closing(b)
        for points, cash and bonus, where the movement of each contra account kind
        (points_issued, cash_spent, bonus_forfeited, ...) is minus its net in (a, b]: the
        identity finance's GetMovements relies on. Opening and closing are the member
        accounts' journal balances, and equal the account's balances at those positions."""
        positions = sorted(self.balances_at)
        i = data.draw(st.integers(0, len(positions) - 2), label="a")
        j = data.draw(st.integers(i + 1, len(positions) - 1), label="b")
        a, b = positions[i], positions[j]
        opening = dict.fromkeys(DIMENSIONS, 0)
        closing = dict.fromkeys(DIMENSIONS, 0)
        movements: dict[tuple[str, str], int] = {}
        for position, p in self.postings:
            if position > b:
                break
            dimension = dimension_of(p)
            if p.ledger_account in MEMBER_ACCOUNTS[dimension]:
                closing[dimension] += p.amount
                if position <= a:
                    opening[dimension] += p.amount
            elif position > a:
                key = (dimension, contra_kind(p.ledger_account))
                movements[key] = movements.get(key, 0) - p.amount
        assert opening == self.balances_at[a]
        assert closing == self.balances_at[b]
        for dimension in DIMENSIONS:
            moved = sum(n for (d, _), n in movements.items() if d == dimension)
            assert opening[dimension] + moved == closing[dimension], (dimension, movements)

    # -- invariants

    @invariant()
    def agrees_with_model(self) -> None:
        a, m = self.account, self.model
        assert (a.available, a.held, a.debt) == (m.available, m.held, m.debt)
        assert set(a.lots) == set(m.lots)
        for lot_id, lot in a.lots.items():
            expected = m.lots[lot_id]
            assert (lot.points, lot.remaining, lot.held, lot.expired, lot.expired_reversed) == (
                expected.points,
                expected.remaining,
                expected.held,
                expected.expired,
                expected.expired_reversed,
            ), lot_id
            assert (lot.earned_at, lot.expires_at) == (expected.earned_at, expected.expires_at)
        assert {h: (x.points, list(x.taken.items()), x.expires_at) for h, x in a.holds.items()} == {
            h: (x.points, x.taken, x.expires_at) for h, x in m.holds.items()
        }
        assert a.closed_hold_ids == m.closed_holds
        assert a.debt_of == m.debt_of
        assert a.debt == sum(a.debt_of.values())
        for lot_id, lot in a.lots.items():
            assert lot.in_lieu == m.lots[lot_id].stood_in, lot_id
        assert {
            k: (x.points, x.reversed, x.purchase_minor, x.refunded_minor)
            for k, x in a.earns.items()
        } == {k: (e.points, e.reversed, e.purchase, e.refunded) for k, e in m.earns.items()}
        conversions = {k: r for k, (_, r) in m.conversions.items()}
        assert {k: r.reversible for k, r in a.redemptions.items()} == {
            k: r.reversible for k, r in {**m.redemptions, **conversions}.items()
        }
        for at in (self.now, self.now + DAY, T0, self.now + 5 * DAY, self.now):
            assert a.qualifying_points(at) == m.qualifying_points(at)
        for tx in (*m.earns, *m.redemptions, *m.others):
            assert tx in a.earns or tx in a.redemptions or tx in a.other_transaction_ids
        assert "no-such-transaction" not in a.other_transaction_ids
        self.stored_value_agrees_with_model()

    def stored_value_agrees_with_model(self) -> None:
        a, m = self.account, self.model
        assert (a.cash, a.bonus) == (m.cash, m.bonus)
        assert a.conversions == {k: rate for k, (rate, _) in m.conversions.items()}
        assert set(a.value_lots) == set(m.value_lots)
        for lot_id, lot in a.value_lots.items():
            v = m.value_lots[lot_id]
            assert (lot.store_id, lot.occurred_at, lot.cash, lot.bonus, lot.converted) == (
                v.store,
                v.at,
                v.cash,
                v.bonus,
                v.converted,
            ), lot_id
            assert (lot.cash_remaining, lot.bonus_remaining) == (v.cash_left, v.bonus_left), lot_id
            assert (lot.bonus_spent, lot.bonus_deducted, lot.cash_out, lot.bonus_forfeited) == (
                v.bonus_spent,
                v.deducted,
                v.cash_taken,
                v.forfeited,
            ), lot_id
        assert set(a.spends) == set(m.spends)
        for spend_id, record in a.spends.items():
            x = m.spends[spend_id]
            assert (record.cash, record.bonus) == (x.cash, x.bonus), spend_id
            assert (record.cash_refunded, record.bonus_refunded) == (
                x.cash_refunded,
                x.bonus_refunded,
            ), spend_id
            assert list(record.cash_drawn.items()) == x.cash_drawn, spend_id
            assert list(record.bonus_drawn.items()) == x.bonus_drawn, spend_id
            assert still_out(record.cash_drawn, record.cash_restored) == dict(x.cash_out)
            assert still_out(record.bonus_drawn, record.bonus_restored) == dict(x.bonus_out)

    @invariant()
    def nothing_negative(self) -> None:
        a = self.account
        assert a.available >= 0
        assert a.held >= 0
        assert a.debt >= 0
        for lot in a.lots.values():
            assert lot.remaining >= 0
            assert lot.held >= 0
            assert lot.expired >= 0
            assert 0 <= lot.expired_reversed <= lot.expired
        for record in a.redemptions.values():
            assert all(0 <= record.reversed.get(i, 0) <= n for i, n in record.consumed.items())
        for earn in a.earns.values():
            assert 0 <= earn.reversed <= earn.points
        assert a.cash >= 0
        assert a.bonus >= 0
        for v in a.value_lots.values():
            assert v.cash_remaining >= 0
            assert v.bonus_remaining >= 0
            assert v.bonus_spent >= 0
            assert v.cash_out >= 0
            assert v.bonus_deducted >= 0
            assert v.bonus_forfeited >= 0

    @invariant()
    def stored_value_adds_up(self) -> None:
        """The card's balances are its lots'; each spend's refunds stay within it and add
        up to exactly its split once it is all refunded; a top-up never hands back, nor
        lets be spent, more cash than was paid for it."""
        a, t = self.account, self.totals
        assert a.cash == sum(v.cash_remaining for v in a.value_lots.values())
        assert a.bonus == sum(v.bonus_remaining for v in a.value_lots.values())
        assert a.cash == (
            t.topped_up_cash - t.spent_cash + t.refunded_cash + t.unwithheld - t.cash_taken
        )
        assert a.bonus == (
            t.topped_up_bonus
            + t.converted_value
            - t.spent_bonus
            + t.refunded_bonus
            - t.forfeited
            - t.conversion_value_reversed
        )
        assert set(t.spend_split) == set(a.spends)
        for spend_id, (cash, bonus) in t.spend_split.items():
            cash_back, bonus_back = t.spend_refunded[spend_id]
            assert 0 <= cash_back <= cash
            assert 0 <= bonus_back <= bonus
            if cash_back + bonus_back == cash + bonus:
                assert (cash_back, bonus_back) == (cash, bonus), spend_id
            record = a.spends[spend_id]
            for drawn, restored in (
                (record.cash_drawn, record.cash_restored),
                (record.bonus_drawn, record.bonus_restored),
            ):
                assert all(0 <= restored.get(i, 0) <= n for i, n in drawn.items())
                assert set(restored) <= set(drawn)
        for lot_id, paid in t.lot_paid.items():
            handed_back = t.lot_handed_back.get(lot_id, 0)
            spent = t.lot_cash_spent.get(lot_id, 0)
            withheld = t.lot_withheld.get(lot_id, 0)
            assert spent >= 0
            assert handed_back + spent <= paid, lot_id
            lot = a.value_lots[lot_id]
            assert lot.cash_remaining + spent + handed_back + withheld == paid, lot_id
            # Taken off the card by its cash-outs: handed back, withheld, and withheld then
            # put back (so a unit can be taken off twice).
            unwithheld = t.lot_unwithheld.get(lot_id, 0)
            assert lot.cash_out == handed_back + withheld + unwithheld, lot_id
            # Cash is kept for spent bonus only while that bonus is spent.
            assert 0 <= withheld <= t.lot_bonus_spent.get(lot_id, 0), lot_id
            assert lot.bonus_deducted == withheld <= lot.bonus_spent, lot_id

    @invariant()
    def refunds_add_up(self) -> None:
        """Each earn's refunds are what its reversals recorded, never more than its purchase;
        an earn reversed in full with every refund pro rata refunded exactly its purchase."""
        a, t = self.account, self.totals
        for earn_id, earn in a.earns.items():
            assert earn.refunded_minor == t.earn_refunded.get(earn_id, 0), earn_id
            assert 0 <= earn.refunded_minor <= earn.purchase_minor, earn_id
            if earn.reversed == earn.points and self.model.earns[earn_id].all_pro_rata:
                assert earn.refunded_minor == earn.purchase_minor, earn_id

    @invariant()
    def balances_add_up(self) -> None:
        a = self.account
        open_lots = a.open_lots()
        assert {lot.lot_id for lot in open_lots} == {
            i for i, lot in a.lots.items() if lot.remaining > 0
        }
        assert a.available == sum(lot.remaining for lot in open_lots)
        assert a.held == sum(h.points for h in a.holds.values())
        assert a.held == sum(lot.held for lot in a.lots.values())
        for hold in a.holds.values():
            assert hold.points == sum(hold.taken.values())

    @invariant()
    def points_identity(self) -> None:
        """What the events say came in and went out equals what the member has."""
        a, t = self.account, self.totals
        assert a.available + a.held == t.into_lots - t.out_of_lots
        assert a.debt == t.debt_added - t.debt_repaid
        assert a.available + a.held - a.debt == (
            t.earned
            + t.adjusted_in
            - t.adjusted_out
            - t.redeemed
            - t.converted
            - t.expired
            - t.earn_reversed_clawed
            + t.redemption_reversed
            + t.conversion_reversed
        )

    @invariant()
    def the_journal_agrees_with_the_account(self) -> None:
        """Double entry: the postings of all events sum to zero, and the member's ledger
        accounts hold exactly what the account says."""
        a = self.account
        for unit in (journal.POINTS, CURRENCY):
            assert sum(n for (_, u), n in self.journal.items() if u == unit) == 0, unit
        assert {u for _, u in self.journal} <= {journal.POINTS, CURRENCY}
        balance = self.journal.get
        assert balance((journal.member_points("member"), journal.POINTS), 0) == a.available
        assert balance((journal.member_points_held("member"), journal.POINTS), 0) == a.held
        assert balance((journal.member_points_debt("member"), journal.POINTS), 0) == -a.debt
        assert balance((journal.member_cash("member"), CURRENCY), 0) == a.cash
        assert balance((journal.member_bonus("member"), CURRENCY), 0) == a.bonus

    @invariant()
    def rebuilt_from_events(self) -> None:
        assert self.replayed is not None
        state = state_of(self.account)
        # The comparison covers the stored value too.
        assert {"cash", "bonus", "value_lots", "spends", "conversions"} <= set(state)
        assert state_of(self.replayed) == state

    @invariant()
    def restored_from_a_snapshot(self) -> None:
        # A snapshot through the JSON transcoder, then the account rebuilt from it alone.
        stored = self.mapper.to_stored_event(Snapshot.take(self.account))
        restored = project_aggregate(None, [self.mapper.to_domain_event(stored)])
        assert isinstance(restored, MemberAccount)
        assert state_of(restored) == state_of(self.account)

    def teardown(self) -> None:
        # And once more from nothing, from the stored events alone.
        events = [self.mapper.to_domain_event(s) for s in self.stored]
        rebuilt = project_aggregate(None, events)
        assert isinstance(rebuilt, MemberAccount)
        assert state_of(rebuilt) == state_of(self.account)


# How many examples, and whether seeds are fixed, comes from the hypothesis profile
# (tests/conftest.py: `ci` derandomized, `hunt` random and many).
AccountMachine.TestCase.settings = settings(
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAccountModel = AccountMachine.TestCase


def test_a_snapshot_of_stored_value_through_the_applications_transcoder() -> None:
    """Every record a snapshot of stored value carries has a transcoding (they once had
    none: an account with stored value could not be snapshotted)."""
    at = T0
    account = MemberAccount(
        program_id="prog",
        member_id="member",
        referrer_member_id="",
        provenance=Provenance("tx-1", "req-1", at),
    )
    account.earn(Provenance("tx-2", "req-2", at), at, 100, 0, None, None)
    account.top_up(Provenance("tx-3", "req-3", at, store_id="s1"), at, 100, 20, "", None, 1)
    account.spend(Provenance("tx-4", "req-4", at), at, 30, StoredValueSplit.PROPORTIONAL)
    account.convert_points(Provenance("tx-5", "req-5", at), at, 10, RATES[0])
    mapper = make_mapper()
    stored = mapper.to_stored_event(Snapshot.take(account))
    restored = project_aggregate(None, [mapper.to_domain_event(stored)])
    assert isinstance(restored, MemberAccount)
    assert state_of(restored) == state_of(account)


def still_out(drawn: dict[str, int], restored: dict[str, int]) -> dict[str, int]:
    return {i: n - restored.get(i, 0) for i, n in drawn.items() if n - restored.get(i, 0)}


def draw_up_to(data: st.DataObject, limit: int, label: str) -> int:
    """0 (all), some, exactly all, or one more than `limit`."""
    return data.draw(
        st.one_of(
            st.just(0),
            st.integers(1, max(1, limit)),
            st.sampled_from([max(1, limit), limit + 1]),
        ),
        label=label,
    )
