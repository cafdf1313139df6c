"""Credentials, roles, programme scope and TLS over real gRPC servers on loopback
(docs/security.md, decision 22): a credentials file, `start_server` with it, real channels
(insecure and TLS, mutual TLS with certificates made here), and `ledger serve` as a process
for the listen-address rules."""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
import pkgutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

import ledger.v1
from ledger.api.audit_service import MAX_OPEN_STREAMS
from ledger.api.auth import AuthInterceptor, Security
from ledger.api.server import RunningServer, ServeOptions, start_server
from ledger.cli import main as ledger_main
from ledger.runtime import Tally
from ledger.security.credentials import Credential, save
from ledger.security.roles import METHOD_RULES, Role
from ledger.security.tokens import new_token, token_hash
from ledger.v1 import audit_pb2, audit_pb2_grpc, report_pb2, report_pb2_grpc
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc
from tests.tls_certificates import Authority, Issued

ROOT = Path(__file__).resolve().parents[1]
# NOWHERE as long as B: a refusal for one is the other's with the name replaced, byte for byte.
A, A2, B, NOWHERE = "prog-a", "prog-a2", "prog-b", "prog-z"
EVERY = frozenset(Role)


def rid() -> str:
    return uuid.uuid4().hex


class SecureServer:
    """A real server with `options`, on a thread of its own, on a fresh SQLite file."""

    def __init__(self, folder: Path, options: ServeOptions) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tally = Tally.from_url(f"sqlite:///{folder}/ledger-{uuid.uuid4().hex[:6]}.db")
        self.running: RunningServer = asyncio.run_coroutine_threadsafe(
            start_server(self.tally, "127.0.0.1:0", options=options), self.loop
        ).result(timeout=60)
        self.target = f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(grace=1), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class Stubs:
    ledger: pb_grpc.LedgerServiceStub
    audit: audit_pb2_grpc.AuditServiceStub
    report: report_pb2_grpc.ReportServiceStub

    @classmethod
    def on(cls, channel: grpc.Channel) -> Stubs:
        return cls(
            pb_grpc.LedgerServiceStub(channel),
            audit_pb2_grpc.AuditServiceStub(channel),
            report_pb2_grpc.ReportServiceStub(channel),
        )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


Refused = tuple[grpc.StatusCode, str, bytes]


def refused(call: Callable[[], Any]) -> Refused:
    """The call's refusal: code, message and the google.rpc.Status bytes (its details)."""
    with pytest.raises(grpc.RpcError) as caught:
        _complete(call)
    error = caught.value
    status = rpc_status.from_call(error)
    return (
        error.code(),
        error.details() or "",
        b"" if status is None else status.SerializeToString(),
    )


def _complete(call: Callable[[], Any]) -> Any:
    result = call()
    if hasattr(result, "__iter__") and not hasattr(result, "SerializeToString"):
        return list(result)  # a stream, to its end
    return result


# ---------------------------------------------------------------------- the shared server

TOKENS: dict[str, str] = {}


def _credential(
    name: str, roles: frozenset[Role], programs: frozenset[str] | None, **more: str
) -> Credential:
    token = new_token()
    TOKENS[name] = token
    return Credential(name, roles, programs, token_sha256=token_hash(token), **more)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security")


@pytest.fixture(scope="module")
def credentials_file(folder: Path) -> Path:
    path = folder / "credentials.json"
    save(
        str(path),
        [
            _credential("root", EVERY, None),
            _credential("all-a", EVERY, frozenset({A, A2})),
            _credential("till-a", frozenset({Role.WRITER}), frozenset({A})),
            _credential("reader-a", frozenset({Role.READER}), frozenset({A})),
            _credential("auditor-a", frozenset({Role.AUDITOR}), frozenset({A})),
        ],
    )
    return path


@pytest.fixture(scope="module")
def server(folder: Path, credentials_file: Path) -> Iterator[SecureServer]:
    running = SecureServer(folder, ServeOptions(credentials=str(credentials_file)))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stubs(server: SecureServer) -> Iterator[Stubs]:
    with grpc.insecure_channel(server.target) as channel:
        yield Stubs.on(channel)


@dataclass
class World:
    runs: dict[str, str]  # programme -> a reconciliation run of it


@pytest.fixture(scope="module")
def world(stubs: Stubs) -> World:
    """Programmes A and B, a member with points and stored value in each, a stored
    reconciliation run of each, all made by the all-programmes credential."""
    root = bearer(TOKENS["root"])
    runs = {}
    for program in (A, B):
        stubs.ledger.CreateProgram(
            pb.CreateProgramRequest(
                program_id=program, display_name=program, currency="EUR", request_id=rid()
            ),
            metadata=root,
            timeout=30,
        )
        stubs.ledger.EnrollMember(
            pb.EnrollMemberRequest(program_id=program, member_id="m1", request_id=rid()),
            metadata=root,
            timeout=30,
        )
        stubs.ledger.Earn(
            pb.EarnRequest(
                program_id=program, member_id="m1", store_id="s1", points=100, request_id=rid()
            ),
            metadata=root,
            timeout=30,
        )
        run = stubs.report.ReconcileStatement(
            report_pb2.ReconcileStatementRequest(
                program_id=program, source="bank", request_id=rid()
            ),
            metadata=root,
            timeout=30,
        )
        runs[program] = run.reconciliation_id
    return World(runs)


# ---------------------------------------------------------------------- authentication


def test_a_call_without_a_token_is_unauthenticated_and_says_what_to_send(
    stubs: Stubs, world: World
) -> None:
    code, message, _ = refused(
        lambda: stubs.ledger.GetProgram(pb.GetProgramRequest(program_id=A), timeout=10)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in message


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", "Bearer tally_not-a-token-anyone-was-given"),),
        (("authorization", "Basic cm9vdDpyb290"),),
        (("authorization", "Bearer "),),
    ],
)
def test_an_unknown_or_malformed_token_is_unauthenticated(
    stubs: Stubs, world: World, metadata: tuple[tuple[str, str], ...]
) -> None:
    code, _, _ = refused(
        lambda: stubs.ledger.GetProgram(
            pb.GetProgramRequest(program_id=A), metadata=metadata, timeout=10
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_stay_open_without_a_token(server: SecureServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "ledger.v1.LedgerService" in services


# ---------------------------------------------------------------------- roles


@pytest.mark.parametrize(
    ("name", "call"),
    [
        (
            "reader-a",
            lambda s, m: s.ledger.Earn(
                pb.EarnRequest(
                    program_id=A, member_id="m1", store_id="s1", points=1, request_id=rid()
                ),
                metadata=m,
                timeout=10,
            ),
        ),
        (
            "till-a",
            lambda s, m: s.ledger.Adjust(
                pb.AdjustRequest(
                    program_id=A,
                    member_id="m1",
                    points=1,
                    reason="x",
                    operator_id="o",
                    request_id=rid(),
                ),
                metadata=m,
                timeout=10,
            ),
        ),
        (
            "till-a",
            lambda s, m: s.ledger.GetAccount(
                pb.GetAccountRequest(program_id=A, member_id="m1"), metadata=m, timeout=10
            ),
        ),
        (
            "reader-a",
            lambda s, m: s.report.GetLiabilities(
                report_pb2.GetLiabilitiesRequest(program_id=A), metadata=m, timeout=10
            ),
        ),
        (
            "auditor-a",
            lambda s, m: s.report.SignOffReconciliation(
                report_pb2.SignOffReconciliationRequest(
                    reconciliation_id="x", operator_id="o", request_id=rid()
                ),
                metadata=m,
                timeout=10,
            ),
        ),
        (
            "till-a",
            lambda s, m: s.audit.StreamEvents(
                audit_pb2.StreamEventsRequest(program_id=A), metadata=m, timeout=10
            ),
        ),
    ],
)
def test_a_role_that_may_not_is_permission_denied(
    stubs: Stubs, world: World, name: str, call: Callable[[Stubs, Any], Any]
) -> None:
    code, message, _ = refused(lambda: call(stubs, bearer(TOKENS[name])))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert name in message


def test_each_role_does_what_it_is_for_in_its_programme(stubs: Stubs, world: World) -> None:
    earned = stubs.ledger.Earn(
        pb.EarnRequest(program_id=A, member_id="m1", store_id="s1", points=7, request_id=rid()),
        metadata=bearer(TOKENS["till-a"]),
        timeout=10,
    )
    account = stubs.ledger.GetAccount(
        pb.GetAccountRequest(program_id=A, member_id="m1", min_position=earned.position),
        metadata=bearer(TOKENS["reader-a"]),
        timeout=10,
    )
    assert account.account.points_available == earned.account.points_available
    liabilities = stubs.report.GetLiabilities(
        report_pb2.GetLiabilitiesRequest(program_id=A),
        metadata=bearer(TOKENS["auditor-a"]),
        timeout=10,
    )
    assert liabilities.currency == "EUR"  # answered


# ---------------------------------------------------------------------- programme scope

# Each a valid request for programme `p`, called with a credential holding every role.
SCOPED_CALLS: dict[str, Callable[[Stubs, str, Any], Any]] = {
    "GetProgram": lambda s, p, m: s.ledger.GetProgram(
        pb.GetProgramRequest(program_id=p), metadata=m, timeout=10
    ),
    "UpdateProgram": lambda s, p, m: s.ledger.UpdateProgram(
        pb.UpdateProgramRequest(program_id=p, display_name="x", request_id="u1"),
        metadata=m,
        timeout=10,
    ),
    "GetAccount": lambda s, p, m: s.ledger.GetAccount(
        pb.GetAccountRequest(program_id=p, member_id="m1"), metadata=m, timeout=10
    ),
    "ListTransactions": lambda s, p, m: s.ledger.ListTransactions(
        pb.ListTransactionsRequest(program_id=p, member_id="m1"), metadata=m, timeout=10
    ),
    "Earn": lambda s, p, m: s.ledger.Earn(
        pb.EarnRequest(program_id=p, member_id="m1", store_id="s1", points=5, request_id="e1"),
        metadata=m,
        timeout=10,
    ),
    "Redeem": lambda s, p, m: s.ledger.Redeem(
        pb.RedeemRequest(program_id=p, member_id="m1", store_id="s1", points=5, request_id="r1"),
        metadata=m,
        timeout=10,
    ),
    "GetAccountHistory": lambda s, p, m: s.audit.GetAccountHistory(
        audit_pb2.GetAccountHistoryRequest(program_id=p, member_id="m1"), metadata=m, timeout=10
    ),
    "StreamEvents": lambda s, p, m: s.audit.StreamEvents(
        audit_pb2.StreamEventsRequest(program_id=p), metadata=m, timeout=10
    ),
    "VerifyChain": lambda s, p, m: s.audit.VerifyChain(
        audit_pb2.VerifyChainRequest(program_id=p), metadata=m, timeout=10
    ),
    "ListPostings": lambda s, p, m: s.report.ListPostings(
        report_pb2.ListPostingsRequest(program_id=p), metadata=m, timeout=10
    ),
    "GetLiabilities": lambda s, p, m: s.report.GetLiabilities(
        report_pb2.GetLiabilitiesRequest(program_id=p), metadata=m, timeout=10
    ),
    "GetTrialBalance": lambda s, p, m: s.report.GetTrialBalance(
        report_pb2.GetTrialBalanceRequest(program_id=p), metadata=m, timeout=10
    ),
    "GetMovements": lambda s, p, m: s.report.GetMovements(
        report_pb2.GetMovementsRequest(program_id=p), metadata=m, timeout=10
    ),
    "ReconcileStatement": lambda s, p, m: s.report.ReconcileStatement(
        report_pb2.ReconcileStatementRequest(program_id=p, source="bank", request_id="rec1"),
        metadata=m,
        timeout=10,
    ),
}


@pytest.mark.parametrize("method", sorted(SCOPED_CALLS))
def test_another_programme_is_not_found_exactly_as_one_that_does_not_exist(
    stubs: Stubs, world: World, method: str
) -> None:
    """Programme A's credential on B gets, byte for byte, what the servicer answers the
    all-programmes credential for a programme that does not exist: it cannot tell B from
    nothing."""
    call = SCOPED_CALLS[method]
    on_b = refused(lambda: call(stubs, B, bearer(TOKENS["all-a"])))
    servicer_on_nothing = refused(lambda: call(stubs, NOWHERE, bearer(TOKENS["root"])))
    assert on_b[0] == grpc.StatusCode.NOT_FOUND
    assert on_b == (
        servicer_on_nothing[0],
        servicer_on_nothing[1].replace(NOWHERE, B),
        servicer_on_nothing[2].replace(NOWHERE.encode(), B.encode()),
    )
    assert (
        refused(lambda: call(stubs, NOWHERE, bearer(TOKENS["all-a"])))[1] == servicer_on_nothing[1]
    )


def test_a_batch_for_another_programme_is_refused_as_one_for_no_programme(
    stubs: Stubs, world: World
) -> None:
    """ExecuteBatch answers an unknown programme per command; the scope check refuses the
    whole call before any command is looked at, the same for B and for none."""

    def batch(program: str) -> Refused:
        request = pb.ExecuteBatchRequest(
            program_id=program,
            commands=[
                pb.BatchCommand(
                    earn=pb.EarnRequest(
                        program_id=program, member_id="m1", store_id="s1", points=1, request_id="b1"
                    )
                )
            ],
        )
        return refused(
            lambda: stubs.ledger.ExecuteBatch(request, metadata=bearer(TOKENS["all-a"]), timeout=10)
        )

    on_b, on_nothing = batch(B), batch(NOWHERE)
    assert on_b[0] == grpc.StatusCode.NOT_FOUND
    assert on_b[1:] == (
        on_nothing[1].replace(NOWHERE, B),
        on_nothing[2].replace(NOWHERE.encode(), B.encode()),
    )


def test_nothing_was_written_to_the_other_programme(stubs: Stubs, world: World) -> None:
    account = stubs.ledger.GetAccount(
        pb.GetAccountRequest(program_id=B, member_id="m1"),
        metadata=bearer(TOKENS["root"]),
        timeout=10,
    )
    assert account.account.points_available == 100
    assert (
        stubs.ledger.GetProgram(
            pb.GetProgramRequest(program_id=B), metadata=bearer(TOKENS["root"]), timeout=10
        ).program.display_name
        == B
    )


def test_an_all_programmes_credential_reaches_every_programme(stubs: Stubs, world: World) -> None:
    for program in (A, B):
        got = stubs.ledger.GetAccount(
            pb.GetAccountRequest(program_id=program, member_id="m1"),
            metadata=bearer(TOKENS["root"]),
            timeout=10,
        )
        assert got.account.program_id == program


def _stream_programs(stubs: Stubs, token: str) -> set[str]:
    events = stubs.audit.StreamEvents(
        audit_pb2.StreamEventsRequest(), metadata=bearer(token), timeout=10
    )
    return {e.program_id for e in events}


def test_a_stream_without_a_programme_shows_only_the_credentials_programmes(
    stubs: Stubs, world: World
) -> None:
    assert _stream_programs(stubs, TOKENS["auditor-a"]) == {A}
    assert _stream_programs(stubs, TOKENS["root"]) >= {A, B}


def test_another_programmes_reconciliation_is_not_found_and_cannot_be_signed_off(
    stubs: Stubs, world: World
) -> None:
    b_run = world.runs[B]
    nothing = str(uuid.uuid4())

    def get(run: str, token: str) -> Refused:
        request = report_pb2.GetReconciliationRequest(reconciliation_id=run)
        return refused(
            lambda: stubs.report.GetReconciliation(request, metadata=bearer(token), timeout=10)
        )

    on_b, on_nothing = get(b_run, TOKENS["auditor-a"]), get(nothing, TOKENS["root"])
    assert on_b[0] == grpc.StatusCode.NOT_FOUND
    assert on_b == (
        on_nothing[0],
        on_nothing[1].replace(nothing, b_run),
        on_nothing[2].replace(nothing.encode(), b_run.encode()),
    )
    sign_off = report_pb2.SignOffReconciliationRequest(
        reconciliation_id=b_run, operator_id="o", note="n", request_id=rid()
    )
    code, _, _ = refused(
        lambda: stubs.report.SignOffReconciliation(
            sign_off, metadata=bearer(TOKENS["all-a"]), timeout=10
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    still = stubs.report.GetReconciliation(
        report_pb2.GetReconciliationRequest(reconciliation_id=b_run),
        metadata=bearer(TOKENS["root"]),
        timeout=10,
    )
    assert still.signed_off_by == ""
    mine = stubs.report.GetReconciliation(
        report_pb2.GetReconciliationRequest(reconciliation_id=world.runs[A]),
        metadata=bearer(TOKENS["auditor-a"]),
        timeout=10,
    )
    assert mine.program_id == A


def test_create_program_outside_the_scope_is_denied_alike_for_existing_and_new(
    stubs: Stubs, world: World
) -> None:
    def create(program: str) -> Any:
        request = pb.CreateProgramRequest(
            program_id=program, display_name="x", currency="EUR", request_id=rid()
        )
        return stubs.ledger.CreateProgram(request, metadata=bearer(TOKENS["all-a"]), timeout=10)

    existing, new = refused(lambda: create(B)), refused(lambda: create("prog-c"))
    assert existing[0] == new[0] == grpc.StatusCode.PERMISSION_DENIED
    assert existing[1] == new[1].replace("prog-c", B)
    assert create(A2).program.program_id == A2  # inside the scope: made


def test_whole_log_calls_need_an_all_programmes_credential(stubs: Stubs, world: World) -> None:
    scoped = bearer(TOKENS["auditor-a"])
    calls: tuple[Callable[[Any], Any], ...] = (
        lambda m: stubs.audit.VerifyChain(audit_pb2.VerifyChainRequest(), metadata=m, timeout=30),
        lambda m: stubs.audit.CreateCheckpoint(
            audit_pb2.CreateCheckpointRequest(), metadata=m, timeout=30
        ),
    )
    for call in calls:
        assert refused(functools.partial(call, scoped))[0] == grpc.StatusCode.PERMISSION_DENIED
        call(bearer(TOKENS["root"]))  # allowed
    assert stubs.audit.VerifyChain(
        audit_pb2.VerifyChainRequest(program_id=A), metadata=scoped, timeout=30
    ).ok


# ---------------------------------------------------------------------- revocation


def test_a_revoked_token_is_refused_after_the_file_is_reloaded(
    stubs: Stubs, world: World, credentials_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        ledger_main(
            [
                "credentials",
                "create",
                "--credentials",
                str(credentials_file),
                "--name",
                "temp",
                "--roles",
                "reader",
                "--programs",
                A,
            ]
        )
        == 0
    )
    token = capsys.readouterr().out.splitlines()[-1]

    def ask() -> Any:
        return stubs.ledger.GetProgram(
            pb.GetProgramRequest(program_id=A), metadata=bearer(token), timeout=10
        )

    _eventually(lambda: _answers(ask))  # a new credential is picked up without a restart
    assert (
        ledger_main(
            ["credentials", "revoke", "--credentials", str(credentials_file), "--name", "temp"]
        )
        == 0
    )
    _eventually(lambda: not _answers(ask))
    assert refused(ask)[0] == grpc.StatusCode.UNAUTHENTICATED


def _answers(call: Callable[[], Any]) -> bool:
    try:
        call()
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise
        return False
    return True


def _eventually(condition: Callable[[], bool], limit: float = 15) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "not within the time limit"
        time.sleep(0.1)


# ---------------------------------------------------------------------- the method table


def _generated_services() -> list[Any]:
    """Every service of every generated module of ledger.v1, present and future."""
    services = []
    for module in pkgutil.iter_modules(ledger.v1.__path__):
        if module.name.endswith("_pb2"):
            found = importlib.import_module(f"ledger.v1.{module.name}")
            services.extend(found.DESCRIPTOR.services_by_name.values())
    return services


def test_every_method_of_every_generated_service_has_a_role() -> None:
    methods = {f"/{s.full_name}/{m.name}" for s in _generated_services() for m in s.methods}
    assert len(methods) > 30
    assert sorted(methods - METHOD_RULES.keys()) == []  # unclassified: add them to roles.py
    assert sorted(METHOD_RULES.keys() - methods) == []  # stale entries


def test_every_method_the_server_registers_has_a_role(server: SecureServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        names = [n for n in database.get_services() if n.startswith("ledger.")]
        assert len(names) >= 3
        unclassified = [
            f"/{n}/{m.name}"
            for n in names
            for m in pool.FindServiceByName(n).methods
            if f"/{n}/{m.name}" not in METHOD_RULES
        ]
    assert unclassified == []


def test_an_unclassified_method_is_refused_at_runtime(folder: Path, credentials_file: Path) -> None:
    async def scenario() -> Refused:
        security = Security.from_options(ServeOptions(credentials=str(credentials_file)))
        server = grpc.aio.server(interceptors=[AuthInterceptor(security)])

        async def answer(request: bytes, context: Any) -> bytes:
            return b"answered"

        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "ledger.v1.FutureService",  # a service added without a rule
                    {"GetSomething": grpc.unary_unary_rpc_method_handler(answer)},
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/ledger.v1.FutureService/GetSomething")
                try:
                    await call(b"", metadata=bearer(TOKENS["root"]), timeout=10)
                except grpc.aio.AioRpcError as e:
                    return e.code(), e.details() or "", b""
                raise AssertionError("an unclassified method was answered")
        finally:
            await server.stop(0)

    code, message, _ = asyncio.run(scenario())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "GetSomething" in message


# ---------------------------------------------------------------------- resource limits


def test_open_event_streams_are_capped_per_server(
    stubs: Stubs, world: World, server: SecureServer
) -> None:
    root = bearer(TOKENS["root"])
    following = []
    try:
        for _ in range(MAX_OPEN_STREAMS):
            stream = stubs.audit.StreamEvents(
                audit_pb2.StreamEventsRequest(follow=True), metadata=root, timeout=60
            )
            next(stream)  # open: it streams
            following.append(stream)
        code, message, _ = refused(
            lambda: stubs.audit.StreamEvents(
                audit_pb2.StreamEventsRequest(follow=True), metadata=root, timeout=10
            )
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(MAX_OPEN_STREAMS) in message
        following.pop().cancel()

        def one_more() -> bool:
            stream = stubs.audit.StreamEvents(
                audit_pb2.StreamEventsRequest(follow=True), metadata=root, timeout=60
            )
            try:
                next(stream)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                return False
            following.append(stream)
            return True

        _eventually(one_more)  # a closed stream frees its place
    finally:
        for stream in following:
            stream.cancel()


# ---------------------------------------------------------------------- TLS and mutual TLS


@dataclass
class Pki:
    ca: Authority
    server: tuple[str, str]  # cert, key paths
    ca_path: str
    till: Issued  # a client certificate named in the credentials
    stranger: Issued  # signed by the CA, named nowhere
    foreign: Issued  # signed by another CA


@pytest.fixture(scope="module")
def pki(folder: Path) -> Pki:
    ca = Authority("Tally test CA")
    ca_path = folder / "ca.crt"
    ca_path.write_bytes(ca.cert_pem)
    return Pki(
        ca,
        ca.issue("127.0.0.1", server=True).write(folder, "server"),
        str(ca_path),
        ca.issue("till-9"),
        ca.issue("stranger"),
        Authority("Another CA").issue("till-9"),
    )


def tls_channel(target: str, pki: Pki, client: Issued | None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem,
        private_key=None if client is None else client.key_pem,
        certificate_chain=None if client is None else client.cert_pem,
    )
    return grpc.secure_channel(target, credentials)


def _create_programmes(channel: grpc.Channel, token: str) -> None:
    for program in (A, B):
        pb_grpc.LedgerServiceStub(channel).CreateProgram(
            pb.CreateProgramRequest(
                program_id=program, display_name=program, currency="EUR", request_id=rid()
            ),
            metadata=bearer(token),
            timeout=30,
        )


def test_mutual_tls_identifies_a_client_by_its_certificate_subject(
    folder: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(folder / "mtls-credentials.json")
    made = [
        ["--name", "root", "--roles", "writer,reader,auditor,admin", "--all-programs"],
        [
            "--name",
            "till-9",
            "--roles",
            "reader",
            "--programs",
            A,
            "--certificate-subject",
            # spelt with spaces: the file keeps the certificate's own spelling
            pki.till.subject.replace(",", ", "),
            "--no-token",
        ],
    ]
    printed = []
    for flags in made:
        assert ledger_main(["credentials", "create", "--credentials", path, *flags]) == 0
        printed.append(capsys.readouterr().out.splitlines())
    root = printed[0][-1]
    assert not printed[1][-1].startswith("tally_")  # --no-token: none made
    cert, key = pki.server
    server = SecureServer(
        folder,
        ServeOptions(credentials=path, tls_cert=cert, tls_key=key, tls_client_ca=pki.ca_path),
    )
    try:
        with tls_channel(server.target, pki, pki.till) as channel:
            _create_programmes(channel, root)  # a token decides over the certificate
            ledger = pb_grpc.LedgerServiceStub(channel)
            got = ledger.GetProgram(pb.GetProgramRequest(program_id=A), timeout=10)
            assert got.program.program_id == A
            code, _, _ = refused(
                lambda: ledger.GetProgram(pb.GetProgramRequest(program_id=B), timeout=10)
            )
            assert code == grpc.StatusCode.NOT_FOUND
            update = pb.UpdateProgramRequest(program_id=A, display_name="x", request_id=rid())
            code, _, _ = refused(lambda: ledger.UpdateProgram(update, timeout=10))
            assert code == grpc.StatusCode.PERMISSION_DENIED
        with tls_channel(server.target, pki, pki.stranger) as channel:
            call = pb_grpc.LedgerServiceStub(channel).GetProgram
            code, message, _ = refused(lambda: call(pb.GetProgramRequest(program_id=A), timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert "CN=stranger" in message
        for client in (pki.foreign, None):  # no handshake without a certificate the CA signed
            with tls_channel(server.target, pki, client) as channel:
                code, _, _ = refused(
                    functools.partial(
                        pb_grpc.LedgerServiceStub(channel).GetProgram,
                        pb.GetProgramRequest(program_id=A),
                        metadata=bearer(root),
                        timeout=10,
                    )
                )
                assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_mutual_tls_alone_admits_the_clients_the_ca_signed(folder: Path, pki: Pki) -> None:
    cert, key = pki.server
    server = SecureServer(
        folder, ServeOptions(tls_cert=cert, tls_key=key, tls_client_ca=pki.ca_path)
    )
    try:
        with tls_channel(server.target, pki, pki.stranger) as channel:
            created = pb_grpc.LedgerServiceStub(channel).CreateProgram(
                pb.CreateProgramRequest(
                    program_id=A, display_name=A, currency="EUR", request_id=rid()
                ),
                timeout=30,
            )
            assert created.program.program_id == A
    finally:
        server.stop()


def test_tls_without_client_certificates_takes_tokens(
    folder: Path, pki: Pki, credentials_file: Path
) -> None:
    cert, key = pki.server
    server = SecureServer(
        folder, ServeOptions(credentials=str(credentials_file), tls_cert=cert, tls_key=key)
    )
    try:
        with tls_channel(server.target, pki, None) as channel:
            _create_programmes(channel, TOKENS["root"])
            call = pb_grpc.LedgerServiceStub(channel).GetProgram
            assert refused(lambda: call(pb.GetProgramRequest(program_id=A), timeout=10))[0] == (
                grpc.StatusCode.UNAUTHENTICATED
            )
        with grpc.insecure_channel(server.target) as plain:
            call = pb_grpc.LedgerServiceStub(plain).GetProgram
            request = pb.GetProgramRequest(program_id=A)
            code, _, _ = refused(lambda: call(request, metadata=bearer(TOKENS["root"]), timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE  # not without TLS
    finally:
        server.stop()


# ---------------------------------------------------------------------- `ledger serve`


def _ledger(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """The `ledger` command of this tree, as a process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env["PYTHONPATH"] = str(ROOT)
    kwargs.setdefault("cwd", ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serving(
    port: int, channel: Callable[[str], grpc.Channel], process: subprocess.Popen[str]
) -> None:
    def up() -> bool:
        assert process.poll() is None, process.communicate()[1]
        try:
            with channel(f"127.0.0.1:{port}") as c:
                answer = health_pb2_grpc.HealthStub(c).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
        except grpc.RpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    _eventually(up, limit=60)


@pytest.mark.parametrize("authentication", ["credentials", "mutual-tls"])
def test_serve_listens_beyond_loopback_with_credentials_or_mutual_tls(
    folder: Path, pki: Pki, credentials_file: Path, authentication: str
) -> None:
    port = _free_port()
    cert, key = pki.server
    flags = (
        ["--credentials", str(credentials_file)]
        if authentication == "credentials"
        else ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", pki.ca_path]
    )
    database = f"sqlite:///{folder}/serve-{authentication}.db"
    process = _ledger("serve", "--listen", f"0.0.0.0:{port}", "--database", database, *flags)
    try:
        channel = (
            grpc.insecure_channel
            if authentication == "credentials"
            else functools.partial(tls_channel, pki=pki, client=pki.stranger)
        )
        _serving(port, channel, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--credentials", "missing.json"], "no credentials file missing.json"),
        (["--credentials", "{bad}"], "not JSON"),
        (["--tls-cert", "server.crt"], "TLS needs both --tls-cert and --tls-key"),
        (["--tls-cert", "server.crt", "--tls-key", "ca.crt"], "--tls-key"),
        (
            ["--tls-cert", "server.crt", "--tls-key", "stranger.key"],
            "--tls-key stranger.key is not the key of the certificate --tls-cert server.crt",
        ),
        (
            ["--listen", "0.0.0.0:1", "--tls-cert", "server.crt", "--tls-key", "server.key"],
            "not a loopback address",
        ),
    ],
)
def test_serve_refuses_unusable_security_files_in_one_line(
    folder: Path, pki: Pki, flags: list[str], expected: str
) -> None:
    (folder / "{bad}").write_text("{not json")
    pki.stranger.write(folder, "stranger")  # a key of another certificate than server.crt's
    process = _ledger("serve", "--database", f"sqlite:///{folder}/refused.db", *flags, cwd=folder)
    _, stderr = process.communicate(timeout=60)
    process.wait()
    assert process.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert expected in lines[0]


@pytest.mark.parametrize("token", ["abc\ndef", "t\u00f8ken", "two words"])
def test_demo_refuses_a_token_that_is_no_metadata_value_in_one_line(
    server: SecureServer,
    token: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TALLY_TOKEN", token)
    assert ledger_main(["demo", "--target", server.target]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "TALLY_TOKEN holds a space, a line break or a character beyond ASCII" in err[0]


def test_demo_says_in_one_line_that_the_server_wants_a_token_and_takes_tally_token(
    server: SecureServer,
    world: World,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TALLY_TOKEN", raising=False)
    assert ledger_main(["demo", "--target", server.target]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "UNAUTHENTICATED" in err[0]
    assert "TALLY_TOKEN" in err[0]
    monkeypatch.setenv("TALLY_TOKEN", TOKENS["root"])
    assert ledger_main(["demo", "--target", server.target]) == 0
