"""The shared log reader (projections/log_reader.py): whatever the readers' positions, the
window's size and the order of reads, every read answers exactly what the database holds
from its start (in order, no gap), and readers inside the window decode nothing twice;
the registered projections leave the events they share unchanged."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledger.application import commands as c
from ledger.domain import events as ev
from ledger.domain.errors import DomainError
from ledger.domain.program import PointsConversion, ProgramSettings, TopUpBonusStep
from ledger.runtime import Tally
from projections import REGISTERED
from projections.log_reader import LogReader
from projections.runner import ProjectionRunner
from tests.support import open_tally


@dataclass(frozen=True)
class Note:
    id: int
    state: str


class FakeRecorder:
    """Notifications with ids in order and holes (rolled-back inserts), as a log has them."""

    def __init__(self) -> None:
        self.notes: list[Note] = []
        self.lock = threading.Lock()
        self.next_id = 1
        self.selects = 0

    def append(self, count: int, rng: random.Random) -> None:
        with self.lock:
            for _ in range(count):
                self.next_id += rng.choice((0, 0, 0, 1, 3))  # a hole now and then
                self.notes.append(Note(self.next_id, f"e{self.next_id}"))
                self.next_id += 1

    def select_notifications(
        self, start: int, limit: int, stop: int | None = None
    ) -> Sequence[Note]:
        with self.lock:
            self.selects += 1
            found = [n for n in self.notes if n.id >= start and (stop is None or n.id <= stop)]
        return found[:limit]

    def expected(self, start: int, limit: int) -> list[tuple[int, str]]:
        return [(n.id, n.state) for n in self.select_notifications(start, limit)]


class Decoder:
    def __init__(self) -> None:
        self.calls: dict[int, int] = {}
        self.lock = threading.Lock()

    def __call__(self, n: Note) -> str:
        with self.lock:
            self.calls[n.id] = self.calls.get(n.id, 0) + 1
        return n.state


def reader_of(recorder: FakeRecorder, decoder: Decoder, capacity: int) -> LogReader:
    return LogReader(recorder, decoder, capacity=capacity)  # type: ignore[arg-type]


def read_all(reader: LogReader, start: int, limit: int) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    while batch := reader.read(start, limit):
        out += batch
        start = batch[-1][0] + 1
    return out


@pytest.mark.parametrize("seed", range(40))
def test_random_readers_get_what_the_database_holds(seed: int) -> None:
    rng = random.Random(seed)
    recorder, decoder = FakeRecorder(), Decoder()
    reader = reader_of(recorder, decoder, capacity=rng.choice((1, 5, 20, 60, 1000)))
    recorder.append(rng.randrange(0, 50), rng)
    positions = [rng.choice((0, 0, rng.randrange(0, 60))) for _ in range(4)]
    for _ in range(200):
        if rng.random() < 0.2:
            recorder.append(rng.randrange(1, 15), rng)
        i = rng.randrange(len(positions))
        if rng.random() < 0.03:
            positions[i] = rng.randrange(0, recorder.next_id + 5)  # a rebuild, or a jump
        limit = rng.choice((1, 3, 7, 500))
        got = reader.read(positions[i] + 1, limit)
        expected = recorder.expected(positions[i] + 1, limit)
        # The first of what the database holds from there: maybe fewer than `limit` (the
        # rest comes with the next read), never none while it holds any.
        assert got == expected[: len(got)]
        assert bool(got) == bool(expected)
        if got:
            positions[i] = got[-1][0]


def test_readers_inside_the_window_decode_each_event_once() -> None:
    recorder, decoder = FakeRecorder(), Decoder()
    recorder.append(1_000, random.Random(1))
    reader = reader_of(recorder, decoder, capacity=10_000)
    everything = recorder.expected(1, 10_000)
    for limit in (500, 17, 1, 100, 333):
        assert read_all(reader, 1, limit) == everything
    assert set(decoder.calls.values()) == {1}
    assert reader.decoded == len(everything)


def test_a_reader_far_behind_reads_for_itself_and_evicts_nothing() -> None:
    recorder, decoder = FakeRecorder(), Decoder()
    recorder.append(300, random.Random(2))
    reader = reader_of(recorder, decoder, capacity=50)
    live = read_all(reader, 1, 20)  # the live runner, now at the head
    head = live[-1][0]
    window = {position for position, _ in live[-50:]}
    assert read_all(reader, 1, 20) == live  # a rebuild from zero
    # It decoded for itself what lies before the window, and of the window at most the
    # one batch that reached into it.
    assert all(decoder.calls[p] == 2 for p in decoder.calls if p < min(window))
    assert sum(decoder.calls[p] == 2 for p in window) <= 20
    recorder.append(5, random.Random(3))
    selects, decoded = recorder.selects, reader.decoded
    got = reader.read(head - 10, 100)
    # The window is as the live runner left it: it answers, then one read past its end.
    assert recorder.selects == selects + 1
    assert reader.decoded == decoded + 5
    assert got == recorder.expected(head - 10, 100)


def test_a_reader_ahead_of_the_window_moves_it() -> None:
    recorder, decoder = FakeRecorder(), Decoder()
    recorder.append(200, random.Random(4))
    reader = reader_of(recorder, decoder, capacity=1_000)
    assert reader.read(1, 10) == recorder.expected(1, 10)  # a rebuild seated the window
    far = recorder.notes[150].id
    assert reader.read(far, 10) == recorder.expected(far, 10)  # the live runner
    assert reader.read(11, 10) == recorder.expected(11, 10)  # the rebuild, now behind it
    assert reader.read(far + 1, 500) == recorder.expected(far + 1, 500)


def test_a_window_smaller_than_a_batch_leaves_no_gap() -> None:
    recorder, decoder = FakeRecorder(), Decoder()
    recorder.append(100, random.Random(5))
    reader = reader_of(recorder, decoder, capacity=3)
    assert read_all(reader, 1, 40) == recorder.expected(1, 1_000)


def test_threads_reading_a_growing_log_each_see_all_of_it() -> None:
    recorder, decoder = FakeRecorder(), Decoder()
    reader = reader_of(recorder, decoder, capacity=100_000)
    total = 3_000
    done = threading.Event()
    seen: list[list[tuple[int, Any]]] = [[] for _ in range(5)]

    def follow(i: int) -> None:
        start, limit = 1, (500, 50, 7, 1, 120)[i]
        while True:
            finished = done.is_set()  # read once more after the writer stopped
            batch = reader.read(start, limit)
            seen[i] += batch
            if batch:
                start = batch[-1][0] + 1
            elif finished:
                return

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    rng = random.Random(6)
    while len(recorder.notes) < total:
        recorder.append(rng.randrange(1, 40), rng)
    done.set()
    for t in threads:
        t.join(timeout=30)
    everything = recorder.expected(1, 100_000)
    assert all(s == everything for s in seen)
    assert set(decoder.calls.values()) == {1}


# -- the registered projections over a real log ------------------------------------------


def _history(tally: Tally, now: list[datetime]) -> None:
    """A log with every kind of event the projections handle (refusals are skipped)."""
    app = tally.app
    settings = ProgramSettings(
        "P",
        "CNY",
        time_zone="Asia/Shanghai",
        point_value_minor=1,
        top_up_bonus=(TopUpBonusStep(10_000, 1_000),),
        points_conversion=PointsConversion(100, 100),
    )
    app.create_program(c.CreateProgram(program_id="p", request_id="p", settings=settings))
    app.update_program(
        c.UpdateProgram(program_id="p", request_id="u", changes={"point_value_minor": 2})
    )
    past = now[0] - timedelta(days=3)
    for m in range(4):
        k: dict[str, Any] = {"program_id": "p", "member_id": f"m{m}", "store_id": "s1"}

        def run(cmd: Any) -> Any:
            try:
                return app.execute(cmd)
            except DomainError:
                return None

        run(c.EnrollMember(request_id=f"{m}-en", **k))
        earn = run(c.EarnPoints(request_id=f"{m}-e1", points=500, purchase_minor=9_000, **k))
        run(c.EarnPoints(request_id=f"{m}-e2", points=400, purchase_minor=1_000, **k))
        run(c.EarnPoints(request_id=f"{m}-e3", points=30, expires_at=past, **k))
        redeem = run(c.RedeemPoints(request_id=f"{m}-r", points=20, **k))
        hold = run(c.HoldPoints(request_id=f"{m}-h1", points=5, ttl_seconds=600, **k))
        run(c.CaptureHold(request_id=f"{m}-c", hold_id=hold.result.hold_id, points=3, **k))
        hold = run(c.HoldPoints(request_id=f"{m}-h2", points=5, ttl_seconds=600, **k))
        run(c.ReleaseHold(request_id=f"{m}-rl", hold_id=hold.result.hold_id, **k))
        run(c.AdjustPoints(request_id=f"{m}-a1", points=7, reason="x", operator_id="o", **k))
        run(c.AdjustPoints(request_id=f"{m}-a2", points=-2, reason="x", operator_id="o", **k))
        run(c.ReverseTransaction(request_id=f"{m}-x1", transaction_id=earn.transaction_id, **k))
        run(c.ReverseTransaction(request_id=f"{m}-x2", transaction_id=redeem.transaction_id, **k))
        top = run(c.TopUp(request_id=f"{m}-t1", cash_minor=20_000, payment_ref=f"pay{m}", **k))
        spend = run(c.Spend(request_id=f"{m}-s", amount_minor=3_000, **k))
        run(c.ReverseTransaction(request_id=f"{m}-x3", transaction_id=spend.transaction_id, **k))
        conv = run(c.ConvertPoints(request_id=f"{m}-cv", points=100, **k))
        run(c.ReverseTransaction(request_id=f"{m}-x4", transaction_id=conv.transaction_id, **k))
        run(c.ReverseTransaction(request_id=f"{m}-x5", transaction_id=top.transaction_id, **k))
        run(c.HoldPoints(request_id=f"{m}-h3", points=5, ttl_seconds=60, **k))
        run(c.ExpireLots(as_of=now[0], run_transaction_id=f"{m}-el", **k))
        now[0] += timedelta(minutes=2)
        run(c.ExpireHolds(sweep_transaction_id=f"{m}-eh", **k))


def _tables(tally: Tally) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with tally.database.read() as cur:
        for projection in REGISTERED:
            for table in projection.tables:
                cur.execute(f"SELECT * FROM {table}")
                out[table] = sorted(cur.fetchall(), key=lambda row: [str(v) for v in row])
    return out


def _reset(tally: Tally) -> None:
    with tally.database.transaction() as cur:
        for projection in REGISTERED:
            for table in projection.tables:
                cur.execute(f"DELETE FROM {table}")
        cur.execute("DELETE FROM projection_tracking")


def test_projections_sharing_decoded_events_build_what_each_alone_builds() -> None:
    now = [datetime.now(UTC)]
    with open_tally("sqlite", clock=lambda: now[0]) as tally:
        _history(tally, now)
        app = tally.app
        notes = app.recorder.select_notifications(start=1, limit=10_000)
        kinds = {type(app.mapper.to_domain_event(n)) for n in notes}
        assert set(ev.ALL) - kinds == set(), "the history must hold every kind of event"
        for projection in REGISTERED:
            ProjectionRunner(
                tally.database,
                app.recorder,
                app.mapper.to_domain_event,
                projection(tally.database.dialect),
                batch_size=13,
            ).run_until_caught_up()
        alone = _tables(tally)
        _reset(tally)

        decoded: list[tuple[int, Any]] = []

        def decode(n: Any) -> Any:
            event = app.mapper.to_domain_event(n)
            decoded.append((n.id, event))
            return event

        reader = LogReader(app.recorder, decode)
        runners = [
            ProjectionRunner(
                tally.database,
                app.recorder,
                decode,
                projection(tally.database.dialect),
                batch_size=size,
                reader=reader,
            )
            for projection, size in zip(REGISTERED, (13, 500, 7, 64, 29), strict=False)
        ]
        for runner in runners:
            runner.run_until_caught_up()
        assert _tables(tally) == alone
        assert [p for p, _ in decoded] == [n.id for n in notes], "each event decoded once"
        # No projection changed an event it was given: each still equals a fresh decode.
        fresh = {n.id: vars(app.mapper.to_domain_event(n)) for n in notes}
        assert all(vars(e) == fresh[p] for p, e in decoded)
