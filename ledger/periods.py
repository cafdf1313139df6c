"""Calendar periods in a programme's time zone (month, quarter, year): where one starts, its
label, and the ends of those in a range. Breakage groups earn cohorts by them, custody
reports at their ends."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

MAX_PERIODS = 400


class Period(enum.Enum):
    MONTH = 1
    QUARTER = 3
    YEAR = 12

    @property
    def months(self) -> int:
        return self.value


def period_start(period: Period, day: date) -> date:
    """The first day of the period holding `day`."""
    month = (day.month - 1) // period.months * period.months + 1
    return date(day.year, month, 1)


def period_label(period: Period, start: date) -> str:
    if period is Period.MONTH:
        return f"{start.year:04d}-{start.month:02d}"
    if period is Period.QUARTER:
        return f"{start.year:04d}-Q{(start.month - 1) // 3 + 1}"
    return f"{start.year:04d}"


def period_ends(
    period: Period, zone: ZoneInfo, since: datetime, until: datetime, limit: int = MAX_PERIODS
) -> list[tuple[str, datetime]] | None:
    """(label, end) of every period ending in (since, until], in the programme's time zone:
    an end is the local midnight after the period's last day. None if more than `limit`."""
    local = since.astimezone(zone)
    # The period holding `since` (a since exactly at an end holds the period after it).
    start = period_start(period, local.date())
    ends: list[tuple[str, datetime]] = []
    while True:
        following = _add_months(start, period.months)
        if following is None:
            return ends
        end = datetime(following.year, following.month, 1, tzinfo=zone).astimezone(UTC)
        if end > until:
            return ends
        if len(ends) == limit:
            return None
        ends.append((period_label(period, start), end))
        start = following


def _add_months(start: date, months: int) -> date | None:
    index = start.year * 12 + start.month - 1 + months
    year, month = divmod(index, 12)
    if year > 9999:
        return None
    return date(year, month + 1, 1)
