"""The gRPC server: LedgerService, standard health (NOT_SERVING until migrations and
projections are ready), server reflection, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from ledger.api.audit_service import AuditServicer
from ledger.api.ledger_service import LedgerServicer
from ledger.runtime import Tally
from ledger.v1 import audit_pb2, audit_pb2_grpc, ledger_pb2, ledger_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAMES = (
    ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)


class InsecureListenAddress(ValueError):
    pass


def check_listen_address(listen: str) -> None:
    """Refuse a non-loopback address: no credentials can be configured yet."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InsecureListenAddress(
            f"refusing to listen on {listen}: it is not a loopback address and no client "
            "credentials (bearer tokens, TLS) are configured. Listen on 127.0.0.1 behind "
            "an authenticating proxy, or configure credentials."
        )


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: HealthServicer
    tally: Tally
    port: int
    executor: ThreadPoolExecutor

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await asyncio.get_running_loop().run_in_executor(None, self.tally.close)
        self.executor.shutdown(wait=False, cancel_futures=True)


async def start_server(tally: Tally, listen: str, workers: int = 16) -> RunningServer:
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ledger")
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.max_concurrent_streams", 1000),
        ]
    )
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(LedgerServicer(tally, executor), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(tally, executor), server)
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
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, tally.start)
    await loop.run_in_executor(None, tally.wait_ready, 60.0)
    for name in ("", *SERVICE_NAMES):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving on %s (database %s)", listen.rsplit(":", 1)[0] + f":{port}", tally.config.display
    )
    return RunningServer(server, health, tally, port, executor)


async def serve(database_url: str, listen: str, apply_migrations: bool = True) -> None:
    check_listen_address(listen)
    loop = asyncio.get_running_loop()
    tally = await loop.run_in_executor(
        None, lambda: Tally.from_url(database_url, apply_migrations=apply_migrations)
    )
    running = await start_server(tally, listen)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down: draining in-flight calls")
    await running.stop()
    log.info("stopped")
