"""Where Tally leans on eventsourcing 9.5.6 beyond its documented API (decision 12).

For speed and for the request records' transaction, Tally re-implements some of the library's
methods (`Application.save`, the recorders' inserts, the repository's load), overrides and calls
its private hooks (`_record`, `_insert_stored_events`, `_lock_table`, ...), and reads the
library's tables with its own SQL, so it assumes their names, columns and id encodings. None of
that is promised by the library: a release may change any of it without notice.

`SEAMS` lists every such place. tests/unit/test_library_seams.py checks each entry against the
installed library: the object exists, its parameters are the ones named here, the source of
what Tally copies or hooks into hashes to the pinned SHA-256 (any edit fails), and `check()`
confirms the behaviour Tally depends on. A failure names the Tally code to re-check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from uuid import uuid4

import psycopg

EVENTSOURCING_VERSION = "9.5.6"


class SeamBroken(AssertionError):
    """What Tally assumes of the library no longer holds."""


@dataclass(frozen=True)
class Seam:
    tally: str  # module:qualname of the Tally code that relies on the library
    library: str  # dotted path of the library object it touches
    assumes: str  # what Tally assumes, in one sentence
    params: tuple[str, ...] | None = None  # inspect.signature parameter names, if checked
    sha256: str = ""  # of inspect.getsource(library object): pinned where Tally copies or hooks
    check: Callable[[], None] | None = None  # raises SeamBroken if the behaviour changed

    @property
    def key(self) -> str:
        return f"{self.library}|{self.tally.rpartition(':')[2]}"

    def broken(self, detail: str) -> str:
        return (
            f"eventsourcing changed {self.library}: {detail}.\n"
            f"Re-check {self.tally}, which assumes: {self.assumes}\n"
            "Then update its entry in ledger/infrastructure/library_seams.py "
            "(docs/decisions/0012-library-seams.md)."
        )


def resolve(path: str) -> Any:
    """`module:qualname`, or a dotted path whose longest importable prefix is the module."""
    if ":" in path:
        module_name, _, qualname = path.partition(":")
    else:
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            module_name, qualname = ".".join(parts[:cut]), ".".join(parts[cut:])
            break
        else:
            raise ImportError(f"no module in {path!r}")
    obj: Any = importlib.import_module(module_name)
    for name in filter(None, qualname.split(".")):
        obj = getattr(obj, name)
    return obj


def source_sha256(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise SeamBroken(what)


# ---------------------------------------------------------------------- checks


def _sqlite_env(folder: str) -> dict[str, str]:
    from ledger.infrastructure.database import DatabaseConfig

    return DatabaseConfig(kind="sqlite", sqlite_path=str(Path(folder) / "x.db")).eventsourcing_env()


def _postgres_env() -> dict[str, str]:
    from ledger.infrastructure.database import DatabaseConfig

    return DatabaseConfig(kind="postgres", user="u", dbname="d").eventsourcing_env()


@contextmanager
def _ledger_app() -> Iterator[Any]:
    """The application as Tally configures it on SQLite (nothing connects to the file)."""
    from ledger.application.service import LedgerApplication

    with tempfile.TemporaryDirectory() as folder:
        app = LedgerApplication(_sqlite_env(folder), cast(Any, None))
        try:
            yield app
        finally:
            app.close()


def _account() -> Any:
    from ledger.domain.account import MemberAccount
    from ledger.domain.provenance import Provenance

    provenance = Provenance("t", "r", datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
    return MemberAccount(
        program_id="p", member_id="m", referrer_member_id="", provenance=provenance
    )


def check_application_wiring() -> None:
    from ledger.infrastructure.recorders import TallySqliteApplicationRecorder

    with _ledger_app() as app:
        _require(type(app.recorder) is TallySqliteApplicationRecorder, "recorder class")
        _require(app.recorder.events_table_name == "stored_events", "events table")
        _require(app.snapshots is not None, "is_snapshotting_enabled gives a snapshot store")
        table = app.snapshots.recorder.events_table_name
        _require(table == "stored_snapshots", f"snapshots table is {table}")
        _require(app.repository.cache is None, "no library aggregate cache (decision 6)")


def check_no_snapshots_on_save() -> None:
    from ledger.application.service import LedgerApplication

    _require(not LedgerApplication.snapshotting_intervals, "snapshotting_intervals is set")


def check_sqlite_factory_tables() -> None:
    from eventsourcing.utils import Environment

    from ledger.application.service import LedgerApplication
    from ledger.infrastructure.dialect import SQLITE
    from ledger.infrastructure.recorders import (
        TallySqliteApplicationRecorder,
        TallySqliteFactory,
    )

    with tempfile.TemporaryDirectory() as folder:
        factory = TallySqliteFactory(Environment(LedgerApplication.name, _sqlite_env(folder)))
        try:
            events = factory.application_recorder()
            snapshots = factory.aggregate_recorder(purpose="snapshots")
        finally:
            factory.close()
    _require(isinstance(events, TallySqliteApplicationRecorder), "application_recorder_class")
    table = getattr(events, "events_table_name", "")
    _require(table == SQLITE.events_table, f"events table is {table}")
    table = getattr(snapshots, "events_table_name", "")
    _require(table == SQLITE.snapshots_table, f"snapshots table is {table}")


def check_postgres_factory() -> None:
    from eventsourcing.utils import Environment

    from ledger.application.service import LedgerApplication
    from ledger.infrastructure.dialect import POSTGRES
    from ledger.infrastructure.recorders import TallyPostgresFactory

    made: list[dict[str, Any]] = []

    def stub(**kwargs: Any) -> Any:  # a recorder class that records how it was made
        made.append(kwargs)
        return kwargs

    stubs = {"application_recorder_class": stub, "aggregate_recorder_class": stub}
    probe = type("Probe", (TallyPostgresFactory,), stubs)
    factory = probe(Environment(LedgerApplication.name, _postgres_env()))  # does not connect
    try:
        factory.application_recorder()
        factory.aggregate_recorder(purpose="snapshots")
        store = factory.datastore
        _require(store.schema == "public", f"schema is {store.schema!r}")
        _require(not store.enable_db_functions, "db functions skip _insert_events (decision 4)")
        _require(store.lock_timeout == 10, "POSTGRES_LOCK_TIMEOUT is read")
    finally:
        factory.close()
    tables = [m["events_table_name"] for m in made]
    expected = [POSTGRES.events_table, POSTGRES.snapshots_table]
    _require(tables == expected, f"tables are {tables}")


def check_env_keys() -> None:
    from eventsourcing.application import Application
    from eventsourcing.persistence import BaseInfrastructureFactory
    from eventsourcing.sqlite import SQLiteFactory
    from eventsourcing.utils import Environment

    from ledger.application.service import LedgerApplication
    from ledger.infrastructure.database import LIBRARY_APPLICATION_NAME
    from ledger.infrastructure.recorders import TallyPostgresFactory

    _require(LedgerApplication.name == LIBRARY_APPLICATION_NAME, "the application's name")
    # cipher() reads CIPHER_KEY by its literal name: a key alone turns the AES cipher on.
    _require('"CIPHER_KEY"' in inspect.getsource(BaseInfrastructureFactory.cipher), "CIPHER_KEY")
    application_keys = {
        v for k, v in vars(Application).items() if k.isupper() and isinstance(v, str)
    }
    names = Environment(LedgerApplication.name)
    for factory, env in (
        (SQLiteFactory, _sqlite_env("/nowhere")),
        (TallyPostgresFactory, _postgres_env()),  # the library's keys and POSTGRES_CONNINFO
    ):
        read = application_keys | {"CIPHER_KEY"}
        read |= {
            v
            for cls in factory.__mro__
            for k, v in vars(cls).items()
            if k.isupper() and isinstance(v, str)
        }
        expected = {name for key in read for name in names.create_keys(key)}
        unknown = sorted(set(env) - expected)
        _require(not unknown, f"{factory.__name__} no longer reads {unknown}")
        unset = sorted(expected - set(env))
        _require(not unset, f"{factory.__name__} reads {unset}, left to the process environment")
    enabled = Environment(LedgerApplication.name, _postgres_env()).get(
        "POSTGRES_ENABLE_DB_FUNCTIONS"
    )
    _require(enabled == "no", "db functions stay off")


def check_pool_connection_settings() -> None:
    from eventsourcing.utils import Environment

    from ledger.application.service import LedgerApplication
    from ledger.infrastructure.database import check_when_readable, parse_database_url
    from ledger.infrastructure.dialect import POOL_WAIT_SECONDS
    from ledger.infrastructure.recorders import TallyPostgresFactory

    url = "postgresql://u@h1:5433,h2:5434/d?target_session_attrs=read-write"
    env = Environment(LedgerApplication.name, parse_database_url(url).eventsourcing_env())
    factory = TallyPostgresFactory(env)  # does not connect
    try:
        pool = factory.datastore.pool
        _require(pool.closed, "the pool is still closed when the factory is made")
        _require(isinstance(pool.conninfo, str), "the pool's conninfo is a string")
        assert isinstance(pool.conninfo, str)
        conninfo = psycopg.conninfo.conninfo_to_dict(pool.conninfo)
        _require(conninfo.get("target_session_attrs") == "read-write", f"conninfo {conninfo}")
        kwargs = pool.kwargs
        _require(isinstance(kwargs, dict), "the pool's kwargs are a dict")
        assert isinstance(kwargs, dict)
        lists = (kwargs.get("host"), kwargs.get("port"))
        _require(lists == ("h1,h2", "5433,5434"), f"host and port lists reach it as {lists}")
        # psycopg lays the keyword arguments over the conninfo: both end up in one.
        merged = psycopg.conninfo.conninfo_to_dict(pool.conninfo, host="h1,h2", port="1,2")
        _require(merged.get("target_session_attrs") == "read-write", "kwargs over conninfo")
        _require(pool.timeout == POOL_WAIT_SECONDS, f"the pool waits {pool.timeout} s")
        _require(
            factory.datastore.pre_ping and pool._check is check_when_readable,
            "pool._check is the check of each connection taken, which ours replaced",
        )
    finally:
        factory.close()


def check_insert_retries_unwrapped() -> None:
    from eventsourcing.postgres import PostgresApplicationRecorder
    from eventsourcing.sqlite import SQLiteApplicationRecorder

    for name, expected in (
        ("insert_events", ("self", "stored_events", "kwargs")),
        ("select_events", ("self", "originator_id", "gt", "lte", "desc", "limit")),
    ):
        wrapped = getattr(getattr(PostgresApplicationRecorder, name), "__wrapped__", None)
        _require(wrapped is not None, f"PostgreSQL {name} is a @retry wrapper with __wrapped__")
        assert wrapped is not None
        names = tuple(inspect.signature(wrapped).parameters)
        _require(names == expected, f"{name} takes {names}")
    # SQLite's is called as it is (a local file: nothing to fail over).
    _require(
        not hasattr(SQLiteApplicationRecorder.insert_events, "__wrapped__"),
        "SQLite's insert_events is wrapped now: decide whether to call it once too",
    )


def check_construct_env() -> None:
    from eventsourcing.utils import Environment

    env = Environment("Ledger", {"LEDGER_X": "prefixed", "X": "plain", "Y": "plain"})
    _require(env.create_keys("X") == ["LEDGER_X", "X"], f"keys are {env.create_keys('X')}")
    _require(env.get("X") == "prefixed" and env.get("Y") == "plain", "a prefixed key wins")


def check_sqlite_ids_and_positions() -> None:
    from eventsourcing.persistence import IntegrityError, StoredEvent
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    from ledger.infrastructure.dialect import SQLITE

    store = SQLiteDatastore(":memory:")
    try:
        recorder = SQLiteApplicationRecorder(store)
        recorder.create_table()
        oid = uuid4()
        ids = recorder.insert_events([StoredEvent(oid, 1, "t", b"{}")])
        with store.transaction(commit=False) as c:
            c.execute(
                f"SELECT {SQLITE.position_column}, originator_id FROM {recorder.events_table_name}"
            )
            row = c.fetchall()[0]
        _require(ids == [1] and row[0] == 1, "the notification id is the rowid")
        _require(row[1] == SQLITE.stored_id(oid), f"ids are stored as {row[1]!r}, not hex text")
        _require(SQLITE.read_id(row[1]) == oid, "a stored id reads back")
        notes = recorder.select_notifications(start=1, limit=5, stop=1)
        _require([(n.id, n.originator_id) for n in notes] == [(1, oid)], "notifications")
        try:
            recorder.insert_events([StoredEvent(oid, 1, "t", b"{}")])
        except IntegrityError:
            pass
        else:
            raise SeamBroken("a duplicate (id, version) does not raise IntegrityError")
    finally:
        store.close()


def check_stored_event_fields() -> None:
    from eventsourcing.persistence import Notification, StoredEvent

    names = tuple(f.name for f in dataclasses.fields(StoredEvent))
    expected = ("originator_id", "originator_version", "topic", "state")
    _require(names == expected, f"StoredEvent fields are {names}")
    names = tuple(f.name for f in dataclasses.fields(Notification))
    _require(names == (*expected, "id"), f"Notification fields are {names}")


def check_transcoder_wire_format() -> None:
    from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder

    from ledger.domain.provenance import Provenance, ProvenanceAsDict

    transcoder = JSONTranscoder()
    transcoder.register(DatetimeAsISO())
    transcoder.register(ProvenanceAsDict())
    moment = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    data = json.loads(transcoder.encode({"p": Provenance("t", "r", moment), "at": moment}))
    _require(set(data["p"]) == {"_type_", "_data_"}, f"custom types encode as {data['p']}")
    _require(data["p"]["_type_"] == "provenance", "a transcoding's name is its _type_")
    at = data["at"]
    _require(datetime.fromisoformat(at["_data_"]) == moment, f"datetimes encode as {at}")


def check_stored_event_shape() -> None:
    with _ledger_app() as app:
        account = _account()
        stored = app.mapper.to_stored_event(account.collect_events()[0])
    topic = "ledger.domain.account:MemberAccount.MemberEnrolled"
    _require(stored.topic == topic, f"topic is {stored.topic}")
    _require(stored.originator_id == account.id, "originator_id is the UUID")
    state = json.loads(stored.state)  # plain JSON: no compressor, no cipher
    _require(isinstance(state, dict), "state is a JSON object")
    _require("timestamp" in state and state.get("program_id") == "p", f"state keys {state}")
    _require("originator_id" not in state and "originator_version" not in state, "ids in state")


def check_event_topics() -> None:
    from eventsourcing.domain import Aggregate, Snapshot
    from eventsourcing.utils import get_topic, resolve_topic

    from ledger.domain.account import MemberAccount
    from ledger.domain.program import Program

    for aggregate in (MemberAccount, Program):
        for name, cls in vars(aggregate).items():
            if isinstance(cls, type) and issubclass(cls, Aggregate.Event):
                topic = f"{cls.__module__}:{aggregate.__qualname__}.{name}"
                _require(cls.__name__ == name, f"{aggregate.__name__}.{name} is {cls.__name__}")
                _require(get_topic(cls) == topic, f"{get_topic(cls)} is not {topic}")
                _require(resolve_topic(topic) is cls, f"{topic} does not resolve")
    _require(get_topic(Snapshot) == "eventsourcing.domain:Snapshot", "stored snapshot topic")


def check_create_id() -> None:
    from ledger.domain.account import MemberAccount
    from ledger.domain.program import Program, ProgramSettings

    account = _account()
    _require(account.id == MemberAccount.create_id("p", "m"), "account id from create_id")
    program = Program(program_id="p", settings=ProgramSettings("P", "EUR"), transaction_id="t")
    _require(program.id == Program.create_id("p"), "program id from create_id")


def check_select_notifications_defaults() -> None:
    from eventsourcing.persistence import ApplicationRecorder

    parameters = inspect.signature(ApplicationRecorder.select_notifications).parameters
    _require(parameters["inclusive_of_start"].default is True, "start is inclusive")


def check_sqlite_cursor() -> None:
    from eventsourcing.sqlite import SQLiteCursor

    missing = [
        n
        for n in ("execute", "executemany", "fetchall", "lastrowid")
        if not hasattr(SQLiteCursor, n)
    ]
    _require(not missing, f"SQLiteCursor lacks {missing}")


_ASSIGNED = re.compile(r"\bself\.([A-Za-z_]\w*)\s*(?::[^=\n]+)?=(?!=)")


def _names(cls: type, own: bool) -> set[str]:
    """Class attributes and `self.x = ...` names of the library's (own=False) or Tally's
    (own=True) classes in `cls`'s MRO; dunders and ABC bookkeeping left out."""
    names: set[str] = set()
    for base in cls.__mro__:
        if base.__module__.startswith(("ledger.", "projections.")) != own:
            continue
        if not base.__module__.startswith(("eventsourcing.", "ledger.", "projections.")):
            continue
        names.update(vars(base))
        names.update(_ASSIGNED.findall(inspect.getsource(base)))
    return {n for n in names if not n.startswith("__") and n != "_abc_impl"}


def _no_shadowing(tally: str, overrides: frozenset[str]) -> Callable[[], None]:
    """Tally's subclass replaces exactly `overrides` of the library's names: a name the
    library adds later that Tally already uses would otherwise be shadowed silently."""

    def check() -> None:
        cls = resolve(tally)
        shared = _names(cls, own=True) & _names(cls, own=False)
        _require(shared == overrides, f"names shared with the library: {sorted(shared)}")

    return check


# ---------------------------------------------------------------------- the seams

_APP = "eventsourcing.application"
_PG = "eventsourcing.postgres"
_LITE = "eventsourcing.sqlite"
_SERVICE = "ledger.application.service:LedgerApplication"
_BASE = "ledger.application.base:LedgerBase"
_PROGRAMS = "ledger.application.programs:ProgramUseCases"
_RECORDERS = "ledger.infrastructure.recorders"
_DIALECT = "ledger.infrastructure.dialect"
_PGREC = f"{_RECORDERS}:TallyPostgresApplicationRecorder"
_LITEREC = f"{_RECORDERS}:TallySqliteApplicationRecorder"
_CURS = ("self", "curs", "stored_events")

SEAMS: list[Seam] = [
    # -- the application ----------------------------------------------------------------
    Seam(
        f"{_BASE}.save",
        f"{_APP}.Application.save",
        "save() is only collect events, _record, _take_snapshots, _notify (and the deprecated"
        " notify(), which we drop), so our copy without the Protocol checks is equivalent.",
        ("self", "objs", "kwargs"),
        "4e9747d14b8fd046df1b9b8ce688be89030978de0c04a632e6a7ec783dc7c5cc",
    ),
    Seam(
        f"{_BASE}.save",
        f"{_APP}.ProcessingEvent.__init__",
        "ProcessingEvent() holds the list `events`, the dict `aggregates` and the dict"
        " `saved_kwargs` that save() fills directly.",
        ("self", "tracking"),
        "a0682ee01c41601c40a81c13cc45b87d4c843e3a93f5f93a1d0ab824ac5d2d83",
    ),
    Seam(
        f"{_BASE}.save",
        f"{_APP}.ProcessingEvent.collect_events",
        "collecting an aggregate is extending `events` with obj.collect_events() and setting"
        " aggregates[obj.id], which save() inlines.",
        ("self", "objs", "kwargs"),
        "7e3a7e6b1abd2bef334f1ebe7015d887cf935916f87f3c7fbd75127907ab3488",
    ),
    Seam(
        f"{_BASE}.save",
        f"{_APP}.Application._record",
        "_record passes saved_kwargs to events.put, so `requests=[...]` reaches the recorder's"
        " insert_events, and caches nothing without an aggregate cache.",
        ("self", "processing_event"),
        "104c6186b29d50595198443b697de23b0dab4344c50d4dca54688b32fce52340",
    ),
    Seam(
        f"{_BASE}.save",
        f"{_APP}.Application._take_snapshots",
        "_take_snapshots does nothing without snapshotting_intervals: the write path never"
        " snapshots (decision 10).",
        ("self", "processing_event"),
        "ae98c5b97ed9a8e3c50f324a01081e277572d192fac93ef738fdb3c053421562",
        check_no_snapshots_on_save,
    ),
    Seam(
        f"{_BASE}.save",
        f"{_APP}.Application._notify",
        "_notify is an empty hook called with the recordings after they are stored.",
        ("self", "recordings"),
        "6b32f9fc4b4cf4552a6e87205e218d3a65403a116435604c75513ce101a83785",
    ),
    Seam(
        f"{_BASE}.save",
        "eventsourcing.persistence.EventStore.put",
        "put forwards **kwargs to recorder.insert_events and returns one Recording per event"
        " whose notification.id is the position we answer with.",
        ("self", "domain_events", "kwargs"),
        "7cbbe45730a0d3b9355785e9109891d0557fc19f258981b3b0c8e31e8c65b386",
    ),
    Seam(
        f"{_BASE}.register_transcodings",
        f"{_APP}.Application.register_transcodings",
        "the base registers the UUID, Decimal and ISO datetime transcodings our events and the"
        " audit readers rely on; ours adds to it.",
        ("self", "transcoder"),
        "94ddbeaaad0f095987bec9ee9dacc2808e119919f002bfcc068960a37c670066",
    ),
    Seam(
        "ledger.runtime:Tally.__init__",
        f"{_APP}.Application.__init__",
        "PERSISTENCE_MODULE picks our factory and recorder, is_snapshotting_enabled makes"
        " `snapshots`, and no aggregate cache is built unless asked for.",
        ("self", "env"),
        check=check_application_wiring,
    ),
    Seam(
        "ledger.infrastructure.eventlog:stored_events_of",
        f"{_APP}.Repository._reconstruct_aggregate",
        "an aggregate is project_aggregate(None, [newest snapshot] + events after its version),"
        " which stored_events_of and the account loader's replay do for many accounts.",
        ("self", "aggregate_id", "version", "projector_func"),
        "56d7c30cb77083be7c16678d6dfb3ff108837f206db3ba979046bcdbffe0e685",
    ),
    Seam(
        f"{_PROGRAMS}.get_program",
        f"{_APP}.Repository.get",
        "a cached aggregate is brought forward by project_aggregate over events.get(id,"
        " gt=version), as get_program does (with replay) on a copy of its cached program.",
        (
            "self",
            "aggregate_id",
            "version",
            "projector_func",
            "fastforward_skipping",
            "deepcopy_from_cache",
        ),
        "0ffc6e82b6afa0a04c77fcdefe8163216b201c014b22b85c9552ab3c285de1bb",
    ),
    Seam(
        f"{_PROGRAMS}.get_program",
        "eventsourcing.persistence.EventStore.get",
        "events.get(originator_id, gt=version) yields the events after a version, in order.",
        ("self", "originator_id", "gt", "lte", "desc", "limit"),
    ),
    Seam(
        "ledger.domain.replay:replay",
        f"{_APP}.project_aggregate",
        "project_aggregate(aggregate or None, events) applies each event's mutate() in turn,"
        " which replay does without its per-event isinstance assertion (accounts, programs).",
        ("aggregate", "domain_events"),
        "e2d05062a4fad31fd02c4fc7e3800f3e046aee37afd8ce8d323bc22f114effab",
    ),
    Seam(
        _SERVICE,
        "eventsourcing.domain.Snapshot.take",
        "the account loader's Snapshot.take(aggregate) makes the event a replay starts from,"
        " stored with the topic eventsourcing.domain:Snapshot.",
        ("aggregate",),
    ),
    # -- what is stored, as our SQL and the audit readers see it ------------------------
    Seam(
        "ledger.infrastructure.eventlog:stored_events_of",
        "eventsourcing.persistence.StoredEvent",
        "StoredEvent(originator_id, originator_version, topic, state) can be built positionally"
        " from our rows, and a Notification adds only `id`.",
        check=check_stored_event_fields,
    ),
    Seam(
        _SERVICE,
        "eventsourcing.persistence.Mapper.to_domain_event",
        "the account loader's mapper decodes a StoredEvent we read ourselves (UUID id, raw"
        " bytes) like one the recorder returned.",
        ("self", "stored_event"),
    ),
    Seam(
        "ledger.audit.events:EventReader.record",
        "eventsourcing.persistence.Mapper.to_stored_event",
        "state is a plain JSON object (event fields and `timestamp`, ids left out) and the topic"
        " is module:Aggregate.Event, which the audit readers and docs/audit.md read directly.",
        ("self", "domain_event"),
        check=check_stored_event_shape,
    ),
    Seam(
        "ledger.audit.events:_unwrap",
        "eventsourcing.persistence.JSONTranscoder",
        'a registered type is stored as {"_type_": name, "_data_": ...} and a datetime as an'
        " ISO 8601 string.",
        (),
        check=check_transcoder_wire_format,
    ),
    Seam(
        "projections.points:PointsProjection.process",
        "eventsourcing.utils.get_topic",
        "@event('Name') makes Aggregate.Name with topic module:Aggregate.Name (stored forever,"
        " resolved on load; the projection dispatches on the class name).",
        check=check_event_topics,
    ),
    Seam(
        "ledger.domain.account:MemberAccount.create_id",
        "eventsourcing.domain.BaseAggregate._create",
        "the library calls create_id with the __init__ arguments of the same names, so an"
        " aggregate's id is derived from program_id (and member_id).",
        ("event_class", "id", "kwargs"),
        check=check_create_id,
    ),
    Seam(
        f"{_DIALECT}:SqliteDialect",
        f"{_LITE}.SQLiteFactory.application_recorder",
        "on SQLite the tables are stored_events and stored_snapshots whatever the application's"
        " name, built from application_recorder_class.",
        ("self",),
        check=check_sqlite_factory_tables,
    ),
    Seam(
        f"{_DIALECT}:SqliteDialect.stored_id",
        f"{_LITE}.SQLiteApplicationRecorder.select_notifications",
        "SQLite stores ids as UUID.hex text and a notification's id is the rowid; a duplicate"
        " (id, version) raises IntegrityError.",
        ("self", "start", "limit", "stop", "topics", "inclusive_of_start"),
        check=check_sqlite_ids_and_positions,
    ),
    Seam(
        f"{_DIALECT}:PostgresDialect",
        f"{_PG}.PostgresFactory.application_recorder",
        "on PostgreSQL the tables are ledger_events and ledger_snapshots (name.lower() + _events"
        " / _snapshots), schema public, db functions off.",
        ("self",),
        check=check_postgres_factory,
    ),
    Seam(
        "ledger.infrastructure.database:DatabaseConfig.eventsourcing_env",
        "eventsourcing.persistence.InfrastructureFactory",
        "the settings we pass are exactly those the factories and the Application read (their"
        " names, CIPHER_KEY), plain and LEDGER_-prefixed, so none is left to os.environ;"
        " POSTGRES_ENABLE_DB_FUNCTIONS is no.",
        check=check_env_keys,
    ),
    Seam(
        "ledger.infrastructure.recorders:ChainedInserts.insert_events",
        "eventsourcing.utils.retry",
        "the library's PostgreSQL insert_events and select_events retry ten times on a"
        " connection error, which is why TallyPostgresApplicationRecorder calls neither (its"
        " own insert and select_events run once); SQLite's insert_events, which we call, does"
        " not retry.",
        ("exc", "max_attempts", "wait", "stall"),
        check=check_insert_retries_unwrapped,
    ),
    Seam(
        f"{_RECORDERS}:TallyPostgresApplicationRecorder.select_events",
        f"{_PG}.PostgresAggregateRecorder.select_events",
        "our select_events is the library's (same columns, conditions, order and StoredEvent"
        " per row) without its retries and with its statement made once per shape.",
        ("self", "originator_id", "gt", "lte", "desc", "limit"),
        "429a54082f1c6766f60e30be5dbfd6b761b9bad401562bd971a9a41bde26f870",
    ),
    Seam(
        f"{_RECORDERS}:TallyPostgresFactory.__init__",
        f"{_PG}.BasePostgresFactory.__init__",
        "it makes the datastore's pool unopened (it opens at the first get_connection), with"
        " host and port as keyword arguments (libpq lists pass through) laid over the pool's"
        " conninfo, which we set to the URL's other parameters; POSTGRES_CONNECT_TIMEOUT is"
        " the pool's wait, and with POSTGRES_PRE_PING the pool's `_check` checks each"
        " connection taken (we set it to check_when_readable).",
        ("self", "env"),
        check=check_pool_connection_settings,
    ),
    Seam(
        "ledger.infrastructure.database:DatabaseConfig.eventsourcing_env",
        f"{_APP}.Application.construct_env",
        "construct_env lays the env given over os.environ, and a setting is looked up as"
        " NAME_KEY before KEY, so passing both names of every setting overrides the process"
        " environment.",
        ("self", "name", "env"),
        "0369ca377c1fb3729945113c1c156ea568b4d3a8606510d8b2e73e2074f7a88d",
        check=check_construct_env,
    ),
    Seam(
        "projections.log_reader:LogReader._select",
        "eventsourcing.persistence.ApplicationRecorder.select_notifications",
        "select_notifications(start=position + 1, limit, stop) includes `start` by default.",
        ("self", "start", "limit", "stop", "topics", "inclusive_of_start"),
        check=check_select_notifications_defaults,
    ),
    Seam(
        "ledger.cli:main",
        "eventsourcing.persistence.ApplicationRecorder.max_notification_id",
        "max_notification_id() is the newest position (None when empty).",
        ("self",),
    ),
    # -- the PostgreSQL recorder ------------------------------------------------------------
    Seam(
        f"{_PGREC}.__init__",
        f"{_PG}.PostgresAggregateRecorder.__init__",
        "it sets events_table_name and needs the composite type stored_event_uuid, which"
        " migration 0001 creates for the snapshots.",
        ("self", "datastore", "events_table_name"),
        "78adbde8e22843caf9a353dacbe9ebfa3f9e047e6a7cce05d50067d510e1a4a7",
    ),
    Seam(
        f"{_PGREC}.__init__",
        f"{_PG}.PostgresApplicationRecorder.__init__",
        "the table has notification_id bigserial (our migration copies it) and"
        " lock_table_statements lock it in EXCLUSIVE mode: the lock that migration 0017's"
        " ledger_insert_events takes (our insert, which replaces the library's pipeline).",
        ("self", "datastore", "events_table_name"),
        "db36fb3de49a5292adbe422c79bfc1ef22658df8f60915befa85d16949b3fa9e",
    ),
    Seam(
        f"{_PGREC}.__init__",
        f"{_PG}.PostgresDatastore.__init__",
        "datastore.schema defaults to public, connections return dict rows, and db functions"
        " are off unless enabled.",
        None,
        "e68d5fed5a405ca0bb648b3029c8ed36968a90610bbab9528ba36dd39aa66111",
    ),
    Seam(
        f"{_PGREC}._insert",
        f"{_PG}.PostgresDatastore.get_connection",
        "get_connection() yields a pooled autocommit connection and turns psycopg's"
        " IntegrityError (a duplicate request_id) into the library's.",
        ("self",),
        "8837a84cf3a8492e1611e2c1c1b9042fd7655fe4365a11a4fe5a9e5a7badf7d4",
    ),
    # -- the SQLite recorder ------------------------------------------------------------
    Seam(
        f"{_LITEREC}._insert",
        f"{_LITE}.SQLiteAggregateRecorder.insert_events",
        "one committed transaction runs _insert_events(c, events, **kwargs) and returns its"
        " result, so the request rows commit with the events.",
        ("self", "stored_events", "kwargs"),
        "32f60619a2ca6e6a68cc63612d17c5e2e64defa63baa14cb1800f8e7d872eed5",
    ),
    Seam(
        f"{_LITEREC}._insert_events",
        f"{_LITE}.SQLiteApplicationRecorder._insert_events",
        "it inserts each event (hex id) and returns the lastrowids, as our copy with the hash"
        " columns does.",
        ("self", "c", "stored_events", "_"),
        "413cdf219c7bae6361386b240f477256549c5675adc02089fed33453160f1611",
    ),
    Seam(
        "ledger.infrastructure.migrations:migrate",
        f"{_LITE}.SQLiteApplicationRecorder.construct_create_table_statements",
        "migrations/sqlite/0001 creates stored_events in this shape (a rowid table).",
        ("self",),
        "0e52bba3d0092d396b69895e25c8e8637ab658834eb098d0bcc6080414455881",
    ),
    Seam(
        "ledger.infrastructure.migrations:migrate",
        f"{_LITE}.SQLiteAggregateRecorder.construct_create_table_statements",
        "migrations/sqlite/0005 creates stored_snapshots in this shape (WITHOUT ROWID).",
        ("self",),
        "940bfe1e379e780ff7ba80a52e85a8a70d5ea17b578a77f495f21c65a927b64e",
    ),
    Seam(
        "ledger.infrastructure.migrations:migrate",
        f"{_LITE}.SQLiteAggregateRecorder.__init__",
        "the snapshot recorder inserts VALUES (?,?,?,?), so stored_snapshots has four columns.",
        ("self", "datastore", "events_table_name"),
        "88895a2823b5a2d2f890deebd39eef5e7872ef7f7aeab8686ce4a93c4513ed1c",
    ),
    Seam(
        f"{_LITEREC}._insert_events",
        f"{_LITE}.SQLiteTransaction.__exit__",
        "an error inside the insert's transaction rolls it back and surfaces as the library's"
        " IntegrityError (a duplicate request_id).",
        ("self", "exc_type", "exc_val", "exc_tb"),
        "4dce61707760ebaa864f955a2f39a0f508a23b1cf98ce7c640be2e390bfb5aec",
    ),
    Seam(
        f"{_LITEREC}._chain_heads",
        f"{_LITE}.SQLiteDatastore.transaction",
        "transaction(commit=False) yields a cursor whose rows index by position.",
        ("self", "commit"),
    ),
    Seam(
        f"{_LITEREC}._insert_events",
        f"{_LITE}.SQLiteCursor",
        "the cursor has execute, executemany, fetchall and lastrowid.",
        check=check_sqlite_cursor,
    ),
    # -- names our subclasses share with the library's classes -------------------------
    Seam(
        _SERVICE,
        f"{_APP}.Application",
        "LedgerApplication replaces only save, register_transcodings, name and"
        " is_snapshotting_enabled; its other names are not the library's.",
        check=_no_shadowing(
            _SERVICE,
            frozenset({"save", "register_transcodings", "name", "is_snapshotting_enabled"}),
        ),
    ),
    Seam(
        _PGREC,
        f"{_PG}.PostgresApplicationRecorder",
        "our recorder replaces only insert_events and select_events (called once).",
        check=_no_shadowing(
            _PGREC,
            frozenset({"insert_events", "select_events"}),
        ),
    ),
    Seam(
        _LITEREC,
        f"{_LITE}.SQLiteApplicationRecorder",
        "our recorder replaces only insert_events and _insert_events.",
        check=_no_shadowing(_LITEREC, frozenset({"insert_events", "_insert_events"})),
    ),
    Seam(
        f"{_RECORDERS}:TallyPostgresFactory",
        f"{_PG}.PostgresFactory",
        "our factory replaces only application_recorder_class.",
        check=_no_shadowing(
            f"{_RECORDERS}:TallyPostgresFactory", frozenset({"application_recorder_class"})
        ),
    ),
    Seam(
        f"{_RECORDERS}:TallySqliteFactory",
        f"{_LITE}.SQLiteFactory",
        "our factory replaces only application_recorder_class.",
        check=_no_shadowing(
            f"{_RECORDERS}:TallySqliteFactory", frozenset({"application_recorder_class"})
        ),
    ),
    Seam(
        "ledger.domain.account:MemberAccount",
        "eventsourcing.domain.Aggregate",
        "the account replaces only create_id (and the library makes its Created and Event).",
        check=_no_shadowing(
            "ledger.domain.account:MemberAccount", frozenset({"create_id", "Created", "Event"})
        ),
    ),
    Seam(
        "ledger.domain.program:Program",
        "eventsourcing.domain.Aggregate",
        "the program replaces only create_id (and the library makes its Created and Event).",
        check=_no_shadowing(
            "ledger.domain.program:Program", frozenset({"create_id", "Created", "Event"})
        ),
    ),
]
