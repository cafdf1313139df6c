"""Graceful shutdown: stop taking calls, let the ones already taken finish.

grpc's own `server.stop(grace)` cancels calls that arrive during the grace period, and a
call cancelled after the client sent it leaves the client unsure whether it was applied.
Instead, on SIGTERM the server first drains: every new call is refused UNAVAILABLE at once,
before any of our code runs (a client retries it, with the same request_id, on another
process: nothing was applied), while the calls already inside a handler run to their end.
Only when none is left, or the grace period is over, does grpc stop the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from ledger.api.wrapping import rewrap

# Health and reflection keep answering while draining: a load balancer asking for health
# must hear NOT_SERVING, not an error.
_OPEN_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


class Drain(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Refuse new calls from now on; wait until the taken ones end (or `timeout`)."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        return rewrap(handler, self._unary, self._stream) or handler  # no client-streaming

    async def _refuse(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "the server is shutting down; nothing was done: retry (same request_id) elsewhere",
        )

    def _taken(self) -> None:
        self.active += 1
        self._idle.clear()

    def _done(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    def _unary(self, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.draining:
                await self._refuse(context)
            self._taken()
            try:
                return await inner(request, context)
            finally:
                self._done()

        return unary

    def _stream(self, inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if self.draining:
                await self._refuse(context)
            self._taken()
            try:
                async for item in inner(request, context):
                    yield item
                    if self.draining:
                        return  # a followed stream would never end: it ends here, cleanly
            finally:
                self._done()

        return stream
