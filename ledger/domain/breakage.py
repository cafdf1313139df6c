"""Breakage from the programme's own history: per earn cohort, what became of the points
issued (redeemed, expired, reversed, still outstanding), the redemption rate of cohorts that
are done, and a projection for those that are not. It is what finance sets
`expected_redemption_rate_ppm` from (docs/reports.md).

Points are followed lot by lot: a lot belongs to the cohort of its earn (or positive
adjustment); a redemption counts against the cohorts of the lots it consumed, an expiry
against the lot's. A reversed earn counts in its own cohort, whichever lots its points were
taken from; debt it leaves is negative outstanding there, and points that later repay that
debt are not moved between cohorts. So the cohorts add up to the programme's points
outstanding less its debt, exactly; one cohort's figure can lean on a neighbour's when a
reversal took points in lieu.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.domain.deferred_revenue import PPM


@dataclass(frozen=True)
class CohortFigures:
    issued: int = 0
    reversed: int = 0
    redeemed: int = 0
    expired: int = 0

    def __add__(self, other: CohortFigures) -> CohortFigures:
        return CohortFigures(
            self.issued + other.issued,
            self.reversed + other.reversed,
            self.redeemed + other.redeemed,
            self.expired + other.expired,
        )

    @property
    def outstanding(self) -> int:
        return self.issued - self.reversed - self.redeemed - self.expired

    @property
    def net_issued(self) -> int:
        return self.issued - self.reversed

    @property
    def closed(self) -> bool:
        """Nothing left to redeem or to owe: the cohort's rate is final."""
        return self.outstanding == 0 and self.net_issued > 0


@dataclass(frozen=True)
class CohortRates:
    observed_ppm: int
    projected_ppm: int


def redeemed_share_ppm(closed: list[CohortFigures], fallback_ppm: int) -> int:
    """Of the points that left the closed cohorts used or lost (redeemed or expired), the
    share redeemed; `fallback_ppm` (the programme's estimate) while no cohort is closed."""
    redeemed = sum(c.redeemed for c in closed)
    gone = redeemed + sum(c.expired for c in closed)
    return _ppm(redeemed, gone) if gone > 0 else fallback_ppm


def rates(cohort: CohortFigures, share_ppm: int) -> CohortRates:
    """Observed: redeemed / net issued. Projected: as if the points still outstanding end
    redeemed in the share that the closed cohorts' points did (debt projects nothing)."""
    if cohort.net_issued <= 0:
        return CohortRates(0, 0)
    observed = _ppm(cohort.redeemed, cohort.net_issued)
    if cohort.closed:
        return CohortRates(observed, observed)
    projected_points = cohort.redeemed * PPM + max(cohort.outstanding, 0) * share_ppm
    projected = (2 * projected_points + cohort.net_issued) // (2 * cohort.net_issued)
    return CohortRates(observed, min(max(projected, 0), PPM))


def _ppm(part: int, whole: int) -> int:
    """part / whole in ppm, rounded half up."""
    return (2 * part * PPM + whole) // (2 * whole)
