"""`ledger audit journal` on both backends: a history of points and stored value passes
(every event balanced, members' ledger accounts equal to their balances, the per-day sums
equal to the postings), and each kind of corruption of the journal's tables is found."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.application import commands as c
from ledger.audit.journal_check import check_journal
from ledger.audit.replay import replay
from ledger.domain.program import PointsConversion, ProgramSettings, TopUpBonusStep
from ledger.runtime import Tally
from projections.journal import JournalProjection
from tests.support import open_tally
from tests.test_server import run_ledger


@pytest.fixture(params=["sqlite", "postgres"])
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    with open_tally(request.param) as t:
        app = t.app
        settings = ProgramSettings(
            "P",
            "CNY",
            time_zone="Asia/Shanghai",
            top_up_bonus=(TopUpBonusStep(1000, 100),),
            points_conversion=PointsConversion(10, 100),
        )
        app.create_program(c.CreateProgram(program_id="p", request_id="p", settings=settings))
        for m in ("ann", "bob"):
            app.execute(c.EnrollMember(program_id="p", member_id=m, request_id=m))
        top = app.execute(
            c.TopUp(program_id="p", member_id="ann", request_id="t1", store_id="A", cash_minor=1000)
        )
        spend = app.execute(
            c.Spend(
                program_id="p", member_id="ann", request_id="s1", store_id="B", amount_minor=550
            )
        )
        app.execute(
            c.ReverseTransaction(
                program_id="p",
                member_id="ann",
                request_id="r1",
                store_id="C",
                transaction_id=spend.transaction_id,
                amount_minor=110,
            )
        )
        app.execute(
            c.EarnPoints(program_id="p", member_id="bob", request_id="e1", store_id="A", points=90)
        )
        app.execute(
            c.ConvertPoints(
                program_id="p", member_id="bob", request_id="c1", store_id="B", points=30
            )
        )
        app.execute(
            c.ReverseTransaction(
                program_id="p",
                member_id="ann",
                request_id="r2",
                store_id="A",
                transaction_id=top.transaction_id,
            )
        )
        for runner in t.projections.values():
            runner.run_until_caught_up()
        yield t


def kinds(tally: Tally) -> set[str]:
    return {f.kind for f in check_journal(tally.database.config).findings}


def test_a_history_of_points_and_stored_value_passes(tally: Tally) -> None:
    report = check_journal(tally.database.config)
    assert report.findings == []
    assert report.position == tally.app.recorder.max_notification_id()
    assert report.members == 2
    assert report.postings > 20
    assert report.day_rows > 10
    assert check_journal(tally.database.config, "p").ok
    assert check_journal(tally.database.config, "elsewhere").postings == 0


def test_an_unbalanced_posting_is_found_and_its_member_and_its_day(tally: Tally) -> None:
    with tally.database.transaction() as cur:
        cur.execute(
            "UPDATE rm_postings SET amount = amount + 1"
            " WHERE ledger_account = 'member:ann:cash' AND amount = 1000"
        )
    assert kinds(tally) == {"UNBALANCED", "MEMBER_BALANCE", "DAILY_SUMS"}


def test_a_day_sum_that_disagrees_with_its_postings_is_found(tally: Tally) -> None:
    with tally.database.transaction() as cur:
        cur.execute(
            "UPDATE rm_journal_daily SET credit = credit + 5"
            " WHERE ledger_account = 'member:*:bonus'"
        )
    assert kinds(tally) == {"DAILY_SUMS"}


def test_a_balance_the_journal_does_not_explain_is_found(tally: Tally) -> None:
    with tally.database.transaction() as cur:
        cur.execute("UPDATE rm_transactions SET bonus_after_minor = 7 WHERE member_id = 'bob'")
    findings = check_journal(tally.database.config).findings
    assert [f.kind for f in findings] == ["MEMBER_BALANCE"]
    assert "member bob: ledger account bonus is 300, the account's balance 7" in findings[0].detail


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return run_ledger("audit", "journal", *args, timeout=120)


def test_the_command_exits_0_when_the_journal_holds_and_1_on_a_finding(tally: Tally) -> None:
    url = tally.database.config.display
    done = audit("--database", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: ")
    assert audit("--database", url, "--program", "p").returncode == 0
    with tally.database.transaction() as cur:
        cur.execute("UPDATE rm_journal_daily SET debit = debit + 1")
    done = audit("--database", url)
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].startswith("FAILED: ")
    assert "DAILY_SUMS" in done.stdout


def test_an_operators_mistake_is_one_line_and_exit_2(tally: Tally, tmp_path: Path) -> None:
    for args in (
        ["--database", tally.database.config.display, "--program", "nope"],
        ["--database", f"sqlite:///{tmp_path / 'missing.db'}"],
    ):
        done = audit(*args)
        assert done.returncode == 2, done
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith("ledger audit journal: ")
        assert "Traceback" not in done.stderr


def test_replay_rebuilds_the_journal_of_stored_value_and_finds_a_changed_day(
    tally: Tally,
) -> None:
    """`ledger audit replay` covers the journal's tables: the same rows from the log, and a
    per-day sum changed in place is a difference."""
    url = tally.database.config.display
    report = replay(url)
    assert report.ok, report.differences[:3]
    tables = set(JournalProjection.tables)
    assert {"rm_postings", "rm_journal_daily", "rm_journal_programs"} <= tables
    with tally.database.transaction() as cur:
        cur.execute(
            "UPDATE rm_journal_daily SET debit = debit + 1 WHERE ledger_account = 'member:*:cash'"
        )
    report = replay(url)
    assert {d.table for d in report.differences} == {"rm_journal_daily"}
