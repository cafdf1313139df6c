"""Who may call what (docs/security.md, decision 22): the server's TLS port and the
interceptor that authenticates every call, checks the role its method needs and keeps a
credential inside its programmes. The rules themselves are data, in ledger/security."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ledger.api.errors import domain_status, to_grpc
from ledger.api.wrapping import rewrap
from ledger.domain import errors
from ledger.security.credentials import PROGRAM_ID, SecurityConfigError
from ledger.security.principal import CALLER, Principal
from ledger.security.reloading import ReloadingCredentials
from ledger.security.roles import MethodRule, Role, Scope, is_open, rule_for
from ledger.security.tokens import token_hash

if TYPE_CHECKING:
    from ledger.api.server import ServeOptions

log = logging.getLogger(__name__)
EVERY_ROLE = frozenset(Role)
NO_CREDENTIAL = (
    "this server needs a credential: send the metadata `authorization: Bearer <token>` "
    "(`ledger credentials create`; the ledger command line reads TALLY_TOKEN)"
)


@dataclass(frozen=True)
class TlsFiles:
    cert: bytes
    key: bytes
    client_ca: bytes | None  # mutual TLS when set

    @classmethod
    def read(cls, cert: str, key: str, client_ca: str) -> TlsFiles | None:
        if not (cert or key or client_ca):
            return None
        if not (cert and key):
            raise SecurityConfigError("TLS needs both --tls-cert and --tls-key")
        cert_pem, key_pem = _read(cert, "--tls-cert"), _read(key, "--tls-key")
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise SecurityConfigError(f"--tls-cert {cert}: not a PEM certificate") from None
        try:
            private_key = load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise SecurityConfigError(
                f"--tls-key {key}: not a PEM private key without a passphrase"
            ) from None
        # grpc would say only that it cannot listen (after its own lines on stderr).
        if private_key.public_key() != certificate.public_key():
            raise SecurityConfigError(
                f"--tls-key {key} is not the key of the certificate --tls-cert {cert}"
            )
        ca_pem = None
        if client_ca:
            ca_pem = _read(client_ca, "--tls-client-ca")
            try:
                x509.load_pem_x509_certificates(ca_pem)
            except ValueError:
                raise SecurityConfigError(
                    f"--tls-client-ca {client_ca}: not PEM certificates"
                ) from None
        return cls(cert_pem, key_pem, ca_pem)


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SecurityConfigError(f"{flag} {path}: {e.strerror}") from None


class Security:
    """Authentication and authorisation for one server: the interceptors it adds and the
    port it opens (TLS or not). Off (no interceptor) without a credentials file and without
    mutual TLS: loopback development only (server.check_listen_address)."""

    def __init__(
        self, credentials: ReloadingCredentials | None = None, tls: TlsFiles | None = None
    ) -> None:
        self.credentials = credentials
        self.tls = tls

    @property
    def enabled(self) -> bool:
        mutual_tls = self.tls is not None and self.tls.client_ca is not None
        return self.credentials is not None or mutual_tls

    @classmethod
    def from_options(cls, options: ServeOptions) -> Security:
        """Raises SecurityConfigError (one line) for a file that cannot be used."""
        tls = TlsFiles.read(options.tls_cert, options.tls_key, options.tls_client_ca)
        credentials = ReloadingCredentials(options.credentials) if options.credentials else None
        return cls(credentials, tls)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [AuthInterceptor(self)] if self.enabled else []

    def add_port(self, server: grpc.aio.Server, listen: str) -> int:
        if self.tls is None:
            port: int = server.add_insecure_port(listen)
            return port
        server_credentials = grpc.ssl_server_credentials(
            [(self.tls.key, self.tls.cert)],
            root_certificates=self.tls.client_ca,
            require_client_auth=self.tls.client_ca is not None,
        )
        secure_port: int = server.add_secure_port(listen, server_credentials)
        return secure_port

    def identify(self, context: grpc.aio.ServicerContext) -> Principal | str:
        """The caller, or why not (the UNAUTHENTICATED message). A bearer token, when sent,
        decides; otherwise the client certificate's subject (mutual TLS)."""
        authorization = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        if authorization:
            scheme, _, token = str(authorization[0]).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return "the authorization metadata must be `Bearer <token>`"
            found = self.credentials and self.credentials.current().by_token_hash(
                token_hash(token.strip())
            )
            return found.principal() if found else "unknown or revoked token"
        subject = client_subject(context)
        if subject is None:
            return NO_CREDENTIAL
        if self.credentials is None:  # mutual TLS alone: the CA vouches for every client
            return Principal(subject, EVERY_ROLE, None)
        found = self.credentials.current().by_subject(subject)
        return found.principal() if found else f"no credential for certificate subject {subject}"


def with_env_token(channel: grpc.Channel) -> grpc.Channel:
    """A client channel that sends TALLY_TOKEN as its bearer token, when that is set: for
    the `ledger` command's own clients (`ledger demo`)."""
    token = os.environ.get("TALLY_TOKEN", "").strip()
    if not token:
        return channel
    if not all("!" <= ch <= "~" for ch in token):
        # grpc would refuse the metadata itself, printing its own lines on stderr.
        raise SecurityConfigError(
            "TALLY_TOKEN holds a space, a line break or a character beyond ASCII: "
            "a token is printable ASCII only"
        )
    metadata = (("authorization", f"Bearer {token}"),)

    def add_token(details: Any, request: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *metadata)), request

    return grpc.intercept_channel(channel, _ClientMetadata(add_token))


class _ClientMetadata(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, rewrite: Callable[[Any, Any], tuple[Any, Any]]) -> None:
        self.rewrite = rewrite

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(*self.rewrite(details, request))


def client_subject(context: grpc.aio.ServicerContext) -> str | None:
    """The verified client certificate's subject (RFC 4514), or None without one."""
    pem = context.auth_context().get("x509_pem_cert")
    return _subject(pem[0]) if pem else None


@functools.lru_cache(maxsize=1024)
def _subject(pem: bytes) -> str:
    return x509.load_pem_x509_certificate(pem).subject.rfc4514_string()


def program_not_found(program_id: str) -> errors.ProgramNotFound:
    """Exactly what the servicers answer for a programme that does not exist (a test
    compares them byte for byte), so a credential cannot tell another's from none."""
    return errors.ProgramNotFound(f"program {program_id} does not exist", program_id=program_id)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps each method's handler, so that it sees the request (its program_id) before
    the servicer does, and sets the caller (ledger/security/principal.py) for the call."""

    def __init__(self, security: Security) -> None:
        self.security = security

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or is_open(method):
            return handler
        rule = rule_for(method)
        admit = functools.partial(self._admit, method, rule)
        wrapped = rewrap(
            handler, lambda inner: _unary(inner, admit), lambda inner: _stream(inner, admit)
        )
        if wrapped is None:
            raise RuntimeError(f"{method}: client-streaming methods are not classified")
        return wrapped

    async def _admit(
        self, method: str, rule: MethodRule | None, request: Any, context: grpc.aio.ServicerContext
    ) -> Principal:
        """The caller, if it may make this call; otherwise the call ends here."""
        caller = self.security.identify(context)
        if isinstance(caller, str):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, caller)
            raise AssertionError("unreachable")  # abort raises
        if rule is None:
            log.error("%s has no entry in ledger/security/roles.py: refused", method)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{method} is not open to any role yet"
            )
        assert rule is not None
        if rule.role not in caller.roles:
            log.warning("credential %s lacks role %s for %s", caller.name, rule.role, method)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"credential {caller.name} lacks the {rule.role} role that {method} needs",
            )
        refusal = _outside_scope(rule.scope, caller, request)
        if isinstance(refusal, errors.DomainError):
            await context.abort_with_status(to_grpc(domain_status(refusal)))
        elif refusal is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        return caller


def _outside_scope(
    scope: Scope, caller: Principal, request: Any
) -> errors.DomainError | str | None:
    """None when the request stays inside the caller's programmes; otherwise the NOT_FOUND
    of a programme that does not exist, or a PERMISSION_DENIED message. A malformed
    program_id passes: the servicer refuses it (INVALID_ARGUMENT), for any caller alike."""
    if caller.all_programs or scope is Scope.BY_RECORD:
        return None
    program_id = str(getattr(request, "program_id", ""))
    named = bool(PROGRAM_ID.fullmatch(program_id))
    if scope is Scope.WHOLE_LOG or (scope is Scope.PROGRAM_OR_ALL and not program_id):
        return f"credential {caller.name} is limited to some programmes: this covers all"
    if not named or caller.sees(program_id):
        return None
    if scope is Scope.CREATE:  # the same whether or not it exists: nothing leaks
        return f"credential {caller.name} may not create programme {program_id}"
    return program_not_found(program_id)


Admit = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Principal]]


def _unary(inner: Callable[..., Awaitable[Any]], admit: Admit) -> Callable[..., Awaitable[Any]]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = CALLER.set(await admit(request, context))
        try:
            return await inner(request, context)
        finally:
            CALLER.reset(token)

    return unary


def _stream(inner: Callable[..., AsyncIterator[Any]], admit: Admit) -> Callable[..., Any]:
    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        token = CALLER.set(await admit(request, context))
        try:
            async for item in inner(request, context):
                yield item
        finally:
            # Each call is its own task and context; a generator closed from elsewhere
            # cannot reset, and needs not.
            with suppress(ValueError):
                CALLER.reset(token)

    return stream
