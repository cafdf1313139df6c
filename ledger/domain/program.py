"""The Program aggregate: one merchant's loyalty scheme and the policies it sets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Transcoding

from ledger.domain.ids import program_id_key
from ledger.domain.insights import InsightSettings


class ExpiryKind(StrEnum):
    NEVER = "NEVER"
    ROLLING_DAYS = "ROLLING_DAYS"
    END_OF_YEAR_AFTER_YEARS = "END_OF_YEAR_AFTER_YEARS"


class StoredValueSplit(StrEnum):
    PROPORTIONAL = "PROPORTIONAL"
    CASH_FIRST = "CASH_FIRST"
    BONUS_FIRST = "BONUS_FIRST"


class CashOutPolicy(StrEnum):
    """What a cash-out (the reversal of a TopUp) pays back."""

    # The unspent cash; the top-up's remaining bonus lapses.
    FORFEIT_REMAINING_BONUS = "FORFEIT_REMAINING_BONUS"
    # The unspent cash less the bonus already spent from that top-up (the usual clause of
    # Chinese prepaid-card agreements); the remaining bonus lapses.
    DEDUCT_SPENT_BONUS = "DEDUCT_SPENT_BONUS"


@dataclass(frozen=True)
class ExpiryPolicy:
    kind: ExpiryKind = ExpiryKind.NEVER
    days: int = 0
    years: int = 0

    def expires_at(self, occurred_at: datetime, time_zone: str) -> datetime | None:
        """When points earned at `occurred_at` expire: the instant they stop being spendable.

        ROLLING_DAYS: exactly N x 24 hours after occurred_at (decision 21), the same instant
        in every time zone; across a DST change the local clock reads an hour earlier or
        later (as docs/reports.md and decision 19 describe the forecast of such lots).
        END_OF_YEAR_AFTER_YEARS: points earned in local year Y (in `time_zone`) expire at
        the first instant of 1 January Y+N+1, local time (the end of year Y+N). Fixed in
        each earn's event, so a change of the policy applies only to earns recorded after
        it."""
        if self.kind is ExpiryKind.ROLLING_DAYS:
            return occurred_at + timedelta(days=self.days)
        if self.kind is ExpiryKind.END_OF_YEAR_AFTER_YEARS:
            zone = ZoneInfo(time_zone)
            local_year = occurred_at.astimezone(zone).year
            # The end of year Y is the first instant of 1 January Y+1, local time.
            return datetime(local_year + self.years + 1, 1, 1, tzinfo=zone)
        return None


@dataclass(frozen=True)
class TierRule:
    code: str
    name: str
    threshold: int


@dataclass(frozen=True)
class TopUpBonusStep:
    """A step of the top-up promotion (充100送20): a top-up of at least `min_cash_minor`
    is granted `bonus_minor` plus `bonus_ppm` parts per million of its cash (rounded down)."""

    min_cash_minor: int
    bonus_minor: int = 0
    bonus_ppm: int = 0

    def bonus_for(self, cash_minor: int) -> int:
        return self.bonus_minor + cash_minor * self.bonus_ppm // 1_000_000


@dataclass(frozen=True)
class PointsConversion:
    """ConvertPoints' rate: `points` points become `value_minor` of stored-value bonus."""

    points: int
    value_minor: int


@dataclass(frozen=True)
class TierStanding:
    tier_code: str
    next_tier_code: str
    points_to_next_tier: int


DEFAULT_TIER_WINDOW_DAYS = 365


def tier_standing(tiers: tuple[TierRule, ...], qualifying_points: int) -> TierStanding:
    """The highest tier of this ladder whose threshold is met, and how far the next one is."""
    ladder = sorted(tiers, key=lambda t: t.threshold)
    current = ""
    for tier in ladder:
        if qualifying_points >= tier.threshold:
            current = tier.code
        else:
            return TierStanding(current, tier.code, tier.threshold - qualifying_points)
    return TierStanding(current, "", 0)


@dataclass(frozen=True)
class ProgramSettings:
    display_name: str
    currency: str
    time_zone: str = "UTC"
    point_value_minor: int = 0
    expiry_policy: ExpiryPolicy = field(default_factory=ExpiryPolicy)
    tiers: tuple[TierRule, ...] = ()
    tier_window_days: int = DEFAULT_TIER_WINDOW_DAYS
    stored_value_split: StoredValueSplit = StoredValueSplit.PROPORTIONAL
    expected_redemption_rate_ppm: int = 1_000_000
    top_up_bonus: tuple[TopUpBonusStep, ...] = ()
    points_conversion: PointsConversion | None = None
    cash_out_policy: CashOutPolicy = CashOutPolicy.FORFEIT_REMAINING_BONUS
    # The thresholds member insights are read with (InsightsService, docs/insights.md).
    insights: InsightSettings = field(default_factory=InsightSettings)

    def top_up_step(self, cash_minor: int) -> TopUpBonusStep | None:
        """The promotion step a top-up of `cash_minor` gets: the highest one it meets."""
        met = [s for s in self.top_up_bonus if s.min_cash_minor <= cash_minor]
        return max(met, key=lambda s: s.min_cash_minor, default=None)

    def qualifies_until(self, occurred_at: datetime) -> datetime:
        """The last instant points earned at `occurred_at` count toward the tier, under
        this window: fixed when the earn is recorded, so a later change of the window
        applies only to earns recorded after it."""
        return occurred_at + timedelta(days=self.tier_window_days)

    def standing(self, qualifying_points: int) -> TierStanding:
        """The highest tier whose threshold is met, and how far the next one is."""
        return tier_standing(self.tiers, qualifying_points)


class ProgramSettingsAsDict(Transcoding):
    type = ProgramSettings
    name = "program_settings"

    def encode(self, obj: ProgramSettings) -> dict[str, Any]:
        data = asdict(obj)
        data["expiry_policy"]["kind"] = obj.expiry_policy.kind.value
        data["stored_value_split"] = obj.stored_value_split.value
        data["tiers"] = [asdict(t) for t in obj.tiers]
        data["top_up_bonus"] = [asdict(t) for t in obj.top_up_bonus]
        data["cash_out_policy"] = obj.cash_out_policy.value
        return data

    def decode(self, data: dict[str, Any]) -> ProgramSettings:
        policy = data["expiry_policy"]
        return ProgramSettings(
            display_name=data["display_name"],
            currency=data["currency"],
            time_zone=data["time_zone"],
            point_value_minor=data["point_value_minor"],
            expiry_policy=ExpiryPolicy(ExpiryKind(policy["kind"]), policy["days"], policy["years"]),
            tiers=tuple(TierRule(**t) for t in data["tiers"]),
            tier_window_days=data["tier_window_days"],
            stored_value_split=StoredValueSplit(data["stored_value_split"]),
            expected_redemption_rate_ppm=data["expected_redemption_rate_ppm"],
            # Settings recorded before stored value existed have none of these.
            top_up_bonus=tuple(TopUpBonusStep(**t) for t in data.get("top_up_bonus", ())),
            points_conversion=(
                PointsConversion(**conversion)
                if (conversion := data.get("points_conversion"))
                else None
            ),
            cash_out_policy=CashOutPolicy(
                data.get("cash_out_policy", CashOutPolicy.FORFEIT_REMAINING_BONUS.value)
            ),
            # Settings recorded before insights existed: the defaults.
            insights=InsightSettings(**data.get("insights", {})),
        )


class Program(Aggregate):
    """A loyalty programme. Changes apply to transactions recorded after them. When it was
    last changed is the library's `modified_on` (the newest event's timestamp): an attribute
    set while an event is applied would see the previous event's."""

    @staticmethod
    def create_id(program_id: str) -> UUID:
        return program_id_key(program_id)

    @event("ProgramCreated")
    def __init__(self, program_id: str, settings: ProgramSettings, transaction_id: str) -> None:
        self.program_id = program_id
        self.settings = settings

    def update(self, changes: dict[str, Any], transaction_id: str) -> None:
        """Apply `changes` (field name -> new value of ProgramSettings)."""
        new_settings = replace(self.settings, **changes)
        self._updated(settings=new_settings, transaction_id=transaction_id)

    @event("ProgramUpdated")
    def _updated(self, settings: ProgramSettings, transaction_id: str) -> None:
        self.settings = settings
