"""The protobuf side of validation. The field checks and the account-command builders are
protobuf-free and shared with `ledger import`: `ledger/application/validation.py`. Here only
what a gRPC request adds: Timestamps converted (HasField says whether one was given), and the
servicer's `InvalidArgument` raised."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from ledger.api.errors import InvalidArgument
from ledger.application import validation as shared


class Violations(shared.Violations):
    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)

    def converted(self, field: str, ts: Timestamp, present: bool) -> datetime | None:
        """The Timestamp as a UTC datetime (None: not given or not convertible, which is
        a violation); the shared builders check its range."""
        if not present:
            return None
        if not 0 <= ts.nanos < 1_000_000_000:
            self.add(field, "nanos must be in 0..999999999")
            return None
        try:
            return ts.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            self.add(field, "out of range")
            return None

    def timestamp(self, field: str, ts: Timestamp, present: bool) -> datetime | None:
        """Converted and in range (1970-01-01 .. 9999-12-31)."""
        return self.moment(field, self.converted(field, ts, present))
