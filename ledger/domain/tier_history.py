"""A member's tier history, projected from what is recorded (decision 21): no event records a
tier, so a downgrade by the window happens at the instant an earn leaves it, whether or not
anything is recorded then, and a replay gives the same history.

The qualifying points at an instant T are the rule of the tier window (tier_window.py,
decision 13), read from what was recorded by T: the net points of the qualifying earns
recorded at or before T whose `qualifies_until` is at or after T. A reversal of a
qualifying earn takes its points off from the reversal's recorded time, and only while the
earn still counts (a reversal after the earn left the window changes nothing). The tier at T
is the ladder of the programme version in force at T (the last one recorded at or before T)
applied to those points (`tier_standing`, program.py).

Every change of tier has one cause:
  EARN      a qualifying earn was recorded (at its recorded time)
  REVERSAL  a reversal of a qualifying earn was recorded (at its recorded time)
  WINDOW    an earn's points stopped counting: at the first instant after its
            qualifies_until (it counts up to and including that instant), one microsecond
            later, the resolution of every recorded time
  RULES     an UpdateProgram changed the ladder (at its recorded time)
Several things at one instant make at most one change: from the tier before that instant to
the tier after all of them, caused by the last of them that moved the tier (window exits
first, then what was recorded, in log order).

Pure: no SQL, no gRPC. `ledger/tier_queries.py` feeds it from the points read model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from ledger.domain.program import TierRule, tier_standing

# Recorded times are kept to the microsecond: an earn stops counting one later.
RESOLUTION = timedelta(microseconds=1)


class TierCause(StrEnum):
    EARN = "EARN"
    REVERSAL = "REVERSAL"
    WINDOW = "WINDOW"
    RULES = "RULES"


@dataclass(frozen=True)
class QualifyingChange:
    """A qualifying earn (points > 0) or a reversal of one (points < 0), as recorded."""

    recorded_at: datetime
    points: int
    # The earn's: the last instant its points (and so its reversals') count.
    qualifies_until: datetime
    transaction_id: str  # the earn's, or the reversal's
    earn_id: str  # the earn it belongs to (its own id for an earn)
    position: int = 0  # log position: orders what is recorded at one instant


@dataclass(frozen=True)
class RulesVersion:
    """A programme version's ladder and when it was recorded."""

    version: int
    recorded_at: datetime
    tiers: tuple[TierRule, ...]
    position: int = 0
    transaction_id: str = ""  # the CreateProgram's or UpdateProgram's


@dataclass(frozen=True)
class TierChange:
    changed_at: datetime
    from_tier_code: str
    to_tier_code: str
    cause: TierCause
    transaction_id: str  # the earn, reversal or programme change; WINDOW: the earn that left
    qualifying_points: int  # after the change
    program_version: int  # the ladder in force after the change


@dataclass(frozen=True)
class _Step:
    at: datetime
    order: tuple[int, int]  # (0 for window exits, 1 for recorded; log position)
    cause: TierCause
    transaction_id: str
    points: int = 0
    rules: RulesVersion | None = None


def _steps(
    changes: Iterable[QualifyingChange], versions: Iterable[RulesVersion], start: datetime
) -> list[_Step]:
    steps: list[_Step] = []
    leaving: dict[tuple[datetime, str], int] = {}  # (exit instant, earn) -> net points
    for c in changes:
        if c.qualifies_until < c.recorded_at:
            continue  # recorded after it left the window (or a reversal after that): nothing
        cause = TierCause.EARN if c.points > 0 else TierCause.REVERSAL
        steps.append(_Step(c.recorded_at, (1, c.position), cause, c.transaction_id, c.points))
        exit_at = c.qualifies_until + RESOLUTION
        leaving[(exit_at, c.earn_id)] = leaving.get((exit_at, c.earn_id), 0) - c.points
    for (exit_at, earn_id), points in leaving.items():
        steps.append(_Step(exit_at, (0, 0), TierCause.WINDOW, earn_id, points))
    for v in versions:
        if v.recorded_at > start:
            steps.append(
                _Step(v.recorded_at, (1, v.position), TierCause.RULES, v.transaction_id, rules=v)
            )
    steps.sort(key=lambda s: (s.at, s.order, s.transaction_id))
    return steps


def _in_force(versions: Sequence[RulesVersion], at: datetime) -> RulesVersion:
    current = versions[0]
    for v in versions:
        if v.recorded_at <= at:
            current = v
    return current


def tier_history(
    changes: Iterable[QualifyingChange],
    versions: Sequence[RulesVersion],
    start: datetime,
    until: datetime,
) -> tuple[list[TierChange], str, int]:
    """Every change of tier after `start` (the member's enrolment: the tier then is where
    the history begins, not a change) and at or before `until`, oldest first; with the
    tier and the qualifying points at `until`. `versions`: every programme version, oldest
    first; `changes`: the member's qualifying earns and reversals."""
    ordered = sorted(versions, key=lambda v: (v.recorded_at, v.position))
    rules = _in_force(ordered, start)
    points = 0
    tier = tier_standing(rules.tiers, points).tier_code
    history: list[TierChange] = []
    steps = [s for s in _steps(changes, ordered, start) if s.at <= until]
    i = 0
    while i < len(steps):
        at = steps[i].at
        before, moved_by = tier, None
        while i < len(steps) and steps[i].at == at:
            step = steps[i]
            points += step.points
            if step.rules is not None:
                rules = step.rules
            now = tier_standing(rules.tiers, points).tier_code
            if now != tier:
                moved_by = step
            tier = now
            i += 1
        if tier != before and moved_by is not None:
            history.append(
                TierChange(
                    at,
                    before,
                    tier,
                    moved_by.cause,
                    moved_by.transaction_id,
                    points,
                    rules.version,
                )
            )
    return history, tier, points


def qualifying_points_at(changes: Iterable[QualifyingChange], at: datetime) -> int:
    """The window's rule read off the changes directly (what the read model sums)."""
    return sum(c.points for c in changes if c.recorded_at <= at <= c.qualifies_until)
