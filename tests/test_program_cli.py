"""`ledger program create|show|update`: a programme from the command line, checked as the
API checks it, on both backends (the real `ledger` command)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_operator_errors import one_clear_line
from tests.test_server import fresh_database, run_ledger


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def show(database: str, program: str) -> dict[str, object]:
    result = run_ledger(
        "program", "show", "--database", database, "--program", program, "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    shown: dict[str, object] = json.loads(result.stdout)
    return shown


def test_create_show_update(database: str) -> None:
    created = run_ledger(
        "program",
        "create",
        "--database",
        database,
        "--program",
        "coffee",
        "--name",
        "Coffee Club",
        "--currency",
        "EUR",
        "--expiry",
        "rolling-days:365",
        "--tier",
        "SILVER:Silver:100",
        "--tier",
        "GOLD:Gold:500",
    )
    assert created.returncode == 0, created.stderr
    assert "Coffee Club" in created.stdout

    program = show(database, "coffee")
    assert program["expiry_policy"] == {"kind": "EXPIRY_KIND_ROLLING_DAYS", "days": 365}
    assert [t["code"] for t in program["tiers"]] == ["SILVER", "GOLD"]  # type: ignore[attr-defined]
    assert program["tier_window_days"] == 365

    updated = run_ledger(
        "program",
        "update",
        "--database",
        database,
        "--program",
        "coffee",
        "--tier-window-days",
        "30",
        "--name",
        "Coffee & Cake",
    )
    assert updated.returncode == 0, updated.stderr
    program = show(database, "coffee")
    assert (program["display_name"], program["tier_window_days"]) == ("Coffee & Cake", 30)
    assert [t["code"] for t in program["tiers"]] == ["SILVER", "GOLD"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["create", "--program", "p", "--name", "P", "--currency", "euro"], "currency: must be"),
        (
            ["create", "--program", "p", "--name", "P", "--currency", "EUR", "--tier", "GOLD"],
            "give CODE:NAME:THRESHOLD",
        ),
        (
            ["create", "--program", "p", "--name", "P", "--currency", "EUR", "--expiry", "soon"],
            "give never, rolling-days:N",
        ),
        (["show", "--program", "nosuch"], "program nosuch does not exist"),
        (["update", "--program", "nosuch", "--name", "X"], "program nosuch does not exist"),
    ],
)
def test_mistakes_are_one_line(database: str, args: list[str], expected: str) -> None:
    one_clear_line(run_ledger("program", *args[:1], "--database", database, *args[1:]), expected)


def test_a_programme_that_exists_is_not_made_twice(database: str) -> None:
    args = ["--database", database, "--program", "twice", "--name", "T", "--currency", "EUR"]
    assert run_ledger("program", "create", *args).returncode == 0
    one_clear_line(run_ledger("program", "create", *args), "program twice exists")
