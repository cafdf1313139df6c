"""The tier window's running sum equals re-summing every earn, whatever the order of earns
(an import brings them in any order), reversals and questions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.account import EarnRecord, QualifyingWindow

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
            earns[earn_id] = EarnRecord(points, when, qualifying)
            if qualifying:
                window.earned(earn_id, when, points)
        elif step[0] == "reverse" and earns:
            _, index, points = step
            earn = earns[f"e{index % len(earns)}"]
            amount = min(points, earn.points - earn.reversed)
            earn.reversed += amount
            if earn.qualifying:
                window.reversed(earn.occurred_at, amount)
        elif step[0] == "ask":
            since = step[1]
            expected = sum(
                e.points - e.reversed
                for e in earns.values()
                if e.qualifying and e.occurred_at >= since
            )
            assert window.since(since, earns) == expected


def test_an_earn_before_the_window_does_not_count_and_one_inside_does() -> None:
    window = QualifyingWindow()
    earns = {"a": EarnRecord(100, T0, True)}
    window.earned("a", T0, 100)
    assert window.since(T0 + timedelta(days=1), earns) == 0
    earns["b"] = EarnRecord(7, T0 + timedelta(hours=1), True)  # backdated, before the window
    window.earned("b", T0 + timedelta(hours=1), 7)
    earns["c"] = EarnRecord(5, T0 + timedelta(days=2), True)
    window.earned("c", T0 + timedelta(days=2), 5)
    assert window.since(T0 + timedelta(days=1), earns) == 5
    assert window.since(T0, earns) == 112
