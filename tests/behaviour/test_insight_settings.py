"""The programme's insight settings (issue 15): set on CreateProgram, replaced as a whole by
UpdateProgram, shown by GetProgram now and as_of, refused field by field when out of range.
Over gRPC against a real server on each backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from ledger.v1 import ledger_pb2 as pb
from tests.support import Client, new_id, refused

DEFAULTS = pb.InsightSettings(
    frequency_window_days=365,
    new_member_days=30,
    new_member_max_purchases=1,
    default_cycle_days=30,
    min_cycle_days=7,
    at_risk_after_cycles_pct=150,
    dormant_after_cycles_pct=300,
    lost_after_days=365,
)


def create(client: Client, **fields: Any) -> pb.CreateProgramResponse:
    response: pb.CreateProgramResponse = client.stub.CreateProgram(
        pb.CreateProgramRequest(
            program_id=new_id("prog"),
            display_name="Insights",
            currency="CNY",
            request_id=new_id("req"),
            **fields,
        ),
        timeout=30,
    )
    return response


def get_program(client: Client, program: str, as_of: datetime | None = None) -> pb.Program:
    request = pb.GetProgramRequest(program_id=program)
    if as_of is not None:
        request.as_of.FromDatetime(as_of)
    response: pb.GetProgramResponse = client.stub.GetProgram(request, timeout=30)
    return response.program


def with_(settings: pb.InsightSettings, **changes: int) -> pb.InsightSettings:
    changed = pb.InsightSettings()
    changed.CopyFrom(settings)
    for name, value in changes.items():
        setattr(changed, name, value)
    return changed


def test_a_programme_created_without_them_has_the_defaults(client: Client) -> None:
    created = create(client)
    assert created.program.insight_settings == DEFAULTS
    assert get_program(client, created.program.program_id).insight_settings == DEFAULTS


def test_created_with_some_the_rest_are_defaults(client: Client) -> None:
    created = create(
        client, insight_settings=pb.InsightSettings(lost_after_days=180, min_cycle_days=3)
    )
    expected = with_(DEFAULTS, lost_after_days=180, min_cycle_days=3)
    assert created.program.insight_settings == expected
    assert get_program(client, created.program.program_id).insight_settings == expected


def test_an_update_replaces_the_whole_set_and_other_updates_keep_it(client: Client) -> None:
    created = create(client, insight_settings=pb.InsightSettings(new_member_days=14))
    program = created.program.program_id

    renamed = client.update_program(program, display_name="Renamed")
    assert renamed.program.insight_settings == with_(DEFAULTS, new_member_days=14)

    replaced = client.update_program(
        program, insight_settings=pb.InsightSettings(at_risk_after_cycles_pct=200)
    )
    # new_member_days, not in the new set, is back to its default.
    assert replaced.program.insight_settings == with_(DEFAULTS, at_risk_after_cycles_pct=200)
    assert get_program(client, program).insight_settings == replaced.program.insight_settings

    # A present but empty message: every default.
    reset = client.update_program(program, insight_settings=pb.InsightSettings())
    assert reset.program.insight_settings == DEFAULTS
    assert reset.program.version == 4


def test_get_program_as_of_shows_the_settings_in_force_then(client: Client) -> None:
    created = create(client, insight_settings=pb.InsightSettings(lost_after_days=100))
    program = created.program.program_id
    updated = client.update_program(
        program, insight_settings=pb.InsightSettings(lost_after_days=200)
    )
    made_at = created.program.created_at.ToDatetime(tzinfo=UTC)
    updated_at = updated.program.updated_at.ToDatetime(tzinfo=UTC)
    for as_of, days in [
        (made_at, 100),
        (updated_at - timedelta(microseconds=1), 100),
        (updated_at, 200),
        (datetime.now(UTC), 200),
    ]:
        assert get_program(client, program, as_of).insight_settings.lost_after_days == days


def test_bad_settings_are_refused_field_by_field_and_change_nothing(client: Client) -> None:
    problem = refused(
        lambda: create(
            client,
            insight_settings=pb.InsightSettings(
                frequency_window_days=-1, lost_after_days=36_601, new_member_days=36_600
            ),
        )
    )
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
    assert problem.fields == {
        "insight_settings.frequency_window_days": "must be from 1 to 36,600",
        "insight_settings.lost_after_days": "must be from 1 to 36,600",
    }

    created = create(client)
    program = created.program.program_id
    for given, expected in [
        (
            pb.InsightSettings(min_cycle_days=31),  # above the default cycle of 30
            {"insight_settings.min_cycle_days": "must not exceed default_cycle_days"},
        ),
        (
            pb.InsightSettings(at_risk_after_cycles_pct=300),  # not below dormant's 300
            {"insight_settings.dormant_after_cycles_pct": "must exceed at_risk_after_cycles_pct"},
        ),
        (
            pb.InsightSettings(new_member_max_purchases=-3),
            {"insight_settings.new_member_max_purchases": "must be from 1 to 36,600"},
        ),
    ]:
        problem = refused(lambda g=given: client.update_program(program, insight_settings=g))  # type: ignore[misc]
        assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
        assert problem.fields == expected
    unchanged = get_program(client, program)
    assert (unchanged.version, unchanged.insight_settings) == (1, DEFAULTS)


def test_a_create_replay_with_other_settings_reuses_the_key(client: Client) -> None:
    request = pb.CreateProgramRequest(
        program_id=new_id("prog"),
        display_name="Insights",
        currency="CNY",
        request_id=new_id("req"),
        insight_settings=pb.InsightSettings(lost_after_days=90),
    )
    first = client.stub.CreateProgram(request, timeout=30)
    assert client.stub.CreateProgram(request, timeout=30).program == first.program
    changed = pb.CreateProgramRequest()
    changed.CopyFrom(request)
    changed.insight_settings.lost_after_days = 91
    problem = refused(lambda: client.stub.CreateProgram(changed, timeout=30))
    assert (problem.code, problem.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
