"""One handler per account command: how a command becomes calls on its account.

A handler reads the command's fields, asks the program's settings what they decide (expiry,
tier window), calls the account's method, and returns the command's typed result. It saves
nothing and catches nothing: a DomainError raised by the account is the refusal. Handlers are
registered by command type; `handler_for` finds one, and fails loudly for a type that has
none, so a new command is one command class, one handler here and one descriptor in the API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from ledger.application import commands as c
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
from ledger.domain.account import MemberAccount
from ledger.domain.program import Program
from ledger.domain.provenance import Provenance


@dataclass
class CommandContext:
    """What a handler works with: loaded fresh on every attempt."""

    program: Program
    account: MemberAccount
    provenance: Provenance
    now: datetime


Cmd = TypeVar("Cmd", bound=c.AccountCommand)
Handler = Callable[[Any, CommandContext], Result | None]
_HANDLERS: dict[type[c.AccountCommand], Handler] = {}


def handles(command_type: type[Cmd]) -> Callable[[Callable[[Cmd, CommandContext], Any]], Any]:
    def register(handler: Callable[[Cmd, CommandContext], Any]) -> Any:
        if command_type in _HANDLERS:
            raise TypeError(f"{command_type.__name__} has a handler already")
        _HANDLERS[command_type] = handler
        return handler

    return register


def handler_for(command_type: type[c.AccountCommand]) -> Handler:
    try:
        return _HANDLERS[command_type]
    except KeyError:
        raise TypeError(f"no handler for {command_type.__name__}") from None


def handled_types() -> frozenset[type[c.AccountCommand]]:
    return frozenset(_HANDLERS)


@handles(c.EarnPoints)
def earn(cmd: c.EarnPoints, ctx: CommandContext) -> EarnResult:
    settings = ctx.program.settings
    expires_at = cmd.expires_at or settings.expiry_policy.expires_at(
        ctx.provenance.occurred_at, settings.time_zone
    )
    qualifies_until = (
        settings.qualifies_until(ctx.provenance.occurred_at) if cmd.qualifying else None
    )
    repaid = ctx.account.earn(
        ctx.provenance, ctx.now, cmd.points, cmd.purchase_minor, expires_at, qualifies_until
    )
    return EarnResult(lot_id=ctx.provenance.transaction_id, debt_repaid=repaid)


@handles(c.RedeemPoints)
def redeem(cmd: c.RedeemPoints, ctx: CommandContext) -> RedeemResult:
    return RedeemResult(consumed=ctx.account.redeem(ctx.provenance, ctx.now, cmd.points))


@handles(c.HoldPoints)
def hold(cmd: c.HoldPoints, ctx: CommandContext) -> HoldResult:
    held = ctx.account.hold(ctx.provenance, ctx.now, cmd.points, timedelta(seconds=cmd.ttl_seconds))
    return HoldResult(hold_id=held.hold_id, expires_at=held.expires_at)


@handles(c.CaptureHold)
def capture_hold(cmd: c.CaptureHold, ctx: CommandContext) -> CaptureResult:
    consumed, released = ctx.account.capture_hold(ctx.provenance, ctx.now, cmd.hold_id, cmd.points)
    return CaptureResult(
        consumed=consumed,
        points_captured=sum(consumed.values()),
        points_released=sum(released.values()),
    )


@handles(c.ReleaseHold)
def release_hold(cmd: c.ReleaseHold, ctx: CommandContext) -> ReleaseResult:
    returned = ctx.account.release_hold(ctx.provenance, ctx.now, cmd.hold_id)
    return ReleaseResult(points_released=sum(returned.values()))


@handles(c.AdjustPoints)
def adjust(cmd: c.AdjustPoints, ctx: CommandContext) -> None:
    settings = ctx.program.settings
    expires_at = settings.expiry_policy.expires_at(ctx.provenance.occurred_at, settings.time_zone)
    ctx.account.adjust(ctx.provenance, ctx.now, cmd.points, expires_at)


@handles(c.ReverseTransaction)
def reverse(cmd: c.ReverseTransaction, ctx: CommandContext) -> ReverseResult:
    done = ctx.account.reverse(
        ctx.provenance,
        ctx.now,
        cmd.transaction_id,
        cmd.points,
        cmd.amount_minor,
        ctx.program.settings.cash_out_policy,
        cmd.refund_purchase_minor,
    )
    return ReverseResult(
        points_reversed=done.points_reversed,
        debt_added=done.debt_added,
        reverses_transaction_id=cmd.transaction_id,
        cash_minor=done.cash_minor,
        bonus_minor=done.bonus_minor,
        refunded_cash_minor=done.refunded_cash_minor,
        forfeited_bonus_minor=done.forfeited_bonus_minor,
        bonus_deducted_minor=done.bonus_deducted_minor,
        value_minor=done.value_minor,
        refunded_purchase_minor=done.refund_purchase_minor,
    )


@handles(c.TopUp)
def top_up(cmd: c.TopUp, ctx: CommandContext) -> TopUpResult:
    """An explicit bonus (0 included) wins; otherwise the schedule's step, if one is met."""
    bonus, step_min_cash = cmd.bonus_minor, None
    if bonus is None:
        step = ctx.program.settings.top_up_step(cmd.cash_minor)
        bonus = step.bonus_for(cmd.cash_minor) if step else 0
        step_min_cash = step.min_cash_minor if step else None
    ctx.account.top_up(
        ctx.provenance,
        ctx.now,
        cmd.cash_minor,
        bonus,
        cmd.payment_ref,
        step_min_cash,
        ctx.program.version,
    )
    return TopUpResult(
        cash_minor=cmd.cash_minor, bonus_minor=bonus, bonus_step_min_cash=step_min_cash
    )


@handles(c.Spend)
def spend(cmd: c.Spend, ctx: CommandContext) -> SpendResult:
    cash, bonus = ctx.account.spend(
        ctx.provenance, ctx.now, cmd.amount_minor, ctx.program.settings.stored_value_split
    )
    return SpendResult(cash_minor=cash, bonus_minor=bonus)


@handles(c.ConvertPoints)
def convert_points(cmd: c.ConvertPoints, ctx: CommandContext) -> ConvertResult:
    value, consumed = ctx.account.convert_points(
        ctx.provenance, ctx.now, cmd.points, ctx.program.settings.points_conversion
    )
    return ConvertResult(value_minor=value, consumed=consumed)


@handles(c.ExpireLots)
def expire_lots(cmd: c.ExpireLots, ctx: CommandContext) -> ExpiryResult:
    due = ctx.account.expire_lots(cmd.as_of, ctx.provenance)
    return ExpiryResult(
        expired_points=sum(due.values()), lots_expired=len(due), accounts_touched=int(bool(due))
    )


@handles(c.ExpireHolds)
def expire_holds(cmd: c.ExpireHolds, ctx: CommandContext) -> None:
    ctx.account.bring_up_to(ctx.now, ctx.provenance)
