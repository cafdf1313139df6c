"""PostgreSQL notices between the API processes and the projections process (`ledger
project`, decision 31), so that neither polls the other hard.

- COMMITS: an API process committed events (payload: the log position). The projections
  process wakes its eager runners. Sent by a `Notifier` thread of the API process after
  each group commit, coalesced: at most one notice in flight, and the writer thread that
  committed only sets a flag.
- WANTED: a query in an API process waits (`min_position`) for a lazy read model (payload:
  its name). The projections process wakes that runner, which would otherwise look only at
  its next poll.
- PROJECTED: the projections process committed a batch of a read model (payload:
  `name:position`), sent inside the batch's own transaction, so it is delivered if and only
  if the batch committed. An API process's follower (`FollowingRunner`) that a query is
  waiting on re-reads its tracking position at once instead of at its next poll.

A notice is only a hint: a lost one (a notifier or listener without its connection) costs
latency, never correctness, because every runner and follower still polls (50 ms for the
eager read model). Nothing here may fail or slow a command.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import psycopg
from psycopg import pq

from ledger.infrastructure.database import Cursor, Database, DatabaseConfig
from projections.runner import Projection, ProjectionRunner

log = logging.getLogger(__name__)

COMMITS = "tally_events"
WANTED = "tally_wanted"
PROJECTED = "tally_projected"
# A follower re-reads its position on PROJECTED notices for this long after a query last
# waited on it; with nobody waiting it only polls (no round trip per projector batch).
WAIT_WINDOW_SECONDS = 1.0
LISTEN_TIMEOUT_SECONDS = 0.25  # how often a listener looks up from its connection (to stop)
MAX_BACKOFF_SECONDS = 5.0


def _backoff(failures: int) -> float:
    return float(min(MAX_BACKOFF_SECONDS, 0.1 * 2 ** min(failures, 6)))


def _connect(config: DatabaseConfig) -> psycopg.Connection[Any]:
    return psycopg.connect(config.conninfo(), autocommit=True)


class Notifier:
    """The API process's side: COMMITS after each commit and WANTED for waited-on lazy read
    models, sent by a thread of its own on an autocommit connection of its own. The callers
    (writer threads, the event loop) only record what is pending and set an event."""

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._position = 0  # the highest committed position not announced yet (0: none)
        self._wanted: set[str] = set()
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self.sent = 0  # statements sent (each one or more notices)
        self.failures = 0  # consecutive failures (0 once one is sent again)

    def committed(self, position: int) -> None:
        with self._lock:
            self._position = max(self._position, position)
        self._pending.set()

    def wanted(self, name: str) -> None:
        with self._lock:
            self._wanted.add(name)
        self._pending.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="commit-notices", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._pending.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close()

    def _run(self) -> None:
        while True:
            self._pending.wait()
            if self._stop.is_set():
                return
            self._pending.clear()
            with self._lock:
                position, self._position = self._position, 0
                wanted, self._wanted = sorted(self._wanted), set()
            try:
                self._send(position, wanted)
            except Exception as e:
                # Dropped: the projections process polls meanwhile. Said once per outage.
                if not self.failures:
                    log.warning("cannot notify the projections process (%s); it polls meanwhile", e)
                self.failures += 1
                self._close()
                self._stop.wait(_backoff(self.failures))
            else:
                if self.failures:
                    log.info("notifying the projections process again")
                self.failures = 0

    def _send(self, position: int, wanted: list[str]) -> None:
        """One simple query of NOTIFY statements (one round trip, one transaction), through
        libpq directly: a quarter of the CPU of a psycopg `execute` (measured: 24-56 us
        against 130-143 us a call), and this runs in the server's interpreter."""
        statements = [f"NOTIFY {COMMITS}, '{position}'"] if position else []
        statements += [f"NOTIFY {WANTED}, '{_quoted(name)}'" for name in wanted]
        if not statements:
            return
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self.config)
        result = self._conn.pgconn.exec_("; ".join(statements).encode())
        if result.status != pq.ExecStatus.COMMAND_OK:
            message = result.error_message.decode(errors="replace").strip()
            raise psycopg.OperationalError(message or f"NOTIFY failed (status {result.status})")
        self.sent += 1

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("closing the notices connection failed", exc_info=True)
            self._conn = None


class Listener:
    """LISTENs on some channels on a connection of its own and hands each notice's payload
    to that channel's handler, in its thread; reconnects after a failure (with backoff) and
    then calls `reconnected`, as notices sent meanwhile are lost."""

    def __init__(
        self,
        config: DatabaseConfig,
        handlers: dict[str, Callable[[str], None]],
        reconnected: Callable[[], None] = lambda: None,
        name: str = "notices",
    ) -> None:
        self.config = config
        self.handlers = handlers
        self.reconnected = reconnected
        self.name = name
        self.listening = threading.Event()  # set while LISTENing (tests)
        self.received = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with _connect(self.config) as conn:
                    for channel in self.handlers:
                        conn.execute(f"LISTEN {channel}")
                    self.listening.set()
                    if failures:
                        log.info("%s: listening again", self.name)
                        self.reconnected()
                    failures = 0
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=LISTEN_TIMEOUT_SECONDS):
                            self.received += 1
                            self._dispatch(notice.channel, notice.payload)
            except Exception as e:
                self.listening.clear()
                if not failures:
                    log.warning("%s: lost its connection (%s); polling meanwhile", self.name, e)
                failures += 1
                self._stop.wait(_backoff(failures))
        self.listening.clear()

    def _dispatch(self, channel: str, payload: str) -> None:
        handler = self.handlers.get(channel)
        if handler is None:
            return
        try:
            handler(payload)
        except Exception:
            log.exception("%s: the handler of %s failed on %r", self.name, channel, payload)


class FollowingRunner(ProjectionRunner):
    """An API process's runner when `ledger project` writes the read models: it never writes
    (writes=False) and follows the tracking position. A query that waits for it (`wake`, from
    `min_position`) makes it re-read now, opens a short window in which each PROJECTED notice
    for it makes it re-read again, and, for a lazy read model, asks the projections process
    to look now (WANTED)."""

    def __init__(
        self,
        database: Database,
        recorder: Any,
        decode: Callable[[Any], Any],
        projection: Projection,
        notifier: Notifier,
        poll_interval: float,
        lazy: bool,
    ) -> None:
        super().__init__(
            database, recorder, decode, projection, poll_interval=poll_interval, writes=False
        )
        self.notifier = notifier
        self.lazy = lazy
        self.waited_at = -WAIT_WINDOW_SECONDS

    def wake(self, _position: int = 0) -> None:
        self.waited_at = time.monotonic()
        super().wake()
        if self.lazy:
            self.notifier.wanted(self.projection.name)

    def projected(self, position: int) -> None:
        """The projections process committed this read model up to `position`."""
        if position > self.position and time.monotonic() - self.waited_at < WAIT_WINDOW_SECONDS:
            super().wake()


def announcing(projection: type[Projection]) -> type[Projection]:
    """`projection` whose every batch also sends PROJECTED (`name:last position`) in the
    batch's transaction: delivered at its commit, never for a batch rolled back."""

    def process(self: Projection, cur: Cursor, batch_events: Sequence[tuple[int, Any]]) -> None:
        projection.process(self, cur, batch_events)
        if batch_events:
            cur.execute("SELECT pg_notify(?, ?)", (PROJECTED, f"{self.name}:{batch_events[-1][0]}"))

    announced = type(projection.__name__, (projection,), {"process": process})
    announced.__doc__ = projection.__doc__
    return cast(type[Projection], announced)


def _quoted(text: str) -> str:
    """`text` inside a SQL string literal (a read model's name: letters and underscores)."""
    return text.replace("'", "''")


def parse_projected(payload: str) -> tuple[str, int] | None:
    """`name:position` -> (name, position); None for anything else."""
    name, _, position = payload.rpartition(":")
    return (name, int(position)) if name and position.isdigit() else None
