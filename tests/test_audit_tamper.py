"""Tampering made directly in the database is found, with the right position, on both
backends: a byte altered, an event deleted from the middle of an account, an account's newest
event deleted (only a checkpoint can see that), two events swapped, an undecodable event, a
value rewritten as another type (TEXT for a BLOB on SQLite, an altered column on PostgreSQL:
a finding, never a crash, in `verify`, `export` and `replay`), a forged checkpoint. The
append-only triggers are bypassed here as an attacker with database access would. `ledger
audit verify` exits non-zero on findings; `ledger audit replay` finds a corrupted read-model
row."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.application import commands as c
from ledger.audit.checkpoints import load_checkpoints, raw, write_checkpoint
from ledger.audit.replay import replay
from ledger.audit.verify import (
    ALTERED,
    BAD_SIGNATURE,
    CHECKPOINT,
    MISSING,
    UNDECODABLE,
    VerifyReport,
    verify,
)
from ledger.domain.ids import account_id_key
from ledger.domain.program import ProgramSettings
from ledger.runtime import Tally
from tests.support import scratch_postgres
from tests.test_server import run_ledger


@dataclass
class Ledger:
    url: str
    tally: Tally
    kind: str

    def rows(self, member: str) -> list[tuple[int, int]]:
        """(position, version) of a member's events."""
        table, position = _table(self.kind)
        oid = account_id_key("p", member)
        with self.tally.database.read() as cur:
            cur.execute(
                f"SELECT {position}, originator_version FROM {table} WHERE originator_id = ?"
                " ORDER BY originator_version",
                (oid.hex if self.kind == "sqlite" else oid,),
            )
            return [(int(r[0]), int(r[1])) for r in cur.fetchall()]

    def tamper(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Run SQL with the append-only triggers out of the way."""
        table, _ = _table(self.kind)
        if self.kind == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            lite = sqlite3.connect(path)
            try:
                for trigger in (f"{table}_no_update", f"{table}_no_delete"):
                    lite.execute(f"DROP TRIGGER IF EXISTS {trigger}")
                for sql, params in statements:
                    lite.execute(sql.replace("%s", "?"), params)
                lite.commit()
            finally:
                lite.close()
            return
        with psycopg.connect(self.url, autocommit=False) as conn:
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")

    def state(self, position: int) -> bytes:
        table, column = _table(self.kind)
        with self.tally.database.read() as cur:
            cur.execute(f"SELECT state FROM {table} WHERE {column} = ?", (position,))
            row = cur.fetchone()
        assert row is not None
        return bytes(row[0])

    def alter(self, position: int, old: bytes, new: bytes) -> None:
        """Change bytes of one stored event in place."""
        state = self.state(position)
        assert old in state
        table, column = _table(self.kind)
        update = f"UPDATE {table} SET state = %s WHERE {column} = %s"
        self.tamper((update, (state.replace(old, new), position)))

    def unprotect_checkpoints(self, cur: Any) -> None:
        if self.kind == "sqlite":
            cur.execute("DROP TRIGGER IF EXISTS checkpoints_no_update")
        else:
            cur.execute("ALTER TABLE ledger_checkpoints DISABLE TRIGGER USER")


def _table(kind: str) -> tuple[str, str]:
    return ("stored_events", "rowid") if kind == "sqlite" else ("ledger_events", "notification_id")


def _earn(member: str, points: int, rid: str) -> c.EarnPoints:
    return c.EarnPoints(
        program_id="p", member_id=member, points=points, request_id=rid, store_id="s"
    )


def _build(url: str) -> None:
    """The history every test starts from: a programme, 3 members x (enrolment + 5 earns),
    a checkpoint, and one earn after it."""
    tally = Tally.from_url(url)
    try:
        app = tally.app
        app.create_program(
            c.CreateProgram(program_id="p", request_id="p", settings=ProgramSettings("P", "EUR"))
        )
        for m in ("ann", "bob", "cat"):
            app.execute(c.EnrollMember(program_id="p", member_id=m, request_id=m))
        for i in range(5):
            app.execute_group([_earn(m, 10 + i, f"{m}{i}") for m in ("ann", "bob", "cat")], {})
        write_checkpoint(tally.database)
        app.execute_group([_earn("cat", 1, "cat-after")], {})  # after the checkpoint
    finally:
        tally.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], str]]:
    """The history written once per backend, on first use, into a database nobody keeps
    open: each test tampers with a copy of its own (a file copy, or CREATE DATABASE ...
    TEMPLATE), not with a database migrated and written anew."""
    urls: dict[str, str] = {}
    with ExitStack() as stack:

        def url_of(kind: str) -> str:
            if kind not in urls:
                if kind == "sqlite":
                    urls[kind] = f"sqlite:///{tmp_path_factory.mktemp('built') / 'ledger.db'}"
                else:
                    urls[kind] = stack.enter_context(scratch_postgres())
                _build(urls[kind])
            return urls[kind]

        yield url_of


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(
    request: pytest.FixtureRequest, tmp_path: Path, built: Callable[[str], str]
) -> Iterator[Ledger]:
    def opened(url: str) -> Iterator[Ledger]:
        tally = Tally.from_url(url)
        try:
            yield Ledger(url, tally, request.param)
        finally:
            tally.close()

    template = built(request.param)
    if request.param == "sqlite":
        source = Path(template.removeprefix("sqlite:///"))
        copy = tmp_path / "ledger.db"
        for suffix in ("", "-wal"):  # closed, it has no -wal; were it there, it goes along
            if source.with_name(source.name + suffix).exists():
                shutil.copyfile(
                    source.with_name(source.name + suffix), copy.with_name(copy.name + suffix)
                )
        yield from opened(f"sqlite:///{copy}")
    else:
        with scratch_postgres(copy_of=template) as url:
            yield from opened(url)


def _only(report: VerifyReport, kind: str) -> list[int]:
    return [f.position for f in report.findings if f.kind == kind]


def test_an_untouched_log_verifies(ledger: Ledger) -> None:
    report = verify(ledger.tally.database)
    assert report.ok, report.findings
    assert report.events_checked == 1 + 3 * 6 + 1  # program, 3 x (enrol + 5 earns), 1 more
    assert report.checkpoints_checked == 1
    assert report.first_bad_position == 0


def test_a_byte_altered_in_a_stored_event_is_found_at_its_position(ledger: Ledger) -> None:
    position, version = ledger.rows("bob")[3]
    # A digit of the points, in place: still valid JSON, so the library would read it back.
    ledger.alter(position, b'"points":12', b'"points":92')
    report = verify(ledger.tally.database)
    assert not report.ok
    assert report.first_bad_position == position
    assert _only(report, ALTERED)[0] == position
    assert f"v{version}" in report.detail


def test_an_event_deleted_from_the_middle_of_an_account_is_found(ledger: Ledger) -> None:
    rows = ledger.rows("ann")
    (deleted, _), (after, _) = rows[2], rows[3]
    table, column = _table(ledger.kind)
    ledger.tamper((f"DELETE FROM {table} WHERE {column} = %s", (deleted,)))

    report = verify(ledger.tally.database)

    assert report.first_bad_position == after  # where the gap shows: ann v4 follows v2
    assert after in _only(report, MISSING)
    assert "v3 missing" in report.detail


def test_an_accounts_newest_event_deleted_is_found_by_the_checkpoint(ledger: Ledger) -> None:
    newest, version = ledger.rows("bob")[-1]
    table, column = _table(ledger.kind)
    ledger.tamper((f"DELETE FROM {table} WHERE {column} = %s", (newest,)))

    report = verify(ledger.tally.database)

    # Every chain is intact: only the checkpoint knows bob had one more event, and where.
    assert report.first_bad_position == newest
    assert newest in _only(report, MISSING)
    assert f"v{version}" in report.detail


def test_two_events_swapped_are_found(ledger: Ledger) -> None:
    (first, _), (second, _) = ledger.rows("cat")[1:3]
    table, column = _table(ledger.kind)
    a, b = ledger.state(first), ledger.state(second)
    update = f"UPDATE {table} SET state = %s WHERE {column} = %s"
    ledger.tamper((update, (b, first)), (update, (a, second)))

    report = verify(ledger.tally.database)

    assert report.first_bad_position == first
    assert {first, second} <= set(_only(report, ALTERED))


def test_an_undecodable_event_is_a_finding_not_a_crash(ledger: Ledger) -> None:
    position, _ = ledger.rows("ann")[1]
    table, column = _table(ledger.kind)
    ledger.tamper(
        (f"UPDATE {table} SET state = %s WHERE {column} = %s", (b"\xff{not json", position))
    )

    report = verify(ledger.tally.database)

    assert position in _only(report, UNDECODABLE)
    assert position in _only(report, ALTERED)
    assert report.first_bad_position == position


def test_a_forged_checkpoint_signature_is_found(ledger: Ledger, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    ledger.tally.app.execute_group([_earn("ann", 1, "more")], {})
    made = write_checkpoint(ledger.tally.database, key)
    assert made is not None
    before = verify(ledger.tally.database, public_key=raw(key.public_key()))
    # The fixture's first checkpoint was written before there was a key: not trusted.
    assert [(f.kind, f.detail) for f in before.findings] == [
        (BAD_SIGNATURE, f"checkpoint 1 (position {made.position - 2}) is not signed")
    ]
    # Someone without the key re-signs the checkpoint with theirs.
    forger = Ed25519PrivateKey.generate()
    table = "checkpoints" if ledger.kind == "sqlite" else "ledger_checkpoints"
    with ledger.tally.database.transaction() as cur:
        ledger.unprotect_checkpoints(cur)
        cur.execute(
            f"UPDATE {table} SET signature = ?, public_key = ? WHERE checkpoint_id = ?",
            (forger.sign(made.digest), raw(forger.public_key()), made.checkpoint_id),
        )

    trusted = verify(ledger.tally.database, public_key=raw(key.public_key()))
    assert made.position in _only(trusted, BAD_SIGNATURE)
    assert any("signed by another key" in f.detail for f in trusted.findings)
    # Without the trusted key only corruption shows, not a forgery: a damaged signature.
    with ledger.tally.database.transaction() as cur:
        cur.execute(
            f"UPDATE {table} SET signature = ? WHERE checkpoint_id = ?",
            (bytes(64), made.checkpoint_id),
        )
    assert made.position in _only(verify(ledger.tally.database), BAD_SIGNATURE)
    # Through the command line, with the trusted key as a PEM file: exit status 1.
    pem = tmp_path / "key.pub"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    done = run_ledger("audit", "verify", "--database", ledger.url, "--public-key", str(pem))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"position {made.position}: {BAD_SIGNATURE}" in done.stdout


def test_an_altered_checkpoint_record_is_found(ledger: Ledger) -> None:
    table = "checkpoints" if ledger.kind == "sqlite" else "ledger_checkpoints"
    with ledger.tally.database.transaction() as cur:
        ledger.unprotect_checkpoints(cur)
        cur.execute(f"UPDATE {table} SET event_count = event_count - 1")

    report = verify(ledger.tally.database)

    assert CHECKPOINT in {f.kind for f in report.findings}


def test_the_command_line_verifier_passes_a_clean_log_and_fails_a_tampered_one(
    ledger: Ledger,
) -> None:
    command = ["audit", "verify", "--database", ledger.url]
    clean = run_ledger(*command)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.startswith("ok: 20 events")

    position, _ = ledger.rows("cat")[-1]  # after the checkpoint: only the chain protects it
    ledger.alter(position, b'"points":1,', b'"points":7,')
    tampered = run_ledger(*command)
    assert tampered.returncode == 1
    assert f"first bad position {position}" in tampered.stdout


def test_replay_finds_a_corrupted_read_model_row(ledger: Ledger) -> None:
    ledger.tally.start(sweep=False)
    ledger.tally.points.wait_for(ledger.tally.app.recorder.max_notification_id() or 0, 30)
    ledger.tally.points.stop()
    assert replay(ledger.url).ok

    with ledger.tally.database.transaction() as cur:
        cur.execute(
            "UPDATE rm_accounts SET points_available = points_available + 1 WHERE member_id = ?",
            ("bob",),
        )
    report = replay(ledger.url)

    assert not report.ok
    assert [(d.table, d.key) for d in report.differences] == [("rm_accounts", ("p", "bob"))]
    done = run_ledger("audit", "replay", "--database", ledger.url)
    assert done.returncode == 1
    assert "rm_accounts ('p', 'bob')" in done.stdout


def test_a_fresh_process_links_to_events_written_by_another(ledger: Ledger) -> None:
    """The chain head cache starts empty in a new process: it must read the stored heads."""
    other = Tally.from_url(ledger.url)
    try:
        other.app.execute_group([_earn("ann", 3, "from-another-process")], {})
    finally:
        other.close()
    report = verify(ledger.tally.database)
    assert report.ok, report.findings
    assert ledger.rows("ann")[-1][1] == 7  # enrolled, 5 earns, this one


# ---------------------------------------------------------------------- values of the wrong type


def _no_crash(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) <= 3, done.stderr


# (SQL on SQLite, SQL on PostgreSQL or None) rewriting one value, or on PostgreSQL a column,
# as another type: the bytes may even be the same, but the library cannot read them back.
RETYPED: dict[str, tuple[str | None, str | None]] = {
    "state as TEXT": (
        "UPDATE stored_events SET state = CAST(state AS TEXT) WHERE rowid = %s",
        "ALTER TABLE ledger_events ALTER COLUMN state TYPE text USING convert_from(state, 'UTF8')",
    ),
    "state as TEXT that is not UTF-8": (
        "UPDATE stored_events SET state = CAST(X'ff7b7d' AS TEXT) WHERE rowid = %s",
        None,
    ),
    "hash as TEXT": (
        "UPDATE stored_events SET hash = CAST(hash AS TEXT) WHERE rowid = %s",
        "ALTER TABLE ledger_events ALTER COLUMN hash TYPE text USING encode(hash, 'hex')",
    ),
    "version as TEXT": (
        "UPDATE stored_events SET originator_version = 'two' WHERE rowid = %s",
        None,
    ),
    "state as JSONB": (
        None,
        "ALTER TABLE ledger_events ALTER COLUMN state TYPE jsonb"
        " USING convert_from(state, 'UTF8')::jsonb",
    ),
    "topic as a BLOB": (
        "UPDATE stored_events SET topic = CAST(topic AS BLOB) WHERE rowid = %s",
        "ALTER TABLE ledger_events ALTER COLUMN topic TYPE bytea USING convert_to(topic, 'UTF8')",
    ),
}


# Each case on the backends where it can happen: PostgreSQL types every value of a column
# (so some SQLite rewrites have no PostgreSQL form), and SQLite has no JSONB.
RETYPED_ON = [
    pytest.param(backend, case, id=f"{backend}-{case}")
    for case, statements in RETYPED.items()
    for backend, statement in zip(("sqlite", "postgres"), statements, strict=True)
    if statement is not None
]


@pytest.mark.parametrize(("ledger", "case"), RETYPED_ON, indirect=["ledger"])
def test_a_value_rewritten_as_another_type_is_a_finding_not_a_crash(
    ledger: Ledger, case: str
) -> None:
    sqlite_sql, postgres_sql = RETYPED[case]
    position, _ = ledger.rows("bob")[2]
    if ledger.kind == "sqlite":
        assert sqlite_sql is not None
        ledger.tamper((sqlite_sql, (position,)))
        first = position
    else:
        assert postgres_sql is not None
        ledger.tamper((postgres_sql, ()))  # every row's value, so the first event is first
        first = 1

    report = verify(ledger.tally.database)
    assert first in _only(report, UNDECODABLE), report.findings
    assert report.first_bad_position == first

    done = run_ledger("audit", "verify", "--database", ledger.url)
    _no_crash(done)
    assert f"position {first}: {UNDECODABLE}" in done.stdout
    assert f"first bad position {first}" in done.stdout

    exported = run_ledger("export", "events", "--database", ledger.url)
    _no_crash(exported)
    assert f"position {first}" in exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(lines) == 20  # every event is exported, the bad one too
    bad = next(e for e in lines if e["position"] == first)
    assert bad["problem"]

    # A checkpoint over the damaged log can still be written (the verifier reports the rest).
    made = run_ledger("audit", "checkpoint", "--database", ledger.url)
    assert made.returncode == 0, made.stdout + made.stderr
    assert made.stdout.startswith("checkpoint 2 at position 20")


def test_a_checkpoint_digest_rewritten_as_another_type_is_a_finding_not_a_crash(
    ledger: Ledger,
) -> None:
    (checkpoint,) = load_checkpoints(ledger.tally.database)
    at = checkpoint.position
    with ledger.tally.database.transaction() as cur:
        ledger.unprotect_checkpoints(cur)
        if ledger.kind == "sqlite":
            cur.execute("UPDATE checkpoints SET digest = CAST(digest AS TEXT)")
        else:
            cur.execute(
                "ALTER TABLE ledger_checkpoints ALTER COLUMN digest TYPE text"
                " USING encode(digest, 'hex')"
            )

    report = verify(ledger.tally.database)
    assert at in _only(report, CHECKPOINT), report.findings
    assert any("digest is stored as text" in f.detail for f in report.findings)

    done = run_ledger("audit", "verify", "--database", ledger.url)
    _no_crash(done)
    assert f"position {at}: {CHECKPOINT}" in done.stdout


def test_an_undecodable_event_is_exported_and_reported(ledger: Ledger) -> None:
    position, _ = ledger.rows("ann")[1]
    table, column = _table(ledger.kind)
    ledger.tamper(
        (f"UPDATE {table} SET state = %s WHERE {column} = %s", (b"\xff{not json", position))
    )

    exported = run_ledger("export", "events", "--database", ledger.url)

    _no_crash(exported)
    assert f"position {position}" in exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [e["position"] for e in lines] == sorted(e["position"] for e in lines)
    bad = next(e for e in lines if e["position"] == position)
    assert bad["payload"] is None
    assert "JSON" in bad["problem"]
    assert all("problem" not in e for e in lines if e["position"] != position)


def test_replay_of_a_log_with_an_undecodable_event_fails_in_one_line(ledger: Ledger) -> None:
    ledger.tally.start(sweep=False)
    ledger.tally.points.wait_for(ledger.tally.app.recorder.max_notification_id() or 0, 30)
    ledger.tally.points.stop()
    position, _ = ledger.rows("bob")[2]
    if ledger.kind == "sqlite":
        update = "UPDATE stored_events SET state = CAST(state AS TEXT) WHERE rowid = %s"
        ledger.tamper((update, (position,)))
    else:
        ledger.tamper(
            (
                "ALTER TABLE ledger_events ALTER COLUMN state TYPE text"
                " USING convert_from(state, 'UTF8')",
                (),
            )
        )

    done = run_ledger("audit", "replay", "--database", ledger.url)

    _no_crash(done)
    first = position if ledger.kind == "sqlite" else 1
    assert f"UNDECODABLE at position {first}: " in done.stderr
    assert "its state is stored as text" in done.stderr


def test_replay_of_a_log_with_a_state_that_is_not_json_fails_in_one_line(ledger: Ledger) -> None:
    ledger.tally.start(sweep=False)
    ledger.tally.points.wait_for(ledger.tally.app.recorder.max_notification_id() or 0, 30)
    ledger.tally.points.stop()
    position, _ = ledger.rows("ann")[1]
    table, column = _table(ledger.kind)
    ledger.tamper((f"UPDATE {table} SET state = %s WHERE {column} = %s", (b"{not json", position)))

    done = run_ledger("audit", "replay", "--database", ledger.url)

    _no_crash(done)
    assert "UNDECODABLE" in done.stderr
    assert str(account_id_key("p", "ann")) in done.stderr  # the library's message names it
