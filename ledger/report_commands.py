"""`ledger report trial-balance|journal|liabilities|movements|settlement|expiry-forecast|
custody|deferred-revenue|breakage|insights`: finance's reports from the command line
(docs/reports.md, docs/accounting.md), read by the same functions as ReportService
(ledger/journal_queries.py, ledger/forecast_queries.py, ledger/revenue_queries.py), so both
give the same figures; and marketing's members to reach (docs/insights.md), read by
InsightsService's (ledger/insights_queries.py; flags and layout in ledger/insights_report.py).

The database must exist and hold a ledger (nothing is created, no migration applied). Each
report reads its read models (READS: the journal, the points read model's lots for the
expiry forecast, the revenue read model for deferred revenue and breakage, the insights and
points read models for insights); before reading, the command brings them up to the log's
last event, processing what is left itself, or, on PostgreSQL while a server writes them,
waiting for that server's to get there.
On SQLite the file serves one process at a time, so a running server makes this command
refuse, as it does `ledger program`.

Times: an ISO 8601 instant with its UTC offset (2024-05-01T00:00:00+02:00, ...Z), or a date
(2024-05-01), which is the first instant of that day in the programme's time zone. Periods
are (since, until] in recorded time, `journal` included (ListPostings' own since is
inclusive and its until exclusive; here they follow the reports'). Insights' --as-of is
business time (occurred_at), as InsightsService's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ledger import insights_report
from ledger.api.errors import InvalidArgument
from ledger.api.validation import Violations
from ledger.domain.errors import DomainError
from ledger.forecast_queries import ForecastQueries, expiry_window
from ledger.insights_queries import READS as INSIGHTS_READS
from ledger.insights_queries import InsightsQueries, Page, SegmentFilter
from ledger.journal_queries import LINES, JournalQueries, PostingsFilter
from ledger.periods import Period, period_ends
from ledger.queries import from_micros
from ledger.revenue_queries import RevenueQueries
from projections.insights import NAME as INSIGHTS
from projections.journal import NAME as JOURNAL
from projections.points import NAME as POINTS
from projections.revenue import NAME as REVENUE

# Each report, and the read models it reads (what the command catches up first).
READS: dict[str, tuple[str, ...]] = {
    "trial-balance": (JOURNAL,),
    "journal": (JOURNAL,),
    "liabilities": (JOURNAL,),
    "movements": (JOURNAL,),
    "settlement": (JOURNAL,),
    "expiry-forecast": (POINTS,),
    "custody": (JOURNAL,),
    "deferred-revenue": (REVENUE,),
    "breakage": (REVENUE,),
    "insights": INSIGHTS_READS,
}
REPORTS = tuple(READS)
ALIASES = {"postings": "journal"}
READ_MODEL_NAMES = {
    JOURNAL: "journal",
    POINTS: "points read model",
    REVENUE: "revenue read model",
    INSIGHTS: "insights read model",
}
# The insights list is read as one page: one snapshot, so that the rows, the control total
# and the position agree (pages would each be a snapshot of their own, and each page reads
# every member's row anyway).
WHOLE_SELECTION = Page(size=2**62)
# Catching up: refused when the read model has not moved for this long.
STALL_SECONDS = 60.0
MICROSECOND = timedelta(microseconds=1)


class ReadModelBehind(Exception):
    """A read model could not be brought up to the log; the message says where it is."""


JournalBehind = ReadModelBehind  # its name before other read models were caught up


def add_parsers(sub: Any, database_arg: Any) -> None:
    report = sub.add_parser(
        "report",
        help="finance's reports: trial balance, journal, liabilities, movements, settlement, "
        "expiry forecast, prepaid custody, deferred revenue, breakage; marketing's insights",
        description="Finance's reports (docs/reports.md), as ReportService gives them, and "
        "marketing's member insights (docs/insights.md), as InsightsService gives them. Reads "
        "the database; brings the read models a report reads up to the log first.",
    )
    report_sub = report.add_subparsers(
        dest="report_command", required=True, metavar="{" + ",".join(REPORTS) + "}"
    )
    parsers = {
        "trial-balance": report_sub.add_parser(
            "trial-balance",
            help="every ledger account's debit, credit and balance as of a time",
            description="The general ledger as of --as-of (default: now): every contra "
            "account and one control account per kind of member account.",
        ),
        "journal": report_sub.add_parser(
            "journal",
            aliases=["postings"],
            help="the postings of a period, with control totals",
            description="The journal's postings recorded in (--since, --until], optionally of "
            "one ledger account (a member's: member:<m>:<kind>) or one transaction.",
        ),
        "liabilities": report_sub.add_parser(
            "liabilities",
            help="points and stored value owed to members as of a time",
            description="Points outstanding and their value, points debt, stored value (cash, "
            "bonus) as of --as-of (default: now); --by-store: per store of issue.",
        ),
        "movements": report_sub.add_parser(
            "movements",
            help="opening, movements and closing of points, cash and bonus over a period",
            description="Opening balance, the movements of (--since, --until] line by line, "
            "and closing balance, for points, stored-value cash and bonus.",
        ),
        "settlement": report_sub.add_parser(
            "settlement",
            help="stored value sold by one store and spent at another over a period",
            description="What each store of issue owes each store where its stored value was "
            "spent in (--since, --until], net of refunds there, and netted per pair.",
        ),
        "expiry-forecast": report_sub.add_parser(
            "expiry-forecast",
            help="points that will expire per local day, and the members to warn",
            description="Points of lots expiring in [--since, --until) (default: now, and 366 "
            "days later) if nobody uses them, per local day (the last day they can be used), "
            "and the members they belong to, most points first.",
        ),
        "custody": report_sub.add_parser(
            "custody",
            help="stored-value cash per store at each period end, and the custody share",
            description="The stored-value cash each store of issue owes at the end of each "
            "month, quarter or year ending in (--since, --until], and --ratio-ppm of it "
            "rounded up: the amount to hold in custody (单用途商业预付卡).",
        ),
        "deferred-revenue": report_sub.add_parser(
            "deferred-revenue",
            help="IFRS 15 allocation, revenue recognised and contract liability for points",
            description="Cumulative to --as-of (recorded, default now): each earn's purchase "
            "allocated to its points by relative stand-alone selling price, the revenue "
            "recognised as points are redeemed against the estimate, and the liability left "
            "(docs/accounting.md). A period's revenue is the difference of two reports.",
        ),
        "breakage": report_sub.add_parser(
            "breakage",
            help="per earn cohort: issued, redeemed, expired, reversed, outstanding, rates",
            description="The programme's redemption history per cohort (the month, quarter "
            "or year of the earn, local time) starting in [--since, --until): what to set "
            "expected_redemption_rate_ppm from.",
        ),
        "insights": report_sub.add_parser(
            "insights",
            help="members to reach (by stage, segment, points to the next tier, anniversary), "
            "or the programme's figures",
            description="The members of a selection with their insights as of --as-of "
            "(business time, default now), in member id order, for an SMS, WeChat or e-mail "
            "tool; the control total on stderr. --summary: the programme's figures instead.",
        ),
    }
    for p in parsers.values():
        database_arg(p)
        p.add_argument("--program", required=True, help="the programme's id")
        p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    time_help = "ISO 8601 with offset, or a date (the programme's local midnight)"
    for name in ("trial-balance", "liabilities", "deferred-revenue"):
        parsers[name].add_argument("--as-of", help=f"recorded at or before; {time_help}")
    parsers["insights"].add_argument(
        "--as-of", help=f"occurred at or before (business time, default now); {time_help}"
    )
    insights_report.add_arguments(parsers["insights"])
    parsers["deferred-revenue"].add_argument(
        "--rate-ppm",
        help="the estimate of the share of points redeemed, 1..1000000 "
        "(default: the programme's in force at --as-of)",
    )
    breakage = parsers["breakage"]
    breakage.add_argument("--cohort", help="month, quarter or year (required)")
    breakage.add_argument("--since", help=f"cohorts starting at or after; {time_help}")
    breakage.add_argument("--until", help=f"cohorts starting before; {time_help}")
    for name in ("journal", "movements", "settlement"):
        parsers[name].add_argument(
            "--since", help=f"recorded after (default: the start); {time_help}"
        )
        parsers[name].add_argument(
            "--until", help=f"recorded at or before (default: now); {time_help}"
        )
    forecast = parsers["expiry-forecast"]
    forecast.add_argument("--since", help=f"expiring at or after (default: now); {time_help}")
    forecast.add_argument(
        "--until", help=f"expiring before (default: since + 366 days, the most); {time_help}"
    )
    forecast.add_argument("--member", default="", help="only this member")
    forecast.add_argument("--limit", help="list at most this many members (default: all)")
    custody = parsers["custody"]
    custody.add_argument("--period", help="month, quarter or year (required)")
    custody.add_argument(
        "--ratio-ppm", help="the share to hold in custody, parts per million, 0..1000000 (required)"
    )
    custody.add_argument(
        "--since", help=f"periods ending after (default: the programme's start); {time_help}"
    )
    custody.add_argument("--until", help=f"periods ending at or before (default: now); {time_help}")
    parsers["liabilities"].add_argument(
        "--by-store", action="store_true", help="stored value per store of issue"
    )
    parsers["journal"].add_argument("--account", default="", help="only this ledger account")
    parsers["journal"].add_argument("--transaction", default="", help="only this transaction")


# ---------------------------------------------------------------------- running


PERIOD_WORDS = {"month": Period.MONTH, "quarter": Period.QUARTER, "year": Period.YEAR}


def _whole(v: Violations, flag: str, text: str | None, high: int, required: bool) -> int:
    """A whole number 0..high given as text (here, not by argparse: one line, not its usage)."""
    if text is None:
        if required:
            v.add(flag, f"required: a whole number 0..{high}")
        return 0
    if not text.isdigit() or int(text) > high:
        v.add(flag, f"must be between 0 and {high}, not {text!r}")
        return 0
    return int(text)


def run(args: argparse.Namespace) -> int:
    kind = ALIASES.get(args.report_command, args.report_command)
    command = f"ledger report {kind}"
    try:
        return _run(args, kind, command)
    except InvalidArgument as e:  # a flag, or a time the programme's rules refuse: one line
        line = "; ".join(f"{field}: {why}" for field, why in e.violations)
    except DomainError as e:  # no such programme
        line = e.message
    print(f"{command}: {line}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace, kind: str, command: str) -> int:
    from ledger.audit.commands import Refused, existing_database
    from ledger.runtime import Tally

    # Checked before the database is opened.
    v = Violations()
    v.identifier("--program", args.program)
    if kind == "expiry-forecast":
        v.identifier("--member", args.member, required=False)
        args.limit = _whole(v, "--limit", args.limit, 2**62, required=False)
    if kind == "deferred-revenue" and args.rate_ppm is not None:
        args.rate_ppm = _whole(v, "--rate-ppm", args.rate_ppm, 1_000_000, required=True)
        if args.rate_ppm == 0:
            v.add("--rate-ppm", "must be between 1 and 1000000, not '0'")
    if kind == "breakage":
        args.cohort = PERIOD_WORDS.get(args.cohort or "")
        if args.cohort is None:
            v.add("--cohort", "required: month, quarter or year")
    if kind == "custody":
        args.ratio_ppm = _whole(v, "--ratio-ppm", args.ratio_ppm, 1_000_000, required=True)
        args.period = PERIOD_WORDS.get(args.period or "")
        if args.period is None:
            v.add("--period", "required: month, quarter or year")
    if kind == "insights":
        insights_report.check(v, args)
    texts = {flag: getattr(args, flag[2:].replace("-", "_"), None) for flag in _TIME_FLAGS}
    parsed = {flag: parse_time(v, flag, text) for flag, text in texts.items() if text}
    v.raise_if_any()
    try:
        config = existing_database(args.database)
    except Refused as e:
        print(f"{command}: {e}", file=sys.stderr)
        return 2
    tally = Tally(config, apply_migrations=False, exclusive="a `ledger report`")
    try:
        program = tally.app.get_program(args.program)  # PROGRAM_NOT_FOUND: one line
        zone = ZoneInfo(program.settings.time_zone)
        moments = {flag: local_moment(v, flag, value, zone) for flag, value in parsed.items()}
        since, until = moments.get("--since"), moments.get("--until")
        if kind == "expiry-forecast":
            since = moments["--since"] = since or tally.app.clock()
            moments["--until"] = _window(v, since, until)
        elif kind == "custody":
            ends = _custody_periods(v, args, program, zone, since, until, tally.app.clock())
        elif kind == "insights":
            moments["--as-of"] = _business_as_of(v, moments.get("--as-of"), tally.app.clock())
        elif since and until and since >= until:
            v.add("--until", "must be after --since")
        v.raise_if_any()
        try:
            for read_model in READS[kind]:
                _catch_up(tally, tally.projections[read_model], READ_MODEL_NAMES[read_model])
        except ReadModelBehind as e:
            print(f"{command}: {e}", file=sys.stderr)
            return 1
        settings = program.settings
        if kind == "insights":
            report = _insights(InsightsQueries(tally.database), args, program, moments["--as-of"])
        elif kind == "expiry-forecast":
            report = _expiry_forecast(ForecastQueries(tally.database), args, zone, moments)
        elif kind == "custody":
            found = ForecastQueries(tally.database).prepaid_custody(
                args.program, settings.currency, zone, ends, args.ratio_ppm
            )
            report = asdict(found)
            for period in report["periods"]:
                period["period_end"] = _time_of(period["period_end"])
        elif kind in ("deferred-revenue", "breakage"):
            report = _revenue(kind, RevenueQueries(tally.database), args, settings, moments)
        else:
            report = _report(kind, JournalQueries(tally.database), args, settings, moments)
    finally:
        tally.close()
    try:
        if kind == "insights":
            _print_insights(report, args)
        else:
            _print(kind, report, args.format)
        sys.stdout.flush()
    except BrokenPipeError:  # `ledger report ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


_TIME_FLAGS = ("--as-of", "--since", "--until")


def parse_time(v: Violations, flag: str, text: str) -> datetime | date | None:
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text)
    except ValueError:
        v.add(flag, f"{text!r} is not a date or an ISO 8601 time (e.g. 2024-05-01T00:00:00Z)")
        return None
    if moment.tzinfo is None:
        v.add(flag, f"{text!r} has no UTC offset: add one (e.g. +02:00 or Z), or give a date")
        return None
    return moment


def local_moment(v: Violations, flag: str, value: datetime | date | None, zone: ZoneInfo) -> Any:
    if isinstance(value, datetime) or value is None:
        return v.moment(flag, value)
    return v.moment(flag, datetime(value.year, value.month, value.day, tzinfo=zone))


def _window(v: Violations, since: datetime, until: datetime | None) -> datetime | None:
    window = expiry_window(v, since, until, field="--until")
    return window[1] if window else None


def _custody_periods(
    v: Violations,
    args: argparse.Namespace,
    program: Any,
    zone: ZoneInfo,
    since: datetime | None,
    until: datetime | None,
    now: datetime,
) -> list[tuple[str, datetime]]:
    if v.items:  # a time that did not parse: nothing to say about the periods
        return []
    since, until = since or program.created_on, until or now
    if since >= until:
        if args.since and args.until:
            v.add("--until", "must be after --since")
        return []
    ends = period_ends(args.period, zone, since, until)
    if ends is None:
        v.add("--until", "at most 400 periods in (--since, --until]")
        return []
    return ends


def _catch_up(tally: Any, runner: Any, name: str = "journal") -> None:
    """Bring a read model (`name` in messages) to the log's last event (this process writes
    it, or follows the process that does); ReadModelBehind if it stops moving or fails."""
    head = int(tally.app.recorder.max_notification_id() or 0)
    runner.start()
    last_move, seen = time.monotonic(), runner.position
    while not runner.wait_for(head, timeout=0.5):
        if runner.errors:
            raise ReadModelBehind(
                f"the {name} failed at position {runner.position} of {head} (logged above); "
                "no report"
            )
        if runner.position != seen:
            last_move, seen = time.monotonic(), runner.position
        elif time.monotonic() - last_move > STALL_SECONDS:
            raise ReadModelBehind(
                f"the {name} is at position {runner.position}, the log at {head}, and it has "
                f"not moved for {STALL_SECONDS:.0f} s (is the server that writes it stuck?); "
                "no report"
            )


def _business_as_of(v: Violations, as_of: datetime | None, now: datetime) -> datetime:
    """Insights' --as-of (default now), refused in the future as InsightsService refuses it."""
    if as_of is not None and as_of > now:
        v.add("--as-of", "must not be in the future")
    return as_of or now


def _insights(
    queries: InsightsQueries, args: argparse.Namespace, program: Any, as_of: datetime
) -> dict[str, Any]:
    """The programme's figures (--summary) or the whole selection, as plain data."""
    if args.summary:
        return insights_report.summary(queries.program_insights(program, as_of), as_of)
    chosen = SegmentFilter(
        args.stage, args.segment, args.points_to_next_tier_at_most, args.anniversary_within_days
    )
    return insights_report.selection(
        queries.segment_members(program, chosen, as_of, WHOLE_SELECTION), as_of
    )


def _print_insights(report: dict[str, Any], args: argparse.Namespace) -> None:
    """The list (or the figures) on stdout; a list's control total on stderr."""
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        if args.summary:
            headers, rows = insights_report.tabulated_summary(report)
        else:
            headers, rows = insights_report.tabulated_members(report)
        if args.format == "csv":
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(headers)
            writer.writerows(rows)
        else:
            print(text_table(headers, rows))
            if args.summary:
                print(insights_report.summary_note(report))
    if not args.summary:
        sys.stdout.flush()  # the list first, then its total (a terminal shows them in order)
        print(insights_report.control_total(report), file=sys.stderr)


def _report(
    kind: str, queries: JournalQueries, args: argparse.Namespace, settings: Any, at: dict[str, Any]
) -> dict[str, Any]:
    """The report as plain data, named as ReportService names its fields."""
    program_id, currency = args.program, settings.currency
    since, until = at.get("--since"), at.get("--until")
    if kind == "trial-balance":
        trial = queries.trial_balance(program_id, at.get("--as-of"))
        return {"rows": [asdict(r) for r in trial.rows], "position": trial.position}
    if kind == "liabilities":
        found = asdict(
            queries.liabilities(program_id, currency, settings.point_value_minor, at.get("--as-of"))
        )
        if not args.by_store:
            found.pop("rows")
        return found
    if kind == "movements":
        return asdict(queries.movements(program_id, currency, since, until))
    if kind == "settlement":
        return asdict(queries.settlement(program_id, currency, since, until))
    return _journal(queries, args, since, until)


def _revenue(
    kind: str, queries: RevenueQueries, args: argparse.Namespace, settings: Any, at: dict[str, Any]
) -> dict[str, Any]:
    if kind == "deferred-revenue":
        return asdict(queries.deferred_revenue(args.program, at.get("--as-of"), args.rate_ppm))
    found = asdict(
        queries.breakage(
            args.program,
            args.cohort,
            at.get("--since"),
            at.get("--until"),
            settings.expected_redemption_rate_ppm,
        )
    )
    for row in found["rows"]:
        row["cohort_start"] = _time_of(row["cohort_start"])
    return found


def _journal(
    queries: JournalQueries, args: argparse.Namespace, since: Any, until: Any
) -> dict[str, Any]:
    """Every posting of (since, until]: PostingsFilter's since is inclusive and its until
    exclusive, so both move on by one microsecond (the journal's resolution)."""
    chosen = PostingsFilter(
        args.program,
        args.transaction,
        args.account,
        since + MICROSECOND if since else None,
        until + MICROSECOND if until else None,
    )
    rows: list[dict[str, Any]] = []
    after: tuple[int, int] | None = (0, -1)
    total_count = total_amount = 0
    while after is not None:
        page = queries.postings(chosen, after, 1000)
        total_count, total_amount = page.total_count, page.total_amount
        for r in page.rows:
            row = asdict(r)
            del row["program_id"], row["seq"]
            row["occurred_at"] = _time(r.occurred_at)
            row["recorded_at"] = _time(r.recorded_at)
            rows.append(row)
        after = page.after
    return {"postings": rows, "total_count": total_count, "total_amount": total_amount}


def _expiry_forecast(
    queries: ForecastQueries, args: argparse.Namespace, zone: ZoneInfo, at: dict[str, Any]
) -> dict[str, Any]:
    """The whole window's buckets and its members (all of them, or the first --limit)."""
    found = queries.expiry_forecast(
        args.program,
        zone,
        at["--since"],
        at["--until"],
        args.member,
        None,
        args.limit or 2**62,
    )
    return {
        "since": _time_of(at["--since"]),
        "until": _time_of(at["--until"]),
        "buckets": [
            {
                "date": b.date.isoformat(),
                "expires_at": _time(b.expires_at),
                "points": b.points,
                "members": b.members,
            }
            for b in found.buckets
        ],
        "members": [
            {"member_id": m.member_id, "points": m.points, "expires_at": _time(m.expires_at)}
            for m in found.members
        ],
        "total_points": found.total_points,
        "total_members": found.total_members,
        "position": found.position,
    }


def _time(value: int) -> str:
    return from_micros(value).isoformat().replace("+00:00", "Z")


def _time_of(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------- printing


def _print(kind: str, report: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(report, indent=2))
        return
    headers, rows, notes = _tabulated(kind, report)
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
        return
    print(text_table(headers, rows))
    for note in notes:
        print(note)


def _tabulated(kind: str, r: dict[str, Any]) -> tuple[list[str], list[list[Any]], list[str]]:
    """One rectangular table per report (what csv writes), and the notes a table adds."""
    position = f"journal position {r.get('position')}"
    if kind == "trial-balance":
        headers = ["ledger_account", "unit", "debit", "credit", "balance"]
        return headers, [[row[h] for h in headers] for row in r["rows"]], [position]
    if kind == "journal":
        headers = [
            "position",
            "transaction_id",
            "ledger_account",
            "unit",
            "amount",
            "occurred_at",
            "recorded_at",
            "store_id",
        ]
        totals = f"{r['total_count']} postings, total amount {r['total_amount']}"
        return headers, [[row[h] for h in headers] for row in r["postings"]], [totals]
    if kind == "liabilities":
        headers = [
            "store_id",
            "points_outstanding",
            "points_debt",
            "points_value_minor",
            "stored_value_cash_minor",
            "stored_value_bonus_minor",
            "currency",
        ]
        rows = [["*", *[r[h] for h in headers[1:]]]]
        for s in r.get("rows", []):
            cash, bonus = s["stored_value_cash_minor"], s["stored_value_bonus_minor"]
            rows.append([s["store_id"], "", "", "", cash, bonus, r["currency"]])
        notes = [f"store_id *: the programme; other rows: per store of issue; {position}"]
        return headers, rows, notes if r.get("rows") else [position]
    if kind == "movements":
        headers = ["line", "points", f"cash_{r['currency']}", f"bonus_{r['currency']}"]
        rows = [[line, r["points"][line], r["cash"][line], r["bonus"][line]] for line in LINES]
        return headers, rows, [position]
    if kind == "expiry-forecast":
        headers = ["kind", "date", "member_id", "expires_at", "points", "members"]
        rows = [
            ["day", b["date"], "", b["expires_at"], b["points"], b["members"]] for b in r["buckets"]
        ]
        rows += [
            ["member", "", m["member_id"], m["expires_at"], m["points"], ""] for m in r["members"]
        ]
        notes = [
            "day: points expiring per local day (the last day they can be used); member: "
            "each member's points expiring in the window and the first expiry",
            f"[{r['since']}, {r['until']}): {r['total_points']} points of "
            f"{r['total_members']} members; points read model position {r['position']}",
        ]
        return headers, rows, notes
    if kind == "deferred-revenue":
        headers = list(r)
        return headers, [[r[h] for h in headers]], []
    if kind == "breakage":
        headers = [
            "cohort_label",
            "cohort_start",
            "issued",
            "redeemed",
            "expired",
            "reversed",
            "outstanding",
            "closed",
            "observed_redemption_rate_ppm",
            "projected_redemption_rate_ppm",
        ]
        notes = [
            "outstanding = issued - reversed - redeemed - expired; projected: redeemed plus "
            f"outstanding x {r['closed_redeemed_share_ppm']} ppm (the share of closed cohorts' "
            "points that ended redeemed), over issued - reversed",
            f"revenue read model position {r['position']}",
        ]
        return headers, [[row[h] for h in headers] for row in r["rows"]], notes
    if kind == "custody":
        headers = [
            "period",
            "period_end",
            "store_id",
            "cash_balance_minor",
            "custody_minor",
            "currency",
        ]
        rows = []
        for p in r["periods"]:
            rows.append(
                [
                    p["period_label"],
                    p["period_end"],
                    "*",
                    p["cash_balance_minor"],
                    p["custody_minor"],
                    r["currency"],
                ]
            )
            rows += [
                [
                    p["period_label"],
                    p["period_end"],
                    s["store_id"],
                    s["cash_balance_minor"],
                    s["custody_minor"],
                    r["currency"],
                ]
                for s in p["stores"]
            ]
        notes = [
            f"store_id *: the programme; other rows: per store of issue; custody "
            f"{r['ratio_ppm']} ppm of the cash, rounded up per store; {position}"
        ]
        return headers, rows, notes
    headers = ["kind", "from_store_id", "to_store_id", "cash_minor", "bonus_minor"]
    rows = [
        ["owed", s["issuing_store_id"], s["redeeming_store_id"], s["cash_minor"], s["bonus_minor"]]
        for s in r["rows"]
    ] + [
        ["net", n["debtor_store_id"], n["creditor_store_id"], n["cash_minor"], n["bonus_minor"]]
        for n in r["net"]
    ]
    notes = [
        "each row: from_store_id owes to_store_id (owed: store of issue to store of spend, "
        "net of refunds there; net: both directions of a pair netted)",
        f"owed rows: total {r['total_cash_minor']} cash, {r['total_bonus_minor']} bonus "
        f"({r['currency']}); spent in the period at any store: {r['spent_cash_minor']} cash, "
        f"{r['spent_bonus_minor']} bonus; {position}",
    ]
    return headers, rows, notes


def text_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in cells[1:]) and rows for i in range(len(headers))]
    lines = []
    for row in cells:
        lines.append(
            "  ".join(
                c.rjust(w) if numeric[i] else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    return text.lstrip("-").isdigit() or text == ""
