"""Program policies: when points expire, and which tier a member stands in."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.application.views import ProgramView
from ledger.domain.program import (
    CashOutPolicy,
    ExpiryKind,
    ExpiryPolicy,
    PointsConversion,
    Program,
    ProgramSettings,
    ProgramSettingsAsDict,
    StoredValueSplit,
    TierRule,
    TierStanding,
    TopUpBonusStep,
)

SHANGHAI = "Asia/Shanghai"
NEW_YORK = "America/New_York"

# ------------------------------------------------------------------ ExpiryPolicy.expires_at


def test_never_expires() -> None:
    at = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
    assert ExpiryPolicy().expires_at(at, "UTC") is None
    assert ExpiryPolicy(ExpiryKind.NEVER, days=30, years=2).expires_at(at, SHANGHAI) is None


@pytest.mark.parametrize("days", [0, 1, 30, 365, 366])
def test_rolling_days_counts_whole_days_from_the_instant(days: int) -> None:
    at = datetime(2026, 2, 28, 23, 59, 59, 123456, tzinfo=UTC)
    policy = ExpiryPolicy(ExpiryKind.ROLLING_DAYS, days=days)
    expires = policy.expires_at(at, SHANGHAI)  # the zone does not matter for a rolling window
    assert expires == at + timedelta(days=days)
    assert expires is not None
    assert expires - at == timedelta(hours=24 * days)


def test_rolling_days_crosses_a_leap_day() -> None:
    at = datetime(2028, 2, 28, 12, tzinfo=UTC)
    policy = ExpiryPolicy(ExpiryKind.ROLLING_DAYS, days=2)
    assert policy.expires_at(at, "UTC") == datetime(2028, 3, 1, 12, tzinfo=UTC)


def test_end_of_year_uses_the_local_year_east_of_utc() -> None:
    # 2026-12-31T20:00Z is already 2027-01-01T04:00 in Shanghai (UTC+8).
    at = datetime(2026, 12, 31, 20, 0, tzinfo=UTC)
    policy = ExpiryPolicy(ExpiryKind.END_OF_YEAR_AFTER_YEARS, years=0)
    expires = policy.expires_at(at, SHANGHAI)
    assert expires == datetime(2028, 1, 1, tzinfo=ZoneInfo(SHANGHAI))
    assert expires == datetime(2027, 12, 31, 16, 0, tzinfo=UTC)
    # The same instant in UTC is still 2026.
    assert policy.expires_at(at, "UTC") == datetime(2027, 1, 1, tzinfo=UTC)


def test_end_of_year_uses_the_local_year_west_of_utc() -> None:
    # 2027-01-01T03:00Z is still 2026-12-31T22:00 in New York (UTC-5 in winter).
    at = datetime(2027, 1, 1, 3, 0, tzinfo=UTC)
    policy = ExpiryPolicy(ExpiryKind.END_OF_YEAR_AFTER_YEARS, years=1)
    expires = policy.expires_at(at, NEW_YORK)
    assert expires == datetime(2028, 1, 1, tzinfo=ZoneInfo(NEW_YORK))
    assert expires == datetime(2028, 1, 1, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize(("years", "year"), [(0, 2027), (1, 2028), (2, 2029), (5, 2032)])
def test_end_of_year_after_years(years: int, year: int) -> None:
    at = datetime(2026, 6, 15, 12, tzinfo=UTC)
    policy = ExpiryPolicy(ExpiryKind.END_OF_YEAR_AFTER_YEARS, years=years)
    assert policy.expires_at(at, "UTC") == datetime(year, 1, 1, tzinfo=UTC)


def test_end_of_year_first_and_last_local_instants_of_a_year() -> None:
    zone = ZoneInfo(SHANGHAI)
    policy = ExpiryPolicy(ExpiryKind.END_OF_YEAR_AFTER_YEARS, years=0)
    first = datetime(2026, 1, 1, 0, 0, tzinfo=zone)
    last = datetime(2027, 1, 1, tzinfo=zone) - timedelta(microseconds=1)
    end = datetime(2027, 1, 1, tzinfo=zone)
    assert policy.expires_at(first.astimezone(UTC), SHANGHAI) == end
    assert policy.expires_at(last.astimezone(UTC), SHANGHAI) == end
    # The end of the year is the first instant of the next one, so that instant is in 2027.
    assert policy.expires_at(end.astimezone(UTC), SHANGHAI) == datetime(2028, 1, 1, tzinfo=zone)


@given(
    at=st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2090, 12, 31),
        timezones=st.just(UTC),
    ),
    years=st.integers(0, 5),
    zone=st.sampled_from(["UTC", SHANGHAI, NEW_YORK, "Pacific/Kiritimati", "Pacific/Pago_Pago"]),
)
def test_end_of_year_is_always_a_local_new_year_after_the_earn(
    at: datetime, years: int, zone: str
) -> None:
    policy = ExpiryPolicy(ExpiryKind.END_OF_YEAR_AFTER_YEARS, years=years)
    expires = policy.expires_at(at, zone)
    assert expires is not None
    local = expires.astimezone(ZoneInfo(zone))
    assert (local.month, local.day, local.hour, local.minute, local.second) == (1, 1, 0, 0, 0)
    assert local.year == at.astimezone(ZoneInfo(zone)).year + years + 1
    assert expires > at


# ------------------------------------------------------------------ ProgramSettings.standing

BRONZE = TierRule("BRONZE", "Bronze", 0)
SILVER = TierRule("SILVER", "Silver", 500)
GOLD = TierRule("GOLD", "Gold", 2000)


def settings_with(*tiers: TierRule) -> ProgramSettings:
    return ProgramSettings(display_name="Shop", currency="EUR", tiers=tiers)


def test_no_tiers() -> None:
    settings = settings_with()
    assert settings.standing(0) == TierStanding("", "", 0)
    assert settings.standing(10_000) == TierStanding("", "", 0)


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        (0, TierStanding("BRONZE", "SILVER", 500)),
        (1, TierStanding("BRONZE", "SILVER", 499)),
        (499, TierStanding("BRONZE", "SILVER", 1)),
        (500, TierStanding("SILVER", "GOLD", 1500)),  # the threshold itself qualifies
        (1999, TierStanding("SILVER", "GOLD", 1)),
        (2000, TierStanding("GOLD", "", 0)),
        (10**12, TierStanding("GOLD", "", 0)),  # above the top tier
    ],
)
def test_standing_with_unsorted_tiers(points: int, expected: TierStanding) -> None:
    settings = settings_with(GOLD, BRONZE, SILVER)
    assert settings.standing(points) == expected


def test_below_the_lowest_tier() -> None:
    settings = settings_with(GOLD, SILVER)
    assert settings.standing(0) == TierStanding("", "SILVER", 500)
    assert settings.standing(120) == TierStanding("", "SILVER", 380)
    assert settings.standing(500) == TierStanding("SILVER", "GOLD", 1500)


def test_single_tier() -> None:
    settings = settings_with(SILVER)
    assert settings.standing(499) == TierStanding("", "SILVER", 1)
    assert settings.standing(500) == TierStanding("SILVER", "", 0)


@given(
    thresholds=st.lists(st.integers(0, 10_000), min_size=1, max_size=6, unique=True),
    points=st.integers(0, 12_000),
    order=st.randoms(use_true_random=False),
)
def test_standing_is_the_highest_tier_met(
    thresholds: list[int], points: int, order: random.Random
) -> None:
    tiers = [TierRule(f"T{t}", f"Tier {t}", t) for t in thresholds]
    order.shuffle(tiers)
    standing = settings_with(*tiers).standing(points)
    met = [t for t in thresholds if t <= points]
    unmet = [t for t in thresholds if t > points]
    assert standing.tier_code == (f"T{max(met)}" if met else "")
    if unmet:
        assert standing.next_tier_code == f"T{min(unmet)}"
        assert standing.points_to_next_tier == min(unmet) - points
        assert standing.points_to_next_tier > 0
    else:
        assert standing == TierStanding(standing.tier_code, "", 0)


# ------------------------------------------------------------------ settings transcoding


def test_settings_survive_the_transcoding() -> None:
    settings = ProgramSettings(
        display_name="Café Lumière",
        currency="CNY",
        time_zone=SHANGHAI,
        point_value_minor=5,
        expiry_policy=ExpiryPolicy(ExpiryKind.END_OF_YEAR_AFTER_YEARS, years=1),
        tiers=(GOLD, BRONZE),
        tier_window_days=180,
        stored_value_split=StoredValueSplit.BONUS_FIRST,
        expected_redemption_rate_ppm=750_000,
        top_up_bonus=(TopUpBonusStep(10_000, 1_000), TopUpBonusStep(50_000, 0, 200_000)),
        points_conversion=PointsConversion(10, 100),
        cash_out_policy=CashOutPolicy.DEDUCT_SPENT_BONUS,
    )
    transcoding = ProgramSettingsAsDict()
    assert transcoding.decode(transcoding.encode(settings)) == settings


def test_settings_recorded_before_stored_value_decode_with_its_defaults() -> None:
    transcoding = ProgramSettingsAsDict()
    data = transcoding.encode(ProgramSettings("Old", "EUR"))
    for added in ("top_up_bonus", "points_conversion", "cash_out_policy"):
        del data[added]
    old = transcoding.decode(data)
    assert old.top_up_bonus == ()
    assert old.points_conversion is None
    assert old.cash_out_policy is CashOutPolicy.FORFEIT_REMAINING_BONUS


def test_the_top_up_step_is_the_highest_met() -> None:
    settings = ProgramSettings(
        "P",
        "CNY",
        top_up_bonus=(TopUpBonusStep(50_000, 8_000), TopUpBonusStep(10_000, 1_000, 50_000)),
    )
    assert settings.top_up_step(9_999) is None
    step = settings.top_up_step(10_000)
    assert step == TopUpBonusStep(10_000, 1_000, 50_000)
    assert step.bonus_for(10_000) == 1_000 + 500  # fixed plus 5% of the cash, rounded down
    assert settings.top_up_step(49_999) == step
    assert settings.top_up_step(10**15) == TopUpBonusStep(50_000, 8_000)


def test_a_programs_update_time_is_its_newest_events() -> None:
    program = Program(program_id="p", settings=ProgramSettings("P", "EUR"), transaction_id="t")
    created = program.modified_on
    time.sleep(0.002)
    program.update({"display_name": "Q"}, "t2")
    view = ProgramView.of(program)
    assert view.created_at == created
    assert view.updated_at == program.modified_on > created
