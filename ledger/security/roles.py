"""The roles, and the ONE table of what each RPC needs: a role and a scope rule.

Every method of every service the server registers must have an entry; a test fails on a
method without one (tests/test_security.py), and the server refuses an unclassified method
at runtime rather than guess. Health and reflection are open to anyone."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    WRITER = "writer"  # a till: account commands
    READER = "reader"  # an app showing balances: programme and account reads
    AUDITOR = "auditor"  # finance and audit: the log, its verification, the reports
    ADMIN = "admin"  # programmes, adjustments, expiry runs, reconciliation sign-off


class Scope(StrEnum):
    """How a method's request names the programme it touches."""

    PROGRAM = "program"  # request.program_id; another programme's is NOT_FOUND
    CREATE = "create"  # CreateProgram: outside the credential's programmes PERMISSION_DENIED
    PROGRAM_OR_FILTERED = "program-or-filtered"  # optional program_id; none: the servicer
    # shows only the credential's programmes (StreamEvents)
    PROGRAM_OR_ALL = "program-or-all"  # optional program_id; none means every programme,
    # which needs an all-programmes credential (VerifyChain)
    WHOLE_LOG = "whole-log"  # covers every programme: all-programmes credentials only
    BY_RECORD = "by-record"  # named by an id; the servicer checks the record's programme


@dataclass(frozen=True)
class MethodRule:
    role: Role
    scope: Scope


def _rules(service: str, role: Role, scope: Scope, *methods: str) -> dict[str, MethodRule]:
    return {f"/ledger.v1.{service}/{m}": MethodRule(role, scope) for m in methods}


W, R, AU, AD = Role.WRITER, Role.READER, Role.AUDITOR, Role.ADMIN
P = Scope.PROGRAM

METHOD_RULES: dict[str, MethodRule] = {
    **_rules("LedgerService", AD, Scope.CREATE, "CreateProgram"),
    **_rules("LedgerService", AD, P, "UpdateProgram", "Adjust", "RunExpiry"),
    **_rules(
        "LedgerService",
        W,
        P,
        "EnrollMember",
        "Earn",
        "Redeem",
        "Hold",
        "CaptureHold",
        "ReleaseHold",
        "TopUp",
        "Spend",
        "ConvertPoints",
        "Reverse",
        "ExecuteBatch",
    ),
    **_rules(
        "LedgerService",
        R,
        P,
        "GetProgram",
        "GetAccount",
        "ListTransactions",
        "ListLots",
        "ListTierHistory",
    ),
    **_rules("AuditService", AU, Scope.PROGRAM_OR_FILTERED, "StreamEvents"),
    **_rules("AuditService", AU, P, "GetAccountHistory"),
    **_rules("AuditService", AU, Scope.PROGRAM_OR_ALL, "VerifyChain"),
    **_rules("AuditService", AU, Scope.WHOLE_LOG, "CreateCheckpoint"),
    **_rules(
        "ReportService",
        AU,
        P,
        "GetTrialBalance",
        "ListPostings",
        "GetLiabilities",
        "GetMovements",
        "GetSettlement",
        "GetDeferredRevenue",
        "GetBreakage",
        "GetExpiryForecast",
        "GetPrepaidCustody",
    ),
    **_rules("ReportService", AU, Scope.BY_RECORD, "GetReconciliation"),
    **_rules("ReportService", AD, P, "ReconcileStatement"),
    **_rules("ReportService", AD, Scope.BY_RECORD, "SignOffReconciliation"),
    # Marketing reads member behaviour: a reader of the programme (docs/insights.md).
    **_rules(
        "InsightsService", R, P, "GetMemberInsights", "ListSegmentMembers", "GetProgramInsights"
    ),
}

# Anyone may call these, with or without a credential: load balancers probe health, and
# generic clients discover the API by reflection (it describes the API, not any data).
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def is_open(method: str) -> bool:
    return method.startswith(OPEN_SERVICES)


def rule_for(method: str) -> MethodRule | None:
    """The method's rule, or None: not classified, so refused."""
    return METHOD_RULES.get(method)


def parse_roles(text: str) -> frozenset[Role]:
    """ "writer,reader" -> the roles; ValueError naming an unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("give at least one role of writer, reader, auditor, admin")
    known = {r.value: r for r in Role}
    for name in names:
        if name not in known:
            raise ValueError(f"unknown role {name!r}: the roles are writer, reader, auditor, admin")
    return frozenset(known[n] for n in names)
