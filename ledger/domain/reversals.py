"""What a reversal works on and how much of it may be reversed.

A redemption (Redeem, or the captured part of a hold) is recorded as a RedemptionRecord: the
allocation it consumed and what of it reversals have put back, so a reversal undoes the
last-consumed points first and never more than was consumed. An Earn's reversible points are
on its EarnRecord (tier_window.py). `reversal_amount` is the rule both share: nothing left,
all that remains (0), or at most what remains. The reversals themselves (which lots give,
debt when they cannot) are MemberAccount's `reverse` and its events (account.py).
Snapshots carry redemption records (transcoding "redemption_record",
ledger/application/transcodings.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.domain import errors
from ledger.domain.lots import Allocation


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
