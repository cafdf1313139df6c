"""The caller of the current RPC, once authenticated: its roles and programmes.

Set by the authentication interceptor for the duration of a call, in a contextvar, for the
few servicer methods that filter by scope themselves (StreamEvents, GetReconciliation). A
contextvar does not cross `loop.run_in_executor`: read it in the async part of the call."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from ledger.security.roles import Role


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[Role]
    programs: frozenset[str] | None  # None: every programme

    @property
    def all_programs(self) -> bool:
        return self.programs is None

    def sees(self, program_id: str) -> bool:
        return self.programs is None or program_id in self.programs


CALLER: ContextVar[Principal | None] = ContextVar("tally_caller", default=None)


def visible_programs() -> frozenset[str] | None:
    """The programmes the current caller may see; None: every one (an all-programmes
    credential, or authentication off)."""
    caller = CALLER.get()
    return None if caller is None else caller.programs


def may_see(program_id: str) -> bool:
    visible = visible_programs()
    return visible is None or program_id in visible
