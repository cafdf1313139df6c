"""The RequestRecord aggregate: the durable idempotency record of one command.

Its id is uuid5(program, request_id) and doubles as the command's transaction id. It is saved
in the same transaction as the command's events, so a command is either recorded with its
response or not at all; a second writer of the same request_id fails on the id and then
finds the first one's response.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from ledger.domain.ids import request_id_key


class RequestRecord(Aggregate):
    @staticmethod
    def create_id(program_id: str, request_id: str) -> UUID:
        return request_id_key(program_id, request_id)

    @event("RequestCompleted")
    def __init__(
        self,
        program_id: str,
        request_id: str,
        command: str,
        request_hash: str,
        member_id: str,
        response: dict[str, Any],
    ) -> None:
        self.program_id = program_id
        self.request_id = request_id
        self.command = command
        self.request_hash = request_hash
        self.member_id = member_id
        self.response = response
