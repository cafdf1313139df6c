"""A member's tier history (ListTierHistory), projected from the points read model at the
time of the question (decision 21): the member's qualifying rows of `rm_transactions` (each
qualifying earn: +points with its qualifies_until; each reversal of one: -points with the
earn's qualifies_until, recorded at the reversal) and the programme's versions, given to
`ledger.domain.tier_history`. Read-only; protobuf-free. Because it reads only what the
projection keeps, the history after a rebuild of the points read model is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ledger.application.programs import ProgramVersion
from ledger.domain.tier_history import QualifyingChange, RulesVersion, TierChange, tier_history
from ledger.infrastructure.database import Database
from ledger.queries import from_micros


@dataclass(frozen=True)
class TierHistory:
    changes: list[TierChange]  # since <= changed_at < until, oldest first
    tier_code: str  # at until
    qualifying_points: int  # at until


class TierQueries:
    def __init__(self, database: Database) -> None:
        self.database = database

    def qualifying_changes(
        self, program_id: str, member_id: str
    ) -> tuple[datetime, list[QualifyingChange]] | None:
        """(when the enrolment was recorded, the member's qualifying earns and reversals in
        log order); None: not enrolled."""
        with self.database.read() as cur:
            cur.execute(
                "SELECT recorded_at FROM rm_transactions"
                " WHERE program_id = ? AND member_id = ? AND kind = 'ENROLL'",
                (program_id, member_id),
            )
            enrolled = cur.fetchone()
            if enrolled is None:
                return None
            cur.execute(
                "SELECT position, transaction_id, reverses_transaction_id, qualifying_delta,"
                " qualifies_until, recorded_at FROM rm_transactions"
                " WHERE program_id = ? AND member_id = ? AND qualifying_delta <> 0"
                " AND qualifies_until IS NOT NULL ORDER BY position",
                (program_id, member_id),
            )
            rows = cur.fetchall()
        changes = [
            QualifyingChange(
                recorded_at=from_micros(int(recorded_at)),
                points=int(delta),
                qualifies_until=from_micros(int(until)),
                transaction_id=str(transaction_id),
                # A reversal's row names the earn it takes back.
                earn_id=str(reverses if int(delta) < 0 else transaction_id),
                position=int(position),
            )
            for position, transaction_id, reverses, delta, until, recorded_at in rows
        ]
        return from_micros(int(enrolled[0])), changes

    def history(
        self,
        program_id: str,
        member_id: str,
        versions: Sequence[RulesVersion],
        since: datetime | None,
        until: datetime,
        until_inclusive: bool,
    ) -> TierHistory | None:
        """The changes of tier taking effect at or after `since` and before `until` (at or
        before, when `until_inclusive`: the default `until`, now), and the tier at `until`.
        None: the member is not enrolled."""
        found = self.qualifying_changes(program_id, member_id)
        if found is None:
            return None
        enrolled_at, changes = found
        all_changes, tier, points = tier_history(changes, versions, enrolled_at, until)
        listed = [
            c
            for c in all_changes
            if (since is None or c.changed_at >= since)
            and (until_inclusive or c.changed_at < until)
        ]
        return TierHistory(listed, tier, points)


def rules_versions(versions: Sequence[ProgramVersion]) -> list[RulesVersion]:
    """The ladders of the programme's versions (LedgerApplication.program_versions)."""
    return [
        RulesVersion(v.version, v.recorded_at, v.settings.tiers, v.position, v.transaction_id)
        for v in versions
    ]
