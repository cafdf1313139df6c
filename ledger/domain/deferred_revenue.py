"""IFRS 15 / ASC 606 for loyalty points (IFRS 15 B39-B43, Illustrative Example 52): how a
purchase's price is split between the goods and the points it earns, and how much of the
points' share has become revenue. docs/accounting.md works the standard's example through.

Everything here is exact: allocations are fractions of a minor unit, summed as fractions
(or, when a read model sums millions of them, as floors in nano minor units with the error
bound carried along, see `Allocated`), and money is rounded once, half up, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

PPM = 1_000_000
NANOS = 1_000_000_000


def allocation(purchase_minor: int, points: int, point_value_minor: int, rate_ppm: int) -> Fraction:
    """The share of a purchase allocated to the points it earns, by relative stand-alone
    selling price: the goods' is the purchase; the points' is what they are worth to the
    member, points x point_value_minor x the share expected to be redeemed (the rate in
    force when the earn is recorded). purchase x points' / (purchase + points')."""
    points_price = Fraction(points * point_value_minor * rate_ppm, PPM)
    if purchase_minor <= 0 or points_price <= 0:
        return Fraction(0)
    return purchase_minor * points_price / (purchase_minor + points_price)


def round_half_up(value: Fraction) -> int:
    """To the nearest integer, halves away from minus infinity (the one rounding made)."""
    return int((value + Fraction(1, 2)).__floor__())


def nano_floor(value: Fraction) -> int:
    """`value` in nano minor units, rounded down: what the per-day sums add."""
    return (value.numerator * NANOS) // value.denominator


@dataclass(frozen=True)
class Allocated:
    """An allocation known either exactly or as [low, low + error) (per-day sums of nano
    floors: each floor is under one nano below its fraction, so `error` is the number of
    entries summed, in nanos)."""

    low: Fraction
    error: Fraction = Fraction(0)

    @property
    def exact(self) -> bool:
        return self.error == 0


@dataclass(frozen=True)
class DeferredRevenue:
    points_issued: int
    points_redeemed: int
    allocated_minor: int
    revenue_recognised_minor: int
    contract_liability_minor: int
    points_expected_to_be_redeemed: int


class Undecided(Exception):
    """The error bound of per-day sums straddles a rounding boundary: sum exactly."""


def recognise(
    allocated: Allocated, points_issued: int, points_redeemed: int, rate_ppm: int
) -> DeferredRevenue:
    """Revenue recognised cumulatively: allocated x redeemed / expected to be redeemed
    (issued x the estimate), at most all of it; liability = allocated - recognised. Raises
    Undecided when `allocated` is a range whose roundings differ."""
    expected = Fraction(points_issued * rate_ppm, PPM)
    if expected > 0:
        share = min(Fraction(max(points_redeemed, 0)) / expected, Fraction(1))
    else:
        share = Fraction(0)
    allocated_minor = _rounded(allocated.low, allocated.error)
    recognised_minor = _rounded(allocated.low * share, allocated.error * share)
    return DeferredRevenue(
        points_issued=points_issued,
        points_redeemed=points_redeemed,
        allocated_minor=allocated_minor,
        revenue_recognised_minor=recognised_minor,
        contract_liability_minor=allocated_minor - recognised_minor,
        points_expected_to_be_redeemed=round_half_up(expected),
    )


def _rounded(low: Fraction, error: Fraction) -> int:
    """round_half_up of a value in [low, low + error), if every value there rounds alike."""
    rounded = round_half_up(low)
    if error and low + error > rounded + Fraction(1, 2):
        raise Undecided
    return rounded
