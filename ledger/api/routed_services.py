"""Every Tally service on a server whose programmes live on several clusters (`--routes`,
ledger/routing.py): one generic handler, built from the services' descriptors, deserialises
each call, reads its request's program_id, and hands the call to the servicer of that
programme's cluster. The servicers are the plain ones, one set per cluster; nothing in them
knows about routing. Interceptors (credentials, telemetry) wrap these handlers as any other.

Calls that name no programme (docs/scaling.md, decision 26):
- StreamEvents and VerifyChain without program_id mean "the whole log", and there is one log
  per cluster: INVALID_ARGUMENT on program_id (give one).
- CreateCheckpoint has no program_id: FAILED_PRECONDITION (each cluster's server writes its
  own checkpoints; `ledger audit checkpoint --database URL` writes one on demand).
- GetReconciliation and SignOffReconciliation name a reconciliation id: the cluster that has
  that run answers; if none has it, the default cluster answers (NOT_FOUND).
- Any other request with an empty program_id goes to the default cluster, whose servicer
  refuses it as it always does (INVALID_ARGUMENT, every bad field at once)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import psycopg
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from ledger.api.audit_service import AuditServicer
from ledger.api.errors import InvalidArgument, invalid_argument_status, to_grpc
from ledger.api.insights_service import InsightsServicer
from ledger.api.ledger_service import LedgerServicer
from ledger.api.report_service import ReportServicer
from ledger.domain import errors
from ledger.reconciliation_store import Reconciliations
from ledger.runtime import RoutedTally, Tally
from ledger.v1 import audit_pb2, insights_pb2, ledger_pb2, report_pb2

SERVICES: tuple[ServiceDescriptor, ...] = (
    ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"],
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
    report_pb2.DESCRIPTOR.services_by_name["ReportService"],
    insights_pb2.DESCRIPTOR.services_by_name["InsightsService"],
)
# Their program_id is an optional filter over the whole log, and each cluster has its own.
WHOLE_LOG = {"/ledger.v1.AuditService/StreamEvents", "/ledger.v1.AuditService/VerifyChain"}
BY_RECONCILIATION = {
    "/ledger.v1.ReportService/GetReconciliation",
    "/ledger.v1.ReportService/SignOffReconciliation",
}
NAME_A_PROGRAMME = "this server routes programmes to several databases: give program_id"

Servicers = dict[str, Any]  # service full name -> that service's servicer
Pick = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Servicers]]


def servicers_of(tally: Tally, executor: ThreadPoolExecutor) -> Servicers:
    """One cluster's servicers, the same ones a server without routing registers."""
    return {
        SERVICES[0].full_name: LedgerServicer(tally, executor),  # type: ignore[abstract]
        SERVICES[1].full_name: AuditServicer(tally, executor),
        SERVICES[2].full_name: ReportServicer(tally, executor),
        SERVICES[3].full_name: InsightsServicer(tally, executor),
    }


class RoutedServices(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no types
    def __init__(self, tally: RoutedTally, executor: ThreadPoolExecutor) -> None:
        self.table = tally.table
        self.executor = executor
        self.clusters = {name: servicers_of(t, executor) for name, t in tally.clusters.items()}
        self.reconciliations = {
            name: Reconciliations(t.database) for name, t in tally.clusters.items()
        }
        self._handlers = {
            f"/{service.full_name}/{method.name}": self._handler(service, method)
            for service in SERVICES
            for method in service.methods
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        """This call's handler; None for a method of another service (health, reflection)."""
        return self._handlers.get(handler_call_details.method)

    def _handler(self, service: ServiceDescriptor, method: MethodDescriptor) -> Any:
        if method.client_streaming:
            raise TypeError(f"{method.full_name} streams requests: routing has no rule for it")
        path = f"/{service.full_name}/{method.name}"
        request_type = GetMessageClass(method.input_type)
        response_type = GetMessageClass(method.output_type)
        pick = self._pick_for(path, method)
        name = method.name

        if method.server_streaming:

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                servicer = (await pick(request, context))[service.full_name]
                async for response in getattr(servicer, name)(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            servicer = (await pick(request, context))[service.full_name]
            return await getattr(servicer, name)(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )

    def _pick_for(self, path: str, method: MethodDescriptor) -> Pick:
        """How this method's calls find their cluster."""
        if path in BY_RECONCILIATION:
            return self._by_reconciliation
        if "program_id" not in method.input_type.fields_by_name:

            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Servicers:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{method.name} names no programme, and this server routes programmes to "
                    "several databases: each cluster's server writes its own checkpoints "
                    "(`ledger audit checkpoint --database URL` writes one now)",
                )
                raise AssertionError("abort returns by raising")

            return refuse
        whole_log = path in WHOLE_LOG

        async def by_program(request: Any, context: grpc.aio.ServicerContext) -> Servicers:
            if whole_log and not request.program_id:
                error = InvalidArgument([("program_id", NAME_A_PROGRAMME)])
                await context.abort_with_status(to_grpc(invalid_argument_status(error)))
            return self.clusters[self.table.cluster_of(request.program_id)]

        return by_program

    async def _by_reconciliation(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Servicers:
        """The cluster holding the run; ids are uuids, so at most one has it."""
        loop = asyncio.get_running_loop()
        if request.reconciliation_id:
            for name, runs in self.reconciliations.items():
                try:
                    await loop.run_in_executor(self.executor, runs.get, request.reconciliation_id)
                except errors.ReconciliationNotFound:
                    continue
                except psycopg.OperationalError:
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, f"cluster {name} cannot be reached"
                    )
                return self.clusters[name]
        return self.clusters[self.table.default.name]
