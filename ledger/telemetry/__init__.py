"""OpenTelemetry for `ledger serve`: which providers, which exporters, and their lifetime.

Nothing is configured unless asked: without OTEL_EXPORTER_OTLP_ENDPOINT and without
`--metrics-port` there are no providers, no interceptors, no exporter thread, and the core's
calls (ledger/telemetry/instruments.py) go to the API's no-op providers. With the endpoint,
spans and metrics go by OTLP over HTTP/protobuf (the exporters read the standard OTEL_*
variables themselves); with `--metrics-port N`, Prometheus text on 127.0.0.1:N.

Tests give their own providers (in-memory exporters and readers) to `Telemetry(...)`; the
OpenTelemetry globals are never set, so nothing fights over them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from ledger.telemetry import instruments

# The SDK is imported only when something is configured: the core imports this package
# (for instruments.py), and a tool that never serves should not pay for the SDK.
if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from ledger.api.server import ServeOptions
    from ledger.runtime import Tally

log = logging.getLogger(__name__)
OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"


class Telemetry:
    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        owned: bool = False,
        closers: list[Callable[[], None]] | None = None,
    ) -> None:
        """`owned`: made by from_options, so shutdown() shuts the providers down; given
        ones (tests) are only flushed, and stay readable."""
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.owned = owned
        self._closers = closers or []
        self.instruments = instruments.Instruments(tracer_provider, meter_provider)
        self._installed = False

    @property
    def enabled(self) -> bool:
        return self.tracer_provider is not None or self.meter_provider is not None

    @classmethod
    def from_options(cls, options: ServeOptions) -> Telemetry:
        otlp = bool(os.environ.get(OTLP_ENDPOINT))
        if not otlp and not options.metrics_port:
            return cls()
        from opentelemetry.sdk.metrics import MeterProvider

        resource = _resource()
        tracer_provider = None
        readers: list[MetricReader] = []
        closers: list[Callable[[], None]] = []
        if otlp:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            tracer_provider = TracerProvider(resource=resource)
            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        if options.metrics_port:
            reader, close = _prometheus(options.metrics_port)
            readers.append(reader)
            closers.append(close)
        meter_provider = MeterProvider(metric_readers=readers, resource=resource)
        return cls(tracer_provider, meter_provider, owned=True, closers=closers)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Outermost first: the span (the grpc instrumentation's), then the RPC metrics."""
        found: list[grpc.aio.ServerInterceptor] = []
        if self.tracer_provider is not None:
            from opentelemetry.instrumentation.grpc import aio_server_interceptor

            spans = aio_server_interceptor(tracer_provider=self.tracer_provider)  # type: ignore[no-untyped-call]
            found.append(spans)
        if self.meter_provider is not None:
            from ledger.telemetry.rpc import RpcMetrics

            found.append(RpcMetrics())
        return found

    def start(self, tally: Tally) -> None:
        """Make the core's calls record here, and observe the log and the read models."""
        if not self.enabled:
            return
        recorder = tally.app.recorder

        def head() -> int | None:
            # Not once the Tally is closing: the library would retry a closed store for
            # seconds, and shutdown() collects one last time after the Tally has closed.
            return None if tally.closed else recorder.max_notification_id()

        self.instruments.observe(
            head=head,
            positions=lambda: {name: r.position for name, r in tally.projections.items()},
        )
        instruments.install(self.instruments)
        self._installed = True

    def shutdown(self) -> None:
        """Flush what is buffered (spans, the last metrics), then stop the exporters."""
        if self._installed:
            instruments.uninstall(self.instruments)
            self._installed = False
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is None:
                continue
            try:
                provider.force_flush()
                if self.owned:
                    provider.shutdown()
            except Exception:  # an unreachable collector must not fail the shutdown
                log.exception("telemetry could not be flushed")
        for close in self._closers:
            close()
        self._closers.clear()


def _resource() -> Resource:
    """The OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES resource; service.name "tally"
    unless they name one."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "tally"}))
    return resource


def _prometheus(port: int) -> tuple[MetricReader, Callable[[], None]]:
    """A reader into a registry of our own (not prometheus_client's global one), served on
    127.0.0.1:port by prometheus_client's HTTP server."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, start_http_server

    # The server's error for an address it cannot have (`ledger serve` prints it in one
    # line); imported here because the server module imports this one.
    from ledger.api.server import ListenAddressError

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    try:
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    except (OSError, OverflowError) as e:
        reader.shutdown()
        why = e.strerror if isinstance(e, OSError) else "not a port number"
        raise ListenAddressError(
            f"--metrics-port {port}: cannot serve metrics on 127.0.0.1:{port} ({why})"
        ) from None

    def close() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return reader, close
