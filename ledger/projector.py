"""The read models in processes of their own (decisions 31 and 38): `ledger project` runs
the registered projections (all, or those `--read-models` names) and nothing else, and
`ledger serve` on PostgreSQL starts two as its children (the eager read model in one, the
lazy ones in the other; `--projector-processes 1`: one for all), restarts each when it
exits and stops them after draining.

The API processes then only follow the tracking positions (ledger/commit_notices.py
`FollowingRunner`): the projections' CPU (decoding, SQL, psycopg) is off their GIL. They tell
the projections process of each commit (PostgreSQL NOTIFY), and it tells them of each batch.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import FrameType
from typing import TypeVar

from ledger.infrastructure.database import DatabaseUrlError, parse_database_url

log = logging.getLogger(__name__)
T = TypeVar("T")
# A child that ran this long before it exited is restarted at once (after the first delay);
# one that keeps exiting sooner waits longer each time, up to MAX_RESTART_SECONDS.
STEADY_SECONDS = 30.0
FIRST_RESTART_SECONDS = 0.5
MAX_RESTART_SECONDS = 5.0
PARENT_CHECK_SECONDS = 0.25
# The event store's pool in the projections process (the URL's pool_size is the servers'):
# the runners read the log through one shared reader, a runner far behind on its own.
PROJECTOR_POOL_SIZE = 2
STOP_TIMEOUT_SECONDS = 20.0
METRICS_PORT_ENV = "TALLY_PROJECTOR_METRICS_PORT"
STALL_DUMP_SECONDS = 12.0  # a stop still running after this prints every thread's stack


class ProjectionsNeedPostgres(DatabaseUrlError):
    """`ledger project`, or `--projections process`, on a SQLite database (one line, exit 2,
    as every DatabaseUrlError)."""


class ProjectorMetricsPortError(ValueError):
    """TALLY_PROJECTOR_METRICS_PORT that is no port for every child (one line, exit 2)."""


def children_metrics_port(children: int) -> int:
    """TALLY_PROJECTOR_METRICS_PORT (0 when unset): the first child's port, the others on
    the next ones, so all of them must be ports."""
    text = os.environ.get(METRICS_PORT_ENV, "").strip() or "0"
    last = 65535 - (children - 1)
    if not text.isdigit() or int(text) > last:
        raise ProjectorMetricsPortError(
            f"{METRICS_PORT_ENV}={text!r}: give a port from 0 to {last} (0: no metrics); "
            f"the {children} projections processes serve on it and the next ones"
        )
    return int(text)


def sqlite_refusal(what: str, display: str) -> ProjectionsNeedPostgres:
    return ProjectionsNeedPostgres(
        f"{what} needs a PostgreSQL database, not {display}: a SQLite file is one "
        "process's, so its read models are projected inside the process that writes "
        "it (--projections inline)"
    )


def read_model_groups(processes: int) -> list[tuple[str, ...]]:
    """The registered read models shared out between `processes` projections processes
    (decision 38): one writes them all; two, the eager ones (read-your-writes: balances,
    history) in one and the lazy ones (the journal, finance, insights) in the other, so that
    the lazy ones' big batches never hold the eager one's GIL."""
    from projections import REGISTERED

    if processes == 1:
        return [tuple(p.name for p in REGISTERED)]
    if processes == 2:
        eager = tuple(p.name for p in REGISTERED if not p.poll_interval)
        return [eager, tuple(p.name for p in REGISTERED if p.name not in eager)]
    raise ValueError(f"{processes} projections processes: give 1 or 2")


def run_projector(
    database_url: str,
    metrics_port: int = 0,
    apply_migrations: bool = True,
    parent: int = 0,
    read_models: Collection[str] = (),
) -> int:
    """`ledger project`: the registered projections named in `read_models` (none: all of
    them), until SIGTERM or SIGINT (exit 0). `parent`: started by that `ledger serve`, which
    says "go" on stdin once it has checked and migrated the database (this process imports
    meanwhile; at EOF instead it exits 0 without a word: the server failed and says why);
    and it stops when that process is gone.
    """
    stopping = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    from ledger.runtime import Tally
    from ledger.telemetry import OTLP_ENDPOINT, Telemetry

    config = parse_database_url(database_url)
    if not config.dialect.several_processes:
        raise sqlite_refusal("the projections process", config.display)
    if parent and (sys.stdin.readline().strip() != GO or stopping.is_set()):
        return 0
    shown = config.display
    config = replace(config, pool_size=min(config.pool_size, PROJECTOR_POOL_SIZE))
    telemetry = Telemetry()  # none, unless asked for: then as `ledger serve` has it
    if metrics_port or os.environ.get(OTLP_ENDPOINT):
        from ledger.api.server import ServeOptions  # grpc's server: seconds to import

        telemetry = Telemetry.from_options(
            ServeOptions(database_url=database_url, metrics_port=metrics_port)
        )
    tally = Tally(
        config,
        apply_migrations=apply_migrations,
        projection_mode="project",
        read_models=read_models,
    )
    try:
        tally.start()
        telemetry.start(tally)
        log.info("projecting %s (database %s)", ", ".join(tally.projections), shown)
        while not stopping.wait(PARENT_CHECK_SECONDS):
            if parent and os.getppid() != parent:
                log.warning("the `ledger serve` that started this projections process is gone")
                break
    finally:
        # A shutdown that stalls (a runner in a batch, a connection that hangs) would be
        # killed by the supervisor at STOP_TIMEOUT_SECONDS with nothing said of where: every
        # thread's stack goes to stderr well before that.
        faulthandler.dump_traceback_later(STALL_DUMP_SECONDS, exit=False)
        log.info("projections process stopping")
        try:
            tally.close()
            telemetry.shutdown()
        finally:
            faulthandler.cancel_dump_traceback_later()
    log.info("projections process stopped")
    return 0


class ProjectorSupervisor:
    """`ledger serve`'s child `ledger project` on the same database: started at once (it
    imports while the server opens the database), let go by `go` once the server has checked
    and migrated it, started again (after a delay that grows while it keeps failing) whenever
    it exits, stopped with SIGTERM by `stop`. The child stops by itself if this process dies
    (it watches its parent), so a `kill -9` of the server leaves no projector behind."""

    def __init__(
        self,
        database_url: str,
        log_level: str = "",
        read_models: Collection[str] = (),
        metrics_port: int = 0,
    ) -> None:
        """`read_models`: the child's share of them (none: all). `metrics_port`: the child's
        Prometheus port (0: none), given to it whatever its environment says."""
        self.database_url = database_url
        self.read_models = tuple(read_models)
        self.metrics_port = metrics_port
        # The child logs at TALLY_LOG_LEVEL, or this when the environment names none (a
        # one-shot tool's WARNING, so that its child's INFO lines do not fill its output).
        self.log_level = log_level
        self.restarts = 0
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._go = False
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="projector", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def go(self) -> None:
        """The database is checked and migrated: the child (and every restart) may open it."""
        with self._lock:
            self._go = True
            if self._process is not None:
                _say(self._process, GO)

    def _spawn(self) -> subprocess.Popen[bytes]:
        # The URL goes by the environment, not argv: a password would show in `ps`.
        env = {**os.environ, "TALLY_DATABASE_URL": self.database_url}
        if self.log_level:
            env.setdefault("TALLY_LOG_LEVEL", self.log_level)
        command = [sys.executable, "-m", "ledger.project_command", "--no-migrate"]
        command += ["--parent", str(os.getpid())]
        if self.read_models:
            command += ["--read-models", ",".join(self.read_models)]
        command += ["--metrics-port", str(self.metrics_port)]
        # A session of its own: a Ctrl-C at the terminal reaches the servers, which drain,
        # and this process stops it afterwards, not at once.
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        if self._go:
            _say(process, GO)
        return process

    def _run(self) -> None:
        failures = 0
        while True:
            with self._lock:
                if self._stop.is_set():
                    break
                try:
                    process = self._process = self._spawn()
                except OSError as e:
                    process = None
                    log.error("cannot start the projections process: %s", e)
            self._started.set()
            began = time.monotonic()
            code = process.wait() if process is not None else None
            if self._stop.is_set():
                break
            failures = 0 if time.monotonic() - began >= STEADY_SECONDS else failures + 1
            delay = min(MAX_RESTART_SECONDS, FIRST_RESTART_SECONDS * 2 ** max(0, failures - 1))
            log.warning(
                "the projections process%s exited (%s); starting it again in %.1f s",
                f" (pid {process.pid})" if process is not None else "",
                _exit_status(code),
                delay,
            )
            self._stop.wait(delay)
            self.restarts += 1
        self._started.set()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """Stop the child: SIGTERM (SIGKILL after `timeout`), or SIGKILL at once if it was
        never let go (it has only imported: nothing to finish). Its exit code (0 for those,
        and for a SIGTERM that came before its handler was in place), or None if none was
        running (between two starts)."""
        with self._lock:
            self._stop.set()
            process, released = self._process, self._go
        code = None
        if process is not None and process.poll() is None:
            if released:
                process.send_signal(signal.SIGTERM)
            else:
                _say(process, "")
                process.kill()
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.error("the projections process did not stop in %.0f s: killing it", timeout)
                process.kill()
                code = process.wait()
            if not released or code == -signal.SIGTERM:
                code = 0
        if self._thread is not None:
            self._thread.join(timeout=10)
        return code


class Projectors:
    """The projections children of one `ledger serve` (or `ledger import`), one
    ProjectorSupervisor for each group of read_model_groups(processes), each started,
    restarted and stopped on its own. With a TALLY_PROJECTOR_METRICS_PORT, the first serves
    its metrics on that port, the second on the next one."""

    def __init__(self, database_url: str, processes: int = 2, log_level: str = "") -> None:
        groups = read_model_groups(processes)
        metrics_port = children_metrics_port(len(groups))
        self.children = [
            ProjectorSupervisor(
                database_url,
                log_level,
                read_models=group if len(groups) > 1 else (),
                metrics_port=metrics_port + i if metrics_port else 0,
            )
            for i, group in enumerate(groups)
        ]

    def start(self) -> None:
        for child in self.children:
            child.start()

    def go(self) -> None:
        for child in self.children:
            child.go()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """Stop every child at once (SIGTERM to each, then each waited for): the first
        non-zero exit code among them, else 0, or None if none was running."""
        with ThreadPoolExecutor(len(self.children), thread_name_prefix="stop-projector") as pool:
            stopping = [pool.submit(child.stop, timeout) for child in self.children]
            codes = [future.result() for future in stopping]
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            return failed[0]
        return 0 if any(code == 0 for code in codes) else None


def opened_with_projector(
    database_url: str, open_: Callable[[], T], log_level: str = "", processes: int = 2
) -> tuple[T, Projectors]:
    """`open_()` (the caller's Tally) with its projections children beside it: they start
    first, so that they import while the database is opened, and are let go once that is
    checked and migrated; if opening fails, they are stopped (they have said nothing) and
    the error is the caller's one line."""
    projectors = Projectors(database_url, processes, log_level)
    projectors.start()
    try:
        opened = open_()
    except BaseException:
        projectors.stop()
        raise
    projectors.go()
    return opened, projectors


GO = "go"


def _say(process: subprocess.Popen[bytes], word: str) -> None:
    """Write `word` (and a newline, unless it is empty: EOF alone) to the child's stdin and
    close it; a child already gone is no error."""
    stdin = process.stdin
    if stdin is None or stdin.closed:
        return
    try:
        if word:
            stdin.write(f"{word}\n".encode())
        stdin.close()
    except OSError:
        pass


def _exit_status(code: int | None) -> str:
    if code is None:
        return "not started"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"
