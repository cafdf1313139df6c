"""Our event-store recorders: the library's, with a cheaper insert, the idempotency
records written in the same transaction as the events, and each event's place in its
account's hash chain (prev_hash, hash: ledger/infrastructure/chain.py) stored with it.

`app.save(*aggregates, requests=[RequestRecord, ...])` reaches `insert_events(...,
requests=...)` here: the rows go into the requests table inside the events' transaction, so a
command is recorded with its answer or not at all, and a second writer of the same request_id
fails on the primary key (IntegrityError) exactly as a conflicting event would.

On PostgreSQL, eventsourcing passes a batch of events as one array of a composite type, which
psycopg renders to text value by value (about 40 µs an event here, a quarter of a group
commit's time). Plain arrays (uuid[], bigint[], text[], bytea[]) go over in psycopg's binary
format and unnest to the same rows. Everything else — the table lock that keeps positions in
commit order, NOTIFY, RETURNING the positions — is the library's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    ApplicationRecorder,
    IntegrityError,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteFactory
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from ledger.infrastructure.chain import ChainHeads
from ledger.infrastructure.database import caused_by
from ledger.infrastructure.dialect import POSTGRES, SQLITE, Dialect
from ledger.infrastructure.requests import COLUMNS, RequestRecord, stored_row
from ledger.telemetry import instruments

Links = Sequence[tuple[bytes, bytes]]  # (prev_hash, hash) per stored event


def aborted_pipeline(error: BaseException) -> bool:
    """The library's PostgreSQL insert is one pipeline. When a statement in it fails on a
    duplicate (another writer saved the account, or the request_id, first) psycopg may
    report the pipeline's abort instead of the UniqueViolation itself, which the library
    wraps as an OperationalError: a conflict that looks like a lost database. A lost
    connection fails otherwise (no abort to report), so this is the conflict, to be re-run
    on fresh state like any other (measured: 3 of 135 same-account Earns from three
    processes came back UNAVAILABLE before this)."""
    return caused_by(error, psycopg.errors.PipelineAborted)


class ChainedInserts(ApplicationRecorder):
    """Links each batch of events into their accounts' chains before the backend's insert
    (which receives them as `links`), and remembers the new heads once it has committed."""

    heads: ChainHeads
    dialect: Dialect  # its backend's table names and id encoding

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        requests = len(kwargs.get("requests", ()))
        telemetry = instruments.current
        with telemetry.store_write(
            len(stored_events), requests, self.dialect.requests_table
        ) as written:
            links = self.heads.link(stored_events, self._chain_heads)
            # super() is the backend's recorder, which follows this mixin in the MRO. Called
            # once: the library's PostgreSQL insert retries ten times on a lost connection,
            # each try waiting for the pool, so a command would hear of a database that is
            # gone after most of a minute, not at once (UNAVAILABLE; library_seams.py).
            insert = super().insert_events  # type: ignore[safe-super]
            once = getattr(insert, "__wrapped__", None)
            try:
                ids: Sequence[int] | None = (
                    once(self, stored_events, links=links, **kwargs)
                    if once is not None
                    else insert(stored_events, links=links, **kwargs)
                )
            except OperationalError as e:
                if aborted_pipeline(e):
                    raise IntegrityError(str(e)) from e
                raise
            written(ids or ())
        self.heads.remember(stored_events, links)
        return ids

    def _chain_heads(self, keys: list[tuple[UUID, int]]) -> dict[UUID, bytes]:
        """The stored hash of each (aggregate, version); committed events never change, so
        this may read outside the insert's transaction."""
        raise NotImplementedError


class TallyPostgresApplicationRecorder(ChainedInserts, PostgresApplicationRecorder):
    dialect = POSTGRES

    def select_events(self, *args: Any, **kwargs: Any) -> Any:
        # Once, as the insert (ChainedInserts): every command reads its programme's new
        # events, and the library's ten retries would hold it most of a minute when the
        # database is gone (library_seams.py).
        return PostgresApplicationRecorder.select_events.__wrapped__(self, *args, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heads = ChainHeads()
        self.insert_events_statement = SQL(
            "INSERT INTO {schema}.{table}"
            " (originator_id, originator_version, topic, state, prev_hash, hash)"
            " SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[],"
            " %b::bytea[], %b::bytea[]) RETURNING notification_id"
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
        )
        self.insert_requests_statement = SQL(
            "INSERT INTO {schema}.{table} ({columns}) SELECT * FROM unnest("
            "%b::uuid[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],"
            " %b::bytea[], %b::uuid[], %b::bigint[])"
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.dialect.requests_table),
            columns=SQL(COLUMNS),
        )

    def _chain_heads(self, keys: list[tuple[UUID, int]]) -> dict[UUID, bytes]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                SQL(
                    "SELECT originator_id, hash FROM {schema}.{table}"
                    " WHERE (originator_id, originator_version) IN"
                    " (SELECT * FROM unnest(%b::uuid[], %b::bigint[])) AND hash IS NOT NULL"
                ).format(
                    schema=Identifier(self.datastore.schema),
                    table=Identifier(self.events_table_name),
                ),
                ([k[0] for k in keys], [k[1] for k in keys]),
            )
            return {row["originator_id"]: bytes(row["hash"]) for row in curs.fetchall()}

    # The library runs _insert_events, then (if there are events) _insert_stored_events, in
    # one pipelined transaction. The request rows go after the events: the library prepares
    # its LOCK statement, and a statement prepared in a pipeline after a failed one (a
    # duplicate request_id) is skipped by the server while psycopg believes it prepared.
    # For the same reason our statements are never prepared (prepare=False also stops
    # psycopg's automatic preparing after five runs).

    def _insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        requests: Sequence[RequestRecord] = (),
        **kwargs: Any,
    ) -> None:
        if requests and not stored_events:
            self._insert_requests(curs, requests)

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        links: Links = (),
        requests: Sequence[RequestRecord] = (),
        **kwargs: Any,
    ) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(
            self.insert_events_statement,
            (
                [e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
                [link[0] for link in links],
                [link[1] for link in links],
            ),
            prepare=False,
        )
        if requests:
            # The RETURNING rows of the events insert are fetched from this cursor next.
            with curs.connection.cursor() as other:
                self._insert_requests(other, requests)

    def _insert_requests(self, curs: Cursor[Any], requests: Sequence[RequestRecord]) -> None:
        rows = [stored_row(self.dialect, r) for r in requests]
        columns = [list(column) for column in zip(*rows, strict=True)]
        curs.execute(self.insert_requests_statement, columns, prepare=False)


class TallySqliteApplicationRecorder(ChainedInserts, SQLiteApplicationRecorder):
    dialect = SQLITE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heads = ChainHeads()

    def _chain_heads(self, keys: list[tuple[UUID, int]]) -> dict[UUID, bytes]:
        found: dict[UUID, bytes] = {}
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(keys), 400):
                chunk = keys[start : start + 400]
                c.execute(
                    f"SELECT originator_id, hash FROM {self.events_table_name}"
                    " WHERE (originator_id, originator_version) IN"
                    f" (VALUES {','.join(['(?,?)'] * len(chunk))}) AND hash IS NOT NULL",
                    [
                        value
                        for oid, version in chunk
                        for value in (self.dialect.stored_id(oid), version)
                    ],
                )
                found.update({self.dialect.read_id(row[0]): bytes(row[1]) for row in c.fetchall()})
        return found

    def _insert_events(
        self,
        c: SQLiteCursor,
        stored_events: Sequence[StoredEvent],
        *,
        links: Links = (),
        requests: Sequence[RequestRecord] = (),
        **kwargs: Any,
    ) -> Sequence[int] | None:
        if requests:
            marks = self.dialect.placeholders(len(RequestRecord._fields))
            c.executemany(
                f"INSERT INTO {self.dialect.requests_table} ({COLUMNS}) VALUES ({marks})",
                [stored_row(self.dialect, r) for r in requests],
            )
        positions = []
        for e, (prev_hash, digest) in zip(stored_events, links, strict=True):
            c.execute(
                f"INSERT INTO {self.events_table_name} (originator_id, originator_version,"
                " topic, state, prev_hash, hash) VALUES (?,?,?,?,?,?)",
                (
                    self.dialect.stored_id(e.originator_id),
                    e.originator_version,
                    e.topic,
                    e.state,
                    prev_hash,
                    digest,
                ),
            )
            positions.append(c.lastrowid)
        return positions


class TallyPostgresFactory(PostgresFactory):
    """PERSISTENCE_MODULE=ledger.infrastructure.recorders:TallyPostgresFactory"""

    application_recorder_class = TallyPostgresApplicationRecorder
    # libpq parameters the library has no setting for (target_session_attrs, connect_timeout):
    # the conninfo under its pool's keyword arguments, set before the pool opens (dialect.py).
    POSTGRES_CONNINFO = "POSTGRES_CONNINFO"

    def __init__(self, env: Any) -> None:  # the library's Environment
        super().__init__(env)
        self.datastore.pool.conninfo = self.env.get(self.POSTGRES_CONNINFO) or ""


class TallySqliteFactory(SQLiteFactory):
    """PERSISTENCE_MODULE=ledger.infrastructure.recorders:TallySqliteFactory"""

    application_recorder_class = TallySqliteApplicationRecorder
