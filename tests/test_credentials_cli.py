"""`ledger credentials create|list|revoke` (the real command, as a process) and the
reloading of the file a server reads (ledger/security/reloading.py, with a set clock)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from ledger.security.credentials import CredentialsError, load
from ledger.security.reloading import ReloadingCredentials
from ledger.security.tokens import token_hash
from tests import ledger_cli

ROOT = Path(__file__).resolve().parents[1]


def ledger(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    return ledger_cli.run(["credentials", *args], env=env, cwd=ROOT)


def one_line_refusal(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_create_prints_the_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    made = ledger(
        "create",
        "--credentials",
        str(path),
        "--name",
        "till-7",
        "--roles",
        "writer,reader",
        "--programs",
        "coffee,tea",
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.splitlines()[-1]
    assert token.startswith("tally_")
    assert len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text
    entry = json.loads(text)["credentials"][0]
    assert entry["token_sha256"] == token_hash(token)
    assert entry["roles"] == ["reader", "writer"]
    assert entry["programs"] == ["coffee", "tea"]
    assert not entry["all_programs"]
    again = ledger(
        "create",
        "--credentials",
        str(path),
        "--name",
        "auditor",
        "--roles",
        "auditor",
        "--all-programs",
    )
    assert again.stdout.splitlines()[-1] != token
    listed = ledger("list", "--credentials", str(path))
    assert listed.returncode == 0
    assert "till-7" in listed.stdout
    assert "coffee,tea" in listed.stdout
    assert "auditor" in listed.stdout
    assert token not in listed.stdout
    assert token_hash(token) not in listed.stdout
    revoked = ledger("revoke", "--credentials", str(path), "--name", "till-7")
    assert revoked.returncode == 0
    assert [c.name for c in load(str(path)).credentials] == ["auditor"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["create", "--name", "x", "--roles", "writer,boss", "--programs", "p"],
            "unknown role 'boss'",
        ),
        (
            ["create", "--name", "x", "--roles", "reader", "--programs", "p", "--all-programs"],
            "not both",
        ),
        (["create", "--name", "x", "--roles", "reader"], "give --programs P1,P2 or --all-programs"),
        (
            ["create", "--name", "x", "--roles", "reader", "--programs", "bad id"],
            "not a programme id",
        ),
        (["create", "--name", "first", "--roles", "reader", "--all-programs"], "exists already"),
        (
            ["create", "--name", "x", "--roles", "reader", "--all-programs", "--no-token"],
            "--no-token needs",
        ),
        (["revoke", "--name", "nobody"], "no credential named nobody"),
    ],
)
def test_a_mistake_is_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    path = str(tmp_path / "credentials.json")
    assert (
        ledger(
            "create", "--credentials", path, "--name", "first", "--roles", "admin", "--all-programs"
        ).returncode
        == 0
    )
    before = Path(path).read_text()
    one_line_refusal(ledger(*args[:1], "--credentials", path, *args[1:]), expected)
    assert Path(path).read_text() == before  # nothing changed


@pytest.mark.parametrize("action", [["list"], ["revoke", "--name", "x"]])
def test_a_missing_file_is_one_line_and_exit_2(tmp_path: Path, action: list[str]) -> None:
    missing = str(tmp_path / "none.json")
    one_line_refusal(
        ledger(action[0], "--credentials", missing, *action[1:]), "no credentials file"
    )


def test_no_file_named_is_one_line_and_exit_2() -> None:
    one_line_refusal(ledger("list"), "give --credentials FILE")


# ---------------------------------------------------------------------- reloading


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_changed_file_is_reloaded_and_a_broken_one_keeps_the_last_good_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "credentials.json")
    for name in ("one", "two"):
        assert (
            ledger(
                "create",
                "--credentials",
                path,
                "--name",
                name,
                "--roles",
                "reader",
                "--all-programs",
            ).returncode
            == 0
        )
    clock = Clock()
    store = ReloadingCredentials(path, clock=clock)
    assert {c.name for c in store.current().credentials} == {"one", "two"}

    assert ledger("revoke", "--credentials", path, "--name", "two").returncode == 0
    assert {c.name for c in store.current().credentials} == {"one", "two"}  # not looked yet
    clock.now += 1.0
    assert {c.name for c in store.current().credentials} == {"one"}

    Path(path).write_text('{"version": 1, "credentials": [{"name": "x"')  # a broken edit
    clock.now += 1.0
    assert {c.name for c in store.current().credentials} == {"one"}
    assert "not JSON" in caplog.text
    assert "keeping the 1 credentials" in caplog.text

    os.unlink(path)  # gone
    clock.now += 1.0
    assert {c.name for c in store.current().credentials} == {"one"}

    assert (
        ledger(
            "create",
            "--credentials",
            path,
            "--name",
            "three",
            "--roles",
            "reader",
            "--all-programs",
        ).returncode
        == 0
    )
    clock.now += 1.0
    assert {c.name for c in store.current().credentials} == {"three"}


def test_a_bad_file_at_start_is_refused() -> None:
    with pytest.raises(CredentialsError, match="no credentials file"):
        ReloadingCredentials("/nonexistent/credentials.json")
