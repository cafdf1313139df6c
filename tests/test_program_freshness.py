"""The group commit decides under the programme as the application last read it, without a
read per group: its insert checks, under the events table's lock, that no newer version was
recorded (decision 29). An UpdateProgram by another process (here: a second Tally on the same
database) applies to every command recorded after it, accepted or refused."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ledger.api import requests as parse
from ledger.application import commands as c
from ledger.application.group_commit import AccountCache
from ledger.application.views import Outcome
from ledger.domain import errors
from ledger.domain.program import ProgramSettings
from ledger.runtime import Tally
from ledger.v1 import ledger_pb2 as pb
from tests.support import scratch_postgres


@pytest.fixture(params=["sqlite", "postgres"])
def two(request: pytest.FixtureRequest) -> Iterator[tuple[Tally, Tally]]:
    """Two Tallies on one database, as two processes would be."""

    def pair(url: str) -> Iterator[tuple[Tally, Tally]]:
        first = Tally.from_url(url)
        second = Tally.from_url(url)
        try:
            yield first, second
        finally:
            second.close()
            first.close()

    if request.param == "sqlite":
        with tempfile.TemporaryDirectory(prefix="tally-test-") as folder:
            yield from pair(f"sqlite:///{Path(folder) / 'ledger.db'}")
    else:
        with scratch_postgres() as url:
            yield from pair(url)


def _earn(rid: str, points: int = 100) -> c.EarnPoints:
    return c.EarnPoints(program_id="p", member_id="m", points=points, request_id=rid, store_id="s")


def _update(other: Tally, rid: str, **fields: object) -> None:
    other.app.update_program(parse.update_program(pb.UpdateProgramRequest(
        program_id="p", request_id=rid, **fields  # type: ignore[arg-type]
    )))  # fmt: skip


def _set_up(here: Tally) -> AccountCache:
    here.app.create_program(
        c.CreateProgram(program_id="p", request_id="p", settings=ProgramSettings("P", "EUR"))
    )
    cache = AccountCache(10)
    here.app.execute_group([c.EnrollMember(program_id="p", member_id="m", request_id="e")], cache)
    first = here.app.execute_group([_earn("warm")], cache)[0]  # the programme is cached now
    assert isinstance(first, Outcome)
    assert first.account is not None
    assert first.account.tier_code == ""
    return cache


def test_an_accepted_command_is_decided_under_a_version_recorded_elsewhere(
    two: tuple[Tally, Tally],
) -> None:
    here, other = two
    cache = _set_up(here)
    _update(
        other, "u1", tiers=[pb.Tier(code="GOLD", name="Gold", threshold=100)], replace_tiers=True
    )

    answer = here.app.execute_group([_earn("after")], cache)[0]

    assert isinstance(answer, Outcome)
    assert answer.account is not None
    assert answer.account.tier_code == "GOLD"  # decided under version 2, not the cached 1
    assert here.app.cached_program("p").version == 2


def test_a_refusal_is_decided_again_under_a_version_recorded_elsewhere(
    two: tuple[Tally, Tally],
) -> None:
    here, other = two
    cache = _set_up(here)
    convert = parse.convert_points(
        pb.ConvertPointsRequest(
            program_id="p", member_id="m", points=100, store_id="s", request_id="cv"
        ),
        here.app.clock(),
    )
    refused = here.app.execute_group([convert], cache)[0]
    assert isinstance(refused, errors.DomainError)  # no conversion rate yet
    _update(other, "u1", points_conversion=pb.PointsConversion(points=100, value_minor=50))

    # Alone in its group (nothing saved, so no insert checks it), and in an atomic batch.
    again = here.app.execute_group([convert], cache)[0]
    assert isinstance(again, Outcome), again
    atomic = here.app.execute_atomic([_earn("a1", 200), replace(convert, request_id="cv2")], cache)
    assert all(isinstance(a, Outcome) for a in atomic), atomic
