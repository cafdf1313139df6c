"""The tier window: which earns' points count toward the tier at a given instant.

Each qualifying Earn is recorded as an EarnRecord with `qualifies_until`, the last instant
its points count (occurred_at plus the tier window in force when it was recorded, decision
13); its reversals take points off it. QualifyingWindow keeps the running total the tier is
computed from (`ProgramSettings.standing`, program.py). Snapshots carry both (transcodings
"earn_record" and "qualifying_window", ledger/application/transcodings.py).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass
from datetime import datetime


@dataclass
class EarnRecord:
    points: int
    occurred_at: datetime
    qualifying: bool
    reversed: int = 0
    # The last instant its points count toward the tier: occurred_at plus the tier window in
    # force when it was recorded (None: not qualifying).
    qualifies_until: datetime | None = None
    # The order's money and what its reversals refunded of it (refund_purchase_minor).
    purchase_minor: int = 0
    refunded_minor: int = 0


class QualifyingWindow:
    """Qualifying points that still count at a moving instant, without re-summing history.

    Each qualifying earn counts until its `qualifies_until` (inclusive), fixed when it was
    recorded from the tier window then in force, so a later UpdateProgram changes nothing
    already recorded. The instant asked about only moves forward between commands, so the
    net points of earns that stopped counting are kept and brought forward over the earns
    passed since the last question: O(earns passed) instead of O(all earns) a command. Earns
    are kept in qualifies_until order (an import may bring them in any order); an earlier
    instant is summed from scratch."""

    def __init__(self) -> None:
        self._order: list[tuple[datetime, str]] = []  # (qualifies_until, earn id)
        self._total = 0  # net qualifying points of every earn
        self._since: datetime | None = None
        self._before = 0  # net qualifying points of earns that stopped counting by _since

    @property
    def order(self) -> list[tuple[datetime, str]]:
        return self._order

    @property
    def total(self) -> int:
        return self._total

    @classmethod
    def restore(cls, order: list[tuple[datetime, str]], total: int) -> QualifyingWindow:
        """From a snapshot: the earns in order and their net total."""
        window = cls()
        window._order, window._total = order, total
        return window

    def earned(self, earn_id: str, until: datetime, points: int) -> None:
        insort(self._order, (until, earn_id))
        self._changed(until, points)

    def _changed(self, until: datetime, points: int) -> None:
        self._total += points
        if self._since is not None and until < self._since:
            self._before += points

    def reversed(self, until: datetime, points: int) -> None:
        self._changed(until, -points)

    def __eq__(self, other: object) -> bool:
        # Equal when they hold the same earns; where the last question left off is a cache.
        if not isinstance(other, QualifyingWindow):
            return NotImplemented
        return (self._order, self._total) == (other._order, other._total)

    __hash__ = None  # type: ignore[assignment]

    def counting_at(self, when: datetime, earns: dict[str, EarnRecord]) -> int:
        """Net points of the qualifying earns whose qualifies_until is at or after `when`."""
        start = bisect_left(self._order, (when, ""))
        if self._since is None or when < self._since:
            passed, self._before = self._order[:start], 0
        else:
            passed = self._order[bisect_left(self._order, (self._since, "")) : start]
        for _, earn_id in passed:
            earn = earns[earn_id]
            self._before += earn.points - earn.reversed
        self._since = when
        return self._total - self._before
