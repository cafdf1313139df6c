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


# ---------------------------------------------------------------------- stored value


def test_the_stored_value_settings(database: str) -> None:
    created = run_ledger(
        "program",
        "create",
        "--database",
        database,
        "--program",
        "card",
        "--name",
        "Card",
        "--currency",
        "CNY",
        "--top-up-bonus",
        "50000:0:50000",  # 5% from 500.00
        "--top-up-bonus",
        "10000:1500",  # 充100送15
        "--conversion",
        "10:100",
        "--cash-out-policy",
        "deduct-spent-bonus",
        "--split",
        "cash-first",
    )
    assert created.returncode == 0, created.stderr

    program = show(database, "card")
    assert program["top_up_bonus"] == [
        {"min_cash_minor": "10000", "bonus_minor": "1500"},
        {"min_cash_minor": "50000", "bonus_ppm": "50000"},
    ]
    assert program["points_conversion"] == {"points": "10", "value_minor": "100"}
    assert program["cash_out_policy"] == "CASH_OUT_POLICY_DEDUCT_SPENT_BONUS"
    assert program["stored_value_split"] == "STORED_VALUE_SPLIT_CASH_FIRST"

    # Another schedule replaces the old one; the others stay.
    updated = run_ledger(
        "program",
        "update",
        "--database",
        database,
        "--program",
        "card",
        "--top-up-bonus",
        "20000:3000:10000",
        "--stored-value-split",
        "bonus-first",
    )
    assert updated.returncode == 0, updated.stderr
    program = show(database, "card")
    assert program["top_up_bonus"] == [
        {"min_cash_minor": "20000", "bonus_minor": "3000", "bonus_ppm": "10000"}
    ]
    assert program["points_conversion"] == {"points": "10", "value_minor": "100"}
    assert program["stored_value_split"] == "STORED_VALUE_SPLIT_BONUS_FIRST"
    assert program["cash_out_policy"] == "CASH_OUT_POLICY_DEDUCT_SPENT_BONUS"

    updated = run_ledger(
        "program",
        "update",
        "--database",
        database,
        "--program",
        "card",
        "--conversion",
        "5:7",
        "--cash-out-policy",
        "forfeit-remaining-bonus",
    )
    assert updated.returncode == 0, updated.stderr
    program = show(database, "card")
    assert program["points_conversion"] == {"points": "5", "value_minor": "7"}
    assert program["cash_out_policy"] == "CASH_OUT_POLICY_FORFEIT_REMAINING_BONUS"
    assert len(program["top_up_bonus"]) == 1  # type: ignore[arg-type]

    cleared = run_ledger(
        "program",
        "update",
        "--database",
        database,
        "--program",
        "card",
        "--no-top-up-bonus",
        "--no-conversion",
    )
    assert cleared.returncode == 0, cleared.stderr
    program = show(database, "card")
    assert "top_up_bonus" not in program
    assert "points_conversion" not in program
    assert program["version"] == "4"


CREATE = ["create", "--program", "p", "--name", "P", "--currency", "EUR"]
UPDATE = ["update", "--program", "p"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([*CREATE, "--top-up-bonus", "1000"], "--top-up-bonus '1000': give MIN_CASH:BONUS"),
        ([*CREATE, "--top-up-bonus", "1000:1:2:3"], "give MIN_CASH:BONUS or MIN_CASH:BONUS:PPM"),
        ([*CREATE, "--top-up-bonus", "1000:ten"], "--top-up-bonus '1000:ten': give"),
        ([*CREATE, "--top-up-bonus", "1000:"], "--top-up-bonus '1000:': give"),
        ([*CREATE, "--top-up-bonus", f"{2**63}:1"], f"{2**63} is out of range"),
        ([*CREATE, "--top-up-bonus", "0:100"], "top_up_bonus[0].min_cash_minor: must be greater"),
        ([*CREATE, "--top-up-bonus", "10:-1"], "top_up_bonus[0].bonus_minor: must not be negative"),
        ([*CREATE, "--top-up-bonus", "10:0:100000001"], "top_up_bonus[0].bonus_ppm: must be"),
        (
            [*CREATE, "--top-up-bonus", "10:1", "--top-up-bonus", "10:2"],
            "top_up_bonus: each step's min_cash_minor must be distinct",
        ),
        ([*CREATE, "--conversion", "10"], "--conversion '10': give POINTS:VALUE_MINOR"),
        ([*CREATE, "--conversion", "ten:100"], "--conversion 'ten:100': give"),
        ([*CREATE, "--conversion", f"1:{-(2**63) - 1}"], "is out of range"),
        ([*CREATE, "--conversion", "0:100"], "points_conversion.points: must be greater than 0"),
        ([*CREATE, "--conversion", "10:0"], "points_conversion.value_minor: must be greater"),
        ([*CREATE, "--cash-out-policy", "keep"], "--cash-out-policy 'keep': give one of"),
        ([*CREATE, "--split", "evenly"], "--stored-value-split 'evenly': give one of"),
        ([*CREATE, "--tier", f"GOLD:Gold:{2**63}"], "is out of range"),
        ([*UPDATE, "--top-up-bonus", "10:1", "--no-top-up-bonus"], "not both"),
        ([*UPDATE, "--conversion", "10:100", "--no-conversion"], "not both"),
        ([*UPDATE, "--top-up-bonus", "x"], "--top-up-bonus 'x': give"),
        ([*UPDATE, "--cash-out-policy", "DEDUCT_SPENT_BONUS"], "give one of"),
        ([*UPDATE, "--conversion=-1:5"], "points_conversion.points: must be greater than 0"),
    ],
)
def test_stored_value_mistakes_are_one_line_and_change_nothing(
    database: str, args: list[str], expected: str
) -> None:
    if args[0] == "update":
        made = run_ledger(*["program", *CREATE[:1], "--database", database, *CREATE[1:]])
        assert made.returncode == 0, made.stderr
        before = show(database, "p")

    result = run_ledger("program", *args[:1], "--database", database, *args[1:])

    one_clear_line(result, expected)
    assert result.returncode == 2
    if args[0] == "update":
        assert show(database, "p") == before
    else:
        missing = run_ledger("program", "show", "--database", database, "--program", "p")
        one_clear_line(missing, "program p does not exist")


# ---------------------------------------------------------------------- insight settings


def test_the_insight_settings(database: str) -> None:
    created = run_ledger(
        *["program", "create", "--database", database, "--program", "shop", "--name", "Shop"],
        *["--currency", "CNY", "--insight", "lost_after_days=180"],
        *["--insight", "new_member_days=14"],
    )
    assert created.returncode == 0, created.stderr
    program = show(database, "shop")
    # The two given; the others their defaults (InsightSettings in ledger/domain/insights.py).
    assert program["insight_settings"] == {
        "frequency_window_days": 365,
        "new_member_days": 14,
        "new_member_max_purchases": 1,
        "default_cycle_days": 30,
        "min_cycle_days": 7,
        "at_risk_after_cycles_pct": 150,
        "dormant_after_cycles_pct": 300,
        "lost_after_days": 180,
    }

    # An update replaces the whole set: new_member_days is back to its default.
    updated = run_ledger(
        *["program", "update", "--database", database, "--program", "shop"],
        *["--insight", "dormant_after_cycles_pct=400"],
    )
    assert updated.returncode == 0, updated.stderr
    program = show(database, "shop")
    settings = program["insight_settings"]
    assert isinstance(settings, dict)
    assert (settings["dormant_after_cycles_pct"], settings["new_member_days"]) == (400, 30)
    assert settings["lost_after_days"] == 365

    # An update without --insight leaves them as they are.
    renamed = run_ledger(
        *["program", "update", "--database", database, "--program", "shop", "--name", "Shop 2"]
    )
    assert renamed.returncode == 0, renamed.stderr
    assert show(database, "shop")["insight_settings"] == settings


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([*CREATE, "--insight", "lost=3"], "--insight 'lost=3': give NAME=VALUE, NAME one of"),
        ([*CREATE, "--insight", "lost_after_days"], "VALUE must be a whole number"),
        ([*CREATE, "--insight", "lost_after_days=a year"], "VALUE must be a whole number"),
        ([*CREATE, "--insight", f"lost_after_days={2**31}"], f"{2**31} is out of range"),
        (
            [*CREATE, "--insight", "lost_after_days=1", "--insight", "lost_after_days=2"],
            "--insight lost_after_days is given twice",
        ),
        (
            [*CREATE, "--insight", "lost_after_days=-5"],
            "insight_settings.lost_after_days: must be from 1 to 36,600",
        ),
        (
            [*UPDATE, "--insight", "min_cycle_days=31"],
            "insight_settings.min_cycle_days: must not exceed default_cycle_days",
        ),
    ],
)
def test_insight_setting_mistakes_are_one_line_and_change_nothing(
    database: str, args: list[str], expected: str
) -> None:
    if args[0] == "update":
        made = run_ledger(*["program", *CREATE[:1], "--database", database, *CREATE[1:]])
        assert made.returncode == 0, made.stderr
        before = show(database, "p")

    result = run_ledger("program", *args[:1], "--database", database, *args[1:])

    one_clear_line(result, expected)
    assert result.returncode == 2
    if args[0] == "update":
        assert show(database, "p") == before
