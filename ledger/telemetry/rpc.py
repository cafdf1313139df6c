"""RPC metrics: every call's duration by method and status code (`rpc.server.duration`).

The grpc instrumentation's aio interceptor makes the spans but records no metrics, so this
thin interceptor does: it wraps each handler's behaviour, times it, and reads the status the
call ended with (an abort sets it on the context; an exception that escaped is UNKNOWN).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from ledger.api.wrapping import rewrap
from ledger.telemetry import instruments

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]


class RpcMetrics(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler  # no client-streaming RPCs here; unknown methods are grpc's
        method = handler_call_details.method
        return rewrap(
            handler, lambda inner: _unary(method, inner), lambda inner: _streaming(method, inner)
        )


def _unary(method: str, behaviour: Behaviour) -> Behaviour:
    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        failed = False
        try:
            return await behaviour(request, context)
        except BaseException:
            failed = True
            raise
        finally:
            instruments.current.rpc_done(method, _code(context, failed), _since(started))

    return timed


def _streaming(method: str, behaviour: Behaviour) -> Behaviour:
    async def timed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.perf_counter()
        failed = False
        try:
            async for response in behaviour(request, context):
                yield response
        except BaseException:
            failed = True
            raise
        finally:
            instruments.current.rpc_done(method, _code(context, failed), _since(started))

    return timed


def _code(context: grpc.aio.ServicerContext, failed: bool) -> int:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return int(code.value[0])
    if isinstance(code, int):
        return code
    return int((grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK).value[0])


def _since(started: float) -> float:
    return time.perf_counter() - started
