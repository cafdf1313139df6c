"""The NATS JetStream relay (ledger/relay.py, docs/relay.md) against the real NATS server at
127.0.0.1:4222 (and a private nats-server for the outage), a real Tally on SQLite and on
PostgreSQL, and real `ledger relay` / `ledger serve --nats` processes. Every test has a
stream and a subject prefix of its own, deleted afterwards; what a consumer sees is read
through a JetStream consumer and compared with the log as EventReader reads it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig

from ledger.api import requests as parse
from ledger.api.server import RunningServer, ServeOptions, start_server
from ledger.audit.events import AuditEvent, EventReader
from ledger.importer import Importer
from ledger.infrastructure.database import parse_database_url
from ledger.infrastructure.migrations import migrate
from ledger.relay import Relay, relay_settings
from ledger.relay_messages import subject_token
from ledger.relay_position import RelayPosition
from ledger.runtime import Tally
from ledger.v1 import ledger_pb2 as ledger_pb
from tests.support import Client, scratch_postgres

NATS_URL = "nats://127.0.0.1:4222"
LEDGER = str(Path(sys.executable).parent / "ledger")
BACKENDS = ["sqlite", "postgres"]
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@dataclass(frozen=True)
class Published:
    """One message as a consumer received it."""

    subject: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def position(self) -> int:
        return int(self.body["position"])


class Stream:
    """A stream and subject prefix of this test's own, on a NATS server."""

    def __init__(self, url: str = NATS_URL) -> None:
        tag = uuid.uuid4().hex[:10]
        self.url = url
        self.name = f"TEST_RELAY_{tag}"
        self.prefix = f"test-relay-{tag}"

    def env(self) -> dict[str, str]:
        return {"TALLY_RELAY_STREAM": self.name, "TALLY_RELAY_SUBJECT_PREFIX": self.prefix}

    def flags(self) -> list[str]:
        return ["--nats", self.url, "--stream", self.name, "--subject-prefix", self.prefix]

    async def _js(self) -> tuple[Any, Any]:
        nc = await nats.connect(self.url, allow_reconnect=False)
        return nc, nc.jetstream()

    def create(self, **config: Any) -> None:
        async def go() -> None:
            nc, js = await self._js()
            await js.add_stream(
                StreamConfig(name=self.name, subjects=[f"{self.prefix}.>"], **config)
            )
            await nc.close()

        run(go())

    def delete(self) -> None:
        async def go() -> None:
            nc, js = await self._js()
            with suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(self.name)
            await nc.close()

        run(go())

    def count(self) -> int:
        async def go() -> int:
            nc, js = await self._js()
            try:
                info = await js.stream_info(self.name)
            except nats.js.errors.NotFoundError:
                return 0
            finally:
                await nc.close()
            return int(info.state.messages)

        return run(go())

    def consume(self, filter_subject: str = "") -> list[Published]:
        """Every message, in stream order, through an ephemeral pull consumer."""

        async def go() -> list[Published]:
            nc, js = await self._js()
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL, filter_subject=filter_subject or None
            )
            sub = await js.pull_subscribe(
                filter_subject or f"{self.prefix}.>", stream=self.name, config=config
            )
            received: list[Published] = []
            while (await sub.consumer_info()).num_pending:
                for m in await sub.fetch(500, timeout=5):
                    received.append(Published(m.subject, dict(m.headers or {}), json.loads(m.data)))
                    await m.ack()
            await sub.unsubscribe()
            await nc.close()
            return received

        return run(go())

    def wait_for(self, positions: list[int], timeout: float = 60) -> list[Published]:
        """Until the last of `positions` has arrived; then what a consumer sees."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            received = self.consume()
            if received and received[-1].position >= positions[-1]:
                return received
            time.sleep(0.1)
        raise AssertionError(f"stream {self.name} did not reach position {positions[-1]}")


@pytest.fixture
def stream() -> Iterator[Stream]:
    s = Stream()
    try:
        yield s
    finally:
        s.delete()


@contextmanager
def database_url(backend: str) -> Iterator[str]:
    if backend == "postgres":
        with scratch_postgres() as url:
            yield url
    else:
        with tempfile.TemporaryDirectory(prefix="tally-relay-") as folder:
            yield f"sqlite:///{Path(folder) / 'ledger.db'}"


class LoopThread:
    """An asyncio loop on a thread, for servers and relays inside the test process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@contextmanager
def relaying_server(url: str, stream: Stream, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real gRPC server whose ServeOptions name NATS: its relay is the server's own."""
    for name, value in stream.env().items():
        monkeypatch.setenv(name, value)
    loop = LoopThread()
    tally = Tally.from_url(url)
    options = ServeOptions(database_url=url, nats=stream.url)
    running: RunningServer = loop.call(start_server(tally, "127.0.0.1:0", options=options))
    client = Client(f"127.0.0.1:{running.port}", backend="")
    try:
        yield client, running
    finally:
        client.close()
        loop.call(running.stop(grace=1))
        loop.close()


def log_events(tally_or_url: Tally | str) -> list[AuditEvent]:
    if isinstance(tally_or_url, Tally):
        reader = EventReader(tally_or_url.database)
        return _scan_all(reader)
    tally = Tally.from_url(tally_or_url, apply_migrations=False)
    try:
        return _scan_all(EventReader(tally.database))
    finally:
        tally.close()


def _scan_all(reader: EventReader) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    position = 0
    while True:
        batch, position = reader.scan(position, 1000)
        if not batch:
            return events
        events.extend(batch)


def assert_once_in_order(received: list[Published], expected: list[AuditEvent]) -> None:
    """Exactly the expected events, each once, in log order."""
    assert [m.position for m in received] == [e.position for e in expected]


def some_history(client: Client) -> tuple[str, str]:
    """Two programmes (one with '.' and ':' in its id), members, earns, a redemption, a
    programme update."""
    first = client.create_program(program_id=f"coffee.club:{uuid.uuid4().hex[:6]}")
    second = client.create_program()
    for program in (first, second):
        for _ in range(2):
            member = client.enroll(program)
            client.earn(program, member, 500)
            client.redeem(program, member, 120)
    client.update_program(second, display_name="Renamed")
    return first, second


# --------------------------------------------------------------------------- in a server


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_event_arrives_once_in_order_with_its_subject(
    backend: str, stream: Stream, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        database_url(backend) as url,
        relaying_server(url, stream, monkeypatch) as (client, running),
    ):
        first, second = some_history(client)
        expected = log_events(running.tally)
        received = stream.wait_for([e.position for e in expected])
        relay = running.relay
        assert relay is not None
        assert relay.active
        # The position moves once a batch's acks are in and it is stored.
        _until(lambda: relay.position == expected[-1].position, "the relay's position")
        assert relay.lag == 0

    assert_once_in_order(received, expected)
    assert {e.program_id for e in expected} == {first, second}
    for message, event in zip(received, expected, strict=True):
        token = subject_token(event.program_id)
        assert message.subject == f"{stream.prefix}.{token}.{event.event_type}"
        assert message.headers["Nats-Msg-Id"] == f"tally-{event.position}"
        assert message.headers["Tally-Program"] == event.program_id
        assert message.headers["Tally-Event-Type"] == event.event_type
        assert message.body["payload_json"] == event.payload_json  # as stored, exactly
        assert message.body["hash"] == event.hash
        assert message.body["prev_hash"] == event.prev_hash
        assert message.body["member_id"] == event.member_id
        assert message.body["transaction_id"] == event.transaction_id
        assert message.body["occurred_at"] == (event.occurred_at and event.occurred_at.isoformat())
        assert message.body["recorded_at"] == (event.recorded_at and event.recorded_at.isoformat())
    # The '.' and ':' of the programme id do not split its subject token: one programme's
    # wildcard has exactly its events.
    assert subject_token(first) == first.replace(".", "%2E").replace(":", "%3A")
    only_first = stream.consume(f"{stream.prefix}.{subject_token(first)}.>")
    assert_once_in_order(only_first, [e for e in expected if e.program_id == first])


def test_programs_limits_a_relay_to_some_programmes(stream: Stream) -> None:
    with database_url("postgres") as url:
        tally = Tally.from_url(url)
        loop = LoopThread()
        server = loop.call(start_server(tally, "127.0.0.1:0"))
        client = Client(f"127.0.0.1:{server.port}", backend="postgres")
        first, second = some_history(client)
        third = client.create_program()
        client.update_program(second, display_name="Last")  # the log ends with another's
        settings = relay_settings(
            stream.url, stream.name, stream.prefix, programs=f"{first},{third}"
        )
        relay = Relay(tally.database, settings, tally.commits)
        try:
            loop.call(relay.start())
            expected = [e for e in log_events(tally) if e.program_id in (first, third)]
            received = stream.wait_for([e.position for e in expected])
            last_position = log_events(tally)[-1].position
            _until(lambda: relay.position == last_position, "the relay's position")
            loop.call(relay.stop())
            stored = RelayPosition(tally.database, settings.name).load()
        finally:
            loop.call(relay.stop())
            client.close()
            loop.call(server.stop(grace=1))
            loop.close()

    assert_once_in_order(received, expected)
    assert {m.headers["Tally-Program"] for m in received} == {first, third}
    assert second not in {m.body["program_id"] for m in received}
    # Its position moved past the other programme's events too.
    assert relay.position == stored == last_position


@pytest.mark.parametrize("backend", BACKENDS)
def test_serve_with_nats_relays_and_stores_its_position_on_sigterm(
    backend: str, stream: Stream
) -> None:
    with database_url(backend) as url:
        port = _free_port()
        env = {**os.environ, **stream.env()}
        env.pop("TALLY_DATABASE_URL", None)
        server = subprocess.Popen(
            [
                LEDGER,
                "serve",
                "--database",
                url,
                "--listen",
                f"127.0.0.1:{port}",
                "--nats",
                stream.url,
            ],
            env=env,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            client = Client(f"127.0.0.1:{port}", backend=backend)
            _until(lambda: _serving(client), "the server to serve")
            some_history(client)
            client.close()
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=60) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        expected = log_events(url)
        received = stream.consume()
        tally = Tally.from_url(url, apply_migrations=False)
        name = relay_settings(stream.url, stream.name, stream.prefix).name
        stored = RelayPosition(tally.database, name).load()
        tally.close()

    assert_once_in_order(received, expected)
    assert stored == expected[-1].position  # the graceful stop wrote it


# --------------------------------------------------------------------------- crashes


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_relay_killed_mid_stream_resumes_without_gap_or_duplicate(
    backend: str, stream: Stream, tmp_path: Path
) -> None:
    with database_url(backend) as url:
        tally = Tally.from_url(url)
        tally.start(sweep=False)
        try:
            # About 2,000 events, in batches of 50: killed after a fifth, 32 batches before
            # the end (5,000 events took 30 s and proved no more).
            program = _import_history(tally, tmp_path, members=20, earns=99)
            total = log_events(tally)
            relay = _relay_process(url, stream, "--batch-size", "50")
            try:
                _until(lambda: stream.count() >= len(total) // 5, "a fifth to be published")
                relay.send_signal(signal.SIGKILL)
                relay.wait(timeout=30)
                at_kill = stream.count()
                # More history while no relay runs; then a new one carries on.
                _import_history(tally, tmp_path, members=2, earns=10, program=program)
                relay = _relay_process(url, stream)
                expected = log_events(tally)
                received = stream.wait_for([e.position for e in expected])
            finally:
                _stop(relay)
        finally:
            tally.close()

    assert 0 < at_kill < len(total)  # it was killed mid-stream
    assert_once_in_order(received, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stored_position_behind_the_stream_publishes_no_duplicate(
    backend: str, stream: Stream, tmp_path: Path
) -> None:
    """The crash between an ack and the position write, made to order: the stored position
    is set back after a complete run, and the duplicate window has long passed (0.5 s), so
    only the resume from the stream's last message can keep the restart from repeating."""
    stream.create(duplicate_window=0.5)
    with database_url(backend) as url:
        tally = Tally.from_url(url)
        tally.start(sweep=False)
        try:
            _import_history(tally, tmp_path, members=5, earns=20)
            expected = log_events(tally)
            relay = _relay_process(url, stream)
            try:
                stream.wait_for([e.position for e in expected])
            finally:
                _stop(relay)
            with tally.database.transaction() as cur:
                cur.execute("UPDATE relay_positions SET position = 3")
                assert cur.rowcount == 1
            time.sleep(1.0)  # past the duplicate window
            relay = _relay_process(url, stream)
            try:
                name = relay_settings(stream.url, stream.name, stream.prefix).name
                stored = RelayPosition(tally.database, name)
                _until(lambda: stored.load() == expected[-1].position, "the position to catch up")
            finally:
                _stop(relay)
        finally:
            tally.close()
        received = stream.consume()

    assert_once_in_order(received, expected)


def test_one_relay_is_active_and_another_takes_over(stream: Stream, tmp_path: Path) -> None:
    """Two relays of one stream on one PostgreSQL: one publishes, the other stands by; when
    the first goes, the second carries on from where the stream is."""
    with database_url("postgres") as url:
        tally = Tally.from_url(url)
        tally.start(sweep=False)
        loop = LoopThread()
        settings = relay_settings(stream.url, stream.name, stream.prefix)
        first = Relay(tally.database, settings)
        second = Relay(tally.database, settings)
        try:
            program = _import_history(tally, tmp_path, members=3, earns=10)
            loop.call(first.start())
            _until(lambda: first.active, "the first relay to take the lock")
            loop.call(second.start())
            stream.wait_for([e.position for e in log_events(tally)])
            # The second has tried for the lock, found it held, and stands by.
            _until(lambda: second._said_standby, "the second relay to stand by")
            assert not second.active
            loop.call(first.stop())
            _import_history(tally, tmp_path, members=2, earns=5, program=program)
            expected = log_events(tally)
            received = stream.wait_for([e.position for e in expected])
            assert second.active
            assert second.published == len(expected) - first.published
        finally:
            loop.call(first.stop())
            loop.call(second.stop())
            loop.close()
            tally.close()

    assert_once_in_order(received, expected)


def test_nats_going_away_and_back_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """A private nats-server (its own port and store) stopped while the log grows and
    started again: the relay reconnects by itself and carries on."""
    port = _free_port()
    store = tmp_path / "jetstream"
    private = Stream(f"nats://127.0.0.1:{port}")
    nats_server = _start_nats(port, store)
    with database_url("sqlite") as url:
        tally = Tally.from_url(url)
        tally.start(sweep=False)
        loop = LoopThread()
        relay = Relay(tally.database, relay_settings(private.url, private.name, private.prefix))
        try:
            program = _import_history(tally, tmp_path, members=3, earns=10)
            loop.call(relay.start())
            private.wait_for([e.position for e in log_events(tally)])
            nats_server.terminate()
            nats_server.wait(timeout=30)
            _until(lambda: not relay.connected, "the relay to see NATS gone")
            _import_history(tally, tmp_path, members=3, earns=10, program=program)
            time.sleep(1.0)  # the relay tries, and waits, while NATS is away
            nats_server = _start_nats(port, store)
            expected = log_events(tally)
            received = private.wait_for([e.position for e in expected])
            _until(lambda: relay.position == expected[-1].position, "the relay to catch up")
        finally:
            loop.call(relay.stop())
            loop.close()
            tally.close()
            nats_server.kill()
            nats_server.wait()

    assert_once_in_order(received, expected)


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--nats", "nats://127.0.0.1:1"], "cannot reach NATS at nats://127.0.0.1:1"),
        (["--nats", "http://127.0.0.1:4222"], "give nats://HOST:PORT"),
        (["--nats", "nats://127.0.0.1:99999"], "the port must be a number"),
        (["--nats", NATS_URL, "--programs", "coffee,,tea"], "'' is not a programme id"),
        (["--nats", NATS_URL, "--programs", "coffee,bad id"], "'bad id' is not a programme id"),
        (["--nats", NATS_URL, "--stream", "bad.name"], "--stream 'bad.name'"),
        ([], "no NATS URL"),
        (["--nats", NATS_URL, "--database", "sqlite:///no/such/folder/l.db"], "no database at"),
    ],
)
def test_relay_operator_errors_are_one_line_and_exit_2(
    flags: list[str], says: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate(parse_database_url(url))  # a ledger to relay from
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALLY_NATS", "TALLY_RELAY"))}
    result = subprocess.run(
        [LEDGER, "relay", "--database", url, *flags],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ledger relay: ")
    assert says in lines[0]


def test_serve_with_unreachable_nats_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    result = subprocess.run(
        [
            LEDGER,
            "serve",
            "--database",
            f"sqlite:///{tmp_path / 'l.db'}",
            "--listen",
            "127.0.0.1:0",
            "--nats",
            "nats://127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(errors) == 1, result.stderr  # the one line, and nothing of grpc after it
    assert errors[0].startswith("ledger serve: cannot reach NATS at nats://127.0.0.1:1: ")


# --------------------------------------------------------------------------- helpers


def _import_history(tally: Tally, folder: Path, members: int, earns: int, program: str = "") -> str:
    """`members` members with `earns` earns each, through the batch path (ledger import)."""
    if not program:
        program = f"relay-{uuid.uuid4().hex[:8]}"
        request = ledger_pb.CreateProgramRequest(
            program_id=program, display_name="Relay", currency="EUR", request_id=program
        )
        tally.app.create_program(parse.create_program(request))
    tag = uuid.uuid4().hex[:6]
    path = folder / f"history-{tag}.jsonl"
    with path.open("w") as f:
        for m in range(members):
            member = f"m-{tag}-{m}"
            f.write(json.dumps({"type": "member", "member_id": member}) + "\n")
            for _ in range(earns):
                f.write(
                    json.dumps(
                        {"type": "earn", "member_id": member, "points": 10, "store_id": "s1"}
                    )
                    + "\n"
                )
    report = Importer(tally, program, path, progress=False).run()
    assert report.rejected == 0
    return program


def _relay_process(url: str, stream: Stream, *flags: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    return subprocess.Popen(
        [LEDGER, "relay", "--database", url, *stream.flags(), *flags],
        env=env,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _start_nats(port: int, store: Path) -> subprocess.Popen[bytes]:
    nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
    process = subprocess.Popen(
        [nats_bin, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _until(lambda: _listening(port), "nats-server to listen")
    return process


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serving(client: Client) -> bool:
    try:
        client.create_program(program_id=f"probe-{uuid.uuid4().hex[:6]}")
    except Exception:
        return False
    return True


def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
