"""What a reversal works on and how much of it may be reversed.

A redemption (Redeem, or the captured part of a hold) is recorded as a RedemptionRecord: the
allocation it consumed and what of it reversals have put back, so a reversal undoes the
last-consumed points first and never more than was consumed. An Earn's reversible points are
on its EarnRecord (tier_window.py), with its purchase money and what reversals refunded of
it: `earn_refund` decides a reversal's refund. `reversal_amount` is the rule both share:
nothing left, all that remains (0), or at most what remains. The reversals themselves
(which lots give, debt when they cannot) are MemberAccount's `reverse` and its events
(account.py).
Snapshots carry redemption records (transcoding "redemption_record",
ledger/application/transcodings.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.domain import errors
from ledger.domain.insights import refund_pro_rata
from ledger.domain.lots import Allocation
from ledger.domain.tier_window import EarnRecord


@dataclass
class RedemptionRecord:
    consumed: Allocation
    reversed: Allocation = field(default_factory=dict)

    @property
    def points(self) -> int:
        return sum(self.consumed.values())

    @property
    def reversible(self) -> int:
        return self.points - sum(self.reversed.values())


@dataclass(frozen=True)
class Reversal:
    """What a Reverse did, whatever it reversed (the fields of other kinds stay 0)."""

    points_reversed: int = 0
    debt_added: int = 0  # an Earn's points that could not be taken back
    cash_minor: int = 0  # a Spend refund: cash put back on the card
    bonus_minor: int = 0  # ... and bonus
    refunded_cash_minor: int = 0  # a cash-out: what the cashier hands back
    forfeited_bonus_minor: int = 0  # ... and the bonus that lapses
    bonus_deducted_minor: int = 0  # ... spent bonus kept from the cash (DEDUCT_SPENT_BONUS)
    value_minor: int = 0  # a ConvertPoints reversal: the bonus taken back off the card
    refund_purchase_minor: int = 0  # an Earn reversal: the purchase money refunded


def reversal_amount(
    transaction_id: str, reversible: int, requested: int, unit: str = "points"
) -> int:
    if reversible <= 0:
        raise errors.NothingLeftToReverse(
            f"transaction {transaction_id} has been reversed in full",
            transaction_id=transaction_id,
        )
    if requested == 0:
        return reversible
    if requested > reversible:
        raise errors.ReversalExceedsOriginal(
            f"only {reversible} {unit} of transaction {transaction_id} remain reversible",
            reversible=str(reversible),
        )
    return requested


def earn_refund(transaction_id: str, earn: EarnRecord, points: int, requested: int | None) -> int:
    """The purchase money a reversal of `points` of this Earn refunds: the till's amount
    (`requested`, >= 0: checked with the request), at most what is not refunded yet; when
    the till does not say, the purchase pro rata to the points (refund_pro_rata, which
    refunds all that is left with the last points, so that parts add up to the purchase)."""
    if requested is None:
        return refund_pro_rata(
            earn.purchase_minor, earn.points, earn.reversed, points, earn.refunded_minor
        )
    refundable = earn.purchase_minor - earn.refunded_minor
    if requested > refundable:
        raise errors.RefundExceedsPurchase(
            f"only {refundable} minor units of earn {transaction_id}'s purchase are not"
            " refunded yet",
            refundable=str(refundable),
        )
    return requested
