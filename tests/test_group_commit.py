"""Group commit against the application directly: conflicts fall back without failing an
innocent command, and a crash before the commit leaves nothing half-applied."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from ledger.application import commands as c
from ledger.application.group_commit import AccountCache
from ledger.application.results import ExpiryResult
from ledger.application.views import Outcome
from ledger.audit.verify import verify
from ledger.domain import errors
from ledger.domain.program import ProgramSettings
from ledger.runtime import Tally
from tests.support import open_tally


@pytest.fixture(params=["sqlite", "postgres"])
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    with open_tally(request.param) as t:
        yield t


def _setup(tally: Tally, members: list[str]) -> None:
    app = tally.app
    app.create_program(
        c.CreateProgram(program_id="p", request_id="p", settings=ProgramSettings("P", "EUR"))
    )
    for m in members:
        app.execute(c.EnrollMember(program_id="p", member_id=m, request_id=f"enroll-{m}"))


def earn(member: str, points: int, rid: str) -> c.EarnPoints:
    return c.EarnPoints(
        program_id="p", member_id=member, points=points, request_id=rid, store_id="s"
    )


def redeem(member: str, points: int, rid: str) -> c.RedeemPoints:
    return c.RedeemPoints(
        program_id="p", member_id=member, points=points, request_id=rid, store_id="s"
    )


def test_a_group_that_conflicts_falls_back_and_every_command_lands(tally: Tally) -> None:
    _setup(tally, ["a", "b"])
    app, cache = tally.app, AccountCache(100)
    first = app.execute_group([earn("a", 100, "a1"), earn("b", 100, "b1")], cache)
    assert all(isinstance(r, Outcome) for r in first)
    # Another writer (as another process would) moves "a" on: the cached "a" is now stale.
    app.execute(redeem("a", 40, "elsewhere"))

    results = app.execute_group(
        [redeem("a", 50, "a2"), earn("b", 5, "b2"), redeem("a", 20, "a3"), earn("a", 1, "a4")],
        cache,
    )

    assert [type(r).__name__ for r in results] == [
        "Outcome",
        "Outcome",
        "InsufficientPoints",
        "Outcome",
    ]
    outcomes: list[Any] = results
    assert outcomes[0].account.points_available == 10
    assert outcomes[3].account.points_available == 11
    assert app.get_account("p", "a").available == 11
    assert app.get_account("p", "b").available == 105


def test_a_crash_before_the_commit_acknowledges_nothing_and_applies_nothing(
    tally: Tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(tally, ["a"])
    app, cache = tally.app, AccountCache(100)
    app.execute_group([earn("a", 100, "a1")], cache)
    version = app.get_account("p", "a").version

    def crash(*_: Any, **__: Any) -> Any:
        raise ConnectionError("the database went away mid-group")

    with monkeypatch.context() as patch:
        patch.setattr(app, "save", crash)
        with pytest.raises(ConnectionError):
            app.execute_group([redeem("a", 30, "a2"), earn("a", 5, "a3")], cache)

    assert "a" not in {acc.member_id for acc in cache.values()}  # the stale copy is dropped
    account = app.get_account("p", "a")
    assert (account.available, account.version) == (100, version)
    # Retried after the crash, the same requests apply once.
    results = app.execute_group([redeem("a", 30, "a2"), earn("a", 5, "a3")], cache)
    outcomes: list[Any] = results
    assert outcomes[1].account.points_available == 75
    again = app.execute_group([redeem("a", 30, "a2")], cache)
    assert again[0] == results[0]


def test_duplicates_within_one_group_get_the_same_answer(tally: Tally) -> None:
    _setup(tally, ["a"])
    app, cache = tally.app, AccountCache(100)
    results = app.execute_group([earn("a", 10, "x"), earn("a", 10, "x"), earn("a", 11, "x")], cache)
    assert results[0] == results[1]
    assert isinstance(results[2], errors.IdempotencyKeyReused)
    assert app.get_account("p", "a").available == 10


def enroll(member: str, rid: str) -> c.EnrollMember:
    return c.EnrollMember(program_id="p", member_id=member, request_id=rid)


def test_a_group_can_enroll_members_and_use_them_at_once(tally: Tally) -> None:
    _setup(tally, ["old"])
    app, cache = tally.app, AccountCache(100)
    group = [
        enroll("new", "n1"),
        earn("new", 30, "n2"),
        enroll("new", "n3"),  # enrolled a moment ago, in this very group
        enroll("old", "n4"),  # enrolled before
        redeem("new", 10, "n5"),
    ]

    results = app.execute_group(group, cache)

    assert [type(r).__name__ for r in results] == [
        "Outcome",
        "Outcome",
        "MemberAlreadyEnrolled",
        "MemberAlreadyEnrolled",
        "Outcome",
    ]
    outcomes: list[Any] = results
    assert outcomes[4].account.points_available == 20
    assert app.get_account("p", "new").available == 20
    # The same group again, on a fresh writer: every applied command replays its answer.
    again = app.execute_group(group, AccountCache(100))
    assert [type(r).__name__ for r in again] == [type(r).__name__ for r in results]
    for before, after in zip(results, again, strict=True):
        if isinstance(before, Outcome):
            assert after == before
    assert app.get_account("p", "new").available == 20


def test_an_enrolment_racing_another_writer_is_answered_as_already_enrolled(
    tally: Tally,
) -> None:
    _setup(tally, [])
    app, cache = tally.app, AccountCache(100)
    app.execute_group([earn("x", 1, "warm")], cache)  # "x" not enrolled: refused, not cached
    # Another process enrols "x" after our group looked (simulated: we look, then it saves).
    real = app.enroll
    raced: list[bool] = []

    def enroll_after_the_other(cmd: c.EnrollMember, program: Any) -> Any:
        if not raced:
            raced.append(True)
            app.execute(enroll("x", "other-process"))
        return real(cmd, program)

    app.enroll = enroll_after_the_other  # type: ignore[method-assign]
    results = app.execute_group([enroll("x", "mine"), earn("x", 5, "e")], cache)

    assert isinstance(results[0], errors.MemberAlreadyEnrolled)
    assert isinstance(results[1], Outcome)
    assert app.get_account("p", "x").available == 5


def test_accounts_a_writer_has_not_cached_are_read_together_and_decide_correctly(
    tally: Tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(tally, ["a", "b", "c"])
    app = tally.app
    app.execute_group([earn(m, 50, f"{m}-1") for m in "abc"], AccountCache(100))
    app.execute_group([redeem("b", 20, "b-2")], AccountCache(100))
    one_by_one: list[str] = []
    monkeypatch.setattr(app, "get_account", lambda p, m: one_by_one.append(m))

    results = app.execute_group(
        [redeem("a", 50, "a-3"), redeem("b", 31, "b-3"), earn("c", 1, "c-3")], AccountCache(100)
    )

    assert one_by_one == []  # all three came from the one query
    assert [type(r).__name__ for r in results] == ["Outcome", "InsufficientPoints", "Outcome"]
    outcomes: list[Any] = results
    assert outcomes[0].account.points_available == 0
    assert outcomes[2].account.points_available == 51


def test_a_long_cold_load_leaves_a_snapshot_and_the_next_load_starts_from_it(
    tally: Tally,
) -> None:
    from eventsourcing.application import project_aggregate

    from ledger.application.service import SNAPSHOT_AFTER_REPLAYING
    from ledger.domain.ids import account_id_key
    from ledger.infrastructure.eventlog import stored_events_of
    from tests.unit.test_account_model import state_of

    _setup(tally, ["long"])
    app, cache = tally.app, AccountCache(100)
    for n in range(0, SNAPSHOT_AFTER_REPLAYING + 30, 50):
        group: list[c.AccountCommand] = [earn("long", 1 + k % 3, f"e{n + k}") for k in range(50)]
        group[7] = redeem("long", 2, f"r{n}")
        app.execute_group(group, cache)
    account_id = account_id_key("p", "long")
    version = cache[account_id].version
    assert app.snapshots is not None
    assert list(app.snapshots.get(account_id)) == []  # the write path never snapshots

    first = app.get_account("p", "long")  # a cold load: replays everything, then snapshots
    assert [s.originator_version for s in app.snapshots.get(account_id)] == [version]
    app.execute_group([earn("long", 5, "after")], cache)
    stored = stored_events_of(tally.database, [account_id])[account_id]
    assert [e.originator_version for e in stored] == [version, version + 1]

    again = app.load_accounts([account_id])[account_id]
    everything = project_aggregate(None, list(app.events.get(account_id)))
    assert isinstance(everything, type(again))
    assert state_of(again) == state_of(everything) == state_of(cache[account_id])
    assert first.version == version


def test_a_command_whose_code_raises_costs_only_itself(
    tally: Tally, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: any exception that is not a refusal failed every command of the group."""
    from ledger.application import handlers

    _setup(tally, ["a", "b", "c"])
    app, cache = tally.app, AccountCache(100)
    app.execute_group([earn(m, 50, f"{m}-1") for m in "abc"], cache)
    real = handlers.handler_for(c.RedeemPoints)

    def buggy(cmd: c.RedeemPoints, ctx: handlers.CommandContext) -> Any:
        result = real(cmd, ctx)  # the account has its events by now
        if cmd.member_id == "b":
            raise AssertionError("a bug in the redeem path")
        return result

    monkeypatch.setitem(handlers._HANDLERS, c.RedeemPoints, buggy)
    group = [
        redeem("a", 10, "a-2"),
        redeem("b", 10, "b-2"),
        earn("b", 1, "b-3"),
        earn("c", 5, "c-2"),
    ]
    results = app.execute_group(group, cache)

    assert [type(r).__name__ for r in results] == ["Outcome", "InternalFault", "Outcome", "Outcome"]
    assert "a bug in the redeem path" in caplog.text
    assert [app.get_account("p", m).available for m in "abc"] == [40, 51, 55]
    # The writer's cache holds what the database holds, not b's half-made redemption.
    assert cache[app.get_account("p", "b").id].available == 51
    atomic = app.execute_atomic([redeem("a", 1, "a-3"), redeem("b", 1, "b-4")])
    assert [type(r).__name__ for r in atomic] == ["AtomicBatchAborted", "InternalFault"]
    assert app.get_account("p", "a").available == 40


def test_every_account_write_goes_through_the_owning_writer(
    tally: Tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enrolments, atomic batches, RunExpiry and both sweeps keep the writer's cached copy
    current: the commands after them never conflict with them."""
    from datetime import UTC, datetime, timedelta

    conflicts: list[int] = []
    app = tally.app
    real = app._after_conflict

    def counted(*args: Any) -> Any:
        conflicts.append(len(args[0]))
        return real(*args)

    monkeypatch.setattr(app, "_after_conflict", counted)
    now = [datetime.now(UTC)]
    monkeypatch.setattr(app, "clock", lambda: now[0])
    tally.start(sweep=False)  # the writers and the projections; the test sweeps by hand
    _setup(tally, [])

    def one(cmd: c.AccountCommand) -> Any:
        return tally.writer.submit(cmd).result(timeout=30)

    one(c.EnrollMember(program_id="p", member_id="w", request_id="enroll-w"))
    later = now[0] + timedelta(hours=2)
    one(c.EarnPoints(program_id="p", member_id="w", points=30, request_id="e1", expires_at=later))
    one(earn("w", 100, "e2"))
    answers = tally.writer.submit_atomic([earn("w", 1, "e3"), redeem("w", 2, "r1")]).result(30)
    assert all(isinstance(a, Outcome) for a in answers)
    one(c.HoldPoints(program_id="p", member_id="w", points=5, ttl_seconds=60, request_id="h1"))
    tally.points.wait_for(one(earn("w", 1, "e4")).position, timeout=30)
    now[0] += timedelta(minutes=2)
    assert tally.sweeper.sweep_holds() == 1
    one(earn("w", 1, "e5"))
    now[0] = later
    expiry = app.run_expiry(
        c.RunExpiry(program_id="p", request_id="x1"), lambda _: ["w"], tally.execute
    )
    assert isinstance(expiry.result, ExpiryResult)
    assert expiry.result.expired_points == 28  # e1's 30 less the 2 redeemed
    assert one(earn("w", 1, "e6")).account.points_available == 100 + 1 + 1 + 1 + 1
    tally.points.wait_for(expiry.position, timeout=30)
    assert tally.sweeper.sweep_lots() == 0

    assert conflicts == []


def test_a_caller_that_gave_up_does_not_stop_the_writer(
    tally: Tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a cancelled RPC cancels its future; answering it raised InvalidStateError
    in the writer thread, which ended it, and every later write failed."""
    import threading

    _setup(tally, ["a"])
    app = tally.app
    tally.writer.start()
    gate = threading.Event()
    real = app.execute_group

    def slow_first(*args: Any, **kwargs: Any) -> Any:
        gate.wait(timeout=30)
        return real(*args, **kwargs)

    monkeypatch.setattr(app, "execute_group", slow_first)
    busy = tally.writer.submit(earn("a", 1, "busy"))
    abandoned = tally.writer.submit(earn("a", 10, "abandoned"))
    abandoned_atomic = tally.writer.submit_atomic([earn("a", 100, "abandoned-atomic")])
    assert abandoned.cancel()
    assert abandoned_atomic.cancel()
    gate.set()
    busy.result(timeout=30)

    after = tally.writer.submit(earn("a", 1000, "after")).result(timeout=30)
    assert isinstance(after, Outcome)
    assert after.account is not None
    # The abandoned commands were decided and committed all the same: only their answers
    # had nobody to go to (a retry with the same request_id gets them).
    assert after.account.points_available == 1 + 10 + 100 + 1000
    assert all(thread.is_alive() for thread in tally.writer.threads)


def test_a_refusal_on_an_account_another_process_wrote_is_decided_again(tally: Tally) -> None:
    """Regression: a refusal saves nothing, so no conflict showed that the writer's cached
    account was stale (`--processes`): Redeem 50 was refused with 0 available while the
    database had 100, until the account left the cache."""
    _setup(tally, [])
    other = Tally.from_url(tally.config.display, apply_migrations=False)
    try:
        mine, theirs = AccountCache(100), AccountCache(100)
        enrolled = tally.app.execute_group(
            [c.EnrollMember(program_id="p", member_id="a", request_id="ea")], mine
        )
        assert isinstance(enrolled[0], Outcome)
        earned = other.app.execute_group([earn("a", 100, "e1")], theirs)[0]  # "another process"
        assert isinstance(earned, Outcome)

        redeemed = tally.app.execute_group([redeem("a", 50, "r1")], mine)[0]

        assert isinstance(redeemed, Outcome), redeemed
        assert redeemed.account is not None
        assert redeemed.account.points_available == 50
        assert tally.app.get_account("p", "a").available == 50
    finally:
        other.close()


def test_one_account_that_cannot_be_loaded_fails_only_its_command(
    tally: Tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a load that raised (say, an unreadable snapshot) failed every command
    grouped with it."""
    _setup(tally, ["a", "b", "c"])
    app = tally.app
    broken = app.get_account("p", "b").id
    real = app.load_accounts

    def load(account_ids: list[Any]) -> Any:
        if broken in account_ids:
            raise AttributeError("'MemberAccount' object has no attribute 'debt_of'")
        return real(account_ids)

    monkeypatch.setattr(app, "load_accounts", load)
    results = app.execute_group([earn(m, 5, f"{m}-5") for m in "abc"], AccountCache(100))

    assert [type(r).__name__ for r in results] == ["Outcome", "InternalFault", "Outcome"]
    monkeypatch.setattr(app, "load_accounts", real)
    assert [app.get_account("p", m).available for m in "abc"] == [5, 0, 5]


def test_a_retry_behind_a_conflicting_copy_in_one_group_is_still_a_retry(tally: Tally) -> None:
    """Regression: [Earn 99 under R1, Earn 10 under R1] with R1 recorded as Earn 10 answered
    both IDEMPOTENCY_KEY_REUSED; the second is a retry of R1."""
    _setup(tally, ["a"])
    app = tally.app
    first = app.execute_group([earn("a", 10, "R1")], AccountCache(100))[0]
    assert isinstance(first, Outcome)

    results = app.execute_group([earn("a", 99, "R1"), earn("a", 10, "R1")], AccountCache(100))

    assert isinstance(results[0], errors.IdempotencyKeyReused)
    assert isinstance(results[1], Outcome)
    assert results[1].replayed
    assert (results[1].transaction_id, results[1].position) == (
        first.transaction_id,
        first.position,
    )


def test_housekeeping_commands_read_their_accounts_together(
    tally: Tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    _setup(tally, list("abcde"))
    app = tally.app
    loads: list[int] = []
    real = app.load_accounts

    def counted(account_ids: list[Any]) -> Any:
        loads.append(len(account_ids))
        return real(account_ids)

    monkeypatch.setattr(app, "load_accounts", counted)
    now = datetime.now(UTC)
    app.execute_group(
        [
            c.ExpireLots(program_id="p", member_id=m, as_of=now, run_transaction_id="run")
            for m in "abcde"
        ],
        AccountCache(100),
    )
    assert loads == [5]


def test_the_command_path_leaves_no_cyclic_garbage(tally: Tally) -> None:
    """The server freezes what survives (decision 33) and never thaws it: a reference cycle
    still in flight at a freeze would be kept for ever. So commands through the writer, with
    the read models catching up, must leave nothing that only the cyclic collector frees:
    accepted, refused, replayed, a request_id reused for another command."""
    _setup(tally, [f"m{i}" for i in range(20)])
    tally.start(sweep=False)

    def workload(tag: str) -> None:
        commands: list[c.AccountCommand] = []
        for i in range(20):
            commands += [earn(f"m{i}", 10, f"{tag}e{i}"), redeem(f"m{i}", 3, f"{tag}r{i}")]
            commands += [earn(f"nobody{i}", 1, f"{tag}n{i}"), redeem(f"m{i}", 10**9, f"{tag}x{i}")]
        answers = tally.execute(commands)
        assert any(isinstance(a, errors.MemberNotFound) for a in answers)
        assert any(isinstance(a, errors.InsufficientPoints) for a in answers)
        again = tally.execute([*commands[:10], earn("m0", 999, f"{tag}r0")])  # replays, a reuse
        assert isinstance(again[-1], errors.DomainError)
        position = tally.app.recorder.max_notification_id() or 0
        assert all(r.wait_for(position, timeout=30) for r in tally.projections.values())

    workload("warm-")  # first-use caches, lazily built classes and the like
    gc.collect()
    gc.disable()
    try:
        for round_ in range(3):
            workload(f"{round_}-")
        gc.set_debug(gc.DEBUG_SAVEALL)
        found = gc.collect()
        kinds = Counter(type(o).__qualname__ for o in gc.garbage).most_common(10)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert found == 0, kinds


def test_a_refusal_is_answered_without_the_group_it_was_raised_in(tally: Tally) -> None:
    """A refusal's traceback holds the group's frames and the group holds the refusal: a
    cycle that only a full collection frees, and with the server's frozen generations
    (decision 33) one that leaked about 1 KB per refused command."""
    _setup(tally, ["a"])
    app, cache = tally.app, AccountCache(100)
    refused = app.execute_group(
        [earn("nobody", 1, "n1"), redeem("a", 10, "r1"), earn("a", 1, "ok")], cache
    )
    assert isinstance(refused[0], errors.MemberNotFound)
    assert isinstance(refused[1], errors.InsufficientPoints)
    assert isinstance(refused[2], Outcome)
    for refusal in refused[:2]:
        assert isinstance(refusal, errors.DomainError)
        assert refusal.__traceback__ is None
        assert refusal.__context__ is None


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_chain_heads_are_kept_for_the_cached_accounts_only_and_still_chain(backend: str) -> None:
    """The recorder keeps a head for as many accounts as the writers cache (decision 35): an
    account past both has its head looked up in the save, and its chain still verifies."""
    with open_tally(backend, cache_size=3) as tally:
        heads = tally.app.recorder.heads  # type: ignore[attr-defined]
        assert heads.capacity == 3
        _setup(tally, [f"m{i}" for i in range(10)])
        tally.start(sweep=False)
        for round_ in range(3):  # each round meets every account evicted from both
            answers = tally.execute([earn(f"m{i}", 1, f"{round_}-{i}") for i in range(10)])
            assert all(isinstance(a, Outcome) for a in answers)
        assert len(heads._heads) <= 3
        report = verify(tally.database)
        assert report.ok, report.detail
        assert tally.app.get_account("p", "m9").available == 3
