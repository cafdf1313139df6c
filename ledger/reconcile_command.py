"""`ledger reconcile`: match a processor's or bank's statement (CSV) against the ledger's
paid cash, store the run, show it, sign it off (docs/reconciliation.md). The matching and the
storing are the very code ReconcileStatement runs (ledger/reconciliation_store.py over
ledger/domain/reconciliation.py); this module only reads the file and prints.

    ledger reconcile --database URL --program P --statement FILE.csv [--source NAME]
        [--since T] [--until T] [--tolerance-seconds N] [--request-id ID]
        [--format table|csv|json]
    ledger reconcile show --database URL --reconciliation ID [--format ...]
    ledger reconcile sign-off --database URL --reconciliation ID --operator NAME
        [--note TEXT] [--request-id ID] [--format ...]

The CSV's header names the fields of a statement line: external_id, payment_ref, kind
(TOP_UP or REFUND), amount_minor (a whole number of minor units), occurred_at (ISO 8601
with its UTC offset); other columns are ignored. Without --since/--until the period is the
whole local days (the programme's time zone) of the statement's first and last lines.
An operator's mistake is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import uuid
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ledger.api.validation import Violations
from ledger.domain.reconciliation import Run, StatementLine
from ledger.queries import from_micros
from ledger.reconciliation_store import (
    Reconciliations,
    check_statement,
    check_tolerance,
    statement_line,
)
from ledger.report_commands import local_moment, parse_time, text_table
from projections.points import micros

FIELDS = ("external_id", "payment_ref", "kind", "amount_minor", "occurred_at")
STALL_SECONDS = 60.0
SHOWN_VIOLATIONS = 5


class Mistake(Exception):
    """An operator's mistake: its message is the one line printed."""


def add_parsers(sub: Any, database_arg: Any) -> None:
    reconcile = sub.add_parser(
        "reconcile",
        help="match a payment processor's statement (CSV) against the ledger's paid cash",
        description="Match the statement's lines against the ledger's top-ups and cash-outs "
        "of the period by payment reference, amount and date, and store the run "
        "(docs/reconciliation.md). `show` prints a stored run, `sign-off` signs one off.",
    )
    database_arg(reconcile)
    reconcile.add_argument("--program", help="the programme's id")
    reconcile.add_argument("--statement", help="the statement: a CSV file with a header")
    reconcile.add_argument("--source", default="", help="the processor's or bank's name")
    time_help = "ISO 8601 with offset, or a date (the programme's local midnight)"
    reconcile.add_argument("--since", help=f"business time, inclusive; {time_help}")
    reconcile.add_argument("--until", help=f"business time, exclusive; {time_help}")
    reconcile.add_argument(
        "--tolerance-seconds",
        default="86400",
        help="how far apart a line and an entry may be dated (default 86400: a day)",
    )
    reconcile.add_argument(
        "--request-id",
        default="",
        help="idempotency key: the same one with the same statement shows the stored run "
        "(default: a new run each time)",
    )
    _format(reconcile)
    commands = reconcile.add_subparsers(dest="reconcile_command", metavar="{show,sign-off}")
    show = commands.add_parser("show", help="print a stored reconciliation")
    sign = commands.add_parser(
        "sign-off",
        help="record who signed a reconciliation off (a note is needed if anything is unmatched)",
    )
    for p in (show, sign):
        # Given before or after the sub-command alike: a sub-command's own default would
        # replace what was given before it, so it has none (SUPPRESS).
        p.add_argument("--database", default=argparse.SUPPRESS, help="as above")
        p.add_argument("--reconciliation", required=True, help="the reconciliation_id")
        p.add_argument("--format", choices=("table", "csv", "json"), default=argparse.SUPPRESS)
    sign.add_argument("--operator", required=True, help="who signs it off")
    sign.add_argument("--note", default="", help="why what is unmatched may stand")
    sign.add_argument(
        "--request-id", default=argparse.SUPPRESS, help="idempotency key (default: new)"
    )


def _format(p: Any) -> None:
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")


# ---------------------------------------------------------------------- running


def run(args: argparse.Namespace) -> int:
    try:
        run_ = _run(args)
    except Mistake as e:
        print(f"ledger reconcile: {e}", file=sys.stderr)
        return 2
    if run_ is None:
        return 1
    try:
        _print(run_, args.format)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _run(args: argparse.Namespace) -> Run | None:
    from ledger.audit.commands import Refused, existing_database
    from ledger.runtime import Tally
    from projections.payments import NAME as PAYMENTS

    command = getattr(args, "reconcile_command", None)
    v = Violations()
    if command is None:
        v.identifier("--program", args.program or "")
        if not args.statement:
            v.add("--statement", "required: the statement's CSV file")
        tolerance = _whole(v, "--tolerance-seconds", args.tolerance_seconds)
        check_tolerance(v, "--tolerance-seconds", tolerance)
        if args.request_id:
            v.request_id(args.request_id, "--request-id")
        times = {f: getattr(args, f[2:]) for f in ("--since", "--until")}
        parsed = {f: parse_time(v, f, text) for f, text in times.items() if text}
        _stop_if_any(v)
        lines = _read_statement(args.statement)
    else:
        v.text("--reconciliation", args.reconciliation, limit=64, required=True)
        if command == "sign-off":
            v.identifier("--operator", args.operator)
            v.text("--note", args.note, limit=4000)
        _stop_if_any(v)
    try:
        config = existing_database(args.database)
    except Refused as e:
        raise Mistake(str(e)) from None
    tally = Tally(config, apply_migrations=False, exclusive="a `ledger reconcile`")
    try:
        store = Reconciliations(tally.database)
        now = micros(tally.app.clock())
        if command == "show":
            return store.get(args.reconciliation)
        if command == "sign-off":
            request_id = args.request_id or str(uuid.uuid4())
            return store.sign_off(args.reconciliation, args.operator, args.note, request_id, now)
        program = tally.app.get_program(args.program)  # PROGRAM_NOT_FOUND: one line
        zone = ZoneInfo(program.settings.time_zone)
        at = {f: local_moment(v, f, value, zone) for f, value in parsed.items()}
        since, until = _period(lines, at.get("--since"), at.get("--until"), zone)
        if since is not None and until is not None and since >= until:
            v.add("--until", "must be after --since")
        _stop_if_any(v)
        if not _caught_up(tally, tally.projections[PAYMENTS]):
            return None
        return store.run(
            args.program,
            args.source,
            since,
            until,
            tolerance,
            lines,
            args.request_id,
            now,
        )
    finally:
        tally.close()


def _stop_if_any(v: Violations) -> None:
    """All the violations in one line (the first few, and how many more)."""
    if v.items:
        shown = "; ".join(f"{f}: {why}" for f, why in v.items[:SHOWN_VIOLATIONS])
        more = len(v.items) - SHOWN_VIOLATIONS
        raise Mistake(shown + (f"; and {more} more" if more > 0 else ""))


def _whole(v: Violations, field: str, text: str) -> int:
    text = text.strip()
    if not text.lstrip("-").isdigit():
        v.add(field, f"{text!r} is not a whole number")
        return 0
    return int(text)


def _read_statement(path: str) -> list[StatementLine]:
    """The CSV's lines, checked as ReconcileStatement checks its lines; a mistake names the
    file's line number (the header is line 1)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise Mistake(f"cannot read the statement {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise Mistake(f"the statement {path} is not a readable CSV file: {e}") from None
    if not rows:
        raise Mistake(f"the statement {path} is empty: it needs a header ({', '.join(FIELDS)})")
    header = [h.strip() for h in rows[0]]
    missing = [f for f in FIELDS if f not in header]
    if missing:
        raise Mistake(
            f"the statement's header lacks {', '.join(missing)} (it must name "
            f"{', '.join(FIELDS)}; got {', '.join(header) or 'nothing'})"
        )
    column = {f: header.index(f) for f in FIELDS}
    v = Violations()
    lines: list[StatementLine] = []
    numbers: list[int] = []  # the file's line number of each of `lines`
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line, e.g. at the end
        where = f"line {number}"
        if len(row) < len(header):
            v.add(where, f"has {len(row)} fields, the header {len(header)}")
            continue
        cell = {f: row[i].strip() for f, i in column.items()}
        amount = _whole(v, f"{where}.amount_minor", cell["amount_minor"])
        occurred_at = None
        if not cell["occurred_at"]:
            v.add(f"{where}.occurred_at", "required")
        else:
            parsed = parse_time(v, f"{where}.occurred_at", cell["occurred_at"])
            if isinstance(parsed, date) and not isinstance(parsed, datetime):
                v.add(f"{where}.occurred_at", "needs a time with its UTC offset, not a date")
            else:
                occurred_at = parsed
        numbers.append(number)
        lines.append(
            statement_line(
                v,
                where,
                cell["external_id"],
                cell["payment_ref"],
                cell["kind"].upper(),
                amount,
                occurred_at,
            )
        )
    check_statement(v, lines, "line")
    # check_statement names lines by index; an operator reads the file's line numbers.
    v.items = [(_renumber(f, numbers), why) for f, why in v.items]
    _stop_if_any(v)
    return lines


def _renumber(field: str, numbers: list[int]) -> str:
    """`line[3].external_id` (an index into the lines) as `line 5.external_id`."""
    if not field.startswith("line["):
        return field
    index, rest = field[5:].split("]", 1)
    return f"line {numbers[int(index)]}{rest}"


def _period(
    lines: list[StatementLine], since: datetime | None, until: datetime | None, zone: ZoneInfo
) -> tuple[int | None, int | None]:
    """The period asked for, or by default the whole local days of the statement's lines."""
    start, end = micros(since), micros(until)
    if lines and start is None:
        first = from_micros(min(x.occurred_at for x in lines)).astimezone(zone)
        start = micros(datetime(first.year, first.month, first.day, tzinfo=zone))
    if lines and end is None:
        last = from_micros(max(x.occurred_at for x in lines)).astimezone(zone)
        following = last.date() + timedelta(days=1)
        end = micros(datetime(following.year, following.month, following.day, tzinfo=zone))
    return start, end


def _caught_up(tally: Any, runner: Any) -> bool:
    """Bring the paid-cash read model to the log's last event (this process writes it, or
    follows the server that does); False, said in one line, if it stops moving."""
    head = int(tally.app.recorder.max_notification_id() or 0)
    runner.start()
    last_move, seen = time.monotonic(), runner.position
    while not runner.wait_for(head, timeout=0.5):
        if runner.errors:
            print(
                f"ledger reconcile: the payments read model failed at position "
                f"{runner.position} of {head} (logged above); nothing reconciled",
                file=sys.stderr,
            )
            return False
        if runner.position != seen:
            last_move, seen = time.monotonic(), runner.position
        elif time.monotonic() - last_move > STALL_SECONDS:
            print(
                f"ledger reconcile: the payments read model is at position {runner.position}, "
                f"the log at {head}, and has not moved for {STALL_SECONDS:.0f} s; nothing "
                "reconciled",
                file=sys.stderr,
            )
            return False
    return True


# ---------------------------------------------------------------------- printing


def _time(value: int | None) -> str | None:
    if value is None:
        return None
    return from_micros(value).isoformat().replace("+00:00", "Z")


def as_dict(run: Run) -> dict[str, Any]:
    """The run named as ReportService's Reconciliation names its fields."""
    r = run.result

    def line(x: StatementLine) -> dict[str, Any]:
        return {
            "external_id": x.external_id,
            "payment_ref": x.payment_ref,
            "kind": x.kind,
            "amount_minor": x.amount_minor,
            "occurred_at": _time(x.occurred_at),
        }

    s = run.sign_off
    return {
        "reconciliation_id": run.reconciliation_id,
        "program_id": run.program_id,
        "source": run.source,
        "period": {"since": _time(run.since), "until": _time(run.until)},
        "date_tolerance_seconds": run.tolerance_seconds,
        "matched": [
            {
                "payment_ref": m.payment_ref,
                "kind": m.kind,
                "transaction_ids": list(m.transaction_ids),
                "external_ids": list(m.external_ids),
                "amount_minor": m.amount_minor,
            }
            for m in r.matched
        ],
        "missing_in_ledger": [line(x) for x in r.missing_in_ledger],
        "missing_in_statement": [
            {
                "transaction_id": e.transaction_id,
                "member_id": e.member_id,
                "payment_ref": e.payment_ref,
                "kind": e.kind,
                "amount_minor": e.amount_minor,
                "occurred_at": _time(e.occurred_at),
                "store_id": e.store_id,
            }
            for e in r.missing_in_statement
        ],
        "amount_mismatches": [
            {
                "payment_ref": m.payment_ref,
                "kind": m.kind,
                "transaction_ids": list(m.transaction_ids),
                "external_ids": list(m.external_ids),
                "ledger_amount_minor": m.ledger_amount_minor,
                "statement_amount_minor": m.statement_amount_minor,
            }
            for m in r.amount_mismatches
        ],
        "duplicate_lines": [line(x) for x in r.duplicate_lines],
        "outside_period": [line(x) for x in r.outside_period],
        "ledger_total_minor": r.ledger_total_minor,
        "statement_total_minor": r.statement_total_minor,
        "reconciled_at": _time(run.reconciled_at),
        "position": run.position,
        "signed_off_by": s.operator_id if s else "",
        "signed_off_at": _time(s.signed_off_at) if s else None,
        "sign_off_note": s.note if s else "",
    }


HEADERS = [
    "status",
    "payment_ref",
    "kind",
    "transaction_ids",
    "external_ids",
    "ledger_amount_minor",
    "statement_amount_minor",
    "occurred_at",
]


def rows(run: Run) -> list[list[Any]]:
    """One row per match, mismatch and leftover, in the result's order; ids space-separated."""
    r = run.result
    out: list[list[Any]] = []
    for m in r.matched:
        ids = (" ".join(m.transaction_ids), " ".join(m.external_ids))
        out.append(["matched", m.payment_ref, m.kind, *ids, m.amount_minor, m.amount_minor, ""])
    for mm in r.amount_mismatches:
        ids = (" ".join(mm.transaction_ids), " ".join(mm.external_ids))
        amounts = (mm.ledger_amount_minor, mm.statement_amount_minor)
        out.append(["amount_mismatch", mm.payment_ref, mm.kind, *ids, *amounts, ""])
    for e in r.missing_in_statement:
        when = _time(e.occurred_at)
        out.append(
            [
                "missing_in_statement",
                e.payment_ref,
                e.kind,
                e.transaction_id,
                "",
                e.amount_minor,
                "",
                when,
            ]
        )
    for status, lines in (
        ("missing_in_ledger", r.missing_in_ledger),
        ("duplicate_line", r.duplicate_lines),
        ("outside_period", r.outside_period),
    ):
        for x in lines:
            out.append(
                [
                    status,
                    x.payment_ref,
                    x.kind,
                    "",
                    x.external_id,
                    "",
                    x.amount_minor,
                    _time(x.occurred_at),
                ]
            )
    return out


def _print(run: Run, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(as_dict(run), indent=2))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(HEADERS)
        writer.writerows(rows(run))
        return
    print(text_table(HEADERS, rows(run)))
    r = run.result
    print(
        f"reconciliation {run.reconciliation_id}: {len(r.matched)} matched, "
        f"{len(r.amount_mismatches)} amount mismatches, {len(r.missing_in_ledger)} missing in "
        f"the ledger, {len(r.missing_in_statement)} missing in the statement, "
        f"{len(r.duplicate_lines)} duplicate lines, {len(r.outside_period)} outside the period"
    )
    print(
        f"totals (refunds negative): ledger {r.ledger_total_minor}, statement "
        f"{r.statement_total_minor}; period [{_time(run.since) or '-'}, "
        f"{_time(run.until) or '-'}); ledger position {run.position}"
    )
    s = run.sign_off
    if s is not None:
        print(f"signed off by {s.operator_id} at {_time(s.signed_off_at)}: {s.note}")
    else:
        print("not signed off" + (" (needs a note: unmatched lines)" if r.unmatched else ""))
