"""`ledger program create|show|update`: a programme from the command line, for first runs
and imports (`ledger import --program` needs one), without writing a gRPC client.

The flags are the gRPC request's fields; they are put into that request and checked by the
same parser the server uses (ledger/api/requests.py), so the command line accepts exactly
what the API accepts, with the same words for what is wrong.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from ledger.api import requests as parse
from ledger.api import responses as present
from ledger.application.views import ProgramView
from ledger.v1 import ledger_pb2 as pb

EXPIRY_KINDS = {
    "never": pb.EXPIRY_KIND_NEVER,
    "rolling-days": pb.EXPIRY_KIND_ROLLING_DAYS,
    "end-of-year-after-years": pb.EXPIRY_KIND_END_OF_YEAR_AFTER_YEARS,
}
SPLITS = {
    "proportional": pb.STORED_VALUE_SPLIT_PROPORTIONAL,
    "cash-first": pb.STORED_VALUE_SPLIT_CASH_FIRST,
    "bonus-first": pb.STORED_VALUE_SPLIT_BONUS_FIRST,
}
INT64 = range(-(2**63), 2**63)  # what a request's int64 field can hold
INT32 = range(-(2**31), 2**31)
INSIGHT_SETTINGS = tuple(pb.InsightSettings.DESCRIPTOR.fields_by_name)
CASH_OUT_POLICIES = {
    "forfeit-remaining-bonus": pb.CASH_OUT_POLICY_FORFEIT_REMAINING_BONUS,
    "deduct-spent-bonus": pb.CASH_OUT_POLICY_DEDUCT_SPENT_BONUS,
}


class ProgramArgumentError(ValueError):
    """A flag that cannot become a request field; the message names the flag."""


def _ranged(low: int, high: int) -> Any:
    """An argparse type: a whole number in low..high (a request's field would refuse more,
    and 0 where it means "the default" would be taken silently)."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {number}")
        return number

    return parse


def add_parsers(sub: Any, database_arg: Any) -> None:
    program = sub.add_parser(
        "program",
        help="create, show or update a programme",
        description="A programme from the command line, checked as the API checks it.",
    )
    program_sub = program.add_subparsers(
        dest="program_command", required=True, metavar="{create,show,update}"
    )
    create = program_sub.add_parser(
        "create", help="create a programme", description="Create a programme."
    )
    update = program_sub.add_parser(
        "update",
        help="change a programme's settings",
        description="Change the settings given; the others stay. Changes apply to "
        "transactions recorded after the update.",
    )
    show = program_sub.add_parser(
        "show", help="print a programme's settings", description="Print a programme."
    )
    for p in (create, update, show):
        database_arg(p)
        p.add_argument("--program", required=True, help="the programme's id")
        p.add_argument("--format", choices=("table", "json"), default="table")
    create.add_argument("--name", required=True, help="display name")
    create.add_argument("--currency", required=True, help="ISO 4217 code, e.g. EUR, CNY")
    create.add_argument("--time-zone", default="UTC", help="IANA zone (default UTC)")
    create.add_argument(
        "--point-value-minor", type=_ranged(0, INT64.stop - 1), default=0, help="value of a point"
    )
    for p in (create, update):
        if p is update:
            p.add_argument("--name", help="display name")
        p.add_argument(
            "--expiry",
            help="never | rolling-days:N | end-of-year-after-years:N (default never)",
        )
        p.add_argument(
            "--tier",
            action="append",
            metavar="CODE:NAME:THRESHOLD",
            help="a tier of the ladder (repeat for each); on update, replaces the ladder",
        )
        p.add_argument(
            "--tier-window-days",
            type=_ranged(1, INT32.stop - 1),
            help="qualifying window (default 365)",
        )
        p.add_argument(
            "--stored-value-split",
            "--split",
            dest="stored_value_split",
            metavar="{" + ",".join(SPLITS) + "}",
            help="how a Spend divides between cash and bonus (created with proportional)",
        )
        p.add_argument(
            "--expected-redemption-rate-ppm",
            type=_ranged(1, 1_000_000),
            help="finance's estimate, 1..1000000",
        )
        p.add_argument(
            "--top-up-bonus",
            action="append",
            metavar="MIN_CASH:BONUS[:PPM]",
            help="a step of the top-up promotion, in minor units: a top-up of at least "
            "MIN_CASH gets BONUS plus PPM parts per million of its cash (1000:100 is "
            "'top up 10.00, get 1.00'; 1000:0:50000 is 5%%); repeat for each step; on "
            "update, replaces the schedule",
        )
        p.add_argument(
            "--conversion",
            metavar="POINTS:VALUE_MINOR",
            help="ConvertPoints' rate: POINTS points become VALUE_MINOR of stored-value bonus",
        )
        p.add_argument(
            "--cash-out-policy",
            metavar="{" + ",".join(CASH_OUT_POLICIES) + "}",
            help="what a cash-out pays back (created with forfeit-remaining-bonus): the unspent "
            "cash, or that less the bonus already spent from the top-up",
        )
        p.add_argument(
            "--insight",
            action="append",
            metavar="NAME=VALUE",
            help="a threshold of member insights, e.g. lost_after_days=180 (repeat for each; "
            f"names: {', '.join(INSIGHT_SETTINGS)}); those not given take their defaults, "
            "also on update, which replaces the whole set",
        )
        p.add_argument("--request-id", help="idempotency key (default: a new one)")
    update.add_argument(
        "--no-top-up-bonus", action="store_true", help="remove the top-up promotion"
    )
    update.add_argument(
        "--no-conversion", action="store_true", help="remove the rate: ConvertPoints is refused"
    )


def run(args: argparse.Namespace) -> int:
    from ledger.runtime import Tally

    # Checked before the database is opened: a mistake makes nothing.
    if args.program_command == "create":
        command: Any = parse.create_program(_request(args))
    elif args.program_command == "update":
        command = parse.update_program(_request(args))
    else:
        command = parse.program_id(pb.GetProgramRequest(program_id=args.program))
    tally = Tally.from_url(args.database, exclusive="a `ledger program`")
    try:
        app = tally.app
        if args.program_command == "create":
            view = app.create_program(command).program
        elif args.program_command == "update":
            view = app.update_program(command).program
        else:
            view = ProgramView.of(app.get_program(command))
    finally:
        tally.close()
    _print(present.program(view), args.format)
    return 0


def _request(args: argparse.Namespace) -> Any:
    request_id = args.request_id or f"cli-{args.program_command}-{uuid.uuid4().hex[:12]}"
    tiers = [_tier(t) for t in args.tier or []]
    steps = [_step(t) for t in args.top_up_bonus or []]
    conversion = _conversion(args.conversion) if args.conversion is not None else None
    split = _choice("--stored-value-split", args.stored_value_split, SPLITS)
    cash_out_policy = _choice("--cash-out-policy", args.cash_out_policy, CASH_OUT_POLICIES)
    insights = _insight_settings(args.insight) if args.insight else None
    request: Any
    if args.program_command == "create":
        request = pb.CreateProgramRequest(
            program_id=args.program,
            display_name=args.name,
            currency=args.currency,
            time_zone=args.time_zone,
            point_value_minor=args.point_value_minor,
            tiers=tiers,
            tier_window_days=args.tier_window_days or 0,
            stored_value_split=split or pb.STORED_VALUE_SPLIT_UNSPECIFIED,
            expected_redemption_rate_ppm=args.expected_redemption_rate_ppm or 0,
            top_up_bonus=steps,
            points_conversion=conversion,
            cash_out_policy=cash_out_policy or pb.CASH_OUT_POLICY_UNSPECIFIED,
            insight_settings=insights,
            request_id=request_id,
        )
    else:
        if steps and args.no_top_up_bonus:
            raise ProgramArgumentError("give --top-up-bonus or --no-top-up-bonus, not both")
        if conversion is not None and args.no_conversion:
            raise ProgramArgumentError("give --conversion or --no-conversion, not both")
        request = pb.UpdateProgramRequest(
            program_id=args.program,
            tiers=tiers,
            replace_tiers=bool(tiers),
            top_up_bonus=steps,
            replace_top_up_bonus=bool(steps) or args.no_top_up_bonus,
            points_conversion=conversion,
            clear_points_conversion=args.no_conversion,
            insight_settings=insights,
            request_id=request_id,
        )
        if args.name is not None:
            request.display_name = args.name
        if args.tier_window_days is not None:
            request.tier_window_days = args.tier_window_days
        if split is not None:
            request.stored_value_split = split
        if args.expected_redemption_rate_ppm is not None:
            request.expected_redemption_rate_ppm = args.expected_redemption_rate_ppm
        if cash_out_policy is not None:
            request.cash_out_policy = cash_out_policy
    if args.expiry:
        request.expiry_policy.CopyFrom(_expiry(args.expiry))
    return request


def _tier(text: str) -> pb.Tier:
    parts = text.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        raise ProgramArgumentError(f"--tier {text!r}: give CODE:NAME:THRESHOLD, e.g. GOLD:Gold:500")
    if int(parts[2]) not in INT64:
        raise ProgramArgumentError(f"--tier {text!r}: {parts[2]} is out of range")
    return pb.Tier(code=parts[0], name=parts[1], threshold=int(parts[2]))


def _choice(flag: str, text: str | None, table: dict[str, Any]) -> Any:
    """The enum value a flag names (None: not given); a word it does not know is one line
    (argparse's `choices` would print the whole usage)."""
    if text is None:
        return None
    if text not in table:
        raise ProgramArgumentError(f"{flag} {text!r}: give one of {', '.join(table)}")
    return table[text]


def _integers(flag: str, text: str, counts: tuple[int, ...], shape: str) -> list[int]:
    """The colon-separated whole numbers of `text`, `counts` of them. Signed, so that the
    API's parser says what is out of its range; only what cannot be an int64 is refused
    here."""
    parts = text.split(":")
    try:
        if len(parts) not in counts:
            raise ValueError
        numbers = [int(part, 10) for part in parts]
    except ValueError:
        raise ProgramArgumentError(f"{flag} {text!r}: give {shape}") from None
    for number in numbers:
        if number not in INT64:
            raise ProgramArgumentError(f"{flag} {text!r}: {number} is out of range")
    return numbers


def _step(text: str) -> pb.TopUpBonusStep:
    min_cash, bonus, *ppm = _integers(
        "--top-up-bonus",
        text,
        (2, 3),
        "MIN_CASH:BONUS or MIN_CASH:BONUS:PPM in minor units, e.g. 10000:1500 or 10000:0:50000",
    )
    return pb.TopUpBonusStep(
        min_cash_minor=min_cash, bonus_minor=bonus, bonus_ppm=ppm[0] if ppm else 0
    )


def _conversion(text: str) -> pb.PointsConversion:
    points, value = _integers(
        "--conversion", text, (2,), "POINTS:VALUE_MINOR, e.g. 10:100 (10 points = 1.00)"
    )
    return pb.PointsConversion(points=points, value_minor=value)


def _insight_settings(items: list[str]) -> pb.InsightSettings:
    """--insight NAME=VALUE, each name once; the API's parser checks the ranges."""
    values: dict[str, int] = {}
    for text in items:
        name, equals, value = text.partition("=")
        if name not in INSIGHT_SETTINGS:
            raise ProgramArgumentError(
                f"--insight {text!r}: give NAME=VALUE, NAME one of {', '.join(INSIGHT_SETTINGS)}"
            )
        try:
            number = int(value, 10) if equals else None
        except ValueError:
            number = None
        if number is None:
            raise ProgramArgumentError(f"--insight {text!r}: VALUE must be a whole number")
        if number not in INT32:
            raise ProgramArgumentError(f"--insight {text!r}: {number} is out of range")
        if name in values:
            raise ProgramArgumentError(f"--insight {name} is given twice")
        values[name] = number
    return pb.InsightSettings(**values)


def _expiry(text: str) -> pb.ExpiryPolicy:
    kind, _, number = text.partition(":")
    if kind not in EXPIRY_KINDS or (kind == "never") != (number == ""):
        raise ProgramArgumentError(
            f"--expiry {text!r}: give never, rolling-days:N or end-of-year-after-years:N"
        )
    if kind == "never":
        return pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_NEVER)
    if not number.isdigit():
        raise ProgramArgumentError(f"--expiry {text!r}: N must be a whole number")
    if int(number) not in INT32:
        raise ProgramArgumentError(f"--expiry {text!r}: N is out of range")
    if kind == "rolling-days":
        return pb.ExpiryPolicy(kind=EXPIRY_KINDS[kind], days=int(number))
    return pb.ExpiryPolicy(kind=EXPIRY_KINDS[kind], years=int(number))


def _print(program: pb.Program, fmt: str) -> None:
    from google.protobuf.json_format import MessageToDict

    fields = MessageToDict(program, preserving_proto_field_name=True)
    if fmt == "json":
        print(json.dumps(fields, indent=2))
        return
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        print(f"{key:<{width}}  {shown}")
