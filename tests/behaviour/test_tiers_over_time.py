"""Tier history (ListTierHistory, decision 21): every change of a member's tier with its
cause, projected from the points read model. Time is driven by occurred_at in the past (an
earn dated N days ago leaves a W-day window W - N days from now) and by `until` later than
now (what the window does by then to what is recorded now), never by sleeping.

Every scenario runs end to end over gRPC against a real server on each backend.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from ledger.audit.replay import read_live, rebuild
from ledger.domain.program import TierRule
from ledger.infrastructure.database import open_database, parse_database_url
from ledger.tier_queries import TierQueries, rules_versions
from ledger.v1 import ledger_pb2 as pb
from tests.support import Client, ServerThread, new_id, refused, ts

SILVER_GOLD = [
    pb.Tier(code="SILVER", name="Silver", threshold=100),
    pb.Tier(code="GOLD", name="Gold", threshold=500),
]
US = timedelta(microseconds=1)
EARN, REVERSAL = pb.TIER_CHANGE_CAUSE_EARN, pb.TIER_CHANGE_CAUSE_REVERSAL
WINDOW, RULES = pb.TIER_CHANGE_CAUSE_WINDOW, pb.TIER_CHANGE_CAUSE_RULES


def history(
    client: Client, program: str, member: str, min_position: int = 0, **f: Any
) -> pb.ListTierHistoryResponse:
    request = pb.ListTierHistoryRequest(
        program_id=program, member_id=member, min_position=min_position
    )
    for name in ("since", "until"):
        if name in f:
            getattr(request, name).CopyFrom(ts(f[name]))
    return client.stub.ListTierHistory(request, timeout=30)  # type: ignore[no-any-return]


def changes(response: pb.ListTierHistoryResponse) -> list[tuple[str, str, int, str, int]]:
    return [
        (c.from_tier_code, c.to_tier_code, c.cause, c.transaction_id, c.qualifying_points)
        for c in response.changes
    ]


def utc(moment: Any) -> datetime:
    return moment.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def member_since(client: Client, days: int, **program: Any) -> tuple[str, str]:
    program_id = client.create_program(**program)
    enrolled_at = ts(datetime.now(UTC) - timedelta(days=days))
    return program_id, client.enroll(program_id, occurred_at=enrolled_at)


# ---------------------------------------------------------------------- thresholds


def test_one_below_the_threshold_is_no_change_and_exactly_at_it_is(client: Client) -> None:
    program, member = member_since(client, 0, tiers=SILVER_GOLD)
    below = client.earn(program, member, 99)
    assert changes(history(client, program, member, below.position)) == []
    at = client.earn(program, member, 1)
    response = history(client, program, member, at.position)
    assert changes(response) == [("", "SILVER", EARN, at.transaction_id, 100)]
    assert response.tier_code == at.account.tier_code == "SILVER"
    assert response.changes[0].program_version == 1
    gold = client.earn(program, member, 400)
    assert changes(history(client, program, member, gold.position))[-1] == (
        "SILVER",
        "GOLD",
        EARN,
        gold.transaction_id,
        500,
    )


def test_non_qualifying_and_out_of_window_earns_change_nothing(client: Client) -> None:
    program, member = member_since(client, 90, tiers=SILVER_GOLD, tier_window_days=30)
    client.earn(program, member, 1000, qualifying=False)
    last = client.earn(
        program, member, 1000, occurred_at=ts(datetime.now(UTC) - timedelta(days=31))
    )
    response = history(client, program, member, last.position)
    assert (changes(response), response.tier_code) == ([], "")
    assert last.account.tier_code == ""


# ---------------------------------------------------------------------- reversals


def test_a_reversal_of_a_qualifying_earn_drops_the_tier(client: Client) -> None:
    program, member = member_since(client, 0, tiers=SILVER_GOLD)
    earned = client.earn(program, member, 520)
    back = client.reverse(program, member, earned.transaction_id, 30)
    response = history(client, program, member, back.position)
    assert changes(response) == [
        ("", "GOLD", EARN, earned.transaction_id, 520),
        ("GOLD", "SILVER", REVERSAL, back.transaction_id, 490),
    ]
    assert response.tier_code == back.account.tier_code == "SILVER"
    assert client.account(program, member, back.position).tier_code == "SILVER"


# ---------------------------------------------------------------------- the window slides


def test_the_window_downgrades_at_the_instant_each_earn_leaves_it(client: Client) -> None:
    program, member = member_since(client, 60, tiers=SILVER_GOLD, tier_window_days=30)
    now = datetime.now(UTC).replace(microsecond=0)
    old_at, recent_at = now - timedelta(days=29), now - timedelta(days=10)
    old = client.earn(program, member, 450, occurred_at=ts(old_at))
    recent = client.earn(program, member, 100, occurred_at=ts(recent_at))
    old_leaves = old_at + timedelta(days=30) + US  # counts up to and including +30 days
    recent_leaves = recent_at + timedelta(days=30) + US

    # Now: GOLD, and no change projected yet.
    response = history(client, program, member, recent.position)
    assert response.tier_code == recent.account.tier_code == "GOLD"
    assert changes(response) == [
        ("", "SILVER", EARN, old.transaction_id, 450),
        ("SILVER", "GOLD", EARN, recent.transaction_id, 550),
    ]
    # By 25 days from now the window has passed both, each at its own instant, with nothing
    # recorded then.
    later = history(client, program, member, until=now + timedelta(days=25))
    assert changes(later)[2:] == [
        ("GOLD", "SILVER", WINDOW, old.transaction_id, 100),
        ("SILVER", "", WINDOW, recent.transaction_id, 0),
    ]
    assert [(utc(c.changed_at), c.cause, c.to_tier_code) for c in later.changes[2:]] == [
        (old_leaves, WINDOW, "SILVER"),
        (recent_leaves, WINDOW, ""),
    ]
    assert later.tier_code == ""
    # Just before and at the old earn's last instant it still counts.
    at_edge = history(client, program, member, until=old_leaves)
    assert (len(at_edge.changes), at_edge.tier_code) == (2, "SILVER")
    before_edge = history(client, program, member, until=old_leaves - US)
    assert before_edge.tier_code == "GOLD"
    # since/until select the changes taking effect in [since, until).
    only = history(client, program, member, since=old_leaves, until=old_leaves + US)
    assert [c.cause for c in only.changes] == [WINDOW]


# ---------------------------------------------------------------------- rules


def test_a_tier_rule_change_leaves_past_history_untouched(client: Client) -> None:
    program, member = member_since(client, 0, tiers=SILVER_GOLD)
    earned = client.earn(program, member, 520)
    before = history(client, program, member, earned.position)
    updated = client.update_program(
        program,
        tiers=[pb.Tier(code="SILVER", name="Silver", threshold=100)],
        replace_tiers=True,
    )
    after = history(client, program, member, updated.position)
    assert list(after.changes)[: len(before.changes)] == list(before.changes)
    rules = after.changes[-1]
    assert (rules.from_tier_code, rules.to_tier_code, rules.cause) == ("GOLD", "SILVER", RULES)
    assert (rules.transaction_id, rules.program_version) == (updated.transaction_id, 2)
    assert utc(rules.changed_at) == utc(updated.program.updated_at)
    assert after.tier_code == client.account(program, member, updated.position).tier_code
    # As of before the change, the history is what it was.
    then = history(client, program, member, until=utc(updated.program.updated_at))
    assert list(then.changes) == list(before.changes)


# ---------------------------------------------------------------------- errors


def test_unknown_member_or_program_and_bad_ranges_are_refused(client: Client) -> None:
    program, member = member_since(client, 0, tiers=SILVER_GOLD)
    problem = refused(lambda: history(client, program, "nobody"))
    assert (problem.code, problem.reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    problem = refused(lambda: history(client, new_id("nope"), member))
    assert (problem.code, problem.reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")
    now = datetime.now(UTC)
    problem = refused(lambda: history(client, program, member, since=now, until=now))
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "until" in problem.fields
    problem = refused(lambda: history(client, program, "bad id!"))
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "member_id" in problem.fields


# ---------------------------------------------------------------------- rebuilt by replay


def test_tier_history_after_a_rebuild_equals_the_live_one(
    client: Client, server: ServerThread
) -> None:
    program, member = member_since(client, 60, tiers=SILVER_GOLD, tier_window_days=30)
    now = datetime.now(UTC)
    first = client.earn(program, member, 450, occurred_at=ts(now - timedelta(days=20)))
    client.earn(program, member, 100)
    client.reverse(program, member, first.transaction_id, 400)
    # 150 qualifying points: GOLD under the new ladder.
    new_ladder = [
        pb.Tier(code="SILVER", name="Silver", threshold=50),
        pb.Tier(code="GOLD", name="Gold", threshold=140),
    ]
    last = client.update_program(program, tiers=new_ladder, replace_tiers=True)
    live = history(client, program, member, last.position, until=now + timedelta(days=40))
    assert [c.cause for c in live.changes] == [EARN, EARN, REVERSAL, RULES, WINDOW, WINDOW]

    app = server.tally.app
    versions = rules_versions(app.program_versions(program))
    assert versions[-1].tiers == (
        TierRule("SILVER", "Silver", 50),
        TierRule("GOLD", "Gold", 140),
    )
    config = parse_database_url(server.database_url)
    positions, _ = read_live(config)
    until = now + timedelta(days=40)
    with tempfile.TemporaryDirectory() as folder:
        scratch_path = Path(folder) / "replay.db"
        rebuild(config, positions, scratch_path)
        scratch = open_database(parse_database_url(f"sqlite:///{scratch_path}"))
        try:
            replayed = TierQueries(scratch).history(program, member, versions, None, until, True)
        finally:
            scratch.close()
    live_rows = TierQueries(server.tally.database).history(
        program, member, versions, None, until, True
    )
    assert replayed == live_rows
    assert replayed is not None
    assert [(c.changed_at, c.cause.value, c.transaction_id) for c in replayed.changes] == [
        (
            utc(c.changed_at),
            pb.TierChangeCause.Name(c.cause).removeprefix("TIER_CHANGE_CAUSE_"),
            c.transaction_id,
        )
        for c in live.changes
    ]
