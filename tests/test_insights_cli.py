"""`ledger report insights`: the real command, on both backends, lists the members a
selection holds with their insights (figures computed by hand below), writes a CSV with a
header and nothing else, puts the control total on stderr, gives the programme's figures
with --summary, answers as InsightsService does, and refuses an operator's mistakes in one
line with exit 2.

The history, in business time (UTC programme, default insight settings; tiers member 0 and
silver 300 over a ten-year window, so the tier does not move between then and now):

    alice  enrolled 2025-01-01; buys 100.00 on 04-01 (s1), 60.00 on 04-15 (s2), 40.00 on
           05-20 (s1: 20 of its 40 points reversed on 05-25, refunding 20.00 pro rata),
           80.00 on 06-10 (s1)
    bob    enrolled 2025-01-01; buys 50.00 on 02-01 (s2)
    carol  enrolled 2025-06-20; buys nothing
    dan    enrolled 2025-01-01; buys 30.00 on 03-01 (s1), refunded whole on 03-05
    erin   enrolled 2025-01-01; buys 200.00 on 06-20, 06-25 and 06-28 (s3)
    frank  enrolled 2024-07-02; buys nothing

As of 2025-06-30T12:00Z (AS_OF): alice has four purchases worth 260.00 (average 65.00, gaps
14, 35, 21 days: cycle 21, recency 20: ACTIVE); bob one, 149 days ago (cycle 30 by default:
149 x 100 > 30 x 300, DORMANT); carol is NEW (enrolled 10 days ago); dan's only purchase is
refunded, so he has none and, enrolled 180 days ago, is DORMANT; erin three in ten days
(cycle 4, at least 7; recency 2: ACTIVE); frank none, enrolled 363 days ago: DORMANT.
Scored (N = 3): last purchase days bob < alice < erin give R 2, 4, 5; purchases 1, 3, 4
give F bob 2, erin 4, alice 5; money 50, 260, 600 give M bob 2, alice 4, erin 5. Segments:
alice R 4, FM round(4.5) = 5: CHAMPIONS; erin R 5, FM 5: CHAMPIONS; bob R 2, FM 2:
HIBERNATING. Qualifying points: alice 260 (40 to silver), bob 50 (250), erin 600 (top),
the others 0 (300).

As of 2025-05-01 (the programme's midnight): alice two purchases (cycle 14, recency 16:
ACTIVE), bob 89 days silent (> 45, <= 90: AT_RISK), erin none yet (DORMANT), carol not
enrolled yet; scored N = 2: bob R 3 F 3 M 3 (NEEDS_ATTENTION), alice 5 5 5 (CHAMPIONS).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.v1 import insights_pb2 as ipb
from ledger.v1 import insights_pb2_grpc as ipb_grpc
from ledger.v1 import ledger_pb2 as pb
from tests.support import Client, ServerThread, log_head, ts
from tests.test_operator_errors import one_clear_line
from tests.test_server import fresh_database, run_ledger

BACKENDS = ["sqlite", "postgres"]
AS_OF = "2025-06-30T12:00:00Z"
PROGRAM = "insights-cli"


def at(month: int, day: int, year: int = 2025) -> Any:
    return ts(datetime(year, month, day, 10, tzinfo=UTC))


@dataclass
class Ledger:
    backend: str
    url: str
    # What InsightsService answered as of AS_OF, while the server ran (on SQLite it holds
    # the file, so the command runs after it stopped): every member's row, by member id,
    # the control total, and the programme's figures.
    service_members: list[tuple[Any, ...]]
    service_total: int
    service_program: tuple[Any, ...]


def service_answers(server: ServerThread) -> tuple[list[tuple[Any, ...]], int, tuple[Any, ...]]:
    """ListSegmentMembers walked in pages of two, and GetProgramInsights, as of AS_OF."""
    stub = ipb_grpc.InsightsServiceStub(grpc.insecure_channel(server.target))
    as_of = Timestamp()
    as_of.FromJsonString(AS_OF)
    head = log_head(server)
    rows: list[tuple[Any, ...]] = []
    token, total = "", -1
    while True:
        page = stub.ListSegmentMembers(
            ipb.ListSegmentMembersRequest(
                program_id=PROGRAM, as_of=as_of, page_size=2, page_token=token, min_position=head
            ),
            timeout=30,
        )
        rows += [member_fields(m) for m in page.members]
        total, token = page.total, page.next_page_token
        if not token:
            break
    figures = stub.GetProgramInsights(
        ipb.GetProgramInsightsRequest(program_id=PROGRAM, as_of=as_of, min_position=head),
        timeout=30,
    )
    program = (
        figures.members,
        figures.purchasing_members,
        tuple((ipb.LifecycleStage.Name(s.stage), s.members) for s in figures.stages),
        tuple((ipb.RfmSegment.Name(s.segment), s.members) for s in figures.segments),
        figures.revenue_minor,
        figures.top_20_percent_revenue_share_ppm,
        figures.repeat_purchase_rate_ppm,
        tuple((s.store_id, s.net_purchases_minor, s.purchases) for s in figures.revenue_by_store),
    )
    return rows, total, program


def member_fields(m: Any) -> tuple[Any, ...]:
    """The figures compared between the service (a MemberInsights) and the command."""
    return (
        m.member_id,
        ipb.LifecycleStage.Name(m.lifecycle_stage).removeprefix("LIFECYCLE_STAGE_"),
        ipb.RfmSegment.Name(m.rfm_segment).removeprefix("RFM_SEGMENT_"),
        m.recency_score,
        m.frequency_score,
        m.monetary_score,
        m.recency_days,
        m.frequency,
        m.monetary_minor,
        m.average_order_minor,
        m.purchase_cycle_days,
        m.lifetime_value_minor,
        m.lifetime_purchases,
        m.favourite_store_id,
        m.next_tier_code,
        m.points_to_next_tier,
    )


def build_history(client: Client) -> None:
    client.create_program(
        program_id=PROGRAM,
        tiers=[pb.Tier(code="member", name="Member", threshold=0),
               pb.Tier(code="silver", name="Silver", threshold=300)],
        tier_window_days=3650,
    )  # fmt: skip
    for member, enrolled in (
        ("alice", at(1, 1)),
        ("bob", at(1, 1)),
        ("carol", at(6, 20)),
        ("dan", at(1, 1)),
        ("erin", at(1, 1)),
        ("frank", at(7, 2, 2024)),
    ):
        client.enroll(PROGRAM, member, occurred_at=enrolled)

    def buy(member: str, minor: int, when: Any, store: str) -> str:
        earned = client.earn(
            PROGRAM, member, minor // 100, purchase_minor=minor, store_id=store, occurred_at=when
        )
        return str(earned.transaction_id)

    buy("alice", 10_000, at(4, 1), "s1")
    buy("alice", 6_000, at(4, 15), "s2")
    part = buy("alice", 4_000, at(5, 20), "s1")
    client.reverse(PROGRAM, "alice", part, 20, occurred_at=at(5, 25))  # 20.00 pro rata
    buy("alice", 8_000, at(6, 10), "s1")
    buy("bob", 5_000, at(2, 1), "s2")
    whole = buy("dan", 3_000, at(3, 1), "s1")
    client.reverse(PROGRAM, "dan", whole, 0, occurred_at=at(3, 5))
    for day in (20, 25, 28):
        buy("erin", 20_000, at(6, day), "s3")


@pytest.fixture(scope="module", params=BACKENDS)
def ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ledger]:
    backend: str = request.param
    with fresh_database(backend, tmp_path_factory.mktemp(backend)) as url:
        server = ServerThread(url, lot_sweep_interval=3600)
        client = Client(server.target, backend)
        try:
            build_history(client)
            members, total, program = service_answers(server)
        finally:
            client.close()
            server.stop()
        yield Ledger(backend, url, members, total, program)


def insights(ledger: Ledger, *args: str, fmt: str = "json") -> tuple[Any, str]:
    """(stdout, parsed when JSON; stderr) of a successful run."""
    result = run_ledger(
        "report", "insights", "--database", ledger.url, "--program", PROGRAM, "--format", fmt,
        *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return (json.loads(result.stdout) if fmt == "json" else result.stdout), result.stderr


def members_of(ledger: Ledger, *args: str) -> dict[str, dict[str, Any]]:
    got, _ = insights(ledger, *args)
    return {m["member_id"]: m for m in got["members"]}


# ---------------------------------------------------------------------- the figures


def test_every_member_as_of_an_instant(ledger: Ledger) -> None:
    got = members_of(ledger, "--as-of", AS_OF)
    assert list(got) == ["alice", "bob", "carol", "dan", "erin", "frank"]  # member id order
    alice = got["alice"]
    assert {k: alice[k] for k in (
        "lifecycle_stage", "rfm_segment", "recency_score", "frequency_score", "monetary_score",
        "recency_days", "frequency", "monetary_minor", "average_order_minor",
        "purchase_cycle_days", "lifetime_value_minor", "lifetime_purchases",
        "first_purchase_at", "last_purchase_at", "favourite_store_id", "next_tier_code",
        "points_to_next_tier",
    )} == {
        "lifecycle_stage": "ACTIVE", "rfm_segment": "CHAMPIONS", "recency_score": 4,
        "frequency_score": 5, "monetary_score": 4, "recency_days": 20, "frequency": 4,
        "monetary_minor": 26_000, "average_order_minor": 6_500, "purchase_cycle_days": 21,
        "lifetime_value_minor": 26_000, "lifetime_purchases": 4,
        "first_purchase_at": "2025-04-01T10:00:00Z", "last_purchase_at": "2025-06-10T10:00:00Z",
        "favourite_store_id": "s1", "next_tier_code": "silver", "points_to_next_tier": 40,
    }  # fmt: skip
    assert alice["enrolled_at"] == "2025-01-01T10:00:00Z"
    stages = {m: row["lifecycle_stage"] for m, row in got.items()}
    assert stages == {"alice": "ACTIVE", "bob": "DORMANT", "carol": "NEW", "dan": "DORMANT",
                      "erin": "ACTIVE", "frank": "DORMANT"}  # fmt: skip
    scores = {
        m: (r["recency_score"], r["frequency_score"], r["monetary_score"], r["rfm_segment"])
        for m, r in got.items()
    }
    assert scores == {
        "alice": (4, 5, 4, "CHAMPIONS"), "bob": (2, 2, 2, "HIBERNATING"),
        "carol": (0, 0, 0, ""), "dan": (0, 0, 0, ""), "erin": (5, 4, 5, "CHAMPIONS"),
        "frank": (0, 0, 0, ""),
    }  # fmt: skip
    bob, dan, erin = got["bob"], got["dan"], got["erin"]
    assert (bob["recency_days"], bob["purchase_cycle_days"], bob["points_to_next_tier"]) == (
        149,
        0,
        250,
    )
    # A refund that removes a member's only purchase: no purchase at all.
    assert (dan["lifetime_purchases"], dan["recency_days"], dan["last_purchase_at"]) == (0, -1, "")
    assert (erin["purchase_cycle_days"], erin["next_tier_code"], erin["points_to_next_tier"]) == (
        4,
        "",
        0,
    )


def test_stage_and_segment_move_with_as_of(ledger: Ledger) -> None:
    """Earlier in business time, fewer purchases count: bob was only at risk, erin had not
    bought yet, carol was not a member."""
    got = members_of(ledger, "--as-of", "2025-05-01")
    assert list(got) == ["alice", "bob", "dan", "erin", "frank"]
    assert {m: (r["lifecycle_stage"], r["rfm_segment"]) for m, r in got.items()} == {
        "alice": ("ACTIVE", "CHAMPIONS"), "bob": ("AT_RISK", "NEEDS_ATTENTION"),
        "dan": ("DORMANT", ""), "erin": ("DORMANT", ""), "frank": ("DORMANT", ""),
    }  # fmt: skip
    assert (got["alice"]["purchase_cycle_days"], got["alice"]["recency_days"]) == (14, 16)
    at_risk, _ = insights(ledger, "--stage", "at_risk", "--as-of", "2025-05-01")
    assert [m["member_id"] for m in at_risk["members"]] == ["bob"]
    assert at_risk["total"] == 1


def test_selections_and_their_control_totals(ledger: Ledger) -> None:
    def chosen(*args: str) -> tuple[list[str], int]:
        got, _ = insights(ledger, "--as-of", AS_OF, *args)
        return [m["member_id"] for m in got["members"]], got["total"]

    assert chosen("--segment", "champions") == (["alice", "erin"], 2)
    assert chosen("--segment", "HIBERNATING") == (["bob"], 1)
    assert chosen("--stage", "dormant") == (["bob", "dan", "frank"], 3)
    assert chosen("--stage", "new") == (["carol"], 1)
    assert chosen("--segment", "lost") == ([], 0)
    # The "points to go" nudge: erin is at the top tier and never matches.
    assert chosen("--points-to-next-tier-at-most", "40") == (["alice"], 1)
    assert chosen("--points-to-next-tier-at-most", "250") == (["alice", "bob"], 2)
    assert chosen("--stage", "dormant", "--points-to-next-tier-at-most", "250") == (["bob"], 1)
    # frank's anniversary is 07-02: two days after as_of's day, not one.
    assert chosen("--anniversary-within-days", "1") == ([], 0)
    assert chosen("--anniversary-within-days", "2") == (["frank"], 1)


def test_csv_is_the_list_and_the_total_is_on_stderr(ledger: Ledger) -> None:
    out, stderr = insights(ledger, "--as-of", AS_OF, "--stage", "dormant", fmt="csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][:4] == ["member_id", "lifecycle_stage", "rfm_segment", "recency_score"]
    assert "points_to_next_tier" in rows[0]
    assert [r[0] for r in rows[1:]] == ["bob", "dan", "frank"]
    header = rows[0]
    bob = dict(zip(header, rows[1], strict=True))
    assert (bob["lifecycle_stage"], bob["rfm_segment"], bob["lifetime_value_minor"]) == (
        "DORMANT",
        "HIBERNATING",
        "5000",
    )
    position = insights(ledger, "--as-of", AS_OF)[0]["position"]
    assert position > 0
    assert stderr.splitlines() == [
        f"ledger report insights: 3 members (as of {AS_OF}, insights position {position})"
    ]
    table, stderr = insights(ledger, "--as-of", AS_OF, "--segment", "champions", fmt="table")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["member_id", "lifecycle_stage", "rfm_segment"]
    assert [line.split()[0] for line in lines[1:]] == ["alice", "erin"]
    assert "2 members" in stderr


def test_summary(ledger: Ledger) -> None:
    got, stderr = insights(ledger, "--summary", "--as-of", AS_OF)
    assert stderr == ""
    assert (got["members"], got["purchasing_members"], got["revenue_minor"]) == (6, 3, 91_000)
    assert [(s["stage"], s["members"]) for s in got["stages"]] == [
        ("NEW", 1), ("ACTIVE", 2), ("AT_RISK", 0), ("DORMANT", 3), ("LOST", 0),
    ]  # fmt: skip
    segments = {s["segment"]: s["members"] for s in got["segments"] if s["members"]}
    assert segments == {"CHAMPIONS": 2, "HIBERNATING": 1}
    # The top 20 % of three purchasing members is ceil(0.6) = one: erin, 600 of 910 =
    # 659,340.66 ppm, rounded half up.
    assert got["top_20_percent_revenue_share_ppm"] == 659_341
    assert got["repeat_purchase_rate_ppm"] == 666_667  # alice and erin of three: 666,666.67
    # Nothing redeemed of the points earned; no stored value loaded (0 of 0 is 0).
    assert (got["points_redemption_rate_ppm"], got["stored_value_usage_rate_ppm"]) == (0, 0)
    assert (got["as_of"], got["position"] > 0) == (AS_OF, True)
    # s1: alice's 100 + 40 - 20 refunded + 80 (dan's 30 refunded whole no longer counts).
    stores = [
        (s["store_id"], s["net_purchases_minor"], s["purchases"]) for s in got["revenue_by_store"]
    ]
    assert stores == [("s1", 20_000, 3), ("s2", 11_000, 2), ("s3", 60_000, 3)]
    out, _ = insights(ledger, "--summary", "--as-of", AS_OF, fmt="csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["figure", "key", "value", "purchases"]
    assert ["members", "", "6", ""] in rows
    assert ["store_revenue_minor", "s3", "60000", "3"] in rows


def test_the_command_answers_as_the_service(ledger: Ledger) -> None:
    """Every member's figures, the control total and the programme's figures, as
    InsightsService gave them over gRPC (walked in pages of two) for the same as_of."""
    got, _ = insights(ledger, "--as-of", AS_OF)
    mine = [
        tuple(m[c] for c in (
            "member_id", "lifecycle_stage", "rfm_segment", "recency_score", "frequency_score",
            "monetary_score", "recency_days", "frequency", "monetary_minor",
            "average_order_minor", "purchase_cycle_days", "lifetime_value_minor",
            "lifetime_purchases", "favourite_store_id", "next_tier_code", "points_to_next_tier",
        ))
        for m in got["members"]
    ]  # fmt: skip
    service = [(*row[:2], "" if row[2] == "UNSPECIFIED" else row[2], *row[3:])
               for row in ledger.service_members]  # fmt: skip
    assert mine == service
    assert len(mine) == got["total"] == ledger.service_total == 6
    figures, _ = insights(ledger, "--summary", "--as-of", AS_OF)
    assert (
        figures["members"],
        figures["purchasing_members"],
        tuple(("LIFECYCLE_STAGE_" + s["stage"], s["members"]) for s in figures["stages"]),
        tuple(("RFM_SEGMENT_" + s["segment"], s["members"]) for s in figures["segments"]),
        figures["revenue_minor"],
        figures["top_20_percent_revenue_share_ppm"],
        figures["repeat_purchase_rate_ppm"],
        tuple(
            (s["store_id"], s["net_purchases_minor"], s["purchases"])
            for s in figures["revenue_by_store"]
        ),
    ) == ledger.service_program


# ---------------------------------------------------------------------- mistakes


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--segment", "whales"], "--segment: 'whales' is not one of champions"),
        (["--stage", "sleepy"], "--stage: 'sleepy' is not one of new, active"),
        (["--stage", "new", "--segment", "lost"], "--segment: select by --stage or by --segment"),
        (["--points-to-next-tier-at-most", "-1"], "--points-to-next-tier-at-most: must be a whole"),
        (["--points-to-next-tier-at-most", str(10**15 + 1)], f"0 to {10**15}, not"),
        (["--anniversary-within-days", "367"], "--anniversary-within-days: must be a whole"),
        (["--as-of", "tomorrow"], "--as-of: 'tomorrow' is not a date"),
        (["--as-of", "2999-01-01"], "--as-of: must not be in the future"),
        (["--summary", "--stage", "new"], "--summary: is the whole programme's figures: drop"),
        (["--program", "nosuch"], "program nosuch does not exist"),
        (["--program", "no such"], "--program: must be 1..64 characters"),
    ],
)
def test_mistakes_are_one_line(ledger: Ledger, args: list[str], expected: str) -> None:
    program = [] if "--program" in args else ["--program", PROGRAM]
    result = run_ledger("report", "insights", "--database", ledger.url, *program, *args)
    one_clear_line(result, "ledger report insights", expected)
    assert result.returncode == 2


def test_a_missing_database_is_one_line(tmp_path: Path) -> None:
    result = run_ledger(
        "report", "insights", "--database", f"sqlite:///{tmp_path / 'none.db'}", "--program", "p"
    )
    one_clear_line(result, "ledger report insights", "no database at")
    assert result.returncode == 2
