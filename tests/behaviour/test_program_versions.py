"""Programme versions: each UpdateProgram is a new version with the log position of the event
that made it; GetProgram answers the version in force at a past recorded time; every account
event records the version it was decided under; and a change applies only to what is
recorded after it (expiry, the tier window, the top-up bonus schedule).

Every scenario runs end to end over gRPC against a real server on each backend.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from ledger.v1 import audit_pb2 as apb
from ledger.v1 import audit_pb2_grpc as apb_grpc
from ledger.v1 import ledger_pb2 as pb
from tests.support import Client, new_id, refused, ts

ROLLING_30 = pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=30)
ROLLING_10 = pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=10)


@pytest.fixture
def audit(client: Client) -> Iterator[apb_grpc.AuditServiceStub]:
    channel = grpc.insecure_channel(client.target)
    yield apb_grpc.AuditServiceStub(channel)
    channel.close()


def create(client: Client, **fields: Any) -> pb.CreateProgramResponse:
    response: pb.CreateProgramResponse = client.stub.CreateProgram(
        pb.CreateProgramRequest(
            program_id=new_id("prog"),
            display_name="Versions",
            currency="EUR",
            request_id=new_id("req"),
            **fields,
        ),
        timeout=30,
    )
    return response


def get_program(client: Client, program: str, as_of: datetime | None = None) -> pb.Program:
    request = pb.GetProgramRequest(program_id=program)
    if as_of is not None:
        request.as_of.CopyFrom(ts(as_of))
    response: pb.GetProgramResponse = client.stub.GetProgram(request, timeout=30)
    return response.program


def utc(moment: Any) -> datetime:
    return moment.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def payloads(
    audit: apb_grpc.AuditServiceStub, program: str, member: str
) -> list[tuple[str, dict[str, Any]]]:
    history = audit.GetAccountHistory(
        apb.GetAccountHistoryRequest(program_id=program, member_id=member), timeout=30
    )
    return [(e.event_type, json.loads(e.payload_json)) for e in history.events]


def provenance_of(payload: dict[str, Any]) -> dict[str, Any]:
    provenance: dict[str, Any] = payload["provenance"]
    data: dict[str, Any] = provenance.get("_data_", provenance)
    return data


# ---------------------------------------------------------------------- versions and positions


def test_each_update_is_a_version_with_its_effective_position(client: Client) -> None:
    created = create(client, tier_window_days=30)
    program = created.program.program_id
    assert (created.program.version, created.program.effective_position) == (1, created.position)
    assert created.position > 0

    first = client.update_program(program, tier_window_days=20)
    second = client.update_program(program, tier_window_days=10)
    assert first.program.version == 2
    assert first.program.effective_position == first.position
    assert second.program.version == 3
    assert second.program.effective_position == second.position > first.position

    now = get_program(client, program)
    assert (now.version, now.tier_window_days, now.effective_position) == (3, 10, second.position)


def test_get_program_as_of_answers_the_version_in_force_then(client: Client) -> None:
    created = create(client, tier_window_days=30)
    program = created.program.program_id
    first = client.update_program(program, tier_window_days=20)
    second = client.update_program(program, tier_window_days=10)
    made_at = utc(created.program.created_at)
    first_at, second_at = utc(first.program.updated_at), utc(second.program.updated_at)

    # Inclusive of the recorded time of each version; between versions the earlier one.
    for as_of, version, window in [
        (made_at, 1, 30),
        (first_at - timedelta(microseconds=1), 1, 30),
        (first_at, 2, 20),
        (second_at - timedelta(microseconds=1), 2, 20),
        (second_at, 3, 10),
        (datetime.now(UTC), 3, 10),
    ]:
        then = get_program(client, program, as_of)
        assert (then.version, then.tier_window_days) == (version, window), as_of
    assert get_program(client, program, first_at).effective_position == first.position
    assert get_program(client, program, made_at).effective_position == created.position


def test_get_program_as_of_before_creation_is_not_found(client: Client) -> None:
    created = create(client)
    before = utc(created.program.created_at) - timedelta(microseconds=1)
    problem = refused(lambda: get_program(client, created.program.program_id, before))
    assert (problem.code, problem.reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")


def test_get_program_as_of_in_the_future_or_out_of_range_is_invalid(client: Client) -> None:
    program = create(client).program.program_id
    problem = refused(lambda: get_program(client, program, datetime.now(UTC) + timedelta(days=1)))
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "as_of" in problem.fields
    request = pb.GetProgramRequest(program_id=program)
    request.as_of.seconds = -(10**12)
    problem = refused(lambda: client.stub.GetProgram(request, timeout=30))
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "as_of" in problem.fields


# ---------------------------------------------------------------------- events record the version


def test_every_account_event_records_the_version_it_was_decided_under(
    client: Client, audit: apb_grpc.AuditServiceStub
) -> None:
    created = create(
        client,
        expiry_policy=pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=5),
        top_up_bonus=[pb.TopUpBonusStep(min_cash_minor=1000, bonus_minor=100)],
    )
    program = created.program.program_id
    member = client.enroll(program)
    # Already past its expiry: expired within the command that recorded it, under its version.
    client.earn(program, member, 100, occurred_at=ts(datetime.now(UTC) - timedelta(days=6)))
    client.update_program(program, tier_window_days=40)
    client.earn(program, member, 10)
    client.top_up(program, member, 1000)

    events = payloads(audit, program, member)
    versions = [(kind, provenance_of(p)["program_version"]) for kind, p in events]
    assert versions == [
        ("MemberEnrolled", 1),
        ("PointsEarned", 1),
        ("LotsExpired", 1),
        ("PointsEarned", 2),
        ("StoredValueToppedUp", 2),
    ]
    topped_up = events[-1][1]
    assert topped_up["program_version"] == provenance_of(topped_up)["program_version"] == 2


# ---------------------------------------------------------------------- changes never rewrite


def test_a_new_expiry_policy_applies_to_earns_recorded_after_it(client: Client) -> None:
    program = create(client, expiry_policy=ROLLING_30).program.program_id
    member = client.enroll(program)
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    old = client.earn(program, member, 100, occurred_at=ts(at))
    client.update_program(program, expiry_policy=ROLLING_10)
    new = client.earn(program, member, 50, occurred_at=ts(at))

    lots = {
        lot.lot_id: utc(lot.expires_at)
        for lot in client.lots(program, member, min_position=new.position)
    }
    assert lots == {old.lot_id: at + timedelta(days=30), new.lot_id: at + timedelta(days=10)}


def test_a_new_tier_window_keeps_the_old_earns_window(client: Client) -> None:
    """Decision 13: the earn recorded under 30 days counts for 30 days after the change to 10;
    GetAccount's qualifying points say so for both."""
    tiers = [pb.Tier(code="SILVER", name="Silver", threshold=100)]
    program = create(client, tiers=tiers, tier_window_days=30).program.program_id
    member = client.enroll(program, occurred_at=ts(datetime.now(UTC) - timedelta(days=60)))
    twenty_days_ago = ts(datetime.now(UTC) - timedelta(days=20))
    client.earn(program, member, 100, occurred_at=twenty_days_ago)
    client.update_program(program, tier_window_days=10)
    later = client.earn(program, member, 7, occurred_at=twenty_days_ago)

    account = client.account(program, member, min_position=later.position)
    assert (account.tier_code, account.qualifying_points) == ("SILVER", 100)
    assert (later.account.tier_code, later.account.qualifying_points) == ("SILVER", 100)


def test_a_new_bonus_schedule_applies_to_top_ups_recorded_after_it(client: Client) -> None:
    program = create(
        client, top_up_bonus=[pb.TopUpBonusStep(min_cash_minor=1000, bonus_minor=100)]
    ).program.program_id
    member = client.enroll(program)
    first = client.top_up(program, member, 1000)
    client.update_program(
        program,
        top_up_bonus=[pb.TopUpBonusStep(min_cash_minor=1000, bonus_minor=300)],
        replace_top_up_bonus=True,
    )
    second = client.top_up(program, member, 1000)

    assert (first.account.stored_value_bonus_minor, second.account.stored_value_bonus_minor) == (
        100,
        400,
    )
    assert client.stored_value(program, member, min_position=second.position) == (2000, 400)
