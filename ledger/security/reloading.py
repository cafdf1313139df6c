"""The credentials a running server checks against, reloaded when the file changes: a
revocation (`ledger credentials revoke`) takes effect within about a second, without a
restart. A file that became unreadable or malformed keeps the last good set, and says so
in the log: a broken edit must never open the server, nor lock everyone out."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from ledger.security.credentials import CredentialsError, CredentialSet, load

log = logging.getLogger(__name__)
CHECK_INTERVAL_SECONDS = 1.0

# What tells a changed file: an atomic rename gives a new inode; an edit in place a new
# modification time or size.
Signature = tuple[int, int, int, int]


def _signature(path: str) -> Signature:
    st = os.stat(path)
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)


class ReloadingCredentials:
    def __init__(
        self,
        path: str,
        clock: Callable[[], float] = time.monotonic,
        interval: float = CHECK_INTERVAL_SECONDS,
    ) -> None:
        """Loads the file now: a bad file at start is the operator's error (raised)."""
        self.path = path
        self.clock = clock
        self.interval = interval
        self._signature: Signature | None = _signature_or_none(path)
        self._current = load(path)
        self._checked = clock()
        self._failing: str | None = None

    def current(self) -> CredentialSet:
        """The set in force; looks at the file at most once per `interval`."""
        now = self.clock()
        if now - self._checked >= self.interval:
            self._checked = now
            self._refresh()
        return self._current

    def _refresh(self) -> None:
        try:
            signature = _signature(self.path)
        except OSError as e:
            self._signature = None  # whatever appears there next is read
            self._fail(f"cannot read credentials file {self.path}: {e.strerror}")
            return
        if signature == self._signature:
            return
        try:
            loaded = load(self.path)
        except CredentialsError as e:
            self._signature = signature  # not re-read until it changes again
            self._fail(str(e))
            return
        self._signature = signature
        self._current = loaded
        if self._failing is not None:
            log.warning("credentials file %s is good again", self.path)
        self._failing = None
        log.info("credentials reloaded from %s: %d", self.path, len(loaded.credentials))

    def _fail(self, why: str) -> None:
        if why != self._failing:  # once per distinct failure, not every second
            kept = len(self._current.credentials)
            log.error("%s; keeping the %d credentials loaded before", why, kept)
        self._failing = why


def _signature_or_none(path: str) -> Signature | None:
    try:
        return _signature(path)
    except OSError:
        return None
