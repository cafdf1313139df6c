"""Breakage per earn cohort: the pure functions of ledger/domain/breakage.py (a cohort's
figures, when it is closed, the share of closed cohorts' points redeemed, the observed and
projected rates and their rounding to ppm)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.breakage import CohortFigures, CohortRates, rates, redeemed_share_ppm
from ledger.domain.deferred_revenue import PPM, round_half_up

# ---------------------------------------------------------------------- a cohort's figures


def test_outstanding_is_issued_less_what_left() -> None:
    c = CohortFigures(issued=250, reversed=50, redeemed=120, expired=0)
    assert c.outstanding == 80
    assert c.net_issued == 200
    assert not c.closed


def test_figures_add_up_field_by_field() -> None:
    a = CohortFigures(10, 1, 2, 3)
    b = CohortFigures(100, 20, 30, 40)
    assert a + b == CohortFigures(110, 21, 32, 43)
    assert CohortFigures() + a == a
    assert (a + b).outstanding == a.outstanding + b.outstanding


def test_debt_is_negative_outstanding() -> None:
    # 100 earned, all redeemed, then the earn reversed in full: the member owes 100.
    c = CohortFigures(issued=100, reversed=100, redeemed=100)
    assert c.outstanding == -100
    assert c.net_issued == 0
    assert not c.closed


@pytest.mark.parametrize(
    ("figures", "closed"),
    [
        (CohortFigures(160, 0, 60, 100), True),  # all used or lost
        (CohortFigures(100, 40, 60, 0), True),  # reversed in part, the rest redeemed
        (CohortFigures(100, 0, 0, 100), True),  # all expired
        (CohortFigures(100, 0, 99, 0), False),  # one point left
        (CohortFigures(100, 0, 101, 0), False),  # owes one (outstanding -1)
        (CohortFigures(), False),  # nothing issued
        (CohortFigures(50, 50, 0, 0), False),  # all reversed: nothing to have a rate of
        (CohortFigures(0, 10, 0, -10), False),  # nets to 0 but net issued is negative
    ],
)
def test_closed_when_nothing_is_left_of_something_issued(
    figures: CohortFigures, closed: bool
) -> None:
    assert figures.closed is closed


# ---------------------------------------------------------------------- closed cohorts' share


def test_redeemed_share_of_what_left_the_closed_cohorts() -> None:
    closed = [CohortFigures(160, 0, 60, 100)]
    assert redeemed_share_ppm(closed, 900_000) == 375_000  # 60 of 160
    # Reversed points are neither redeemed nor lost: they do not count.
    closed = [CohortFigures(160, 0, 60, 100), CohortFigures(100, 60, 40, 0)]
    assert redeemed_share_ppm(closed, 900_000) == 500_000  # 100 of 200


def test_the_estimate_while_no_cohort_is_closed() -> None:
    assert redeemed_share_ppm([], 900_000) == 900_000
    # Closed cohorts whose points all went back by reversal left nothing to share.
    assert redeemed_share_ppm([CohortFigures(0, 0, 0, 0)], 123_456) == 123_456


def test_the_share_is_rounded_half_up_to_the_ppm() -> None:
    assert redeemed_share_ppm([CohortFigures(3, 0, 1, 2)], 0) == 333_333  # 333,333.33
    assert redeemed_share_ppm([CohortFigures(3, 0, 2, 1)], 0) == 666_667  # 666,666.67
    # Exactly half a ppm: 1 of 2,000,000 is 0.5 ppm, up to 1.
    assert redeemed_share_ppm([CohortFigures(2_000_000, 0, 1, 1_999_999)], 0) == 1
    # Just under half a ppm: 1 of 2,000,001, down to 0.
    assert redeemed_share_ppm([CohortFigures(2_000_001, 0, 1, 2_000_000)], 0) == 0
    # 3 of 2,000,000 is 1.5 ppm: 2.
    assert redeemed_share_ppm([CohortFigures(2_000_000, 0, 3, 1_999_997)], 0) == 2
    assert redeemed_share_ppm([CohortFigures(7, 0, 7, 0)], 0) == PPM


# ---------------------------------------------------------------------- rates


def test_a_closed_cohorts_rate_is_final() -> None:
    c = CohortFigures(160, 0, 60, 100)
    assert rates(c, 900_000) == CohortRates(375_000, 375_000)
    # Whatever the share of the other cohorts.
    assert rates(c, 0) == rates(c, PPM) == CohortRates(375_000, 375_000)


def test_an_open_cohort_projects_its_outstanding_at_the_share() -> None:
    # The behaviour test's 2023: 250 issued, 50 reversed, 120 redeemed, 80 outstanding;
    # (120 + 80 x 0.375) / 200 = 0.75.
    c = CohortFigures(250, 50, 120, 0)
    assert rates(c, 375_000) == CohortRates(600_000, 750_000)
    # Nothing redeemed yet: the share itself.
    assert rates(CohortFigures(10, 0, 0, 0), 375_000) == CohortRates(0, 375_000)
    # Half redeemed, estimate 90%: 0.5 + 0.5 x 0.9.
    assert rates(CohortFigures(100, 0, 50, 0), 900_000) == CohortRates(500_000, 950_000)


def test_expired_points_project_nothing() -> None:
    # 100 issued, 30 redeemed, 50 expired, 20 left at 50%: (30 + 10) / 100.
    assert rates(CohortFigures(100, 0, 30, 50), 500_000) == CohortRates(300_000, 400_000)


def test_a_cohort_with_nothing_net_issued_has_no_rate() -> None:
    assert rates(CohortFigures(), 900_000) == CohortRates(0, 0)
    assert rates(CohortFigures(50, 50, 0, 0), 900_000) == CohortRates(0, 0)
    assert rates(CohortFigures(100, 100, 100, 0), 900_000) == CohortRates(0, 0)  # debt


def test_debt_projects_nothing_and_the_projection_is_at_most_all() -> None:
    """100 issued, 100 redeemed, 50 of the earn reversed after: 50 owed. Observed is what it
    is (200%); the projection counts no negative outstanding and stops at 100%."""
    c = CohortFigures(issued=100, reversed=50, redeemed=100)
    assert c.outstanding == -50
    assert rates(c, 900_000) == CohortRates(2_000_000, PPM)
    # Less than all redeemed, some owed: (40 + 0) / 50, not (40 - 10 x share) / 50.
    c = CohortFigures(issued=100, reversed=50, redeemed=40, expired=20)
    assert c.outstanding == -10
    assert rates(c, 900_000) == CohortRates(800_000, 800_000)


def test_the_rates_are_rounded_half_up_to_the_ppm() -> None:
    # Observed 1 / 3 = 333,333.33 -> 333,333; projected (1 + 2 x 0.5) / 3 = 666,666.67.
    assert rates(CohortFigures(3, 0, 1, 0), 500_000) == CohortRates(333_333, 666_667)
    # Observed exactly half a ppm: 1 of 2,000,000 -> 1.
    assert rates(CohortFigures(2_000_000, 0, 1, 0), 0) == CohortRates(1, 1)
    # Projected exactly at a half: nothing redeemed, 1 of 2,000,000 outstanding, all of it
    # expected to be redeemed: 0.5 ppm -> 1; 1 of 2,000,001: 0.49999975 ppm -> 0.
    assert rates(CohortFigures(2_000_000, 0, 0, 1_999_999), PPM) == CohortRates(0, 1)
    assert rates(CohortFigures(2_000_001, 0, 0, 2_000_000), PPM) == CohortRates(0, 0)
    # 1 outstanding of 2 at 1 ppm: 0.5 ppm -> 1.
    assert rates(CohortFigures(2, 0, 0, 1), 1) == CohortRates(0, 1)


figures = st.builds(
    CohortFigures,
    issued=st.integers(0, 10**6),
    reversed=st.integers(0, 10**6),
    redeemed=st.integers(0, 10**6),
    expired=st.integers(0, 10**6),
)


@given(figures, st.integers(0, PPM))
def test_rates_are_the_exact_ratios_rounded_once(c: CohortFigures, share: int) -> None:
    got = rates(c, share)
    if c.net_issued <= 0:
        assert got == CohortRates(0, 0)
        return
    observed = round_half_up(Fraction(c.redeemed * PPM, c.net_issued))
    assert got.observed_ppm == observed
    if c.closed:
        assert got.projected_ppm == observed
        return
    projected = Fraction(c.redeemed * PPM + max(c.outstanding, 0) * share, c.net_issued)
    assert got.projected_ppm == min(max(round_half_up(projected), 0), PPM)
    assert 0 <= got.projected_ppm <= PPM


@given(st.lists(figures, max_size=6), st.integers(0, PPM))
def test_the_share_is_the_exact_ratio_rounded_once(
    closed: list[CohortFigures], fallback: int
) -> None:
    redeemed = sum(c.redeemed for c in closed)
    gone = redeemed + sum(c.expired for c in closed)
    expected = round_half_up(Fraction(redeemed * PPM, gone)) if gone > 0 else fallback
    assert redeemed_share_ppm(closed, fallback) == expected
