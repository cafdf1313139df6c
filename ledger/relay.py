"""Every event handed to NATS JetStream. STUB: the relay work fills this in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger.runtime import Tally

if TYPE_CHECKING:
    from ledger.api.server import ServeOptions


class Relay:
    @classmethod
    def from_options(cls, options: ServeOptions, tally: Tally) -> Relay | None:
        return None

    async def start(self) -> None:
        return

    async def stop(self) -> None:
        return
