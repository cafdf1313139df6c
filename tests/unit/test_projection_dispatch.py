"""Projections dispatch on event classes and fail loudly on one they do not handle."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.domain import events
from ledger.infrastructure.dialect import SQLITE
from projections import REGISTERED
from projections.points import Batch, PointsProjection, UnhandledEvent


@pytest.mark.parametrize("projection", REGISTERED, ids=lambda p: p.name)
def test_every_event_of_the_log_has_a_handler(projection: Any) -> None:
    missing = [cls.__qualname__ for cls in events.ALL if cls not in projection.handled]
    assert missing == []


def test_an_event_nobody_handles_stops_the_projection() -> None:
    class Surprise:
        pass

    projection = PointsProjection(SQLITE)
    with pytest.raises(UnhandledEvent, match=r"no handler for .*Surprise"):
        projection.apply(Surprise(), Batch(cur=None), 1)  # type: ignore[arg-type]


def test_an_event_the_journal_has_no_rule_for_stops_it() -> None:
    from ledger.domain import journal

    class Surprise:
        pass

    with pytest.raises(journal.NoPostingRule, match="Surprise"):
        journal.postings(Surprise(), "m", "CNY")
