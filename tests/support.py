"""Test support: real servers over loopback on each backend, and a thin client."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ledger.api.server import RunningServer, start_server
from ledger.runtime import Tally
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc

PG_HOST = os.environ.get("TALLY_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TALLY_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TALLY_TEST_PG_USER", "postgres")


def admin_conninfo() -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"


# Where a test's SQLite files may live when they need not survive the machine: tmpfs, on
# which fsync costs nothing (PRAGMA synchronous=FULL made each commit cost about 6 ms on this
# machine's disk). None: the default temporary folder.
MEMORY_FOLDER = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@contextmanager
def scratch_postgres(durable: bool = True, copy_of: str = "") -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped afterwards. Yields its URL.

    `durable=False`: its commits return before their WAL is flushed (synchronous_commit off
    for the database; about 4.5 ms a commit less here). Every session sees them all the same:
    only a crash of the PostgreSQL server could lose the last ones, and no test stops the
    shared server (the restart and failover tests run clusters of their own).
    `copy_of`: the URL of another scratch database (nobody connected to it), copied whole,
    sequences and all (CREATE DATABASE ... TEMPLATE)."""
    name = f"tally_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    template = f' TEMPLATE "{copy_of.rsplit("/", 1)[1]}"' if copy_of else ""
    with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{template}')
        if not durable:
            conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
            # WITH (FORCE): a process still stopping (a projector child, a pool reconnecting)
            # may connect between a terminate and the drop; FORCE does both at once.
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class ServerThread:
    """A real Tally gRPC server on 127.0.0.1:<free port>, its asyncio loop on a thread."""

    def __init__(self, database_url: str, lot_sweep_interval: float = 60.0) -> None:
        """`lot_sweep_interval`: the behaviour suite sets it long, so that the scheduled lot
        sweep never races a test that counts what RunExpiry expires."""
        self.database_url = database_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tally = Tally.from_url(database_url)
        self.tally.sweeper.lot_interval = lot_sweep_interval
        self.running: RunningServer = asyncio.run_coroutine_threadsafe(
            start_server(self.tally, "127.0.0.1:0"), self.loop
        ).result(timeout=60)
        self.port = self.running.port
        self.target = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(grace=1), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class Refusal:
    code: grpc.StatusCode
    message: str
    reason: str
    fields: dict[str, str]


def refusal(error: grpc.RpcError) -> Refusal:
    """Decode a rich google.rpc.Status from a failed call."""
    status = rpc_status.from_call(error)
    reason = ""
    fields: dict[str, str] = {}
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields.update({v.field: v.description for v in bad.field_violations})
    return Refusal(error.code(), error.details() or "", reason, fields)


def ts(moment: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(moment.astimezone(UTC))
    return t


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Client:
    """LedgerService with defaults filled in: unique request ids, a program of one's own."""

    def __init__(self, target: str, backend: str) -> None:
        self.target = target
        self.backend = backend
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.LedgerServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def create_program(self, **fields: Any) -> str:
        program_id = fields.pop("program_id", new_id("prog"))
        request = pb.CreateProgramRequest(
            program_id=program_id,
            display_name=fields.pop("display_name", "Test programme"),
            currency=fields.pop("currency", "EUR"),
            request_id=fields.pop("request_id", new_id("req")),
            **fields,
        )
        self.stub.CreateProgram(request, timeout=30)
        return str(program_id)

    def program(self, program_id: str) -> pb.Program:
        response = self.stub.GetProgram(pb.GetProgramRequest(program_id=program_id), timeout=30)
        program: pb.Program = response.program
        return program

    def update_program(self, program_id: str, **fields: Any) -> pb.UpdateProgramResponse:
        fields.update(program_id=program_id)
        return self._call("UpdateProgram", pb.UpdateProgramRequest, fields)  # type: ignore[no-any-return]

    def enroll(self, program_id: str, member_id: str | None = None, **fields: Any) -> str:
        member_id = member_id or new_id("mem")
        self.stub.EnrollMember(
            pb.EnrollMemberRequest(
                program_id=program_id,
                member_id=member_id,
                request_id=fields.pop("request_id", new_id("req")),
                **fields,
            ),
            timeout=30,
        )
        return member_id

    def member(self, **program_fields: Any) -> tuple[str, str]:
        program_id = self.create_program(**program_fields)
        return program_id, self.enroll(program_id)

    def _call(self, name: str, request_type: Any, fields: dict[str, Any]) -> Any:
        fields.setdefault("request_id", new_id("req"))
        return getattr(self.stub, name)(request_type(**fields), timeout=30)

    def earn(self, program_id: str, member_id: str, points: int, **f: Any) -> pb.EarnResponse:
        f.setdefault("store_id", "store-1")
        f.update(program_id=program_id, member_id=member_id, points=points)
        return self._call("Earn", pb.EarnRequest, f)  # type: ignore[no-any-return]

    def redeem(self, program_id: str, member_id: str, points: int, **f: Any) -> pb.RedeemResponse:
        f.setdefault("store_id", "store-1")
        f.update(program_id=program_id, member_id=member_id, points=points)
        return self._call("Redeem", pb.RedeemRequest, f)  # type: ignore[no-any-return]

    def hold(self, program_id: str, member_id: str, points: int, **f: Any) -> pb.HoldResponse:
        f.update(program_id=program_id, member_id=member_id, points=points)
        return self._call("Hold", pb.HoldRequest, f)  # type: ignore[no-any-return]

    def capture(
        self, program_id: str, member_id: str, hold_id: str, points: int = 0, **f: Any
    ) -> pb.CaptureHoldResponse:
        f.update(program_id=program_id, member_id=member_id, hold_id=hold_id, points=points)
        return self._call("CaptureHold", pb.CaptureHoldRequest, f)  # type: ignore[no-any-return]

    def release(
        self, program_id: str, member_id: str, hold_id: str, **f: Any
    ) -> pb.ReleaseHoldResponse:
        f.update(program_id=program_id, member_id=member_id, hold_id=hold_id)
        return self._call("ReleaseHold", pb.ReleaseHoldRequest, f)  # type: ignore[no-any-return]

    def adjust(self, program_id: str, member_id: str, points: int, **f: Any) -> pb.AdjustResponse:
        f.setdefault("reason", "goodwill")
        f.setdefault("operator_id", "op-1")
        f.update(program_id=program_id, member_id=member_id, points=points)
        return self._call("Adjust", pb.AdjustRequest, f)  # type: ignore[no-any-return]

    def reverse(
        self, program_id: str, member_id: str, transaction_id: str, points: int = 0, **f: Any
    ) -> pb.ReverseResponse:
        f.setdefault("store_id", "store-1")
        f.update(
            program_id=program_id, member_id=member_id, transaction_id=transaction_id, points=points
        )
        return self._call("Reverse", pb.ReverseRequest, f)  # type: ignore[no-any-return]

    def top_up(self, program_id: str, member_id: str, cash: int, **f: Any) -> pb.TopUpResponse:
        f.setdefault("store_id", "store-1")
        f.update(program_id=program_id, member_id=member_id, cash_minor=cash)
        return self._call("TopUp", pb.TopUpRequest, f)  # type: ignore[no-any-return]

    def spend(self, program_id: str, member_id: str, amount: int, **f: Any) -> pb.SpendResponse:
        f.setdefault("store_id", "store-1")
        f.update(program_id=program_id, member_id=member_id, amount_minor=amount)
        return self._call("Spend", pb.SpendRequest, f)  # type: ignore[no-any-return]

    def convert(
        self, program_id: str, member_id: str, points: int, **f: Any
    ) -> pb.ConvertPointsResponse:
        f.setdefault("store_id", "store-1")
        f.update(program_id=program_id, member_id=member_id, points=points)
        return self._call("ConvertPoints", pb.ConvertPointsRequest, f)  # type: ignore[no-any-return]

    def refund(
        self, program_id: str, member_id: str, transaction_id: str, amount: int = 0, **f: Any
    ) -> pb.ReverseResponse:
        """A Reverse by money: a Spend's refund, or a TopUp's cash-out."""
        f.setdefault("store_id", "store-1")
        f.update(
            program_id=program_id,
            member_id=member_id,
            transaction_id=transaction_id,
            amount_minor=amount,
        )
        return self._call("Reverse", pb.ReverseRequest, f)  # type: ignore[no-any-return]

    def stored_value(
        self, program_id: str, member_id: str, min_position: int = 0
    ) -> tuple[int, int]:
        """(cash, bonus) on the member's card, as GetAccount shows it."""
        account = self.account(program_id, member_id, min_position=min_position)
        return account.stored_value_cash_minor, account.stored_value_bonus_minor

    def run_expiry(self, program_id: str, **f: Any) -> pb.RunExpiryResponse:
        f.update(program_id=program_id)
        return self._call("RunExpiry", pb.RunExpiryRequest, f)  # type: ignore[no-any-return]

    def account(self, program_id: str, member_id: str, min_position: int = 0) -> pb.Account:
        response = self.stub.GetAccount(
            pb.GetAccountRequest(
                program_id=program_id, member_id=member_id, min_position=min_position
            ),
            timeout=30,
        )
        account: pb.Account = response.account
        return account

    def transactions(
        self, program_id: str, member_id: str, min_position: int = 0, **f: Any
    ) -> pb.ListTransactionsResponse:
        return self.stub.ListTransactions(  # type: ignore[no-any-return]
            pb.ListTransactionsRequest(
                program_id=program_id, member_id=member_id, min_position=min_position, **f
            ),
            timeout=30,
        )

    def lots(
        self, program_id: str, member_id: str, min_position: int = 0, include_closed: bool = False
    ) -> list[pb.Lot]:
        response = self.stub.ListLots(
            pb.ListLotsRequest(
                program_id=program_id,
                member_id=member_id,
                min_position=min_position,
                include_closed=include_closed,
            ),
            timeout=30,
        )
        return list(response.lots)


POLL_LIMIT_SECONDS = 10.0
POLL_INTERVAL_SECONDS = 0.05


def refused(call: Callable[[], object]) -> Refusal:
    """Run a call that must fail, and decode its rich status."""
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return refusal(failure.value)


def wait_past(moment: datetime) -> None:
    """Bounded wait until the wall clock (the server's too: same host) is past `moment`."""
    deadline = time.monotonic() + POLL_LIMIT_SECONDS
    while datetime.now(UTC) <= moment:
        assert time.monotonic() < deadline, f"the clock did not pass {moment} in time"
        time.sleep(POLL_INTERVAL_SECONDS)


def log_head(server: ServerThread) -> int:
    """The position of the newest event in the log (what a query must wait for)."""
    return int(server.tally.app.recorder.max_notification_id() or 0)


@dataclass(frozen=True)
class AccountState:
    account: pb.Account
    transaction_ids: list[str]


def account_state(client: Client, server: ServerThread, program: str, member: str) -> AccountState:
    """The account and its full history, once the projections caught up with the whole log."""
    head = log_head(server)
    account = client.account(program, member, min_position=head)
    history = client.transactions(program, member, min_position=head, page_size=1000)
    return AccountState(account, [t.transaction_id for t in history.transactions])


@contextmanager
def open_tally(backend: str, durable: bool = True, **options: Any) -> Iterator[Tally]:
    """A Tally (no server) on a scratch database of `backend`, closed afterwards.
    `durable=False`: commits that need not survive the machine (SQLite on MEMORY_FOLDER,
    PostgreSQL as scratch_postgres(durable=False)), for tests of many commits."""
    if backend == "sqlite":
        folder_of = None if durable else MEMORY_FOLDER
        with tempfile.TemporaryDirectory(prefix="tally-test-", dir=folder_of) as folder:
            tally = Tally.from_url(f"sqlite:///{Path(folder) / 'ledger.db'}", **options)
            try:
                yield tally
            finally:
                tally.close()
    else:
        with scratch_postgres(durable) as url:
            tally = Tally.from_url(url, **options)
            try:
                yield tally
            finally:
                tally.close()
