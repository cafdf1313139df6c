"""GetExpiryForecast over gRPC on both backends (docs/reports.md): the points of lots that
will expire in [since, until) if nobody uses them, per local day of the programme's time
zone, and the members to warn, paged, most points first.

Every expectation is worked by hand from small histories dated by occurred_at (lots expire
by the policy from when they were earned): a year-end clearing in Asia/Shanghai (its year
ends 8 hours before UTC's) and in America/Los_Angeles (8 hours after), whose clearing at
local midnight is one bucket on 31 December, the last day the points can be used; rolling
lots earned on either side of a DST change; held points (not counted: an expiry run does
not take them), a partly redeemed lot, a reversed earn; pages with ties; every bad input.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.forecast_queries import bucket_date, offset_segments
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import report_pb2 as rpb
from ledger.v1 import report_pb2_grpc
from tests.support import Client, new_id, refused, ts

SHANGHAI = ZoneInfo("Asia/Shanghai")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
# Earns dated in last year, so that they are in the past whatever today is.
Y = datetime.now(UTC).year - 1


def year_end(years: int) -> pb.ExpiryPolicy:
    return pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_END_OF_YEAR_AFTER_YEARS, years=years)


def forecast(
    client: Client,
    program: str,
    since: datetime | None = None,
    until: datetime | None = None,
    **f: Any,
) -> rpb.GetExpiryForecastResponse:
    request = rpb.GetExpiryForecastRequest(program_id=program, **f)
    if since is not None:
        request.since.CopyFrom(ts(since))
    if until is not None:
        request.until.CopyFrom(ts(until))
    got: rpb.GetExpiryForecastResponse = report_pb2_grpc.ReportServiceStub(
        client.channel
    ).GetExpiryForecast(request, timeout=30)
    return got


def utc(t: Timestamp) -> datetime:
    return t.ToDatetime(tzinfo=UTC)


def buckets(response: rpb.GetExpiryForecastResponse) -> list[tuple[str, datetime, int, int]]:
    return [(b.date, utc(b.expires_at), b.points, b.members) for b in response.buckets]


def members(response: rpb.GetExpiryForecastResponse) -> list[tuple[str, int, datetime]]:
    return [(m.member_id, m.points, utc(m.expires_at)) for m in response.members]


# ---------------------------------------------------------------------- year-end clearing


def test_year_end_clearing_in_shanghai_is_one_bucket_on_31_december(client: Client) -> None:
    program = client.create_program(time_zone="Asia/Shanghai", expiry_policy=year_end(2))
    alice, bob = client.enroll(program), client.enroll(program)
    # 23:00 on 31 December Y in Shanghai: local year Y, cleared at the end of Y+2.
    client.earn(program, alice, 100, occurred_at=ts(datetime(Y, 12, 31, 15, tzinfo=UTC)))
    # 01:00 on 1 January Y+1 in Shanghai (still Y in UTC): cleared a year later.
    client.earn(program, alice, 40, occurred_at=ts(datetime(Y, 12, 31, 17, tzinfo=UTC)))
    last = client.earn(program, bob, 70, occurred_at=ts(datetime(Y, 6, 1, tzinfo=UTC)))
    clearing = datetime(Y + 3, 1, 1, tzinfo=SHANGHAI)  # = 31 December Y+2, 16:00 UTC
    assert clearing == datetime(Y + 2, 12, 31, 16, tzinfo=UTC)

    got = forecast(
        client,
        program,
        datetime(Y + 2, 12, 1, tzinfo=UTC),
        datetime(Y + 3, 1, 31, tzinfo=UTC),
        min_position=last.position,
    )

    assert buckets(got) == [(f"{Y + 2}-12-31", clearing, 170, 2)]
    assert members(got) == [(alice, 100, clearing), (bob, 70, clearing)]
    assert (got.total_points, got.total_members, got.next_page_token) == (170, 2, "")
    assert got.position >= last.position
    # [since, until) on the expiry instant: until at the clearing leaves it out, since at
    # it keeps it.
    before = forecast(client, program, datetime(Y + 2, 12, 1, tzinfo=UTC), clearing)
    assert (list(before.buckets), before.total_points, before.total_members) == ([], 0, 0)
    at = forecast(client, program, clearing, clearing + timedelta(days=1))
    assert buckets(at) == [(f"{Y + 2}-12-31", clearing, 170, 2)]
    # The later clearing holds alice's other 40, on 31 December Y+3.
    later = forecast(client, program, datetime(Y + 3, 12, 1, tzinfo=UTC), until=None)
    later_clearing = datetime(Y + 4, 1, 1, tzinfo=SHANGHAI)
    assert buckets(later) == [(f"{Y + 3}-12-31", later_clearing, 40, 1)]
    assert members(later) == [(alice, 40, later_clearing)]


def test_year_end_clearing_in_los_angeles_comes_after_utcs(client: Client) -> None:
    program = client.create_program(time_zone="America/Los_Angeles", expiry_policy=year_end(2))
    member = client.enroll(program)
    # 21:00 on 31 December Y in Los Angeles (1 January Y+1 in UTC): local year Y.
    client.earn(program, member, 100, occurred_at=ts(datetime(Y + 1, 1, 1, 5, tzinfo=UTC)))
    # 01:00 on 1 January Y+1 in Los Angeles: the next year's clearing.
    last = client.earn(program, member, 60, occurred_at=ts(datetime(Y + 1, 1, 1, 9, tzinfo=UTC)))
    clearing = datetime(Y + 3, 1, 1, tzinfo=LOS_ANGELES)  # = 1 January Y+3, 08:00 UTC
    assert clearing == datetime(Y + 3, 1, 1, 8, tzinfo=UTC)

    # Up to UTC's year end: nothing yet.
    early = forecast(
        client,
        program,
        datetime(Y + 2, 12, 1, tzinfo=UTC),
        datetime(Y + 3, 1, 1, tzinfo=UTC),
        min_position=last.position,
    )
    assert (list(early.buckets), early.total_points) == ([], 0)
    got = forecast(
        client,
        program,
        datetime(Y + 2, 12, 1, tzinfo=UTC),
        clearing + timedelta(microseconds=1),
    )
    assert buckets(got) == [(f"{Y + 2}-12-31", clearing, 100, 1)]
    assert members(got) == [(member, 100, clearing)]


# ---------------------------------------------------------------------- rolling lots, DST


def test_rolling_lots_across_a_dst_change_held_redeemed_and_reversed(client: Client) -> None:
    # Earned in winter (PST, UTC-8), expiring DAYS x 24 hours later in summer (PDT, UTC-7):
    # an hour later on the local clock. The lot earned at 23:30 so expires at 00:30 the
    # day after; the one earned at 23:00 at local midnight (the day that ends then).
    earned_day = date(Y, 3, 1)
    days = (date(Y + 2, 7, 1) - earned_day).days
    program = client.create_program(
        time_zone="America/Los_Angeles",
        expiry_policy=pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=days),
    )

    def at(hour: int, minute: int) -> datetime:
        return datetime(Y, 3, 1, hour, minute, tzinfo=LOS_ANGELES)

    prefix = new_id("m")
    carol, dave, erin, mia, noa = (
        client.enroll(program, f"{prefix}-{name}")
        for name in ("carol", "dave", "erin", "mia", "noa")
    )
    client.earn(program, mia, 10, occurred_at=ts(at(23, 30)))
    client.earn(program, noa, 20, occurred_at=ts(at(23, 0)))
    client.earn(program, carol, 100, occurred_at=ts(at(22, 30)))
    client.hold(program, carol, 30)  # held: not forecast
    client.earn(program, dave, 100, occurred_at=ts(at(22, 30)))
    client.redeem(program, dave, 40)  # a partly redeemed lot: its remaining 60
    reversed_earn = client.earn(program, erin, 80, occurred_at=ts(at(22, 30)))
    client.reverse(program, erin, reversed_earn.transaction_id)  # nothing left of it
    last = client.earn(program, erin, 5, occurred_at=ts(at(23, 30)))

    # Exact durations (as the server adds them), not wall-clock arithmetic.
    expiry = {
        hm: at(*hm).astimezone(UTC) + timedelta(days=days) for hm in ((22, 30), (23, 0), (23, 30))
    }
    assert expiry[(22, 30)] == datetime(Y + 2, 7, 1, 23, 30, tzinfo=LOS_ANGELES)
    assert expiry[(23, 0)] == datetime(Y + 2, 7, 2, 0, 0, tzinfo=LOS_ANGELES)
    assert expiry[(23, 30)] == datetime(Y + 2, 7, 2, 0, 30, tzinfo=LOS_ANGELES)
    since, until = datetime(Y + 2, 6, 1, tzinfo=UTC), datetime(Y + 2, 8, 1, tzinfo=UTC)

    got = forecast(client, program, since, until, min_position=last.position)

    assert buckets(got) == [
        (f"{Y + 2}-07-01", expiry[(22, 30)], 20 + 70 + 60, 3),
        (f"{Y + 2}-07-02", expiry[(23, 30)], 10 + 5, 2),
    ]
    assert members(got) == [
        (carol, 70, expiry[(22, 30)]),
        (dave, 60, expiry[(22, 30)]),
        (noa, 20, expiry[(23, 0)]),
        (mia, 10, expiry[(23, 30)]),
        (erin, 5, expiry[(23, 30)]),
    ]
    assert (got.total_points, got.total_members) == (165, 5)

    one = forecast(client, program, since, until, member_id=carol)
    assert buckets(one) == [(f"{Y + 2}-07-01", expiry[(22, 30)], 70, 1)]
    assert members(one) == [(carol, 70, expiry[(22, 30)])]
    assert (one.total_points, one.total_members) == (70, 1)
    # A bucket is a local day: a window ending inside 2 July (local) cuts that day short.
    cut = forecast(client, program, since, expiry[(23, 0)] + timedelta(minutes=1))
    assert buckets(cut) == [
        (f"{Y + 2}-07-01", expiry[(22, 30)], 150, 3),
    ]


def test_bucket_days_are_the_last_day_the_points_can_be_used() -> None:
    # The rule the server applies, worked for the instants above and a DST change itself.
    assert bucket_date(datetime(2027, 1, 1, tzinfo=SHANGHAI), SHANGHAI) == date(2026, 12, 31)
    assert bucket_date(datetime(2027, 1, 1, 0, 0, 0, 1, tzinfo=SHANGHAI), SHANGHAI) == date(
        2027, 1, 1
    )
    # 2026-03-08 02:00 PST is 03:00 PDT: the day is 23 hours long, and its end belongs to it.
    assert bucket_date(datetime(2026, 3, 9, tzinfo=LOS_ANGELES), LOS_ANGELES) == date(2026, 3, 8)
    segments = offset_segments(
        LOS_ANGELES, datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
    )
    hour = 3_600_000_000
    assert [offset // hour for _, offset in segments] == [-8, -7, -8]
    spring = int(datetime(2026, 3, 8, 10, tzinfo=UTC).timestamp()) * 1_000_000  # 02:00 PST
    autumn = int(datetime(2026, 11, 1, 9, tzinfo=UTC).timestamp()) * 1_000_000  # 02:00 PDT
    assert [last for last, _ in segments[:-1]] == [spring - 1, autumn - 1]


# ---------------------------------------------------------------------- members, paged


def test_members_are_paged_most_points_first_ties_by_member_id(client: Client) -> None:
    program = client.create_program(
        expiry_policy=pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=300)
    )
    prefix = new_id("m")
    points = {"a": 50, "b": 30, "c": 50, "d": 30, "e": 10}
    ids = {name: client.enroll(program, f"{prefix}-{name}") for name in points}
    last = None
    for name, p in points.items():
        last = client.earn(program, ids[name], p)
    assert last is not None
    order = ["a", "c", "b", "d", "e"]

    for size in (1, 2, 3):
        seen: list[tuple[str, int]] = []
        token = ""
        pages = 0
        while True:
            page = forecast(
                client, program, page_size=size, page_token=token, min_position=last.position
            )
            pages += 1
            assert (page.total_points, page.total_members) == (170, 5)
            assert sum(b.points for b in page.buckets) == 170
            assert len(page.members) <= size
            seen += [(m.member_id, m.points) for m in page.members]
            token = page.next_page_token
            if not token:
                break
        assert seen == [(ids[n], points[n]) for n in order]
        assert pages == -(-5 // size)

    first = forecast(client, program, page_size=2)
    # The token carries the window the first page resolved (since unset: its now): a
    # token is refused with other filters, a member, or another time range.
    stub = report_pb2_grpc.ReportServiceStub(client.channel)
    changes: list[dict[str, Any]] = [
        {"member_id": ids["a"]},
        {"until": ts(datetime.now(UTC) + timedelta(days=30))},
        {"since": ts(datetime.now(UTC))},
    ]
    for changed in changes:
        request = rpb.GetExpiryForecastRequest(
            program_id=program, page_size=2, page_token=first.next_page_token, **changed
        )
        problem = refused(functools.partial(stub.GetExpiryForecast, request))
        assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
        assert set(problem.fields) == {"page_token"}, changed


def test_nothing_expires_in_a_programme_without_expiry(client: Client) -> None:
    program, member = client.member()
    last = client.earn(program, member, 100)
    got = forecast(client, program, min_position=last.position)
    assert (list(got.buckets), list(got.members), got.total_points) == ([], [], 0)


# ---------------------------------------------------------------------- bad input


def _raw(seconds: int, nanos: int) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


NOW = int(datetime.now(UTC).timestamp())


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"program_id": ""}, "program_id"),
        ({"program_id": "no spaces"}, "program_id"),
        ({"min_position": -1}, "min_position"),
        ({"member_id": "x" * 65}, "member_id"),
        ({"page_size": -1}, "page_size"),
        ({"page_size": 1001}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"since": _raw(NOW, 10**9)}, "since"),
        ({"until": _raw(NOW, -1)}, "until"),
        ({"since": _raw(253_465_459_200, 0)}, "since"),  # year 10001
        ({"since": _raw(NOW, 0), "until": _raw(NOW, 0)}, "until"),
        ({"since": _raw(NOW, 0), "until": _raw(NOW - 1, 0)}, "until"),
        ({"until": _raw(NOW - 86_400, 0)}, "until"),  # before now, since unset
        ({"since": _raw(NOW, 0), "until": _raw(NOW + 366 * 86_400 + 1, 0)}, "until"),
    ],
)
def test_bad_input_names_its_field(client: Client, fields: dict[str, Any], bad: str) -> None:
    program, _ = client.member()
    fields = {"program_id": program, **fields}
    stub = report_pb2_grpc.ReportServiceStub(client.channel)
    problem = refused(lambda: stub.GetExpiryForecast(rpb.GetExpiryForecastRequest(**fields)))
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(problem.fields) == {bad}, problem.fields


def test_every_bad_field_at_once_and_the_longest_window(client: Client) -> None:
    program, _ = client.member()
    stub = report_pb2_grpc.ReportServiceStub(client.channel)
    problem = refused(
        lambda: stub.GetExpiryForecast(
            rpb.GetExpiryForecastRequest(
                program_id="bad id", member_id="bad id", page_size=5000, min_position=-3
            )
        )
    )
    assert set(problem.fields) == {"program_id", "member_id", "page_size", "min_position"}
    since = datetime(Y + 2, 1, 1, tzinfo=UTC)
    ok = forecast(client, program, since, since + timedelta(days=366))
    assert ok.total_points == 0


def test_unknown_programme_and_member(client: Client) -> None:
    stub = report_pb2_grpc.ReportServiceStub(client.channel)
    missing = refused(
        lambda: stub.GetExpiryForecast(rpb.GetExpiryForecastRequest(program_id=new_id("none")))
    )
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")
    program, _ = client.member()
    nobody = refused(
        lambda: stub.GetExpiryForecast(
            rpb.GetExpiryForecastRequest(program_id=program, member_id=new_id("nobody"))
        )
    )
    assert (nobody.code, nobody.reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
