"""The gRPC server: LedgerService, standard health (NOT_SERVING until migrations and
projections are ready), server reflection, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import multiprocessing
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from ledger.api.audit_service import AuditServicer
from ledger.api.auth import Security
from ledger.api.database_health import watch_database
from ledger.api.draining import Drain
from ledger.api.insights_service import InsightsServicer
from ledger.api.ledger_service import LedgerServicer
from ledger.api.report_service import ReportServicer
from ledger.api.routed_services import RoutedServices
from ledger.collector import freeze_survivors
from ledger.infrastructure.database import parse_database_url
from ledger.infrastructure.migrations import migrate
from ledger.projector import Projectors, opened_with_projector, sqlite_refusal
from ledger.relay import Relay
from ledger.routing import load_routes
from ledger.runtime import DEFAULT_CACHE_ACCOUNTS, RoutedTally, Tally
from ledger.telemetry import Telemetry
from ledger.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    insights_pb2,
    insights_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)

log = logging.getLogger(__name__)
# Resource limits (docs/security.md): no request, and no number of them, makes the server
# hold unbounded memory. A message above the cap is refused by grpc (RESOURCE_EXHAUSTED);
# calls above MAX_CONCURRENT_RPCS are refused at once rather than queued without end.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_STREAMS_PER_CONNECTION = 1000
MAX_CONCURRENT_RPCS = 4096
SERVICE_NAMES = (
    ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    report_pb2.DESCRIPTOR.services_by_name["ReportService"].full_name,
    insights_pb2.DESCRIPTOR.services_by_name["InsightsService"].full_name,
)


class ListenAddressError(ValueError):
    """`--listen` is not HOST:PORT, or that port cannot be had."""


class InsecureListenAddress(ListenAddressError):
    pass


@dataclass(frozen=True)
class ServeOptions:
    """Everything `ledger serve` is told, by its flags or the TALLY_* environment."""

    database_url: str = "sqlite:///ledger.db"
    listen: str = "127.0.0.1:50051"
    apply_migrations: bool = True
    share_port: bool = False  # several processes on one port (SO_REUSEPORT)
    # A credentials file turns authentication on (ledger/api/auth.py, docs/security.md).
    credentials: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # mutual TLS: clients must present a certificate this CA signed
    metrics_port: int = 0  # Prometheus text on 127.0.0.1:<port>; 0 is none
    report_database: str = ""  # a replica the reports read (docs/operations.md)
    routes: str = ""  # a routing table placing programmes on other clusters
    nats: str = ""  # relay every event to NATS JetStream at this URL (ledger/relay.py)
    # SIGTERM: stop accepting, give in-flight calls this long, then flush and exit.
    grace_seconds: float = 10.0
    # Who writes the read models (decision 31): "inline", this process's threads; "process",
    # a `ledger project` child that serve starts, restarts and stops; "" (the command
    # line's default), process on PostgreSQL and inline on SQLite or with --routes;
    # "follow", a projections process started by someone else (--processes's children).
    projections: str = "inline"
    # With projections "process": how many `ledger project` children share the read models
    # (ledger/projector.py read_model_groups, decision 38).
    projector_processes: int = 2
    # Accounts the writer keeps decided state of (ledger/application/group_commit.py).
    cache_accounts: int = DEFAULT_CACHE_ACCOUNTS


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) -> (host, port); anything else is refused, never guessed
    (grpc would read "127.0.0.1" as port 443 and "127.0.0.1:99999" as some other port)."""
    host, colon, port = listen.rpartition(":")
    host = host.strip("[]")
    if not colon or not host:
        raise ListenAddressError(
            f"--listen {listen!r}: give HOST:PORT, for example 127.0.0.1:50051"
        )
    if not port.isdigit() or int(port) > 65535:
        raise ListenAddressError(f"--listen {listen!r}: the port must be a number from 0 to 65535")
    return host, int(port)


def check_listen_address(listen: str, authenticated: bool = False) -> None:
    """Refuse a malformed address, and a non-loopback one unless clients must authenticate
    (a credentials file, or mutual TLS)."""
    host, _ = parse_listen(listen)
    if authenticated or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InsecureListenAddress(
            f"refusing to listen on {listen}: it is not a loopback address and no client "
            "credentials are configured. Give --credentials FILE (see `ledger credentials "
            "create`), or listen on 127.0.0.1 behind an authenticating proxy."
        )


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: HealthServicer
    tally: Tally
    port: int
    executor: ThreadPoolExecutor
    telemetry: Telemetry = field(default_factory=Telemetry)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    relay: Relay | None = None
    drain: Drain = field(default_factory=Drain)

    async def stop(self, grace: float = 5.0) -> None:
        """Health NOT_SERVING; new calls refused UNAVAILABLE while the taken ones finish (up
        to `grace` seconds: ledger/api/draining.py); then grpc stops, the writers and
        projections stop, the relay hands its last events over, telemetry is flushed."""
        await self.health.enter_graceful_shutdown()
        await self.drain.wait_idle(grace)
        await self.server.stop(0.5)
        for task in self.background:
            task.cancel()
        loop = asyncio.get_running_loop()
        if self.relay is not None:
            await self.relay.stop()
        await loop.run_in_executor(None, self.tally.close)
        self.executor.shutdown(wait=False, cancel_futures=True)
        await loop.run_in_executor(None, self.telemetry.shutdown)


def check_port_free(listen: str) -> None:
    """A port another program (or another `ledger serve`) holds is refused in one line,
    before anything starts: without this, the server would fail deep inside grpc."""
    host, port = parse_listen(listen)
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ListenAddressError(
                    f"port {port} on {host} is already in use (another `ledger serve`?): "
                    "stop it, or give another --listen"
                ) from None
            raise ListenAddressError(f"cannot listen on {listen}: {e.strerror}") from None


async def start_server(
    tally: Tally,
    listen: str,
    workers: int = 16,
    share_port: bool = False,
    options: ServeOptions | None = None,
    telemetry: Telemetry | None = None,
) -> RunningServer:
    """`share_port`: several server processes listen on one port (`ledger serve --processes`,
    SO_REUSEPORT: the kernel spreads connections between them). Off otherwise, so that a
    second server on a busy port fails instead of silently sharing it. `telemetry`: given
    (tests, with in-memory readers) or made from the options."""
    options = replace(options or ServeOptions(), listen=listen, share_port=share_port)
    security = Security.from_options(options)
    telemetry = telemetry or Telemetry.from_options(options)
    drain = Drain()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ledger")
    server = grpc.aio.server(
        # Outermost first: draining refuses before anything runs; a span covers the rest of
        # the call, a refused credential included.
        interceptors=[drain, *telemetry.interceptors(), *security.interceptors()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            ("grpc.so_reuseport", 1 if share_port else 0),
        ],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    _add_services(server, tally, executor)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", *SERVICE_NAMES):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    try:
        port = security.add_port(server, listen)
    except RuntimeError:
        port = 0
    if port == 0:
        check_port_free(listen)  # says why, if it can
        raise ListenAddressError(f"cannot listen on {listen}")
    await server.start()
    try:
        relay = await _start_parts(tally, options, telemetry)
    except BaseException:
        # Stopped here, on its loop: left to the garbage collector, grpc would complain
        # after the loop closed, below the one line that says what went wrong.
        await server.stop(0)
        raise
    for name in ("", *SERVICE_NAMES):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    # NOT_SERVING while the database cannot be reached, SERVING again when it can.
    background = [asyncio.create_task(watch_database(tally, health, ("", *SERVICE_NAMES)))]
    log.info(
        "serving on %s (database %s)", listen.rsplit(":", 1)[0] + f":{port}", tally.config.display
    )
    return RunningServer(server, health, tally, port, executor, telemetry, background, relay, drain)


async def _start_parts(tally: Tally, options: ServeOptions, telemetry: Telemetry) -> Relay | None:
    """Writers, projections (ready: caught up), telemetry, the relay."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, tally.start)
    await loop.run_in_executor(None, tally.wait_ready, 60.0)
    telemetry.start(tally)
    relay = Relay.from_options(options, tally)
    if relay is not None:
        await relay.start()
    return relay


def _add_services(server: grpc.aio.Server, tally: Tally, executor: ThreadPoolExecutor) -> None:
    if isinstance(tally, RoutedTally):  # --routes: each call to its programme's cluster
        server.add_generic_rpc_handlers((RoutedServices(tally, executor),))
        return
    # The account-command RPCs are set on the class from ledger/api/descriptors.py, which the
    # generated stub's abstract methods cannot see.
    servicer = LedgerServicer(tally, executor)  # type: ignore[abstract]
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(servicer, server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(tally, executor), server)
    report_pb2_grpc.add_ReportServiceServicer_to_server(ReportServicer(tally, executor), server)
    insights_pb2_grpc.add_InsightsServiceServicer_to_server(
        InsightsServicer(tally, executor), server
    )


class ProjectionsOptionError(ValueError):
    """--projections with something it does not go with."""


def resolve_projections(options: ServeOptions) -> ServeOptions:
    """The options with `projections` decided: "" becomes process on PostgreSQL, inline on
    SQLite or with --routes; process on SQLite, or with --routes, is refused in one line."""
    mode = options.projections
    if mode not in ("", "inline", "process", "follow"):
        raise ProjectionsOptionError(f"--projections {mode!r} is not one of 'process', 'inline'")
    postgres = parse_database_url(options.database_url).dialect.several_processes
    if mode == "":
        mode = "process" if postgres and not options.routes else "inline"
    elif mode != "inline" and not postgres:
        raise sqlite_refusal(
            f"--projections {mode}", parse_database_url(options.database_url).display
        )
    elif mode != "inline" and options.routes:
        raise ProjectionsOptionError(
            f"--projections {mode} does not go with --routes yet (each cluster would need "
            "its own projections process): give --projections inline"
        )
    return replace(options, projections=mode)


async def serve(options: ServeOptions) -> None:
    security = Security.from_options(options)  # a bad credentials file fails here, first
    check_listen_address(options.listen, authenticated=security.enabled)
    if not options.share_port:
        check_port_free(options.listen)
    options = resolve_projections(options)
    loop = asyncio.get_running_loop()
    # From the start: a signal while starting up stops the server once it is up, gracefully,
    # instead of killing the process half-started.
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    # --projections process: the child that writes the read models (decision 31), started
    # now so that it imports while this process opens the database, and let go once that is
    # checked and migrated (a mistake is this process's one line, and the child says none).
    projector: Projectors | None = None
    if options.projections == "process":
        tally, projector = await loop.run_in_executor(
            None,
            lambda: opened_with_projector(
                options.database_url,
                lambda: open_tally(options),
                processes=options.projector_processes,
            ),
        )
    else:
        tally = await loop.run_in_executor(None, lambda: open_tally(options))
    try:
        running = await start_server(
            tally, options.listen, share_port=options.share_port, options=options
        )
    except BaseException:
        await loop.run_in_executor(None, tally.close)
        if projector is not None:
            await loop.run_in_executor(None, projector.stop)
        raise
    survivors = asyncio.create_task(freeze_survivors())
    await stopping.wait()
    log.info("shutting down: draining in-flight calls (up to %.0f s)", options.grace_seconds)
    survivors.cancel()
    await running.stop(options.grace_seconds)
    if projector is not None:  # after the drain: what was committed is projected
        await loop.run_in_executor(None, _stop_projector, projector)
    log.info("stopped")


def _stop_projector(projector: Projectors) -> bool:
    """Stop the projections processes; False if one did not exit 0."""
    code = projector.stop()
    if code not in (None, 0):
        log.error("a projections process exited %s on SIGTERM", code)
        return False
    return True


def open_tally(options: ServeOptions) -> Tally:
    """The server's Tally: one database, or with --routes one per cluster of the table.
    With `projections` process or follow, it follows the read models a `ledger project`
    writes."""
    kwargs: dict[str, Any] = {
        "apply_migrations": options.apply_migrations,
        "exclusive": "a `ledger serve`",
        "report_database": options.report_database,
        "cache_size": options.cache_accounts,
    }
    if options.routes:
        return RoutedTally(load_routes(options.routes, options.database_url), **kwargs)
    if options.projections in ("process", "follow"):
        kwargs["projection_mode"] = "follow"
    return Tally.from_url(options.database_url, **kwargs)


class ProcessesNeedPostgres(ValueError):
    """Several server processes need PostgreSQL: SQLite has one writing process."""


def serve_processes(options: ServeOptions, processes: int) -> int:
    """One server process per core, all on one port (SO_REUSEPORT): each has its own Python
    core, writer and caches. A command for an account another process has cached makes that
    process's next save of it conflict, and the group is re-run on fresh state (correct, at
    the cost of a round). Projections: with `projections` process, ONE `ledger project`
    child of this process writes them and every server process follows; inline, one server
    process writes them (the advisory lock), the others follow."""
    config = parse_database_url(options.database_url)
    if not config.dialect.several_processes:
        raise ProcessesNeedPostgres("--processes above 1 needs a PostgreSQL database")
    options = resolve_projections(options)
    if options.listen.rsplit(":", 1)[-1] == "0":
        raise ValueError("--processes above 1 needs a fixed port, not 0")
    check_listen_address(options.listen, authenticated=Security.from_options(options).enabled)
    check_port_free(options.listen)
    # Checked and migrated once here, so that a mistake is one line, not one per child.
    urls = [options.database_url]
    if options.routes:
        urls = [c.database_url for c in load_routes(options.routes, options.database_url).clusters]
    if options.apply_migrations:
        for url in urls:
            migrate(parse_database_url(url))
    child_options = replace(options, apply_migrations=False, share_port=True)
    projector = None
    if options.projections == "process":
        child_options = replace(child_options, projections="follow")
        projector = Projectors(options.database_url, options.projector_processes)
        projector.start()
        projector.go()  # migrated above
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_serve_child, args=(child_options,), name=f"server-{i}")
        for i in range(processes)
    ]
    for child in children:
        child.start()

    passed_on: set[int] = set()

    def stop(signum: int, _frame: object) -> None:
        passed_on.add(signum)
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.join()
    # After the servers drained: what they committed is projected.
    projected = _stop_projector(projector) if projector is not None else True
    # A child that died (a negative exit code: killed by a signal) fails the whole server,
    # except one that the SIGTERM passed on reached before it had set its handlers: it was
    # still starting (serve() sets them before it opens the port), so it never served.
    stopped = {-signal.SIGTERM} if signal.SIGTERM in passed_on else set()
    failed = [c for c in children if c.exitcode and c.exitcode not in stopped]
    return 1 if failed or not projected else 0


def _serve_child(options: ServeOptions) -> None:
    from ledger.cli import configure_logging  # a spawned process starts unconfigured

    configure_logging()
    asyncio.run(serve(options))
