"""What each command answers besides the account: one small type per command.

A result is recorded with the request (its fields as JSON, by the application's transcoder)
and rebuilt from that record for an idempotent replay, so its fields are plain values:
ints, strings, datetimes and allocations (lot id -> points).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

Allocation = dict[str, int]


@dataclass(frozen=True)
class Result:
    """Base of the command-specific results."""

    def to_record(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class EarnResult(Result):
    lot_id: str
    debt_repaid: int


@dataclass(frozen=True)
class RedeemResult(Result):
    consumed: Allocation


@dataclass(frozen=True)
class HoldResult(Result):
    hold_id: str
    expires_at: datetime


@dataclass(frozen=True)
class CaptureResult(Result):
    consumed: Allocation
    points_captured: int
    points_released: int


@dataclass(frozen=True)
class ReleaseResult(Result):
    points_released: int


@dataclass(frozen=True)
class ReverseResult(Result):
    points_reversed: int
    debt_added: int
    reverses_transaction_id: str
    # Stored value (0 for a points reversal): see ledger.domain.reversals.Reversal.
    cash_minor: int = 0
    bonus_minor: int = 0
    refunded_cash_minor: int = 0
    forfeited_bonus_minor: int = 0
    bonus_deducted_minor: int = 0
    value_minor: int = 0
    # An Earn reversal: the purchase money refunded (records made before it: 0).
    refunded_purchase_minor: int = 0


@dataclass(frozen=True)
class TopUpResult(Result):
    cash_minor: int
    bonus_minor: int  # as granted: the till's, or the program's schedule's
    # The schedule step it came from (its min_cash_minor); None: the till named the bonus.
    bonus_step_min_cash: int | None


@dataclass(frozen=True)
class SpendResult(Result):
    cash_minor: int
    bonus_minor: int


@dataclass(frozen=True)
class ConvertResult(Result):
    value_minor: int
    consumed: Allocation


@dataclass(frozen=True)
class ExpiryResult(Result):
    expired_points: int
    lots_expired: int
    accounts_touched: int = 0
