"""IFRS 15 deferred revenue for points and breakage per earn cohort, through ReportService on
both backends.

The deferred-revenue figures are those of IFRS 15 Illustrative Example 52 (customer loyalty
programme), to the currency unit, for both periods and the change of estimate; a past
report is reproducible after later events. Breakage is checked against a small history
worked out by hand, in Asia/Shanghai, whose year ends before UTC's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest

from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import report_pb2 as rpb
from ledger.v1 import report_pb2_grpc
from tests.behaviour.test_reports import build_history, liabilities
from tests.support import Client, ServerThread, log_head, refused, ts, wait_past

SHANGHAI = ZoneInfo("Asia/Shanghai")


def reports(client: Client) -> report_pb2_grpc.ReportServiceStub:
    return report_pb2_grpc.ReportServiceStub(client.channel)


def deferred(client: Client, program: str, **f: Any) -> rpb.GetDeferredRevenueResponse:
    if isinstance(f.get("as_of"), datetime):
        f["as_of"] = ts(f["as_of"])
    got: rpb.GetDeferredRevenueResponse = reports(client).GetDeferredRevenue(
        rpb.GetDeferredRevenueRequest(program_id=program, **f), timeout=30
    )
    return got


def without_position(r: rpb.GetDeferredRevenueResponse) -> rpb.GetDeferredRevenueResponse:
    """The figures; the read model's position moves on with every later event."""
    copy = rpb.GetDeferredRevenueResponse()
    copy.CopyFrom(r)
    copy.ClearField("position")
    return copy


def figures(r: rpb.GetDeferredRevenueResponse) -> tuple[int, int, int]:
    return r.allocated_minor, r.revenue_recognised_minor, r.contract_liability_minor


# ---------------------------------------------------------------------- IFRS 15 IE52


def test_illustrative_example_52(client: Client, server: ServerThread) -> None:
    """One point per CU10 of purchases, each worth CU1; CU100,000 of purchases earn 10,000
    points, 9,500 expected to be redeemed. Ten customers here, each CU10,000 and 1,000
    points: the allocation is a sum of exact fractions, rounded once."""
    program = client.create_program(
        currency="XXX", point_value_minor=1, expected_redemption_rate_ppm=950_000
    )
    members = [client.enroll(program) for _ in range(10)]
    for member in members:
        client.earn(program, member, 1_000, purchase_minor=10_000)
    for member in members[:4]:
        client.redeem(program, member, 1_000)
    client.redeem(program, members[4], 500)  # 4,500 redeemed in period 1
    head = log_head(server)
    end_of_period_1 = datetime.now(UTC)
    wait_past(end_of_period_1)

    period_1 = deferred(client, program, min_position=head)
    assert period_1.points_issued == 10_000
    assert period_1.points_redeemed == 4_500
    assert period_1.purchases_minor == 100_000
    assert period_1.points_expected_to_be_redeemed == 9_500
    # 100,000 x 9,500 / 109,500 = 8,675.8; 4,500 / 9,500 of it = 4,109.6.
    assert figures(period_1) == (8_676, 4_110, 4_566)
    assert period_1.expected_redemption_rate_ppm == 950_000
    assert period_1.currency == "XXX"

    # Period 2: 8,500 redeemed in all; finance now expects 9,700.
    client.redeem(program, members[4], 500)
    for member in members[5:8]:
        client.redeem(program, member, 1_000)
    client.redeem(program, members[8], 500)
    client.update_program(program, expected_redemption_rate_ppm=970_000)
    head = log_head(server)
    period_2 = deferred(client, program, min_position=head)
    assert period_2.points_redeemed == 8_500
    assert period_2.expected_redemption_rate_ppm == 970_000  # the programme's, now
    # 8,675.8 x 8,500 / 9,700 = 7,602.5: cumulative catch-up to the new estimate.
    assert figures(period_2) == (8_676, 7_603, 1_073)
    assert period_2.revenue_recognised_minor - period_1.revenue_recognised_minor == 3_493

    # The past is reproducible: as of period 1's end, the estimate then in force and the
    # redemptions then recorded.
    again = deferred(client, program, as_of=end_of_period_1)
    assert without_position(again) == without_position(period_1)
    # The same with the estimate given explicitly, and with period 2's estimate applied
    # to period 1's redemptions (what a restatement would show).
    explicit = deferred(
        client, program, as_of=end_of_period_1, expected_redemption_rate_ppm=950_000
    )
    assert without_position(explicit) == without_position(period_1)
    restated = deferred(
        client, program, as_of=end_of_period_1, expected_redemption_rate_ppm=970_000
    )
    assert figures(restated) == (8_676, 4_025, 4_651)  # 8,675.8 x 4,500 / 9,700 = 4,024.9


def test_allocation_uses_the_rate_in_force_when_the_earn_was_recorded(
    client: Client, server: ServerThread
) -> None:
    """A later change of the estimate re-allocates nothing; the earns' fractions are added
    exactly and rounded once (rounding each earn would give 48 + 48 + 90 = 186)."""
    program = client.create_program(point_value_minor=1, expected_redemption_rate_ppm=500_000)
    member = client.enroll(program)
    for _ in range(2):  # the points' price 50: 950 x 50 / 1,000 = 47.5 each
        client.earn(program, member, 100, purchase_minor=950)
    client.update_program(program, expected_redemption_rate_ppm=1_000_000)
    client.earn(program, member, 100, purchase_minor=900)  # price 100: 900 x 100 / 1,000
    got = deferred(client, program, min_position=log_head(server))
    assert got.allocated_minor == 185


def test_reversed_earns_take_their_allocation_back(client: Client, server: ServerThread) -> None:
    program = client.create_program(point_value_minor=1, expected_redemption_rate_ppm=1_000_000)
    member = client.enroll(program)
    earned = client.earn(program, member, 100, purchase_minor=900)  # allocated 90
    client.earn(program, member, 100, purchase_minor=900)
    client.reverse(program, member, earned.transaction_id, points=30)
    got = deferred(client, program, min_position=log_head(server))
    assert got.points_issued == 170
    assert got.purchases_minor == 1_800 - 270
    assert got.allocated_minor == 180 - 27
    client.reverse(program, member, earned.transaction_id)  # the remaining 70
    got = deferred(client, program, min_position=log_head(server))
    assert (got.points_issued, got.purchases_minor, got.allocated_minor) == (100, 900, 90)


def test_converted_points_count_as_redeemed_and_reversals_undo(
    client: Client, server: ServerThread
) -> None:
    program = client.create_program(
        point_value_minor=1,
        expected_redemption_rate_ppm=1_000_000,
        points_conversion=pb.PointsConversion(points=10, value_minor=1),
    )
    member = client.enroll(program)
    client.earn(program, member, 100, purchase_minor=900)  # allocated 90
    converted = client.convert(program, member, 40)
    redeemed = client.redeem(program, member, 10)
    got = deferred(client, program, min_position=log_head(server))
    assert (got.points_redeemed, got.revenue_recognised_minor) == (50, 45)
    client.reverse(program, member, converted.transaction_id, points=20)
    client.reverse(program, member, redeemed.transaction_id)
    got = deferred(client, program, min_position=log_head(server))
    assert (got.points_redeemed, got.revenue_recognised_minor) == (20, 18)
    assert got.contract_liability_minor == 72


def test_redeeming_more_than_expected_recognises_all_and_no_more(
    client: Client, server: ServerThread
) -> None:
    program = client.create_program(point_value_minor=1, expected_redemption_rate_ppm=500_000)
    member = client.enroll(program)
    client.earn(program, member, 100, purchase_minor=950)
    client.redeem(program, member, 80)  # 80 of the 50 expected
    got = deferred(client, program, min_position=log_head(server))
    assert got.revenue_recognised_minor == got.allocated_minor
    assert got.contract_liability_minor == 0


def test_an_empty_programme_and_a_moment_before_it(client: Client) -> None:
    program = client.create_program(point_value_minor=1)
    got = deferred(client, program, as_of=datetime(2000, 1, 1, tzinfo=UTC))
    assert figures(got) == (0, 0, 0)
    assert got.points_issued == 0


def test_bad_deferred_revenue_requests(client: Client) -> None:
    program = client.create_program(point_value_minor=1)
    for fields, field in (
        ({"program_id": "bad id!"}, "program_id"),
        ({"expected_redemption_rate_ppm": 0}, "expected_redemption_rate_ppm"),
        ({"expected_redemption_rate_ppm": 1_000_001}, "expected_redemption_rate_ppm"),
        ({"min_position": -1}, "min_position"),
    ):
        chosen: dict[str, Any] = {"program_id": program, **fields}
        request = rpb.GetDeferredRevenueRequest(**chosen)
        got = refused(partial(reports(client).GetDeferredRevenue, request))
        assert got.code == grpc.StatusCode.INVALID_ARGUMENT
        assert field in got.fields
    got = refused(
        lambda: reports(client).GetDeferredRevenue(
            rpb.GetDeferredRevenueRequest(program_id="nobody")
        )
    )
    assert (got.code, got.reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")


# ---------------------------------------------------------------------- breakage


def local(year: int, month: int, day: int, hour: int = 0) -> Any:
    return ts(datetime(year, month, day, hour, tzinfo=SHANGHAI))


def breakage(
    client: Client, program: str, cohort: rpb.Cohort.ValueType, **f: Any
) -> rpb.GetBreakageResponse:
    got: rpb.GetBreakageResponse = reports(client).GetBreakage(
        rpb.GetBreakageRequest(program_id=program, cohort=cohort, **f), timeout=30
    )
    return got


def row(r: rpb.BreakageRow) -> tuple[Any, ...]:
    return (
        r.cohort_label,
        r.issued,
        r.redeemed,
        r.expired,
        r.reversed,
        r.outstanding,
        r.closed,
        r.observed_redemption_rate_ppm,
        r.projected_redemption_rate_ppm,
    )


def test_breakage_by_cohort_in_the_programmes_time_zone(
    client: Client, server: ServerThread
) -> None:
    program = client.create_program(
        time_zone="Asia/Shanghai",
        point_value_minor=1,
        expected_redemption_rate_ppm=900_000,
        points_conversion=pb.PointsConversion(points=10, value_minor=1),
    )
    m1, m2, m3 = (client.enroll(program) for _ in range(3))
    # 2022: 100 earned that expired at the start of 2023 (local; so at once), 60 earned and
    # redeemed: closed.
    client.earn(program, m1, 100, occurred_at=local(2022, 6, 1), expires_at=local(2023, 1, 1))
    client.earn(program, m1, 60, occurred_at=local(2022, 6, 15))
    client.redeem(program, m1, 60, occurred_at=local(2022, 7, 1))
    # 2023: 200 earned, 100 redeemed and 20 converted; 50 earned and reversed.
    client.earn(program, m2, 200, occurred_at=local(2023, 3, 1))
    wrong = client.earn(program, m2, 50, occurred_at=local(2023, 3, 2))
    client.reverse(program, m2, wrong.transaction_id)
    client.redeem(program, m2, 100, occurred_at=local(2023, 4, 1))
    client.convert(program, m2, 20, occurred_at=local(2023, 5, 1))
    # 2024 in Shanghai, still 2023 in UTC.
    client.earn(program, m3, 10, occurred_at=local(2024, 1, 1, 1))
    head = log_head(server)

    got = breakage(client, program, rpb.COHORT_YEAR, min_position=head)
    assert got.closed_redeemed_share_ppm == 375_000  # 60 of the 160 that left 2022
    assert [row(r) for r in got.rows] == [
        ("2022", 160, 60, 100, 0, 0, True, 375_000, 375_000),
        # (120 + 80 x 0.375) / 200
        ("2023", 250, 120, 0, 50, 80, False, 600_000, 750_000),
        ("2024", 10, 0, 0, 0, 10, False, 0, 375_000),
    ]
    assert got.rows[2].cohort_start.ToDatetime(tzinfo=UTC) == datetime(2023, 12, 31, 16, tzinfo=UTC)

    months = breakage(client, program, rpb.COHORT_MONTH)
    assert [r.cohort_label for r in months.rows] == ["2022-06", "2023-03", "2024-01"]
    assert months.rows[1].issued == 250
    quarters = breakage(
        client, program, rpb.COHORT_QUARTER, since=local(2023, 1, 1), until=local(2024, 1, 1)
    )
    assert [(r.cohort_label, r.outstanding) for r in quarters.rows] == [("2023-Q1", 80)]
    # The cohorts add up to what the members hold.
    owed = liabilities(client, program, min_position=head)
    assert sum(r.outstanding for r in got.rows) == owed.points_outstanding - owed.points_debt


def test_breakage_without_a_closed_cohort_projects_the_programmes_estimate(
    client: Client, server: ServerThread
) -> None:
    program = client.create_program(expected_redemption_rate_ppm=900_000)
    member = client.enroll(program)
    client.earn(program, member, 100)
    client.redeem(program, member, 50)
    got = breakage(client, program, rpb.COHORT_YEAR, min_position=log_head(server))
    assert got.closed_redeemed_share_ppm == 900_000
    (only,) = got.rows
    assert (only.observed_redemption_rate_ppm, only.projected_redemption_rate_ppm) == (
        500_000,
        950_000,
    )


@pytest.mark.parametrize("zone", ["UTC", "America/Los_Angeles"])
def test_cohorts_add_up_to_the_liabilities_through_debt_holds_and_reversals(
    client: Client, server: ServerThread, zone: str
) -> None:
    """The reports' history: debt from a reversed earn, repaid by released held points, a
    redemption, a conversion, an expiry undone, an adjustment."""
    history = build_history(client, time_zone=zone)
    got = breakage(client, history.program, rpb.COHORT_MONTH, min_position=history.last)
    owed = liabilities(client, history.program, min_position=history.last)
    assert sum(r.outstanding for r in got.rows) == owed.points_outstanding - owed.points_debt
    for r in got.rows:
        assert r.issued - r.reversed - r.redeemed - r.expired == r.outstanding


def test_bad_breakage_requests(client: Client) -> None:
    program = client.create_program()
    now = datetime.now(UTC)
    for fields, field in (
        ({"cohort": rpb.COHORT_UNSPECIFIED}, "cohort"),
        ({"program_id": ""}, "program_id"),
        ({"since": ts(now), "until": ts(now - timedelta(days=1))}, "until"),
    ):
        chosen: dict[str, Any] = {"program_id": program, "cohort": rpb.COHORT_YEAR, **fields}
        request = rpb.GetBreakageRequest(**chosen)
        got = refused(partial(reports(client).GetBreakage, request))
        assert got.code == grpc.StatusCode.INVALID_ARGUMENT
        assert field in got.fields
    got = refused(
        lambda: reports(client).GetBreakage(
            rpb.GetBreakageRequest(program_id="nobody", cohort=rpb.COHORT_YEAR)
        )
    )
    assert got.reason == "PROGRAM_NOT_FOUND"
