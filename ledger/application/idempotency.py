"""Idempotency in one place: every command is answered once per (program, request_id).

A command's record (its fingerprint and its answer) is saved in the transaction of its
events (docs/decisions/0001, 0007). Answering a request again means finding that record and
checking that the request is the same one: the same payload gets the recorded answer, a
different payload under the same request_id is refused with IDEMPOTENCY_KEY_REUSED.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Transcoder

from ledger.application import commands as c
from ledger.application.views import Outcome
from ledger.domain import errors
from ledger.domain.ids import request_id_key
from ledger.infrastructure.database import Database
from ledger.infrastructure.requests import RequestRecord, find_requests

MAX_ATTEMPTS = 20

# An aggregate event: (aggregate id, version). A record names the event whose position
# its answer reports.
EventKey = tuple[UUID, int]


def record_id(cmd: c.Command) -> UUID:
    return request_id_key(cmd.program_id, cmd.request_id)


def backoff(attempt: int = 0) -> None:
    """Wait before trying a conflicting save again: a random time (so that the writers who
    conflicted do not meet again at once) whose bound doubles with each attempt, from 5 ms
    to 80 ms. Writers in several processes hammering one account kept meeting within a
    fixed 0.5-5 ms and ran out of attempts (ABORTED) where this lets one of them through."""
    time.sleep(random.uniform(0.0005, 0.005 * 2 ** min(attempt, 4)))


class Idempotency:
    def __init__(self, database: Database, transcoder: Transcoder) -> None:
        self.database = database
        self.transcoder = transcoder

    def record(
        self, cmd: c.Command, member_id: str, outcome: Outcome, answered_by: EventKey | None
    ) -> RequestRecord:
        """The record to save with the command's events."""
        return RequestRecord(
            record_id=record_id(cmd),
            program_id=cmd.program_id,
            request_id=cmd.request_id,
            command=cmd.name,
            request_hash=cmd.fingerprint(),
            member_id=member_id,
            response=self.transcoder.encode(outcome.to_record()),
            originator_id=answered_by[0] if answered_by else None,
            originator_version=answered_by[1] if answered_by else None,
        )

    def recorded(self, cmds: Sequence[c.Command]) -> dict[UUID, Outcome | errors.DomainError]:
        """For each of these commands already recorded: its answer (the recorded outcome, or
        the refusal of a request_id reused for another request). One query for all."""
        found = find_requests(self.database, [record_id(x) for x in cmds if x.recorded])
        answers: dict[UUID, Outcome | errors.DomainError] = {}
        for cmd in cmds:
            key = record_id(cmd)
            if key in found:
                answers[key] = self._answer(cmd, *found[key])
        return answers

    def previous_answer(self, cmd: c.Command) -> Outcome | None:
        """The recorded answer to this request, if there is one (raises if reused)."""
        answer = self.recorded([cmd]).get(record_id(cmd))
        if isinstance(answer, errors.DomainError):
            raise answer
        return answer

    def _answer(
        self, cmd: c.Command, record: RequestRecord, position: int
    ) -> Outcome | errors.DomainError:
        if not same_request(cmd, record.command, record.request_hash):
            return reused(cmd)
        outcome = Outcome.from_record(
            self.transcoder.decode(record.response), position, cmd.result_type
        )
        return replace(outcome, replayed=True)

    def retrying(self, cmd: c.Command, attempt: Callable[[], Outcome]) -> Outcome:
        """Run `attempt` (decide and save) until it commits, answering a request recorded
        meanwhile from its record. For commands that are not an account's (programs,
        RunExpiry); account commands go through the group commit."""
        for _ in range(MAX_ATTEMPTS):
            previous = self.previous_answer(cmd)
            if previous is not None:
                return previous
            try:
                return attempt()
            except IntegrityError:
                # Another writer got there first: the aggregate moved on, or the same
                # request_id was recorded. Look again.
                backoff()
            except errors.DomainError:
                # A copy of this request may have committed after we looked: then its
                # answer is the answer, not a refusal decided against the state it made.
                previous = self.previous_answer(cmd)
                if previous is not None:
                    return previous
                raise
        raise errors.WriteConflict("the command kept conflicting with concurrent writers")


def same_request(cmd: c.Command, command: str, request_hash: str) -> bool:
    return command == cmd.name and request_hash == cmd.fingerprint()


def reused(cmd: c.Command) -> errors.IdempotencyKeyReused:
    return errors.IdempotencyKeyReused(
        f"request_id {cmd.request_id!r} was used for a different request",
        request_id=cmd.request_id,
    )
