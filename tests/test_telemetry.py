"""Traces and metrics of a real gRPC server on SQLite and PostgreSQL, read with the SDK's
in-memory exporter and reader; Prometheus text from a real `ledger serve` process; OTLP
over HTTP to a receiver of our own on loopback; nothing at all when nothing is configured."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ledger.api.server import RunningServer, ServeOptions, start_server
from ledger.application import commands as c
from ledger.runtime import Tally
from ledger.telemetry import Telemetry, instruments
from tests.support import Client, new_id, open_tally

LEDGER = str(Path(sys.executable).parent / "ledger")
TIMEOUT = 30.0


@dataclass
class Traced:
    tally: Tally
    client: Client
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self, name: str, until: Callable[[list[Any]], bool]) -> list[Any]:
        """The finished spans called `name`, once `until` holds for them (spans end on
        other threads: the writer's, the projections')."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            found = [s for s in self.spans.get_finished_spans() if s.name == name]
            if until(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for m in scope.metrics
            if m.name == metric
            for point in m.data.data_points
        ]

    def count(self, metric: str, **attributes: Any) -> float:
        """The sum of a counter's points (or a histogram's counts) with these attributes."""
        total = 0.0
        for point in self.points(metric):
            if all(point.attributes.get(k) == v for k, v in attributes.items()):
                total += point.value if hasattr(point, "value") else point.count
        return total


@contextmanager
def traced_server(backend: str) -> Iterator[Traced]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    telemetry = Telemetry(tracer_provider, MeterProvider(metric_readers=[reader]))
    with open_tally(backend) as tally:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        running: RunningServer | None = None
        try:
            running = asyncio.run_coroutine_threadsafe(
                start_server(tally, "127.0.0.1:0", telemetry=telemetry), loop
            ).result(timeout=60)
            client = Client(f"127.0.0.1:{running.port}", backend)
            try:
                yield Traced(tally, client, spans, reader)
            finally:
                client.close()
        finally:
            if running is not None:
                asyncio.run_coroutine_threadsafe(running.stop(grace=1), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            tracer_provider.shutdown()


@pytest.fixture(params=["sqlite", "postgres"])
def traced(request: pytest.FixtureRequest) -> Iterator[Traced]:
    with traced_server(request.param) as t:
        yield t


def test_an_earn_is_traced_from_its_rpc_to_the_group_the_write_and_the_projection(
    traced: Traced,
) -> None:
    program_id, member_id = traced.client.member()
    earned = traced.client.earn(program_id, member_id, 120)
    assert traced.tally.points.wait_for(earned.position, TIMEOUT)

    rpcs = traced.finished("/ledger.v1.LedgerService/Earn", lambda f: len(f) == 1)
    assert len(rpcs) == 1
    rpc = rpcs[0]
    commands = [
        s
        for s in traced.finished("tally.command", lambda f: True)
        if s.parent is not None and s.parent.span_id == rpc.context.span_id
    ]
    assert len(commands) == 1
    command = commands[0]
    assert command.context.trace_id == rpc.context.trace_id
    assert command.attributes["tally.program"] == program_id
    assert command.attributes["tally.command"] == "Earn"
    assert command.attributes["tally.outcome"] == "accepted"
    assert command.attributes["tally.retries"] == 0
    assert command.attributes["tally.group.size"] >= 1

    def carries_command(span: Any) -> bool:
        return any(link.context.span_id == command.context.span_id for link in span.links)

    # The group span ends after its callers are answered: awaited, not read at once.
    groups = [
        s
        for s in traced.finished("tally.group", lambda f: any(carries_command(g) for g in f))
        if carries_command(s)
    ]
    assert len(groups) == 1
    group = groups[0]
    assert group.attributes["tally.group.size"] == command.attributes["tally.group.size"]
    assert group.attributes["tally.retries"] == 0

    writes = [
        s
        for s in traced.finished("tally.event_store.write", lambda f: True)
        if s.parent is not None and s.parent.span_id == group.context.span_id
    ]
    assert len(writes) == 1
    write = writes[0]
    assert write.context.trace_id == group.context.trace_id
    assert write.attributes["tally.position"] == earned.position
    assert write.attributes["tally.requests"] == 1

    def projects_the_write(span: Any) -> bool:
        return any(link.context.span_id == write.context.span_id for link in span.links)

    batches = traced.finished(
        "tally.projection.batch",
        lambda found: any(
            projects_the_write(s) and s.attributes["tally.projection"] == "points" for s in found
        ),
    )
    points = [
        s for s in batches if projects_the_write(s) and s.attributes["tally.projection"] == "points"
    ]
    assert len(points) == 1
    assert points[0].attributes["tally.position"] >= earned.position
    assert points[0].attributes["tally.events"] >= 1


def _eventually(
    read: Callable[[], float], done: Callable[[float], bool] = bool, timeout: float = 10.0
) -> float:
    """`read()` once `done` says so, or its last value after `timeout` seconds: what is
    recorded after the answer was sent (an abort's status, the writer's group size after it
    answered) may come a moment after the client heard."""
    deadline = time.monotonic() + timeout
    while not done(value := read()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def test_commands_are_counted_by_type_and_outcome(traced: Traced) -> None:
    client = traced.client
    program_id, member_id = client.member()
    request_id = new_id("earn")
    client.earn(program_id, member_id, 100, request_id=request_id)
    replayed = client.earn(program_id, member_id, 100, request_id=request_id)
    with pytest.raises(grpc.RpcError) as refused:
        client.redeem(program_id, member_id, 500)

    assert replayed.account.points_available == 100  # the replay wrote nothing
    assert (
        traced.count("tally.commands", **{"tally.command": "Earn", "tally.outcome": "accepted"})
        == 1
    )
    assert (
        traced.count("tally.commands", **{"tally.command": "Earn", "tally.outcome": "replayed"})
        == 1
    )
    assert (
        traced.count(
            "tally.commands",
            **{
                "tally.command": "Redeem",
                "tally.outcome": "refused",
                "tally.reason": "INSUFFICIENT_POINTS",
            },
        )
        == 1
    )
    assert traced.count("tally.idempotent_replays", **{"tally.command": "Earn"}) == 1
    # The latency histogram has one observation per answered command.
    assert traced.count("tally.command.duration", **{"tally.command": "Earn"}) == 2
    # enrol, earn, replay, redeem
    assert _eventually(lambda: traced.count("tally.group.size"), lambda n: n >= 4) >= 4
    # RPCs by method and status, from the interceptor.
    ok = grpc.StatusCode.OK.value[0]
    assert (
        traced.count("rpc.server.duration", **{"rpc.method": "Earn", "rpc.grpc.status_code": ok})
        == 2
    )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # An abort sends the status before the interceptor's `finally` records it.
    assert (
        _eventually(
            lambda: traced.count(
                "rpc.server.duration",
                **{"rpc.method": "Redeem", "rpc.grpc.status_code": refused.value.code().value[0]},
            )
        )
        == 1
    )
    # The replay was decided again and its request record refused: a conflict on the
    # request_id (then answered from the record), none on an account.
    assert traced.count("tally.write_conflicts", **{"tally.conflict": "request_id"}) == 1
    assert traced.count("tally.write_conflicts", **{"tally.conflict": "account"}) == 0


def test_a_write_conflict_is_counted_and_the_group_retried(traced: Traced) -> None:
    client = traced.client
    program_id, member_id = client.member()
    client.earn(program_id, member_id, 10)  # the writer now has the account cached
    # Another writer (as another process would) moves the account on behind its back.
    traced.tally.app.execute(
        c.EarnPoints(
            program_id=program_id,
            member_id=member_id,
            points=5,
            request_id=new_id("elsewhere"),
            store_id="s",
        )
    )
    earned = client.earn(program_id, member_id, 1)

    assert earned.account.points_available == 16
    assert traced.count("tally.write_conflicts", **{"tally.conflict": "account"}) == 1
    retried = traced.finished(
        "tally.group", lambda found: any(s.attributes["tally.retries"] >= 1 for s in found)
    )
    assert any(s.attributes["tally.retries"] >= 1 for s in retried)
    failed_writes = [
        s
        for s in traced.finished("tally.event_store.write", lambda f: True)
        if s.attributes.get("tally.outcome") == "conflict"
    ]
    assert failed_writes


def test_a_programme_updated_under_a_writer_is_a_conflict_on_the_program(traced: Traced) -> None:
    """Decision 29: the writer decides under the programme it last read; the insert refuses a
    group decided under an older version, and that conflict is labelled `program`."""
    client = traced.client
    program_id, member_id = client.member()
    client.earn(program_id, member_id, 10)  # the writer has the programme as it was
    client.update_program(program_id, display_name="Renamed", request_id=new_id("rename"))
    earned = client.earn(program_id, member_id, 1)

    assert earned.account.points_available == 11
    assert traced.count("tally.write_conflicts", **{"tally.conflict": "program"}) == 1
    assert traced.count("tally.write_conflicts", **{"tally.conflict": "account"}) == 0


def test_the_log_position_and_projection_lag_are_reported(traced: Traced) -> None:
    client = traced.client
    program_id, member_id = client.member()
    earned = client.earn(program_id, member_id, 10)
    assert traced.tally.points.wait_for(earned.position, TIMEOUT)
    # One read model stops: what is recorded after this is its lag.
    journal = traced.tally.projections["journal"]
    journal.stop()
    stopped_at = journal.position
    later = client.earn(program_id, member_id, 10)
    assert traced.tally.points.wait_for(later.position, TIMEOUT)

    [log_position] = traced.points("tally.event_log.position")
    assert log_position.value == later.position
    lag = {p.attributes["tally.projection"]: p.value for p in traced.points("tally.projection.lag")}
    assert lag["journal"] == later.position - stopped_at > 0
    assert lag["points"] == 0
    positions = {
        p.attributes["tally.projection"]: p.value
        for p in traced.points("tally.projection.position")
    }
    assert positions["points"] == later.position
    # The delay of each projected batch, in seconds, per read model.
    assert traced.count("tally.projection.delay", **{"tally.projection": "points"}) >= 1
    assert traced.count("tally.projection.events", **{"tally.projection": "points"}) >= 2


# ---------------------------------------------------------------------- configuration


def test_without_configuration_nothing_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    before = {t.ident for t in threading.enumerate()}

    telemetry = Telemetry.from_options(ServeOptions())

    assert not telemetry.enabled
    assert telemetry.interceptors() == []
    assert {t.ident for t in threading.enumerate()} == before  # no exporter thread
    assert not instruments.current.tracing
    # The core's calls record nothing: a span from the default instruments is not recording.
    submission = instruments.current.submitted([])
    assert not submission.span.is_recording()
    telemetry.shutdown()


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint on loopback: keeps what is posted to it."""

    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


def test_otlp_export_when_the_endpoint_is_set_and_shutdown_flushes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    serving = threading.Thread(target=receiver.serve_forever, daemon=True)
    serving.start()
    try:
        monkeypatch.setenv(
            "OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.server_address[1]}"
        )
        monkeypatch.setenv("OTEL_SERVICE_NAME", "tally-under-test")
        telemetry = Telemetry.from_options(ServeOptions())
        assert telemetry.enabled
        with open_tally("sqlite") as tally:
            loop = asyncio.new_event_loop()
            try:
                running = loop.run_until_complete(
                    start_server(tally, "127.0.0.1:0", telemetry=telemetry)
                )
                client = Client(f"127.0.0.1:{running.port}", "sqlite")
                try:
                    loop.run_until_complete(asyncio.to_thread(client.member))
                finally:
                    client.close()
                # Nothing forced a flush before this: the batch processor's delay is 5 s.
                loop.run_until_complete(running.stop(grace=1))
            finally:
                loop.close()
    finally:
        receiver.shutdown()
        receiver.server_close()

    paths = [path for path, _ in _Receiver.received]
    assert "/v1/traces" in paths
    assert "/v1/metrics" in paths
    names: set[str] = set()
    services: set[str] = set()
    for path, body in _Receiver.received:
        if path != "/v1/traces":
            continue
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            services.update(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource_spans.scope_spans:
                names.update(span.name for span in scope.spans)
    assert services == {"tally-under-test"}
    assert {"/ledger.v1.LedgerService/EnrollMember", "tally.command", "tally.group"} <= names


# ---------------------------------------------------------------------- a real process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("TALLY_LISTEN", "TALLY_DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        env.pop(name, None)
    return env


def _wait_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    pytest.fail("ledger serve never became SERVING")


def _scrape(port: int, until: Callable[[str], bool]) -> str:
    deadline = time.monotonic() + TIMEOUT
    text = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = str(r.read().decode())
            if until(text):
                return text
        except OSError:
            pass
        time.sleep(0.1)
    return text


def test_serve_with_metrics_port_answers_prometheus_text(tmp_path: Path) -> None:
    listen, metrics_port = f"127.0.0.1:{_free_port()}", _free_port()
    process = subprocess.Popen(
        [
            LEDGER,
            "serve",
            "--listen",
            listen,
            "--database",
            f"sqlite:///{tmp_path / 'l.db'}",
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        _scrape(metrics_port, lambda text: "rpc_server_duration" not in text)  # it is up
        client = Client(listen, "sqlite")
        try:
            _wait_serving(client.channel)
            client.member()
        finally:
            client.close()
        text = _scrape(metrics_port, lambda t: "tally_commands_total{" in t)
        assert "tally_commands_total{" in text
        line = next(x for x in text.splitlines() if x.startswith("tally_commands_total{"))
        assert 'tally_command="EnrollMember"' in line
        assert 'tally_outcome="accepted"' in line
        assert line.endswith(" 1.0")
        assert "tally_command_duration_seconds_bucket{" in text
        assert "tally_group_size_bucket{" in text
        assert "tally_projection_lag{" in text
        assert "rpc_server_duration_seconds_count{" in text
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_serve_refuses_a_metrics_port_in_use_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                LEDGER,
                "serve",
                "--listen",
                f"127.0.0.1:{_free_port()}",
                "--database",
                f"sqlite:///{tmp_path / 'l.db'}",
                "--metrics-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
            check=False,
        )
    assert result.returncode == 2, result.stderr
    # Besides the JSON log lines (migrations applied): one line for the operator.
    lines = [x for x in result.stderr.strip().splitlines() if not x.startswith("{")]
    assert len(lines) == 1, result.stderr
    assert f"--metrics-port {port}" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_collection_after_the_tally_closed_asks_the_database_nothing() -> None:
    """The last flush of a shutdown comes after the Tally has closed: the log-position gauge
    then reports nothing instead of asking a closed store (which the library retries for
    seconds: a projections process took 4 s to stop with a metrics port)."""
    reader = InMemoryMetricReader()
    telemetry = Telemetry(None, MeterProvider(metric_readers=[reader]))
    with open_tally("sqlite") as tally:
        telemetry.start(tally)
        asked: list[str] = []
        read = tally.app.recorder.max_notification_id

        def counted() -> int | None:
            asked.append("head")  # before the read: a closed store raises
            return read()

        tally.app.recorder.max_notification_id = counted  # type: ignore[method-assign]
        try:
            data = reader.get_metrics_data()
            assert data is not None
            assert asked, "the gauge reads the log's head while the Tally is open"
            tally.close()
            asked.clear()
            data = reader.get_metrics_data()
            assert data is not None
        finally:
            telemetry.shutdown()
    assert asked == []
    names = {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert "tally.event_log.position" not in names
