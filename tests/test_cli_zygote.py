"""The forked `ledger` commands of tests/ledger_cli.py answer exactly as the installed script:
the command-line tests rely on it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import ledger_cli


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["nonsense"],
        ["program", "show", "--database", "sqlite:///{folder}/ledger.db", "--program", "p"],
        ["program", "create", "--database", "sqlite:///{folder}/ledger.db", "--program", "p"],
        ["migrate", "--database", "sqlite:///{folder}/ledger.db"],
    ],
)
def test_a_forked_command_answers_as_the_script(tmp_path: Path, args: list[str]) -> None:
    # Each in a folder of its own: `migrate` changes what the other would find.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    (tmp_path / "script").mkdir()
    script = subprocess.run(
        [ledger_cli.LEDGER, *[a.format(folder=tmp_path / "script") for a in args]],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path / "script",
        timeout=60,
        check=False,
    )
    (tmp_path / "forked").mkdir()
    forked = ledger_cli.run(
        [a.format(folder=tmp_path / "forked") for a in args], env=env, cwd=tmp_path / "forked"
    )
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        script.returncode,
        script.stdout,
        script.stderr,
    )


def test_the_environment_and_working_directory_are_the_commands(tmp_path: Path) -> None:
    # A relative SQLite path is read in the command's cwd; TALLY_DATABASE_URL is its env's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env["TALLY_DATABASE_URL"] = "sqlite:///here.db"
    done = ledger_cli.run(["migrate"], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "here.db").exists()


def test_a_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    # `serve` runs until it is stopped.
    database = f"sqlite:///{tmp_path}/ledger.db"
    with pytest.raises(subprocess.TimeoutExpired):
        ledger_cli.run(["serve", "--database", database, "--listen", "127.0.0.1:0"], timeout=3)
