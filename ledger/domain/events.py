"""Every event class the log holds, by name, for the code that reads events by type
(projections dispatch on these). The `@event` decorator makes most of these classes when
the aggregate is defined, which a type checker cannot see; naming them here once keeps the
readers typed, and a renamed or removed event fails at import, not at replay."""

from __future__ import annotations

from eventsourcing.domain import Aggregate

from ledger.domain.account import MemberAccount
from ledger.domain.program import Program


def _event_class(aggregate: type[Aggregate], name: str) -> type[Aggregate.Event]:
    found = vars(aggregate).get(name)
    if not (isinstance(found, type) and issubclass(found, Aggregate.Event)):
        raise TypeError(f"{aggregate.__name__} has no event {name}")
    return found


ProgramCreated = _event_class(Program, "ProgramCreated")
ProgramUpdated = _event_class(Program, "ProgramUpdated")

MemberEnrolled = _event_class(MemberAccount, "MemberEnrolled")
PointsEarned = _event_class(MemberAccount, "PointsEarned")
PointsRedeemed = _event_class(MemberAccount, "PointsRedeemed")
PointsHeld = _event_class(MemberAccount, "PointsHeld")
HoldCaptured = _event_class(MemberAccount, "HoldCaptured")
HoldReleased = _event_class(MemberAccount, "HoldReleased")
HoldExpired = _event_class(MemberAccount, "HoldExpired")
PointsAdjusted = _event_class(MemberAccount, "PointsAdjusted")
EarnReversed = _event_class(MemberAccount, "EarnReversed")
RedemptionReversed = _event_class(MemberAccount, "RedemptionReversed")
LotsExpired = _event_class(MemberAccount, "LotsExpired")
StoredValueToppedUp = _event_class(MemberAccount, "StoredValueToppedUp")
StoredValueSpent = _event_class(MemberAccount, "StoredValueSpent")
SpendRefunded = _event_class(MemberAccount, "SpendRefunded")
TopUpCashedOut = _event_class(MemberAccount, "TopUpCashedOut")
PointsConverted = _event_class(MemberAccount, "PointsConverted")
ConversionReversed = _event_class(MemberAccount, "ConversionReversed")

ALL = (
    ProgramCreated,
    ProgramUpdated,
    MemberEnrolled,
    PointsEarned,
    PointsRedeemed,
    PointsHeld,
    HoldCaptured,
    HoldReleased,
    HoldExpired,
    PointsAdjusted,
    EarnReversed,
    RedemptionReversed,
    LotsExpired,
    StoredValueToppedUp,
    StoredValueSpent,
    SpendRefunded,
    TopUpCashedOut,
    PointsConverted,
    ConversionReversed,
)
