"""JSON transcodings for what the event store holds besides plain values: the account's
inner records, which snapshots carry (events carry only plain values and Provenance).
Every record type an account holds must be here, or the first snapshot of an account that
holds one fails (tests/unit/test_account_model.py snapshots every state it reaches)."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from eventsourcing.persistence import Transcoding

from ledger.domain.holds import ActiveHold
from ledger.domain.lots import Lot
from ledger.domain.program import PointsConversion
from ledger.domain.reversals import RedemptionRecord
from ledger.domain.stored_value import SpendRecord, ValueLot
from ledger.domain.tier_window import EarnRecord, QualifyingWindow


class DataclassAsDict(Transcoding):
    """A dataclass whose fields are themselves transcodable, as a dict of its fields."""

    def __init__(self, cls: type, name: str) -> None:
        assert is_dataclass(cls)
        self.type = cls
        self.name = name

    def encode(self, obj: Any) -> dict[str, Any]:
        return {f.name: getattr(obj, f.name) for f in fields(obj)}

    def decode(self, data: dict[str, Any]) -> Any:
        return self.type(**data)


class SetAsList(Transcoding):
    type = set
    name = "set"

    def encode(self, obj: set[Any]) -> list[Any]:
        return sorted(obj)

    def decode(self, data: list[Any]) -> set[Any]:
        return set(data)


class QualifyingWindowAsDict(Transcoding):
    type = QualifyingWindow
    name = "qualifying_window"

    def encode(self, obj: QualifyingWindow) -> dict[str, Any]:
        return {"order": [list(pair) for pair in obj.order], "total": obj.total}

    def decode(self, data: dict[str, Any]) -> QualifyingWindow:
        return QualifyingWindow.restore([(at, earn) for at, earn in data["order"]], data["total"])


def account_transcodings() -> list[Transcoding]:
    return [
        DataclassAsDict(Lot, "lot"),
        DataclassAsDict(ActiveHold, "active_hold"),
        DataclassAsDict(EarnRecord, "earn_record"),
        DataclassAsDict(RedemptionRecord, "redemption_record"),
        DataclassAsDict(ValueLot, "value_lot"),
        DataclassAsDict(SpendRecord, "spend_record"),
        DataclassAsDict(PointsConversion, "points_conversion"),
        SetAsList(),
        QualifyingWindowAsDict(),
    ]
