"""Every span and metric Tally makes, in one place, so that the core calls one line each.

`current` is what the core calls. Until a `Telemetry` installs its providers it is made on
the OpenTelemetry API's no-op providers: nothing is recorded, nothing is kept, no thread
runs. The names are documented in docs/observability.md.

How a command is traced: `submitted` (in the caller's context: the RPC's span) starts a
`tally.command` span under the caller; the writer thread's `group` span is a root of its
own with a link to each command span it carries, and the event-store writes (`store_write`)
are its children; a projection batch (`projection_batch`) links to the writes whose events
it applies. So a trace reads RPC -> command, linked to group -> event-store write, linked
from the projection update.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import IntegrityError
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode

from ledger.domain.errors import DomainError, InternalFault

SCOPE = "tally"
# Bucket bounds in seconds for latencies (the SDK's defaults are milliseconds-sized).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# How many recent event positions remember the write that made them (for the projection
# batches' links), and how many links one projection span carries at most.
REMEMBERED_WRITES = 20_000
MAX_LINKS = 32


@dataclass
class Submission:
    """One queue item as its caller handed it over: its span and when."""

    span: Span
    started: float
    commands: int


@dataclass
class GroupTrace:
    """What the writer learns while a group runs: the conflicts (each one a retry)."""

    span: Span
    size: int
    retries: int = 0


@dataclass
class _WriteMemory:
    """Recent positions -> the span context of the write that made them (bounded)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    writes: OrderedDict[int, SpanContext] = field(default_factory=OrderedDict)

    def remember(self, positions: Iterable[int], context: SpanContext) -> None:
        with self.lock:
            for position in positions:
                self.writes[position] = context
            while len(self.writes) > REMEMBERED_WRITES:
                self.writes.popitem(last=False)

    def links(self, positions: Iterable[int]) -> list[Link]:
        found: dict[int, SpanContext] = {}
        with self.lock:
            for position in positions:
                context = self.writes.get(position)
                if context is not None:
                    found.setdefault(context.span_id, context)
                    if len(found) >= MAX_LINKS:
                        break
        return [Link(context) for context in found.values()]


class Instruments:
    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracing = tracer_provider is not None
        tracer_provider = tracer_provider or trace.NoOpTracerProvider()
        meter_provider = meter_provider or metrics.NoOpMeterProvider()
        self.tracer = tracer_provider.get_tracer(SCOPE)
        self.meter = meter_provider.get_meter(SCOPE)
        self._group = threading.local()
        self._writes = _WriteMemory()
        m = self.meter
        self.commands = m.create_counter(
            "tally.commands", "{command}", "Account commands answered, by type and outcome"
        )
        self.command_duration = m.create_histogram(
            "tally.command.duration",
            "s",
            "From a command's submission to its writer until its answer",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.group_size = m.create_histogram(
            "tally.group.size",
            "{command}",
            "Commands saved together in one group commit",
            explicit_bucket_boundaries_advisory=GROUP_BUCKETS,
        )
        self.replays = m.create_counter(
            "tally.idempotent_replays",
            "{command}",
            "Commands answered from their request record (a retried request_id)",
        )
        self.conflicts = m.create_counter(
            "tally.write_conflicts",
            "{conflict}",
            "Event-store writes refused on a unique id (another writer came first)",
        )
        self.write_duration = m.create_histogram(
            "tally.event_store.write.duration",
            "s",
            "One event-store transaction: events and request records",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.projection_events = m.create_counter(
            "tally.projection.events", "{event}", "Events applied to a read model"
        )
        self.projection_delay = m.create_histogram(
            "tally.projection.delay",
            "s",
            "For each projected batch: how long its oldest event waited after being recorded",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.rpc_duration = m.create_histogram(
            "rpc.server.duration",
            "s",
            "gRPC calls by method and status code",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )

    # ------------------------------------------------------------------ commands

    def submitted(self, commands: Sequence[Any]) -> Submission:
        """In the caller's context: a span under the caller's, and the time it started."""
        first = commands[0] if commands else None
        span = self.tracer.start_span("tally.command", kind=SpanKind.INTERNAL)
        if span.is_recording() and first is not None:
            span.set_attribute("tally.program", first.program_id)
            span.set_attribute("tally.command", _command_name(commands))
            span.set_attribute("tally.commands", len(commands))
        return Submission(span, time.perf_counter(), len(commands))

    @contextmanager
    def group(self, submissions: Sequence[Submission | None], size: int) -> Iterator[GroupTrace]:
        """A group commit: a root span linked to each of its commands, current while it runs
        (so the event-store writes are its children)."""
        links = [Link(s.span.get_span_context()) for s in submissions if s is not None]
        span = self.tracer.start_span(
            "tally.group", context=trace.set_span_in_context(trace.INVALID_SPAN), links=links
        )
        span.set_attribute("tally.group.size", size)
        state = GroupTrace(span, size)
        self._group.current = state
        with trace.use_span(span, end_on_exit=True, record_exception=True):
            try:
                yield state
            finally:
                self._group.current = None
                span.set_attribute("tally.retries", state.retries)
        self.group_size.record(size)

    def answered(
        self, submission: Submission | None, commands: Sequence[Any], answers: Sequence[Any]
    ) -> None:
        """Count each answer by type and outcome, and end the submission's span."""
        if submission is None:
            return
        elapsed = time.perf_counter() - submission.started
        group: GroupTrace | None = getattr(self._group, "current", None)
        outcomes: list[str] = []
        for command, answer in zip(commands, answers, strict=False):
            outcome = outcome_of(answer)
            outcomes.append(outcome)
            labels = {"tally.command": command.name, "tally.outcome": outcome}
            if outcome in ("refused", "failed"):
                labels["tally.reason"] = answer.reason
            self.commands.add(1, labels)
            self.command_duration.record(elapsed, labels)
            if outcome == "replayed":
                self.replays.add(1, {"tally.command": command.name})
        span = submission.span
        if span.is_recording():
            span.set_attribute("tally.outcome", _one_outcome(outcomes))
            if group is not None:
                span.set_attribute("tally.group.size", group.size)
                span.set_attribute("tally.retries", group.retries)
            if len(answers) == 1 and outcome_of(answers[0]) in ("refused", "failed"):
                span.set_attribute("tally.reason", answers[0].reason)
        span.end()

    def failed(
        self, submission: Submission | None, commands: Sequence[Any], error: Exception
    ) -> None:
        """The whole group failed (the database went away, a bug): no answer but the error."""
        if submission is None:
            return
        for command in commands:
            self.commands.add(1, {"tally.command": command.name, "tally.outcome": "error"})
        submission.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        submission.span.end()

    # ------------------------------------------------------------------ the event store

    @contextmanager
    def store_write(
        self, events: int, requests: int, requests_table: str
    ) -> Iterator[Callable[[Sequence[int]], None]]:
        """One event-store transaction, under the current group; yields a function to call
        with the positions it was given. A unique-id violation counts as a write conflict
        (and a retry of the group): on a request record (`tally.conflict=request_id`, a
        retried request the group did not look for) or on an account's event (`account`,
        another writer of it)."""
        started = time.perf_counter()
        with self.tracer.start_as_current_span("tally.event_store.write") as span:
            span.set_attribute("tally.events", events)
            span.set_attribute("tally.requests", requests)

            def written(positions: Sequence[int]) -> None:
                if positions:
                    span.set_attribute("tally.position", max(positions))
                    if self.tracing:
                        self._writes.remember(positions, span.get_span_context())

            outcome = "ok"
            try:
                yield written
            except IntegrityError as error:
                outcome = "conflict"
                # A recorder's own kind of conflict names itself (ProgramChanged: "program").
                on = getattr(error, "conflict_on", None) or (
                    "request_id" if requests_table in str(error) else "account"
                )
                self.conflicts.add(1, {"tally.conflict": on})
                span.set_attribute("tally.conflict", on)
                group: GroupTrace | None = getattr(self._group, "current", None)
                if group is not None:
                    group.retries += 1
                span.set_attribute("tally.outcome", outcome)
                raise
            except Exception:
                outcome = "error"
                raise
            finally:
                self.write_duration.record(
                    time.perf_counter() - started, {"tally.outcome": outcome}
                )

    # ------------------------------------------------------------------ projections

    @contextmanager
    def projection_batch(self, projection: str, batch: Sequence[tuple[int, Any]]) -> Iterator[None]:
        """One projected batch (events, the position it ends at), linked to the writes that
        made its events; afterwards, how long its oldest event waited."""
        links = self._writes.links(p for p, _ in batch) if self.tracing else []
        with self.tracer.start_as_current_span(
            "tally.projection.batch",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            links=links,
        ) as span:
            span.set_attribute("tally.projection", projection)
            span.set_attribute("tally.events", len(batch))
            span.set_attribute("tally.position", batch[-1][0])
            yield
        labels = {"tally.projection": projection}
        self.projection_events.add(len(batch), labels)
        recorded = getattr(batch[0][1], "timestamp", None)
        if isinstance(recorded, datetime):
            delay = (datetime.now(UTC) - recorded).total_seconds()
            self.projection_delay.record(max(0.0, delay), labels)

    # ------------------------------------------------------------------ RPCs

    def rpc_done(self, method: str, code: int, seconds: float) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self.rpc_duration.record(
            seconds,
            {
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": name,
                "rpc.grpc.status_code": code,
            },
        )

    # ------------------------------------------------------------------ observed

    def observe(
        self, head: Callable[[], int | None], positions: Callable[[], dict[str, int]]
    ) -> None:
        """Gauges read at collection time: the log's last position (`head`, a query) and
        each read model's position and backlog."""

        def log_position(_: CallbackOptions) -> Iterable[Observation]:
            last = _safely(head)
            return [] if last is None else [Observation(last)]

        def projection_positions(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(p, {"tally.projection": n}) for n, p in positions().items()]

        def projection_lag(_: CallbackOptions) -> Iterable[Observation]:
            last = _safely(head)
            if last is None:
                return []
            return [
                Observation(max(0, last - p), {"tally.projection": n})
                for n, p in positions().items()
            ]

        self.meter.create_observable_gauge(
            "tally.event_log.position", [log_position], "{event}", "The log's last position"
        )
        self.meter.create_observable_gauge(
            "tally.projection.position",
            [projection_positions],
            "{event}",
            "The last position each read model has applied",
        )
        self.meter.create_observable_gauge(
            "tally.projection.lag",
            [projection_lag],
            "{event}",
            "Events recorded that a read model has not applied yet",
        )


def outcome_of(answer: Any) -> str:
    """accepted, replayed (answered from its request record), refused (a domain rule, a
    reused key, a conflict that outlasted its retries) or failed (the server's own fault)."""
    if isinstance(answer, InternalFault):
        return "failed"
    if isinstance(answer, DomainError):
        return "refused"
    return "replayed" if getattr(answer, "replayed", False) else "accepted"


def _one_outcome(outcomes: list[str]) -> str:
    return outcomes[0] if len(set(outcomes)) == 1 else "mixed"


def _command_name(commands: Sequence[Any]) -> str:
    names = {x.name for x in commands}
    return names.pop() if len(names) == 1 else "Batch"


def _safely(read: Callable[[], int | None]) -> int | None:
    """A gauge whose database is away reports nothing rather than failing the collection."""
    try:
        return read()
    except Exception:
        return None


current = Instruments()


def install(instruments: Instruments) -> None:
    """Make these the instruments the core calls (Telemetry.start; tests)."""
    global current  # noqa: PLW0603 - the one switch between no-op and configured
    current = instruments


def uninstall(instruments: Instruments) -> None:
    """Back to no-op, unless someone else installed theirs since."""
    global current  # noqa: PLW0603 - see install
    if current is instruments:
        current = Instruments()
