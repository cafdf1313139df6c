"""`ledger audit verify|replay|checkpoint` and `ledger export events`. These open the
database without applying migrations: an audit reads what is there and changes nothing
(apart from `checkpoint`, which adds one).

Before opening anything, every command makes sure the database is there and holds a ledger:
opening a SQLite file that does not exist would create it, and the PostgreSQL pool would
retry a missing database for half a minute. An operator's mistake (a wrong path, database,
role or key file, a program that does not exist) is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from urllib.parse import quote

import psycopg
from eventsourcing.persistence import MapperDeserialisationError

from ledger.audit.checkpoints import (
    KeyFileError,
    checkpoint_to_head,
    load_public_key,
    load_signing_key,
    raw,
)
from ledger.audit.events import EventReader
from ledger.audit.journal_check import TABLES as JOURNAL_TABLES
from ledger.audit.journal_check import check_journal
from ledger.audit.replay import replay
from ledger.audit.verify import program_exists, read_rows, verify
from ledger.infrastructure.database import (
    DatabaseConfig,
    DatabaseUnavailable,
    DatabaseUrlError,
    check_database,
    open_database,
    parse_database_url,
)
from ledger.infrastructure.dialect import SQLITE

CONNECT_TIMEOUT_SECONDS = 5


class Refused(Exception):
    """An operator's mistake: its message is the one line to print."""


def run_audit(args: argparse.Namespace) -> int:
    command = f"ledger audit {args.audit_command}"
    try:
        if args.audit_command == "verify":
            return _verify(args.database, args.program, args.public_key)
        if args.audit_command == "replay":
            return _replay(args.database)
        if args.audit_command == "journal":
            return _journal(args.database, args.program)
        return _checkpoint(args.database)
    except Refused as e:
        print(f"{command}: {e}", file=sys.stderr)
        return 2


def _verify(url: str, program_id: str, public_key_path: str | None) -> int:
    try:
        key = raw(load_public_key(public_key_path)) if public_key_path else None
    except KeyFileError as e:
        raise Refused(str(e)) from None
    config = existing_database(url)
    db = open_database(config)
    try:
        if program_id and not program_exists(db, program_id):
            raise Refused(f"no program {program_id!r} in {config.display}")
        report = verify(db, program_id, key)
    finally:
        db.close()
    for finding in sorted(report.findings, key=lambda f: f.position):
        print(f"position {finding.position}: {finding.kind}: {finding.detail}")
    status = "ok" if report.ok else f"FAILED, first bad position {report.first_bad_position}"
    print(
        f"{status}: {report.events_checked} events, {report.accounts} accounts, "
        f"{report.checkpoints_checked} checkpoints checked"
        + ("" if key else "; checkpoint signatures checked against their own keys only")
    )
    return 0 if report.ok else 1


def _replay(url: str) -> int:
    config = existing_database(url)
    unreadable = _first_unreadable(config)
    if unreadable:
        print(f"ledger audit replay: UNDECODABLE at {unreadable}", file=sys.stderr)
        return 1
    try:
        report = replay(url)
    except MapperDeserialisationError as e:  # a state that is not the JSON of its event
        lines = str(e).strip().splitlines()
        print(
            f"ledger audit replay: UNDECODABLE: {lines[0] if lines else type(e).__name__}"
            " (`ledger audit verify` names its position)",
            file=sys.stderr,
        )
        return 1
    for d in report.differences[:100]:
        print(f"{d.table} {d.key}: live {d.live} != replayed {d.replayed}")
    if len(report.differences) > 100:
        print(f"... and {len(report.differences) - 100} more differences")
    status = "ok" if report.ok else f"FAILED: {len(report.differences)} rows differ"
    print(f"{status}: {report.rows_compared} rows compared, log replayed to {report.position}")
    return 0 if report.ok else 1


def _journal(url: str, program_id: str) -> int:
    config = existing_database(url)
    if program_id:
        db = open_database(config)
        try:
            if not program_exists(db, program_id):
                raise Refused(f"no program {program_id!r} in {config.display}")
        finally:
            db.close()
    missing = [t for t in JOURNAL_TABLES if t not in _tables(config, JOURNAL_TABLES)]
    if missing:
        raise Refused(
            f"{_where(config)} has no journal of this version (no {', '.join(missing)};"
            " `ledger migrate` makes it)"
        )
    report = check_journal(config, program_id)
    for finding in report.findings[:100]:
        print(f"{finding.kind}: {finding.detail}")
    if len(report.findings) > 100:
        print(f"... and {len(report.findings) - 100} more findings")
    status = "ok" if report.ok else f"FAILED: {len(report.findings)} findings"
    print(
        f"{status}: {report.postings} postings balanced to position {report.position},"
        f" {report.members} members' ledger accounts against their balances,"
        f" {report.day_rows} per-day sums against the postings"
    )
    return 0 if report.ok else 1


def _first_unreadable(config: DatabaseConfig) -> str:
    """The first event stored as another type than Tally writes, which the library cannot
    read back (so cannot replay), and how many there are; "" if none. Until replay.py says
    where its decoding fails, this look at the log comes first."""
    db = open_database(config)
    first, count = "", 0
    try:
        for row in read_rows(db):
            if row.problems:
                count += 1
                first = first or f"position {row.position}: {row.name}: {'; '.join(row.problems)}"
    finally:
        db.close()
    more = f" (and {count - 1} more)" if count > 1 else ""
    return f"{first}{more}; the log cannot be replayed (`ledger audit verify`)" if first else ""


def _checkpoint(url: str) -> int:
    try:
        key = load_signing_key()
    except KeyFileError as e:
        raise Refused(f"TALLY_CHECKPOINT_KEY: {e}") from None
    db = open_database(existing_database(url))
    try:
        made = checkpoint_to_head(db, key)
    finally:
        db.close()
    if not made:
        print("no events since the last checkpoint")
    for checkpoint in made:
        signed = "signed" if checkpoint.signature else "unsigned"
        print(
            f"checkpoint {checkpoint.checkpoint_id} at position {checkpoint.position}: "
            f"{checkpoint.event_count} events, {len(checkpoint.heads)} accounts, digest "
            f"{checkpoint.digest.hex()} ({signed})"
        )
    return 0


def export_events(url: str, since_position: int) -> int:
    """Every event after `since_position` as JSON lines on stdout. A row that cannot be read
    as Tally wrote it is exported too (with its `problem`, and a null payload unless its
    state is still JSON); then stderr names the first and the exit status is 1."""
    try:
        config = existing_database(url)
    except Refused as e:
        print(f"ledger export events: {e}", file=sys.stderr)
        return 2
    db = open_database(config)
    reader = EventReader(db)
    position = since_position
    out = sys.stdout
    bad, first_bad = 0, ""
    try:
        while True:
            events, position = reader.scan(position, 1000)
            if not events:
                break
            out.write("".join(e.to_json() + "\n" for e in events))
            for event in events:
                if event.problem:
                    bad += 1
                    first_bad = first_bad or f"position {event.position}: {event.problem}"
    finally:
        out.flush()
        db.close()
    if bad:
        more = f" (and {bad - 1} more)" if bad > 1 else ""
        print(f"ledger export events: UNDECODABLE at {first_bad}{more}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------- the database is there


def existing_database(url: str) -> DatabaseConfig:
    """The configuration of this URL, once its database is known to exist and to hold a Tally
    log; Refused (creating nothing) if not. `check_database` (database.py, shared with the
    other commands) refuses a missing SQLite file or PostgreSQL database, an unknown role and
    an unreachable server; then the tables are looked for, read-only."""
    try:
        config = parse_database_url(url)
        check_database(config, must_exist=True)
    except (DatabaseUrlError, DatabaseUnavailable) as e:
        raise Refused(str(e)) from None
    missing = ", ".join(t for t in _wanted(config) if t not in _tables(config))
    if missing:
        raise Refused(
            f"{_where(config)} is not a Tally ledger (no {missing}; `ledger migrate` makes one)"
        )
    return config


def _wanted(config: DatabaseConfig) -> tuple[str, ...]:
    dialect = config.dialect
    return (dialect.events_table, dialect.checkpoints_table, dialect.checkpoint_heads_table)


def _where(config: DatabaseConfig) -> str:
    if config.dialect is SQLITE:
        return config.sqlite_path
    return f"database {config.dbname!r} on PostgreSQL at {config.host}:{config.port}"


def _tables(config: DatabaseConfig, wanted: tuple[str, ...] = ()) -> set[str]:
    """Which tables the database has (on PostgreSQL: of `wanted`, default the log's), read
    on a connection that cannot change anything."""
    if config.dialect is SQLITE:
        uri = f"file:{quote(str(Path(config.sqlite_path).resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=5)
            try:
                names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                return {str(r[0]) for r in names.fetchall()}
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            raise Refused(f"{config.sqlite_path} is not a SQLite database ({e})") from None
    try:
        with psycopg.connect(config.conninfo(), connect_timeout=CONNECT_TIMEOUT_SECONDS) as pg:
            found = pg.execute(
                "SELECT t FROM unnest(%s::text[]) t WHERE to_regclass(t) IS NOT NULL",
                (list(wanted or _wanted(config)),),
            ).fetchall()
    except psycopg.Error as e:
        lines = str(e).strip().splitlines()
        raise Refused(f"{_where(config)}: {lines[0] if lines else type(e).__name__}") from None
    return {str(r[0]) for r in found}
