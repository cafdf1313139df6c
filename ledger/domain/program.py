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


class ExpiryKind(StrEnum):
    NEVER = "NEVER"
    ROLLING_DAYS = "ROLLING_DAYS"
    END_OF_YEAR_AFTER_YEARS = "END_OF_YEAR_AFTER_YEARS"


class StoredValueSplit(StrEnum):
    PROPORTIONAL = "PROPORTIONAL"
    CASH_FIRST = "CASH_FIRST"
    BONUS_FIRST = "BONUS_FIRST"


@dataclass(frozen=True)
class ExpiryPolicy:
    kind: ExpiryKind = ExpiryKind.NEVER
    days: int = 0
    years: int = 0

    def expires_at(self, occurred_at: datetime, time_zone: str) -> datetime | None:
        """When points earned at `occurred_at` expire: the instant they stop being spendable."""
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
class TierStanding:
    tier_code: str
    next_tier_code: str
    points_to_next_tier: int


DEFAULT_TIER_WINDOW_DAYS = 365


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

    def qualifies_until(self, occurred_at: datetime) -> datetime:
        """The last instant points earned at `occurred_at` count toward the tier, under
        this window: fixed when the earn is recorded, so a later change of the window
        applies only to earns recorded after it."""
        return occurred_at + timedelta(days=self.tier_window_days)

    def standing(self, qualifying_points: int) -> TierStanding:
        """The highest tier whose threshold is met, and how far the next one is."""
        ladder = sorted(self.tiers, key=lambda t: t.threshold)
        current = ""
        for tier in ladder:
            if qualifying_points >= tier.threshold:
                current = tier.code
            else:
                return TierStanding(current, tier.code, tier.threshold - qualifying_points)
        return TierStanding(current, "", 0)


class ProgramSettingsAsDict(Transcoding):
    type = ProgramSettings
    name = "program_settings"

    def encode(self, obj: ProgramSettings) -> dict[str, Any]:
        data = asdict(obj)
        data["expiry_policy"]["kind"] = obj.expiry_policy.kind.value
        data["stored_value_split"] = obj.stored_value_split.value
        data["tiers"] = [asdict(t) for t in obj.tiers]
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
        )


class Program(Aggregate):
    """A loyalty programme. Changes apply to transactions recorded after them."""

    @staticmethod
    def create_id(program_id: str) -> UUID:
        return program_id_key(program_id)

    @event("ProgramCreated")
    def __init__(self, program_id: str, settings: ProgramSettings, transaction_id: str) -> None:
        self.program_id = program_id
        self.settings = settings
        self.updated_at = self.created_on

    def update(self, changes: dict[str, Any], transaction_id: str) -> None:
        """Apply `changes` (field name -> new value of ProgramSettings)."""
        new_settings = replace(self.settings, **changes)
        self._updated(settings=new_settings, transaction_id=transaction_id)

    @event("ProgramUpdated")
    def _updated(self, settings: ProgramSettings, transaction_id: str) -> None:
        self.settings = settings
        self.updated_at = self.modified_on
