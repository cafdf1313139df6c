"""An operator's mistakes with `ledger audit` and `ledger export`: a key file that is missing
or not an Ed25519 public key, a database that does not exist (nothing may be created, and a
missing PostgreSQL database is refused at once, not after the pool's half-minute of retries),
a program that does not exist. Each is one clear line and exit status 2 (the real `ledger`
command, as a subprocess)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ledger.application import commands as c
from ledger.domain.program import ProgramSettings
from ledger.runtime import Tally
from tests.support import PG_HOST, PG_PORT, PG_USER, admin_conninfo, scratch_postgres
from tests.test_operator_errors import one_clear_line
from tests.test_server import free_port, run_ledger

# The commands that read an existing ledger, with their arguments before --database.
READERS = {
    "verify": ("audit", "verify"),
    "checkpoint": ("audit", "checkpoint"),
    "replay": ("audit", "replay"),
    "export": ("export", "events"),
}


def _refused(result: object, *expected: str) -> str:
    assert result.returncode == 2, result  # type: ignore[attr-defined]
    return one_clear_line(result, *expected)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def ledger_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A small ledger: program "p" with one member."""

    def build(url: str) -> str:
        tally = Tally.from_url(url)
        try:
            tally.app.create_program(
                c.CreateProgram(
                    program_id="p", request_id="p", settings=ProgramSettings("P", "EUR")
                )
            )
            tally.app.execute(c.EnrollMember(program_id="p", member_id="ann", request_id="ann"))
        finally:
            tally.close()
        return url

    if request.param == "sqlite":
        yield build(f"sqlite:///{tmp_path_factory.mktemp('audit') / 'ledger.db'}")
    else:
        with scratch_postgres() as url:
            yield build(url)


# ---------------------------------------------------------------------- the trusted key


def _public_pem(tmp_path: Path) -> Path:
    path = tmp_path / "trusted.pem"
    path.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def _x25519_pem(tmp_path: Path) -> Path:
    path = tmp_path / "x25519.pem"
    path.write_bytes(
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("this is not a key\n")
    return path


def _truncated_pem(tmp_path: Path) -> Path:
    path = tmp_path / "cut.pem"
    path.write_bytes(_public_pem(tmp_path).read_bytes()[:60])
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: tmp / "nonexistent.pem", "cannot read the key file"),
        (lambda tmp: tmp, "cannot read the key file"),  # a directory
        (_garbage, "is not a PEM Ed25519 public key"),
        (_truncated_pem, "is not a PEM Ed25519 public key"),
        (_x25519_pem, "is not an Ed25519 public key"),
    ],
    ids=["missing", "directory", "not PEM", "truncated PEM", "X25519 key"],
)
def test_a_public_key_file_that_is_not_an_ed25519_public_key_is_refused(
    ledger_url: str, tmp_path: Path, make: object, expected: str
) -> None:
    key = make(tmp_path)  # type: ignore[operator]
    result = run_ledger("audit", "verify", "--database", ledger_url, "--public-key", str(key))
    _refused(result, "ledger audit verify", str(key), expected)
    assert result.stdout == ""


def test_a_good_public_key_is_taken(ledger_url: str, tmp_path: Path) -> None:
    result = run_ledger(
        "audit", "verify", "--database", ledger_url, "--public-key", str(_public_pem(tmp_path))
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: 2 events")


def test_a_bad_signing_key_for_a_checkpoint_is_refused(
    ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLY_CHECKPOINT_KEY", str(tmp_path / "missing.pem"))
    result = run_ledger("audit", "checkpoint", "--database", ledger_url)
    _refused(result, "ledger audit checkpoint", "TALLY_CHECKPOINT_KEY", "missing.pem")


# ---------------------------------------------------------------------- the program


def test_verifying_a_program_that_does_not_exist_is_refused(ledger_url: str) -> None:
    result = run_ledger("audit", "verify", "--database", ledger_url, "--program", "nosuch")
    _refused(result, "ledger audit verify", "no program 'nosuch'")
    assert result.stdout == ""


def test_verifying_a_program_that_exists_checks_its_accounts(ledger_url: str) -> None:
    result = run_ledger("audit", "verify", "--database", ledger_url, "--program", "p")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: 2 events, 2 accounts")


# ---------------------------------------------------------------------- SQLite: no such file


@pytest.mark.parametrize("command", list(READERS))
def test_a_sqlite_file_that_does_not_exist_is_refused_and_not_created(
    tmp_path: Path, command: str
) -> None:
    path = tmp_path / "ledger.db"
    result = run_ledger(*READERS[command], "--database", f"sqlite:///{path}")
    _refused(result, f"ledger {' '.join(READERS[command])}", f"no database at {path}")
    assert list(tmp_path.iterdir()) == []  # no ledger.db, -wal or -shm
    assert result.stdout == ""


@pytest.mark.parametrize("command", list(READERS))
def test_a_sqlite_file_that_is_not_a_ledger_is_refused_and_left_alone(
    tmp_path: Path, command: str
) -> None:
    empty, garbage = tmp_path / "empty.db", tmp_path / "garbage.db"
    empty.write_bytes(b"")
    garbage.write_bytes(b"not a database at all" * 100)
    result = run_ledger(*READERS[command], "--database", f"sqlite:///{empty}")
    _refused(result, f"{empty} is not a Tally ledger", "ledger migrate")
    result = run_ledger(*READERS[command], "--database", f"sqlite:///{garbage}")
    _refused(result, f"{garbage} is not a SQLite database")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "garbage.db"]
    assert empty.read_bytes() == b""


# ---------------------------------------------------------------------- PostgreSQL


def _postgres(dbname: str, user: str = PG_USER, port: int = PG_PORT) -> str:
    return f"postgresql://{user}@{PG_HOST}:{port}/{dbname}"


def _refused_quickly(*args: str) -> tuple[str, float]:
    started = time.monotonic()
    result = run_ledger(*args, timeout=30)
    elapsed = time.monotonic() - started
    return _refused(result), elapsed


@pytest.mark.parametrize("command", list(READERS))
def test_a_postgres_database_that_does_not_exist_is_refused_at_once(command: str) -> None:
    name = "tally_no_such_database"
    stderr, elapsed = _refused_quickly(*READERS[command], "--database", _postgres(name))
    assert elapsed < 10, stderr  # not the pool's 30 s of retries
    assert f"database '{name}' does not exist" in stderr
    assert f"createdb -h {PG_HOST} -p {PG_PORT} -U {PG_USER} {name}" in stderr
    with psycopg.connect(admin_conninfo()) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert found is None


def test_an_unknown_postgres_role_is_refused_naming_it() -> None:
    stderr, elapsed = _refused_quickly(
        "audit", "verify", "--database", _postgres("postgres", user="tally_no_such_role")
    )
    assert elapsed < 10, stderr
    assert f"PostgreSQL at {PG_HOST}:{PG_PORT} has no role 'tally_no_such_role'" in stderr


def test_an_unreachable_postgres_server_is_refused_naming_it() -> None:
    port = free_port()  # nothing listens there
    stderr, elapsed = _refused_quickly(
        "export", "events", "--database", _postgres("ledger", port=port)
    )
    assert elapsed < 10, stderr
    assert f"cannot reach PostgreSQL at {PG_HOST}:{port}" in stderr


def test_a_postgres_database_that_is_not_a_ledger_is_refused() -> None:
    with scratch_postgres() as url:
        result = run_ledger("audit", "verify", "--database", url)
    _refused(result, "is not a Tally ledger", "ledger migrate")
