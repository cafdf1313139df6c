"""What the two comparison servers share: a grpc.aio server with LedgerService and standard
health, on a loopback address, stopped by SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from ledger.v1 import ledger_pb2, ledger_pb2_grpc

SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name


def listen_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (loopback only)")


def require_loopback(listen: str) -> None:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"refusing to listen on {listen}: benchmarks servers are loopback-only")


async def serve_until_signalled(
    servicer: ledger_pb2_grpc.LedgerServiceServicer, listen: str
) -> None:
    require_loopback(listen)
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1000)])
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    print(f"serving on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await health.enter_graceful_shutdown()
    await server.stop(2)
