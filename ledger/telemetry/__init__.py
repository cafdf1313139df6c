"""OpenTelemetry traces and metrics. STUB: the telemetry work fills this in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from ledger.api.server import ServeOptions


class Telemetry:
    @classmethod
    def from_options(cls, options: ServeOptions) -> Telemetry:
        return cls()

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return []

    def start(self, tally: Any) -> None:
        return

    def shutdown(self) -> None:
        return
