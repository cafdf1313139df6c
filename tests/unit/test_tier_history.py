"""The projected tier history (ledger/domain/tier_history.py) agrees with the aggregate: at
every instant, the tier the history says (the last change at or before it) is the ladder in
force then applied to the MemberAccount's qualifying points (QualifyingWindow), asked with
only what was recorded by then. Plus the causes, one example each."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.account import MemberAccount
from ledger.domain.program import TierRule, tier_standing
from ledger.domain.provenance import Provenance
from ledger.domain.tier_history import (
    QualifyingChange,
    RulesVersion,
    TierCause,
    TierChange,
    qualifying_points_at,
    tier_history,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
US = timedelta(microseconds=1)


def ladder(silver: int, gold: int) -> tuple[TierRule, ...]:
    return (TierRule("SILVER", "Silver", silver), TierRule("GOLD", "Gold", silver + gold))


def tier_at(history: list[TierChange], initial: str, at: datetime) -> str:
    tier = initial
    for change in history:
        if change.changed_at <= at:
            tier = change.to_tier_code
    return tier


steps = st.lists(
    st.one_of(
        # (earn, minutes later, points, qualifying, minutes back dated, window minutes)
        st.tuples(
            st.just("earn"),
            st.integers(0, 5),
            st.integers(1, 300),
            st.booleans(),
            st.integers(0, 20),
            st.integers(0, 30),
        ),
        st.tuples(st.just("reverse"), st.integers(0, 5), st.integers(0, 30), st.integers(1, 300)),
        st.tuples(st.just("rules"), st.integers(0, 5), st.integers(0, 400), st.integers(1, 400)),
    ),
    max_size=30,
)


@given(st.integers(1, 300), st.integers(1, 300), steps)
def test_the_history_agrees_with_the_aggregate_at_every_instant(
    silver: int, gold: int, script: list[tuple[Any, ...]]
) -> None:
    start = T0
    account = MemberAccount(
        program_id="p", member_id="m", referrer_member_id="", provenance=Provenance("e", "e", T0)
    )
    versions = [RulesVersion(1, T0 - MINUTE, ladder(silver, gold), position=0)]
    changes: list[QualifyingChange] = []
    earns: dict[str, tuple[int, datetime | None]] = {}  # id -> (left to reverse, until)
    checks: list[tuple[datetime, int, str]] = []  # (instant, qualifying points, tier)
    instants: set[datetime] = {start}
    now = start

    def check_up_to(limit: datetime) -> None:
        """The aggregate's answer at every interesting instant in [now, limit)."""
        for at in sorted(i for i in instants if now <= i < limit):
            rules = max((v for v in versions if v.recorded_at <= at), key=lambda v: v.version)
            points = account.qualifying_points(at)
            checks.append((at, points, tier_standing(rules.tiers, points).tier_code))

    for n, step in enumerate(script, start=1):
        later = now + step[1] * MINUTE + (US if step[1] == 0 else timedelta(0))
        instants.add(later)
        check_up_to(later)
        now = later
        if step[0] == "earn":
            _, _, points, qualifying, back, window = step
            occurred = now - back * MINUTE
            until = occurred + window * MINUTE if qualifying else None
            earn_id = f"earn-{n}"
            account.earn(Provenance(earn_id, earn_id, occurred), now, points, 0, None, until)
            earns[earn_id] = (points, until)
            if until is not None:
                changes.append(QualifyingChange(now, points, until, earn_id, earn_id, n))
                instants.update({until - US, until, until + US})
        elif step[0] == "reverse" and earns:
            _, _, index, points = step
            earn_id = sorted(earns)[index % len(earns)]
            left, until = earns[earn_id]
            amount = min(points, left)
            if amount == 0:
                continue
            reversal = Provenance(f"rev-{n}", f"rev-{n}", now, reverses_transaction_id=earn_id)
            account.reverse(reversal, now, earn_id, amount)
            earns[earn_id] = (left - amount, until)
            if until is not None:
                changes.append(QualifyingChange(now, -amount, until, f"rev-{n}", earn_id, n))
        elif step[0] == "rules":
            _, _, s, g = step
            versions.append(RulesVersion(len(versions) + 1, now, ladder(s, g), position=n))
    end = now + 40 * MINUTE
    instants.add(end)
    check_up_to(end + US)

    history, _, _ = tier_history(changes, versions, start, end)
    initial = tier_standing(versions[0].tiers, 0).tier_code
    for at, points, tier in checks:
        assert qualifying_points_at(changes, at) == points, at
        assert tier_at(history, initial, at) == tier, at
        _, tier_then, points_then = tier_history(changes, versions, start, at)
        assert (tier_then, points_then) == (tier, points), at
    # A chain: each change starts where the last one ended, and changes something.
    previous = initial
    for change in history:
        assert change.from_tier_code == previous != change.to_tier_code
        previous = change.to_tier_code
    assert [c.changed_at for c in history] == sorted({c.changed_at for c in history})


# ---------------------------------------------------------------------- one cause each

RULES = (TierRule("SILVER", "Silver", 100), TierRule("GOLD", "Gold", 500))
V1 = RulesVersion(1, T0 - MINUTE, RULES, transaction_id="create")


def earn(at: datetime, points: int, until: datetime, earn_id: str) -> QualifyingChange:
    return QualifyingChange(at, points, until, earn_id, earn_id)


def test_one_below_and_exactly_at_the_threshold() -> None:
    until = T0 + 100 * MINUTE
    below = [earn(T0, 99, until, "a")]
    history, tier, points = tier_history(below, [V1], T0, T0 + MINUTE)
    assert (history, tier, points) == ([], "", 99)
    at = [*below, earn(T0 + MINUTE, 1, until, "b")]
    history, tier, points = tier_history(at, [V1], T0, T0 + 2 * MINUTE)
    assert history == [TierChange(T0 + MINUTE, "", "SILVER", TierCause.EARN, "b", 100, 1)]


def test_the_window_drops_the_tier_just_after_the_earns_last_instant() -> None:
    until = T0 + 10 * MINUTE
    changes = [earn(T0, 120, until, "a")]
    history, tier, _ = tier_history(changes, [V1], T0, until)
    assert tier == "SILVER"
    assert len(history) == 1
    history, tier, points = tier_history(changes, [V1], T0, until + US)
    assert history[-1] == TierChange(until + US, "SILVER", "", TierCause.WINDOW, "a", 0, 1)
    assert (tier, points) == ("", 0)


def test_a_reversal_drops_the_tier_from_its_recorded_time_only_inside_the_window() -> None:
    until = T0 + 10 * MINUTE
    changes = [
        earn(T0, 120, until, "a"),
        QualifyingChange(T0 + MINUTE, -30, until, "r1", "a"),
        # After the earn left: changes nothing, and the window's exit is the net 90.
        QualifyingChange(until + MINUTE, -90, until, "r2", "a"),
    ]
    history, tier, points = tier_history(changes, [V1], T0, T0 + 20 * MINUTE)
    assert [(c.cause, c.transaction_id, c.qualifying_points) for c in history] == [
        (TierCause.EARN, "a", 120),
        (TierCause.REVERSAL, "r1", 90),
    ]
    assert (tier, points) == ("", 0)


def test_an_earn_recorded_after_its_window_never_counts() -> None:
    changes = [earn(T0 + MINUTE, 1000, T0, "late")]
    assert tier_history(changes, [V1], T0, T0 + 9 * MINUTE) == ([], "", 0)


def test_a_change_of_rules_is_a_change_at_its_recorded_time_and_rewrites_nothing() -> None:
    changes = [earn(T0, 120, T0 + 100 * MINUTE, "a")]
    v2 = RulesVersion(
        2, T0 + 5 * MINUTE, (TierRule("SILVER", "Silver", 150),), transaction_id="update"
    )
    before, _, _ = tier_history(changes, [V1], T0, T0 + 10 * MINUTE)
    after, _tier, _ = tier_history(changes, [V1, v2], T0, T0 + 10 * MINUTE)
    assert after[: len(before)] == before
    assert after[len(before) :] == [
        TierChange(T0 + 5 * MINUTE, "SILVER", "", TierCause.RULES, "update", 120, 2)
    ]
    # A version recorded before the history starts is where it starts, not a change.
    assert tier_history(changes, [replace(v2, recorded_at=T0 - US)], T0, T0)[0] == []
