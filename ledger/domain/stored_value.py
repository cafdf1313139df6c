"""Stored value: the prepaid money on a member's card, kept as lots, and the arithmetic of
spending, refunding and cashing it out.

Each TopUp opens a value lot {cash paid, bonus granted, store of issue, payment_ref}; a
ConvertPoints opens one holding bonus only (it was never paid, so no cash-out pays it
back). Spending takes its cash part and its bonus part from lots oldest first, each on its
own, so every minor unit spent knows the store that sold it (settlement) and the top-up it
came from (refunds). A refund of a spend puts back exactly its split, pro rata and
cumulatively, into the lots it came from, last drawn first.

These are pure functions and plain records; MemberAccount (account.py) checks the rules,
calls them, and records the outcome on its events. All amounts are integer minor units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ledger.domain.lots import Allocation
from ledger.domain.program import CashOutPolicy, StoredValueSplit


@dataclass
class ValueLot:
    lot_id: str  # the TopUp's (or ConvertPoints') transaction id
    store_id: str  # store of issue: it received the cash (or converted the points)
    occurred_at: datetime
    seq: int  # the order it was opened in, among the account's lots
    cash: int  # paid
    bonus: int  # granted
    cash_remaining: int
    bonus_remaining: int
    payment_ref: str = ""
    converted: bool = False  # opened by ConvertPoints: bonus only, never cashed out
    # Bonus of this lot spent and not refunded: what DEDUCT_SPENT_BONUS takes from cash paid back.
    bonus_spent: int = 0
    bonus_deducted: int = 0  # spent bonus already deducted from cash paid back
    cash_out: int = 0  # cash taken off the card by cash-outs (paid back + deducted)
    bonus_forfeited: int = 0

    def spend_order(self) -> tuple[datetime, int]:
        return (self.occurred_at, self.seq)


@dataclass
class SpendRecord:
    """A Spend and what refunds have put back of it."""

    cash: int
    bonus: int
    cash_drawn: Allocation  # lot id -> cash, in the order drawn
    bonus_drawn: Allocation
    cash_refunded: int = 0
    bonus_refunded: int = 0
    cash_restored: Allocation = field(default_factory=dict)  # per lot, by refunds so far
    bonus_restored: Allocation = field(default_factory=dict)

    @property
    def amount(self) -> int:
        return self.cash + self.bonus

    @property
    def refundable(self) -> int:
        return self.amount - self.cash_refunded - self.bonus_refunded


@dataclass(frozen=True)
class CashOut:
    """What a cash-out of (part of) one top-up does, decided before its event."""

    cash_taken: int  # off the card
    refunded_cash: int  # handed back: cash_taken - bonus_deducted
    bonus_deducted: int
    bonus_forfeited: int


def split_spend(amount: int, cash: int, bonus: int, policy: StoredValueSplit) -> tuple[int, int]:
    """(cash part, bonus part) of spending `amount` from balances `cash` and `bonus`
    (the caller checked amount <= cash + bonus). PROPORTIONAL rounds the cash part down,
    so a remainder unit goes to bonus: cash = floor(amount * cash / (cash + bonus)); both
    parts are then within their balances and sum to the amount."""
    if policy is StoredValueSplit.CASH_FIRST:
        from_cash = min(amount, cash)
    elif policy is StoredValueSplit.BONUS_FIRST:
        from_cash = amount - min(amount, bonus)
    else:
        from_cash = amount * cash // (cash + bonus)
    return from_cash, amount - from_cash


def draw(lots: list[ValueLot], amount: int, *, cash: bool) -> Allocation:
    """Take `amount` of cash (or bonus) from `lots`, already in spend order."""
    drawn: Allocation = {}
    for lot in lots:
        if amount == 0:
            break
        take = min(lot.cash_remaining if cash else lot.bonus_remaining, amount)
        if take:
            drawn[lot.lot_id] = take
            amount -= take
    assert amount == 0, "drawing beyond the stored value"
    return drawn


def refund_split(record: SpendRecord, amount: int) -> tuple[int, int]:
    """(cash, bonus) that a refund of `amount` of this spend puts back: pro rata to the
    spend's split, computed on the cumulative refunded total so that partial refunds add
    up to exactly the split once all of it is refunded."""
    refunded = record.cash_refunded + record.bonus_refunded
    cash_after = record.cash * (refunded + amount) // record.amount
    cash = cash_after - record.cash_refunded
    return cash, amount - cash


def restore(drawn: Allocation, restored: Allocation, amount: int) -> Allocation:
    """Where `amount` coming back goes: into the lots it was drawn from, last drawn first,
    never more into a lot than was drawn from it less what came back already."""
    back: Allocation = {}
    for lot_id in reversed(drawn):
        if amount == 0:
            break
        give = min(drawn[lot_id] - restored.get(lot_id, 0), amount)
        if give:
            back[lot_id] = give
            amount -= give
    assert amount == 0, "restoring more than was drawn"
    return back


def cash_out(lot: ValueLot, cash_taken: int, policy: CashOutPolicy) -> CashOut:
    """Cash-out of `cash_taken` (<= the lot's remaining cash) of one top-up. The bonus that
    lapses is the lot's remaining bonus pro rata to the cash taken (all of it when all the
    cash goes); under DEDUCT_SPENT_BONUS the bonus already spent from this top-up, not
    deducted before, comes off the cash handed back."""
    deducted = 0
    if policy is CashOutPolicy.DEDUCT_SPENT_BONUS:
        deducted = min(cash_taken, max(0, lot.bonus_spent - lot.bonus_deducted))
    if cash_taken == lot.cash_remaining:
        forfeited = lot.bonus_remaining
    else:
        forfeited = lot.bonus_remaining * cash_taken // lot.cash_remaining
    return CashOut(cash_taken, cash_taken - deducted, deducted, forfeited)


def withheld_to_return(lots: dict[str, ValueLot], bonus_restored: Allocation) -> Allocation:
    """Per lot, the cash a DEDUCT_SPENT_BONUS cash-out kept for spent bonus that a refund now
    brings back: once that bonus is on the card again, keeping its price too would take it
    twice. So a lot never has more deducted than it has bonus spent."""
    back: Allocation = {}
    for lot_id, amount in bonus_restored.items():
        lot = lots[lot_id]
        excess = lot.bonus_deducted - (lot.bonus_spent - amount)
        if excess > 0:
            back[lot_id] = excess
    return back
