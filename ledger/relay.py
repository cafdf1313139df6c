"""Every event of the log handed to NATS JetStream, in log order, exactly once as a consumer
sees it (docs/relay.md, decision 24).

The loop: read a batch of the log after the relay's position (as StreamEvents does), publish
each event of its programmes and await its acknowledgement before the next one, then store
the batch's last position in `relay_positions`. One message in flight at a time keeps the
stream a prefix of the log: a message is only sent once the one before it is stored, so the
stream's last message says how far the relay got. On start, and after any error, the relay
resumes after max(stored position, position of its last message in the stream); a message
re-sent after a lost acknowledgement has the same Nats-Msg-Id ("tally-<position>"), which
JetStream's duplicate window drops. The log is the buffer: while NATS is away the relay
holds one batch and waits, and nats-py reconnects by itself.

One relay of a name is active at a time (RelayLock); others stand by and take over when it
goes. Woken by this process's commits (Tally.commits), polling for other processes'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from ledger.application.validation import IDENTIFIER
from ledger.audit.events import AuditEvent, EventReader
from ledger.infrastructure.database import Database
from ledger.relay_messages import body, headers, position_of, program_subjects, subject
from ledger.relay_position import RelayLock, RelayPosition
from ledger.runtime import CommitSignal, Tally

if TYPE_CHECKING:
    from ledger.api.server import ServeOptions

log = logging.getLogger(__name__)

DEFAULT_STREAM = "TALLY"
DEFAULT_SUBJECT_PREFIX = "tally"
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_URL_SCHEMES = ("nats", "tls")
# How long a first connection may take before the relay says NATS cannot be reached.
CONNECT_SECONDS = 5
# A standby relay tries for the lock this often; after an error the relay waits, doubling
# up to the maximum, before it resumes.
STANDBY_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 5.0


class RelayError(ValueError):
    """The relay cannot start as configured: the message says why, in one line."""


@dataclass(frozen=True)
class RelaySettings:
    nats_url: str
    stream: str = DEFAULT_STREAM
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    programs: frozenset[str] = field(default_factory=frozenset)  # empty: every programme
    batch_size: int = 500
    poll_seconds: float = 0.1  # looks for other processes' commits this often
    ack_timeout: float = 5.0

    @property
    def name(self) -> str:
        """The relay's identity: its position row and its lock."""
        scope = ",".join(sorted(self.programs)) or "*"
        return f"{self.stream}:{self.subject_prefix}:{scope}"

    @property
    def servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",")]

    def publishes(self, event: AuditEvent) -> bool:
        return not self.programs or event.program_id in self.programs

    def subjects(self) -> list[str]:
        """What this relay's messages are published under (one wildcard per programme)."""
        if not self.programs:
            return [f"{self.subject_prefix}.>"]
        return [program_subjects(self.subject_prefix, p) for p in sorted(self.programs)]


def relay_settings(
    nats_url: str,
    stream: str = DEFAULT_STREAM,
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    programs: str = "",
    batch_size: int = 500,
) -> RelaySettings:
    """Checked settings from an operator's text, or RelayError naming what is wrong."""
    if not nats_url.strip():
        raise RelayError("no NATS URL: give --nats nats://HOST:PORT")
    for url in nats_url.split(","):
        _check_nats_url(url.strip())
    if not _STREAM_NAME.fullmatch(stream):
        raise RelayError(
            f"--stream {stream!r}: a stream name is 1 to 64 letters, digits, '_' or '-'"
        )
    if not _SUBJECT_PREFIX.fullmatch(subject_prefix):
        raise RelayError(
            f"--subject-prefix {subject_prefix!r}: give subject tokens of letters, digits, "
            "'_' or '-' separated by dots, e.g. tally"
        )
    chosen: frozenset[str] = frozenset()
    if programs.strip():
        chosen = frozenset(p.strip() for p in programs.split(","))
        bad = sorted(p for p in chosen if not IDENTIFIER.fullmatch(p))
        if bad:
            raise RelayError(
                f"--programs {programs!r}: {bad[0]!r} is not a programme id (1 to 64 of "
                "A-Z a-z 0-9 . _ : -, comma-separated)"
            )
    if batch_size < 1:
        raise RelayError(f"--batch-size must be at least 1, got {batch_size}")
    return RelaySettings(
        nats_url=nats_url.strip(),
        stream=stream,
        subject_prefix=subject_prefix,
        programs=chosen,
        batch_size=batch_size,
    )


def _check_nats_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in _URL_SCHEMES or not parsed.hostname:
        raise RelayError(f"--nats {url!r}: give nats://HOST:PORT (or tls://HOST:PORT)")
    try:
        parsed.port  # noqa: B018 (raises on a port that is not a number up to 65535)
    except ValueError:
        raise RelayError(f"--nats {url!r}: the port must be a number from 1 to 65535") from None


class Relay:
    """Publishes the log to one JetStream stream. For telemetry to read: `position`, the
    last log position handed over (acknowledged, or not this relay's programmes'); `head`,
    the last position seen in the log; `lag`, the events between them; `active`, whether
    this relay holds the lock (relay_attributes)."""

    def __init__(
        self, database: Database, settings: RelaySettings, commits: CommitSignal | None = None
    ) -> None:
        self.database = database
        self.settings = settings
        self.commits = commits
        self.position = 0
        self.head = 0
        self.published = 0  # messages JetStream stored as new (not duplicates)
        self.active = False
        self._reader = EventReader(database)
        self._stored = RelayPosition(database, settings.name)
        self._lock = RelayLock(database, settings.name)
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._said_standby = False

    @classmethod
    def from_options(cls, options: ServeOptions, tally: Tally) -> Relay | None:
        """`ledger serve --nats URL`; the stream, subject prefix and programmes come from
        TALLY_RELAY_STREAM, TALLY_RELAY_SUBJECT_PREFIX and TALLY_RELAY_PROGRAMS."""
        if not options.nats:
            return None
        settings = relay_settings(
            options.nats,
            stream=os.environ.get("TALLY_RELAY_STREAM", DEFAULT_STREAM),
            subject_prefix=os.environ.get("TALLY_RELAY_SUBJECT_PREFIX", DEFAULT_SUBJECT_PREFIX),
            programs=os.environ.get("TALLY_RELAY_PROGRAMS", ""),
        )
        return cls(tally.database, settings, tally.commits)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    # ------------------------------------------------------------------ control

    async def start(self) -> None:
        """Connect (RelayError if NATS cannot be reached), make the stream if missing, and
        relay in the background."""
        js = await self._connect()
        try:
            await self._ensure_stream(js)
        except BaseException:
            await self._close_connection()
            raise
        if self.commits is not None:
            self._unsubscribe = self.commits.subscribe(asyncio.get_running_loop(), self._wake)
        self._task = asyncio.create_task(self._run(), name=f"relay {self.name}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand (publish, await the acks, store the position), then
        drain the connection. Bounded: with NATS away it gives up after `timeout`, and the
        next start resumes from the stream."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning("relay: NATS did not acknowledge within %.0f s; stopping", timeout)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._unsubscribe is not None:
            self._unsubscribe()
        await self._close_connection()
        await asyncio.to_thread(self._lock.release)
        self.active = False

    async def wait(self) -> None:
        """Until the relay stops (`ledger relay` runs until a signal)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    # ------------------------------------------------------------------ NATS

    async def _connect(self) -> JetStreamContext:
        servers = self.settings.servers
        where = ", ".join(servers)
        # A first try, with one quick retry per server, fails soon, with its reason, when
        # nobody listens; the connection kept afterwards reconnects by itself, for ever.
        problems: list[Exception] = []

        async def remember(e: Exception) -> None:
            problems.append(e)

        try:
            probe = await nats.connect(
                servers,
                error_cb=remember,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                connect_timeout=CONNECT_SECONDS,
            )
            await probe.close()
        except Exception as e:
            reason = _reason(problems[-1] if problems else e)
            raise RelayError(f"cannot reach NATS at {where}: {reason}") from None

        async def on_error(e: Exception) -> None:
            log.warning("relay: NATS connection: %s", _reason(e))

        async def on_disconnected() -> None:
            log.warning("relay: disconnected from NATS; reconnecting")

        async def on_reconnected() -> None:
            log.info("relay: reconnected to NATS")

        try:
            self._nc = await asyncio.wait_for(
                nats.connect(
                    servers,
                    name=f"tally-relay {self.name}",
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=CONNECT_SECONDS,
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                ),
                CONNECT_SECONDS * 2,
            )
        except TimeoutError:
            raise RelayError(f"cannot reach NATS at {where}: no answer") from None
        self._js = self._nc.jetstream(timeout=self.settings.ack_timeout)
        return self._js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        settings = self.settings
        try:
            info = await js.stream_info(settings.stream)
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=settings.stream,
                    subjects=[f"{settings.subject_prefix}.>"],
                    storage=StorageType.FILE,
                )
            )
            log.info("relay: created stream %s", settings.stream)
            return
        except Exception as e:
            raise RelayError(f"NATS at {settings.nats_url}: no JetStream ({_reason(e)})") from e
        taken = set(info.config.subjects or ())
        if f"{settings.subject_prefix}.>" not in taken and not taken.issuperset(
            settings.subjects()
        ):
            raise RelayError(
                f"stream {settings.stream} takes subjects {sorted(taken)}, not "
                f"{settings.subject_prefix}.>: give another --stream or --subject-prefix"
            )

    async def _close_connection(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is None or nc.is_closed:
            return
        try:
            await asyncio.wait_for(nc.drain(), 5.0)
        except Exception:
            await nc.close()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        errors = 0
        while not self._stopping.is_set():
            try:
                if not await asyncio.to_thread(self._lock.try_acquire):
                    if self.active or not self._said_standby:
                        log.info("relay: another relay of %s is active; standing by", self.name)
                    self.active, self._said_standby = False, True
                    await self._pause(STANDBY_SECONDS)
                    continue
                self.active, self._said_standby = True, False
                await self._relay()
                errors = 0
            except Exception as e:
                errors += 1
                log.warning("relay: %s; resuming from the stream's last message", _reason(e))
                await self._pause(min(MAX_BACKOFF_SECONDS, 0.1 * 2**errors))

    async def _relay(self) -> None:
        """Publish from the resume position until stopped (or the lock is lost)."""
        self.position = await self._resume_position()
        batch = self.settings.batch_size
        while True:
            self._wake.clear()
            # Stopping: one more batch, read after the stop was asked for, so that what was
            # committed before it goes out (a longer backlog waits for the next start).
            last_batch = self._stopping.is_set()
            events, last = await asyncio.to_thread(self._reader.scan, self.position, batch)
            self.head = max(self.head, last)
            for event in events:
                if self.settings.publishes(event):
                    await self._publish(event)
            if last > self.position:
                # After the acks, never before: a crash here repeats messages, which the
                # resume (and the duplicate window) drops; it never skips one.
                await asyncio.to_thread(self._stored.store, last)
                self.position = last
            if last_batch:
                return
            if not await asyncio.to_thread(self._lock.still_held):
                log.warning("relay: lost the lock of %s; standing by", self.name)
                self.active = False
                return
            if len(events) < batch:
                await self._pause(self.settings.poll_seconds, wakeable=True)

    async def _publish(self, event: AuditEvent) -> None:
        js = self._js
        assert js is not None
        ack = await js.publish(
            subject(self.settings.subject_prefix, event),
            body(event),
            timeout=self.settings.ack_timeout,
            stream=self.settings.stream,
            headers=headers(event),
        )
        if not ack.duplicate:
            self.published += 1

    async def _resume_position(self) -> int:
        """After the stored position, or after the relay's last message in the stream if
        that is further: the position is written after the acks, so it may lag them."""
        stored = await asyncio.to_thread(self._stored.load)
        published = await self._last_published()
        if published > stored:
            log.info(
                "relay: stored position %d is behind the stream; resuming after %d",
                stored,
                published,
            )
            await asyncio.to_thread(self._stored.store, published)
        return max(stored, published)

    async def _last_published(self) -> int:
        js = self._js
        assert js is not None
        last = 0
        for wildcard in self.settings.subjects():
            try:
                message = await js.get_last_msg(self.settings.stream, wildcard)
            except NotFoundError:
                continue
            last = max(last, position_of(message.headers) or 0)
        return last

    async def _pause(self, seconds: float, wakeable: bool = False) -> None:
        """Sleep, cut short by stop (and by a commit here, if `wakeable`)."""
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        if wakeable:
            waiters.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


def relay_attributes(relay: Relay) -> dict[str, Any]:
    """What telemetry can read, under the names it would export them by."""
    return {
        "relay.position": relay.position,
        "relay.head": relay.head,
        "relay.lag": relay.lag,
        "relay.active": relay.active,
        "relay.connected": relay.connected,
        "relay.published": relay.published,
    }


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines and lines[0] else type(error).__name__
