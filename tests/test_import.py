"""`ledger import`: history through the batch path, decided as of each record's time,
invalid records set aside, and an import killed midway resumes without duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.application import commands as c
from ledger.domain.ids import request_id_key
from ledger.domain.program import (
    CashOutPolicy,
    ExpiryKind,
    ExpiryPolicy,
    ProgramSettings,
    TopUpBonusStep,
)
from ledger.importer import Importer
from ledger.runtime import Tally
from projections.points import micros
from tests.support import open_tally, scratch_postgres

LEDGER = str(Path(sys.executable).parent / "ledger")
NOW = datetime.now(UTC).replace(microsecond=0)
THIRTY_DAYS = ExpiryPolicy(ExpiryKind.ROLLING_DAYS, days=30)


def _program(tally: Tally, expiry: ExpiryPolicy = THIRTY_DAYS) -> None:
    settings = ProgramSettings("Shop", "EUR", expiry_policy=expiry)
    tally.app.create_program(c.CreateProgram(program_id="p", request_id="p", settings=settings))


def _write(path: Path, records: list[dict[str, Any] | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def _at(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat()


@pytest.fixture(params=["sqlite", "postgres"])
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    with open_tally(request.param) as t:
        _program(t)
        t.start(sweep=False)
        yield t


def test_history_is_applied_as_it_stood_at_each_record(tally: Tally, tmp_path: Path) -> None:
    path = _write(
        tmp_path / "history.jsonl",
        [
            {"type": "member", "member_id": "ann", "occurred_at": _at(100)},
            {"type": "earn", "member_id": "ann", "points": 500, "occurred_at": _at(95),
             "store_id": "s1", "order_ref": "o1"},
            # 10 days after the earn: its 30-day lot was still valid then (not now).
            {"type": "redeem", "member_id": "ann", "points": 200, "occurred_at": _at(85),
             "store_id": "s2"},
            {"type": "earn", "member_id": "ann", "points": 70, "occurred_at": _at(1),
             "store_id": "s1", "request_id": "till-7-4411"},
            {"type": "adjust", "member_id": "ann", "points": -20, "reason": "goodwill fix",
             "operator_id": "ops-1", "occurred_at": _at(1)},
            {"type": "reverse", "member_id": "ann", "reverses": "till-7-4411", "points": 10,
             "store_id": "s1", "occurred_at": _at(0.5)},
        ],
    )  # fmt: skip

    report = Importer(tally, "p", path, progress=False).run()

    assert (report.applied, report.rejected, report.replayed) == (6, 0, 0)
    account = tally.app.get_account("p", "ann")
    # 500 - 200 redeemed; the remaining 300 expired 65 days ago (at the next command);
    # 70 - 20 - 10 left.
    assert account.available == 40
    assert account.enrolled_at == NOW - timedelta(days=100)
    tally.points.wait_for(tally.app.recorder.max_notification_id() or 0, timeout=30)
    rows = tally.queries.transactions("p", "ann", 50, 0, None, None).rows
    assert "EXPIRE" in [row.kind for row in rows]
    earned = [row.occurred_at for row in rows if row.kind == "EARN"]
    assert earned == [micros(NOW - timedelta(days=95)), micros(NOW - timedelta(days=1))]


def test_bad_and_refused_records_are_set_aside_and_the_rest_applied(
    tally: Tally, tmp_path: Path
) -> None:
    path = _write(
        tmp_path / "mixed.jsonl",
        [
            {"type": "member", "member_id": "bob"},
            {"type": "redeem", "member_id": "bob", "points": 5, "store_id": "s"},  # refused
            "this is not json",
            {"type": "earn", "member_id": "bob", "points": 0, "store_id": "s"},  # invalid
            {"type": "earn", "member_id": "nobody", "points": 5, "store_id": "s"},  # unknown
            {"type": "top_up", "member_id": "bob", "amount_minor": 100},  # no store, no cash
            {"type": "earn", "member_id": "bob", "points": 9, "store_id": "s",
             "occurred_at": "2024-01-01T00:00:00"},  # no UTC offset
            {"type": "earn", "member_id": "bob", "points": 9, "store_id": "s"},
        ],
    )  # fmt: skip

    report = Importer(tally, "p", path, progress=False).run()

    assert (report.applied, report.rejected) == (2, 6)
    rejects = sorted(
        (json.loads(line) for line in path.with_name("mixed.jsonl.rejects.jsonl").open()),
        key=lambda r: r["line"],
    )
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (2, "INSUFFICIENT_POINTS"),
        (3, "INVALID_ARGUMENT"),
        (4, "INVALID_ARGUMENT"),
        (5, "MEMBER_NOT_FOUND"),
        (6, "INVALID_ARGUMENT"),
        (7, "INVALID_ARGUMENT"),
    ]
    assert "points: must be greater than 0" in rejects[2]["message"]
    assert "UTC offset" in rejects[5]["message"]
    assert tally.app.get_account("p", "bob").available == 9


def test_lines_that_are_not_utf8_or_numbers_beyond_any_integer_are_set_aside(
    tally: Tally, tmp_path: Path
) -> None:
    """1e400 is a JSON number that Python reads as infinity, and a line of other bytes than
    UTF-8 is no text at all: each is a rejected record, and the rest of the file goes on."""
    path = tmp_path / "odd.jsonl"
    lines = [
        json.dumps({"type": "member", "member_id": "cy"}).encode(),
        b'{"type": "earn", "member_id": "cy", "points": 1e400, "store_id": "s"}',
        b'{"type": "earn", "member_id": "cy", "points": NaN, "store_id": "s"}',
        b"\xac\xed\x00\x05 not text",
        json.dumps({"type": "earn", "member_id": "cy", "points": 7, "store_id": "s"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")

    report = Importer(tally, "p", path, progress=False).run()

    assert (report.applied, report.rejected) == (2, 3)
    rejects = [json.loads(line) for line in path.with_name("odd.jsonl.rejects.jsonl").open()]
    assert sorted((r["line"], r["message"]) for r in rejects) == [
        (2, "points: must be an integer"),
        (3, "points: must be an integer"),
        (4, "not UTF-8 text"),
    ]
    assert tally.app.get_account("p", "cy").available == 7


def test_a_csv_file_with_a_byte_order_mark_is_read_as_utf8(tally: Tally, tmp_path: Path) -> None:
    """Spreadsheets save UTF-8 with a byte-order mark before the header."""
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbftype,member_id\r\nmember,dee\r\n")

    report = Importer(tally, "p", path, progress=False).run()

    assert (report.applied, report.rejected) == (1, 0)


def test_records_the_api_would_refuse_are_refused_with_its_field_names(
    tally: Tally, tmp_path: Path
) -> None:
    """The importer builds commands with the API's builders: a till's earn, redeem or
    reversal names its store, an adjustment stays within 10^15, times within 1970..9999."""
    path = _write(
        tmp_path / "rules.jsonl",
        [
            {"type": "member", "member_id": "eve", "occurred_at": _at(10)},
            {"type": "earn", "member_id": "eve", "points": 50, "request_id": "e1"},  # no store
            {"type": "earn", "member_id": "eve", "points": 50, "store_id": "s",
             "request_id": "e2", "occurred_at": _at(9)},
            {"type": "redeem", "member_id": "eve", "points": 5},  # no store
            {"type": "reverse", "member_id": "eve", "reverses": "e2"},  # no store
            {"type": "adjust", "member_id": "eve", "points": 10**15 + 1, "reason": "fix",
             "operator_id": "ops"},
            {"type": "earn", "member_id": "eve", "points": 5, "store_id": "s",
             "occurred_at": "1969-12-31T23:59:59+00:00"},
            {"type": "reverse", "member_id": "eve", "reverses": "e2", "store_id": "s",
             "amount_minor": 100},  # money of a points transaction: refused by the account
            {"type": "member", "member_id": "fay", "referrer_member_id": "fay"},
            {"type": "earn", "member_id": "eve", "points": 5, "store_id": "s",
             "occurred_at": (NOW + timedelta(days=1)).isoformat()},
            {"type": "adjust", "member_id": "eve", "points": -(10**15), "reason": "fix",
             "operator_id": "ops"},  # at the bound: valid, so refused by the account
        ],
    )  # fmt: skip

    report = Importer(tally, "p", path, progress=False).run()

    assert (report.applied, report.rejected) == (2, 9)
    rejects = {
        r["line"]: r for r in map(json.loads, path.with_name("rules.jsonl.rejects.jsonl").open())
    }
    invalid = {
        line: r["message"] for line, r in rejects.items() if r["reason"] == "INVALID_ARGUMENT"
    }
    assert invalid == {
        2: "store_id: required: 1..64 characters of [A-Za-z0-9._:-]",
        4: "store_id: required: 1..64 characters of [A-Za-z0-9._:-]",
        5: "store_id: required: 1..64 characters of [A-Za-z0-9._:-]",
        6: "points: must be between -10^15 and 10^15",
        7: "occurred_at: must be between 1970-01-01 and 9999-12-31",
        9: "referrer_member_id: a member cannot refer themselves",
        10: "occurred_at: must not be more than 5 minutes in the future",
    }
    assert rejects[8]["reason"] == "REVERSAL_IN_WRONG_UNIT"
    assert rejects[11]["reason"] == "INSUFFICIENT_POINTS"
    assert tally.app.get_account("p", "eve").available == 50


def test_csv_records_import_like_json_lines(tally: Tally, tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_text(
        "type,member_id,points,store_id,occurred_at,purchase_minor\n"
        f"member,cat,,,{_at(3)},\n"
        f"earn,cat,120,s1,{_at(2)},1200\n"
        f"redeem,cat,20,s1,{_at(1)},\n"
    )

    report = Importer(tally, "p", path, progress=False).run()

    assert (report.applied, report.rejected) == (3, 0)
    assert tally.app.get_account("p", "cat").available == 100


# ---------------------------------------------------------------------- stored value


def _card_program(tally: Tally) -> None:
    settings = ProgramSettings(
        "Card",
        "CNY",
        top_up_bonus=(TopUpBonusStep(min_cash_minor=1000, bonus_minor=150),),
        cash_out_policy=CashOutPolicy.DEDUCT_SPENT_BONUS,
    )
    tally.app.create_program(c.CreateProgram(program_id="sv", request_id="sv", settings=settings))


def test_top_ups_spends_refunds_and_cash_outs_are_imported(tally: Tally, tmp_path: Path) -> None:
    _card_program(tally)
    path = _write(
        tmp_path / "card.jsonl",
        [
            {"type": "member", "member_id": "kim", "occurred_at": _at(10)},
            {"type": "top_up", "member_id": "kim", "cash_minor": 1000, "bonus_minor": 200,
             "payment_ref": "pay-1", "store_id": "s1", "occurred_at": _at(9), "request_id": "t-1"},
            # No bonus named: the schedule's 150.
            {"type": "top_up", "member_id": "kim", "cash_minor": 1000, "store_id": "s2",
             "occurred_at": _at(8), "request_id": "t-2"},
            # Card 2000 + 350. PROPORTIONAL: cash 1200 * 2000 / 2350 = 1021.3 -> 1021, bonus
            # 179; cash from t-1 (1000) then t-2 (21), bonus from t-1.
            {"type": "spend", "member_id": "kim", "amount_minor": 1200, "order_ref": "o-1",
             "store_id": "s3", "occurred_at": _at(7), "request_id": "sp-1"},
            # Refund 235: cash 1021 * 235 / 1200 = 199.9 -> 199, bonus 36; cash back to t-2
            # (21, drawn last) then t-1 (178), bonus to t-1.
            {"type": "reverse", "member_id": "kim", "reverses": "sp-1", "amount_minor": 235,
             "store_id": "s1", "occurred_at": _at(6)},
            # Cash-out of t-1: 178 cash on the card, 179 - 36 = 143 of its bonus spent, so
            # 35 handed back; its 200 - 179 + 36 = 57 bonus left lapses.
            {"type": "reverse", "member_id": "kim", "reverses": "t-1", "amount_minor": 0,
             "store_id": "s1", "occurred_at": _at(5), "request_id": "co-1"},
            # 1000 + 150 left: refused.
            {"type": "spend", "member_id": "kim", "amount_minor": 1151, "store_id": "s3"},
            {"type": "reverse", "member_id": "kim", "reverses": "sp-1", "points": 5,
             "store_id": "s1"},  # a spend is reversed by money
        ],
    )  # fmt: skip

    report = Importer(tally, "sv", path, progress=False).run()

    assert (report.applied, report.rejected) == (6, 2)
    rejects = {
        r["line"]: r for r in map(json.loads, path.with_name("card.jsonl.rejects.jsonl").open())
    }
    assert {line: r["reason"] for line, r in rejects.items()} == {
        7: "INSUFFICIENT_STORED_VALUE",
        8: "REVERSAL_IN_WRONG_UNIT",
    }
    account = tally.app.get_account("sv", "kim")
    assert (account.cash, account.bonus) == (1000, 150)
    tally.points.wait_for(tally.app.recorder.max_notification_id() or 0, timeout=30)
    rows = tally.queries.transactions("sv", "kim", 50, 0, None, None).rows
    assert [(r.kind, r.cash_delta_minor, r.bonus_delta_minor) for r in rows[1:]] == [
        ("TOP_UP", 1000, 200),
        ("TOP_UP", 1000, 150),
        ("SPEND", -1021, -179),
        ("REVERSE", 199, 36),
        ("REVERSE", -178, -57),
    ]
    assert [r.occurred_at for r in rows[1:]] == [
        micros(NOW - timedelta(days=d)) for d in (9, 8, 7, 6, 5)
    ]
    assert (rows[1].order_ref, rows[1].store_id, rows[3].order_ref) == ("pay-1", "s1", "o-1")


def test_bad_stored_value_records_are_set_aside_with_the_api_field_names(
    tally: Tally, tmp_path: Path
) -> None:
    _card_program(tally)
    path = _write(
        tmp_path / "bad-card.jsonl",
        [
            {"type": "member", "member_id": "lou"},
            {"type": "top_up", "member_id": "lou", "cash_minor": 0, "bonus_minor": -1,
             "store_id": "s1"},
            {"type": "top_up", "member_id": "lou", "cash_minor": "12x", "store_id": "s1"},
            {"type": "top_up", "member_id": "lou", "cash_minor": 10**15 + 1, "store_id": "s1",
             "payment_ref": "p" * 257},
            {"type": "top_up", "member_id": "lou", "cash_minor": 100},  # no store
            {"type": "spend", "member_id": "lou", "amount_minor": 0, "store_id": "s1"},
            {"type": "spend", "member_id": "lou", "store_id": "s1"},  # no amount
            {"type": "spend", "member_id": "lou", "amount_minor": 5, "order_ref": "o" * 257},
            {"type": "reverse", "member_id": "lou", "reverses": "x", "store_id": "s1",
             "points": 1, "amount_minor": 1},
            {"type": "reverse", "member_id": "lou", "reverses": "x", "store_id": "s1",
             "amount_minor": -1},
            {"type": "top_up", "member_id": "lou", "cash_minor": 100, "bonus_minor": "",
             "store_id": "s1"},  # an empty bonus: the schedule (none met at 100)
        ],
    )  # fmt: skip

    report = Importer(tally, "sv", path, progress=False).run()

    assert (report.applied, report.rejected) == (2, 9)
    rejects = {
        r["line"]: r for r in map(json.loads, path.with_name("bad-card.jsonl.rejects.jsonl").open())
    }
    assert {line: r["reason"] for line, r in rejects.items()} == dict.fromkeys(
        range(2, 11), "INVALID_ARGUMENT"
    )
    messages = {line: r["message"] for line, r in rejects.items()}
    # A value that is not a number is said to be so first (the builder then sees 0).
    assert messages.pop(3).startswith("cash_minor: must be an integer")
    assert messages.pop(7).startswith("amount_minor: required")
    assert messages == {
        2: "cash_minor: must be greater than 0; bonus_minor: must not be negative",
        4: "cash_minor: must be at most 1000000000000000; payment_ref: at most 256 characters",
        5: "store_id: required: 1..64 characters of [A-Za-z0-9._:-]",
        6: "amount_minor: must be greater than 0",
        8: "store_id: required: 1..64 characters of [A-Za-z0-9._:-];"
        " order_ref: at most 256 characters",
        9: "amount_minor: set points (for points) or amount_minor (for money), not both",
        10: "amount_minor: must not be negative",
    }
    account = tally.app.get_account("sv", "lou")
    assert (account.cash, account.bonus, account.version) == (100, 0, 2)


def test_csv_top_ups_and_spends_import_like_json_lines(tally: Tally, tmp_path: Path) -> None:
    _card_program(tally)
    path = tmp_path / "card.csv"
    path.write_text(
        "type,member_id,store_id,cash_minor,bonus_minor,amount_minor,payment_ref,order_ref\n"
        "member,lee,,,,,,\n"
        "top_up,lee,s1,1000,,,pay-9,\n"  # the schedule: 150
        "top_up,lee,s1,500,0,,pay-10,\n"  # 0 named: none
        # 115 * 1500 / 1650 = 104.5 -> cash 104, bonus 11.
        "spend,lee,s2,,,115,,o-1\n"
    )

    report = Importer(tally, "sv", path, progress=False).run()

    assert (report.applied, report.rejected) == (4, 0)
    account = tally.app.get_account("sv", "lee")
    assert (account.cash, account.bonus) == (1396, 139)

    path.with_name("card.csv.import-state.json").unlink()  # forget where it got to
    again = Importer(tally, "sv", path, progress=False).run()
    assert (again.applied, again.replayed, again.rejected) == (0, 4, 0)
    account = tally.app.get_account("sv", "lee")
    assert (account.cash, account.bonus, account.version) == (1396, 139, 4)


def test_running_an_import_again_applies_nothing_twice(tally: Tally, tmp_path: Path) -> None:
    records: list[dict[str, Any] | str] = [{"type": "member", "member_id": "dan"}]
    records += [{"type": "earn", "member_id": "dan", "points": 1, "store_id": "s"}] * 30
    path = _write(tmp_path / "again.jsonl", records)
    Importer(tally, "p", path, batch_size=7, progress=False).run()
    path.with_name("again.jsonl.import-state.json").unlink()  # forget where it got to

    report = Importer(tally, "p", path, batch_size=7, progress=False).run()

    assert (report.applied, report.replayed, report.rejected) == (0, 31, 0)
    assert tally.app.get_account("p", "dan").available == 30


# ---------------------------------------------------------------------- killed midway


def _history(path: Path, members: int, earns: int) -> Path:
    records: list[dict[str, Any] | str] = [
        {"type": "member", "member_id": f"m{i}"} for i in range(members)
    ]
    records += [
        {"type": "earn", "member_id": f"m{i % members}", "points": i % 7 + 1, "store_id": "s"}
        for i in range(earns)
    ]
    return _write(path, records)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        with scratch_postgres() as url:
            yield url


def test_an_import_killed_midway_resumes_without_duplicates(
    database_url: str, tmp_path: Path
) -> None:
    # 6,100 records, 13 batches of 500: the kill comes once the first is recorded, with a
    # dozen still to go (30,300 records made this the suite's slowest test and proved no more).
    members, earns = 100, 6_000
    path = _history(tmp_path / "big.jsonl", members, earns)
    state = path.with_name("big.jsonl.import-state.json")
    tally = Tally.from_url(database_url)
    _program(tally, ExpiryPolicy())
    tally.close()
    command = [LEDGER, "import", "--database", database_url, "--program", "p", str(path)]

    first = subprocess.Popen(
        [*command, "--batch-size", "500", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    done = json.loads(state.read_text())["done_through_line"]
    assert 0 < done < members + earns, "the import must be killed midway"

    # Forget part of the progress too, as a kill between commit and state write would.
    saved = json.loads(state.read_text())
    saved["done_through_line"] = max(0, done - 700)
    state.write_text(json.dumps(saved))
    resumed = subprocess.run(
        [*command, "--no-progress"], capture_output=True, text=True, timeout=600, check=False
    )

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    tally = Tally.from_url(database_url)
    try:
        expected: dict[str, int] = {}
        for i in range(earns):
            member = f"m{i % members}"
            expected[member] = expected.get(member, 0) + i % 7 + 1
        for member, points in expected.items():
            account = tally.app.get_account("p", member)
            assert account.available == points, member
            assert account.version == 1 + earns // members  # enrolled once, each earn once
    finally:
        tally.close()


# ---------------------------------------------------------------------- the state file


def _members_and_earns(path: Path, count: int) -> Path:
    records: list[dict[str, Any] | str] = [{"type": "member", "member_id": "gil"}]
    records += [{"type": "earn", "member_id": "gil", "points": 1, "store_id": "s"}] * count
    return _write(path, records)


@pytest.mark.parametrize("second", ["sqlite", "postgres"])
def test_a_file_imported_into_a_second_database_is_loaded_there_too(
    second: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The state file of the first database's import must not skip the second's."""
    path = _members_and_earns(tmp_path / "shared.jsonl", 10)
    with open_tally("sqlite") as first, open_tally(second) as other:
        for t in (first, other):
            _program(t)
            t.start(sweep=False)
        assert Importer(first, "p", path, progress=False).run().applied == 11
        capsys.readouterr()

        report = Importer(other, "p", path, progress=False).run()

        assert (report.skipped, report.applied, report.replayed) == (0, 11, 0)
        assert other.app.get_account("p", "gil").available == 10
        assert "another database" in capsys.readouterr().err
        # And back: the first database's progress was replaced, nothing is skipped there.
        report = Importer(first, "p", path, progress=False).run()
        assert (report.skipped, report.applied, report.replayed) == (0, 0, 11)
        assert first.app.get_account("p", "gil").available == 10


def test_the_state_of_another_program_is_not_used(tally: Tally, tmp_path: Path) -> None:
    settings = ProgramSettings("Other", "EUR")
    tally.app.create_program(c.CreateProgram(program_id="q", request_id="q", settings=settings))
    path = _members_and_earns(tmp_path / "programs.jsonl", 4)
    Importer(tally, "p", path, progress=False).run()

    report = Importer(tally, "q", path, progress=False).run()

    assert (report.skipped, report.applied) == (0, 5)
    assert tally.app.get_account("q", "gil").available == 4


def test_an_edited_file_is_imported_from_its_first_line(
    tally: Tally, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator fixes a rejected record and runs the import again: the fix is applied
    (not skipped as done), the rest answered from their records."""
    earn = {"type": "earn", "member_id": "hal", "store_id": "s"}
    records: list[dict[str, Any] | str] = [
        {"type": "member", "member_id": "hal"},
        {**earn, "points": 0},  # invalid: rejected
        {**earn, "points": 3},
    ]
    path = _write(tmp_path / "edited.jsonl", records)
    first = Importer(tally, "p", path, progress=False).run()
    assert (first.applied, first.rejected) == (2, 1)
    capsys.readouterr()

    records[1] = {**earn, "points": 5}
    _write(path, records)
    report = Importer(tally, "p", path, progress=False).run()

    assert (report.skipped, report.applied, report.replayed, report.rejected) == (0, 1, 2, 0)
    assert tally.app.get_account("p", "hal").available == 8
    assert "has changed" in capsys.readouterr().err


def test_a_recreated_database_at_the_same_url_is_loaded_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same URL, same file, same program, but the database was dropped and made again: the
    records the state file says are done are not there, so nothing is skipped."""
    path = _members_and_earns(tmp_path / "again.jsonl", 6)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    for attempt in range(2):
        tally = Tally.from_url(url)
        try:
            _program(tally)
            tally.start(sweep=False)
            report = Importer(tally, "p", path, progress=False).run()
            assert (report.skipped, report.applied) == (0, 7), attempt
            assert tally.app.get_account("p", "gil").available == 6
        finally:
            tally.close()
        for leftover in tmp_path.glob("ledger.db*"):
            leftover.unlink()
    assert "not in this database" in capsys.readouterr().err


def test_an_unchanged_file_into_the_same_database_still_resumes(
    tally: Tally, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _members_and_earns(tmp_path / "resume.jsonl", 9)
    Importer(tally, "p", path, progress=False).run()
    capsys.readouterr()

    report = Importer(tally, "p", path, progress=False).run()

    assert (report.skipped, report.applied, report.replayed) == (10, 0, 0)
    assert capsys.readouterr().err == ""


def test_a_state_file_of_an_older_version_is_ignored(
    tally: Tally, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _members_and_earns(tmp_path / "old.jsonl", 3)
    state = path.with_name("old.jsonl.import-state.json")
    state.write_text(json.dumps({"source": "old.jsonl", "program_id": "p", "done_through_line": 4}))

    report = Importer(tally, "p", path, progress=False).run()

    assert (report.skipped, report.applied) == (0, 4)
    assert "ledger import:" in capsys.readouterr().err


def test_the_cli_loads_a_file_into_a_second_database(tmp_path: Path) -> None:
    path = _members_and_earns(tmp_path / "cli.jsonl", 10)
    outputs = []
    for name in ("one.db", "two.db"):
        url = f"sqlite:///{tmp_path / name}"
        tally = Tally.from_url(url)
        _program(tally)
        tally.close()
        command = [LEDGER, "import", "--database", url, "--program", "p", "--no-progress"]
        done = subprocess.run(
            [*command, str(path)], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done)
        tally = Tally.from_url(url)
        try:
            assert tally.app.get_account("p", "gil").available == 10, name
        finally:
            tally.close()
    assert "11 applied" in outputs[1].stdout
    assert "0 skipped" in outputs[1].stdout
    assert "another database" in outputs[1].stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_cli_returns_with_the_read_models_loaded_and_no_projector_left(
    backend: str, tmp_path: Path
) -> None:
    """On PostgreSQL a `ledger project` child writes the read models while the import runs
    (decision 34): the import waits for it before it says done, and stops it."""
    path = _members_and_earns(tmp_path / "cli.jsonl", 300)
    with ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'ledger.db'}"
        else:
            url = stack.enter_context(scratch_postgres(durable=False))
        tally = Tally.from_url(url)
        _program(tally)
        tally.close()
        done = subprocess.run(
            [LEDGER, "import", "--database", url, "--program", "p", "--no-progress", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "301 applied" in done.stdout
        assert done.stderr == ""  # a one-shot tool logs at WARNING, its child too
        children = subprocess.run(
            ["pgrep", "-f", "ledger.project_command"], capture_output=True, text=True, check=False
        ).stdout.split()
        assert [p for p in children if url in _environ(p)] == []
        # Straight from the table, waiting for nothing: loaded means projected.
        tally = Tally.from_url(url)
        try:
            with tally.database.read() as cur:
                cur.execute(
                    "SELECT points_available FROM rm_accounts WHERE member_id = ?", ("gil",)
                )
                assert cur.fetchall() == [(300,)]
                # The planner has statistics of what was loaded (decision 36): this
                # PostgreSQL runs without autovacuum, so only the import can have made them.
                events = tally.database.dialect.events_table
                cur.execute(
                    "SELECT DISTINCT tablename FROM pg_stats WHERE tablename IN (?, ?)"
                    if backend == "postgres"
                    else "SELECT DISTINCT tbl FROM sqlite_stat1 WHERE tbl IN (?, ?)",
                    (events, "rm_accounts"),
                )
                assert sorted(row[0] for row in cur.fetchall()) == sorted([events, "rm_accounts"])
        finally:
            tally.close()


def _environ(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_text(errors="replace")
    except OSError:
        return ""  # gone meanwhile


@pytest.mark.parametrize("size", [0, -1])
def test_a_batch_size_below_one_is_refused(tally: Tally, tmp_path: Path, size: int) -> None:
    path = _members_and_earns(tmp_path / "batch.jsonl", 1)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        Importer(tally, "p", path, batch_size=size, progress=False)


def test_a_reversed_earn_carries_its_refund(tally: Tally, tmp_path: Path) -> None:
    path = _write(
        tmp_path / "refunds.csv.jsonl",
        [
            {"type": "member", "member_id": "rae", "occurred_at": _at(10)},
            {"type": "earn", "member_id": "rae", "points": 10, "purchase_minor": 900,
             "store_id": "s1", "request_id": "e1", "occurred_at": _at(9)},
            {"type": "reverse", "member_id": "rae", "reverses": "e1", "points": 2,
             "refund_purchase_minor": 250, "store_id": "s1", "occurred_at": _at(8)},
            {"type": "reverse", "member_id": "rae", "reverses": "e1", "points": 1,
             "refund_purchase_minor": "", "store_id": "s1", "occurred_at": _at(7)},
            {"type": "reverse", "member_id": "rae", "reverses": "e1", "points": 1,
             "refund_purchase_minor": -1, "store_id": "s1", "occurred_at": _at(6)},
        ],
    )  # fmt: skip

    report = Importer(tally, "p", path, progress=False).run()

    assert (report.applied, report.rejected) == (4, 1)
    account = tally.app.get_account("p", "rae")
    earn = account.earns[str(request_id_key("p", "e1"))]
    # 250 as given, then 900 x 1/10 = 90 pro rata: 340 of the 900 refunded.
    assert (earn.reversed, earn.refunded_minor) == (3, 340)
