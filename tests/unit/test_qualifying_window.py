"""The tier window's running sum equals re-summing every earn, whatever the order of earns
(an import brings them in any order), reversals and questions. Each earn counts until its own
qualifies_until (fixed when it was recorded), inclusive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.tier_window import EarnRecord, QualifyingWindow

T0 = datetime(2026, 1, 1, tzinfo=UTC)
instants = st.integers(min_value=0, max_value=40).map(lambda d: T0 + timedelta(days=d))
steps = st.lists(
    st.one_of(
        st.tuples(st.just("earn"), instants, st.integers(1, 1_000), st.booleans()),
        st.tuples(st.just("reverse"), st.integers(0, 50), st.integers(1, 1_000)),
        st.tuples(st.just("ask"), instants),
    ),
    max_size=60,
)


@given(steps)
def test_running_sum_equals_a_full_sum(script: list[tuple[Any, ...]]) -> None:
    window = QualifyingWindow()
    earns: dict[str, EarnRecord] = {}
    for step in script:
        if step[0] == "earn":
            _, when, points, qualifying = step
            earn_id = f"e{len(earns)}"
            until = when if qualifying else None
            earns[earn_id] = EarnRecord(points, when, qualifying, qualifies_until=until)
            if until is not None:
                window.earned(earn_id, until, points)
        elif step[0] == "reverse" and earns:
            _, index, points = step
            earn = earns[f"e{index % len(earns)}"]
            amount = min(points, earn.points - earn.reversed)
            earn.reversed += amount
            if earn.qualifies_until is not None:
                window.reversed(earn.qualifies_until, amount)
        elif step[0] == "ask":
            at = step[1]
            expected = sum(
                e.points - e.reversed
                for e in earns.values()
                if e.qualifies_until is not None and e.qualifies_until >= at
            )
            assert window.counting_at(at, earns) == expected


def test_an_earn_counts_until_its_own_end_inclusive() -> None:
    window = QualifyingWindow()
    day = timedelta(days=1)
    earns = {"a": EarnRecord(100, T0, True, qualifies_until=T0 + day)}
    window.earned("a", T0 + day, 100)
    assert window.counting_at(T0 + day, earns) == 100
    assert window.counting_at(T0 + 2 * day, earns) == 0
    # Recorded later with a longer window: counts longer, though earned at the same time.
    earns["b"] = EarnRecord(7, T0, True, qualifies_until=T0 + 30 * day)
    window.earned("b", T0 + 30 * day, 7)
    assert window.counting_at(T0 + 2 * day, earns) == 7
    assert window.counting_at(T0, earns) == 107
