"""The relay's side of Tally's database: its durable position (`relay_positions`, migration
0013) and the lock that makes one relay at a time active for a stream.

PostgreSQL: a session advisory lock on a connection of its own
(database.session_advisory_lock, as the projection writers take theirs); the server drops it
when the holder's connection goes, however the holder dies. SQLite: an exclusive `flock` on
`<db>.relay.lock`, which the kernel drops when the holder exits (SQLite serves one server
process, but `ledger relay` may run beside it).
"""

from __future__ import annotations

import fcntl
import time
import zlib
from typing import IO, Any

import psycopg

from ledger.infrastructure.database import Database, session_advisory_lock


class RelayPosition:
    """The last log position JetStream acknowledged for one relay, by name."""

    def __init__(self, database: Database, name: str) -> None:
        self.database = database
        self.name = name

    def load(self) -> int:
        with self.database.read() as cur:
            cur.execute("SELECT position FROM relay_positions WHERE name = ?", (self.name,))
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def store(self, position: int) -> None:
        """Never moves back: a late writer with an older position changes nothing."""
        now = int(time.time() * 1_000_000)
        with self.database.transaction() as cur:
            cur.execute(
                "INSERT INTO relay_positions (name, position, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
                " updated_at = excluded.updated_at"
                " WHERE relay_positions.position < excluded.position",
                (self.name, position, now),
            )


class RelayLock:
    """Held by the one active relay of a name; others try again now and then."""

    def __init__(self, database: Database, name: str) -> None:
        self.database = database
        self.key = zlib.crc32(f"tally-relay:{name}".encode())
        self._conn: psycopg.Connection[Any] | None = None
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        if self._conn is not None:
            return not self._conn.closed
        return self._file is not None

    def try_acquire(self) -> bool:
        if self.held:
            return True
        config = self.database.config
        if config.kind == "sqlite":
            handle = open(f"{config.sqlite_path}.relay.lock", "a+")  # noqa: SIM115 (held)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            self._file = handle
            return True
        self._conn = session_advisory_lock(config, self.key, connect_timeout=5)
        return self._conn is not None

    def still_held(self) -> bool:
        """Whether the lock is still ours: on PostgreSQL, whether its connection answers
        (a lost connection lost the lock, and another relay may have taken it)."""
        if self._conn is None:
            return self._file is not None
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self.release()
            return False
        return True

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._file is not None:
            self._file.close()
            self._file = None
