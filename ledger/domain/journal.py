"""The double-entry journal: every event as balanced postings between ledger accounts.

A pure function of one event (no database): the journal projection stores what it returns,
and tests check it against the aggregate. The chart of accounts and one worked example per
transaction kind are in docs/accounting.md.

Amounts are signed as the design states them (`Earn 100 = +100 member:points, -100
points_issued`): a member's account goes up by a positive amount. The postings of one event
sum to zero in every unit, so the journal does at every position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.domain import events

POINTS = "points"


@dataclass(frozen=True)
class Posting:
    ledger_account: str
    unit: str
    amount: int


def member_points(member_id: str) -> str:
    """Points the member can spend: what the programme owes them."""
    return f"member:{member_id}:points"


def member_points_held(member_id: str) -> str:
    """Points set aside for a checkout under way: still the member's."""
    return f"member:{member_id}:points_held"


def member_points_debt(member_id: str) -> str:
    """Points the member owes (a refunded purchase whose points were spent), negative."""
    return f"member:{member_id}:points_debt"


def points_issued(store_id: str) -> str:
    return f"store:{store_id or '-'}:points_issued"


def points_redeemed(store_id: str) -> str:
    return f"store:{store_id or '-'}:points_redeemed"


def points_converted(store_id: str) -> str:
    """Points turned into stored-value bonus at this store (ConvertPoints)."""
    return f"store:{store_id or '-'}:points_converted"


POINTS_EXPIRED = "program:points_expired"
POINTS_ADJUSTED = "program:points_adjusted"

# Stored value, in the programme's currency (minor units). The member's two balances are
# what the programme owes them; every contra account is per store of issue (the store that
# sold the top-up, or converted the points), so the stored-value liability of a store is
# minus the sum of its accounts, and a posting's store_id (where the transaction happened)
# against another store's account is a settlement between the two.


def member_cash(member_id: str) -> str:
    """Stored value the member paid for and has not spent: refundable on cash-out."""
    return f"member:{member_id}:cash"


def member_bonus(member_id: str) -> str:
    """Stored value granted (promotion, converted points): spendable, never paid back."""
    return f"member:{member_id}:bonus"


def store_account(issuing_store: str, name: str) -> str:
    return f"store:{issuing_store or '-'}:{name}"


CASH_RECEIVED = "cash_received"  # top-ups sold (the cash the store took)
CASH_SPENT = "cash_spent"  # cash of its top-ups spent (net of refunds), at any store
CASH_PAID_OUT = "cash_paid_out"  # cash-outs handed back
CASH_WITHHELD = "cash_withheld"  # spent bonus deducted from a cash-out (DEDUCT_SPENT_BONUS)
BONUS_GRANTED = "bonus_granted"  # top-up promotions
BONUS_CONVERTED = "bonus_converted"  # value of converted points
BONUS_SPENT = "bonus_spent"
BONUS_FORFEITED = "bonus_forfeited"  # lapsed on cash-out
CASH_ACCOUNTS = (CASH_RECEIVED, CASH_SPENT, CASH_PAID_OUT, CASH_WITHHELD)
BONUS_ACCOUNTS = (BONUS_GRANTED, BONUS_CONVERTED, BONUS_SPENT, BONUS_FORFEITED)


class NoPostingRule(TypeError):
    """An event type the journal has no rule for: refused, never skipped (a skipped event
    would be a journal that silently disagrees with the log)."""


def postings(event: Any, member_id: str, currency: str) -> list[Posting]:
    """The balanced postings of one event (none for an enrolment or a program's events).
    `member_id`: the account's member (the event itself names only the account);
    `currency`: the programme's, the unit of its stored value."""
    kind = type(event)
    if kind in NO_POSTINGS:
        return []
    if kind in _RULES:
        entries = _RULES[kind](event, member_id, event.provenance.store_id)
        return [Posting(account, POINTS, amount) for account, amount in entries if amount]
    if kind in _MONEY_RULES:
        points, money = _MONEY_RULES[kind](event, member_id, event.provenance.store_id)
        return [Posting(a, POINTS, n) for a, n in points if n] + [
            Posting(a, currency, n) for a, n in money if n
        ]
    raise NoPostingRule(f"the journal has no rule for {kind.__qualname__}")


def _sum(allocation: dict[str, int]) -> int:
    return sum(allocation.values())


def _earned(e: Any, m: str, store: str) -> list[tuple[str, int]]:
    return [
        (member_points(m), e.points - e.debt_repaid),
        (member_points_debt(m), e.debt_repaid),
        (points_issued(store), -e.points),
    ]


def _redeemed(e: Any, m: str, store: str) -> list[tuple[str, int]]:
    spent = _sum(e.consumed)
    return [(member_points(m), -spent), (points_redeemed(store), spent)]


def _held(e: Any, m: str, store: str) -> list[tuple[str, int]]:
    held = _sum(e.taken)
    return [(member_points(m), -held), (member_points_held(m), held)]


def _captured(e: Any, m: str, store: str) -> list[tuple[str, int]]:
    spent, back = _sum(e.consumed), _sum(e.released)
    return [
        (member_points_held(m), -(spent + back)),
        (points_redeemed(store), spent),
        (member_points(m), back - e.debt_repaid),
        (member_points_debt(m), e.debt_repaid),
    ]


def _returned(e: Any, m: str, store: str) -> list[tuple[str, int]]:
    back = _sum(e.returned)
    return [
        (member_points_held(m), -back),
        (member_points(m), back - e.debt_repaid),
        (member_points_debt(m), e.debt_repaid),
    ]


def _adjusted(e: Any, m: str, store: str) -> list[tuple[str, int]]:
    if e.points > 0:
        return [
            (member_points(m), e.points - e.debt_repaid),
            (member_points_debt(m), e.debt_repaid),
            (POINTS_ADJUSTED, -e.points),
        ]
    return [(member_points(m), e.points), (POINTS_ADJUSTED, -e.points)]


def _earn_reversed(e: Any, m: str, store: str) -> list[tuple[str, int]]:
    # The points it takes back: from lots, from what had expired already (that expiry is
    # undone in the books: the points should never have been issued), and as debt.
    return [
        (member_points(m), -_sum(e.taken)),
        (POINTS_EXPIRED, -e.from_expired),
        (member_points_debt(m), -e.debt_added),
        (points_issued(store), e.points),
    ]


def _redemption_reversed(e: Any, m: str, store: str) -> list[tuple[str, int]]:
    return [
        (member_points(m), _sum(e.restored)),
        (member_points_debt(m), e.debt_repaid),
        (points_redeemed(store), -e.points),
    ]


def _expired(e: Any, m: str, store: str) -> list[tuple[str, int]]:
    gone = _sum(e.lots)
    return [(member_points(m), -gone), (POINTS_EXPIRED, gone)]


Entries = list[tuple[str, int]]


def _per_issuer(
    allocation: dict[str, int], issued_at: dict[str, str], name: str, sign: int
) -> Entries:
    by_store: dict[str, int] = {}
    for lot_id, amount in allocation.items():
        store = issued_at[lot_id]
        by_store[store] = by_store.get(store, 0) + amount
    return [(store_account(store, name), sign * amount) for store, amount in by_store.items()]


def _topped_up(e: Any, m: str, store: str) -> tuple[Entries, Entries]:
    return [], [
        (member_cash(m), e.cash),
        (store_account(store, CASH_RECEIVED), -e.cash),
        (member_bonus(m), e.bonus),
        (store_account(store, BONUS_GRANTED), -e.bonus),
    ]


def _spent(e: Any, m: str, store: str) -> tuple[Entries, Entries]:
    return [], [
        (member_cash(m), -e.cash),
        *_per_issuer(e.cash_drawn, e.issued_at, CASH_SPENT, +1),
        (member_bonus(m), -e.bonus),
        *_per_issuer(e.bonus_drawn, e.issued_at, BONUS_SPENT, +1),
    ]


def _spend_refunded(e: Any, m: str, store: str) -> tuple[Entries, Entries]:
    # Cash a cash-out withheld for spent bonus this refund brings back goes back on the card.
    return [], [
        (member_cash(m), e.cash + _sum(e.cash_unwithheld)),
        *_per_issuer(e.cash_restored, e.issued_at, CASH_SPENT, -1),
        *_per_issuer(e.cash_unwithheld, e.issued_at, CASH_WITHHELD, -1),
        (member_bonus(m), e.bonus),
        *_per_issuer(e.bonus_restored, e.issued_at, BONUS_SPENT, -1),
    ]


def _cashed_out(e: Any, m: str, store: str) -> tuple[Entries, Entries]:
    issuer = e.issued_at_store
    return [], [
        (member_cash(m), -e.cash_taken),
        (store_account(issuer, CASH_PAID_OUT), e.refunded_cash),
        (store_account(issuer, CASH_WITHHELD), e.bonus_deducted),
        (member_bonus(m), -e.bonus_forfeited),
        (store_account(issuer, BONUS_FORFEITED), e.bonus_forfeited),
    ]


def _converted(e: Any, m: str, store: str) -> tuple[Entries, Entries]:
    points = _sum(e.consumed)
    return [(member_points(m), -points), (points_converted(store), points)], [
        (member_bonus(m), e.value),
        (store_account(store, BONUS_CONVERTED), -e.value),
    ]


def _conversion_reversed(e: Any, m: str, store: str) -> tuple[Entries, Entries]:
    return [
        (member_points(m), _sum(e.restored)),
        (member_points_debt(m), e.debt_repaid),
        (points_converted(store), -e.points),
    ], [
        (member_bonus(m), -e.value),
        (store_account(e.issued_at_store, BONUS_CONVERTED), e.value),
    ]


_MONEY_RULES = {
    events.StoredValueToppedUp: _topped_up,
    events.StoredValueSpent: _spent,
    events.SpendRefunded: _spend_refunded,
    events.TopUpCashedOut: _cashed_out,
    events.PointsConverted: _converted,
    events.ConversionReversed: _conversion_reversed,
}

_RULES = {
    events.PointsEarned: _earned,
    events.PointsRedeemed: _redeemed,
    events.PointsHeld: _held,
    events.HoldCaptured: _captured,
    events.HoldReleased: _returned,
    events.HoldExpired: _returned,
    events.PointsAdjusted: _adjusted,
    events.EarnReversed: _earn_reversed,
    events.RedemptionReversed: _redemption_reversed,
    events.LotsExpired: _expired,
}
# Events that move nothing between ledger accounts.
NO_POSTINGS: frozenset[type] = frozenset(
    {events.MemberEnrolled, events.ProgramCreated, events.ProgramUpdated}
)
# Every event type the journal knows.
HANDLED: frozenset[type] = frozenset(_RULES) | frozenset(_MONEY_RULES) | NO_POSTINGS
