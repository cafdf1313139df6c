"""Commands: what a caller asks the ledger to do (imperative names, validated input).

Each command knows its idempotency fingerprint: a SHA-256 over a canonical JSON encoding of
every field but `request_id`, taken before any defaulting (a missing occurred_at stays
missing), so a replay of the same request matches and a changed payload does not. A field
added after requests were recorded without it is left out while it has its "not given"
value (`_ADDED_LATER`): the replay of a request recorded before still matches its record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar

from ledger.application import results as r
from ledger.domain.ids import request_id_key
from ledger.domain.insights import InsightSettings
from ledger.domain.program import ProgramSettings

_PLAIN = frozenset({str, int, bool, type(None)})


def _canonical(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):  # the program's settings, their parts
        added = _ADDED_LATER.get(type(value), {})
        return {
            f.name: _canonical(v)
            for f in fields(value)
            if (v := getattr(value, f.name)) != added.get(f.name, _ABSENT)
        }
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    return value


@dataclass(frozen=True, kw_only=True)
class Command:
    name: ClassVar[str] = "Command"
    # Whether the command keeps an idempotency record. The server's own housekeeping
    # (sweeps) does not: it is idempotent by state, and nobody retries it by request_id.
    recorded: ClassVar[bool] = True
    # The type of what the command answers besides the account (None: nothing more).
    result_type: ClassVar[type[r.Result] | None] = None
    program_id: str
    request_id: str

    def fingerprint(self) -> str:
        # Keys in sorted order (the names are sorted once per class), as sort_keys would.
        added = _ADDED_LATER.get(type(self), {})
        payload = {
            name: self.name if name == "command" else _canonical(value)
            for name in _fingerprint_keys(type(self))
            if (value := getattr(self, name, None)) != added.get(name, _ABSENT)
        }
        encoded = json.dumps(payload, separators=(",", ":"))
        return hashlib.sha256(encoded.encode()).hexdigest()


_KEYS: dict[type[Command], tuple[str, ...]] = {}


def _fingerprint_keys(cls: type[Command]) -> tuple[str, ...]:
    keys = _KEYS.get(cls)
    if keys is None:
        names = [f.name for f in fields(cls) if f.name != "request_id"]
        keys = _KEYS[cls] = tuple(sorted([*names, "command"]))
    return keys


@dataclass(frozen=True)
class Notes:
    """What a command says about itself, carried into its events' provenance."""

    order_ref: str = ""
    reason: str = ""
    operator_id: str = ""
    reverses_transaction_id: str = ""


@dataclass(frozen=True, kw_only=True)
class AccountCommand(Command):
    member_id: str
    occurred_at: datetime | None = None
    store_id: str = ""

    def notes(self) -> Notes:
        return Notes()

    def new_transaction_id(self) -> str:
        """The id of the transaction this command makes: stable per (program, request_id)."""
        return str(request_id_key(self.program_id, self.request_id))


@dataclass(frozen=True, kw_only=True)
class CreateProgram(Command):
    name: ClassVar[str] = "CreateProgram"
    settings: ProgramSettings


@dataclass(frozen=True, kw_only=True)
class UpdateProgram(Command):
    name: ClassVar[str] = "UpdateProgram"
    # Field name of ProgramSettings -> new value; only these change.
    changes: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class EnrollMember(AccountCommand):
    name: ClassVar[str] = "EnrollMember"
    referrer_member_id: str = ""


@dataclass(frozen=True, kw_only=True)
class EarnPoints(AccountCommand):
    name: ClassVar[str] = "Earn"
    result_type: ClassVar[type[r.Result] | None] = r.EarnResult
    points: int
    purchase_minor: int = 0
    order_ref: str = ""
    reason: str = ""
    qualifying: bool = True
    expires_at: datetime | None = None

    def notes(self) -> Notes:
        return Notes(order_ref=self.order_ref, reason=self.reason)


@dataclass(frozen=True, kw_only=True)
class RedeemPoints(AccountCommand):
    name: ClassVar[str] = "Redeem"
    result_type: ClassVar[type[r.Result] | None] = r.RedeemResult
    points: int
    order_ref: str = ""
    reason: str = ""

    def notes(self) -> Notes:
        return Notes(order_ref=self.order_ref, reason=self.reason)


@dataclass(frozen=True, kw_only=True)
class HoldPoints(AccountCommand):
    name: ClassVar[str] = "Hold"
    result_type: ClassVar[type[r.Result] | None] = r.HoldResult
    points: int
    ttl_seconds: int
    order_ref: str = ""

    def notes(self) -> Notes:
        return Notes(order_ref=self.order_ref)


@dataclass(frozen=True, kw_only=True)
class CaptureHold(AccountCommand):
    name: ClassVar[str] = "CaptureHold"
    result_type: ClassVar[type[r.Result] | None] = r.CaptureResult
    hold_id: str
    points: int = 0


@dataclass(frozen=True, kw_only=True)
class ReleaseHold(AccountCommand):
    name: ClassVar[str] = "ReleaseHold"
    result_type: ClassVar[type[r.Result] | None] = r.ReleaseResult
    hold_id: str


@dataclass(frozen=True, kw_only=True)
class AdjustPoints(AccountCommand):
    name: ClassVar[str] = "Adjust"
    points: int
    reason: str
    operator_id: str

    def notes(self) -> Notes:
        return Notes(reason=self.reason, operator_id=self.operator_id)


@dataclass(frozen=True, kw_only=True)
class ReverseTransaction(AccountCommand):
    name: ClassVar[str] = "Reverse"
    result_type: ClassVar[type[r.Result] | None] = r.ReverseResult
    transaction_id: str
    points: int = 0
    amount_minor: int = 0
    reason: str = ""
    # An Earn's reversal only: the purchase money refunded (None: pro rata to the points).
    refund_purchase_minor: int | None = None

    def notes(self) -> Notes:
        return Notes(reason=self.reason, reverses_transaction_id=self.transaction_id)


@dataclass(frozen=True, kw_only=True)
class TopUp(AccountCommand):
    name: ClassVar[str] = "TopUp"
    result_type: ClassVar[type[r.Result] | None] = r.TopUpResult
    cash_minor: int
    bonus_minor: int | None = None  # None: the program's top_up_bonus schedule decides
    payment_ref: str = ""


@dataclass(frozen=True, kw_only=True)
class Spend(AccountCommand):
    name: ClassVar[str] = "Spend"
    result_type: ClassVar[type[r.Result] | None] = r.SpendResult
    amount_minor: int
    order_ref: str = ""

    def notes(self) -> Notes:
        return Notes(order_ref=self.order_ref)


@dataclass(frozen=True, kw_only=True)
class ConvertPoints(AccountCommand):
    name: ClassVar[str] = "ConvertPoints"
    result_type: ClassVar[type[r.Result] | None] = r.ConvertResult
    points: int


@dataclass(frozen=True, kw_only=True)
class RunExpiry(Command):
    name: ClassVar[str] = "RunExpiry"
    result_type: ClassVar[type[r.Result] | None] = r.ExpiryResult
    as_of: datetime | None = None


# ---------------------------------------------------------------------- housekeeping
# Commands the server gives itself. They go through the account's writer like any other,
# so the writer's cached account never goes stale, but keep no idempotency record.


@dataclass(frozen=True, kw_only=True)
class ExpireLots(AccountCommand):
    """Expire what remains of the account's lots due at `as_of` (RunExpiry, the sweep)."""

    name: ClassVar[str] = "ExpireLots"
    result_type: ClassVar[type[r.Result] | None] = r.ExpiryResult
    recorded: ClassVar[bool] = False
    request_id: str = ""
    as_of: datetime
    # The run's transaction: every account's LotsExpired of one RunExpiry shares it.
    run_transaction_id: str

    def notes(self) -> Notes:
        return Notes(reason="points expired")

    def new_transaction_id(self) -> str:
        return self.run_transaction_id


@dataclass(frozen=True, kw_only=True)
class ExpireHolds(AccountCommand):
    """Release the account's holds whose TTL has run out (the hold sweep)."""

    name: ClassVar[str] = "ExpireHolds"
    recorded: ClassVar[bool] = False
    request_id: str = ""
    sweep_transaction_id: str

    def notes(self) -> Notes:
        return Notes(reason="hold sweep")

    def new_transaction_id(self) -> str:
        return self.sweep_transaction_id


_ABSENT = object()
# Per type, the fields added after requests were recorded without them, with the value that
# means "not given": left out of fingerprints while they have it.
_ADDED_LATER: dict[type, dict[str, Any]] = {
    ReverseTransaction: {"refund_purchase_minor": None},
    ProgramSettings: {"insights": InsightSettings()},
}
