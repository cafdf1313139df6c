"""The MemberAccount aggregate: one member of one program, the consistency boundary.

Public methods check the rules, then trigger past-tense events; the `@event` methods only
mutate state, so replaying the events rebuilds exactly this state. Every public command first
brings the account up to `now`: holds whose TTL ran out are released and lots past their
expiry are expired, in the same transaction as the command, so an expired lot is never
spendable even before the scheduled sweep has run.

Debt and the checks of every command are here. The records the account keeps live in
modules named for them: lots, allocations and spend order in lots.py, holds in holds.py,
earns and the tier window in tier_window.py, redemptions and how much a reversal may take in
reversals.py. The aggregate and its event classes stay in this module: the event store
records their topics (`ledger.domain.account:MemberAccount.PointsEarned`, ...).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from ledger.domain import errors
from ledger.domain.holds import ActiveHold
from ledger.domain.ids import account_id_key, derived_transaction_id
from ledger.domain.insights import refund_pro_rata
from ledger.domain.lots import Allocation, Lot, split_allocation
from ledger.domain.program import (
    DEFAULT_TIER_WINDOW_DAYS,
    CashOutPolicy,
    PointsConversion,
    StoredValueSplit,
)
from ledger.domain.provenance import Provenance
from ledger.domain.reversals import RedemptionRecord, Reversal, earn_refund, reversal_amount
from ledger.domain.stored_value import (
    SpendRecord,
    ValueLot,
    cash_out,
    draw,
    refund_split,
    restore,
    split_spend,
    withheld_to_return,
)
from ledger.domain.tier_window import EarnRecord, QualifyingWindow

INT64_MAX = 2**63 - 1
# EarnReversed.refund_purchase_minor of an event recorded before refunds were.
NOT_RECORDED = -1

# The provenance of events that a dry run triggers on a copy and throws away.
_DRY_RUN = Provenance(
    transaction_id="dry-run", request_id="", occurred_at=datetime.min.replace(tzinfo=UTC)
)


class MemberAccount(Aggregate):
    @staticmethod
    def create_id(program_id: str, member_id: str) -> UUID:
        return account_id_key(program_id, member_id)

    @event("MemberEnrolled")
    def __init__(
        self, program_id: str, member_id: str, referrer_member_id: str, provenance: Provenance
    ) -> None:
        self.program_id = program_id
        self.member_id = member_id
        self.enrolled_at = provenance.occurred_at
        self.available = 0
        self.held = 0
        self.debt = 0
        # What each reversed earn's lot still owes of the debt, oldest first. The points
        # that repay it stand in for that lot's (in_lieu), as if they had been clawed back.
        self.debt_of: dict[str, int] = {}
        self.lots: dict[str, Lot] = {}
        self.open_lot_ids: set[str] = set()
        self.holds: dict[str, ActiveHold] = {}
        self.closed_hold_ids: set[str] = set()
        self.earns: dict[str, EarnRecord] = {}
        self.qualifying = QualifyingWindow()
        self.redemptions: dict[str, RedemptionRecord] = {}
        # Transactions that exist but cannot be reversed (holds, adjustments, expiries...).
        self.other_transaction_ids: set[str] = {provenance.transaction_id}
        # No open lot expires before this (a lower bound; None: none expires): lets a command
        # skip the expiry scan when nothing can be due.
        self.earliest_expiry: datetime | None = None
        # Stored value (stored_value.py): the card's cash and bonus, its lots by the
        # transaction that opened them, and the spends a refund may name.
        self.cash = 0
        self.bonus = 0
        self.value_lots: dict[str, ValueLot] = {}
        self.spends: dict[str, SpendRecord] = {}
        # ConvertPoints transaction id -> its rate. Its points side is a redemption (in
        # self.redemptions), its value a bonus-only value lot under the same id.
        self.conversions: dict[str, PointsConversion] = {}

    # ------------------------------------------------------------------ reads

    def qualifying_points(self, now: datetime) -> int:
        """Qualifying points that count toward the tier at `now`, net of reversals: each earn
        for the tier window that was in force when it was recorded."""
        return self.qualifying.counting_at(now, self.earns)

    def open_lots(self) -> list[Lot]:
        return sorted((self.lots[i] for i in self.open_lot_ids), key=Lot.spend_order)

    def balances_at(self, now: datetime) -> tuple[int, int]:
        """(available, debt) once holds past their TTL are released and due lots expired,
        without changing this account: refusals are decided before any event.

        Computed by the code that applies those events, `bring_up_to`, run on a copy: a
        second calculation of where returning points land would drift from the real one.
        The copy is made only when something is due, which is rare."""
        if not self._anything_due(now):
            return self.available, self.debt
        trial = copy.deepcopy(self)
        trial.bring_up_to(now, _DRY_RUN)
        return trial.available, trial.debt

    def _anything_due(self, now: datetime) -> bool:
        return any(h.expires_at <= now for h in self.holds.values()) or (
            self.earliest_expiry is not None and self.earliest_expiry <= now
        )

    def _holds_due(self, now: datetime) -> list[ActiveHold]:
        due = [h for h in self.holds.values() if h.expires_at <= now]
        return sorted(due, key=lambda h: (h.expires_at, h.hold_id))

    # ------------------------------------------------------------------ commands
    #
    # Every command checks its rules first, against the state as of `now`, and only then
    # triggers events: a refused command leaves the aggregate exactly as it was.

    def bring_up_to(self, now: datetime, provenance: Provenance) -> None:
        """Release holds whose TTL has run out, then expire lots that are due at `now`."""
        for hold in self._holds_due(now):
            self._hold_expired(
                provenance=provenance.derived(
                    derived_transaction_id(hold.hold_id, "hold-expired"), "hold expired"
                ),
                hold_id=hold.hold_id,
                returned=dict(hold.taken),
                **self._coming_back(hold.taken),
            )
        if self.earliest_expiry is None or self.earliest_expiry > now:
            return  # nothing due: skip deriving the expiry's transaction id
        self.expire_lots(
            now,
            provenance.derived(
                # Unique per account event: a command may expire lots before and after itself.
                derived_transaction_id(provenance.transaction_id, f"expiry@{self.version + 1}"),
                "points expired",
            ),
        )

    def expire_lots(self, as_of: datetime, provenance: Provenance) -> Allocation:
        """Expire what remains of every lot due at `as_of`. Idempotent per instant."""
        if self.earliest_expiry is None or self.earliest_expiry > as_of:
            return {}
        due = {
            lot.lot_id: lot.remaining
            for lot in self.open_lots()
            if lot.remaining > 0 and lot.is_due(as_of)
        }
        if due:
            self._lots_expired(provenance=provenance, as_of=as_of, lots=due)
        self.earliest_expiry = min(
            (e for i in self.open_lot_ids if (e := self.lots[i].expires_at) is not None),
            default=None,
        )
        return due

    def earn(
        self,
        provenance: Provenance,
        now: datetime,
        points: int,
        purchase_minor: int,
        expires_at: datetime | None,
        qualifies_until: datetime | None,
    ) -> int:
        """Credit `points`; any debt is repaid first. Returns the points that repaid debt.
        `qualifies_until`: the last instant they count toward the tier (None: they do not)."""
        self._check_balance_limit(points)
        self.bring_up_to(now, provenance)
        debt_repaid = min(self.debt, points)
        self._points_earned(
            provenance=provenance,
            points=points,
            purchase_minor=purchase_minor,
            expires_at=expires_at,
            qualifying=qualifies_until is not None,
            debt_repaid=debt_repaid,
            qualifies_until=qualifies_until,
        )
        self.bring_up_to(now, provenance)
        return debt_repaid

    def redeem(self, provenance: Provenance, now: datetime, points: int) -> Allocation:
        self._check_can_spend(points, now)
        self.bring_up_to(now, provenance)
        consumed = self._allocate(points)
        self._points_redeemed(provenance=provenance, consumed=consumed)
        return consumed

    def hold(
        self, provenance: Provenance, now: datetime, points: int, ttl: timedelta
    ) -> ActiveHold:
        self._check_can_spend(points, now)
        self.bring_up_to(now, provenance)
        taken = self._allocate(points)
        self._points_held(provenance=provenance, taken=taken, expires_at=now + ttl)
        return self.holds[provenance.transaction_id]

    def capture_hold(
        self, provenance: Provenance, now: datetime, hold_id: str, points: int
    ) -> tuple[Allocation, Allocation]:
        """Redeem `points` (0 = all) of an active hold and release the rest.

        Returns (consumed, released)."""
        hold = self._active_hold(hold_id, now)
        points = points or hold.points
        if points > hold.points:
            raise errors.CaptureExceedsHold(
                f"capture of {points} points exceeds the {hold.points} points held",
                held=str(hold.points),
            )
        self.bring_up_to(now, provenance)
        consumed, released = split_allocation(hold.taken, points)
        self._hold_captured(
            provenance=provenance,
            hold_id=hold_id,
            consumed=consumed,
            released=released,
            **self._coming_back(released),
        )
        self.bring_up_to(now, provenance)
        return consumed, released

    def release_hold(self, provenance: Provenance, now: datetime, hold_id: str) -> Allocation:
        hold = self._active_hold(hold_id, now)
        self.bring_up_to(now, provenance)
        returned = dict(hold.taken)
        self._hold_released(
            provenance=provenance,
            hold_id=hold_id,
            returned=returned,
            **self._coming_back(returned),
        )
        self.bring_up_to(now, provenance)
        return returned

    def adjust(
        self, provenance: Provenance, now: datetime, points: int, expires_at: datetime | None
    ) -> None:
        """A manual correction: positive opens a lot (after repaying debt), negative takes
        points from lots and is refused beyond what is available."""
        if points > 0:
            self._check_balance_limit(points)
        elif -points > (available := self.balances_at(now)[0]):
            raise _insufficient(-points, available)
        self.bring_up_to(now, provenance)
        if points > 0:
            debt_repaid = min(self.debt, points)
            self._points_adjusted(
                provenance=provenance,
                points=points,
                debt_repaid=debt_repaid,
                expires_at=expires_at,
                taken={},
            )
        else:
            self._points_adjusted(
                provenance=provenance,
                points=points,
                debt_repaid=0,
                expires_at=None,
                taken=self._allocate(-points),
            )
        self.bring_up_to(now, provenance)

    def reverse(
        self,
        provenance: Provenance,
        now: datetime,
        transaction_id: str,
        points: int,
        amount_minor: int = 0,
        cash_out_policy: CashOutPolicy = CashOutPolicy.FORFEIT_REMAINING_BONUS,
        refund_purchase_minor: int | None = None,
    ) -> Reversal:
        """Reverse (part of) an earlier transaction: `points` of an Earn, a redemption or a
        ConvertPoints, `amount_minor` of a Spend (a refund) or a TopUp (a cash-out); 0 = all
        that remains reversible. `refund_purchase_minor`, an Earn's only: the purchase money
        refunded with it (None: pro rata to the points, see reversals.earn_refund)."""
        kind = self._reversible_kind(transaction_id)
        if refund_purchase_minor is not None and kind != "earn":
            raise errors.RefundNotApplicable(
                f"transaction {transaction_id} is a {kind}: only an Earn's reversal refunds"
                " purchase money",
                transaction_id=transaction_id,
            )
        if (amount_minor and kind in ("earn", "redemption", "conversion")) or (
            points and kind in ("spend", "top-up")
        ):
            unit = "amount_minor" if kind in ("spend", "top-up") else "points"
            raise errors.ReversalInWrongUnit(
                f"transaction {transaction_id} is a {kind}: reverse it by {unit}",
                transaction_id=transaction_id,
            )
        if kind == "earn":
            earn = self.earns[transaction_id]
            points = reversal_amount(transaction_id, earn.points - earn.reversed, points)
            refund = earn_refund(transaction_id, earn, points, refund_purchase_minor)
            self._check_debt_limit(points)  # at most all of it becomes debt
            self.bring_up_to(now, provenance)
            reversed_, debt_added = self._reverse_earn(provenance, transaction_id, points, refund)
            return Reversal(
                points_reversed=reversed_, debt_added=debt_added, refund_purchase_minor=refund
            )
        if kind == "conversion":
            return self._reverse_conversion(provenance, now, transaction_id, points)
        if kind == "redemption":
            redemption = self.redemptions[transaction_id]
            points = reversal_amount(transaction_id, redemption.reversible, points)
            self._check_balance_limit(points)
            self.bring_up_to(now, provenance)
            self._reverse_redemption(provenance, now, transaction_id, points)
            return Reversal(points_reversed=points)
        if kind == "spend":
            return self._refund_spend(provenance, now, transaction_id, amount_minor)
        return self._cash_out(provenance, now, transaction_id, amount_minor, cash_out_policy)

    def _reversible_kind(self, transaction_id: str) -> str:
        if transaction_id in self.earns:
            return "earn"
        if transaction_id in self.conversions:
            return "conversion"
        if transaction_id in self.redemptions:
            return "redemption"
        if transaction_id in self.spends:
            return "spend"
        if transaction_id in self.value_lots:
            return "top-up"
        if transaction_id in self.other_transaction_ids:
            raise errors.TransactionNotReversible(
                f"transaction {transaction_id} is not an Earn, a redemption, a Spend, a TopUp"
                " or a ConvertPoints",
                transaction_id=transaction_id,
            )
        raise errors.TransactionNotFound(
            f"transaction {transaction_id} is not a transaction of this account",
            transaction_id=transaction_id,
        )

    def _reverse_earn(
        self, provenance: Provenance, transaction_id: str, points: int, refund: int
    ) -> tuple[int, int]:
        owed = points
        taken: Allocation = {}
        from_expired = 0
        own = self.lots.get(transaction_id)
        if own is not None:
            take = min(own.remaining, owed)
            if take:
                taken[own.lot_id] = take
                owed -= take
            # Points of this lot that expired are gone already: nothing to claw back.
            from_expired = min(own.expired - own.expired_reversed, owed)
            owed -= from_expired
        for lot in self.open_lots():
            if owed == 0:
                break
            available = lot.remaining - taken.get(lot.lot_id, 0)
            take = min(available, owed)
            if take:
                taken[lot.lot_id] = taken.get(lot.lot_id, 0) + take
                owed -= take
        self._earn_reversed(
            provenance=provenance,
            points=points,
            taken=taken,
            from_expired=from_expired,
            debt_added=owed,
            refund_purchase_minor=refund,
        )
        return points, owed

    def _reverse_redemption(
        self, provenance: Provenance, now: datetime, transaction_id: str, points: int
    ) -> None:
        reversed_from, debt_repaid = self._undo_plan(transaction_id, points)
        self._redemption_reversed(
            provenance=provenance,
            points=points,
            reversed_from=reversed_from,
            restored=self._routed(reversed_from),
            debt_repaid=debt_repaid,
        )
        # Points restored to a lot that expired meanwhile expire at once.
        self.bring_up_to(now, provenance)

    def _undo_plan(self, transaction_id: str, points: int) -> tuple[Allocation, int]:
        """How `points` of a redemption come back: the first repay debt, the rest go to the
        lots they were consumed from, last-consumed first. Returns (per lot, debt repaid)."""
        record = self.redemptions[transaction_id]
        debt_repaid = min(self.debt, points)
        reversed_from: Allocation = {}
        left = points - debt_repaid
        for lot_id in reversed(record.consumed):
            if left == 0:
                break
            give = min(record.consumed[lot_id] - record.reversed.get(lot_id, 0), left)
            if give:
                reversed_from[lot_id] = give
                left -= give
        return reversed_from, debt_repaid

    # ------------------------------------------------------------------ stored value

    def top_up(
        self,
        provenance: Provenance,
        now: datetime,
        cash: int,
        bonus: int,
        payment_ref: str,
        bonus_step_min_cash: int | None,
        program_version: int,
    ) -> None:
        """Load `cash` paid and `bonus` granted as a new value lot. `bonus_step_min_cash`:
        the promotion step the bonus came from (None: the till named it)."""
        self._check_value_limit(cash + bonus)
        self.bring_up_to(now, provenance)
        self._topped_up(
            provenance=provenance,
            cash=cash,
            bonus=bonus,
            payment_ref=payment_ref,
            bonus_step_min_cash=bonus_step_min_cash,
            program_version=program_version,
        )

    def spend(
        self, provenance: Provenance, now: datetime, amount: int, policy: StoredValueSplit
    ) -> tuple[int, int]:
        """Pay `amount` from the card, split by `policy`. Returns (cash, bonus).

        Points debt does not block it (decision 15): stored value is the member's money."""
        if amount > self.cash + self.bonus:
            raise errors.InsufficientStoredValue(
                f"{amount} requested, {self.cash + self.bonus} of stored value available",
                requested=str(amount),
                available=str(self.cash + self.bonus),
            )
        self.bring_up_to(now, provenance)
        cash, bonus = split_spend(amount, self.cash, self.bonus, policy)
        lots = self._value_lots_in_order()
        cash_drawn = draw(lots, cash, cash=True)
        bonus_drawn = draw(lots, bonus, cash=False)
        self._spent(
            provenance=provenance,
            cash=cash,
            bonus=bonus,
            cash_drawn=cash_drawn,
            bonus_drawn=bonus_drawn,
            issued_at=self._issuers(cash_drawn, bonus_drawn),
        )
        return cash, bonus

    def convert_points(
        self, provenance: Provenance, now: datetime, points: int, rate: PointsConversion | None
    ) -> tuple[int, Allocation]:
        """Turn `points` into stored-value bonus at `rate`. Returns (value, lots consumed)."""
        if rate is None:
            raise errors.ConversionNotAvailable("the program sets no points conversion rate")
        if points % rate.points:
            raise errors.NotAMultipleOfRate(
                f"{points} points is not a multiple of the conversion rate's {rate.points}",
                rate_points=str(rate.points),
            )
        value = points // rate.points * rate.value_minor
        self._check_can_spend(points, now)
        self._check_value_limit(value)
        self.bring_up_to(now, provenance)
        consumed = self._allocate(points)
        self._points_converted(
            provenance=provenance,
            consumed=consumed,
            value=value,
            rate_points=rate.points,
            rate_value_minor=rate.value_minor,
        )
        return value, consumed

    def _refund_spend(
        self, provenance: Provenance, now: datetime, transaction_id: str, amount: int
    ) -> Reversal:
        record = self.spends[transaction_id]
        amount = reversal_amount(transaction_id, record.refundable, amount, unit="minor units")
        self._check_value_limit(amount)
        cash, bonus = refund_split(record, amount)
        self.bring_up_to(now, provenance)
        cash_restored = restore(record.cash_drawn, record.cash_restored, cash)
        bonus_restored = restore(record.bonus_drawn, record.bonus_restored, bonus)
        unwithheld = withheld_to_return(self.value_lots, bonus_restored)
        self._spend_refunded(
            provenance=provenance,
            cash=cash,
            bonus=bonus,
            cash_restored=cash_restored,
            bonus_restored=bonus_restored,
            cash_unwithheld=unwithheld,
            issued_at=self._issuers(cash_restored, bonus_restored),
        )
        return Reversal(cash_minor=cash + sum(unwithheld.values()), bonus_minor=bonus)

    def _cash_out(
        self,
        provenance: Provenance,
        now: datetime,
        transaction_id: str,
        amount: int,
        policy: CashOutPolicy,
    ) -> Reversal:
        lot = self.value_lots[transaction_id]
        if lot.cash_remaining == 0 and lot.bonus_remaining == 0:
            raise errors.NothingLeftToReverse(
                f"top-up {transaction_id} has nothing left on the card",
                transaction_id=transaction_id,
            )
        if amount > lot.cash_remaining:
            raise errors.ReversalExceedsOriginal(
                f"only {lot.cash_remaining} minor units of top-up {transaction_id}'s cash"
                " remain on the card",
                reversible=str(lot.cash_remaining),
            )
        out = cash_out(lot, amount or lot.cash_remaining, policy)
        self.bring_up_to(now, provenance)
        self._cashed_out(
            provenance=provenance,
            cash_taken=out.cash_taken,
            refunded_cash=out.refunded_cash,
            bonus_deducted=out.bonus_deducted,
            bonus_forfeited=out.bonus_forfeited,
            issued_at_store=lot.store_id,
            policy=policy.value,
        )
        return Reversal(
            refunded_cash_minor=out.refunded_cash,
            forfeited_bonus_minor=out.bonus_forfeited,
            bonus_deducted_minor=out.bonus_deducted,
        )

    def _reverse_conversion(
        self, provenance: Provenance, now: datetime, transaction_id: str, points: int
    ) -> Reversal:
        """Points back into their lots (as for a redemption), the bonus they became back
        off the card: only as much as is still on it, in whole steps of the rate."""
        rate = self.conversions[transaction_id]
        record = self.redemptions[transaction_id]
        lot = self.value_lots[transaction_id]
        if points % rate.points:
            raise errors.NotAMultipleOfRate(
                f"{points} points is not a multiple of the conversion's rate of {rate.points}",
                rate_points=str(rate.points),
            )
        on_card = lot.bonus_remaining // rate.value_minor * rate.points
        if record.reversible > 0 and on_card == 0:
            raise errors.NothingLeftToReverse(
                f"the value of conversion {transaction_id} has been spent",
                transaction_id=transaction_id,
            )
        points = reversal_amount(transaction_id, min(record.reversible, on_card), points)
        self._check_balance_limit(points)
        self.bring_up_to(now, provenance)
        reversed_from, debt_repaid = self._undo_plan(transaction_id, points)
        value = points // rate.points * rate.value_minor
        self._conversion_reversed(
            provenance=provenance,
            points=points,
            value=value,
            reversed_from=reversed_from,
            restored=self._routed(reversed_from),
            debt_repaid=debt_repaid,
            issued_at_store=lot.store_id,
        )
        self.bring_up_to(now, provenance)
        return Reversal(points_reversed=points, value_minor=value)

    def _value_lots_in_order(self) -> list[ValueLot]:
        return sorted(
            (v for v in self.value_lots.values() if v.cash_remaining or v.bonus_remaining),
            key=ValueLot.spend_order,
        )

    def _issuers(self, *allocations: Allocation) -> dict[str, str]:
        """Store of issue of each value lot named: the journal posts per issuing store."""
        return {lot_id: self.value_lots[lot_id].store_id for a in allocations for lot_id in a}

    def _coming_back(self, returned: Allocation) -> dict[str, Any]:
        """How held points coming back are booked: the first repay debt, the rest go to
        their lots (or, for a reversed earn's lot, back to the lots that stood in for it)."""
        debt_repaid = min(self.debt, sum(returned.values()))
        back = split_allocation(returned, debt_repaid)[1]
        return {"debt_repaid": debt_repaid, "credited": self._routed(back)}

    def _routed(self, allocation: Allocation) -> Allocation:
        """Where points coming back to these lots are credited: a lot whose earn reversal
        took other lots' points in its place gives those back first, then keeps the rest.
        (So the order of "reverse the earn" and "release / un-redeem" does not matter.)"""
        credited: Allocation = {}
        for lot_id, points in allocation.items():
            left = points
            for other, owed in self.lots[lot_id].in_lieu.items():
                give = min(owed, left)
                if give:
                    credited[other] = credited.get(other, 0) + give
                    left -= give
            if left:
                credited[lot_id] = credited.get(lot_id, 0) + left
        return credited

    # ------------------------------------------------------------------ checks

    def _check_can_spend(self, points: int, now: datetime) -> None:
        available, debt = self.balances_at(now)
        if debt > 0:
            raise errors.AccountInDebt(
                f"the account owes {debt} points; redemption is blocked until repaid",
                debt=str(debt),
            )
        if points > available:
            raise _insufficient(points, available)

    def _check_balance_limit(self, points: int) -> None:
        if self.available + self.held + points > INT64_MAX:
            raise errors.BalanceLimitExceeded(
                "the points balance would exceed the largest representable amount"
            )

    def _check_value_limit(self, amount: int) -> None:
        if self.cash + self.bonus + amount > INT64_MAX:
            raise errors.BalanceLimitExceeded(
                "the stored value would exceed the largest representable amount"
            )

    def _check_debt_limit(self, points: int) -> None:
        if self.debt + points > INT64_MAX:
            raise errors.BalanceLimitExceeded("the debt would exceed the largest amount")

    def _active_hold(self, hold_id: str, now: datetime) -> ActiveHold:
        hold = self.holds.get(hold_id)
        if hold is not None and hold.expires_at > now:
            return hold
        if hold is not None or hold_id in self.closed_hold_ids:
            raise errors.HoldNotActive(
                f"hold {hold_id} was already captured, released or expired", hold_id=hold_id
            )
        raise errors.HoldNotFound(f"hold {hold_id} does not exist", hold_id=hold_id)

    def _allocate(self, points: int) -> Allocation:
        """Take `points` from open lots, earliest expiry first (caller checked enough)."""
        allocation: Allocation = {}
        for lot in self.open_lots():
            if points == 0:
                break
            take = min(lot.remaining, points)
            if take:
                allocation[lot.lot_id] = take
                points -= take
        assert points == 0, "allocation beyond available points"
        return allocation

    # ------------------------------------------------------------------ events

    class PointsEarned(Aggregate.Event):
        provenance: Provenance
        points: int
        purchase_minor: int
        expires_at: datetime | None
        qualifying: bool
        debt_repaid: int
        qualifies_until: datetime | None

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Earns recorded before the window in force was recorded with them count for
            the default window of 365 days."""
            occurred_at: datetime = state["provenance"].occurred_at
            state["qualifies_until"] = (
                occurred_at + timedelta(days=DEFAULT_TIER_WINDOW_DAYS)
                if state["qualifying"]
                else None
            )

    @event(PointsEarned)
    def _points_earned(
        self,
        provenance: Provenance,
        points: int,
        purchase_minor: int,
        expires_at: datetime | None,
        qualifying: bool,
        debt_repaid: int,
        qualifies_until: datetime | None,
    ) -> None:
        lot_id = provenance.transaction_id
        self.debt -= debt_repaid
        self.earns[lot_id] = EarnRecord(
            points,
            provenance.occurred_at,
            qualifying,
            qualifies_until=qualifies_until,
            purchase_minor=purchase_minor,
        )
        if qualifies_until is not None:
            self.qualifying.earned(lot_id, qualifies_until, points)
        self._open_lot(lot_id, points - debt_repaid, provenance.occurred_at, expires_at)
        self._repaid_by({lot_id: debt_repaid})

    @event("PointsRedeemed")
    def _points_redeemed(self, provenance: Provenance, consumed: Allocation) -> None:
        self._take(consumed)
        self.redemptions[provenance.transaction_id] = RedemptionRecord(dict(consumed))

    @event("PointsHeld")
    def _points_held(self, provenance: Provenance, taken: Allocation, expires_at: datetime) -> None:
        self._take(taken)
        points = sum(taken.values())
        for lot_id, pts in taken.items():
            self.lots[lot_id].held += pts
        self.held += points
        hold_id = provenance.transaction_id
        self.holds[hold_id] = ActiveHold(
            hold_id, points, dict(taken), expires_at, provenance.order_ref
        )
        self.other_transaction_ids.add(hold_id)

    @event("HoldCaptured")
    def _hold_captured(
        self,
        provenance: Provenance,
        hold_id: str,
        consumed: Allocation,
        released: Allocation,
        debt_repaid: int,
        credited: Allocation,
    ) -> None:
        self._close_hold(hold_id)
        for lot_id, pts in consumed.items():
            self.lots[lot_id].held -= pts
            self.held -= pts
        self._return_from_hold(released, debt_repaid, credited)
        self.redemptions[provenance.transaction_id] = RedemptionRecord(dict(consumed))

    @event("HoldReleased")
    def _hold_released(
        self,
        provenance: Provenance,
        hold_id: str,
        returned: Allocation,
        debt_repaid: int,
        credited: Allocation,
    ) -> None:
        self._close_hold(hold_id)
        self._return_from_hold(returned, debt_repaid, credited)
        self.other_transaction_ids.add(provenance.transaction_id)

    @event("HoldExpired")
    def _hold_expired(
        self,
        provenance: Provenance,
        hold_id: str,
        returned: Allocation,
        debt_repaid: int,
        credited: Allocation,
    ) -> None:
        self._close_hold(hold_id)
        self._return_from_hold(returned, debt_repaid, credited)
        self.other_transaction_ids.add(provenance.transaction_id)

    @event("PointsAdjusted")
    def _points_adjusted(
        self,
        provenance: Provenance,
        points: int,
        debt_repaid: int,
        expires_at: datetime | None,
        taken: Allocation,
    ) -> None:
        self.other_transaction_ids.add(provenance.transaction_id)
        if points > 0:
            self.debt -= debt_repaid
            self._open_lot(
                provenance.transaction_id,
                points - debt_repaid,
                provenance.occurred_at,
                expires_at,
            )
            self._repaid_by({provenance.transaction_id: debt_repaid})
        else:
            self._take(taken)

    class EarnReversed(Aggregate.Event):
        provenance: Provenance
        points: int
        taken: Allocation
        from_expired: int
        debt_added: int
        # The purchase money refunded with it; -1: recorded before refunds were (readers
        # take the pro rata, refund_pro_rata in ledger/domain/insights.py, as replay does).
        refund_purchase_minor: int

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["refund_purchase_minor"] = NOT_RECORDED

    @event(EarnReversed)
    def _earn_reversed(
        self,
        provenance: Provenance,
        points: int,
        taken: Allocation,
        from_expired: int,
        debt_added: int,
        refund_purchase_minor: int,
    ) -> None:
        reversed_id = provenance.reverses_transaction_id
        earn = self.earns[reversed_id]
        if refund_purchase_minor == NOT_RECORDED:
            refund_purchase_minor = refund_pro_rata(
                earn.purchase_minor, earn.points, earn.reversed, points, earn.refunded_minor
            )
        earn.refunded_minor += refund_purchase_minor
        earn.reversed += points
        if earn.qualifies_until is not None:
            self.qualifying.reversed(earn.qualifies_until, points)
        self._take(taken)
        own = self.lots[reversed_id]
        for lot_id, pts in taken.items():
            if lot_id != reversed_id:
                own.in_lieu[lot_id] = own.in_lieu.get(lot_id, 0) + pts
        if from_expired:
            self.lots[reversed_id].expired_reversed += from_expired
        self.debt += debt_added
        if debt_added:
            self.debt_of[reversed_id] = self.debt_of.get(reversed_id, 0) + debt_added
        self.other_transaction_ids.add(provenance.transaction_id)

    @event("RedemptionReversed")
    def _redemption_reversed(
        self,
        provenance: Provenance,
        points: int,
        reversed_from: Allocation,
        restored: Allocation,
        debt_repaid: int,
    ) -> None:
        """`reversed_from`: per consumed lot, what this reversal undoes; `restored`: where
        those points are credited (see _routed)."""
        self._undo_redemption(
            provenance.reverses_transaction_id, reversed_from, restored, debt_repaid
        )
        self.other_transaction_ids.add(provenance.transaction_id)

    def _undo_redemption(
        self, redemption_id: str, reversed_from: Allocation, restored: Allocation, debt_repaid: int
    ) -> None:
        record = self.redemptions[redemption_id]
        for lot_id, pts in reversed_from.items():
            record.reversed[lot_id] = record.reversed.get(lot_id, 0) + pts
        # Points that repaid debt are counted against the last-consumed lots too, so the
        # total reversed never exceeds the original.
        left = debt_repaid
        repaying: Allocation = {}
        for lot_id in reversed(record.consumed):
            if left == 0:
                break
            give = min(record.consumed[lot_id] - record.reversed.get(lot_id, 0), left)
            record.reversed[lot_id] = record.reversed.get(lot_id, 0) + give
            repaying[lot_id] = give
            left -= give
        self.debt -= debt_repaid
        self._settle_in_lieu(reversed_from)
        self._credit(restored)
        self._repaid_by(repaying)

    @event("StoredValueToppedUp")
    def _topped_up(
        self,
        provenance: Provenance,
        cash: int,
        bonus: int,
        payment_ref: str,
        bonus_step_min_cash: int | None,
        program_version: int,
    ) -> None:
        self._open_value_lot(provenance, cash, bonus, payment_ref, converted=False)

    @event("StoredValueSpent")
    def _spent(
        self,
        provenance: Provenance,
        cash: int,
        bonus: int,
        cash_drawn: Allocation,
        bonus_drawn: Allocation,
        issued_at: dict[str, str],
    ) -> None:
        for lot_id, amount in cash_drawn.items():
            self.value_lots[lot_id].cash_remaining -= amount
        for lot_id, amount in bonus_drawn.items():
            lot = self.value_lots[lot_id]
            lot.bonus_remaining -= amount
            lot.bonus_spent += amount
        self.cash -= cash
        self.bonus -= bonus
        self.spends[provenance.transaction_id] = SpendRecord(
            cash, bonus, dict(cash_drawn), dict(bonus_drawn)
        )

    @event("SpendRefunded")
    def _spend_refunded(
        self,
        provenance: Provenance,
        cash: int,
        bonus: int,
        cash_restored: Allocation,
        bonus_restored: Allocation,
        cash_unwithheld: Allocation,
        issued_at: dict[str, str],
    ) -> None:
        """`cash_unwithheld`: cash a DEDUCT_SPENT_BONUS cash-out kept for spent bonus that
        this refund brings back, back on the card (decision 15)."""
        record = self.spends[provenance.reverses_transaction_id]
        record.cash_refunded += cash
        record.bonus_refunded += bonus
        for lot_id, amount in cash_restored.items():
            self.value_lots[lot_id].cash_remaining += amount
            record.cash_restored[lot_id] = record.cash_restored.get(lot_id, 0) + amount
        for lot_id, amount in bonus_restored.items():
            lot = self.value_lots[lot_id]
            lot.bonus_remaining += amount
            lot.bonus_spent -= amount
            record.bonus_restored[lot_id] = record.bonus_restored.get(lot_id, 0) + amount
        for lot_id, amount in cash_unwithheld.items():
            lot = self.value_lots[lot_id]
            lot.bonus_deducted -= amount
            lot.cash_remaining += amount
        self.cash += cash + sum(cash_unwithheld.values())
        self.bonus += bonus
        self.other_transaction_ids.add(provenance.transaction_id)

    @event("TopUpCashedOut")
    def _cashed_out(
        self,
        provenance: Provenance,
        cash_taken: int,
        refunded_cash: int,
        bonus_deducted: int,
        bonus_forfeited: int,
        issued_at_store: str,
        policy: str,
    ) -> None:
        lot = self.value_lots[provenance.reverses_transaction_id]
        lot.cash_remaining -= cash_taken
        lot.cash_out += cash_taken
        lot.bonus_deducted += bonus_deducted
        lot.bonus_remaining -= bonus_forfeited
        lot.bonus_forfeited += bonus_forfeited
        self.cash -= cash_taken
        self.bonus -= bonus_forfeited
        self.other_transaction_ids.add(provenance.transaction_id)

    @event("PointsConverted")
    def _points_converted(
        self,
        provenance: Provenance,
        consumed: Allocation,
        value: int,
        rate_points: int,
        rate_value_minor: int,
    ) -> None:
        self._take(consumed)
        self.redemptions[provenance.transaction_id] = RedemptionRecord(dict(consumed))
        self.conversions[provenance.transaction_id] = PointsConversion(
            rate_points, rate_value_minor
        )
        self._open_value_lot(provenance, 0, value, "", converted=True)

    @event("ConversionReversed")
    def _conversion_reversed(
        self,
        provenance: Provenance,
        points: int,
        value: int,
        reversed_from: Allocation,
        restored: Allocation,
        debt_repaid: int,
        issued_at_store: str,
    ) -> None:
        conversion_id = provenance.reverses_transaction_id
        self._undo_redemption(conversion_id, reversed_from, restored, debt_repaid)
        self.value_lots[conversion_id].bonus_remaining -= value
        self.bonus -= value
        self.other_transaction_ids.add(provenance.transaction_id)

    @event("LotsExpired")
    def _lots_expired(self, provenance: Provenance, as_of: datetime, lots: Allocation) -> None:
        self._take(lots)
        for lot_id, pts in lots.items():
            self.lots[lot_id].expired += pts
        self.other_transaction_ids.add(provenance.transaction_id)

    # ------------------------------------------------------------------ state helpers

    def _open_lot(
        self, lot_id: str, points: int, earned_at: datetime, expires_at: datetime | None
    ) -> None:
        self.lots[lot_id] = Lot(lot_id, points, points, earned_at, expires_at)
        if points > 0:
            self.open_lot_ids.add(lot_id)
            self._may_expire(expires_at)
        self.available += points

    def _take(self, allocation: Allocation) -> None:
        for lot_id, pts in allocation.items():
            lot = self.lots[lot_id]
            lot.remaining -= pts
            if lot.remaining == 0:
                self.open_lot_ids.discard(lot_id)
            self.available -= pts

    def _return_from_hold(
        self, returned: Allocation, debt_repaid: int, credited: Allocation
    ) -> None:
        """Held points come back (see _coming_back for where they are credited)."""
        for lot_id, pts in returned.items():
            self.lots[lot_id].held -= pts
            self.held -= pts
        self.debt -= debt_repaid
        repaying, back = split_allocation(returned, debt_repaid)
        self._settle_in_lieu(back)
        self._credit(credited)
        self._repaid_by(repaying)

    def _repaid_by(self, repaying: Allocation) -> None:
        """These lots' points repaid debt: they stand in for the reversed earns' lots whose
        shortfall the debt was, oldest debt first, so points coming back to such a lot
        later go to the lot that repaid in its place (decision 2: the order of a reversal
        and a repayment does not change which lot's expiry the points keep)."""
        for lot_id, points in repaying.items():
            left = points
            for owing in list(self.debt_of):
                if left == 0:
                    break
                give = min(self.debt_of[owing], left)
                left -= give
                self.debt_of[owing] -= give
                if self.debt_of[owing] == 0:
                    del self.debt_of[owing]
                if owing != lot_id:
                    in_lieu = self.lots[owing].in_lieu
                    in_lieu[lot_id] = in_lieu.get(lot_id, 0) + give

    def _settle_in_lieu(self, allocation: Allocation) -> None:
        """Points coming back to a reversed earn's lot repay the lots that stood in for it."""
        for lot_id, points in allocation.items():
            in_lieu, left = self.lots[lot_id].in_lieu, points
            for other in list(in_lieu):
                give = min(in_lieu[other], left)
                left -= give
                in_lieu[other] -= give
                if in_lieu[other] == 0:
                    del in_lieu[other]

    def _credit(self, allocation: Allocation) -> None:
        """Put points (back) into lots."""
        for lot_id, pts in allocation.items():
            lot = self.lots[lot_id]
            lot.remaining += pts
            if lot.remaining > 0:
                self.open_lot_ids.add(lot_id)
                self._may_expire(lot.expires_at)
            self.available += pts

    def _may_expire(self, expires_at: datetime | None) -> None:
        if expires_at is not None and (
            self.earliest_expiry is None or expires_at < self.earliest_expiry
        ):
            self.earliest_expiry = expires_at

    def _open_value_lot(
        self, provenance: Provenance, cash: int, bonus: int, payment_ref: str, converted: bool
    ) -> None:
        lot_id = provenance.transaction_id
        self.value_lots[lot_id] = ValueLot(
            lot_id=lot_id,
            store_id=provenance.store_id,
            occurred_at=provenance.occurred_at,
            seq=len(self.value_lots),
            cash=cash,
            bonus=bonus,
            cash_remaining=cash,
            bonus_remaining=bonus,
            payment_ref=payment_ref,
            converted=converted,
        )
        self.cash += cash
        self.bonus += bonus

    def _close_hold(self, hold_id: str) -> None:
        del self.holds[hold_id]
        self.closed_hold_ids.add(hold_id)


def _insufficient(points: int, available: int) -> errors.InsufficientPoints:
    return errors.InsufficientPoints(
        f"{points} points requested, {available} available",
        requested=str(points),
        available=str(available),
    )
