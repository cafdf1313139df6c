"""One descriptor per account command RPC: the request's parser, the response's presenter,
and the command's field in ExecuteBatch's `oneof command` (None: not allowed in a batch).

The servicer's account-command RPCs and the batch's parsing and presenting are all made from
this table, so a new account command is its command class, its handler
(ledger/application/handlers.py) and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.api import requests as parse
from ledger.api import responses as present
from ledger.application import commands as c
from ledger.application.commands import AccountCommand
from ledger.application.views import Outcome


@dataclass(frozen=True)
class CommandRpc:
    rpc: str  # the RPC's name in LedgerService
    command: type[AccountCommand]
    parse: Callable[[Any, datetime], AccountCommand]
    present: Callable[[Outcome], Any]
    batch_field: str | None = None


ACCOUNT_COMMANDS = (
    CommandRpc("EnrollMember", c.EnrollMember, parse.enroll_member, present.enroll_member),
    CommandRpc("Earn", c.EarnPoints, parse.earn, present.earn, batch_field="earn"),
    CommandRpc("Redeem", c.RedeemPoints, parse.redeem, present.redeem, batch_field="redeem"),
    CommandRpc("Hold", c.HoldPoints, parse.hold, present.hold),
    CommandRpc("CaptureHold", c.CaptureHold, parse.capture_hold, present.capture_hold),
    CommandRpc("ReleaseHold", c.ReleaseHold, parse.release_hold, present.release_hold),
    CommandRpc("Adjust", c.AdjustPoints, parse.adjust, present.adjust, batch_field="adjust"),
    CommandRpc(
        "Reverse", c.ReverseTransaction, parse.reverse, present.reverse, batch_field="reverse"
    ),
    CommandRpc("TopUp", c.TopUp, parse.top_up, present.top_up, batch_field="top_up"),
    CommandRpc("Spend", c.Spend, parse.spend, present.spend, batch_field="spend"),
    CommandRpc("ConvertPoints", c.ConvertPoints, parse.convert_points, present.convert_points),
)

# ExecuteBatch: the descriptor by the request's `oneof command` field, and by command type.
IN_BATCH = {d.batch_field: d for d in ACCOUNT_COMMANDS if d.batch_field}
_BY_COMMAND = {d.command: d for d in ACCOUNT_COMMANDS}


def of(command: AccountCommand) -> CommandRpc:
    return _BY_COMMAND[type(command)]
