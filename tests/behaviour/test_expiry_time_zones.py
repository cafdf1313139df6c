"""Expiry in the programme's time zone, through RunExpiry (decision 21):
END_OF_YEAR_AFTER_YEARS expires points earned in local year Y at the first instant of
1 January Y+N+1, local time; ROLLING_DAYS is exactly N x 24 hours in every zone, so across a
DST change the local clock of the expiry reads an hour earlier or later than the earn's.

Asia/Shanghai's year ends before UTC's, America/Los_Angeles' after it. End to end over gRPC
against a real server on each backend, whose clock the test sets (never sleeping).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ledger.api.server import start_server
from ledger.v1 import ledger_pb2 as pb
from tests.support import Client, open_tally, ts

US = timedelta(microseconds=1)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 6, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def clocked(request: pytest.FixtureRequest) -> Iterator[tuple[Client, Clock]]:
    """A server on a scratch database of its own whose clock is `Clock.now`."""
    clock = Clock()
    with open_tally(request.param, clock=clock) as tally:
        tally.sweeper.lot_interval = 3600
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        running = asyncio.run_coroutine_threadsafe(start_server(tally, "127.0.0.1:0"), loop).result(
            timeout=60
        )
        client = Client(f"127.0.0.1:{running.port}", backend=request.param)
        try:
            yield client, clock
        finally:
            client.close()
            asyncio.run_coroutine_threadsafe(running.stop(grace=1), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment).astimezone(UTC)


def expires_once_at(
    client: Client, clock: Clock, program: str, points: int, expires: datetime
) -> None:
    """Nothing expires as of a microsecond before `expires`; `points` do at it, once."""
    clock.now = expires + timedelta(hours=1)
    early = client.run_expiry(program, as_of=ts(expires - US))
    assert (early.expired_points, early.lots_expired) == (0, 0)
    due = client.run_expiry(program, as_of=ts(expires))
    assert (due.expired_points, due.lots_expired) == (points, 1)
    again = client.run_expiry(program, as_of=ts(expires))
    assert again.expired_points == 0


def earn_at(
    client: Client, clock: Clock, program: str, points: int, occurred: datetime
) -> tuple[str, datetime]:
    """Enroll a member and earn at `occurred`, recorded a minute later; (member, expires_at)."""
    clock.now = occurred + timedelta(minutes=1)
    member = client.enroll(program, occurred_at=ts(occurred))
    earned = client.earn(program, member, points, occurred_at=ts(occurred))
    (lot,) = client.lots(program, member, min_position=earned.position)
    return member, lot.expires_at.ToDatetime(tzinfo=UTC)


YEAR_END = pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_END_OF_YEAR_AFTER_YEARS, years=0)
NEXT_YEAR_END = pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_END_OF_YEAR_AFTER_YEARS, years=1)
ROLLING_30 = pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=30)


@pytest.mark.parametrize(
    ("zone", "occurred", "expires"),
    [
        # 23:30 on 31 December in Shanghai: its year 2025 ends at 16:00 UTC.
        ("Asia/Shanghai", "2025-12-31T15:30:00+00:00", "2025-12-31T16:00:00+00:00"),
        # The same instant is 2025 in UTC: its year ends 8 hours later.
        ("UTC", "2025-12-31T15:30:00+00:00", "2026-01-01T00:00:00+00:00"),
        # 19:00 on 31 December in Los Angeles, already 2026 in UTC: still 2025 there.
        ("America/Los_Angeles", "2026-01-01T03:00:00+00:00", "2026-01-01T08:00:00+00:00"),
        # 00:30 on 1 January in Shanghai, still 2025 in UTC: Shanghai's 2026.
        ("Asia/Shanghai", "2025-12-31T16:30:00+00:00", "2026-12-31T16:00:00+00:00"),
    ],
)
def test_year_end_clearing_in_the_programmes_time_zone(
    clocked: tuple[Client, Clock], zone: str, occurred: str, expires: str
) -> None:
    client, clock = clocked
    program = client.create_program(time_zone=zone, expiry_policy=YEAR_END)
    _, expires_at = earn_at(client, clock, program, 120, at(occurred))
    assert expires_at == at(expires)
    expires_once_at(client, clock, program, 120, at(expires))


def test_n_years_after_counts_from_the_local_year(clocked: tuple[Client, Clock]) -> None:
    client, clock = clocked
    program = client.create_program(time_zone="Asia/Shanghai", expiry_policy=NEXT_YEAR_END)
    _, expires_at = earn_at(client, clock, program, 10, at("2025-12-31T15:59:59+00:00"))
    assert expires_at == at("2026-12-31T16:00:00+00:00")
    expires_once_at(client, clock, program, 10, expires_at)


@pytest.mark.parametrize(
    ("zone", "occurred", "expires", "local"),
    [
        # 10:00 PST on 20 February: 11:00 PDT on 22 March, over the spring-forward night.
        ("America/Los_Angeles", "2026-02-20T18:00:00+00:00", "2026-03-22T18:00:00+00:00", 11),
        # 10:00 CEST on 10 October: 09:00 CET on 9 November, over the fall-back night.
        ("Europe/Berlin", "2026-10-10T08:00:00+00:00", "2026-11-09T08:00:00+00:00", 9),
        # No DST in Shanghai: the same local time.
        ("Asia/Shanghai", "2026-02-20T02:00:00+00:00", "2026-03-22T02:00:00+00:00", 10),
    ],
)
def test_rolling_days_are_exact_days_across_a_dst_change(
    clocked: tuple[Client, Clock], zone: str, occurred: str, expires: str, local: int
) -> None:
    client, clock = clocked
    program = client.create_program(time_zone=zone, expiry_policy=ROLLING_30)
    _, expires_at = earn_at(client, clock, program, 75, at(occurred))
    assert expires_at == at(expires) == at(occurred) + timedelta(days=30)
    assert expires_at.astimezone(ZoneInfo(zone)).hour == local
    expires_once_at(client, clock, program, 75, expires_at)


def test_a_policy_change_leaves_recorded_expiries_alone(clocked: tuple[Client, Clock]) -> None:
    """A policy change applies to earns recorded after it: each lot keeps the expires_at its
    earn recorded."""
    client, clock = clocked
    program = client.create_program(time_zone="Asia/Shanghai", expiry_policy=ROLLING_30)
    occurred = at("2026-02-20T18:00:00+00:00")
    member, before = earn_at(client, clock, program, 20, occurred)
    client.update_program(program, expiry_policy=YEAR_END)
    earned = client.earn(program, member, 30, occurred_at=ts(occurred))
    lots = {
        lot.lot_id: lot.expires_at.ToDatetime(tzinfo=UTC)
        for lot in client.lots(program, member, min_position=earned.position)
    }
    assert sorted(lots.values()) == [before, at("2026-12-31T16:00:00+00:00")]
