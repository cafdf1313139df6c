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


POINTS_EXPIRED = "program:points_expired"
POINTS_ADJUSTED = "program:points_adjusted"


class NoPostingRule(TypeError):
    """An event type the journal has no rule for: refused, never skipped (a skipped event
    would be a journal that silently disagrees with the log)."""


def postings(event: Any, member_id: str) -> list[Posting]:
    """The balanced postings of one event (none for an enrolment or a program's events).
    `member_id`: the account's member (the event itself names only the account)."""
    kind = type(event)
    if kind in NO_POSTINGS:
        return []
    if kind not in _RULES:
        raise NoPostingRule(f"the journal has no rule for {kind.__qualname__}")
    entries = _RULES[kind](event, member_id, event.provenance.store_id)
    return [Posting(account, POINTS, amount) for account, amount in entries if amount]


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
HANDLED: frozenset[type] = frozenset(_RULES) | NO_POSTINGS
