"""IFRS 15 deferred revenue: the pure arithmetic of ledger/domain/deferred_revenue.py
(allocation, the one rounding, recognition, the error bound of per-day nano sums), and the
exact fallback of RevenueQueries.deferred_revenue over rows crafted in the read model's own
tables on both backends: per-day sums whose bound straddles a rounding boundary must be
answered by summing the entries' fractions. Plus the revenue projection's programme rates
across a batch that rolled back."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.application import commands as c
from ledger.domain.deferred_revenue import (
    NANOS,
    PPM,
    Allocated,
    DeferredRevenue,
    Undecided,
    allocation,
    nano_floor,
    recognise,
    round_half_up,
)
from ledger.domain.program import ProgramSettings
from ledger.infrastructure.database import Cursor
from ledger.revenue_queries import RevenueQueries
from ledger.runtime import Tally
from projections.journal import local_day
from projections.points import micros
from projections.revenue import NAME, RevenueProjection
from projections.runner import ProjectionRunner
from tests.support import new_id, open_tally

NANO = Fraction(1, NANOS)
HALF = Fraction(1, 2)

# ---------------------------------------------------------------------- allocation


def test_allocation_by_relative_stand_alone_selling_price() -> None:
    # IE52: 100,000 of purchases, 10,000 points worth 1 each, 95% expected to be redeemed.
    assert allocation(100_000, 10_000, 1, 950_000) == Fraction(100_000 * 9_500, 109_500)
    # S = 100 x 1 x 50% = 50: 950 x 50 / 1,000 = 47.5 exactly.
    assert allocation(950, 100, 1, 500_000) == Fraction(95, 2)


def test_allocation_is_exact_not_a_float() -> None:
    got = allocation(1_000, 3, 7, 333_333)  # S = 3 x 7 x 0.333333 = 6.999993
    s = Fraction(3 * 7 * 333_333, PPM)
    assert got == 1_000 * s / (1_000 + s)
    assert isinstance(got, Fraction)
    assert got.denominator > 1
    # Numbers far past a float's 53 bits stay exact.
    big = allocation(10**15 + 1, 10**12 + 3, 10**3, 999_999)
    s_big = Fraction((10**12 + 3) * 10**3 * 999_999, PPM)
    assert big == (10**15 + 1) * s_big / (10**15 + 1 + s_big)


@pytest.mark.parametrize(
    ("purchase", "points", "value", "rate"),
    [
        (0, 100, 1, 1_000_000),  # no purchase: nothing to allocate
        (1_000, 100, 0, 1_000_000),  # points worth nothing
        (1_000, 100, 1, 0),  # none expected to be redeemed
        (1_000, 0, 1, 1_000_000),  # no points
        (-5, 100, 1, 1_000_000),  # a negative purchase allocates nothing either
    ],
)
def test_nothing_allocated_without_a_purchase_or_a_price_for_the_points(
    purchase: int, points: int, value: int, rate: int
) -> None:
    assert allocation(purchase, points, value, rate) == 0


@given(
    st.integers(1, 10**9),
    st.integers(1, 10**6),
    st.integers(1, 10**4),
    st.integers(1, PPM),
)
def test_allocation_is_less_than_both_prices(
    purchase: int, points: int, value: int, rate: int
) -> None:
    got = allocation(purchase, points, value, rate)
    s = Fraction(points * value * rate, PPM)
    assert 0 < got < purchase
    assert got < s
    # The goods get the rest: the two shares add up to the purchase.
    assert got + purchase * purchase / (purchase + s) == purchase


# ---------------------------------------------------------------------- rounding


@pytest.mark.parametrize(
    ("value", "rounded"),
    [
        (Fraction(1, 2), 1),
        (Fraction(3, 2), 2),
        (Fraction(5, 2), 3),
        (Fraction(-1, 2), 0),  # halves go up, towards plus infinity
        (Fraction(-3, 2), -1),
        (Fraction(-5, 2), -2),
        (Fraction(1, 2) - NANO, 0),
        (Fraction(1, 2) + NANO, 1),
        (Fraction(-1, 2) - NANO, -1),
        (Fraction(-1, 2) + NANO, 0),
        (Fraction(-6, 10), -1),
        (Fraction(-4, 10), 0),
        (Fraction(0), 0),
        (Fraction(7), 7),
        (Fraction(-7), -7),
        (Fraction(8_675_799, 1_000), 8_676),
    ],
)
def test_round_half_up(value: Fraction, rounded: int) -> None:
    assert round_half_up(value) == rounded


def test_nano_floor_rounds_down_also_below_zero() -> None:
    assert nano_floor(Fraction(1, 3)) == 333_333_333
    assert nano_floor(Fraction(-1, 3)) == -333_333_334
    assert nano_floor(Fraction(1, 4) - Fraction(1, 10**10)) == 249_999_999
    assert nano_floor(Fraction(1, 4) + Fraction(9, 10**10)) == 250_000_000
    assert nano_floor(Fraction(-2)) == -2 * NANOS
    assert nano_floor(Fraction(0)) == 0


@given(st.fractions(min_value=-(10**6), max_value=10**6))
def test_a_nano_floor_is_under_one_nano_below_its_fraction(value: Fraction) -> None:
    floor = Fraction(nano_floor(value), NANOS)
    assert floor <= value < floor + NANO


# ---------------------------------------------------------------------- recognise


def test_recognise_ie52_period_1() -> None:
    allocated = Allocated(allocation(100_000, 10_000, 1, 950_000))
    assert recognise(allocated, 10_000, 4_500, 950_000) == DeferredRevenue(
        points_issued=10_000,
        points_redeemed=4_500,
        allocated_minor=8_676,
        revenue_recognised_minor=4_110,
        contract_liability_minor=4_566,
        points_expected_to_be_redeemed=9_500,
    )
    # Period 2, the estimate now 97%: a cumulative catch-up.
    got = recognise(allocated, 10_000, 8_500, 970_000)
    assert (got.revenue_recognised_minor, got.contract_liability_minor) == (7_603, 1_073)


def test_recognised_is_rounded_once_from_the_exact_figure() -> None:
    # 45.5 allocated (rounds to 46); a third redeemed: exactly 15.1666..., 15 (not 46 / 3).
    got = recognise(Allocated(Fraction(91, 2)), 300, 100, PPM)
    assert (got.allocated_minor, got.revenue_recognised_minor) == (46, 15)
    assert got.contract_liability_minor == 31  # the rounded allocation less the rounded share


def test_recognised_is_capped_at_what_was_allocated() -> None:
    got = recognise(Allocated(Fraction(1_001, 2)), 100, 80, 500_000)  # 80 of 50 expected
    assert got.revenue_recognised_minor == got.allocated_minor == 501
    assert got.contract_liability_minor == 0
    assert got.points_expected_to_be_redeemed == 50


def test_no_points_issued_recognises_nothing() -> None:
    got = recognise(Allocated(Fraction(0)), 0, 0, 950_000)
    assert got == DeferredRevenue(0, 0, 0, 0, 0, 0)
    # Points redeemed that were never issued (adjustments are not issued): still nothing.
    got = recognise(Allocated(Fraction(10)), 0, 50, 950_000)
    assert (got.allocated_minor, got.revenue_recognised_minor, got.contract_liability_minor) == (
        10,
        0,
        10,
    )
    # Issued less than nothing (a reversal's entry on its own) expects nothing either.
    got = recognise(Allocated(Fraction(-3)), -10, 5, PPM)
    assert (got.revenue_recognised_minor, got.points_expected_to_be_redeemed) == (0, -10)


def test_more_reversed_than_redeemed_recognises_nothing_not_less() -> None:
    got = recognise(Allocated(Fraction(90)), 100, -20, PPM)
    assert got.points_redeemed == -20
    assert got.revenue_recognised_minor == 0
    assert got.contract_liability_minor == 90


def test_points_expected_to_be_redeemed_is_rounded_half_up() -> None:
    assert recognise(Allocated(Fraction(0)), 3, 0, 500_000).points_expected_to_be_redeemed == 2
    assert recognise(Allocated(Fraction(0)), 1, 0, 499_999).points_expected_to_be_redeemed == 0


@given(
    st.fractions(min_value=0, max_value=10**9),
    st.integers(-(10**6), 10**7),
    st.integers(-(10**6), 10**7),
    st.integers(1, PPM),
)
def test_recognised_never_negative_never_above_the_allocation(
    allocated: Fraction, issued: int, redeemed: int, rate: int
) -> None:
    got = recognise(Allocated(allocated), issued, redeemed, rate)
    assert got.allocated_minor == round_half_up(allocated)
    assert 0 <= got.revenue_recognised_minor <= got.allocated_minor
    assert got.contract_liability_minor == got.allocated_minor - got.revenue_recognised_minor
    assert got.contract_liability_minor >= 0


# ---------------------------------------------------------------------- the error bound


def test_per_day_floors_that_straddle_a_half_are_undecided() -> None:
    """The brief's pair: 1/4 - 1e-10 and 1/4 + 9e-10. Their floors sum to 0.499999999
    (which rounds to 0), the exact sum 1/2 + 8e-10 rounds to 1: the bound [0.499999999,
    0.500000001) straddles 1/2."""
    a, b = Fraction(1, 4) - Fraction(1, 10**10), Fraction(1, 4) + Fraction(9, 10**10)
    floors = Fraction(nano_floor(a) + nano_floor(b), NANOS)
    assert floors == Fraction(499_999_999, NANOS)
    assert round_half_up(floors) == 0
    assert round_half_up(a + b) == 1
    with pytest.raises(Undecided):
        recognise(Allocated(floors, 2 * NANO), 10, 0, PPM)
    # Summed exactly, it decides.
    assert recognise(Allocated(a + b), 10, 0, PPM).allocated_minor == 1


@pytest.mark.parametrize(
    ("low", "error", "rounded"),
    [
        # The top of the range (excluded) exactly at the half: everything below rounds down.
        (HALF - 2 * NANO, 2 * NANO, 0),
        (Fraction(7, 2) - 5 * NANO, 5 * NANO, 3),
        # From the half up, and under the next half: everything rounds up.
        (HALF, 2 * NANO, 1),
        (Fraction(3, 2) - 3 * NANO, 3 * NANO, 1),
        (Fraction(1, 2) + NANO, Fraction(1) - NANO, 1),  # up to 3/2 exactly, excluded
        # Far from a half.
        (Fraction(1), 1_000 * NANO, 1),
        # Below zero (reversals' negative floors) the same rule.
        (-HALF - 2 * NANO, 2 * NANO, -1),
        (-HALF, Fraction(1) - NANO, 0),
        (Fraction(-3, 2) - NANO, NANO, -2),
    ],
)
def test_just_inside_the_bound_decides(low: Fraction, error: Fraction, rounded: int) -> None:
    got = recognise(Allocated(low, error), 0, 0, PPM)
    assert got.allocated_minor == rounded
    assert round_half_up(low) == round_half_up(low + error - Fraction(1, 10**30)) == rounded


@pytest.mark.parametrize(
    ("low", "error"),
    [
        (HALF - 2 * NANO, 2 * NANO + Fraction(1, 10**30)),  # a hair over the half
        (HALF - NANO, 2 * NANO),
        (Fraction(7, 2) - 5 * NANO, 6 * NANO),
        (Fraction(3, 2) - 3 * NANO, 4 * NANO),
        (-HALF - 2 * NANO, 3 * NANO),
    ],
)
def test_just_outside_the_bound_is_undecided(low: Fraction, error: Fraction) -> None:
    with pytest.raises(Undecided):
        recognise(Allocated(low, error), 0, 0, PPM)


def test_the_recognised_share_can_be_undecided_when_the_allocation_is_not() -> None:
    """1 - 2n .. 1 + 2n allocated rounds to 1 either way; half of it redeemed is 0.5 - 1n ..
    0.5 + 1n, which does not."""
    allocated = Allocated(1 - 2 * NANO, 4 * NANO)
    assert recognise(allocated, 100, 0, PPM).allocated_minor == 1
    with pytest.raises(Undecided):
        recognise(allocated, 100, 50, PPM)
    # All redeemed: the same range as the allocation, decided.
    got = recognise(allocated, 100, 100, PPM)
    assert (got.revenue_recognised_minor, got.contract_liability_minor) == (1, 0)


def test_an_exact_allocation_is_never_undecided() -> None:
    exact = Allocated(HALF)
    assert exact.exact
    assert not Allocated(HALF, NANO).exact
    assert recognise(exact, 2, 1, PPM).revenue_recognised_minor == round_half_up(Fraction(1, 4))


@given(
    st.lists(st.fractions(min_value=-10, max_value=10, max_denominator=10**12), max_size=30),
    st.integers(0, 200),
    st.integers(0, 200),
)
def test_a_decided_range_rounds_as_the_exact_sum(
    values: list[Fraction], issued: int, redeemed: int
) -> None:
    """Whatever the per-day floors decide is what the exact fractions give."""
    low = Fraction(sum(nano_floor(v) for v in values), NANOS)
    ranged = Allocated(low, len(values) * NANO)
    exact = recognise(Allocated(sum(values, Fraction(0))), issued, redeemed, PPM)
    try:
        decided = recognise(ranged, issued, redeemed, PPM)
    except Undecided:
        return
    assert decided == exact


# ---------------------------------------------------------------------- the query's fallback

BACKENDS = ["sqlite", "postgres"]
ZONE = "Asia/Shanghai"
SHANGHAI = ZoneInfo(ZONE)
DAY1 = datetime(2025, 3, 10, 9, 0, tzinfo=SHANGHAI)
DAY2 = datetime(2025, 3, 11, 9, 0, tzinfo=SHANGHAI)


@pytest.fixture(scope="module", params=BACKENDS)
def scratch(request: pytest.FixtureRequest) -> Iterator[Tally]:
    with open_tally(request.param) as t:
        with t.database.transaction() as cur:
            cur.execute(
                "INSERT INTO projection_tracking (name, position) VALUES (?, 1000)"
                " ON CONFLICT (name) DO NOTHING",
                (NAME,),
            )
        yield t


@dataclass(frozen=True)
class Entry:
    at: datetime
    allocated: Fraction
    issued: int = 0
    redeemed: int = 0
    purchases: int = 0


def craft(tally: Tally, entries: Sequence[Entry], rate_ppm: int = PPM) -> str:
    """A programme in the read model, with `entries` and their per-day sums written as the
    projection writes them (each entry's nano floor split in whole and nanos). Returns it."""
    program = new_id("prog")
    zone = SHANGHAI
    days: dict[int, list[int]] = {}
    with tally.database.transaction() as cur:
        cur.execute(
            "INSERT INTO rm_revenue_programs (program_id, program_key, currency, time_zone)"
            " VALUES (?, ?, ?, ?)",
            (program, new_id("key"), "EUR", ZONE),
        )
        cur.execute(
            "INSERT INTO rm_revenue_rates (program_id, position, recorded_at, point_value_minor,"
            " rate_ppm) VALUES (?, 1, ?, 1, ?)",
            (program, micros(DAY1 - timedelta(days=30)), rate_ppm),
        )
        for position, e in enumerate(entries, start=2):
            cur.execute(
                "INSERT INTO rm_revenue_entries (program_id, position, recorded_at, issued,"
                " redeemed, purchases_minor, allocated_num, allocated_den)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    program,
                    position,
                    micros(e.at),
                    e.issued,
                    e.redeemed,
                    e.purchases,
                    str(e.allocated.numerator),
                    str(e.allocated.denominator),
                ),
            )
            sums = days.setdefault(local_day(e.at, zone), [0] * 6)
            nanos = nano_floor(e.allocated)
            for i, v in enumerate(
                (e.issued, e.redeemed, e.purchases, nanos // NANOS, nanos % NANOS, 1)
            ):
                sums[i] += v
        for day, sums in days.items():
            _daily(cur, program, day, sums)
    return program


def _daily(cur: Cursor, program: str, day: int, sums: Sequence[int]) -> None:
    cur.execute(
        "INSERT INTO rm_revenue_daily (program_id, day, issued, redeemed, purchases_minor,"
        " allocated_whole, allocated_nanos, entries) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (program, day, *sums),
    )


A = Fraction(1, 4) - Fraction(1, 10**10)
B = Fraction(1, 4) + Fraction(9, 10**10)


def figures(report: Any) -> tuple[int, int, int]:
    return (
        report.allocated_minor,
        report.revenue_recognised_minor,
        report.contract_liability_minor,
    )


def test_undecided_daily_sums_are_summed_exactly(scratch: Tally) -> None:
    program = craft(
        scratch,
        [
            Entry(DAY1, A, issued=10, purchases=5),
            Entry(DAY1 + timedelta(hours=1), B, issued=10, purchases=5),
        ],
    )
    got = RevenueQueries(scratch.database).deferred_revenue(program, None, None)
    assert figures(got) == (1, 0, 1)  # the floors alone (0.499999999) would say 0
    assert (got.points_issued, got.purchases_minor, got.currency) == (20, 10, "EUR")
    # Redeemed in full: the recognised share is the same undecided range, summed exactly.
    program = craft(
        scratch,
        [
            Entry(DAY1, A, issued=1, purchases=5),
            Entry(DAY1 + timedelta(hours=1), B, issued=1, purchases=5),
            Entry(DAY1 + timedelta(hours=2), Fraction(0), redeemed=2),
        ],
    )
    got = RevenueQueries(scratch.database).deferred_revenue(program, None, None)
    assert figures(got) == (1, 1, 0)
    assert (got.points_redeemed, got.points_expected_to_be_redeemed) == (2, 2)


def test_the_exact_fallback_stops_at_as_of(scratch: Tally) -> None:
    """Both entries on day 1, as_of on day 2; an entry after as_of (on day 2, and one on a
    later day) must not be summed in, nor its points counted."""
    as_of = DAY2 + timedelta(hours=3)
    program = craft(
        scratch,
        [
            Entry(DAY1, A, issued=10),
            Entry(DAY1 + timedelta(minutes=5), B, issued=10),
            Entry(as_of + timedelta(microseconds=1), Fraction(100), issued=1_000),
            Entry(DAY2 + timedelta(days=2), Fraction(50), issued=500),
        ],
    )
    queries = RevenueQueries(scratch.database)
    got = queries.deferred_revenue(program, as_of, None)
    assert figures(got) == (1, 0, 1)
    assert got.points_issued == 20
    everything = queries.deferred_revenue(program, None, None)
    assert everything.allocated_minor == 151  # 150.5000000008
    assert everything.points_issued == 1_520


def test_a_part_day_entry_with_an_undecided_day_before(scratch: Tally) -> None:
    """One floor from day 1's sums, the as_of day's entry exact: 0.249999999 + 0.2500000009
    with one nano of error straddles 1/2; the exact sum is over it. as_of is inclusive."""
    program = craft(
        scratch,
        [
            Entry(DAY1, A, issued=10),
            Entry(DAY2, B, issued=10),
            Entry(DAY2 + timedelta(hours=1), Fraction(7), issued=70),
        ],
    )
    queries = RevenueQueries(scratch.database)
    got = queries.deferred_revenue(program, DAY2, None)  # DAY2's own entry counts
    assert figures(got) == (1, 0, 1)
    assert got.points_issued == 20
    before = queries.deferred_revenue(program, DAY2 - timedelta(microseconds=1), None)
    assert (before.allocated_minor, before.points_issued) == (0, 10)


def test_an_undecided_sum_with_the_estimate_given(scratch: Tally) -> None:
    """The rate asked for is the one used in the exact sum too: half of 20 expected, 10
    redeemed: the whole allocation (0.5000000008) is recognised, and rounds to 1."""
    program = craft(
        scratch,
        [
            Entry(DAY1, A, issued=10),
            Entry(DAY1 + timedelta(seconds=1), B, issued=10),
            Entry(DAY1 + timedelta(seconds=2), Fraction(0), redeemed=10),
        ],
        rate_ppm=PPM,
    )
    got = RevenueQueries(scratch.database).deferred_revenue(program, None, 500_000)
    assert figures(got) == (1, 1, 0)
    assert got.expected_redemption_rate_ppm == 500_000
    assert got.points_expected_to_be_redeemed == 10


def test_decided_daily_sums_are_the_answer(scratch: Tally) -> None:
    """Floors 0.25 + 0.249999998 with two nanos of error end exactly at 1/2: decided, 0."""
    program = craft(
        scratch,
        [
            Entry(DAY1, Fraction(1, 4), issued=10),
            Entry(DAY1 + timedelta(seconds=1), Fraction(1, 4) - 2 * NANO, issued=10),
        ],
    )
    got = RevenueQueries(scratch.database).deferred_revenue(program, None, None)
    assert figures(got) == (0, 0, 0)
    # And the decided path reads the per-day sums: a day with sums but no entries counts.
    program = craft(scratch, [])
    with scratch.database.transaction() as cur:
        _daily(cur, program, local_day(DAY1, SHANGHAI), [4, 0, 9, 3, 600_000_000, 1])
    got = RevenueQueries(scratch.database).deferred_revenue(program, None, None)
    assert (got.allocated_minor, got.points_issued, got.purchases_minor) == (4, 4, 9)


# ---------------------------------------------------------------------- a batch rolled back


class CrashOnce(RevenueProjection):
    """Writes its batch, then dies before it commits, the first time only."""

    crashed = False

    def process(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]]) -> None:
        super().process(cur, batch_events)
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("simulated crash mid-batch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_programme_created_in_a_batch_that_rolled_back_keeps_its_rates(backend: str) -> None:
    """The runner keeps its projection after a failed batch and runs the batch again. The
    programme's first rates must be written on the second run as on the first: otherwise
    the report falls back to a rate of 100%, and a restarted projection (which loads the
    rates from its table) cannot allocate the next earn and stops for good."""
    with open_tally(backend) as tally:
        app = tally.app
        settings = ProgramSettings(
            "P", "EUR", point_value_minor=1, expected_redemption_rate_ppm=500_000
        )
        app.create_program(c.CreateProgram(program_id="p", request_id="p", settings=settings))
        app.execute(c.EnrollMember(program_id="p", member_id="m", request_id="m"))
        app.execute(
            c.EarnPoints(
                program_id="p", member_id="m", request_id="e1", points=100, purchase_minor=950
            )
        )
        runner = ProjectionRunner(
            tally.database,
            app.recorder,
            app.mapper.to_domain_event,
            CrashOnce(tally.database.dialect),
        )
        with pytest.raises(RuntimeError, match="simulated crash"):
            runner.run_until_caught_up()
        runner.run_until_caught_up()  # as the runner's loop does after an error

        with tally.database.read() as cur:
            cur.execute("SELECT rate_ppm FROM rm_revenue_rates WHERE program_id = 'p'")
            assert [int(r[0]) for r in cur.fetchall()] == [500_000]
        got = RevenueQueries(tally.database).deferred_revenue("p", None, None)
        assert got.expected_redemption_rate_ppm == 500_000
        assert (got.allocated_minor, got.points_expected_to_be_redeemed) == (48, 50)  # 47.5

        # A restart: a new projection instance, the rates from the table.
        app.execute(
            c.EarnPoints(
                program_id="p", member_id="m", request_id="e2", points=100, purchase_minor=950
            )
        )
        ProjectionRunner(
            tally.database,
            app.recorder,
            app.mapper.to_domain_event,
            RevenueProjection(tally.database.dialect),
        ).run_until_caught_up()
        after = RevenueQueries(tally.database).deferred_revenue("p", None, None)
        assert (after.allocated_minor, after.points_issued) == (95, 200)
