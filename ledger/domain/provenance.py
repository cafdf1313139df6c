"""Who, where and why: carried by every account event."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from eventsourcing.persistence import Transcoding


@dataclass(frozen=True)
class Provenance:
    transaction_id: str
    request_id: str
    occurred_at: datetime
    store_id: str = ""
    order_ref: str = ""
    reason: str = ""
    operator_id: str = ""
    reverses_transaction_id: str = ""
    # The programme version (Program.version) the command was decided under; 0 in events
    # recorded before versions were recorded with each event (they decode without it).
    program_version: int = 0

    def derived(self, transaction_id: str, reason: str) -> Provenance:
        """Provenance of a consequence (an expiry) of the transaction this one describes."""
        return replace(
            self, transaction_id=transaction_id, reason=reason, reverses_transaction_id=""
        )


class ProvenanceAsDict(Transcoding):
    type = Provenance
    name = "provenance"

    def encode(self, obj: Provenance) -> dict[str, Any]:
        return dict(vars(obj))  # flat fields: cheaper than asdict() on the hot path

    def decode(self, data: dict[str, Any]) -> Provenance:
        return Provenance(**data)
