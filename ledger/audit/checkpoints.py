"""Checkpoints: a record that commits to the whole log up to a position.

A per-account chain shows that an account's events are intact and in order, but not that
its newest events are all there: deleting the last events of an account leaves a shorter,
valid chain. A checkpoint names the newest event (version, position, hash) of every account
written since the previous checkpoint and the number of events up to its position, and its
digest includes the previous checkpoint's: deleting or changing anything at or below a
checkpoint's position no longer matches it. With an Ed25519 key configured the digest is
signed, so the checkpoints themselves cannot be rewritten without the key.

    digest = SHA-256( "tally-checkpoint-v1" || prev_digest (32 zero bytes for the first)
                    || u64(checkpoint_id) || u64(position) || u64(event_count)
                    || u64(number of heads)
                    || for each head, by aggregate id (16 raw UUID bytes, ascending):
                         id (16 bytes) || u64(version) || u64(position) || hash (32 bytes) )
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.infrastructure.chain import GENESIS
from ledger.infrastructure.database import Database
from ledger.infrastructure.dialect import SQLITE, Dialect
from ledger.periodic import Periodic

log = logging.getLogger(__name__)
_U64 = struct.Struct(">Q")
MAGIC = b"tally-checkpoint-v1"


@dataclass(frozen=True)
class Head:
    originator_id: UUID
    version: int
    position: int
    hash: bytes


@dataclass(frozen=True)
class Checkpoint:
    checkpoint_id: int
    position: int
    event_count: int
    prev_digest: bytes
    digest: bytes
    signature: bytes | None
    public_key: bytes | None
    heads: tuple[Head, ...]
    problems: tuple[str, ...] = ()  # values of its record or its heads that cannot be read


def checkpoint_digest(
    checkpoint_id: int, position: int, event_count: int, prev_digest: bytes, heads: list[Head]
) -> bytes:
    digest = hashlib.sha256(MAGIC)
    digest.update(prev_digest)
    for number in (checkpoint_id, position, event_count, len(heads)):
        digest.update(_U64.pack(number))
    for head in sorted(heads, key=lambda h: h.originator_id.bytes):
        digest.update(head.originator_id.bytes)
        digest.update(_U64.pack(head.version))
        digest.update(_U64.pack(head.position))
        digest.update(head.hash)
    return digest.digest()


# ---------------------------------------------------------------------- stored values

# What an audit reads may have been rewritten by someone with access to the database, even as
# a value of another type than its column's: SQLite keeps any value in any column (and its
# driver raises on TEXT that is not UTF-8), and a PostgreSQL column's type can be altered. So
# each value is checked for the type Tally writes: on SQLite in the query (typeof, every value
# read as bytes), on PostgreSQL, where a column's values all have its type, by the Python
# type the driver gives. A value of another type is a problem to report, never an exception.

Kind = Literal["id", "int", "text", "bytes"]


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    nullable: bool = False


_SQLITE_TYPES: dict[Kind, str] = {"id": "text", "int": "integer", "text": "text", "bytes": "blob"}
_SQLITE_READ: dict[Kind, str] = {
    "id": "CAST({c} AS BLOB)",
    "int": "CASE typeof({c}) WHEN 'integer' THEN {c} END",
    "text": "CAST({c} AS BLOB)",
    "bytes": "CAST({c} AS BLOB)",
}
_POSTGRES_TYPES: dict[Kind, str] = {"id": "uuid", "int": "bigint", "text": "text", "bytes": "bytea"}
_POSTGRES_CLASSES: dict[Kind, type] = {"id": UUID, "int": int, "text": str, "bytes": bytes}
_POSTGRES_NAMES: dict[type, str] = {
    UUID: "uuid",
    str: "text",
    bytes: "bytea",
    dict: "json",
    list: "json",
    bool: "boolean",
}


def as_bytes(value: Any) -> bytes:
    """A stored value's bytes, whatever it was read as."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", errors="surrogateescape")


class StoredColumns:
    """A SELECT list that reads these columns as stored (on SQLite followed by the types they
    are stored as: NULL if all are what Tally writes), and decodes its rows."""

    def __init__(self, dialect: Dialect, columns: Sequence[Column]) -> None:
        self.columns = tuple(columns)
        self.per_value = dialect is SQLITE  # else per column
        if self.per_value:
            self.stored_as = _SQLITE_TYPES
            reads = [_SQLITE_READ[c.kind].format(c=c.name) for c in self.columns]
            sound = " AND ".join(
                f"typeof({c.name}) IN ('{_SQLITE_TYPES[c.kind]}'"
                + (", 'null')" if c.nullable else ")")
                for c in self.columns
            )
            types = " || ' ' || ".join(f"typeof({c.name})" for c in self.columns)
            self.sql = ", ".join([*reads, f"CASE WHEN {sound} THEN NULL ELSE {types} END"])
        else:
            self.stored_as = _POSTGRES_TYPES
            self.sql = ", ".join(c.name for c in self.columns)
        self._ids = [i for i, c in enumerate(self.columns) if c.kind == "id"]
        self._texts = [i for i, c in enumerate(self.columns) if c.kind == "text"]
        self._classes = [
            (i, _POSTGRES_CLASSES[c.kind], c.nullable) for i, c in enumerate(self.columns)
        ]

    def decode(self, row: Sequence[Any]) -> tuple[list[Any], list[str]]:
        """(The values, None where unreadable; what is wrong with them)."""
        n = len(self.columns)
        if self.per_value:
            if row[n] is None:  # all of the types Tally writes: the common case, quickly
                quick = list(row[:n])
                try:
                    for i in self._ids:
                        quick[i] = UUID(quick[i].decode("utf-8"))
                    for i in self._texts:
                        quick[i] = quick[i].decode("utf-8")
                    return quick, []
                except ValueError:
                    pass  # text that is not UTF-8, an id that is not a UUID: see below
                stored = [self.stored_as[c.kind] for c in self.columns]
            else:
                stored = str(row[n]).split(" ")
        else:
            for i, cls, nullable in self._classes:
                value = row[i]
                if value.__class__ is not cls and not (value is None and nullable):
                    break
            else:
                return list(row[:n]), []
            stored = [
                self.stored_as[c.kind]
                if v is None or v.__class__ is cls
                else _POSTGRES_NAMES.get(type(v)) or type(v).__name__
                for c, v, (_, cls, _) in zip(self.columns, row[:n], self._classes, strict=True)
            ]
        return self._slowly(row[:n], stored)

    def _slowly(self, row: Sequence[Any], stored_types: list[str]) -> tuple[list[Any], list[str]]:
        values: list[Any] = []
        problems: list[str] = []
        stored_types += [""] * (len(self.columns) - len(stored_types))
        for column, value, stored in zip(self.columns, row, stored_types, strict=False):
            expected = self.stored_as[column.kind]
            null = value is None and stored in (expected, "null")
            if stored != expected and not null:
                problems.append(f"its {column.name} is stored as {stored}, not {expected}")
            if value is None:
                if null and not column.nullable:
                    problems.append(f"it has no {column.name}")
                values.append(None)
                continue
            values.append(self._value(column, value, problems))
        return values, problems

    @staticmethod
    def _value(column: Column, value: Any, problems: list[str]) -> Any:
        if column.kind == "bytes":
            return as_bytes(value)
        if column.kind == "int":
            if isinstance(value, int):
                return value
            try:
                return int(str(value))
            except ValueError:
                problems.append(f"its {column.name} {str(value)[:40]!r} is not a number")
                return None
        if isinstance(value, UUID):
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            try:
                text = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                problems.append(f"its {column.name} is not UTF-8")
                text = bytes(value).decode("utf-8", errors="replace")
        else:
            text = str(value)
        if column.kind == "text":
            return text
        try:
            return UUID(text)
        except ValueError:
            problems.append(f"its {column.name} {text[:40]!r} is not a UUID")
            return None


# ---------------------------------------------------------------------- keys


class KeyFileError(ValueError):
    """A key file that cannot be read or is not an Ed25519 key in PEM."""


def _read_key_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read the key file {path}: {e.strerror or e}") from None


def load_signing_key(path: str | None = None) -> Ed25519PrivateKey | None:
    """The Ed25519 private key (PEM, PKCS#8) at `path` or $TALLY_CHECKPOINT_KEY, if any."""
    path = path or os.environ.get("TALLY_CHECKPOINT_KEY")
    if not path:
        return None
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(
            f"{path} is not an unencrypted PEM Ed25519 private key ({_first_line(e)})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: str) -> Ed25519PublicKey:
    """An Ed25519 public key (PEM, SubjectPublicKeyInfo) or a private key's public half."""
    data = _read_key_file(path)
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            if not isinstance(private, Ed25519PrivateKey):
                raise KeyFileError(f"{path} is not an Ed25519 key")
            return private.public_key()
        key = serialization.load_pem_public_key(data)
    except KeyFileError:
        raise
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{path} is not a PEM Ed25519 public key ({_first_line(e)})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return key


def _first_line(error: Exception) -> str:
    """What cryptography says, without its pointer to the FAQ."""
    text = str(error).strip().split(" See https://", 1)[0]
    lines = text.splitlines()
    return lines[0].rstrip(".") if lines else type(error).__name__


def raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signature_ok(public_key: bytes, signature: bytes, digest: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, digest)
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------------- storage


_CHECKPOINT_COLUMNS = (
    Column("checkpoint_id", "int"),
    Column("position", "int"),
    Column("event_count", "int"),
    Column("prev_digest", "bytes"),
    Column("digest", "bytes"),
    Column("signature", "bytes", nullable=True),
    Column("public_key", "bytes", nullable=True),
)
_HEAD_COLUMNS = (
    Column("checkpoint_id", "int"),
    Column("originator_id", "id"),
    Column("originator_version", "int"),
    Column("position", "int"),
    Column("hash", "bytes"),
)


def load_checkpoints(db: Database) -> list[Checkpoint]:
    """Every checkpoint by id. A value that cannot be read is kept as a problem of its
    checkpoint (zeros in its place), for the verifier to report."""
    dialect = db.dialect
    checkpoints, heads_table = dialect.checkpoints_table, dialect.checkpoint_heads_table
    record, head = (
        StoredColumns(dialect, _CHECKPOINT_COLUMNS),
        StoredColumns(dialect, _HEAD_COLUMNS),
    )
    with db.read() as cur:
        cur.execute(f"SELECT {record.sql} FROM {checkpoints} ORDER BY checkpoint_id")
        rows = cur.fetchall()
        cur.execute(f"SELECT {head.sql} FROM {heads_table}")
        head_rows = cur.fetchall()
    heads: dict[int, list[Head]] = {}
    head_problems: dict[int, list[str]] = {}
    for r in head_rows:
        (cid, oid, version, position, digest), problems = head.decode(r)
        if cid is None:
            continue  # belongs to no checkpoint: the one it was written for no longer matches
        if oid is None:
            head_problems.setdefault(cid, []).extend(f"a head: {p}" for p in problems)
            continue
        heads.setdefault(cid, []).append(
            Head(oid, version or 0, position or 0, digest if digest is not None else b"")
        )
        head_problems.setdefault(cid, []).extend(f"the head of {oid}: {p}" for p in problems)
    loaded = []
    for r in rows:
        (cid, position, count, prev, digest, signature, public_key), problems = record.decode(r)
        cid = cid or 0
        loaded.append(
            Checkpoint(
                cid,
                position or 0,
                count or 0,
                prev if prev is not None else b"",
                digest if digest is not None else b"",
                signature,
                public_key,
                tuple(heads.get(cid, ())),
                tuple(problems + head_problems.get(cid, [])),
            )
        )
    return loaded


# A checkpoint holds one head per account it covers, in memory and in one INSERT: a backlog
# of a million events after an import made one of a million heads, which took the server to
# 870 MB for a while (docs/performance.md, session 10). Bounded, a backlog becomes several
# checkpoints in a row.
MAX_EVENTS_PER_CHECKPOINT = 20_000


def write_checkpoint(
    db: Database, key: Ed25519PrivateKey | None = None, limit: int = MAX_EVENTS_PER_CHECKPOINT
) -> Checkpoint | None:
    """Commit to the events written since the last checkpoint, at most `limit` of them
    (None if there is none)."""
    dialect = db.dialect
    checkpoints, heads_table = dialect.checkpoints_table, dialect.checkpoint_heads_table
    events, position_column = dialect.events_table, dialect.position_column
    with db.transaction() as cur:
        record = StoredColumns(dialect, _CHECKPOINT_COLUMNS)
        cur.execute(f"SELECT {record.sql} FROM {checkpoints} ORDER BY checkpoint_id DESC LIMIT 1")
        last = cur.fetchone()
        # A damaged previous checkpoint is the verifier's to report; this one follows it as stored.
        values: list[Any] = record.decode(last)[0] if last else [0, 0, 0, None, GENESIS]
        last_id, since, count = (int(v or 0) for v in values[:3])
        prev = bytes(values[4]) if values[4] is not None else b""
        # Positions commit in order (the recorder's table lock; SQLite's single writer), so
        # every event at or below the newest visible position is already committed.
        cur.execute(
            f"SELECT {position_column} FROM {events} WHERE {position_column} > ?"
            f" ORDER BY {position_column} LIMIT 1 OFFSET ?",
            (since, limit - 1),
        )
        bounded = cur.fetchone()
        if bounded is None:
            cur.execute(f"SELECT MAX({position_column}) FROM {events}")
            bounded = cur.fetchone()
        position = int(bounded[0]) if bounded and bounded[0] is not None else 0
        if position <= since:
            return None
        cur.execute(
            f"SELECT COUNT(*) FROM {events} WHERE {position_column} > ? AND {position_column} <= ?",
            (since, position),
        )
        found = cur.fetchone()
        count += int(found[0]) if found else 0
        latest = StoredColumns(
            dialect,
            (
                Column("e.originator_id", "id"),
                Column("e.originator_version", "int"),
                Column(f"e.{position_column}", "int"),
                Column("e.hash", "bytes", nullable=True),
            ),
        )
        cur.execute(
            f"SELECT {latest.sql}"
            f" FROM {events} e JOIN (SELECT originator_id, MAX(originator_version) AS v"
            f" FROM {events} WHERE {position_column} > ? AND {position_column} <= ?"
            " GROUP BY originator_id) m"
            " ON e.originator_id = m.originator_id AND e.originator_version = m.v",
            (since, position),
        )
        heads = []
        for r in cur.fetchall():
            (oid, version, at, head_hash), _ = latest.decode(r)
            # An event whose id, version or position cannot be read cannot be named: the
            # verifier reports it, and its account as written without a head.
            if oid is not None and version is not None and at is not None:
                heads.append(Head(oid, version, at, head_hash or b""))
        checkpoint_id = last_id + 1
        digest = checkpoint_digest(checkpoint_id, position, count, prev, heads)
        signature = key.sign(digest) if key is not None else None
        public_key = raw(key.public_key()) if key is not None else None
        cur.execute(
            f"INSERT INTO {checkpoints} (checkpoint_id, position, event_count, prev_digest,"
            " digest, signature, public_key) VALUES (?,?,?,?,?,?,?)",
            (checkpoint_id, position, count, prev, digest, signature, public_key),
        )
        dialect.insert_rows(
            cur,
            f"INSERT INTO {heads_table} (checkpoint_id, originator_id, originator_version,"
            " position, hash) {rows}",
            [
                (checkpoint_id, dialect.stored_id(h.originator_id), h.version, h.position, h.hash)
                for h in heads
            ],
        )
    return Checkpoint(
        checkpoint_id, position, count, prev, digest, signature, public_key, tuple(heads)
    )


def checkpoint_to_head(
    db: Database, key: Ed25519PrivateKey | None = None, limit: int = MAX_EVENTS_PER_CHECKPOINT
) -> list[Checkpoint]:
    """Checkpoints until every event written before the call is covered, each of at most
    `limit` events (none if nothing was written since the last). What is written meanwhile
    is left to the next, so that a busy server cannot keep this going."""
    with db.read() as cur:
        cur.execute(f"SELECT MAX({db.dialect.position_column}) FROM {db.dialect.events_table}")
        newest = cur.fetchone()
    target = int(newest[0]) if newest and newest[0] is not None else 0
    made: list[Checkpoint] = []
    while not made or made[-1].position < target:
        checkpoint = write_checkpoint(db, key, limit)
        if checkpoint is None:
            break
        made.append(checkpoint)
    return made


class Checkpointer(Periodic):
    """In the server: a checkpoint whenever `every` events were written since the last one
    (looked at once a second). Another process writing the same checkpoint makes ours fail
    on its id, which is harmless: theirs covers the same events."""

    name = "checkpointer"

    def __init__(
        self, db: Database, key: Ed25519PrivateKey | None, every: int = 1000, interval: float = 1
    ) -> None:
        super().__init__(interval)
        self.db, self.key, self.every = db, key, every

    def due(self) -> bool:
        dialect = self.db.dialect
        checkpoints = dialect.checkpoints_table
        events, position_column = dialect.events_table, dialect.position_column
        with self.db.read() as cur:
            cur.execute(f"SELECT MAX(position) FROM {checkpoints}")
            row = cur.fetchone()
            since = int(row[0]) if row and row[0] is not None else 0
            cur.execute(
                f"SELECT COUNT(*) FROM (SELECT 1 FROM {events} WHERE {position_column} > ?"
                " LIMIT ?) recent",
                (since, self.every),
            )
            found = cur.fetchone()
        return bool(found and int(found[0]) >= self.every)

    def tick(self) -> None:
        try:
            if self.due():
                write_checkpoint(self.db, self.key)
        except self.db.dialect.integrity_error:
            log.debug("another process wrote this checkpoint first")
