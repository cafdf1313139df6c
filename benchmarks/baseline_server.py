"""The hand-written baseline: the yardstick Tally is measured against.

The same ledger.v1 contract, only CreateProgram, EnrollMember, Earn, Redeem, TopUp, Spend and
ExecuteBatch (of Earns, not atomic), written the way one would write them by hand on
PostgreSQL with no event-sourcing library: one command (one batch) = one transaction on a
psycopg_pool connection.

    Earn:   UPDATE the account's balance row (takes its row lock)
            INSERT the transaction row (ON CONFLICT (program_id, request_id) DO NOTHING)
            COMMIT
    Redeem: SELECT the balance row ... FOR UPDATE, check the balance
            INSERT the transaction row (idempotency as above)
            UPDATE the balance row
            COMMIT
    TopUp:  UPDATE the account's stored-value balances (cash, bonus) on its row (row lock)
            INSERT the transaction row (idempotency as above)
            COMMIT
    Spend:  SELECT the balance row ... FOR UPDATE, check the stored value
            INSERT the transaction row (idempotency as above)
            UPDATE the balance row
            COMMIT
    Batch:  one set-based statement for all its valid items (EARN_BATCH): unnest the
            items' fields WITH ORDINALITY, drop the request_ids already recorded, lock
            the accounts in key order (concurrent batches cannot deadlock), UPDATE each
            by its items' sum, INSERT the transaction rows (balance_after and version by
            window functions over the member's items in batch order; idempotency as
            above) RETURNING them, and read the records of the request_ids seen before
            COMMIT

In a batch, an invalid item is answered INVALID_ARGUMENT without reaching SQL, and a
request_id repeated in the batch is answered from its first occurrence. If a concurrent
transaction recorded one of its request_ids after the statement's snapshot (its points were
added, its row not inserted), the batch is rolled back and run again.

A request_id seen before (the unique (program_id, request_id) constraint) rolls the
transaction back and answers with the recorded outcome; the same request_id for a different
request is refused (ALREADY_EXISTS), as Tally does. Transaction rows are the event history
(kind, delta, balance after); there is no read-model machinery beyond the balance row, no
lots, tiers or expiry. Stored value is two balances on the account row: a TopUp adds its cash
and the bonus it names (no schedule: unset is 0), a Spend splits its amount proportionally
(the cash part rounded down, as Tally's PROPORTIONAL split). Honest, not a strawman: prepared
statements (psycopg's default), a warm pool, async I/O on the server's event loop, fsync'd
commits (the server's defaults).

    python -m benchmarks.baseline_server --listen 127.0.0.1:50060 \
        --database postgresql://postgres@127.0.0.1:5432/baseline
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2
from psycopg import AsyncConnection, errors
from psycopg_pool import AsyncConnectionPool

from benchmarks.serving import listen_arg, serve_until_signalled
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc

NAMESPACE = uuid.UUID("7d8f3c1e-2b6a-4f0e-9a51-0c3e8d2f4b10")
MAX_AMOUNT = 10**15

SCHEMA = """
CREATE TABLE IF NOT EXISTS bl_programs (
    program_id text PRIMARY KEY,
    display_name text NOT NULL,
    currency text NOT NULL,
    request_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS bl_accounts (
    program_id text NOT NULL REFERENCES bl_programs,
    member_id text NOT NULL,
    points_available bigint NOT NULL DEFAULT 0,
    stored_value_cash_minor bigint NOT NULL DEFAULT 0,
    stored_value_bonus_minor bigint NOT NULL DEFAULT 0,
    version bigint NOT NULL DEFAULT 1,
    enrolled_at timestamptz NOT NULL,
    PRIMARY KEY (program_id, member_id)
);
CREATE TABLE IF NOT EXISTS bl_transactions (
    position bigserial PRIMARY KEY,
    program_id text NOT NULL,
    request_id text NOT NULL,
    transaction_id uuid NOT NULL,
    member_id text NOT NULL,
    kind text NOT NULL,
    points_delta bigint NOT NULL,
    balance_after bigint NOT NULL,
    cash_delta bigint NOT NULL DEFAULT 0,
    bonus_delta bigint NOT NULL DEFAULT 0,
    cash_after bigint NOT NULL DEFAULT 0,
    bonus_after bigint NOT NULL DEFAULT 0,
    version bigint NOT NULL,
    store_id text NOT NULL,
    order_ref text NOT NULL,
    payment_ref text NOT NULL DEFAULT '',
    reason text NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (program_id, request_id)
);
"""

INSERT_TRANSACTION = """
INSERT INTO bl_transactions (program_id, request_id, transaction_id, member_id, kind,
    points_delta, balance_after, version, store_id, order_ref, reason, occurred_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (program_id, request_id) DO NOTHING
RETURNING position
"""

INSERT_STORED_VALUE = """
INSERT INTO bl_transactions (program_id, request_id, transaction_id, member_id, kind,
    points_delta, balance_after, cash_delta, bonus_delta, cash_after, bonus_after, version,
    store_id, order_ref, payment_ref, reason, occurred_at)
VALUES (%s, %s, %s, %s, %s, 0, %s, %s, %s, %s, %s, %s, %s, %s, %s, '', %s)
ON CONFLICT (program_id, request_id) DO NOTHING
RETURNING position
"""

FIND_STORED_VALUE = """
SELECT t.kind, t.member_id, t.cash_delta, t.bonus_delta, t.position, t.transaction_id,
       t.balance_after, t.cash_after, t.bonus_after, t.version, a.enrolled_at
FROM bl_transactions t JOIN bl_accounts a USING (program_id, member_id)
WHERE t.program_id = %s AND t.request_id = %s
"""

FIND_TRANSACTION = """
SELECT t.kind, t.member_id, t.points_delta, t.position, t.transaction_id, t.balance_after,
       t.version, a.enrolled_at
FROM bl_transactions t JOIN bl_accounts a USING (program_id, member_id)
WHERE t.program_id = %s AND t.request_id = %s
"""


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Duplicate(Exception):
    """The request_id is recorded already: roll back and answer from the record."""


class Raced(Exception):
    """A batch item's request_id was recorded by a concurrent transaction after the batch's
    snapshot: its points were added but its row not inserted. Roll back and run again."""


BATCH_ATTEMPTS = 5

# One statement for a batch of Earns (parameters: one array per field, an item per index).
# Per item, in batch order: the new row's position, balance_after, version and the account's
# enrolled_at if it was written (or NULLs), then the FIND_TRANSACTION columns of the record
# its request_id already has (or NULLs). Neither, and the member's account was updated: a
# concurrent transaction recorded the request_id (Raced). Neither, and not updated: the
# member is not enrolled.
EARN_BATCH = """
WITH item AS MATERIALIZED (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::uuid[],
                         %s::text[], %s::text[], %s::text[], %s::timestamptz[])
        WITH ORDINALITY AS i(program_id, request_id, member_id, points, transaction_id,
                             store_id, order_ref, reason, occurred_at, ord)
),
recorded AS (
    SELECT i.ord, t.kind, t.member_id, t.points_delta, t.position, t.transaction_id,
           t.balance_after, t.version, a.enrolled_at
    FROM item i
    JOIN bl_transactions t USING (program_id, request_id)
    JOIN bl_accounts a ON a.program_id = t.program_id AND a.member_id = t.member_id
),
fresh AS (
    SELECT i.* FROM item i
    WHERE NOT EXISTS (SELECT FROM bl_transactions t
                      WHERE t.program_id = i.program_id AND t.request_id = i.request_id)
),
totals AS (
    SELECT program_id, member_id, sum(points)::bigint AS points, count(*) AS n
    FROM fresh GROUP BY program_id, member_id
),
locked AS MATERIALIZED (
    SELECT a.program_id, a.member_id
    FROM bl_accounts a JOIN totals t USING (program_id, member_id)
    ORDER BY a.program_id, a.member_id
    FOR NO KEY UPDATE OF a
),
updated AS (
    UPDATE bl_accounts a
    SET points_available = a.points_available + t.points, version = a.version + t.n
    FROM locked l JOIN totals t USING (program_id, member_id)
    WHERE a.program_id = l.program_id AND a.member_id = l.member_id
    RETURNING a.program_id, a.member_id, a.points_available - t.points AS balance_before,
              a.version - t.n AS version_before, a.enrolled_at
),
written AS (
    INSERT INTO bl_transactions (program_id, request_id, transaction_id, member_id, kind,
        points_delta, balance_after, version, store_id, order_ref, reason, occurred_at)
    SELECT f.program_id, f.request_id, f.transaction_id, f.member_id, 'earn', f.points,
           u.balance_before + sum(f.points) OVER w, u.version_before + row_number() OVER w,
           f.store_id, f.order_ref, f.reason, f.occurred_at
    FROM fresh f JOIN updated u USING (program_id, member_id)
    WINDOW w AS (PARTITION BY f.program_id, f.member_id ORDER BY f.ord)
    ORDER BY f.ord
    ON CONFLICT (program_id, request_id) DO NOTHING
    RETURNING program_id, request_id, position, balance_after, version
)
SELECT w.position, w.balance_after, w.version, u.enrolled_at,
       r.kind, r.member_id, r.points_delta, r.position, r.transaction_id, r.balance_after,
       r.version, r.enrolled_at
FROM item i
LEFT JOIN written w USING (program_id, request_id)
LEFT JOIN updated u ON u.program_id = i.program_id AND u.member_id = i.member_id
LEFT JOIN recorded r ON r.ord = i.ord
ORDER BY i.ord
"""


def _ts(moment: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(moment)
    return t


def _occurred(request: Any) -> datetime:
    if request.HasField("occurred_at"):
        moment: datetime = request.occurred_at.ToDatetime(tzinfo=UTC)
        return moment
    return datetime.now(UTC)


def _check(request: Any, *, points: bool = True) -> None:
    missing = [f for f in ("program_id", "member_id", "request_id") if not getattr(request, f)]
    if missing:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"required: {', '.join(missing)}")
    if points and request.points <= 0:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "points must be greater than 0")


def _error(code: grpc.StatusCode, message: str) -> pb.BatchResult:
    return pb.BatchResult(error=status_pb2.Status(code=code.value[0], message=message))


def _transaction_id(program_id: str, request_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{program_id}/{request_id}"))


def _account(
    program_id: str,
    member_id: str,
    balance: int,
    version: int,
    enrolled_at: datetime,
    cash: int = 0,
    bonus: int = 0,
) -> pb.Account:
    return pb.Account(
        program_id=program_id,
        member_id=member_id,
        points_available=balance,
        stored_value_cash_minor=cash,
        stored_value_bonus_minor=bonus,
        enrolled_at=_ts(enrolled_at),
        version=version,
    )


def _check_amount(field: str, value: int, *, zero: bool = False) -> None:
    if value < 0 or (value == 0 and not zero) or value > MAX_AMOUNT:
        low = "at least 0" if zero else "greater than 0"
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT, f"{field} must be {low} and at most {MAX_AMOUNT}"
        )


class StoredValueReplay:
    """The recorded outcome (a FIND_STORED_VALUE row) of a TopUp's or Spend's request_id."""

    def __init__(self, row: Sequence[Any], request: Any) -> None:
        (
            self.kind,
            self.member_id,
            self.cash,
            self.bonus,
            self.position,
            transaction_id,
            points,
            cash_after,
            bonus_after,
            version,
            enrolled,
        ) = row
        self.transaction_id = str(transaction_id)
        self.account = _account(
            request.program_id, self.member_id, points, version, enrolled, cash_after, bonus_after
        )

    def check(self, request: Any, kind: str, same: bool) -> None:
        if self.kind != kind or self.member_id != request.member_id or not same:
            raise Refused(
                grpc.StatusCode.ALREADY_EXISTS,
                f"request_id {request.request_id!r} was used for a different request",
            )


def _replayed(
    row: Sequence[Any], request: Any, kind: str, delta: int
) -> tuple[int, str, pb.Account]:
    """The recorded outcome (a FIND_TRANSACTION row) of this request's request_id."""
    r_kind, member_id, r_delta, position, transaction_id, balance, version, enrolled = row
    if (r_kind, member_id, r_delta) != (kind, request.member_id, delta):
        raise Refused(
            grpc.StatusCode.ALREADY_EXISTS,
            f"request_id {request.request_id!r} was used for a different request",
        )
    account = _account(request.program_id, member_id, balance, version, enrolled)
    return position, str(transaction_id), account


def _batch_earn(request: Any, transaction_id: str, row: Sequence[Any]) -> pb.BatchResult:
    """One item's answer from its EARN_BATCH row."""
    position, balance, version, enrolled_at = row[:4]
    if position is None:
        if row[4] is None:
            return _error(grpc.StatusCode.NOT_FOUND, f"member {request.member_id} is not enrolled")
        try:
            position, transaction_id, account = _replayed(row[4:], request, "earn", request.points)
        except Refused as e:
            return _error(e.code, e.message)
    else:
        account = _account(request.program_id, request.member_id, balance, version, enrolled_at)
    return pb.BatchResult(
        earn=pb.EarnResponse(
            transaction_id=transaction_id,
            position=position,
            account=account,
            lot_id=transaction_id,
        )
    )


class BaselineServicer(pb_grpc.LedgerServiceServicer):
    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self.pool = pool

    async def _refuse(self, context: Any, error: Refused) -> None:
        await context.abort(error.code, error.message)

    # ------------------------------------------------------------------ programs

    async def CreateProgram(self, request: Any, context: Any) -> pb.CreateProgramResponse:
        try:
            if not request.program_id or not request.request_id or not request.currency:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "program_id, currency and request_id are required",
                )
            async with self.pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    "INSERT INTO bl_programs (program_id, display_name, currency, request_id) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (program_id) DO NOTHING "
                    "RETURNING created_at",
                    (
                        request.program_id,
                        request.display_name,
                        request.currency,
                        request.request_id,
                    ),
                )
                row = await cur.fetchone()
                if row is None:
                    cur = await conn.execute(
                        "SELECT request_id, created_at FROM bl_programs WHERE program_id = %s",
                        (request.program_id,),
                    )
                    existing = await cur.fetchone()
                    if existing is None or existing[0] != request.request_id:
                        raise Refused(
                            grpc.StatusCode.ALREADY_EXISTS, f"program {request.program_id} exists"
                        )
                    row = (existing[1],)
        except Refused as e:
            await self._refuse(context, e)
            raise AssertionError("unreachable") from e
        created = _ts(row[0])
        return pb.CreateProgramResponse(
            program=pb.Program(
                program_id=request.program_id,
                display_name=request.display_name,
                currency=request.currency,
                time_zone=request.time_zone or "UTC",
                created_at=created,
                updated_at=created,
                version=1,
            ),
            transaction_id=_transaction_id(request.program_id, request.request_id),
        )

    # ------------------------------------------------------------------ members

    async def EnrollMember(self, request: Any, context: Any) -> pb.EnrollMemberResponse:
        try:
            _check(request, points=False)
            enrolled_at = _occurred(request)
            transaction_id = _transaction_id(request.program_id, request.request_id)
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    cur = await conn.execute(
                        "INSERT INTO bl_accounts (program_id, member_id, enrolled_at) "
                        "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING version",
                        (request.program_id, request.member_id, enrolled_at),
                    )
                    if await cur.fetchone() is None:
                        raise Duplicate
                    cur = await conn.execute(
                        INSERT_TRANSACTION,
                        (
                            request.program_id,
                            request.request_id,
                            transaction_id,
                            request.member_id,
                            "enroll",
                            0,
                            0,
                            1,
                            request.store_id,
                            "",
                            "",
                            enrolled_at,
                        ),
                    )
                    row = await cur.fetchone()
                    if row is None:
                        raise Duplicate
            except errors.ForeignKeyViolation:
                raise Refused(
                    grpc.StatusCode.NOT_FOUND, f"program {request.program_id} does not exist"
                ) from None
            except Duplicate:
                replay = await self._replay(request, "enroll", 0)
                if replay is None:
                    raise Refused(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"member {request.member_id} is already enrolled",
                    ) from None
                position, transaction_id, account = replay
                return pb.EnrollMemberResponse(
                    account=account, transaction_id=transaction_id, position=position
                )
        except Refused as e:
            await self._refuse(context, e)
            raise AssertionError("unreachable") from e
        return pb.EnrollMemberResponse(
            account=_account(request.program_id, request.member_id, 0, 1, enrolled_at),
            transaction_id=transaction_id,
            position=row[0],
        )

    # ------------------------------------------------------------------ points

    async def Earn(self, request: Any, context: Any) -> pb.EarnResponse:
        try:
            _check(request)
            transaction_id = _transaction_id(request.program_id, request.request_id)
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    cur = await conn.execute(
                        "UPDATE bl_accounts SET points_available = points_available + %s, "
                        "version = version + 1 WHERE program_id = %s AND member_id = %s "
                        "RETURNING points_available, version, enrolled_at",
                        (request.points, request.program_id, request.member_id),
                    )
                    account = await cur.fetchone()
                    if account is None:
                        raise Duplicate  # or not enrolled: _replay tells which
                    balance, version, enrolled_at = account
                    position = await self._record(
                        conn, request, transaction_id, "earn", request.points, balance, version
                    )
            except Duplicate:
                replay = await self._replay(request, "earn", request.points)
                if replay is None:
                    raise Refused(
                        grpc.StatusCode.NOT_FOUND, f"member {request.member_id} is not enrolled"
                    ) from None
                position, transaction_id, acct = replay
                return pb.EarnResponse(
                    transaction_id=transaction_id,
                    position=position,
                    account=acct,
                    lot_id=transaction_id,
                )
        except Refused as e:
            await self._refuse(context, e)
            raise AssertionError("unreachable") from e
        return pb.EarnResponse(
            transaction_id=transaction_id,
            position=position,
            account=_account(request.program_id, request.member_id, balance, version, enrolled_at),
            lot_id=transaction_id,
        )

    async def Redeem(self, request: Any, context: Any) -> pb.RedeemResponse:
        try:
            _check(request)
            transaction_id = _transaction_id(request.program_id, request.request_id)
            account: tuple[Any, ...] | None = None
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    cur = await conn.execute(
                        "SELECT points_available, version, enrolled_at FROM bl_accounts "
                        "WHERE program_id = %s AND member_id = %s FOR UPDATE",
                        (request.program_id, request.member_id),
                    )
                    account = await cur.fetchone()
                    if account is None or account[0] < request.points:
                        raise Duplicate  # or refused: _replay tells which
                    balance = account[0] - request.points
                    version = account[1] + 1
                    enrolled_at = account[2]
                    position = await self._record(
                        conn, request, transaction_id, "redeem", -request.points, balance, version
                    )
                    await conn.execute(
                        "UPDATE bl_accounts SET points_available = %s, version = %s "
                        "WHERE program_id = %s AND member_id = %s",
                        (balance, version, request.program_id, request.member_id),
                    )
            except Duplicate:
                replay = await self._replay(request, "redeem", -request.points)
                if replay is None:
                    if account is None:
                        raise Refused(
                            grpc.StatusCode.NOT_FOUND, f"member {request.member_id} is not enrolled"
                        ) from None
                    raise Refused(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"insufficient points: {account[0]} available",
                    ) from None
                position, transaction_id, acct = replay
                return pb.RedeemResponse(
                    transaction_id=transaction_id, position=position, account=acct
                )
        except Refused as e:
            await self._refuse(context, e)
            raise AssertionError("unreachable") from e
        return pb.RedeemResponse(
            transaction_id=transaction_id,
            position=position,
            account=_account(request.program_id, request.member_id, balance, version, enrolled_at),
        )

    # ------------------------------------------------------------------ stored value

    async def TopUp(self, request: Any, context: Any) -> pb.TopUpResponse:
        try:
            _check(request, points=False)
            _check_amount("cash_minor", request.cash_minor)
            if request.HasField("bonus_minor"):
                _check_amount("bonus_minor", request.bonus_minor, zero=True)
            cash, bonus = request.cash_minor, request.bonus_minor  # unset: 0
            transaction_id = _transaction_id(request.program_id, request.request_id)
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    cur = await conn.execute(
                        "UPDATE bl_accounts SET "
                        "stored_value_cash_minor = stored_value_cash_minor + %s, "
                        "stored_value_bonus_minor = stored_value_bonus_minor + %s, "
                        "version = version + 1 WHERE program_id = %s AND member_id = %s "
                        "RETURNING points_available, stored_value_cash_minor, "
                        "stored_value_bonus_minor, version, enrolled_at",
                        (cash, bonus, request.program_id, request.member_id),
                    )
                    row = await cur.fetchone()
                    if row is None:
                        raise Duplicate  # or not enrolled: _replay_stored_value tells which
                    points, cash_after, bonus_after, version, enrolled_at = row
                    position = await self._record_stored_value(
                        conn,
                        request,
                        transaction_id,
                        "top_up",
                        (cash, bonus),
                        (points, cash_after, bonus_after, version),
                    )
            except errors.NumericValueOutOfRange:
                raise Refused(
                    grpc.StatusCode.FAILED_PRECONDITION, "the stored value would pass int64"
                ) from None
            except Duplicate:
                replay = await self._replay_stored_value(request)
                if replay is None:
                    raise Refused(
                        grpc.StatusCode.NOT_FOUND, f"member {request.member_id} is not enrolled"
                    ) from None
                replay.check(request, "top_up", (replay.cash, replay.bonus) == (cash, bonus))
                return pb.TopUpResponse(
                    transaction_id=replay.transaction_id,
                    position=replay.position,
                    account=replay.account,
                    bonus_minor=replay.bonus,
                    cash_minor=replay.cash,
                )
        except Refused as e:
            await self._refuse(context, e)
            raise AssertionError("unreachable") from e
        return pb.TopUpResponse(
            transaction_id=transaction_id,
            position=position,
            account=_account(
                request.program_id,
                request.member_id,
                points,
                version,
                enrolled_at,
                cash_after,
                bonus_after,
            ),
            bonus_minor=bonus,
            cash_minor=cash,
        )

    async def Spend(self, request: Any, context: Any) -> pb.SpendResponse:
        try:
            _check(request, points=False)
            _check_amount("amount_minor", request.amount_minor)
            amount = request.amount_minor
            transaction_id = _transaction_id(request.program_id, request.request_id)
            account: tuple[Any, ...] | None = None
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    cur = await conn.execute(
                        "SELECT points_available, stored_value_cash_minor, "
                        "stored_value_bonus_minor, version, enrolled_at FROM bl_accounts "
                        "WHERE program_id = %s AND member_id = %s FOR UPDATE",
                        (request.program_id, request.member_id),
                    )
                    account = await cur.fetchone()
                    if account is None or account[1] + account[2] < amount:
                        raise Duplicate  # or refused: _replay_stored_value tells which
                    points, cash_before, bonus_before, version, enrolled_at = account
                    cash = amount * cash_before // (cash_before + bonus_before)
                    bonus = amount - cash
                    cash_after, bonus_after = cash_before - cash, bonus_before - bonus
                    version += 1
                    position = await self._record_stored_value(
                        conn,
                        request,
                        transaction_id,
                        "spend",
                        (-cash, -bonus),
                        (points, cash_after, bonus_after, version),
                    )
                    await conn.execute(
                        "UPDATE bl_accounts SET stored_value_cash_minor = %s, "
                        "stored_value_bonus_minor = %s, version = %s "
                        "WHERE program_id = %s AND member_id = %s",
                        (cash_after, bonus_after, version, request.program_id, request.member_id),
                    )
            except Duplicate:
                replay = await self._replay_stored_value(request)
                if replay is None:
                    if account is None:
                        raise Refused(
                            grpc.StatusCode.NOT_FOUND, f"member {request.member_id} is not enrolled"
                        ) from None
                    raise Refused(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"insufficient stored value: {account[1] + account[2]} available",
                    ) from None
                replay.check(request, "spend", replay.cash + replay.bonus == -amount)
                return pb.SpendResponse(
                    transaction_id=replay.transaction_id,
                    position=replay.position,
                    account=replay.account,
                    cash_minor=-replay.cash,
                    bonus_minor=-replay.bonus,
                )
        except Refused as e:
            await self._refuse(context, e)
            raise AssertionError("unreachable") from e
        return pb.SpendResponse(
            transaction_id=transaction_id,
            position=position,
            account=_account(
                request.program_id,
                request.member_id,
                points,
                version,
                enrolled_at,
                cash_after,
                bonus_after,
            ),
            cash_minor=cash,
            bonus_minor=bonus,
        )

    # ------------------------------------------------------------------ batches

    async def ExecuteBatch(self, request: Any, context: Any) -> pb.ExecuteBatchResponse:
        """Earns only, not atomic: see the module's docstring."""
        if request.atomic:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "atomic batches are not implemented here"
            )
        commands = request.commands
        results: list[pb.BatchResult | None] = [None] * len(commands)
        first: dict[tuple[str, str], int] = {}  # (program_id, request_id) -> its first item
        repeats: list[tuple[int, int]] = []  # (item, the first with its request_id)
        for i, item in enumerate(commands):
            kind = item.WhichOneof("command")
            if kind != "earn":
                results[i] = _error(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{kind or 'nothing'}: not implemented in a batch here",
                )
                continue
            earn = item.earn
            if not earn.program_id:
                earn.program_id = request.program_id
            try:
                _check(earn)
            except Refused as e:
                results[i] = _error(e.code, e.message)
                continue
            j = first.setdefault((earn.program_id, earn.request_id), i)
            if j != i:
                repeats.append((i, j))
        if first:
            items = list(first.values())
            earns = [commands[i].earn for i in items]
            transaction_ids = [_transaction_id(e.program_id, e.request_id) for e in earns]
            try:
                rows = await self._earn_batch(earns, transaction_ids)
            except Refused as e:
                await self._refuse(context, e)
                raise AssertionError("unreachable") from e
            for i, earn, transaction_id, row in zip(
                items, earns, transaction_ids, rows, strict=True
            ):
                results[i] = _batch_earn(earn, transaction_id, row)
        for i, j in repeats:
            earn, earlier = commands[i].earn, commands[j].earn
            if (earn.member_id, earn.points) == (earlier.member_id, earlier.points):
                results[i] = results[j]
            else:
                results[i] = _error(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"request_id {earn.request_id!r} was used for a different request",
                )
        answered = [r for r in results if r is not None]
        position = max((r.earn.position for r in answered if r.HasField("earn")), default=0)
        return pb.ExecuteBatchResponse(results=answered, position=position)

    async def _earn_batch(
        self, earns: list[Any], transaction_ids: list[str]
    ) -> list[tuple[Any, ...]]:
        """EARN_BATCH for these (valid, distinct) Earns in one transaction: a row each."""
        params = (
            [e.program_id for e in earns],
            [e.request_id for e in earns],
            [e.member_id for e in earns],
            [e.points for e in earns],
            transaction_ids,
            [e.store_id for e in earns],
            [e.order_ref for e in earns],
            [e.reason for e in earns],
            [_occurred(e) for e in earns],
        )
        for _ in range(BATCH_ATTEMPTS):
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    cur = await conn.execute(EARN_BATCH, params)
                    rows = await cur.fetchall()
                    if any(r[0] is None and r[4] is None and r[3] is not None for r in rows):
                        raise Raced
                return rows
            except (Raced, errors.DeadlockDetected):
                continue
        raise Refused(
            grpc.StatusCode.ABORTED,
            "the batch kept colliding with concurrent writers of its request_ids",
        )

    # ------------------------------------------------------------------ machinery

    async def _record(
        self,
        conn: AsyncConnection[Any],
        request: Any,
        transaction_id: str,
        kind: str,
        delta: int,
        balance: int,
        version: int,
    ) -> int:
        cur = await conn.execute(
            INSERT_TRANSACTION,
            (
                request.program_id,
                request.request_id,
                transaction_id,
                request.member_id,
                kind,
                delta,
                balance,
                version,
                request.store_id,
                request.order_ref,
                request.reason,
                _occurred(request),
            ),
        )
        row = await cur.fetchone()
        if row is None:
            raise Duplicate
        position: int = row[0]
        return position

    async def _record_stored_value(
        self,
        conn: AsyncConnection[Any],
        request: Any,
        transaction_id: str,
        kind: str,
        deltas: tuple[int, int],
        after: tuple[int, int, int, int],
    ) -> int:
        """INSERT a TopUp's or Spend's row: deltas (cash, bonus), after (points, cash, bonus,
        version). Duplicate if its request_id is recorded already."""
        points, cash_after, bonus_after, version = after
        cur = await conn.execute(
            INSERT_STORED_VALUE,
            (
                request.program_id,
                request.request_id,
                transaction_id,
                request.member_id,
                kind,
                points,
                *deltas,
                cash_after,
                bonus_after,
                version,
                request.store_id,
                getattr(request, "order_ref", ""),
                getattr(request, "payment_ref", ""),
                _occurred(request),
            ),
        )
        row = await cur.fetchone()
        if row is None:
            raise Duplicate
        position: int = row[0]
        return position

    async def _replay_stored_value(self, request: Any) -> StoredValueReplay | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(FIND_STORED_VALUE, (request.program_id, request.request_id))
            row = await cur.fetchone()
        return None if row is None else StoredValueReplay(row, request)

    async def _replay(
        self, request: Any, kind: str, delta: int
    ) -> tuple[int, str, pb.Account] | None:
        """The recorded outcome of this request_id, or None if there is none."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(FIND_TRANSACTION, (request.program_id, request.request_id))
            row = await cur.fetchone()
        if row is None:
            return None
        return _replayed(row, request, kind, delta)


async def main_async(database: str, listen: str, pool_size: int) -> None:
    async with await AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(SCHEMA)
    pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
        database,
        min_size=pool_size,
        max_size=pool_size,
        open=False,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=True, timeout=30)
    try:
        # The RPCs not written here answer UNIMPLEMENTED (the generated base class).
        await serve_until_signalled(BaselineServicer(pool), listen)  # type: ignore[abstract]
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="hand-written PostgreSQL baseline server")
    listen_arg(parser)
    parser.add_argument("--database", required=True, help="postgresql://USER@HOST:PORT/DB")
    parser.add_argument("--pool-size", type=int, default=10)
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.database, args.listen, args.pool_size))


if __name__ == "__main__":
    main()
