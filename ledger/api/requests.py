"""gRPC requests -> validated commands and query parameters.

The account commands are checked and built by `ledger/application/validation.py`, shared
with `ledger import`; their parsers here only read the message. The program commands and the
queries are checked here."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from ledger.api import page_tokens
from ledger.api.errors import InvalidArgument
from ledger.api.validation import Violations
from ledger.application import commands as c
from ledger.application import validation as build
from ledger.domain.insights import InsightSettings
from ledger.domain.program import (
    CashOutPolicy,
    ExpiryKind,
    ExpiryPolicy,
    PointsConversion,
    ProgramSettings,
    StoredValueSplit,
    TierRule,
    TopUpBonusStep,
)
from ledger.v1 import ledger_pb2 as pb

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_TIERS = 32
MAX_BONUS_STEPS = 32
MAX_AMOUNT = build.MAX_AMOUNT

_EXPIRY_KINDS: dict[int, ExpiryKind] = {
    pb.EXPIRY_KIND_UNSPECIFIED: ExpiryKind.NEVER,
    pb.EXPIRY_KIND_NEVER: ExpiryKind.NEVER,
    pb.EXPIRY_KIND_ROLLING_DAYS: ExpiryKind.ROLLING_DAYS,
    pb.EXPIRY_KIND_END_OF_YEAR_AFTER_YEARS: ExpiryKind.END_OF_YEAR_AFTER_YEARS,
}
_SPLITS: dict[int, StoredValueSplit] = {
    pb.STORED_VALUE_SPLIT_UNSPECIFIED: StoredValueSplit.PROPORTIONAL,
    pb.STORED_VALUE_SPLIT_PROPORTIONAL: StoredValueSplit.PROPORTIONAL,
    pb.STORED_VALUE_SPLIT_CASH_FIRST: StoredValueSplit.CASH_FIRST,
    pb.STORED_VALUE_SPLIT_BONUS_FIRST: StoredValueSplit.BONUS_FIRST,
}


def _expiry_policy(v: Violations, policy: pb.ExpiryPolicy) -> ExpiryPolicy:
    kind = _EXPIRY_KINDS.get(policy.kind)
    if kind is None:
        v.add("expiry_policy.kind", "unknown expiry kind")
        return ExpiryPolicy()
    if kind is ExpiryKind.ROLLING_DAYS:
        v.in_range("expiry_policy.days", policy.days, 1, 36_500)
        return ExpiryPolicy(kind, days=policy.days)
    if kind is ExpiryKind.END_OF_YEAR_AFTER_YEARS:
        v.in_range("expiry_policy.years", policy.years, 0, 100)
        return ExpiryPolicy(kind, years=policy.years)
    return ExpiryPolicy(kind)


def _tiers(v: Violations, tiers: Any) -> tuple[TierRule, ...]:
    if len(tiers) > MAX_TIERS:
        v.add("tiers", f"at most {MAX_TIERS} tiers")
    rules = []
    for i, tier in enumerate(tiers):
        v.identifier(f"tiers[{i}].code", tier.code)
        v.text(f"tiers[{i}].name", tier.name, limit=100)
        v.non_negative(f"tiers[{i}].threshold", tier.threshold)
        rules.append(TierRule(tier.code, tier.name, tier.threshold))
    if len({t.code for t in rules}) != len(rules):
        v.add("tiers", "tier codes must be unique")
    if len({t.threshold for t in rules}) != len(rules):
        v.add("tiers", "tier thresholds must be distinct")
    return tuple(rules)


_CASH_OUT_POLICIES: dict[int, CashOutPolicy] = {
    pb.CASH_OUT_POLICY_UNSPECIFIED: CashOutPolicy.FORFEIT_REMAINING_BONUS,
    pb.CASH_OUT_POLICY_FORFEIT_REMAINING_BONUS: CashOutPolicy.FORFEIT_REMAINING_BONUS,
    pb.CASH_OUT_POLICY_DEDUCT_SPENT_BONUS: CashOutPolicy.DEDUCT_SPENT_BONUS,
}


def _cash_out_policy(v: Violations, value: int) -> CashOutPolicy:
    policy = _CASH_OUT_POLICIES.get(value)
    if policy is None:
        v.add("cash_out_policy", "unknown cash-out policy")
        return CashOutPolicy.FORFEIT_REMAINING_BONUS
    return policy


def _top_up_bonus(v: Violations, steps: Any) -> tuple[TopUpBonusStep, ...]:
    if len(steps) > MAX_BONUS_STEPS:
        v.add("top_up_bonus", f"at most {MAX_BONUS_STEPS} steps")
    rules = []
    for i, step in enumerate(steps):
        v.positive(f"top_up_bonus[{i}].min_cash_minor", step.min_cash_minor)
        v.non_negative(f"top_up_bonus[{i}].bonus_minor", step.bonus_minor)
        # Up to 100 times the cash: any promotion, and no overflow at the largest top-up.
        v.in_range(f"top_up_bonus[{i}].bonus_ppm", step.bonus_ppm, 0, 100_000_000)
        rules.append(TopUpBonusStep(step.min_cash_minor, step.bonus_minor, step.bonus_ppm))
    if len({s.min_cash_minor for s in rules}) != len(rules):
        v.add("top_up_bonus", "each step's min_cash_minor must be distinct")
    return tuple(sorted(rules, key=lambda s: s.min_cash_minor))


def _points_conversion(v: Violations, rate: pb.PointsConversion) -> PointsConversion:
    v.positive("points_conversion.points", rate.points)
    v.positive("points_conversion.value_minor", rate.value_minor)
    return PointsConversion(rate.points, rate.value_minor)


def _insight_settings(v: Violations, given: pb.InsightSettings) -> InsightSettings:
    """The whole set: a field left 0 takes its default; out of range or inconsistent is a
    violation under `insight_settings.<name>` (InsightSettings.problems decides)."""
    defaults = InsightSettings()
    settings = InsightSettings(
        **{
            f.name: getattr(given, f.name) or getattr(defaults, f.name)
            for f in fields(InsightSettings)
        }
    )
    for name, why in settings.problems():
        v.add(f"insight_settings.{name}", why)
    return settings


def _split(v: Violations, value: int) -> StoredValueSplit:
    split = _SPLITS.get(value)
    if split is None:
        v.add("stored_value_split", "unknown split policy")
        return StoredValueSplit.PROPORTIONAL
    return split


def create_program(r: pb.CreateProgramRequest) -> c.CreateProgram:
    v = Violations()
    v.identifier("program_id", r.program_id)
    v.request_id(r.request_id)
    v.text("display_name", r.display_name, limit=200, required=True)
    v.currency("currency", r.currency)
    time_zone = v.time_zone("time_zone", r.time_zone or "UTC")
    v.non_negative("point_value_minor", r.point_value_minor)
    window = r.tier_window_days or 365
    v.in_range("tier_window_days", window, 1, 3650)
    rate = r.expected_redemption_rate_ppm or 1_000_000
    v.in_range("expected_redemption_rate_ppm", rate, 1, 1_000_000)
    settings = ProgramSettings(
        display_name=r.display_name,
        currency=r.currency,
        time_zone=time_zone,
        point_value_minor=r.point_value_minor,
        expiry_policy=_expiry_policy(v, r.expiry_policy),
        tiers=_tiers(v, r.tiers),
        tier_window_days=window,
        stored_value_split=_split(v, r.stored_value_split),
        expected_redemption_rate_ppm=rate,
        top_up_bonus=_top_up_bonus(v, r.top_up_bonus),
        points_conversion=(
            _points_conversion(v, r.points_conversion) if r.HasField("points_conversion") else None
        ),
        cash_out_policy=_cash_out_policy(v, r.cash_out_policy),
        insights=_insight_settings(v, r.insight_settings),
    )
    v.raise_if_any()
    return c.CreateProgram(program_id=r.program_id, request_id=r.request_id, settings=settings)


def update_program(r: pb.UpdateProgramRequest) -> c.UpdateProgram:
    v = Violations()
    v.identifier("program_id", r.program_id)
    v.request_id(r.request_id)
    changes: dict[str, Any] = {}
    if r.HasField("display_name"):
        changes["display_name"] = v.text("display_name", r.display_name, limit=200, required=True)
    if r.HasField("expiry_policy"):
        changes["expiry_policy"] = _expiry_policy(v, r.expiry_policy)
    if r.replace_tiers:
        changes["tiers"] = _tiers(v, r.tiers)
    elif len(r.tiers):
        v.add("tiers", "set replace_tiers to replace the tier ladder")
    if r.HasField("tier_window_days"):
        changes["tier_window_days"] = v.in_range("tier_window_days", r.tier_window_days, 1, 3650)
    if r.HasField("stored_value_split"):
        changes["stored_value_split"] = _split(v, r.stored_value_split)
    if r.HasField("expected_redemption_rate_ppm"):
        changes["expected_redemption_rate_ppm"] = v.in_range(
            "expected_redemption_rate_ppm", r.expected_redemption_rate_ppm, 1, 1_000_000
        )
    if r.replace_top_up_bonus:
        changes["top_up_bonus"] = _top_up_bonus(v, r.top_up_bonus)
    elif len(r.top_up_bonus):
        v.add("top_up_bonus", "set replace_top_up_bonus to replace the bonus schedule")
    if r.HasField("points_conversion") and r.clear_points_conversion:
        v.add("points_conversion", "set a rate or clear_points_conversion, not both")
    elif r.HasField("points_conversion"):
        changes["points_conversion"] = _points_conversion(v, r.points_conversion)
    elif r.clear_points_conversion:
        changes["points_conversion"] = None
    if r.HasField("cash_out_policy"):
        changes["cash_out_policy"] = _cash_out_policy(v, r.cash_out_policy)
    if r.HasField("insight_settings"):
        changes["insights"] = _insight_settings(v, r.insight_settings)
    if not changes:
        v.add("program", "nothing to change: set at least one field")
    v.raise_if_any()
    return c.UpdateProgram(program_id=r.program_id, request_id=r.request_id, changes=changes)


def _account(v: Violations, r: Any) -> build.AccountFields:
    """The fields every account command has, as plain values."""
    return {
        "program_id": r.program_id,
        "member_id": r.member_id,
        "request_id": r.request_id,
        "occurred_at": v.converted("occurred_at", r.occurred_at, r.HasField("occurred_at")),
        "store_id": r.store_id,
    }


# Each account-command parser: the message's values, then the builder shared with
# `ledger import` checks every rule and builds the command (InvalidArgument if not).


def enroll_member(r: pb.EnrollMemberRequest, now: datetime) -> c.EnrollMember:
    v = Violations()
    return build.enroll_member(
        **_account(v, r), referrer_member_id=r.referrer_member_id, now=now, violations=v
    )


def earn(r: pb.EarnRequest, now: datetime) -> c.EarnPoints:
    v = Violations()
    return build.earn(
        **_account(v, r),
        points=r.points,
        purchase_minor=r.purchase_minor,
        order_ref=r.order_ref,
        reason=r.reason,
        qualifying=r.qualifying if r.HasField("qualifying") else True,
        expires_at=v.converted("expires_at", r.expires_at, r.HasField("expires_at")),
        now=now,
        violations=v,
    )


def redeem(r: pb.RedeemRequest, now: datetime) -> c.RedeemPoints:
    v = Violations()
    return build.redeem(
        **_account(v, r),
        points=r.points,
        order_ref=r.order_ref,
        reason=r.reason,
        now=now,
        violations=v,
    )


def hold(r: pb.HoldRequest, now: datetime) -> c.HoldPoints:
    v = Violations()
    return build.hold(
        **_account(v, r),
        points=r.points,
        ttl_seconds=r.ttl_seconds,
        order_ref=r.order_ref,
        now=now,
        violations=v,
    )


def capture_hold(r: pb.CaptureHoldRequest, now: datetime) -> c.CaptureHold:
    v = Violations()
    return build.capture_hold(
        **_account(v, r), hold_id=r.hold_id, points=r.points, now=now, violations=v
    )


def release_hold(r: pb.ReleaseHoldRequest, now: datetime) -> c.ReleaseHold:
    v = Violations()
    return build.release_hold(**_account(v, r), hold_id=r.hold_id, now=now, violations=v)


def adjust(r: pb.AdjustRequest, now: datetime) -> c.AdjustPoints:
    v = Violations()
    return build.adjust(
        **_account(v, r),
        points=r.points,
        reason=r.reason,
        operator_id=r.operator_id,
        now=now,
        violations=v,
    )


def reverse(r: pb.ReverseRequest, now: datetime) -> c.ReverseTransaction:
    v = Violations()
    return build.reverse(
        **_account(v, r),
        transaction_id=r.transaction_id,
        points=r.points,
        amount_minor=r.amount_minor,
        reason=r.reason,
        refund_purchase_minor=(
            r.refund_purchase_minor if r.HasField("refund_purchase_minor") else None
        ),
        now=now,
        violations=v,
    )


def top_up(r: pb.TopUpRequest, now: datetime) -> c.TopUp:
    v = Violations()
    return build.top_up(
        **_account(v, r),
        cash_minor=r.cash_minor,
        bonus_minor=r.bonus_minor if r.HasField("bonus_minor") else None,
        payment_ref=r.payment_ref,
        now=now,
        violations=v,
    )


def spend(r: pb.SpendRequest, now: datetime) -> c.Spend:
    v = Violations()
    return build.spend(
        **_account(v, r), amount_minor=r.amount_minor, order_ref=r.order_ref, now=now, violations=v
    )


def convert_points(r: pb.ConvertPointsRequest, now: datetime) -> c.ConvertPoints:
    v = Violations()
    return build.convert_points(**_account(v, r), points=r.points, now=now, violations=v)


def run_expiry(r: pb.RunExpiryRequest, now: datetime) -> c.RunExpiry:
    v = Violations()
    v.identifier("program_id", r.program_id)
    v.request_id(r.request_id)
    as_of = v.timestamp("as_of", r.as_of, r.HasField("as_of"))
    if as_of is not None and as_of > now:
        v.add("as_of", "must not be in the future")
    v.raise_if_any()
    return c.RunExpiry(program_id=r.program_id, request_id=r.request_id, as_of=as_of)


# ---------------------------------------------------------------------- queries


def program_id(r: Any) -> str:
    v = Violations()
    v.identifier("program_id", r.program_id)
    v.raise_if_any()
    return str(r.program_id)


def get_program(r: pb.GetProgramRequest, now: datetime) -> tuple[str, datetime | None]:
    """GetProgram: the program id and the recorded time asked about (None: now)."""
    v = Violations()
    v.identifier("program_id", r.program_id)
    as_of = v.timestamp("as_of", r.as_of, r.HasField("as_of"))
    if as_of is not None and as_of > now:
        v.add("as_of", "must not be in the future")
    v.raise_if_any()
    return str(r.program_id), as_of


def member_query(r: Any) -> tuple[str, str, int]:
    v = Violations()
    fields = _member_query_fields(v, r)
    v.raise_if_any()
    return fields


@dataclass(frozen=True)
class TransactionsQuery:
    program_id: str
    member_id: str
    min_position: int
    page_size: int
    after_position: int
    since: datetime | None
    until: datetime | None

    def token_for(self, last_position: int) -> str:
        return page_tokens.encode((last_position,), self.fingerprint())

    def fingerprint(self) -> str:
        return page_tokens.fingerprint(self.program_id, self.member_id, self.since, self.until)


def list_transactions(r: pb.ListTransactionsRequest) -> TransactionsQuery:
    v = Violations()
    program, member, min_position = _member_query_fields(v, r)
    size = r.page_size or DEFAULT_PAGE_SIZE
    v.in_range("page_size", size, 1, MAX_PAGE_SIZE)
    since = v.timestamp("since", r.since, r.HasField("since"))
    until = v.timestamp("until", r.until, r.HasField("until"))
    if since and until and since >= until:
        v.add("until", "must be after since")
    query = TransactionsQuery(program, member, min_position, size, 0, since, until)
    after = 0
    if r.page_token:
        decoded = page_tokens.decode(
            v, r.page_token, query.fingerprint(), 1, "member or time range"
        )
        after = decoded[0] if decoded else 0
    v.raise_if_any()
    return TransactionsQuery(program, member, min_position, size, after, since, until)


def _member_query_fields(v: Violations, r: Any) -> tuple[str, str, int]:
    v.identifier("program_id", r.program_id)
    v.identifier("member_id", r.member_id)
    v.non_negative("min_position", r.min_position, limit=2**63 - 1)
    return r.program_id, r.member_id, r.min_position


MAX_BATCH = 1000


def batch(r: pb.ExecuteBatchRequest, now: datetime) -> list[c.AccountCommand | InvalidArgument]:
    """Each command of a batch parsed on its own: a bad one is answered with its own
    INVALID_ARGUMENT and does not spoil the others. Its program_id may be left empty (the
    batch's is used) but may not name another program."""
    v = Violations()
    v.identifier("program_id", r.program_id)
    if not r.commands:
        v.add("commands", "at least one command")
    elif len(r.commands) > MAX_BATCH:
        v.add("commands", f"at most {MAX_BATCH} commands per batch")
    v.raise_if_any()
    from ledger.api.descriptors import IN_BATCH  # the descriptors are built from this module

    parsed: list[c.AccountCommand | InvalidArgument] = []
    for i, item in enumerate(r.commands):
        kind = item.WhichOneof("command")
        if kind not in IN_BATCH:
            what = kind or "nothing"
            parsed.append(
                InvalidArgument([(f"commands[{i}]", f"{what}: not available in a batch yet")])
            )
            continue
        request = getattr(item, kind)
        if not request.program_id:
            request.program_id = r.program_id
        if request.program_id != r.program_id:
            parsed.append(
                InvalidArgument([(f"commands[{i}].{kind}.program_id", "must be the batch's")])
            )
            continue
        try:
            parsed.append(IN_BATCH[kind].parse(request, now))
        except InvalidArgument as e:
            parsed.append(
                InvalidArgument([(f"commands[{i}].{kind}.{f}", d) for f, d in e.violations])
            )
    return parsed
