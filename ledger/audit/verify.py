"""Recompute every account's hash chain and every checkpoint from the stored log.

Reads the events table row by row in position order, trusting nothing the server computed:
each event's hash is recomputed from its stored bytes (ledger/infrastructure/chain.py), each
account's versions must run 1, 2, 3... with each prev_hash equal to the previous event's hash,
and at every checkpoint's position the log must hold exactly the events the checkpoint
counted, with the newest event of each account it names (checkpoints.py). Findings carry the
position where they are seen; an event that cannot be read or decoded is a finding too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from ledger.audit.checkpoints import (
    Checkpoint,
    Column,
    StoredColumns,
    checkpoint_digest,
    load_checkpoints,
    signature_ok,
)
from ledger.domain.ids import program_id_key
from ledger.infrastructure.chain import GENESIS, event_hash
from ledger.infrastructure.database import Database

ALTERED = "ALTERED"  # the stored bytes do not give the stored hash
BROKEN_LINK = "BROKEN_LINK"  # prev_hash is not the hash of the account's previous event
MISSING = "MISSING"  # versions skip, or a checkpoint names an event that is not there
REORDERED = "REORDERED"  # an account's versions out of position order
# The stored state is not the JSON of an event, or a value of the row is of another type than
# Tally writes (TEXT for a BLOB, say: the library could not read it back).
UNDECODABLE = "UNDECODABLE"
UNCHAINED = "UNCHAINED"  # no hash stored (written around the recorder)
CHECKPOINT = "CHECKPOINT"  # a checkpoint does not match the log
BAD_SIGNATURE = "BAD_SIGNATURE"


@dataclass(frozen=True)
class Finding:
    position: int
    kind: str
    detail: str


@dataclass
class VerifyReport:
    events_checked: int = 0
    accounts: int = 0
    checkpoints_checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first_bad_position(self) -> int:
        return min((f.position for f in self.findings), default=0)

    @property
    def detail(self) -> str:
        if self.ok:
            return (
                f"{self.events_checked} events of {self.accounts} accounts and "
                f"{self.checkpoints_checked} checkpoints verified"
            )
        first = min(self.findings, key=lambda f: f.position)
        more = f" (and {len(self.findings) - 1} more findings)" if len(self.findings) > 1 else ""
        return f"{first.kind} at position {first.position}: {first.detail}{more}"


_EVENT_COLUMNS = (
    Column("originator_id", "id"),
    Column("originator_version", "int"),
    Column("topic", "text"),
    Column("state", "bytes"),
    Column("prev_hash", "bytes", nullable=True),
    Column("hash", "bytes", nullable=True),
)


@dataclass(frozen=True)
class Row:
    """One stored event as it is, even rewritten: `problems` says what cannot be read (a
    value of another type than Tally writes, an id that is not a UUID, a version that is not
    1, 2, 3...); without an id or a version (None, 0) it belongs to no account."""

    position: int
    originator_id: UUID | None
    version: int
    topic: str
    state: bytes
    prev_hash: bytes | None
    hash: bytes | None
    problems: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        if self.originator_id is None or self.version < 1:
            return f"the event at position {self.position}"
        return f"{self.originator_id} v{self.version}"


class _Events:
    """How this backend's events table is read: every column as stored (checkpoints.py)."""

    def __init__(self, db: Database) -> None:
        self.table, self.position = db.dialect.events_table, db.dialect.position_column
        self.columns = StoredColumns(db.dialect, _EVENT_COLUMNS)
        self.select = f"SELECT {self.position}, {self.columns.sql} FROM {self.table}"

    def row(self, r: Sequence[Any]) -> Row:
        (oid, version, topic, state, prev_hash, digest), problems = self.columns.decode(r[1:])
        if version is not None and version < 1:
            problems.append(f"its version {version} is not 1, 2, 3...")
            version = 0
        return Row(
            int(r[0]),
            oid,
            version or 0,
            topic or "",
            state if state is not None else b"",
            prev_hash,
            digest,
            tuple(problems),
        )


def read_rows(db: Database, after: int = 0, batch: int = 5000) -> Iterator[Row]:
    """The stored events, raw, in position order."""
    events = _Events(db)
    while True:
        with db.read() as cur:
            cur.execute(
                f"{events.select} WHERE {events.position} > ? ORDER BY {events.position} LIMIT ?",
                (after, batch),
            )
            rows = cur.fetchall()
        if not rows:
            return
        yield from (events.row(r) for r in rows)
        after = int(rows[-1][0])


def account_rows(db: Database, originator_id: UUID) -> list[Row]:
    """One aggregate's stored events, raw, in version order."""
    events = _Events(db)
    with db.read() as cur:
        cur.execute(
            f"{events.select} WHERE originator_id = ? ORDER BY originator_version",
            (db.dialect.stored_id(originator_id),),
        )
        return [events.row(r) for r in cur.fetchall()]


def first_row(db: Database, originator_id: UUID) -> Row | None:
    """An aggregate's first stored event (version 1), raw."""
    events = _Events(db)
    with db.read() as cur:
        cur.execute(
            f"{events.select} WHERE originator_id = ? AND originator_version = 1",
            (db.dialect.stored_id(originator_id),),
        )
        found = cur.fetchone()
    return events.row(found) if found else None


def program_exists(db: Database, program_id: str) -> bool:
    """Whether the log holds any event of this program's aggregate (its ProgramCreated, and
    any update): asked by id alone, so a tampered event still counts for the verifier."""
    dialect = db.dialect
    with db.read() as cur:
        cur.execute(
            f"SELECT 1 FROM {dialect.events_table} WHERE originator_id = ? LIMIT 1",
            (dialect.stored_id(program_id_key(program_id)),),
        )
        return cur.fetchone() is not None


def decode_state(row: Row) -> tuple[dict[str, Any] | None, list[str]]:
    """An event's content, if its state is a JSON object, and everything that is wrong with
    the row (an empty list for a sound one)."""
    problems = list(row.problems)
    try:
        payload = json.loads(row.state)
    except (ValueError, RecursionError) as e:
        problems.append(f"its state is not JSON ({e})")
        return None, problems
    if not isinstance(payload, dict):
        problems.append("its state is not a JSON object")
        return None, problems
    return payload, problems


@dataclass
class _Account:
    version: int
    hash: bytes
    position: int
    program_id: str | None


class Verifier:
    def __init__(self, db: Database, program_id: str = "", public_key: bytes | None = None) -> None:
        self.db = db
        self.program_id = program_id
        self.public_key = public_key  # trusted key; None: check against the stored one
        self.report = VerifyReport()
        self.accounts: dict[UUID, _Account] = {}
        self.changed: set[UUID] = set()  # since the last checkpoint

    def run(self) -> VerifyReport:
        checkpoints = load_checkpoints(self.db)
        pending = iter(checkpoints)
        upcoming = next(pending, None)
        previous: Checkpoint | None = None
        count = 0
        for row in read_rows(self.db):
            while upcoming is not None and row.position > upcoming.position:
                self._check_checkpoint(upcoming, previous, count)
                previous, upcoming = upcoming, next(pending, None)
            count += 1
            self._check_event(row)
        while upcoming is not None:
            self._check_checkpoint(upcoming, previous, count)
            previous, upcoming = upcoming, next(pending, None)
        self.report.accounts = sum(
            1 for a in self.accounts.values() if self._selected(a.program_id)
        )
        return self.report

    def _selected(self, program_id: str | None) -> bool:
        return not self.program_id or program_id in (None, self.program_id)

    def _find(self, row: Row | None, kind: str, detail: str, position: int = 0) -> None:
        self.report.findings.append(Finding(position or (row.position if row else 0), kind, detail))

    def _check_event(self, row: Row) -> None:
        payload, problems = decode_state(row)
        if problems:
            self._find(row, UNDECODABLE, f"{row.name}: {'; '.join(problems)}")
        if row.originator_id is None or row.version < 1:
            self.report.events_checked += 1  # of no account, so of no program: shown to all
            return
        known = self.accounts.get(row.originator_id)
        program_id = known.program_id if known else None
        if row.version == 1 and payload is not None:
            program_id = str(payload.get("program_id", "")) or None
        if not self._selected(program_id):
            self._advance(row, row.originator_id, program_id)
            return
        self.report.events_checked += 1
        name = row.name
        expected_version = known.version + 1 if known else 1
        if row.version < expected_version:
            self._find(row, REORDERED, f"{name} stored after v{known.version if known else 0}")
        elif row.version > expected_version:
            gap = f"v{expected_version}" + (
                f"..v{row.version - 1}" if row.version - 1 > expected_version else ""
            )
            self._find(row, MISSING, f"{name} follows v{expected_version - 1}: {gap} missing")
        if row.hash is None or row.prev_hash is None:
            self._find(row, UNCHAINED, f"{name} has no stored hash")
        else:
            if event_hash(row.prev_hash, row.originator_id, row.version, row.topic, row.state) != (
                row.hash
            ):
                self._find(row, ALTERED, f"{name}: its stored bytes do not give its hash")
            expected_prev = known.hash if known and row.version == expected_version else None
            if row.version == 1 and row.prev_hash != GENESIS:
                self._find(row, BROKEN_LINK, f"{name}: a first event must link to zero")
            elif expected_prev is not None and row.prev_hash != expected_prev:
                self._find(
                    row, BROKEN_LINK, f"{name}: prev_hash is not the hash of v{row.version - 1}"
                )
        self._advance(row, row.originator_id, program_id)

    def _advance(self, row: Row, oid: UUID, program_id: str | None) -> None:
        known = self.accounts.get(oid)
        if known is None or row.version > known.version:
            self.accounts[oid] = _Account(row.version, row.hash or b"", row.position, program_id)
        self.changed.add(oid)

    def _check_checkpoint(
        self, checkpoint: Checkpoint, previous: Checkpoint | None, count: int
    ) -> None:
        self.report.checkpoints_checked += 1
        cid, at = checkpoint.checkpoint_id, checkpoint.position
        where = f"checkpoint {cid} (position {at})"
        if checkpoint.problems:
            self._find(None, CHECKPOINT, f"{where}: {'; '.join(checkpoint.problems)}", at)
        prev_digest = previous.digest if previous else GENESIS
        expected_id = previous.checkpoint_id + 1 if previous else 1
        if cid != expected_id or checkpoint.prev_digest != prev_digest:
            self._find(None, CHECKPOINT, f"{where} does not follow the checkpoint before it", at)
        digest = checkpoint_digest(
            cid, at, checkpoint.event_count, checkpoint.prev_digest, list(checkpoint.heads)
        )
        if digest != checkpoint.digest:
            self._find(None, CHECKPOINT, f"{where}: its record was altered", at)
        self._check_signature(checkpoint, where)
        for head in checkpoint.heads:
            mine = self.accounts.get(head.originator_id)
            if mine is None or mine.version < head.version:
                self._find(
                    None,
                    MISSING,
                    f"{where} commits to {head.originator_id} v{head.version}, which is "
                    f"not in the log (the log ends at v{mine.version if mine else 0})",
                    head.position,
                )
            elif mine.version == head.version and (
                mine.hash != head.hash or mine.position != head.position
            ):
                self._find(
                    None,
                    ALTERED,
                    f"{where}: {head.originator_id} v{head.version} differs from the event "
                    "it committed to",
                    head.position,
                )
        named = {h.originator_id for h in checkpoint.heads}
        for oid in self.changed - named:
            mine = self.accounts[oid]
            self._find(
                None,
                CHECKPOINT,
                f"{where} does not name {oid}, written at v{mine.version} before it",
                mine.position,
            )
        if count != checkpoint.event_count:
            self._find(
                None,
                MISSING if count < checkpoint.event_count else CHECKPOINT,
                f"{where} counted {checkpoint.event_count} events, the log has {count}",
                at,
            )
        self.changed = set()

    def _check_signature(self, checkpoint: Checkpoint, where: str) -> None:
        at = checkpoint.position
        if checkpoint.signature is None:
            if self.public_key is not None:
                self._find(None, BAD_SIGNATURE, f"{where} is not signed", at)
            return
        key = self.public_key or checkpoint.public_key
        if self.public_key is not None and checkpoint.public_key != self.public_key:
            self._find(None, BAD_SIGNATURE, f"{where} was signed by another key", at)
        elif key is None or not signature_ok(key, checkpoint.signature, checkpoint.digest):
            self._find(None, BAD_SIGNATURE, f"{where}: the signature does not verify", at)


def verify(db: Database, program_id: str = "", public_key: bytes | None = None) -> VerifyReport:
    return Verifier(db, program_id, public_key).run()
