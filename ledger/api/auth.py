"""Who may call what (docs/security.md). STUB: the security work fills this in."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from ledger.api.server import ServeOptions


class Security:
    """Authentication and authorisation for one server: the interceptors it adds and the
    port it opens (TLS or not)."""

    enabled: bool = False

    @classmethod
    def from_options(cls, options: ServeOptions) -> Security:
        return cls()

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return []

    def add_port(self, server: grpc.aio.Server, listen: str) -> int:
        port: int = server.add_insecure_port(listen)
        return port
