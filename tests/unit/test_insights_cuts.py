"""The insights projection moves its quintile cuts by a batch's changes (the value counts
of rm_insight_values and each cut's count at or below it): after any sequence of batches
they are the cuts programme_cuts makes of every member's values, as a rebuild makes them.
On SQLite, through the projection's own statements."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain.insights import Behaviour, programme_cuts, quintile_cuts, start_ranks
from ledger.infrastructure.database import Database, open_database, parse_database_url
from ledger.infrastructure.migrations import migrate
from projections.insights import InsightsProjection, Values, starts_of

DAY0 = date(2025, 1, 1).toordinal()


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    with tempfile.TemporaryDirectory() as folder:
        config = parse_database_url(f"sqlite:///{Path(folder) / 'cuts.db'}")
        migrate(config)
        db = open_database(config)
        try:
            yield db
        finally:
            db.close()


def expected(members: dict[int, Values]) -> tuple[int, list[str]]:
    cuts = programme_cuts(
        Behaviour(
            lifetime_purchases=v[1],
            lifetime_value_minor=v[2],
            last_purchase_day=date.fromordinal(v[0]),
        )
        for v in members.values()
        if v is not None
    )
    starts = [cuts.recency.starts, cuts.frequency.starts, cuts.monetary.starts]
    return cuts.frequency.members, [",".join(map(str, s)) for s in starts]


def stored(database: Database, program_id: str) -> tuple[int, list[str], list[tuple[int, ...]]]:
    with database.read() as cur:
        cur.execute(
            "SELECT scored_members, recency_starts, frequency_starts, monetary_starts,"
            " recency_counts, frequency_counts, monetary_counts FROM rm_insight_cuts"
            " WHERE program_id = ?",
            (program_id,),
        )
        row = cur.fetchone()
    assert row is not None
    return int(row[0]), [str(t) for t in row[1:4]], [starts_of(str(t)) for t in row[4:]]


def counted(values: list[Values], i: int, start: int) -> int:
    return sum(1 for v in values if v is not None and v[i] <= start)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    spread=st.sampled_from([2, 5, 40, 10_000]),
    batches=st.integers(1, 12),
)
def test_moved_cuts_equal_the_cuts_of_all_values(
    database: Database, seed: int, spread: int, batches: int
) -> None:
    """Members enter, move (often to tied values), leave scoring (refunded to nothing) and
    come back, many or few at once: after every batch the stored cuts are programme_cuts'
    and each count is the members at or below its cut."""
    rng = random.Random(seed)
    program_id = f"p{seed}-{spread}-{batches}"
    projection = InsightsProjection(database.dialect)
    members: dict[int, Values] = {}

    def value() -> Values:
        if rng.random() < 0.15:
            return None
        return (
            DAY0 + rng.randrange(spread),
            1 + rng.randrange(spread),
            rng.randrange(spread) * 100,
        )

    for _ in range(batches):
        changes = []
        for m in rng.sample(range(60), rng.choice([1, 3, 20, 60])):
            before, after = members.get(m), value()
            members[m] = after
            if before != after:
                changes.append((before, after))
        with database.transaction() as cur:
            projection._move_cuts(cur, program_id, changes)
        n, starts, counts = stored(database, program_id)
        assert (n, starts) == expected(members)
        for i, text in enumerate(starts):
            assert counts[i] == tuple(
                counted(list(members.values()), i, s) for s in starts_of(text)
            )


def test_the_ranks_are_the_quintile_rule() -> None:
    assert start_ranks(0) == ()
    assert start_ranks(1) == (1, 1, 1, 1)
    assert start_ranks(10) == (3, 5, 7, 9)
    assert quintile_cuts([1, 1, 1, 1, 1, 1, 1, 2, 3, 5]).starts == (1, 1, 1, 3)
