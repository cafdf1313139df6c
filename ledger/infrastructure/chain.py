"""The per-account hash chain (docs/audit.md is the specification an auditor codes against).

    hash = SHA-256( prev_hash                          32 bytes; 32 zero bytes at version 1
                  || u64(len(id)) || id                the aggregate id, lowercase hyphenated
                  || u64(version)                      UUID text, UTF-8
                  || u64(len(topic)) || topic          UTF-8
                  || u64(len(state)) || state )        the stored bytes, exactly
    u64 = unsigned 64-bit big-endian

The hash is over the bytes as stored, so nobody has to re-encode an event (and agree on a
canonical JSON) to check it; the length prefixes make the concatenation unambiguous.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from uuid import UUID

from eventsourcing.persistence import ProgrammingError, StoredEvent

from ledger.infrastructure.eventlog import read_id

GENESIS = bytes(32)
_U64 = struct.Struct(">Q")


def event_hash(
    prev_hash: bytes, originator_id: UUID | str, version: int, topic: str, state: bytes
) -> bytes:
    digest = hashlib.sha256(prev_hash)
    for part in (str(originator_id).encode(), None, topic.encode(), state):
        if part is None:
            digest.update(_U64.pack(version))
        else:
            digest.update(_U64.pack(len(part)))
            digest.update(part)
    return digest.digest()


Lookup = Callable[[list[tuple[UUID, int]]], dict[UUID, bytes]]


class ChainHeads:
    """(version, hash) of the newest event of recently written aggregates, so that saving the
    next event needs no query. An entry is only ever used to write version + 1: if another
    process wrote that version first, the insert fails on the primary key anyway. `Tally`
    sets the capacity to what its writers cache (decision 35)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._heads: OrderedDict[UUID, tuple[int, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def link(self, events: Sequence[StoredEvent], lookup: Lookup) -> list[tuple[bytes, bytes]]:
        """(prev_hash, hash) for each event, in order."""
        running: dict[UUID, tuple[int, bytes]] = {}
        missing: list[tuple[UUID, int]] = []
        with self._lock:
            for e in events:
                oid = read_id(e.originator_id)
                if oid in running or e.originator_version == 1:
                    running.setdefault(oid, (0, GENESIS))
                    continue
                head = self._heads.get(oid)
                if head is not None and head[0] == e.originator_version - 1:
                    running[oid] = head
                else:
                    missing.append((oid, e.originator_version - 1))
                    running[oid] = (-1, b"")
        if missing:
            found = lookup(missing)
            for oid, version in missing:
                if oid not in found:
                    raise ProgrammingError(
                        f"cannot chain {oid} v{version + 1}: no stored event v{version}"
                    )
                running[oid] = (version, found[oid])
        links = []
        for e in events:
            oid = read_id(e.originator_id)
            prev = running[oid][1]
            digest = event_hash(prev, oid, e.originator_version, e.topic, e.state)
            running[oid] = (e.originator_version, digest)
            links.append((prev, digest))
        return links

    def remember(self, events: Iterable[StoredEvent], links: Sequence[tuple[bytes, bytes]]) -> None:
        """After the commit: these are now the newest events of their aggregates."""
        with self._lock:
            for e, (_, digest) in zip(events, links, strict=True):
                oid = read_id(e.originator_id)
                self._heads[oid] = (e.originator_version, digest)
                self._heads.move_to_end(oid)
            while len(self._heads) > self.capacity:
                self._heads.popitem(last=False)
