"""as_of reads (decision 20) against the aggregate: for random histories run through the
application on SQLite, and random recorded instants T inside, before and after them,
`LedgerQueries.account_as_of(T)` equals the view of the MemberAccount rebuilt from its
events recorded at or before T (its tier at T under the programme as recorded at T), and
`lots_as_of(T)` its lots then; before the enrolment there is no account.

Recorded time is a test clock (the application's `now` and the events' timestamps) moved on
by microseconds to days between commands, so a history crosses earns' tier windows, hold
TTLs and lot expiries (which the next command records). Refused commands are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.application import project_aggregate
from eventsourcing.domain import CanCreateTimestamp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ledger.application import commands as c
from ledger.application.views import AccountView
from ledger.domain import errors
from ledger.domain.account import MemberAccount
from ledger.domain.ids import account_id_key
from ledger.domain.program import ProgramSettings, TierRule
from ledger.queries import LedgerQueries
from ledger.runtime import Tally
from projections.points import NAME as POINTS
from tests.support import open_tally

START = datetime(2026, 1, 1, tzinfo=UTC)
MICRO = timedelta(microseconds=1)

# The derandomized `ci` profile runs this many (a few seconds); `hunt` its own count.
CI_EXAMPLES = 100
PROFILE = settings.get_current_profile_name()
_loaded = settings.get_profile(PROFILE)
EXAMPLES = min(CI_EXAMPLES, _loaded.max_examples) if _loaded.derandomize else _loaded.max_examples

LADDERS = [
    (TierRule("SILVER", "Silver", 50), TierRule("GOLD", "Gold", 200)),
    (TierRule("BRONZE", "Bronze", 20),),
    (),
]


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Shared:
    tally: Tally
    clock: Clock
    programs: int = 0


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    """One SQLite ledger for every example (each its own programme), its events stamped
    by the test clock, on tmpfs (durable=False): the examples' thousands of commits need
    not wait for the disk."""
    clock = Clock()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CanCreateTimestamp, "create_timestamp", staticmethod(clock))
        with open_tally("sqlite", durable=False, clock=clock) as tally:
            yield Shared(tally, clock)


waits = st.one_of(
    st.just(timedelta(0)),
    st.integers(1, 5).map(lambda n: n * MICRO),
    st.integers(1, 3600).map(lambda n: timedelta(seconds=n)),
    st.integers(1, 40).map(lambda n: timedelta(days=n)),
)


def step(
    shared: Shared,
    program: str,
    member: str,
    n: int,
    data: st.DataObject,
    txs: list[str],
    holds: list[str],
) -> None:
    app, now = shared.tally.app, shared.clock.now
    base: dict[str, Any] = {
        "program_id": program,
        "member_id": member,
        "request_id": f"{program}-{n}",
    }
    kind = data.draw(
        st.sampled_from(
            [
                "earn",
                "earn",
                "redeem",
                "hold",
                "settle",
                "reverse",
                "top_up",
                "spend",
                "adjust",
                "rules",
            ]
        ),
        label="command",
    )
    cmd: Any
    if kind == "earn":
        expires = data.draw(st.sampled_from([None, timedelta(hours=2), timedelta(days=30)]))
        cmd = c.EarnPoints(
            **base,
            points=data.draw(st.integers(1, 120), label="points"),
            qualifying=data.draw(st.booleans(), label="qualifying"),
            occurred_at=now - data.draw(st.sampled_from([timedelta(0), timedelta(days=300)])),
            expires_at=None if expires is None else now + expires,
        )
    elif kind == "redeem":
        cmd = c.RedeemPoints(**base, points=data.draw(st.integers(1, 100)))
    elif kind == "hold":
        cmd = c.HoldPoints(**base, points=data.draw(st.integers(1, 60)), ttl_seconds=600)
    elif kind == "settle" and holds:
        hold = data.draw(st.sampled_from(holds))
        if data.draw(st.booleans()):
            cmd = c.CaptureHold(**base, hold_id=hold, points=data.draw(st.integers(0, 30)))
        else:
            cmd = c.ReleaseHold(**base, hold_id=hold)
    elif kind == "reverse" and txs:
        cmd = c.ReverseTransaction(
            **base,
            transaction_id=data.draw(st.sampled_from(txs)),
            points=data.draw(st.integers(0, 50)),
        )
    elif kind == "top_up":
        cmd = c.TopUp(
            **base,
            store_id="s1",
            cash_minor=data.draw(st.integers(1, 500)),
            bonus_minor=data.draw(st.integers(0, 50)),
        )
    elif kind == "spend":
        cmd = c.Spend(**base, store_id="s1", amount_minor=data.draw(st.integers(1, 300)))
    elif kind == "adjust":
        cmd = c.AdjustPoints(
            **base,
            points=data.draw(st.sampled_from([-30, -5, 10, 40])),
            reason="goodwill",
            operator_id="op",
        )
    elif kind == "rules":
        app.update_program(
            c.UpdateProgram(
                program_id=program,
                request_id=f"{program}-{n}",
                changes={"tiers": data.draw(st.sampled_from(LADDERS), label="ladder")},
            )
        )
        event("changed the tier rules")
        return
    else:
        return
    try:
        done = app.execute(cmd)
    except errors.DomainError as refusal:
        event(f"refused {type(cmd).__name__}: {type(refusal).__name__}")
        return
    event(f"accepted {type(cmd).__name__}")
    (holds if isinstance(cmd, c.HoldPoints) else txs).append(done.transaction_id)


def expected(
    shared: Shared, program: str, member: str, at: datetime
) -> tuple[AccountView | None, Any]:
    """The aggregate after its events recorded at or before `at`, viewed at `at`."""
    app = shared.tally.app
    recorded = [e for e in app.events.get(account_id_key(program, member)) if e.timestamp <= at]  # type: ignore[attr-defined]
    if not recorded:
        return None, []
    account: MemberAccount | None = project_aggregate(None, recorded)
    assert account is not None
    settings_then = app.program_as_of(program, at).settings
    lots = sorted(
        (lot.lot_id, lot.points, lot.remaining, lot.held, lot.expired)
        for lot in account.lots.values()
    )
    return AccountView.of(account, settings_then, at), lots


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_as_of_is_the_aggregate_after_its_events_recorded_by_then(
    shared: Shared, data: st.DataObject
) -> None:
    shared.programs += 1
    program, member = f"asof{shared.programs}", "m"
    clock = shared.clock
    clock.now = START + timedelta(hours=data.draw(st.integers(0, 2 * 365 * 24), label="start"))
    app = shared.tally.app
    app.create_program(
        c.CreateProgram(
            program_id=program,
            request_id=program,
            settings=ProgramSettings(
                "P",
                "EUR",
                tiers=data.draw(st.sampled_from(LADDERS)),
                tier_window_days=data.draw(st.sampled_from([1, 30, 365])),
            ),
        )
    )
    clock.now += data.draw(waits)
    app.execute(c.EnrollMember(program_id=program, member_id=member, request_id=member))
    moments = [clock.now]
    txs: list[str] = []
    holds: list[str] = []
    for n in range(data.draw(st.integers(3, 25), label="steps")):
        clock.now += data.draw(waits, label="wait")
        step(shared, program, member, n, data, txs, holds)
        moments.append(clock.now)
    shared.tally.projections[POINTS].run_until_caught_up()
    queries = LedgerQueries(shared.tally.database)
    instants = [moments[0] - MICRO, clock.now + timedelta(days=400)]
    for _ in range(6):
        at = data.draw(st.sampled_from(moments), label="moment") + data.draw(
            st.sampled_from([-MICRO, timedelta(0), MICRO, timedelta(days=2)]), label="off"
        )
        instants.append(at)
    for at in instants:
        want, want_lots = expected(shared, program, member, at)
        if want is None:
            assert at < moments[0]
            assert not queries.member_recorded_by(program, member, at)
            continue
        settings_then = app.program_as_of(program, at).settings
        assert queries.account_as_of(program, member, settings_then, at) == want, at
        got_lots = sorted(
            (lot.lot_id, lot.points, lot.remaining, lot.held, lot.expired)
            for lot in queries.lots_as_of(program, member, True, at)
        )
        assert got_lots == want_lots, at
