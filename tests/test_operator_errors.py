"""An operator's mistakes at the command line: each gets one clear line on stderr and a
non-zero exit, never a traceback (the real `ledger` command, as a subprocess)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from tests.support import ServerThread, scratch_postgres
from tests.test_server import _kill_if_running, _serve, _wait_serving, free_port, run_ledger


def one_clear_line(result: object, *expected: str) -> str:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.returncode != 0, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, stderr
    for words in expected:
        assert words in stderr, stderr
    return stderr


# The installed command, run as a plain subprocess where the tests' zygote would not do.
LEDGER = str(Path(sys.executable).parent / "ledger")
_PROGRAM_CREATE = ("program", "create", "--program", "p", "--name", "P", "--currency", "EUR")


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:abc", "the port must be a number"),
        ("127.0.0.1:99999", "the port must be a number from 0 to 65535"),
        ("127.0.0.1", "give HOST:PORT"),
        ("50051", "give HOST:PORT"),
        ("0.0.0.0:50051", "not a loopback address"),
    ],
)
def test_a_malformed_or_unsafe_listen_address_is_refused(
    listen: str, expected: str, tmp_path: Path
) -> None:
    result = run_ledger("serve", "--listen", listen, "--database", f"sqlite:///{tmp_path}/l.db")
    one_clear_line(result, "ledger serve", expected)
    assert not (tmp_path / "l.db").exists()  # refused before anything was made


def test_a_port_another_program_holds_is_refused_naming_the_port(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = run_ledger(
            "serve", "--listen", f"127.0.0.1:{port}", "--database", f"sqlite:///{tmp_path}/l.db"
        )
    one_clear_line(result, f"port {port}", "already in use")


def test_a_second_server_on_a_busy_port_is_refused(server: ServerThread, tmp_path: Path) -> None:
    """Regression: SO_REUSEPORT was always on, so a second server (another database even)
    started silently on the same port and answered some of the first one's clients."""
    result = run_ledger(
        "serve", "--listen", server.target, "--database", f"sqlite:///{tmp_path}/l.db"
    )
    one_clear_line(result, f"port {server.port}", "already in use")


def test_a_second_server_on_one_sqlite_file_is_refused_and_the_lock_dies_with_its_holder(
    tmp_path: Path,
) -> None:
    """Regression: two servers ran on one SQLite file and fought (ABORTED answers,
    projection conflicts)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first_target = f"127.0.0.1:{free_port()}"
    first = _serve(first_target, url)
    try:
        assert _wait_serving(first_target, first) == health_pb2.HealthCheckResponse.SERVING
        second = run_ledger("serve", "--listen", f"127.0.0.1:{free_port()}", "--database", url)
        one_clear_line(second, "in use by a `ledger serve`", "one process at a time")
    finally:
        first.kill()  # no clean exit: the kernel drops the lock with the process
        first.communicate()
    again_target = f"127.0.0.1:{free_port()}"
    again = _serve(again_target, url)
    try:
        assert _wait_serving(again_target, again) == health_pb2.HealthCheckResponse.SERVING
    finally:
        _kill_if_running(again)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["migrate", "--database", "mysql://x"], ["unsupported database URL"]),
        (["serve", "--database", "sqlite://ledger.db"], ["three slashes", "sqlite:///ledger.db"]),
        (["serve", "--database", "sqlite:///no/such/folder/l.db"], ["no folder no/such/folder"]),
        (
            ["migrate", "--database", f"postgresql://postgres@127.0.0.1:{free_port()}/x"],
            ["cannot reach PostgreSQL", "is it running"],
        ),
        (
            ["migrate", "--database", "postgresql://no_such_role@127.0.0.1:5432/postgres"],
            ["no role 'no_such_role'"],
        ),
        (
            ["serve", "--database", "postgresql://postgres@127.0.0.1:5432/no_such_tally_db"],
            ["'no_such_tally_db' does not exist", "createdb -h 127.0.0.1 -p 5432 -U postgres"],
        ),
        (["demo", "--target", f"127.0.0.1:{free_port()}"], ["no Tally server answered"]),
        (["migrate", "--database", "postgresql://h1:5432,h2:x/d"], ["port of 'h2:x'"]),
        (
            ["serve", "--database", "postgresql://u:hunter2@h/d?target_session_attrs=rw"],
            ["target_session_attrs=rw is not one of", "read-write", "u:***@h"],
        ),
        (["migrate", "--database", "postgresql://h/d?no_such=1"], ["invalid connection option"]),
        (
            ["migrate", "--database", "postgresql://postgres@127.0.0.1:5432/test?sslmode=bogus"],
            ['the database URL has a bad setting: invalid sslmode value: "bogus"'],
        ),
        (
            [
                "import",
                "--database",
                "sqlite:///l.db",
                "--program",
                "p",
                "--projections",
                "process",
                "x.jsonl",
            ],
            ["--projections process needs a PostgreSQL database", "--projections inline"],
        ),
        (
            [
                "migrate",
                "--database",
                f"postgresql://postgres@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/x",
            ],
            ["cannot reach PostgreSQL at 127.0.0.1:", ",127.0.0.1:", "is it running"],
        ),
    ],
    ids=[
        "unsupported-url",
        "two-slashes",
        "no-folder",
        "postgres-unreachable",
        "unknown-role",
        "no-database",
        "demo-without-server",
        "bad-port-in-host-list",
        "bad-target-session-attrs",
        "unknown-libpq-parameter",
        "bad-sslmode",
        "import-projections-process-on-sqlite",
        "no-host-of-the-list-answers",
    ],
)
def test_a_database_or_server_that_cannot_be_had_is_one_line(
    args: list[str], expected: list[str], tmp_path: Path
) -> None:
    result = run_ledger(*args, cwd=tmp_path)
    one_clear_line(result, *expected)
    assert list(tmp_path.iterdir()) == []  # nothing made on the way (no edger.db)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["serve", "--processes", "0"], "--processes: must be at least 1, got 0"),
        (["serve", "--processes", "-3"], "--processes: must be at least 1, got -3"),
        (["serve", "--cache-accounts", "0"], "--cache-accounts: must be at least 1, got 0"),
        (["import", "--program", "p", "--batch-size", "0", "x.csv"], "--batch-size: must be"),
        (
            ["export", "events", "--since-position", "-1"],
            "--since-position: must be at least 0, got -1",
        ),
        (
            ["export", "events", "--since-position", "99999999999999999999"],
            "--since-position: must be at most 9223372036854775807",
        ),
        (["serve", "--grace", "-1"], "--grace: must be 0 or more seconds"),
        (
            [*_PROGRAM_CREATE, "--point-value-minor", "999999999999999999999999999"],
            "--point-value-minor: must be 0..9223372036854775807",
        ),
        ([*_PROGRAM_CREATE, "--tier-window-days", "0"], "--tier-window-days: must be 1.."),
        (
            [*_PROGRAM_CREATE, "--expected-redemption-rate-ppm", "0"],
            "--expected-redemption-rate-ppm: must be 1..1000000, got 0",
        ),
        (["audit"], "required: {verify,replay,journal,checkpoint}"),
        (["export"], "required: {events}"),
        (["program"], "required: {create,show,update}"),
        (
            [],
            "required: {serve,project,migrate,program,report,reconcile,credentials,relay,"
            "import,audit,export,demo}",
        ),
    ],
)
def test_a_flag_out_of_range_or_a_missing_subcommand_says_what_is_wanted(
    args: list[str], expected: str
) -> None:
    result = run_ledger(*args)
    stderr: str = result.stderr
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert expected in stderr, stderr
    # One line (argparse's own usage block, up to a dozen lines, is not printed before it).
    [error] = stderr.splitlines()
    assert error.startswith("ledger"), stderr
    assert error.endswith("--help` lists the options)"), stderr


@pytest.mark.parametrize(
    "command",
    [
        ["serve"],
        ["migrate"],
        ["demo"],
        ["audit", "replay"],
        ["audit", "checkpoint"],
        ["export", "events"],
        ["program", "create"],
    ],
)
def test_every_command_describes_itself_in_its_help(command: list[str]) -> None:
    result = run_ledger(*command, "--help")
    assert result.returncode == 0
    usage, _, rest = result.stdout.partition("\n\n")
    assert usage.startswith("usage: ledger")
    description = rest.split("\n\n", 1)[0].strip()
    assert description, rest
    assert not description.startswith(("options:", "positional")), rest


def test_the_cache_default_the_parser_shows_is_the_servers(tmp_path: Path) -> None:
    from ledger import cli, runtime
    from ledger.api.server import ServeOptions, open_tally

    assert cli.DEFAULT_CACHE_ACCOUNTS == runtime.DEFAULT_CACHE_ACCOUNTS
    assert ServeOptions().cache_accounts == runtime.DEFAULT_CACHE_ACCOUNTS
    args = cli._parser().parse_args(
        ["serve", "--cache-accounts", "1000", "--database", f"sqlite:///{tmp_path / 'l.db'}"]
    )
    options = cli._serve_options(args)
    assert options.cache_accounts == 1000
    tally = open_tally(options)  # the writer the server would run
    try:
        assert [cache.capacity for cache in tally.writer.caches] == [1000]
    finally:
        tally.close()


@pytest.mark.parametrize(
    ("variable", "value", "args", "expected"),
    [
        ("TALLY_SHUTDOWN_GRACE", "abc", ("serve",), "'abc' is not a number of seconds"),
        ("TALLY_SHUTDOWN_GRACE", "-5", ("serve",), "must be 0 or more seconds"),
        ("TALLY_LOG_LEVEL", "bogus", ("migrate",), "TALLY_LOG_LEVEL='bogus' is no log level"),
        ("TALLY_WRITERS", "abc", _PROGRAM_CREATE, "TALLY_WRITERS='abc'"),
        ("TALLY_WRITERS", "0", _PROGRAM_CREATE, "give a whole number of at least 1"),
    ],
)
def test_a_bad_setting_in_the_environment_is_one_line_from_the_command_that_reads_it(
    variable: str,
    value: str,
    args: tuple[str, ...],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(variable, value)
    result = run_ledger(
        *args, "--database", f"sqlite:///{tmp_path}/l.db",
        *(("--listen", f"127.0.0.1:{free_port()}") if args == ("serve",) else ()),
    )  # fmt: skip
    one_clear_line(result, expected)
    # Other commands, and help, are not held up by a setting they do not read.
    if variable == "TALLY_SHUTDOWN_GRACE":
        assert run_ledger("--help").returncode == 0


def test_the_log_level_may_be_given_in_lower_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLY_LOG_LEVEL", "debug")
    result = run_ledger("migrate", "--database", f"sqlite:///{tmp_path}/l.db")
    assert result.returncode == 0, result.stderr


def test_a_sqlite_path_that_is_a_folder_or_another_file_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "adir"
    folder.mkdir()
    other = tmp_path / "notes.db"
    other.write_bytes(b"these are notes, not a database\n")
    for path, expected in ((folder, "is a folder, not a SQLite database file"),
                           (other, "is not a SQLite database")):  # fmt: skip
        for args in (("migrate",), ("program", "show", "--program", "p")):
            result = run_ledger(*args, "--database", f"sqlite:///{path}")
            one_clear_line(result, expected)
    assert other.read_bytes() == b"these are notes, not a database\n"  # left as it was


def test_an_expiry_forecast_near_the_last_day_ends_there(tmp_path: Path) -> None:
    """Its default end (since + 366 days) would be past datetime's last year."""
    url = f"sqlite:///{tmp_path}/l.db"
    assert run_ledger(*_PROGRAM_CREATE, "--database", url).returncode == 0
    result = run_ledger(
        "report", "expiry-forecast", "--database", url, "--program", "p",
        "--since", "9999-06-01T00:00:00+00:00",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "0 points of 0 members" in result.stdout, result.stdout


def test_an_expiry_too_long_to_send_is_one_line(tmp_path: Path) -> None:
    result = run_ledger(
        *_PROGRAM_CREATE, "--database", f"sqlite:///{tmp_path}/l.db",
        "--expiry", "rolling-days:99999999999999999999",
    )  # fmt: skip
    one_clear_line(result, "--expiry", "N is out of range")


def test_output_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/l.db"
    created = run_ledger(*_PROGRAM_CREATE, "--database", url)
    assert created.returncode == 0, created.stderr
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [LEDGER, "export", "events", "--database", url],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    one_clear_line(result, "ledger export", "No space left on device")


def test_an_import_file_of_no_known_extension_asks_for_its_format(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/l.db"
    assert run_ledger(*_PROGRAM_CREATE, "--database", url).returncode == 0
    records = tmp_path / "members.txt"
    records.write_text('{"type": "member", "member_id": "m1"}\n')
    result = run_ledger("import", "--database", url, "--program", "p", str(records))
    one_clear_line(result, "cannot tell its format from '.txt'", "give --format")
    again = run_ledger(
        "import", "--database", url, "--program", "p", "--format", "jsonl", "--no-progress",
        str(records),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "1 applied" in again.stdout, again.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_migration_the_database_refuses_is_one_line_and_applies_nothing(
    backend: str, tmp_path: Path
) -> None:
    """TALLY_MIGRATIONS_DIR (for testing migrations) with one that is not SQL. Run as plain
    subprocesses: the setting is read when ledger's modules are imported (decision 32)."""
    folder = tmp_path / "migrations"
    shutil.copytree(Path(__file__).resolve().parents[1] / "ledger" / "migrations", folder)
    (folder / backend / "0999_broken.sql").write_text("THIS IS NOT SQL;\n")

    def migrate(url: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LEDGER, "migrate", "--database", url], env={**os.environ, **env},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    with ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path}/l.db"
            if backend == "sqlite"
            else stack.enter_context(scratch_postgres())
        )
        result = migrate(url, TALLY_MIGRATIONS_DIR=str(folder))
        one_clear_line(
            result, "ledger migrate", "migration 0999_broken failed", "nothing was applied"
        )
        done = migrate(url)  # the bundled ones, every one of them, as nothing was applied
        assert done.returncode == 0, done.stderr
        bundled = len(list((folder / backend).glob("*.sql"))) - 1
        assert f"{bundled} migration(s) applied" in done.stdout, done.stdout
