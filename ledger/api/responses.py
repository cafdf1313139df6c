"""Outcomes and read-model rows -> gRPC responses."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from ledger.application.results import (
    CaptureResult,
    ConvertResult,
    EarnResult,
    ExpiryResult,
    HoldResult,
    RedeemResult,
    ReleaseResult,
    Result,
    ReverseResult,
    SpendResult,
    TopUpResult,
)
from ledger.application.views import AccountView, Outcome, ProgramView
from ledger.domain.program import CashOutPolicy, ExpiryKind, StoredValueSplit
from ledger.queries import from_micros
from ledger.v1 import ledger_pb2 as pb
from projections.points import LotRow, TransactionRow

_EXPIRY_KINDS = {
    ExpiryKind.NEVER: pb.EXPIRY_KIND_NEVER,
    ExpiryKind.ROLLING_DAYS: pb.EXPIRY_KIND_ROLLING_DAYS,
    ExpiryKind.END_OF_YEAR_AFTER_YEARS: pb.EXPIRY_KIND_END_OF_YEAR_AFTER_YEARS,
}
_SPLITS = {
    StoredValueSplit.PROPORTIONAL: pb.STORED_VALUE_SPLIT_PROPORTIONAL,
    StoredValueSplit.CASH_FIRST: pb.STORED_VALUE_SPLIT_CASH_FIRST,
    StoredValueSplit.BONUS_FIRST: pb.STORED_VALUE_SPLIT_BONUS_FIRST,
}

_CASH_OUT_POLICIES = {
    CashOutPolicy.FORFEIT_REMAINING_BONUS: pb.CASH_OUT_POLICY_FORFEIT_REMAINING_BONUS,
    CashOutPolicy.DEDUCT_SPENT_BONUS: pb.CASH_OUT_POLICY_DEDUCT_SPENT_BONUS,
}


def timestamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def account(view: AccountView | None) -> pb.Account:
    if view is None:
        return pb.Account()
    return pb.Account(
        program_id=view.program_id,
        member_id=view.member_id,
        points_available=view.points_available,
        points_held=view.points_held,
        points_debt=view.points_debt,
        stored_value_cash_minor=view.stored_value_cash_minor,
        stored_value_bonus_minor=view.stored_value_bonus_minor,
        tier_code=view.tier_code,
        qualifying_points=view.qualifying_points,
        next_tier_code=view.next_tier_code,
        points_to_next_tier=view.points_to_next_tier,
        enrolled_at=timestamp(view.enrolled_at),
        version=view.version,
    )


def program(view: ProgramView | None) -> pb.Program:
    if view is None:
        return pb.Program()
    s = view.settings
    return pb.Program(
        program_id=view.program_id,
        display_name=s.display_name,
        currency=s.currency,
        time_zone=s.time_zone,
        point_value_minor=s.point_value_minor,
        expiry_policy=pb.ExpiryPolicy(
            kind=_EXPIRY_KINDS[s.expiry_policy.kind],
            days=s.expiry_policy.days,
            years=s.expiry_policy.years,
        ),
        tiers=[pb.Tier(code=t.code, name=t.name, threshold=t.threshold) for t in s.tiers],
        tier_window_days=s.tier_window_days,
        stored_value_split=_SPLITS[s.stored_value_split],
        expected_redemption_rate_ppm=s.expected_redemption_rate_ppm,
        created_at=timestamp(view.created_at),
        updated_at=timestamp(view.updated_at),
        version=view.version,
        effective_position=view.effective_position,
        top_up_bonus=[
            pb.TopUpBonusStep(
                min_cash_minor=t.min_cash_minor, bonus_minor=t.bonus_minor, bonus_ppm=t.bonus_ppm
            )
            for t in s.top_up_bonus
        ],
        points_conversion=(
            pb.PointsConversion(
                points=s.points_conversion.points, value_minor=s.points_conversion.value_minor
            )
            if s.points_conversion
            else None
        ),
        cash_out_policy=_CASH_OUT_POLICIES[s.cash_out_policy],
        insight_settings=pb.InsightSettings(**asdict(s.insights)),
    )


R = TypeVar("R", bound=Result)


def result(o: Outcome, kind: type[R]) -> R:
    assert isinstance(o.result, kind), (o.result, kind)
    return o.result


def lot_points(allocation: dict[str, int]) -> list[pb.LotPoints]:
    return [pb.LotPoints(lot_id=k, points=v) for k, v in allocation.items()]


def enroll_member(o: Outcome) -> pb.EnrollMemberResponse:
    return pb.EnrollMemberResponse(
        account=account(o.account), transaction_id=o.transaction_id, position=o.position
    )


def earn(o: Outcome) -> pb.EarnResponse:
    r = result(o, EarnResult)
    return pb.EarnResponse(
        transaction_id=o.transaction_id,
        position=o.position,
        account=account(o.account),
        lot_id=r.lot_id,
        debt_repaid=r.debt_repaid,
    )


def redeem(o: Outcome) -> pb.RedeemResponse:
    r = result(o, RedeemResult)
    return pb.RedeemResponse(
        transaction_id=o.transaction_id,
        position=o.position,
        account=account(o.account),
        consumed=lot_points(r.consumed),
    )


def hold(o: Outcome) -> pb.HoldResponse:
    r = result(o, HoldResult)
    return pb.HoldResponse(
        hold_id=r.hold_id,
        transaction_id=o.transaction_id,
        position=o.position,
        account=account(o.account),
        expires_at=timestamp(r.expires_at),
    )


def capture_hold(o: Outcome) -> pb.CaptureHoldResponse:
    r = result(o, CaptureResult)
    return pb.CaptureHoldResponse(
        transaction_id=o.transaction_id,
        position=o.position,
        account=account(o.account),
        points_captured=r.points_captured,
        points_released=r.points_released,
        consumed=lot_points(r.consumed),
    )


def release_hold(o: Outcome) -> pb.ReleaseHoldResponse:
    r = result(o, ReleaseResult)
    return pb.ReleaseHoldResponse(
        transaction_id=o.transaction_id,
        position=o.position,
        account=account(o.account),
        points_released=r.points_released,
    )


def adjust(o: Outcome) -> pb.AdjustResponse:
    return pb.AdjustResponse(
        transaction_id=o.transaction_id, position=o.position, account=account(o.account)
    )


def reverse(o: Outcome) -> pb.ReverseResponse:
    r = result(o, ReverseResult)
    return pb.ReverseResponse(
        transaction_id=o.transaction_id,
        position=o.position,
        account=account(o.account),
        points_reversed=r.points_reversed,
        debt_added=r.debt_added,
        reverses_transaction_id=r.reverses_transaction_id,
        cash_minor=r.cash_minor,
        bonus_minor=r.bonus_minor,
        refunded_cash_minor=r.refunded_cash_minor,
        forfeited_bonus_minor=r.forfeited_bonus_minor,
        bonus_deducted_minor=r.bonus_deducted_minor,
        value_minor=r.value_minor,
        refunded_purchase_minor=r.refunded_purchase_minor,
    )


def top_up(o: Outcome) -> pb.TopUpResponse:
    r = result(o, TopUpResult)
    return pb.TopUpResponse(
        transaction_id=o.transaction_id,
        position=o.position,
        account=account(o.account),
        cash_minor=r.cash_minor,
        bonus_minor=r.bonus_minor,
        bonus_step_min_cash_minor=r.bonus_step_min_cash,
    )


def spend(o: Outcome) -> pb.SpendResponse:
    r = result(o, SpendResult)
    return pb.SpendResponse(
        transaction_id=o.transaction_id,
        position=o.position,
        account=account(o.account),
        cash_minor=r.cash_minor,
        bonus_minor=r.bonus_minor,
    )


def convert_points(o: Outcome) -> pb.ConvertPointsResponse:
    r = result(o, ConvertResult)
    return pb.ConvertPointsResponse(
        transaction_id=o.transaction_id,
        position=o.position,
        account=account(o.account),
        value_minor=r.value_minor,
        consumed=lot_points(r.consumed),
    )


def run_expiry(o: Outcome) -> pb.RunExpiryResponse:
    r = result(o, ExpiryResult)
    return pb.RunExpiryResponse(
        expired_points=r.expired_points,
        lots_expired=r.lots_expired,
        accounts_touched=r.accounts_touched,
        position=o.position,
        transaction_id=o.transaction_id,
    )


def transaction(row: TransactionRow) -> pb.Transaction:
    return pb.Transaction(
        transaction_id=row.transaction_id,
        kind=pb.TransactionKind.Value("TRANSACTION_KIND_" + row.kind),
        points_delta=row.points_delta,
        held_delta=row.held_delta,
        debt_delta=row.debt_delta,
        cash_delta_minor=row.cash_delta_minor,
        bonus_delta_minor=row.bonus_delta_minor,
        points_balance_after=row.points_after,
        points_held_after=row.held_after,
        points_debt_after=row.debt_after,
        cash_balance_after_minor=row.cash_after_minor,
        bonus_balance_after_minor=row.bonus_after_minor,
        occurred_at=timestamp(from_micros(row.occurred_at)),
        recorded_at=timestamp(from_micros(row.recorded_at)),
        store_id=row.store_id,
        order_ref=row.order_ref,
        reason=row.reason,
        reverses_transaction_id=row.reverses_transaction_id,
        operator_id=row.operator_id,
        request_id=row.request_id,
        position=row.position,
        hold_id=row.hold_id,
        program_version=row.program_version,
    )


def lot(row: LotRow) -> pb.Lot:
    message = pb.Lot(
        lot_id=row.lot_id,
        earned_at=timestamp(from_micros(row.earned_at)),
        points=row.points,
        remaining=row.remaining,
        held=row.held,
        expired=row.expired,
    )
    if row.expires_at is not None:
        message.expires_at.CopyFrom(timestamp(from_micros(row.expires_at)))
    return message
