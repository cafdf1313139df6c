"""Wiring: one object that owns the database, the application, the projections and the
sweeper, built from a database URL. The server and the tools both start here."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, Literal

from ledger.application.commands import AccountCommand
from ledger.application.group import Answer
from ledger.application.group_commit import GroupCommitWriter
from ledger.application.service import LedgerApplication, utc_now
from ledger.audit.checkpoints import Checkpointer, load_signing_key, raw
from ledger.commit_notices import (
    COMMITS,
    PROJECTED,
    WANTED,
    FollowingRunner,
    Listener,
    Notifier,
    announcing,
    parse_projected,
)
from ledger.domain.ids import program_id_key
from ledger.infrastructure.database import (
    DatabaseConfig,
    DatabaseUrlError,
    PostgresDatabase,
    SqliteDatabase,
    check_database,
    is_standby,
    open_database,
    parse_database_url,
)
from ledger.infrastructure.eventlog import existing_originators
from ledger.infrastructure.migrations import MigrationError, migrate, pending_migrations
from ledger.infrastructure.recorders import ChainedInserts
from ledger.periodic import Periodic
from ledger.queries import LedgerQueries
from ledger.routing import RoutingTable, RoutingTableError
from projections import REGISTERED
from projections.log_reader import LogReader
from projections.points import NAME as POINTS
from projections.runner import ProjectionRunner, stop_all

log = logging.getLogger(__name__)
# An eager read model, woken by each commit here, still looks this often for other
# processes' commits.
EAGER_POLL_SECONDS = 0.05
# Who writes the read models (decision 31). "inline": this process (woken by its own
# commits; other processes' lock holders win on PostgreSQL). "follow": a `ledger project`
# process; this one only follows the tracking positions, and tells it of each commit.
# "project": this process is `ledger project`: it writes them, woken by the notices, and
# runs no writer, sweeper or checkpointer.
ProjectionMode = Literal["inline", "follow", "project"]

# Accounts a writer keeps decided state of. Each costs about 5 KB of the process's memory
# (docs/performance.md, "Memory"); a command for an account not kept costs one batched read
# and a replay, about 0.24 ms of the server's time at 64 callers (decision 37).
DEFAULT_CACHE_ACCOUNTS = 20_000


class Tally:
    def __init__(
        self,
        config: DatabaseConfig,
        apply_migrations: bool = True,
        clock: Callable[[], datetime] = utc_now,
        cache_size: int = DEFAULT_CACHE_ACCOUNTS,
        writers: int | None = None,
        max_group: int = 256,
        exclusive: str = "",
        report_database: str = "",
        projection_mode: ProjectionMode = "inline",
        read_models: Collection[str] = (),
    ) -> None:
        """`exclusive`: this process is `ledger serve` or `ledger import` (named so): on
        SQLite it holds the file for its life, and a second one is refused
        (ledger/infrastructure/single_process.py). `report_database`: a PostgreSQL replica
        of this database, which the ReportService reads instead (docs/scaling.md).
        `projection_mode`: see ProjectionMode; "follow" and "project" need PostgreSQL.
        `read_models`: "project" only: the registered read models this process writes (by
        name; none given: all of them), when several projections processes share them."""
        self.config = config
        self.closed = False  # set as close() begins
        self.projection_mode: ProjectionMode = projection_mode
        self.read_models = frozenset(read_models or (p.name for p in REGISTERED))
        if unknown := self.read_models - {p.name for p in REGISTERED}:
            raise ValueError(f"no such read model: {', '.join(sorted(unknown))}")
        if projection_mode != "inline" and not config.dialect.several_processes:
            raise DatabaseUrlError(
                f"{config.display}: a SQLite file is one process's; its read models are "
                "projected inside that process (--projections inline)"
            )
        check_database(config, must_exist=False)
        self._single = config.dialect.process_lock(config)
        if self._single is not None and exclusive:
            self._single.acquire(exclusive)
        self.replica: PostgresDatabase | None = None
        try:
            if report_database:
                self.replica = open_replica(report_database, config)
            self._open(config, apply_migrations, clock, cache_size, writers, max_group)
        except BaseException:
            if self.replica is not None:
                self.replica.close()
            self._release()
            raise

    def _open(
        self,
        config: DatabaseConfig,
        apply_migrations: bool,
        clock: Callable[[], datetime],
        cache_size: int,
        writers: int | None,
        max_group: int,
    ) -> None:
        if apply_migrations:
            applied = migrate(config)
            for m in applied:
                log.info("applied migration %04d_%s", m.version, m.name)
        else:
            pending = pending_migrations(config)
            if pending:
                names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
                raise MigrationError(
                    f"database {config.display} has pending migrations ({names}); "
                    "run `ledger migrate` first"
                )
        self.database: PostgresDatabase | SqliteDatabase = open_database(config)
        # No library-wide aggregate cache: each group-commit writer caches the accounts it
        # owns (and may mutate them without copying); programs are cached by the application.
        env = config.eventsourcing_env()
        self.app = LedgerApplication(env, self.database, clock=clock)
        self.queries = LedgerQueries(self.database)
        # Every registered read model, each with its own runner and tracking position, all
        # reading the log through one reader: each event decoded once (decision 30); or,
        # following a projections process, a follower each, which reads no log at all.
        self.notifier: Notifier | None = None
        self.notices: Listener | None = None
        self.projections: dict[str, ProjectionRunner] = self._runners()
        self._eager = [
            runner for runner in self.projections.values() if not runner.projection.poll_interval
        ]
        if self.projection_mode == "follow":
            self.notices = Listener(config, {PROJECTED: self._projected}, name="projected-notices")
        elif self.projection_mode == "project":
            self.notices = Listener(
                config,
                {COMMITS: self._commits_elsewhere, WANTED: self._wanted},
                reconnected=self._commits_elsewhere,
                name="commit-notices",
            )
        self.commits = CommitSignal()
        self.app.on_saved = self._saved
        # Checkpoints (docs/audit.md), signed when TALLY_CHECKPOINT_KEY names an Ed25519 key
        # (not written by `ledger project`).
        self.checkpoint_key = load_signing_key() if self.projection_mode != "project" else None
        self.checkpoint_public_key = (
            raw(self.checkpoint_key.public_key()) if self.checkpoint_key else None
        )
        self.checkpointer = Checkpointer(self.database, self.checkpoint_key)
        # One writer thread: SQLite has one writer at a time anyway, and PostgreSQL serialises
        # inserts on the events table. More threads only split the groups and fight over the
        # GIL (earn-64 measured 1,080 calls/s with 1 writer, 930 with 2, 710 with 4).
        if writers is None:
            writers = writers_from_environment()
        self.writer = GroupCommitWriter(
            self.app, writers=writers, max_group=max_group, cache_per_writer=cache_size
        )
        # A chain head for every account the writers keep, and no more (decision 35): an
        # account past the cache is loaded from the database on its next command anyway, and
        # its head is then one batched lookup in the same save.
        if isinstance(self.app.recorder, ChainedInserts):
            self.app.recorder.heads.capacity = cache_size * writers
        self.sweeper = Sweeper(self)

    def _runners(self) -> dict[str, ProjectionRunner]:
        decode = self.app.mapper.to_domain_event
        dialect = self.database.dialect
        if self.projection_mode == "follow":
            self.notifier = Notifier(self.config)
            return {
                p.name: FollowingRunner(
                    self.database,
                    self.app.recorder,
                    decode,
                    p(dialect),
                    self.notifier,
                    poll_interval=p.poll_interval or EAGER_POLL_SECONDS,
                    lazy=bool(p.poll_interval),
                )
                for p in REGISTERED
            }
        reader = LogReader(self.app.recorder, decode)
        announced = self.projection_mode == "project"
        return {
            p.name: ProjectionRunner(
                self.database,
                self.app.recorder,
                decode,
                (announcing(p) if announced else p)(dialect),
                poll_interval=p.poll_interval or EAGER_POLL_SECONDS,
                reader=reader,
            )
            for p in REGISTERED
            if not announced or p.name in self.read_models
        }

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Tally:
        return cls(parse_database_url(url), **kwargs)

    def execute(self, commands: list[AccountCommand]) -> list[Answer]:
        """Account commands through their writers, waiting for the answers (for callers
        that are not the event loop: RunExpiry's worker thread, the sweeper)."""
        return self.writer.submit_batch(commands).result()

    @property
    def points(self) -> ProjectionRunner:
        """The runner of the points read models (balances, history, lots, holds)."""
        return self.projections[POINTS]

    def _saved(self, position: int) -> None:
        if self.notifier is not None:  # the projections process writes them: tell it
            self.notifier.committed(position)
        else:  # the lazy ones look on their own, or when a query waits
            for runner in self._eager:
                runner.wake(position)
        self.commits.notify()

    def _commits_elsewhere(self, _payload: str = "") -> None:
        """`ledger project`: an API process committed (or notices may have been missed)."""
        for runner in self._eager:
            runner.wake()

    def _wanted(self, name: str) -> None:
        """`ledger project`: a query in an API process waits for this read model."""
        if (runner := self.projections.get(name)) is not None:
            runner.wake()

    def _projected(self, payload: str) -> None:
        """Following: the projections process committed a batch of a read model."""
        found = parse_projected(payload)
        runner = self.projections.get(found[0]) if found else None
        if found and isinstance(runner, FollowingRunner):
            runner.projected(found[1])

    def start(self, sweep: bool = True) -> None:
        """The writer, the projection runners (or followers) and, with `sweep`, the sweeper
        and checkpointer. `ledger project` (projection_mode "project") starts the runners
        only."""
        if self.projection_mode == "project":
            sweep = False
        else:
            self.writer.start()
        if self.notifier is not None:
            self.notifier.start()
        for runner in self.projections.values():
            runner.start()
        if self.notices is not None:
            self.notices.start()
        if sweep:
            self.sweeper.start()
            self.checkpointer.start()

    def wait_ready(self, timeout: float) -> bool:
        """Every read model caught up with the log (following: the projections process has
        projected what the log held when this was called)."""
        deadline = time.monotonic() + timeout
        ready = all(
            runner.ready.wait(max(0.0, deadline - time.monotonic()))
            for runner in self.projections.values()
        )
        if not ready or self.projection_mode != "follow":
            return ready
        head = self.app.recorder.max_notification_id() or 0
        while any(runner.position < head for runner in self.projections.values()):
            if time.monotonic() >= deadline:
                return False
            for runner in self.projections.values():
                if runner.position < head:
                    runner.wake()  # re-read on its notices; a lazy one is asked for
            time.sleep(EAGER_POLL_SECONDS)
        return True

    def close(self) -> None:
        if self.closed:  # a second close (a tool's finally after a shutdown) is nothing
            return
        self.closed = True
        self.checkpointer.stop()
        self.sweeper.stop()
        self.writer.stop()
        if self.notices is not None:
            self.notices.stop()
        if self.notifier is not None:
            self.notifier.stop()
        stop_all(self.projections.values())
        self.app.close()
        self.database.close()
        if self.replica is not None:
            self.replica.close()
        self._release()

    def _release(self) -> None:
        if self._single is not None:
            self._single.release()


class WritersSettingError(ValueError):
    """TALLY_WRITERS is not a whole number of at least 1."""


def writers_from_environment() -> int:
    """TALLY_WRITERS (default 1): writer threads of an API process."""
    text = os.environ.get("TALLY_WRITERS", "1")
    try:
        writers = int(text)
    except ValueError:
        writers = 0
    if writers < 1:
        raise WritersSettingError(f"TALLY_WRITERS={text!r}: give a whole number of at least 1")
    return writers


def open_replica(url: str, primary: DatabaseConfig) -> PostgresDatabase:
    """The replica the reports read: a hot standby streaming from `primary`, so it has the
    same read models and tracking rows, only later."""
    config = parse_database_url(url)
    if config.kind != "postgres" or primary.kind != "postgres":
        raise DatabaseUrlError(
            f"--report-database {config.display}: a report replica is a PostgreSQL standby of "
            "a PostgreSQL --database (postgresql://USER@HOST:PORT/DB)"
        )
    # Reports read from a primary would not be wrong, but a second primary is most often
    # the wrong cluster (its own log, or none): only a standby is taken. That it streams
    # from this primary is the operator's to make sure of (docs/scaling.md). One
    # connection: a replica that cannot be had is DatabaseUnavailable from it, as from
    # check_database.
    if not is_standby(config):
        raise DatabaseUrlError(
            f"--report-database {config.display} is not a standby (it takes writes): a report "
            "replica is a hot standby of the --database's cluster"
        )
    return PostgresDatabase(config)


class RoutedTally(Tally):
    """Programmes on several clusters (ledger/routing.py): this object is the default
    cluster's Tally (--database), the one the server's single-database parts use (health,
    telemetry, relay), and holds one more Tally per cluster of the routing table, each with
    its own writer, projections, sweeper and checkpointer, started and closed together."""

    def __init__(self, table: RoutingTable, **kwargs: Any) -> None:
        self.table = table
        default = parse_database_url(table.default.database_url)
        if default.kind != "postgres":
            raise RoutingTableError(
                f"--routes places programmes on PostgreSQL clusters: --database "
                f"{default.display} must be one too (postgresql://USER@HOST:PORT/DB)"
            )
        super().__init__(default, **kwargs)
        self.clusters: dict[str, Tally] = {table.default.name: self}
        # A replica serves the default cluster's reports only; the others read their primary.
        kwargs.pop("report_database", None)
        try:
            for cluster in table.others:
                self.clusters[cluster.name] = Tally.from_url(cluster.database_url, **kwargs)
            self._check_placement()
        except BaseException:
            self.close()
            raise

    def _check_placement(self) -> None:
        """Refuse to start if a cluster holds a programme the table places elsewhere: its
        commands would go to the other cluster, which could even create it a second time.
        Moving a programme is an export and an import (docs/scaling.md), then the table."""
        table = self.table
        for cluster in table.others:
            keys = {program_id_key(p): p for p in cluster.programs}
            for name, tally in self.clusters.items():
                if name == cluster.name:
                    continue
                found = existing_originators(tally.database, list(keys))
                if found:
                    raise RoutingTableError(
                        f"programme {min(keys[k] for k in found)!r} is on cluster {name} "
                        f"({tally.config.display}) but the routing table places it on "
                        f"{cluster.name}: move it first (docs/scaling.md) or fix the table"
                    )
            # Programmes it holds that the table sends elsewhere (as far as its read model
            # knows at start: a programme created in the instant before a crash may be missed).
            holder = self.clusters[cluster.name]
            strays = set(holder.queries.program_ids()) - cluster.programs
            if strays:
                stray = min(strays)
                raise RoutingTableError(
                    f"cluster {cluster.name} ({holder.config.display}) holds programme "
                    f"{stray!r}, which the routing table places on {table.cluster_of(stray)}: "
                    f"list it under [clusters.{cluster.name}] or move it (docs/scaling.md)"
                )

    def start(self, sweep: bool = True) -> None:
        super().start(sweep)
        for tally in self._others():
            tally.start(sweep)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return super().wait_ready(timeout) and all(
            tally.wait_ready(max(0.0, deadline - time.monotonic())) for tally in self._others()
        )

    def close(self) -> None:
        for tally in self._others():
            tally.close()
        super().close()

    def _others(self) -> list[Tally]:
        return [tally for tally in self.clusters.values() if tally is not self]


class CommitSignal:
    """Wakes asyncio waiters (following streams) when this process commits events."""

    def __init__(self) -> None:
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._lock = threading.Lock()

    def subscribe(
        self, loop: asyncio.AbstractEventLoop, event: asyncio.Event
    ) -> Callable[[], None]:
        entry = (loop, event)
        with self._lock:
            self._waiters.add(entry)

        def unsubscribe() -> None:
            with self._lock:
                self._waiters.discard(entry)

        return unsubscribe

    def notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)


class Sweeper(Periodic):
    """Inside the server: holds whose TTL ran out are released within about a second, and
    lots past their expiry are expired every `lot_interval` seconds, with nobody calling."""

    name = "sweeper"

    def __init__(self, tally: Tally, hold_interval: float = 0.5, lot_interval: float = 60.0):
        super().__init__(hold_interval)
        self.tally = tally
        self.hold_interval = hold_interval
        self.lot_interval = lot_interval
        self._since_lots = lot_interval  # the first tick sweeps lots too

    def tick(self) -> None:
        self.sweep_holds()
        self._since_lots += self.hold_interval
        if self._since_lots >= self.lot_interval:
            self._since_lots = 0.0
            self.sweep_lots()

    def sweep_holds(self) -> int:
        tally = self.tally
        by_program: dict[str, list[str]] = {}
        for program_id, member_id in tally.queries.accounts_with_expired_holds(
            tally.app.clock(), limit=500
        ):
            by_program.setdefault(program_id, []).append(member_id)
        return sum(
            tally.app.expire_holds(program_id, members, tally.execute)
            for program_id, members in by_program.items()
        )

    def sweep_lots(self) -> int:
        tally = self.tally
        now = tally.app.clock()
        expired = 0
        for program_id in tally.queries.program_ids():
            expired += tally.app.sweep_expired_lots(
                program_id, now, tally.queries.members_with_due_lots(program_id, now), tally.execute
            )
        return expired
