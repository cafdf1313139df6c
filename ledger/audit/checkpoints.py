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
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.infrastructure.chain import GENESIS
from ledger.infrastructure.database import Database
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


# ---------------------------------------------------------------------- keys


def load_signing_key(path: str | None = None) -> Ed25519PrivateKey | None:
    """The Ed25519 private key (PEM, PKCS#8) at `path` or $TALLY_CHECKPOINT_KEY, if any."""
    path = path or os.environ.get("TALLY_CHECKPOINT_KEY")
    if not path:
        return None
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: str) -> Ed25519PublicKey:
    """An Ed25519 public key (PEM, SubjectPublicKeyInfo) or a private key's public half."""
    data = Path(path).read_bytes()
    if b"PRIVATE KEY" in data:
        private = serialization.load_pem_private_key(data, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 key")
        return private.public_key()
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signature_ok(public_key: bytes, signature: bytes, digest: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, digest)
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------------- storage


def load_checkpoints(db: Database) -> list[Checkpoint]:
    dialect = db.dialect
    checkpoints, heads_table = dialect.checkpoints_table, dialect.checkpoint_heads_table
    with db.read() as cur:
        cur.execute(
            "SELECT checkpoint_id, position, event_count, prev_digest, digest, signature,"
            f" public_key FROM {checkpoints} ORDER BY checkpoint_id"
        )
        rows = cur.fetchall()
        cur.execute(
            "SELECT checkpoint_id, originator_id, originator_version, position, hash"
            f" FROM {heads_table}"
        )
        heads: dict[int, list[Head]] = {}
        for cid, oid, version, position, digest in cur.fetchall():
            heads.setdefault(int(cid), []).append(
                Head(dialect.read_id(oid), int(version), int(position), bytes(digest))
            )
    return [
        Checkpoint(
            int(r[0]),
            int(r[1]),
            int(r[2]),
            bytes(r[3]),
            bytes(r[4]),
            bytes(r[5]) if r[5] is not None else None,
            bytes(r[6]) if r[6] is not None else None,
            tuple(heads.get(int(r[0]), ())),
        )
        for r in rows
    ]


def write_checkpoint(db: Database, key: Ed25519PrivateKey | None = None) -> Checkpoint | None:
    """Commit to every event written since the last checkpoint (None if there is none)."""
    dialect = db.dialect
    checkpoints, heads_table = dialect.checkpoints_table, dialect.checkpoint_heads_table
    events, position_column = dialect.events_table, dialect.position_column
    with db.transaction() as cur:
        cur.execute(
            f"SELECT checkpoint_id, position, event_count, digest FROM {checkpoints}"
            " ORDER BY checkpoint_id DESC LIMIT 1"
        )
        last = cur.fetchone()
        last_id, since, count, prev = (
            (int(last[0]), int(last[1]), int(last[2]), bytes(last[3]))
            if last
            else (0, 0, 0, GENESIS)
        )
        # Positions commit in order (the recorder's table lock; SQLite's single writer), so
        # every event at or below the newest visible position is already committed.
        cur.execute(f"SELECT MAX({position_column}) FROM {events}")
        newest = cur.fetchone()
        position = int(newest[0]) if newest and newest[0] is not None else 0
        if position <= since:
            return None
        cur.execute(
            f"SELECT COUNT(*) FROM {events} WHERE {position_column} > ? AND {position_column} <= ?",
            (since, position),
        )
        found = cur.fetchone()
        count += int(found[0]) if found else 0
        cur.execute(
            f"SELECT e.originator_id, e.originator_version, e.{position_column}, e.hash"
            f" FROM {events} e JOIN (SELECT originator_id, MAX(originator_version) AS v"
            f" FROM {events} WHERE {position_column} > ? AND {position_column} <= ?"
            " GROUP BY originator_id) m"
            " ON e.originator_id = m.originator_id AND e.originator_version = m.v",
            (since, position),
        )
        heads = [
            Head(
                dialect.read_id(r[0]),
                int(r[1]),
                int(r[2]),
                bytes(r[3]) if r[3] is not None else b"",
            )
            for r in cur.fetchall()
        ]
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
