"""GetPrepaidCustody over gRPC on both backends (docs/reports.md): the stored-value cash each
store of issue owes its members at each period end (the local midnight after a month's,
quarter's or year's last day, in the programme's time zone) and the share to hold in
custody, ratio_ppm of it rounded up per store (单用途商业预付卡: a share of the balance,
reported quarterly).

Reports read recorded time, which a test cannot choose through the API: here the events'
recorded times are set by patching the event library's timestamp while the history is
written (the server runs in this process), so that a year of quarters passes in a second.
Every figure is worked by hand, and each period's rows equal GetLiabilities as of its end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from eventsourcing.domain import CanCreateTimestamp
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.forecast_queries import custody_share
from ledger.periods import Period, period_ends
from ledger.v1 import report_pb2 as rpb
from ledger.v1 import report_pb2_grpc
from tests.support import Client, new_id, refused, ts

SHANGHAI = ZoneInfo("Asia/Shanghai")
Y = datetime.now(UTC).year - 2  # a year wholly in the past
QUARTER = rpb.CUSTODY_PERIOD_QUARTER
THIRD = 333_333  # ppm


def stub(client: Client) -> report_pb2_grpc.ReportServiceStub:
    return report_pb2_grpc.ReportServiceStub(client.channel)


def custody(
    client: Client,
    program: str,
    since: datetime | None = None,
    until: datetime | None = None,
    **f: Any,
) -> rpb.GetPrepaidCustodyResponse:
    request = rpb.GetPrepaidCustodyRequest(program_id=program, **f)
    if since is not None:
        request.since.CopyFrom(ts(since))
    if until is not None:
        request.until.CopyFrom(ts(until))
    got: rpb.GetPrepaidCustodyResponse = stub(client).GetPrepaidCustody(request, timeout=30)
    return got


def utc(t: Timestamp) -> datetime:
    return t.ToDatetime(tzinfo=UTC)


def rows(got: rpb.GetPrepaidCustodyResponse) -> list[tuple[str, int, int, dict[str, Any]]]:
    return [
        (
            p.period_label,
            p.cash_balance_minor,
            p.custody_minor,
            {s.store_id: (s.cash_balance_minor, s.custody_minor) for s in p.stores},
        )
        for p in got.periods
    ]


@pytest.fixture
def recorded_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], Any]:
    """`with recorded_at(t): ...`: events triggered inside are recorded at t."""

    @contextmanager
    def at(moment: datetime) -> Iterator[None]:
        monkeypatch.setattr(CanCreateTimestamp, "create_timestamp", staticmethod(lambda: moment))
        try:
            yield
        finally:
            monkeypatch.undo()

    return at


def shanghai(month: int, day: int, hour: int = 12, year: int = Y) -> datetime:
    return datetime(year, month, day, hour, tzinfo=SHANGHAI)


def quarter_end(q: int) -> datetime:
    """The local midnight after quarter q of year Y, Shanghai."""
    return datetime(Y + (q == 4), 1 if q == 4 else 3 * q + 1, 1, tzinfo=SHANGHAI).astimezone(UTC)


def build(client: Client, recorded_at: Callable[[datetime], Any]) -> tuple[str, int, int]:
    """A year of a prepaid card programme in Shanghai, stores A and B, recorded in Y:
    Q1 alice tops up 10000 at A, bob 5000 at B, and alice 1 more at A at exactly the
    quarter's end (as of an instant is inclusive: it counts in Q1); Q2 alice spends 3000
    (at B; the cash is A's, which sold it); Q3 bob cashes out (B owes nothing); Q4 carol
    tops up 777 at B. The bonus (a promotion's) is never in custody. Returns the programme,
    the last position and the cash part of alice's spend."""
    with recorded_at(shanghai(1, 15)):
        program = client.create_program(currency="CNY", time_zone="Asia/Shanghai")
        alice, bob, carol = (client.enroll(program) for _ in range(3))
    with recorded_at(shanghai(2, 10)):
        client.top_up(program, alice, 10_000, bonus_minor=500, store_id="A")
        bobs = client.top_up(program, bob, 5_000, bonus_minor=0, store_id="B")
    with recorded_at(quarter_end(1)):
        client.top_up(program, alice, 1, bonus_minor=0, store_id="A")
    with recorded_at(shanghai(5, 20)):
        spent = client.spend(program, alice, 3_000, store_id="B")
    with recorded_at(shanghai(8, 1)):
        client.refund(program, bob, bobs.transaction_id, store_id="B")
    with recorded_at(shanghai(11, 11)):
        last = client.top_up(program, carol, 777, bonus_minor=0, store_id="B")
    return program, last.position, spent.cash_minor


def test_quarters_by_store_rounded_up(
    client: Client, recorded_at: Callable[[datetime], Any]
) -> None:
    program, last, spent_cash = build(client, recorded_at)
    # alice's spend of 3000 from a card of 10001 cash and 500 bonus, proportionally: about
    # 2857 of it cash, the rest bonus (the split's own rules: decision 15).
    assert 2_800 < spent_cash < 3_000
    a_after = 10_001 - spent_cash

    got = custody(
        client,
        program,
        period=QUARTER,
        ratio_ppm=THIRD,
        since=datetime(Y, 1, 1, tzinfo=SHANGHAI),
        until=quarter_end(4),  # inclusive
        min_position=last,
    )

    def share(cash: int) -> int:
        return -(-cash * THIRD // 1_000_000)

    assert (share(10_001), share(5_000), share(777)) == (3334, 1667, 259)
    assert rows(got) == [
        (f"{Y}-Q1", 15_001, 3334 + 1667, {"A": (10_001, 3334), "B": (5_000, 1667)}),
        (
            f"{Y}-Q2",
            a_after + 5_000,
            share(a_after) + 1667,
            {"A": (a_after, share(a_after)), "B": (5_000, 1667)},
        ),
        (f"{Y}-Q3", a_after, share(a_after), {"A": (a_after, share(a_after))}),
        (
            f"{Y}-Q4",
            a_after + 777,
            share(a_after) + 259,
            {"A": (a_after, share(a_after)), "B": (777, 259)},
        ),
    ]
    assert [utc(p.period_end) for p in got.periods] == [quarter_end(q) for q in (1, 2, 3, 4)]
    assert (got.ratio_ppm, got.currency) == (THIRD, "CNY")
    assert got.position >= last
    # Each period's figures are GetLiabilities' as of its end.
    for period in got.periods:
        liabilities = stub(client).GetLiabilities(
            rpb.GetLiabilitiesRequest(
                program_id=program, as_of=period.period_end, group_by_store=True
            )
        )
        assert liabilities.stored_value_cash_minor == period.cash_balance_minor
        assert {
            r.store_id: r.stored_value_cash_minor
            for r in liabilities.rows
            if r.stored_value_cash_minor
        } == {s.store_id: s.cash_balance_minor for s in period.stores}

    # (since, until]: a period ending exactly at since is left out, one at until kept.
    middle = custody(
        client, program, quarter_end(1), quarter_end(3), period=QUARTER, ratio_ppm=THIRD
    )
    assert [p.period_label for p in middle.periods] == [f"{Y}-Q2", f"{Y}-Q3"]
    short = custody(
        client,
        program,
        quarter_end(1),
        quarter_end(3) - timedelta(microseconds=1),
        period=QUARTER,
        ratio_ppm=THIRD,
    )
    assert [p.period_label for p in short.periods] == [f"{Y}-Q2"]
    # Since unset: from the programme's start (created in January of Y); until unset: now.
    everything = custody(client, program, period=QUARTER, ratio_ppm=THIRD)
    assert [p.period_label for p in everything.periods][:4] == [f"{Y}-Q{q}" for q in (1, 2, 3, 4)]
    assert all(utc(p.period_end) <= datetime.now(UTC) for p in everything.periods)
    assert rows(everything)[4:] == [
        (p.period_label, a_after + 777, share(a_after) + 259, rows(got)[3][3])
        for p in everything.periods[4:]
    ]


def test_months_years_and_the_ratio_bounds(
    client: Client, recorded_at: Callable[[datetime], Any]
) -> None:
    program, last, spent_cash = build(client, recorded_at)
    since, until = datetime(Y, 1, 1, tzinfo=SHANGHAI), quarter_end(4)

    months = custody(
        client,
        program,
        since,
        until,
        period=rpb.CUSTODY_PERIOD_MONTH,
        ratio_ppm=1_000_000,
        min_position=last,
    )
    cash = [p.cash_balance_minor for p in months.periods]
    assert [p.period_label for p in months.periods] == [f"{Y}-{m:02d}" for m in range(1, 13)]
    a_after = 10_001 - spent_cash
    assert cash[:7] == [
        0,
        15_000,
        15_001,
        15_001,
        a_after + 5_000,
        a_after + 5_000,
        a_after + 5_000,
    ]
    assert cash[7:] == [a_after] * 3 + [a_after + 777] * 2
    assert [p.custody_minor for p in months.periods] == cash  # the whole of it
    assert list(months.periods[0].stores) == []
    assert utc(months.periods[0].period_end) == datetime(Y, 2, 1, tzinfo=SHANGHAI)

    year = custody(client, program, since, until, period=rpb.CUSTODY_PERIOD_YEAR, ratio_ppm=0)
    assert rows(year) == [(f"{Y}", a_after + 777, 0, {"A": (a_after, 0), "B": (777, 0)})]


def test_period_ends_and_rounding_rules() -> None:
    la = ZoneInfo("America/Los_Angeles")
    ends = period_ends(
        Period.QUARTER, la, datetime(2024, 1, 1, 8, tzinfo=UTC), datetime(2025, 1, 1, 8, tzinfo=UTC)
    )
    assert ends == [
        ("2024-Q1", datetime(2024, 4, 1, 7, tzinfo=UTC)),  # PDT
        ("2024-Q2", datetime(2024, 7, 1, 7, tzinfo=UTC)),
        ("2024-Q3", datetime(2024, 10, 1, 7, tzinfo=UTC)),
        ("2024-Q4", datetime(2025, 1, 1, 8, tzinfo=UTC)),  # PST
    ]
    # since inside a period: that period is the first; since at an end: the one after.
    assert period_ends(
        Period.YEAR, la, datetime(2024, 6, 1, tzinfo=UTC), datetime(2026, 1, 1, 8, tzinfo=UTC)
    ) == [
        ("2024", datetime(2025, 1, 1, 8, tzinfo=UTC)),
        ("2025", datetime(2026, 1, 1, 8, tzinfo=UTC)),
    ]
    assert (
        period_ends(
            Period.MONTH, la, datetime(1970, 1, 1, tzinfo=UTC), datetime(2010, 1, 1, tzinfo=UTC)
        )
        is None
    )
    assert (custody_share(1, 1), custody_share(999_999, 1), custody_share(1_000_000, 1)) == (
        1,
        1,
        1,
    )
    assert (custody_share(1_000_001, 1), custody_share(0, 500_000), custody_share(-5, 500_000)) == (
        2,
        0,
        0,
    )
    assert custody_share(2**62, 1_000_000) == 2**62


NOW = int(datetime.now(UTC).timestamp())


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"program_id": ""}, "program_id"),
        ({"program_id": "no spaces"}, "program_id"),
        ({"min_position": -1}, "min_position"),
        ({"period": rpb.CUSTODY_PERIOD_UNSPECIFIED}, "period"),
        ({"period": 9}, "period"),
        ({"ratio_ppm": -1}, "ratio_ppm"),
        ({"ratio_ppm": 1_000_001}, "ratio_ppm"),
        ({"since": Timestamp(seconds=NOW, nanos=10**9)}, "since"),
        ({"until": Timestamp(seconds=253_465_459_200)}, "until"),  # year 10001
        ({"since": Timestamp(seconds=NOW), "until": Timestamp(seconds=NOW)}, "until"),
        (
            {
                "period": rpb.CUSTODY_PERIOD_MONTH,
                "since": Timestamp(seconds=0),
                "until": Timestamp(seconds=int(datetime(2010, 1, 1, tzinfo=UTC).timestamp())),
            },
            "until",
        ),  # 480 months
    ],
)
def test_bad_input_names_its_field(client: Client, fields: dict[str, Any], bad: str) -> None:
    program, _ = client.member()
    fields = {"program_id": program, **fields}
    fields.setdefault("period", QUARTER)  # a copy: the parameters serve both backends
    problem = refused(
        lambda: stub(client).GetPrepaidCustody(rpb.GetPrepaidCustodyRequest(**fields))
    )
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(problem.fields) == {bad}, problem.fields


def test_unknown_programme(client: Client) -> None:
    problem = refused(
        lambda: stub(client).GetPrepaidCustody(
            rpb.GetPrepaidCustodyRequest(program_id=new_id("none"), period=QUARTER)
        )
    )
    assert (problem.code, problem.reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")


def test_a_new_programme_has_no_periods_yet(client: Client) -> None:
    program, _ = client.member()
    got = custody(client, program, period=QUARTER, ratio_ppm=THIRD)
    assert (list(got.periods), got.currency) == ([], "EUR")
