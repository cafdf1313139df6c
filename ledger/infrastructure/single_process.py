"""SQLite is the one-process embedded store: one `ledger serve` or `ledger import` at a time
per file. Two side by side would fight over the file (conflicting writers, both projections
moving the same tracking row), so the second is refused at start.

The guard is an exclusive `flock` on a file beside the database (`<db>.lock`), held for the
life of the process: the kernel drops it when the holder exits, however it exits (a crash or
`kill -9` leaves nothing to clean up). PostgreSQL needs none: several processes are correct
there (optimistic concurrency, one projection writer by an advisory lock).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class DatabaseInUse(ValueError):
    """Another process holds this SQLite database."""


class SingleProcessLock:
    def __init__(self, database_path: str) -> None:
        self.database_path = database_path
        self.path = Path(f"{database_path}.lock")
        self._file: IO[str] | None = None

    def acquire(self, what: str) -> None:
        """Hold the database for this process, or raise DatabaseInUse naming the holder."""
        handle = open(self.path, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DatabaseInUse(
                f"the SQLite database {self.database_path} is in use by {holder}; "
                "SQLite serves one process at a time: stop that one first "
                "(or use PostgreSQL to run several)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{what} (pid {os.getpid()})\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None
