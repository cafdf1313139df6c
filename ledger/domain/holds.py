"""A hold: points set aside from their lots for an order until it is captured, released or
its TTL runs out (then MemberAccount, account.py, releases it the next time the account is
brought up to now: by any command, or the sweeper's ExpireHolds).

`taken` is the allocation the hold took, in spend order (lots.py); capturing part of it
consumes its first points and gives the rest back. Snapshots carry active holds (transcoding
"active_hold", ledger/application/transcodings.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.domain.lots import Allocation


@dataclass
class ActiveHold:
    hold_id: str
    points: int
    taken: Allocation
    expires_at: datetime
    order_ref: str
