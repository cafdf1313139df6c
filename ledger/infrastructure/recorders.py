"""Our event-store recorders: the library's, with a cheaper insert, the idempotency
records written in the same transaction as the events, and each event's place in its
account's hash chain (prev_hash, hash: ledger/infrastructure/chain.py) stored with it.

`app.save(*aggregates, requests=[RequestRecord, ...])` reaches `insert_events(...,
requests=...)` here: the rows go into the requests table inside the events' transaction, so a
command is recorded with its answer or not at all, and a second writer of the same request_id
fails on the primary key (IntegrityError) exactly as a conflicting event would.

On PostgreSQL the whole insert is one statement, `ledger_insert_events(...)` (migration
0017, decision 29), on an autocommit connection: the table lock that keeps positions in
commit order, the events (as JSON rows: bytes as hex) RETURNING their positions, and the
request rows, committed when it returns.
One round trip; the library's pipelined insert took seven statements and five to seven
round trips for the same (BEGIN, SET LOCAL lock_timeout, LOCK, NOTIFY, the two inserts,
COMMIT). The library's NOTIFY is gone with it: the projections processes are told of
commits by `ledger/commit_notices.py`, after the commit and from a thread of its own,
never inside this transaction (decisions 29 and 31).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    ApplicationRecorder,
    DatabaseError,
    IntegrityError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteFactory
from psycopg.sql import SQL, Identifier

from ledger.infrastructure.chain import ChainHeads
from ledger.infrastructure.database import check_when_readable
from ledger.infrastructure.dialect import POSTGRES, SQLITE, Dialect
from ledger.infrastructure.requests import COLUMNS, RequestRecord, stored_row
from ledger.telemetry import instruments

Links = Sequence[tuple[bytes, bytes]]  # (prev_hash, hash) per stored event
ProgramVersion = tuple[UUID, int]  # a programme's aggregate id and version
PROGRAM_CHANGED_SQLSTATE = "TL001"  # ledger_insert_events (migration 0017)


class ProgramChanged(IntegrityError):
    """A programme the group was decided under has a newer version than the group read:
    nothing was written, and the group is decided again (a conflict like any other, on
    the programme instead of an account). `app.save(..., programs=[(id, version)])` asks
    for the check; it is made in the insert's transaction, under its lock."""

    conflict_on = "program"  # its `tally.write_conflicts` label (ledger/telemetry)


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
            ids = self._insert(stored_events, links, **kwargs)
            written(ids or ())
        self.heads.remember(stored_events, links)
        return ids

    def _insert(
        self, stored_events: Sequence[StoredEvent], links: Links, **kwargs: Any
    ) -> Sequence[int] | None:
        """The backend's insert of the events, their links and the request rows, in one
        transaction; the events' positions."""
        raise NotImplementedError

    def _chain_heads(self, keys: list[tuple[UUID, int]]) -> dict[UUID, bytes]:
        """The stored hash of each (aggregate, version); committed events never change, so
        this may read outside the insert's transaction."""
        raise NotImplementedError


class TallyPostgresApplicationRecorder(ChainedInserts, PostgresApplicationRecorder):
    dialect = POSTGRES

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """The library's select_events, called once (every command reads its programme's
        new events, and the library's ten retries would hold it most of a minute when the
        database is gone: library_seams.py), with its statement made once per shape
        instead of composed at every call."""
        shape = (gt is not None, lte is not None, desc, limit is not None)
        params = [originator_id, *(v for v in (gt, lte, limit) if v is not None)]
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            statement = self._select_statements.get(shape)
            if statement is None:
                sql = "SELECT originator_id, originator_version, topic, state"
                sql += " FROM {schema}.{table} WHERE originator_id = %s"
                sql += " AND originator_version > %s" if gt is not None else ""
                sql += " AND originator_version <= %s" if lte is not None else ""
                sql += " ORDER BY originator_version " + ("DESC" if desc else "ASC")
                sql += " LIMIT %s" if limit is not None else ""
                composed = SQL(sql).format(
                    schema=Identifier(self.datastore.schema),
                    table=Identifier(self.events_table_name),
                )
                statement = self._select_statements[shape] = composed.as_bytes(conn)
            curs.execute(statement, params, prepare=True)
            return [
                StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heads = ChainHeads()
        self._select_statements: dict[tuple[bool, bool, bool, bool], bytes] = {}
        self.insert_statement = SQL(
            "SELECT * FROM {schema}.ledger_insert_events(%s, %s::jsonb, %s::jsonb, %s::jsonb)"
            " AS t(notification_id)"
        ).format(schema=Identifier(self.datastore.schema))
        self.lock_timeout = f"{self.datastore.lock_timeout}s"

    def _insert(
        self,
        stored_events: Sequence[StoredEvent],
        links: Links,
        *,
        requests: Sequence[RequestRecord] = (),
        programs: Sequence[ProgramVersion] = (),
        **kwargs: Any,
    ) -> Sequence[int] | None:
        # Called once, not through the library's insert_events, which retries ten times on
        # a lost connection, each try waiting for the pool: a command would hear of a
        # database that is gone after most of a minute, not at once (UNAVAILABLE). The
        # library's connection is in autocommit: this one statement is the transaction.
        # The rows as JSON (migration 0017): json.dumps is C, where psycopg's dumping of an
        # array per column was a quarter of the writer's CPU for a one-command group.
        events = json.dumps(
            [
                [
                    str(e.originator_id),
                    e.originator_version,
                    e.topic,
                    e.state.hex(),
                    prev_hash.hex(),
                    digest.hex(),
                ]
                for e, (prev_hash, digest) in zip(stored_events, links, strict=True)
            ]
        )
        records = json.dumps(
            [
                [
                    str(r.record_id),
                    r.program_id,
                    r.request_id,
                    r.command,
                    r.request_hash,
                    r.member_id,
                    r.response.hex(),
                    str(r.originator_id) if r.originator_id else None,
                    r.originator_version,
                ]
                for r in requests
            ]
        )
        decided_under = json.dumps([[str(key), version] for key, version in programs])
        try:
            with self.datastore.get_connection() as conn, conn.cursor() as curs:
                curs.execute(
                    self.insert_statement, (self.lock_timeout, events, records, decided_under)
                )
                ids = [row["notification_id"] for row in curs.fetchall()]
        except DatabaseError as e:
            if getattr(e.__cause__, "sqlstate", None) == PROGRAM_CHANGED_SQLSTATE:
                raise ProgramChanged(str(e)) from e
            raise
        if len(ids) != len(stored_events):
            raise ProgrammingError(f"{len(ids)} positions for {len(stored_events)} events")
        return ids or None

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

    def _insert(
        self, stored_events: Sequence[StoredEvent], links: Links, **kwargs: Any
    ) -> Sequence[int] | None:
        # The library's insert: one committed transaction around _insert_events below.
        ids: Sequence[int] | None = SQLiteApplicationRecorder.insert_events(
            self, stored_events, links=links, **kwargs
        )
        return ids

    def _insert_events(
        self,
        c: SQLiteCursor,
        stored_events: Sequence[StoredEvent],
        *,
        links: Links = (),
        requests: Sequence[RequestRecord] = (),
        programs: Sequence[ProgramVersion] = (),
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
        # After the inserts, which took the write lock (no other writer until the commit;
        # a read first would be a snapshot that cannot become a write), as PostgreSQL
        # checks under its table lock (ledger_insert_events). Raising rolls it all back.
        for key, version in programs if stored_events else ():
            c.execute(
                f"SELECT 1 FROM {self.events_table_name}"
                " WHERE originator_id = ? AND originator_version > ? LIMIT 1",
                (self.dialect.stored_id(key), version),
            )
            if c.fetchall():
                raise ProgramChanged("a programme was updated after the group was decided")
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
        # POSTGRES_PRE_PING checks each connection taken from the pool with an empty query:
        # a round trip on every read and insert of the event store. Ours checks only a
        # connection the server has said something on (a restart's or failover's FATAL, the
        # socket's end), which is what the check is for (database.check_when_readable).
        self.datastore.pool._check = check_when_readable


class TallySqliteFactory(SQLiteFactory):
    """PERSISTENCE_MODULE=ledger.infrastructure.recorders:TallySqliteFactory"""

    application_recorder_class = TallySqliteApplicationRecorder
