"""AuditService over the wire: the log streamed in order (and followed live while writers
run), one account's history, chain verification and checkpoints, and bad input refused.

The session's servers are shared, so every stream is filtered by a fresh program of the
test's own, and starts at the log head seen before the test wrote anything."""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import grpc
import pytest

from ledger.v1 import audit_pb2 as apb
from ledger.v1 import audit_pb2_grpc as apb_grpc
from ledger.v1 import ledger_pb2 as pb
from tests.support import Client, Refusal, ServerThread, log_head, new_id, refused

Event = apb.StreamEventsResponse
HEX64 = re.compile(r"[0-9a-f]{64}")
GENESIS = "0" * 64
FOLLOW_TIMEOUT_SECONDS = 60.0
WRITER_THREADS = 4
EARNS_PER_WRITER = 50
CAUGHT_UP = 600  # earns written before a following stream starts


@pytest.fixture
def audit(client: Client) -> Iterator[apb_grpc.AuditServiceStub]:
    """The AuditService on a channel of its own to the same server as `client`."""
    channel = grpc.insecure_channel(client.target)
    yield apb_grpc.AuditServiceStub(channel)
    channel.close()


# ---------------------------------------------------------------------- helpers


def create_program(client: Client) -> pb.CreateProgramResponse:
    response: pb.CreateProgramResponse = client.stub.CreateProgram(
        pb.CreateProgramRequest(
            program_id=new_id("prog"),
            display_name="Audit programme",
            currency="EUR",
            request_id=new_id("req"),
        ),
        timeout=30,
    )
    return response


def enroll(client: Client, program: str, member: str | None = None) -> pb.EnrollMemberResponse:
    response: pb.EnrollMemberResponse = client.stub.EnrollMember(
        pb.EnrollMemberRequest(
            program_id=program, member_id=member or new_id("mem"), request_id=new_id("req")
        ),
        timeout=30,
    )
    return response


def earn_in_batch(client: Client, program: str, members: list[str]) -> set[str]:
    """One earn of a point for each of `members` (repeats allowed), in one ExecuteBatch."""
    response: pb.ExecuteBatchResponse = client.stub.ExecuteBatch(
        pb.ExecuteBatchRequest(
            program_id=program,
            commands=[
                pb.BatchCommand(
                    earn=pb.EarnRequest(
                        member_id=m, points=1, store_id="store-1", request_id=new_id("req")
                    )
                )
                for m in members
            ],
        ),
        timeout=120,
    )
    assert all(r.HasField("earn") for r in response.results), response
    return {r.earn.transaction_id for r in response.results}


def stream(
    audit: apb_grpc.AuditServiceStub, from_position: int = 0, program_id: str = ""
) -> list[Event]:
    request = apb.StreamEventsRequest(from_position=from_position, program_id=program_id)
    return list(audit.StreamEvents(request, timeout=60))


def positions(events: list[Event]) -> list[int]:
    return [e.position for e in events]


def assert_strictly_increasing(events: list[Event]) -> None:
    at = positions(events)
    assert all(a < b for a, b in pairwise(at)), at


def assert_well_formed(event: Event) -> None:
    assert event.position > 0, event
    assert HEX64.fullmatch(event.hash), event
    assert HEX64.fullmatch(event.prev_hash), event
    assert event.version >= 1, event
    assert event.aggregate_id, event
    assert event.HasField("recorded_at"), event
    assert event.HasField("occurred_at"), event
    payload = json.loads(event.payload_json)
    assert isinstance(payload, dict), event
    if event.version == 1:
        assert event.prev_hash == GENESIS, event
        assert payload.get("program_id") == event.program_id, event


def by_aggregate(events: list[Event]) -> dict[str, list[Event]]:
    grouped: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        grouped[event.aggregate_id].append(event)
    return dict(grouped)


def assert_chained(events: list[Event]) -> None:
    """One aggregate's complete history: versions 1, 2, 3..., each linked to the one before."""
    assert [e.version for e in events] == list(range(1, len(events) + 1)), [
        (e.position, e.version) for e in events
    ]
    assert events[0].prev_hash == GENESIS
    for before, after in pairwise(events):
        assert after.prev_hash == before.hash, (before, after)
        assert after.position > before.position
    assert len({e.hash for e in events}) == len(events), "every event has a hash of its own"


def assert_invalid(problem: Refusal, *fields: str) -> None:
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT, problem
    assert set(problem.fields) == set(fields), problem
    assert all(problem.fields[f] for f in fields), "every violation is described"


def assert_not_found(problem: Refusal, reason: str) -> None:
    assert (problem.code, problem.reason) == (grpc.StatusCode.NOT_FOUND, reason), problem


# ---------------------------------------------------------------------- StreamEvents


def test_stream_returns_the_programs_events_in_order_complete_and_chained(
    client: Client, audit: apb_grpc.AuditServiceStub, server: ServerThread
) -> None:
    start = log_head(server)
    created = create_program(client)
    program = created.program.program_id
    first = enroll(client, program)
    second = enroll(client, program)
    member, other = first.account.member_id, second.account.member_id
    earned = client.earn(program, member, 100)
    other_earned = client.earn(program, other, 7)
    redeemed = client.redeem(program, member, 30)
    earned_again = client.earn(program, member, 5)
    writes: list[tuple[str, str, str, int]] = [
        # (member, event type, transaction id, position) of every write, in order
        ("", "ProgramCreated", created.transaction_id, created.position),
        (member, "MemberEnrolled", first.transaction_id, first.position),
        (other, "MemberEnrolled", second.transaction_id, second.position),
        (member, "PointsEarned", earned.transaction_id, earned.position),
        (other, "PointsEarned", other_earned.transaction_id, other_earned.position),
        (member, "PointsRedeemed", redeemed.transaction_id, redeemed.position),
        (member, "PointsEarned", earned_again.transaction_id, earned_again.position),
    ]

    events = stream(audit, start, program)

    assert [(e.member_id, e.event_type, e.transaction_id, e.position) for e in events] == writes
    assert_strictly_increasing(events)
    assert all(e.position > start for e in events)
    assert {e.program_id for e in events} == {program}
    for event in events:
        assert_well_formed(event)
    accounts = by_aggregate(events)
    assert len(accounts) == 3  # the programme and its two members
    for history in accounts.values():
        assert_chained(history)
    mine = [e for e in events if e.member_id == member]
    assert len(accounts[mine[0].aggregate_id]) == earned_again.account.version == 4
    assert len({e.aggregate_id for e in mine}) == 1

    # from_position is exclusive; past the program's last event there is nothing of it.
    assert stream(audit, created.position, program) == events[1:]
    assert stream(audit, redeemed.position, program) == events[-1:]
    assert stream(audit, earned_again.position, program) == []
    # From the very beginning of the log, the same events.
    assert stream(audit, 0, program) == events


def test_program_filter_excludes_other_programs(
    client: Client, audit: apb_grpc.AuditServiceStub, server: ServerThread
) -> None:
    start = log_head(server)
    a = create_program(client).program.program_id
    b = create_program(client).program.program_id
    shared = new_id("mem")  # the same member id in both programmes: two accounts
    mine = [enroll(client, a, shared).transaction_id]
    theirs = [enroll(client, b, shared).transaction_id]
    for points in (10, 20, 30):
        mine.append(client.earn(a, shared, points).transaction_id)
        theirs.append(client.earn(b, shared, points).transaction_id)

    everything = stream(audit, start)
    of_a = stream(audit, start, a)
    of_b = stream(audit, start, b)

    assert {e.program_id for e in of_a} == {a}
    assert {e.program_id for e in of_b} == {b}
    assert [e.transaction_id for e in of_a if e.member_id] == mine
    assert [e.transaction_id for e in of_b if e.member_id] == theirs
    assert not {e.aggregate_id for e in of_a} & {e.aggregate_id for e in of_b}
    assert of_a == [e for e in everything if e.program_id == a]
    assert of_b == [e for e in everything if e.program_id == b]
    assert_strictly_increasing(everything)


def test_follow_delivers_every_event_once_across_catch_up_and_live(
    client: Client, audit: apb_grpc.AuditServiceStub, server: ServerThread
) -> None:
    start = log_head(server)
    created = create_program(client)
    program = created.program.program_id
    elsewhere = create_program(client).program.program_id
    outsider = enroll(client, elsewhere).account.member_id
    enrolled = [enroll(client, program) for _ in range(WRITER_THREADS)]
    members = [e.account.member_id for e in enrolled]
    # Events already in the log when the stream starts: it must catch up on these, over
    # more than one of the server's reads (500 events each).
    earned = earn_in_batch(client, program, members * (CAUGHT_UP // WRITER_THREADS))
    # Every transaction of the programme, whatever its kind: these must all stream, once.
    written = {created.transaction_id} | {e.transaction_id for e in enrolled} | earned

    received: list[Event] = []
    failures: list[grpc.RpcError] = []
    arrived = threading.Condition()
    ended = threading.Event()
    call = audit.StreamEvents(
        apb.StreamEventsRequest(from_position=start, program_id=program, follow=True)
    )

    def collect() -> None:
        try:
            for event in call:
                with arrived:
                    received.append(event)
                    arrived.notify_all()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                failures.append(e)
        finally:
            with arrived:
                ended.set()
                arrived.notify_all()

    def write(member: str) -> list[str]:
        return [client.earn(program, member, 2).transaction_id for _ in range(EARNS_PER_WRITER)]

    def write_elsewhere() -> list[str]:
        return [client.earn(elsewhere, outsider, 3).transaction_id for _ in range(20)]

    def enroll_more() -> list[str]:
        """Other kinds of writes of the programme meanwhile: new accounts, the programme."""
        done = []
        for n in range(10):
            done.append(enroll(client, program).transaction_id)
            renamed: pb.UpdateProgramResponse = client.stub.UpdateProgram(
                pb.UpdateProgramRequest(
                    program_id=program, display_name=f"Renamed {n}", request_id=new_id("req")
                ),
                timeout=30,
            )
            done.append(renamed.transaction_id)
        return done

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        with ThreadPoolExecutor(WRITER_THREADS + 2) as pool:
            writers = [pool.submit(write, m) for m in members]
            others = pool.submit(enroll_more)
            noise = pool.submit(write_elsewhere)
            for writer in writers:
                earned.update(writer.result(timeout=120))
            written |= earned | set(others.result(timeout=120))
            foreign = set(noise.result(timeout=120))
        assert len(earned) == CAUGHT_UP + WRITER_THREADS * EARNS_PER_WRITER
        assert len(written) == 1 + WRITER_THREADS + len(earned) + 20

        def complete() -> bool:
            return ended.is_set() or written <= {e.transaction_id for e in received}

        with arrived:
            arrived.wait_for(complete, timeout=FOLLOW_TIMEOUT_SECONDS)
        assert not failures, failures
        assert not ended.is_set(), "a following stream does not end by itself"
    finally:
        call.cancel()
        reader.join(timeout=10)
    assert not reader.is_alive()
    assert not failures, failures

    with arrived:
        events = list(received)
    streamed = [e.transaction_id for e in events if e.event_type == "PointsEarned"]
    missing = earned - set(streamed)
    assert not missing, f"{len(missing)} earns never streamed"
    assert len(streamed) == len(set(streamed)), "an earn was streamed twice"
    assert set(streamed) == earned
    assert sorted(e.transaction_id for e in events) == sorted(written)
    assert not foreign & {e.transaction_id for e in events}
    assert {e.program_id for e in events} == {program}
    assert all(e.position > start for e in events)
    assert len(set(positions(events))) == len(events), "a position was streamed twice"
    assert_strictly_increasing(events)
    # The programme's whole log, no version skipped: exactly what a plain read gives.
    for history in by_aggregate(events).values():
        assert_chained(history)
    assert events == stream(audit, start, program)[: len(events)]


# ---------------------------------------------------------------------- GetAccountHistory


def test_account_history_is_every_event_in_version_order_chained(
    client: Client, audit: apb_grpc.AuditServiceStub, server: ServerThread
) -> None:
    start = log_head(server)
    program = create_program(client).program.program_id
    elsewhere = create_program(client).program.program_id
    enrolled = enroll(client, program)
    member = enrolled.account.member_id
    enroll(client, elsewhere, member)  # same member id, another programme's account
    neighbour = enroll(client, program).account.member_id
    transactions = [enrolled.transaction_id]
    for points in (50, 60):
        transactions.append(client.earn(program, member, points).transaction_id)
        client.earn(program, neighbour, points)
        client.earn(elsewhere, member, points)
    transactions.append(client.redeem(program, member, 25).transaction_id)
    last = client.earn(program, member, 1)
    transactions.append(last.transaction_id)

    response: apb.GetAccountHistoryResponse = audit.GetAccountHistory(
        apb.GetAccountHistoryRequest(program_id=program, member_id=member), timeout=30
    )
    history = list(response.events)

    assert [e.transaction_id for e in history] == transactions
    assert [e.event_type for e in history] == [
        "MemberEnrolled",
        "PointsEarned",
        "PointsEarned",
        "PointsRedeemed",
        "PointsEarned",
    ]
    assert {(e.program_id, e.member_id) for e in history} == {(program, member)}
    assert len({e.aggregate_id for e in history}) == 1
    assert history[-1].version == last.account.version
    assert history[-1].position == last.position
    for event in history:
        assert_well_formed(event)
    assert_chained(history)
    # The same events, byte for byte, as the log streams them.
    streamed = stream(audit, start, program)
    assert history == [e for e in streamed if e.aggregate_id == history[0].aggregate_id]


def test_account_history_of_unknown_member_or_program_is_not_found(
    client: Client, audit: apb_grpc.AuditServiceStub
) -> None:
    program, member = client.member()

    def history(program_id: str, member_id: str) -> Refusal:
        request = apb.GetAccountHistoryRequest(program_id=program_id, member_id=member_id)
        return refused(lambda: audit.GetAccountHistory(request, timeout=30))

    assert_not_found(history(program, new_id("mem")), "MEMBER_NOT_FOUND")
    assert_not_found(history(new_id("prog"), member), "PROGRAM_NOT_FOUND")
    assert_not_found(history(new_id("prog"), new_id("mem")), "PROGRAM_NOT_FOUND")
    assert_invalid(history(program, ""), "member_id")
    assert_invalid(history("", member), "program_id")
    assert_invalid(history("", ""), "program_id", "member_id")
    assert_invalid(history(program, "bad member!"), "member_id")
    assert_invalid(history("p" * 65, member), "program_id")


# ---------------------------------------------------------------------- VerifyChain, checkpoints


def verify_chain(audit: apb_grpc.AuditServiceStub, program_id: str = "") -> apb.VerifyChainResponse:
    response: apb.VerifyChainResponse = audit.VerifyChain(
        apb.VerifyChainRequest(program_id=program_id), timeout=120
    )
    return response


def assert_healthy(report: apb.VerifyChainResponse) -> None:
    assert report.ok, report
    assert report.first_bad_position == 0, report
    assert not report.findings, report
    assert report.events_checked > 0, report
    assert report.accounts_checked > 0, report
    assert report.detail, report


def test_verify_chain_of_a_healthy_log(
    client: Client, audit: apb_grpc.AuditServiceStub, server: ServerThread
) -> None:
    start = log_head(server)
    program = create_program(client).program.program_id
    members = [enroll(client, program).account.member_id for _ in range(3)]
    for member in members:
        client.earn(program, member, 40)
        client.redeem(program, member, 15)
    events = stream(audit, start, program)
    assert len(events) == 1 + 3 * 3

    whole = verify_chain(audit)
    of_program = verify_chain(audit, program)

    assert_healthy(whole)
    assert_healthy(of_program)
    assert of_program.events_checked == len(events)
    assert of_program.accounts_checked == 4  # the programme and its three members
    assert whole.events_checked >= of_program.events_checked
    assert whole.accounts_checked >= of_program.accounts_checked


def test_checkpoint_commits_to_the_log_and_verifies(
    client: Client, audit: apb_grpc.AuditServiceStub, server: ServerThread
) -> None:
    def checkpoint() -> apb.CreateCheckpointResponse:
        response: apb.CreateCheckpointResponse = audit.CreateCheckpoint(
            apb.CreateCheckpointRequest(), timeout=60
        )
        return response

    checkpoint()  # whatever came before is now covered
    program, member = client.member()
    earned = client.earn(program, member, 10)

    made = checkpoint()

    # Nothing but the background checkpointer (every 1,000 events) could have covered this
    # earn since the checkpoint just written: a checkpoint is due for it.
    assert made.created, made
    assert made.checkpoint_id >= 1
    assert made.position >= earned.position
    assert 0 < made.event_count <= made.position
    assert HEX64.fullmatch(made.digest), made
    assert made.signed == (server.tally.checkpoint_key is not None)

    again = checkpoint()
    if again.created:  # another test's (or a sweep's) writes since: a newer checkpoint
        assert again.checkpoint_id == made.checkpoint_id + 1, again
        assert again.position > made.position, again
        assert again.event_count > made.event_count, again
        assert again.digest != made.digest
    else:
        assert again == apb.CreateCheckpointResponse(created=False)

    report = verify_chain(audit)
    assert_healthy(report)
    assert report.checkpoints_checked >= made.checkpoint_id, report
    assert_healthy(verify_chain(audit, program))


# ---------------------------------------------------------------------- bad input


def stream_call(**fields: Any) -> Callable[[apb_grpc.AuditServiceStub], object]:
    # A short deadline: a following stream that wrongly starts must not hang the test.
    return lambda audit: list(audit.StreamEvents(apb.StreamEventsRequest(**fields), timeout=10))


def verify_call(**fields: Any) -> Callable[[apb_grpc.AuditServiceStub], object]:
    return lambda audit: audit.VerifyChain(apb.VerifyChainRequest(**fields), timeout=30)


BAD_ID = "bad id!"


@pytest.mark.parametrize(
    ("call", "fields"),
    [
        pytest.param(stream_call(from_position=-1), ["from_position"], id="stream-negative"),
        pytest.param(
            stream_call(from_position=-1, follow=True), ["from_position"], id="follow-negative"
        ),
        pytest.param(stream_call(program_id=BAD_ID), ["program_id"], id="stream-program-chars"),
        pytest.param(
            stream_call(program_id=BAD_ID, follow=True), ["program_id"], id="follow-program-chars"
        ),
        pytest.param(stream_call(program_id="p" * 65), ["program_id"], id="stream-program-long"),
        pytest.param(
            stream_call(from_position=-5, program_id=BAD_ID),
            ["from_position", "program_id"],
            id="stream-both",
        ),
        pytest.param(verify_call(program_id=BAD_ID), ["program_id"], id="verify-program-chars"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_fields(
    audit: apb_grpc.AuditServiceStub,
    call: Callable[[apb_grpc.AuditServiceStub], object],
    fields: list[str],
) -> None:
    assert_invalid(refused(lambda: call(audit)), *fields)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda p: stream_call(program_id=p), id="stream"),
        pytest.param(lambda p: stream_call(program_id=p, follow=True), id="follow"),
        pytest.param(lambda p: verify_call(program_id=p), id="verify"),
    ],
)
def test_unknown_program_filter_is_not_found(
    audit: apb_grpc.AuditServiceStub,
    call: Callable[[str], Callable[[apb_grpc.AuditServiceStub], object]],
) -> None:
    unknown = call(new_id("prog"))
    assert_not_found(refused(lambda: unknown(audit)), "PROGRAM_NOT_FOUND")
