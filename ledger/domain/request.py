"""The RequestRecord: the durable idempotency record of one applied command.

Its id is uuid5(program, request_id) and doubles as the command's transaction id. It is
saved in the same transaction as the command's events (a row beside the log, not an event:
docs/decisions/0007), so a command is either recorded with its response or not at all; a
second writer of the same request_id fails on the id and then finds the first one's response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ledger.domain.ids import request_id_key


@dataclass(frozen=True)
class RequestRecord:
    program_id: str
    request_id: str
    command: str
    request_hash: str
    member_id: str
    response: dict[str, Any]
    # The aggregate event whose position the response reports (None: the command wrote none).
    originator_id: UUID | None
    originator_version: int | None

    @staticmethod
    def create_id(program_id: str, request_id: str) -> UUID:
        return request_id_key(program_id, request_id)

    @property
    def id(self) -> UUID:
        return request_id_key(self.program_id, self.request_id)
