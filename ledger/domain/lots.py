"""Points lots and allocations: where an account's points are, and the order they go out in.

A lot is keyed by the id of the transaction that opened it (an Earn or a positive Adjust).
Points go out of lots in spend order (`Lot.spend_order`): earliest expiry first
(never-expiring last), then oldest earn. An allocation (`dict[lot_id, points]`) records
exactly which lots gave how much, in the order they gave it; `split_allocation` cuts one in
two keeping that order (a partial capture, held points that first repay debt).

MemberAccount (account.py) opens, takes from, credits and expires lots; these are its
records, snapshots carry them (transcoding "lot", ledger/application/transcodings.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

Allocation = dict[str, int]


@dataclass
class Lot:
    lot_id: str
    points: int
    remaining: int
    earned_at: datetime
    expires_at: datetime | None
    held: int = 0
    expired: int = 0
    # Expired points of this lot whose earn was later reversed (nothing left to claw back).
    expired_reversed: int = 0
    # Points other lots gave in place of this lot's when its earn was reversed while its
    # points were away (held or redeemed). Points coming back to this lot return them first.
    in_lieu: dict[str, int] = field(default_factory=dict)

    def is_due(self, as_of: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= as_of

    def spend_order(self) -> tuple[bool, datetime, datetime, str]:
        never = self.expires_at is None
        return (never, self.expires_at or self.earned_at, self.earned_at, self.lot_id)


def split_allocation(taken: Allocation, points: int) -> tuple[Allocation, Allocation]:
    """Split an allocation into its first `points` and the rest, keeping the order."""
    consumed: Allocation = {}
    released: Allocation = {}
    for lot_id, pts in taken.items():
        take = min(pts, points)
        if take:
            consumed[lot_id] = take
            points -= take
        if pts - take:
            released[lot_id] = pts - take
    return consumed, released
