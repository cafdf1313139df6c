"""Follow the event log and feed a projection, exactly once.

Each batch of events (up to `batch_size`, so catching up from zero costs one transaction per
few hundred events) is applied and the tracking position advanced in ONE database
transaction. The tracking update is a compare-and-set on the previous position: if anyone
else moved it, the batch rolls back and the runner reloads. After a database error the
runner waits, reloads its position from the database and carries on, so a crash mid-batch
loses nothing and counts nothing twice.

On PostgreSQL one process at a time writes a projection: the runner holds a session-level
advisory lock; a process without it only follows the tracking position, for `min_position`.
The library's PostgreSQL recorder commits notification ids in order (its table lock), and
SQLite serialises writers, so reading "ids after my position" never skips a late commit.

The runners of one process read the log through one `LogReader` (projections/log_reader.py,
decision 30): each notification is read and decoded once for all of them; a runner far
behind the others (a rebuild) reads and decodes for itself.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol

import psycopg
from eventsourcing.persistence import ApplicationRecorder, Notification

from ledger.infrastructure.database import Cursor, Database, session_advisory_lock
from ledger.infrastructure.dialect import Dialect
from ledger.telemetry import instruments
from projections.log_reader import LogReader

log = logging.getLogger(__name__)
# How long stopping a runner waits for the batch in hand to commit or roll back.
STOP_SECONDS = 10.0


class Projection(Protocol):
    """A read model: its name (its tracking row), the tables it writes with their key columns
    (for `ledger audit replay`), and how a batch of events changes them. Made with the
    dialect of the database it writes (for its bulk writes)."""

    name: ClassVar[str]
    tables: ClassVar[dict[str, tuple[str, ...]]]
    handled: ClassVar[frozenset[type]]  # every event type it has a rule for
    # Seconds between looks at the log when nobody wakes it. An eager read model (0: every
    # commit of this process wakes it) keeps read-your-writes waits short; a lazy one takes
    # bigger batches, paying a batch's fixed cost (a read, a transaction) far less often,
    # and is woken when a query waits for it (min_position).
    poll_interval: ClassVar[float]

    def __init__(self, dialect: Dialect) -> None: ...

    def process(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]]) -> None:
        """Apply events (position, domain event) to the read model through `cur`, in the
        runner's transaction. An event type it has no handler for must raise."""


class ProjectionRunner:
    def __init__(
        self,
        database: Database,
        recorder: ApplicationRecorder,
        decode: Callable[[Notification], Any],
        projection: Projection,
        batch_size: int = 500,
        poll_interval: float = 0.05,
        writes: bool = True,
        reader: LogReader | None = None,
    ) -> None:
        """`writes=False`: never write the read model, only follow the tracking position that
        another process (`ledger project`) advances, for `min_position`. `reader`: the log reader
        this process's runners share (the recorder's and `decode`'s); without one, the
        runner reads and decodes on its own."""
        self.database = database
        self.recorder = recorder
        self.decode = decode
        self.reader = reader if reader is not None else LogReader(recorder, decode, capacity=0)
        self.projection = projection
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.writes = writes
        self.position = 0
        self.errors = 0
        self._changed = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = _WriterLock(database, projection.name)
        self.ready = threading.Event()

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._ensure_tracking_row()
        self.position = self._load_position()
        self._thread = threading.Thread(
            target=self._run, name=f"projection-{self.projection.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.ask_to_stop()
        self.join()

    def ask_to_stop(self) -> None:
        """Stop after the batch in hand (if any), without waiting for it: see `stop_all`."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float = STOP_SECONDS) -> None:
        """Wait (at most `timeout`) for the loop to end, then give up the writer lock."""
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, timeout))
            if self._thread.is_alive():
                log.error("projection %s did not stop within %.0f s", self.projection.name, timeout)
        self._lock.release()

    def wake(self, _position: int = 0) -> None:
        """New events were committed in this process: look now, not at the next poll."""
        self._wake.set()

    def wait_for(self, position: int, timeout: float) -> bool:
        """Block until the read model reflects `position` (or `timeout` seconds pass)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.position < position:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._changed.wait(min(remaining, self.poll_interval))
        return True

    def run_until_caught_up(self) -> int:
        """Process everything committed so far in the calling thread (tools, tests)."""
        self._ensure_tracking_row()
        self.position = self._load_position()
        while self._step():
            pass
        return self.position

    # ------------------------------------------------------------------ loop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.writes or not self._lock.acquire():
                    self._follow()
                    continue
                if not self._step():
                    self.ready.set()
                    self._wake.wait(self.poll_interval)
                    self._wake.clear()
            except Exception:
                self.errors += 1
                log.exception("projection %s failed; restarting", self.projection.name)
                self._lock.release()
                self._stop.wait(min(5.0, 0.1 * 2 ** min(self.errors, 6)))
                try:
                    self.position = self._load_position()
                except Exception:
                    log.exception("projection %s cannot reload its position", self.projection.name)

    def _follow(self) -> None:
        """Another process writes this projection: track its position for min_position."""
        self._set_position(self._load_position())
        self.ready.set()
        self._wake.wait(self.poll_interval)
        self._wake.clear()

    def _step(self) -> bool:
        events = self.reader.read(self.position + 1, self.batch_size)
        if not events:
            return False
        last = events[-1][0]
        # Not durable (decision 8): read models and their position are rebuilt from the
        # durable log; a crash loses the batch and its position together, never one alone.
        with (
            instruments.current.projection_batch(self.projection.name, events),
            self.database.transaction(durable=False) as cur,
        ):
            self.projection.process(cur, events)
            cur.execute(
                "UPDATE projection_tracking SET position = ? WHERE name = ? AND position = ?",
                (last, self.projection.name, self.position),
            )
            if cur.rowcount != 1:
                raise TrackingConflict(
                    f"projection {self.projection.name} moved past {self.position} elsewhere"
                )
        self._set_position(last)
        return True

    def _set_position(self, position: int) -> None:
        with self._changed:
            self.position = position
            self._changed.notify_all()

    def _ensure_tracking_row(self) -> None:
        with self.database.transaction() as cur:
            cur.execute(
                "INSERT INTO projection_tracking (name, position) VALUES (?, 0)"
                " ON CONFLICT (name) DO NOTHING",
                (self.projection.name,),
            )

    def _load_position(self) -> int:
        with self.database.read() as cur:
            cur.execute(
                "SELECT position FROM projection_tracking WHERE name = ?", (self.projection.name,)
            )
            row = cur.fetchone()
        return int(row[0]) if row else 0


def stop_all(runners: Iterable[ProjectionRunner], timeout: float = STOP_SECONDS) -> None:
    """Stop every runner within `timeout` in all: each is asked first, then each is waited
    for against one deadline, so that one slow batch does not hold up the others' stop and
    the whole takes the slowest runner's time, not the sum of theirs (a projections process
    has a supervisor's deadline to keep)."""
    runners = list(runners)
    for runner in runners:
        runner.ask_to_stop()
    deadline = time.monotonic() + timeout
    for runner in runners:
        runner.join(deadline - time.monotonic())


class TrackingConflict(RuntimeError):
    pass


class _WriterLock:
    """PostgreSQL: a session advisory lock on a connection of its own. SQLite: always held
    (one process per file; the tracking compare-and-set still guards exactly-once)."""

    def __init__(self, database: Database, name: str) -> None:
        self.database = database
        self.key = zlib.crc32(f"tally-projection:{name}".encode())
        self._conn: psycopg.Connection[Any] | None = None
        self._last_try = -1.0

    def acquire(self) -> bool:
        if not self.database.dialect.several_processes:
            return True  # one process per database: nobody to elect
        if self._conn is not None and not self._conn.closed:
            return True
        # A follower polls every few ms for the position; trying for the lock (a new
        # connection) once a second is enough to take over from a writer that went away.
        if time.monotonic() - self._last_try < 1.0:
            return False
        self._last_try = time.monotonic()
        self._conn = session_advisory_lock(self.database.config, self.key)
        return self._conn is not None

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
