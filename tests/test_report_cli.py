"""`ledger report`: the real command on both backends gives the figures ReportService gives
(the same query functions), for every report and format; it brings a journal that is behind
(or rebuilt from nothing) up to the log first; operators' mistakes are one line, exit 2."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from google.protobuf.json_format import MessageToDict

from ledger.api.validation import Violations
from ledger.infrastructure.database import parse_database_url
from ledger.report_commands import local_moment
from ledger.v1 import report_pb2 as rpb
from tests.behaviour.test_reports import (
    History,
    build_history,
    liabilities,
    moment,
    movements,
    postings,
    reports,
    settlement,
)
from tests.support import Client, ServerThread, ts
from tests.test_operator_errors import one_clear_line
from tests.test_server import (
    _kill_if_running,
    _serve,
    _sigterm,
    _wait_serving,
    free_port,
    fresh_database,
    run_ledger,
)

BACKENDS = ["sqlite", "postgres"]


@dataclass
class Ledger:
    """A database with a history in it, and what ReportService answered about it."""

    backend: str
    url: str
    history: History
    times: list[datetime]  # the recorded times of its postings
    answers: dict[str, Any]


@pytest.fixture(scope="module", params=BACKENDS)
def ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ledger]:
    backend: str = request.param
    with fresh_database(backend, tmp_path_factory.mktemp(backend)) as url:
        server = ServerThread(url, lot_sweep_interval=3600)
        client = Client(server.target, backend)
        try:
            h = build_history(client, time_zone="Asia/Shanghai")
            journal = postings(client, h.program, h.last)
            times = sorted({moment(p.recorded_at) for p in journal})
            since, until = times[3], times[-4]
            answers = {
                "trial-balance": reports(client).GetTrialBalance(
                    rpb.GetTrialBalanceRequest(program_id=h.program)
                ),
                "liabilities": liabilities(client, h.program, group_by_store=True),
                "liabilities-mid": liabilities(client, h.program, since, group_by_store=True),
                "movements": movements(client, h.program, None, None),
                "movements-mid": movements(client, h.program, since, until),
                "settlement": settlement(client, h.program),
                "settlement-mid": settlement(client, h.program, since, until),
                "journal": journal,
                "deferred-revenue": reports(client).GetDeferredRevenue(
                    rpb.GetDeferredRevenueRequest(program_id=h.program, min_position=h.last)
                ),
                "deferred-revenue-mid": reports(client).GetDeferredRevenue(
                    rpb.GetDeferredRevenueRequest(
                        program_id=h.program,
                        as_of=ts(since),
                        expected_redemption_rate_ppm=800_000,
                    )
                ),
                "breakage": reports(client).GetBreakage(
                    rpb.GetBreakageRequest(
                        program_id=h.program, cohort=rpb.COHORT_MONTH, min_position=h.last
                    )
                ),
            }
        finally:
            client.close()
            server.stop()
        yield Ledger(backend, url, h, times, answers)


def report(ledger: Ledger, kind: str, *args: str, fmt: str = "json") -> Any:
    result = run_ledger(
        "report",
        kind,
        "--database",
        ledger.url,
        "--program",
        ledger.history.program,
        "--format",
        fmt,
        *args,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return json.loads(result.stdout) if fmt == "json" else result.stdout


def as_json(message: Any) -> dict[str, Any]:
    """A response as the CLI's JSON has it: every field, numbers as numbers."""
    fields: dict[str, Any] = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    numbers: dict[str, Any] = json.loads(json.dumps(fields), object_hook=_numbers)
    return numbers


def _numbers(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: int(v) if isinstance(v, str) and v.lstrip("-").isdigit() else v for k, v in d.items()
    }


def since_until(ledger: Ledger) -> list[str]:
    since, until = ledger.times[3], ledger.times[-4]
    return ["--since", since.isoformat(), "--until", until.isoformat()]


# ---------------------------------------------------------------------- the figures


def test_every_report_as_json_is_what_the_rpc_answers(ledger: Ledger) -> None:
    a = ledger.answers
    trial = report(ledger, "trial-balance")
    assert trial["rows"] == as_json(a["trial-balance"])["rows"]

    got = report(ledger, "liabilities", "--by-store")
    assert {k: v for k, v in got.items() if k != "position"} == {
        k: v for k, v in as_json(a["liabilities"]).items() if k != "position"
    }
    assert "rows" not in report(ledger, "liabilities")
    mid = report(ledger, "liabilities", "--by-store", "--as-of", ledger.times[3].isoformat())
    assert mid["stored_value_cash_minor"] == a["liabilities-mid"].stored_value_cash_minor
    assert mid["points_outstanding"] == a["liabilities-mid"].points_outstanding

    for kind in ("movements", "settlement"):
        whole = report(ledger, kind)
        expected = as_json(a[kind])
        assert {k: v for k, v in whole.items() if k != "position"} == {
            k: v for k, v in expected.items() if k != "position"
        }, kind
        period = report(ledger, kind, *since_until(ledger))
        expected = as_json(a[f"{kind}-mid"])
        assert {k: v for k, v in period.items() if k != "position"} == {
            k: v for k, v in expected.items() if k != "position"
        }, kind
    assert report(ledger, "movements")["points"]["closing"] == 305


def test_the_journal_lists_the_period_since_exclusive_until_inclusive(ledger: Ledger) -> None:
    journal = ledger.answers["journal"]
    since, until = ledger.times[3], ledger.times[-4]
    got = report(ledger, "journal", *since_until(ledger))
    expected = [
        (p.position, p.ledger_account, p.amount)
        for p in journal
        if since < moment(p.recorded_at) <= until
    ]
    assert [(p["position"], p["ledger_account"], p["amount"]) for p in got["postings"]] == expected
    assert got["total_count"] == len(expected)
    # Through the alias, one member's account: its control total is its balance.
    alice = ledger.history.members[0]
    cash = report(ledger, "postings", "--account", f"member:{alice}:cash")
    assert cash["total_amount"] == 0  # all cashed out
    assert cash["total_count"] == sum(
        1 for p in journal if p.ledger_account == f"member:{alice}:cash"
    )


def test_csv_and_table(ledger: Ledger) -> None:
    rows = list(csv.reader(io.StringIO(report(ledger, "movements", fmt="csv"))))
    assert rows[0] == ["line", "points", "cash_EUR", "bonus_EUR"]
    assert rows[-1] == ["closing", "305", "0", "1000"]
    assert len(rows) == 14

    rows = list(csv.reader(io.StringIO(report(ledger, "liabilities", "--by-store", fmt="csv"))))
    assert rows[1][:2] == ["*", "305"]
    assert (rows[2][0], rows[2][5]) == ("D", "1000")

    table = report(ledger, "settlement", fmt="table")
    assert "owed  mall:A" in table or "owed" in table.splitlines()[1]
    assert "journal position" in table
    table = report(ledger, "trial-balance", fmt="table").splitlines()
    assert table[0].split() == ["ledger_account", "unit", "debit", "credit", "balance"]
    assert any(line.split()[0] == "member:*:points" for line in table[1:-1])


def test_a_date_is_the_first_instant_of_that_day_in_the_programmes_zone() -> None:
    v = Violations()
    shanghai, berlin = ZoneInfo("Asia/Shanghai"), ZoneInfo("Europe/Berlin")
    assert local_moment(v, "--since", date(2024, 5, 1), shanghai) == datetime(
        2024, 4, 30, 16, tzinfo=UTC
    )
    assert local_moment(v, "--since", date(2024, 3, 31), berlin) == datetime(
        2024, 3, 30, 23, tzinfo=UTC
    )
    assert local_moment(v, "--since", date(2024, 4, 1), berlin) == datetime(
        2024, 3, 31, 22, tzinfo=UTC
    )  # after the spring change
    assert v.items == []


def test_dates_end_to_end(ledger: Ledger) -> None:
    """The programme is in Asia/Shanghai: 2100-01-01 is 2099-12-31T16:00Z there."""
    by_date = report(ledger, "movements", "--until", "2100-01-01")
    by_time = report(ledger, "movements", "--until", "2099-12-31T16:00:00Z")
    assert by_date == by_time
    today = datetime.now(UTC).astimezone().date()
    before = report(ledger, "liabilities", "--as-of", (today - timedelta(days=3)).isoformat())
    assert before["points_outstanding"] == 0


def test_a_journal_that_is_behind_is_caught_up_first(ledger: Ledger) -> None:
    """The journal emptied and its tracking reset (as a migration that rebuilds it does):
    the command replays the log into it before reading."""
    statements = [
        "DELETE FROM rm_postings",
        "DELETE FROM rm_journal_daily",
        "DELETE FROM rm_journal_accounts",
        "DELETE FROM rm_journal_programs",
        "UPDATE projection_tracking SET position = 0 WHERE name = 'journal'",
    ]
    config = parse_database_url(ledger.url)
    if ledger.backend == "sqlite":
        with sqlite3.connect(config.sqlite_path) as lite:
            for sql in statements:
                lite.execute(sql)
    else:
        with psycopg.connect(config.conninfo()) as pg:
            for sql in statements:
                pg.execute(sql)
    got = report(ledger, "liabilities", "--by-store")
    assert got["points_outstanding"] == 305
    assert got["position"] >= ledger.history.last
    assert (
        report(ledger, "trial-balance")["rows"] == as_json(ledger.answers["trial-balance"])["rows"]
    )


def test_while_a_server_runs(ledger: Ledger) -> None:
    """PostgreSQL: the `ledger serve` process writes the journal (lazily), the command waits
    for it to reach the log, so a top-up just made is in the report. SQLite serves one
    process at a time: refused in one line."""
    target = f"127.0.0.1:{free_port()}"
    process = _serve(target, ledger.url)
    try:
        _wait_serving(target, process)
        client = Client(target, ledger.backend)
        try:
            program, member = client.member()
            client.top_up(program, member, 1234, bonus_minor=0, store_id="S")
        finally:
            client.close()
        result = run_ledger("report", "liabilities", "--database", ledger.url, "--program", program)
        if ledger.backend == "sqlite":
            one_clear_line(result, "ledger report", "is in use by a `ledger serve`")
            assert result.returncode == 2
        else:
            assert result.returncode == 0, result.stderr
            assert "1234" in result.stdout, result.stdout
    finally:
        _sigterm(process, timeout=30)
        _kill_if_running(process)


# ---------------------------------------------------------------------- mistakes


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["liabilities", "--as-of", "yesterday"], "--as-of: 'yesterday' is not a date"),
        (
            ["liabilities", "--as-of", "2024-05-01T00:00:00"],
            "--as-of: '2024-05-01T00:00:00' has no",
        ),
        (["trial-balance", "--as-of", "2024-13-01"], "--as-of: '2024-13-01' is not a date"),
        (["movements", "--until", "9999-12-31T23:00:00-05:00"], "--until: must be between"),
        (["movements", "--since", "2024-05-02", "--until", "2024-05-01"], "--until: must be after"),
        (
            ["settlement", "--since", "2024-05-01", "--until", "2024-05-01"],
            "--until: must be after",
        ),
        (["movements", "--program", "no such"], "--program: must be 1..64 characters"),
        (["movements", "--program", "nosuch"], "program nosuch does not exist"),
    ],
)
def test_mistakes_are_one_line(ledger: Ledger, args: list[str], expected: str) -> None:
    program = [] if "--program" in args else ["--program", ledger.history.program]
    result = run_ledger("report", *args[:1], "--database", ledger.url, *program, *args[1:])
    one_clear_line(result, "ledger report", expected)
    assert result.returncode == 2


def test_a_missing_database_is_one_line_and_nothing_is_made(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    result = run_ledger(
        "report", "liabilities", "--database", f"sqlite:///{missing}", "--program", "p"
    )
    one_clear_line(result, "ledger report liabilities", "no database at")
    assert result.returncode == 2
    assert list(tmp_path.iterdir()) == []
    result = run_ledger(
        "report",
        "movements",
        "--database",
        "postgresql://postgres@127.0.0.1:5432/tally_no_such_db",
        "--program",
        "p",
    )
    one_clear_line(result, "ledger report movements", "does not exist")
    assert result.returncode == 2


def test_a_database_that_is_not_a_ledger_is_one_line(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    result = run_ledger("report", "journal", "--database", f"sqlite:///{other}", "--program", "p")
    one_clear_line(result, "is not a Tally ledger")
    assert result.returncode == 2


def test_report_describes_itself() -> None:
    result = run_ledger("report", "--help")
    assert result.returncode == 0
    for kind in ("trial-balance", "journal", "liabilities", "movements", "settlement"):
        assert kind in result.stdout
    result = run_ledger("report")
    assert result.returncode == 2
    assert (
        "required: {trial-balance,journal,liabilities,movements,settlement,expiry-forecast,"
        "custody,deferred-revenue,breakage,insights}" in result.stderr
    )


# ---------------------------------------------------------------------- forecast and custody


@dataclass
class Forecastable:
    program: str
    members: list[str]
    rpc_forecast: Any
    rpc_custody: Any


SINCE_2Y, UNTIL_2Y = "", ""  # set from the clock in forecastable()


def forecastable(ledger: Ledger) -> Forecastable:
    """A programme of its own in the ledger's database, with lots cleared at the end of next
    year (Asia/Shanghai) and stored value at two stores, and what ReportService answers."""
    from ledger.v1 import ledger_pb2 as pb
    from tests.support import ts

    year = datetime.now(UTC).year
    server = ServerThread(ledger.url, lot_sweep_interval=3600)
    client = Client(server.target, ledger.backend)
    try:
        program = client.create_program(
            currency="CNY",
            time_zone="Asia/Shanghai",
            expiry_policy=pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_END_OF_YEAR_AFTER_YEARS, years=1),
        )
        alice, bob = client.enroll(program), client.enroll(program)
        earned = ts(datetime(year - 1, 12, 31, 15, tzinfo=UTC))  # 23:00 in Shanghai
        client.earn(program, alice, 120, occurred_at=earned)
        client.earn(program, bob, 80, occurred_at=earned)
        client.top_up(program, alice, 1000, bonus_minor=0, store_id="A")
        last = client.top_up(program, bob, 501, bonus_minor=0, store_id="B")
        stub = reports(client)
        since = datetime(year, 12, 1, tzinfo=ZoneInfo("Asia/Shanghai"))
        rpc_forecast = stub.GetExpiryForecast(
            rpb.GetExpiryForecastRequest(
                program_id=program,
                since=ts(since),
                until=ts(since + timedelta(days=60)),
                page_size=1000,
                min_position=last.position,
            )
        )
        rpc_custody = stub.GetPrepaidCustody(
            rpb.GetPrepaidCustodyRequest(
                program_id=program,
                period=rpb.CUSTODY_PERIOD_QUARTER,
                ratio_ppm=250_000,
                until=ts(datetime(year + 1, 1, 1, tzinfo=ZoneInfo("Asia/Shanghai"))),
                min_position=last.position,
            )
        )
    finally:
        client.close()
        server.stop()
    return Forecastable(program, [alice, bob], rpc_forecast, rpc_custody)


def report_of(ledger: Ledger, program: str, kind: str, *args: str, fmt: str = "json") -> Any:
    result = run_ledger(
        "report", kind, "--database", ledger.url, "--program", program, "--format", fmt, *args
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return json.loads(result.stdout) if fmt == "json" else result.stdout


def test_expiry_forecast_and_custody_are_what_the_rpcs_answer(ledger: Ledger) -> None:
    f = forecastable(ledger)
    year = datetime.now(UTC).year
    # A date is the programme's local midnight: the RPC's since, and 60 days on.
    window = ["--since", f"{year}-12-01", "--until", f"{year + 1}-01-30"]
    got = report_of(ledger, f.program, "expiry-forecast", *window)
    expected = as_json(f.rpc_forecast)
    for key in ("buckets", "members", "total_points", "total_members"):
        assert got[key] == expected[key], key
    assert got["buckets"] == [
        {
            "date": f"{year}-12-31",
            "expires_at": f"{year}-12-31T16:00:00Z",
            "points": 200,
            "members": 2,
        }
    ]
    alice, bob = f.members
    assert [(m["member_id"], m["points"]) for m in got["members"]] == [(alice, 120), (bob, 80)]
    only = report_of(ledger, f.program, "expiry-forecast", *window, "--member", bob, "--limit", "5")
    assert (only["total_points"], [m["member_id"] for m in only["members"]]) == (80, [bob])
    first = report_of(ledger, f.program, "expiry-forecast", *window, "--limit", "1")
    assert ([m["member_id"] for m in first["members"]], first["total_members"]) == ([alice], 2)

    custody = report_of(
        ledger,
        f.program,
        "custody",
        "--period",
        "quarter",
        "--ratio-ppm",
        "250000",
        "--until",
        f"{year + 1}-01-01",
    )
    assert custody["periods"] == as_json(f.rpc_custody)["periods"]
    assert custody["periods"][-1]["period_label"] == f"{year}-Q4"
    assert custody["periods"][-1]["stores"] == [
        {"store_id": "A", "cash_balance_minor": 1000, "custody_minor": 250},
        {"store_id": "B", "cash_balance_minor": 501, "custody_minor": 126},  # 125.25 up
    ]
    assert custody["periods"][-1]["custody_minor"] == 376

    rows = list(
        csv.reader(io.StringIO(report_of(ledger, f.program, "expiry-forecast", *window, fmt="csv")))
    )
    assert rows[0] == ["kind", "date", "member_id", "expires_at", "points", "members"]
    assert rows[1] == ["day", f"{year}-12-31", "", f"{year}-12-31T16:00:00Z", "200", "2"]
    assert rows[2][:3] == ["member", "", alice]
    table = report_of(
        ledger,
        f.program,
        "custody",
        "--period",
        "quarter",
        "--ratio-ppm",
        "250000",
        "--until",
        f"{year + 1}-01-01",
        fmt="table",
    ).splitlines()
    assert table[0].split() == [
        "period",
        "period_end",
        "store_id",
        "cash_balance_minor",
        "custody_minor",
        "currency",
    ]
    assert table[-2].split()[2:5] == ["B", "501", "126"]
    assert "journal position" in table[-1]


def test_the_forecast_catches_up_the_points_read_model(ledger: Ledger) -> None:
    """The points read model emptied and its tracking reset: the forecast replays the log
    into it before reading (the journal, which it does not read, is left as it is)."""
    from projections.points import PointsProjection

    f = forecastable(ledger)
    statements = [f"DELETE FROM {table}" for table in PointsProjection.tables]
    statements.append("UPDATE projection_tracking SET position = 0 WHERE name = 'points'")
    config = parse_database_url(ledger.url)
    if ledger.backend == "sqlite":
        with sqlite3.connect(config.sqlite_path) as lite:
            for sql in statements:
                lite.execute(sql)
    else:
        with psycopg.connect(config.conninfo()) as pg:
            for sql in statements:
                pg.execute(sql)
    year = datetime.now(UTC).year
    got = report_of(
        ledger,
        f.program,
        "expiry-forecast",
        "--since",
        f"{year}-12-01",
        "--until",
        f"{year + 1}-01-30",
    )
    assert got["total_points"] == 200
    assert got["position"] >= f.rpc_forecast.position


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["expiry-forecast", "--since", "2030-01-02", "--until", "2030-01-01"],
            "--until: must be after",
        ),
        (
            ["expiry-forecast", "--since", "2030-01-01", "--until", "2031-01-03"],
            "--until: at most 366 days",
        ),
        (["expiry-forecast", "--member", "no such"], "--member: must be 1..64 characters"),
        (["expiry-forecast", "--limit", "-3"], "--limit"),
        (["expiry-forecast", "--since", "soon"], "--since: 'soon' is not a date"),
        (["custody", "--ratio-ppm", "10"], "--period"),
        (["custody", "--period", "week", "--ratio-ppm", "10"], "--period"),
        (["custody", "--period", "month"], "--ratio-ppm"),
        (
            ["custody", "--period", "month", "--ratio-ppm", "1000001"],
            "--ratio-ppm: must be between",
        ),
        (["custody", "--period", "month", "--ratio-ppm", "1e3"], "--ratio-ppm"),
        (
            [
                "custody",
                "--period",
                "month",
                "--ratio-ppm",
                "10",
                "--since",
                "1971-01-01",
                "--until",
                "2010-01-01",
            ],
            "--until: at most 400 periods",
        ),
        (
            [
                "custody",
                "--period",
                "year",
                "--ratio-ppm",
                "10",
                "--since",
                "2020-01-01",
                "--until",
                "2019-01-01",
            ],
            "--until: must be after",
        ),
        (
            ["custody", "--period", "year", "--ratio-ppm", "10", "--program", "nosuch"],
            "program nosuch does not exist",
        ),
    ],
)
def test_forecast_and_custody_mistakes_are_one_line(
    ledger: Ledger, args: list[str], expected: str
) -> None:
    program = [] if "--program" in args else ["--program", ledger.history.program]
    result = run_ledger("report", *args[:1], "--database", ledger.url, *program, *args[1:])
    one_clear_line(result, "ledger report", expected)
    assert result.returncode == 2


# ---------------------------------------------------------------------- deferred revenue, breakage


def without_position(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "position"}


def test_deferred_revenue_and_breakage_are_what_the_rpcs_answer(ledger: Ledger) -> None:
    a = ledger.answers
    got = report(ledger, "deferred-revenue")
    assert without_position(got) == without_position(as_json(a["deferred-revenue"]))
    assert got["points_issued"] > 0
    mid = report(
        ledger, "deferred-revenue", "--as-of", ledger.times[3].isoformat(), "--rate-ppm", "800000"
    )
    assert without_position(mid) == without_position(as_json(a["deferred-revenue-mid"]))
    assert mid["expected_redemption_rate_ppm"] == 800_000

    got = report(ledger, "breakage", "--cohort", "month")
    expected = as_json(a["breakage"])
    for row in expected["rows"]:
        row["cohort_start"] = row["cohort_start"].replace(".000Z", "Z")
    assert got["rows"] == expected["rows"]
    assert got["closed_redeemed_share_ppm"] == expected["closed_redeemed_share_ppm"]
    assert report(ledger, "breakage", "--cohort", "year", "--since", "2999-01-01")["rows"] == []

    table = report(ledger, "breakage", "--cohort", "quarter", fmt="table")
    assert "observed_redemption_rate_ppm" in table.splitlines()[0]
    rows = list(csv.DictReader(io.StringIO(report(ledger, "deferred-revenue", fmt="csv"))))
    assert int(rows[0]["points_issued"]) == got_issued(ledger)


def got_issued(ledger: Ledger) -> int:
    return int(ledger.answers["deferred-revenue"].points_issued)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["breakage"], "--cohort: required: month, quarter or year"),
        (["breakage", "--cohort", "week"], "--cohort: required: month, quarter or year"),
        (["breakage", "--cohort", "year", "--since", "soon"], "--since: 'soon' is not a date"),
        (
            ["breakage", "--cohort", "year", "--since", "2024-01-01", "--until", "2023-01-01"],
            "--until: must be after",
        ),
        (["deferred-revenue", "--rate-ppm", "0"], "--rate-ppm: must be between 1 and 1000000"),
        (["deferred-revenue", "--rate-ppm", "95%"], "--rate-ppm: must be between 0 and 1000000"),
        (["deferred-revenue", "--as-of", "2024-02-30"], "--as-of: '2024-02-30' is not a date"),
        (["deferred-revenue", "--program", "nosuch"], "program nosuch does not exist"),
    ],
)
def test_revenue_mistakes_are_one_line(ledger: Ledger, args: list[str], expected: str) -> None:
    program = [] if "--program" in args else ["--program", ledger.history.program]
    result = run_ledger("report", *args[:1], "--database", ledger.url, *program, *args[1:])
    one_clear_line(result, "ledger report", expected)
    assert result.returncode == 2
