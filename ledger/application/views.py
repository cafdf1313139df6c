"""What commands answer with: plain data, recorded with the request for idempotent replays."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from ledger.application.results import Result
from ledger.domain.account import MemberAccount
from ledger.domain.program import Program, ProgramSettings


@dataclass(frozen=True)
class AccountView:
    program_id: str
    member_id: str
    points_available: int
    points_held: int
    points_debt: int
    stored_value_cash_minor: int
    stored_value_bonus_minor: int
    tier_code: str
    qualifying_points: int
    next_tier_code: str
    points_to_next_tier: int
    enrolled_at: datetime
    version: int

    @classmethod
    def of(cls, account: MemberAccount, settings: ProgramSettings, now: datetime) -> AccountView:
        qualifying = account.qualifying_points(now)
        standing = settings.standing(qualifying)
        return cls(
            program_id=account.program_id,
            member_id=account.member_id,
            points_available=account.available,
            points_held=account.held,
            points_debt=account.debt,
            stored_value_cash_minor=account.cash,
            stored_value_bonus_minor=account.bonus,
            tier_code=standing.tier_code,
            qualifying_points=qualifying,
            next_tier_code=standing.next_tier_code,
            points_to_next_tier=standing.points_to_next_tier,
            enrolled_at=account.enrolled_at,
            version=account.version,
        )


@dataclass(frozen=True)
class ProgramView:
    program_id: str
    settings: ProgramSettings
    created_at: datetime
    updated_at: datetime
    version: int
    # The log position of the event that made this version (0: not known here, e.g. in
    # answers recorded before positions were answered).
    effective_position: int = 0

    @classmethod
    def of(cls, program: Program) -> ProgramView:
        return cls(
            program.program_id,
            program.settings,
            program.created_on,
            program.modified_on,
            program.version,
        )


@dataclass(frozen=True)
class Outcome:
    """A command's answer: the transaction, its position, the account or program as it
    left them, and the command's own result (see results.py)."""

    transaction_id: str
    position: int
    account: AccountView | None = None
    program: ProgramView | None = None
    result: Result | None = None
    # Answered from the idempotency record of an earlier call (not part of the answer itself).
    replayed: bool = field(default=False, compare=False)

    def to_record(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "account": dict(vars(self.account)) if self.account else None,
            # Not asdict(): it would flatten the settings, which have a transcoding of their own.
            "program": (
                {f.name: getattr(self.program, f.name) for f in fields(ProgramView)}
                if self.program
                else None
            ),
            "result": self.result.to_record() if self.result else None,
        }

    @classmethod
    def from_record(
        cls, record: dict[str, Any], position: int, result_type: type[Result] | None
    ) -> Outcome:
        account = AccountView(**record["account"]) if record["account"] else None
        program = ProgramView(**record["program"]) if record["program"] else None
        # Records written before results were typed keep the same fields under "details".
        fields_ = record.get("result", record.get("details"))
        result = result_type(**fields_) if result_type is not None and fields_ else None
        return cls(record["transaction_id"], position, account, program, result)
