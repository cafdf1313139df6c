"""The event log as the projection runners of one process read it: each notification read
and decoded once, however many runners apply it (decision 30).

A `LogReader` keeps a window of the newest decoded notifications, (position, event) in
position order, at most `capacity` of them. The window covers a range of positions
[lo, hi] completely: every notification the database holds with an id in it is in the
window. That holds because the window only ever grows by reading "the ids after hi" and
the ids commit in order (the library's table lock on PostgreSQL, SQLite's single writer:
see projections/runner.py), so a later commit never lands inside a range already read.

`read(start, limit)` answers, in order and without a gap, the notifications from `start`:

- `start` inside the window (or just past its end): from the window; if that leaves the
  answer short of `limit`, one reader at a time reads the ids after hi from the database,
  decodes them and appends them (the oldest are dropped past `capacity`). A runner that
  waited for that read takes what it brought instead of reading again.
- `start` past the window's end (a runner ahead of everything the window holds, e.g. the
  live runners after a rebuild seated the window): the window moves there, as the live
  runners are what it is for.
- `start` before the window (a runner far behind, e.g. a rebuild): read and decoded for
  that runner alone, never stored, so it evicts nothing the runners at the head need; once
  it reaches the window it reads from it.

Decoded events are shared between the runners' threads: a projection must not change an
event or anything it holds (the allocations are dicts). None does
(tests/unit/test_log_reader.py checks every registered projection against a log).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Notification

# About 1.5 KB a decoded event (measured with tracemalloc over a mixed log of 20,067
# events): 10,000 of them are about 15 MB. The live runners are seldom more than one
# lazy poll (1 s) plus a batch apart.
DEFAULT_CAPACITY = 10_000
_INSIDE, _AHEAD, _BEHIND = "inside", "ahead", "behind"


class LogReader:
    def __init__(
        self,
        recorder: ApplicationRecorder,
        decode: Callable[[Notification], Any],
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        """`capacity` 0: no window, every read goes to the database (one runner alone)."""
        self.recorder = recorder
        self.decode = decode
        self.capacity = capacity
        self._lock = threading.Lock()  # guards the window
        self._fill = threading.Lock()  # one database read for the window at a time
        self._ids: list[int] = []
        self._entries: list[tuple[int, Any]] = []
        self._lo = 0  # the window covers [lo, hi]; empty and unseated while lo == 0
        self._hi = -1
        self.decoded = 0  # notifications decoded so far (for tests and measurements)

    def read(self, start: int, limit: int) -> list[tuple[int, Any]]:
        """(position, event) from position `start` on, in order, with no gap: the first
        notifications the database holds from `start`, at most `limit` and at least one
        if it holds any (an empty answer means the reader is caught up)."""
        start = max(start, 1)
        if self.capacity <= 0:
            return self._decoded(self._select(start, limit))
        with self._lock:
            seen = self._hi
            where = self._where(start)
            if where == _INSIDE:
                found = self._slice(start, limit)
                if len(found) == limit:
                    return found
        if where == _BEHIND:
            return self._behind(start, limit)
        with self._fill:
            with self._lock:
                where = self._where(start)
                if where == _INSIDE and self._hi != seen:
                    # Another runner read the log while this one waited: take what it read.
                    found = self._slice(start, limit)
                    if found:
                        return found
                after = self._hi + 1
            if where == _BEHIND:
                return self._behind(start, limit)
            if where == _AHEAD:
                after = start
            new = self._decoded(self._select(after, limit))
            with self._lock:
                if where == _AHEAD:  # the window moves here: nothing before `start` is kept
                    self._ids, self._entries = [], []
                    self._lo, self._hi = start, start - 1
                self._ids += [position for position, _ in new]
                self._entries += new
                if new:
                    self._hi = new[-1][0]
                found = self._slice(start, limit)  # before the oldest go: they may be in it
                excess = len(self._entries) - self.capacity
                if excess > 0:
                    self._lo = self._ids[excess - 1] + 1
                    del self._ids[:excess]
                    del self._entries[:excess]
                return found

    def _where(self, start: int) -> str:
        if not self._lo or start > self._hi + 1:
            return _AHEAD
        return _INSIDE if start >= self._lo else _BEHIND

    def _behind(self, start: int, limit: int) -> list[tuple[int, Any]]:
        """A runner before the window: a whole batch read and decoded for it alone (not
        cut at the window's start: a short batch costs a projection a transaction)."""
        return self._decoded(self._select(start, limit))

    def _slice(self, start: int, limit: int) -> list[tuple[int, Any]]:
        i = bisect_left(self._ids, start)
        return self._entries[i : i + limit]

    def _select(self, start: int, limit: int) -> list[Notification]:
        return list(self.recorder.select_notifications(start=start, limit=limit))

    def _decoded(self, notifications: list[Notification]) -> list[tuple[int, Any]]:
        decoded = [(n.id, self.decode(n)) for n in notifications]
        with self._lock:
            self.decoded += len(decoded)
        return decoded
