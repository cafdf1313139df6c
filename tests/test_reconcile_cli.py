"""`ledger reconcile`: the real command on both backends matches a CSV statement as
ReconcileStatement does (the same code), prints it as json, csv and table, is idempotent by
--request-id, shows and signs off stored runs; an operator's mistake is one line, exit 2."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.v1 import report_pb2 as rpb
from tests.behaviour.test_reconciliation import line, reports
from tests.support import Client, ServerThread, ts
from tests.test_operator_errors import one_clear_line
from tests.test_server import fresh_database, run_ledger

BACKENDS = ["sqlite", "postgres"]
T = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
HEADER = "external_id,payment_ref,kind,amount_minor,occurred_at\n"
STATEMENT = HEADER + (
    "x1,pay-1,TOP_UP,1000,2024-05-01T10:00:10Z\n"
    "x2,pay-2,TOP_UP,300,2024-05-01T10:00:00+00:00\n"
    "x3,pay-1,REFUND,200,2024-05-01T12:59:00+02:00\n"
    "x4,pay-9,TOP_UP,50,2024-05-01T23:00:00Z\n"
)


@dataclass
class Ledger:
    url: str
    program: str
    top_ups: list[str]
    cash_out: str
    rpc: rpb.Reconciliation  # what ReconcileStatement answered for STATEMENT


@pytest.fixture(scope="module", params=BACKENDS)
def ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ledger]:
    backend: str = request.param
    with fresh_database(backend, tmp_path_factory.mktemp(backend)) as url:
        server = ServerThread(url, lot_sweep_interval=3600)
        client = Client(server.target, backend)
        try:
            program = client.create_program(program_id="cafe")
            member = client.enroll(program)
            one = client.top_up(
                program, member, 1000, bonus_minor=100, payment_ref="pay-1", occurred_at=ts(T)
            ).transaction_id
            two = client.top_up(
                program, member, 500, bonus_minor=0, payment_ref="pay-2", occurred_at=ts(T)
            ).transaction_id
            out = client.refund(
                program, member, one, 200, occurred_at=ts(T + timedelta(hours=1))
            ).transaction_id
            answer = reports(client).ReconcileStatement(
                rpb.ReconcileStatementRequest(
                    program_id=program,
                    period=rpb.Period(
                        since=ts(datetime(2024, 5, 1, tzinfo=UTC)),
                        until=ts(datetime(2024, 5, 2, tzinfo=UTC)),
                    ),
                    lines=[
                        line("x1", "pay-1", 1000, T + timedelta(seconds=10)),
                        line("x2", "pay-2", 300, T),
                        line(
                            "x3",
                            "pay-1",
                            200,
                            T + timedelta(minutes=59),
                            rpb.STATEMENT_LINE_KIND_REFUND,
                        ),
                        line("x4", "pay-9", 50, T + timedelta(hours=13)),
                    ],
                    date_tolerance_seconds=86400,
                    request_id="rpc-run",
                ),
                timeout=30,
            )
        finally:
            client.close()
            server.stop()
        yield Ledger(url, program, [one, two], out, answer)


def statement(tmp_path: Path, text: str = STATEMENT) -> str:
    path = tmp_path / "statement.csv"
    path.write_text(text)
    return str(path)


def reconcile(ledger: Ledger, *args: str, fmt: str = "json") -> Any:
    result = run_ledger("reconcile", "--database", ledger.url, "--format", fmt, *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return json.loads(result.stdout) if fmt == "json" else result.stdout


def test_the_command_matches_as_the_rpc_does(ledger: Ledger, tmp_path: Path) -> None:
    got = reconcile(
        ledger, "--program", ledger.program, "--statement", statement(tmp_path), "--source", "acme"
    )
    one, two = ledger.top_ups
    assert [(m["kind"], m["transaction_ids"], m["external_ids"]) for m in got["matched"]] == [
        ("REFUND", [ledger.cash_out], ["x3"]),
        ("TOP_UP", [one], ["x1"]),
    ]
    assert got["amount_mismatches"] == [
        {
            "payment_ref": "pay-2",
            "kind": "TOP_UP",
            "transaction_ids": [two],
            "external_ids": ["x2"],
            "ledger_amount_minor": 500,
            "statement_amount_minor": 300,
        }
    ]
    assert [x["external_id"] for x in got["missing_in_ledger"]] == ["x4"]
    assert got["missing_in_statement"] == []
    # The default period: the whole local days of the statement's lines.
    assert got["period"] == {"since": "2024-05-01T00:00:00Z", "until": "2024-05-02T00:00:00Z"}
    assert (got["ledger_total_minor"], got["statement_total_minor"]) == (1300, 1150)
    assert got["source"] == "acme"
    rpc = ledger.rpc
    assert [(list(m.transaction_ids), list(m.external_ids)) for m in rpc.matched] == [
        (m["transaction_ids"], m["external_ids"]) for m in got["matched"]
    ]
    assert got["position"] == rpc.position
    assert got["statement_total_minor"] == rpc.statement_total_minor


def test_csv_table_rerun_show_and_sign_off(ledger: Ledger, tmp_path: Path) -> None:
    path = statement(tmp_path)
    args = ("--program", ledger.program, "--statement", path, "--request-id", "cli-1")
    rows = list(csv.reader(io.StringIO(reconcile(ledger, *args, fmt="csv"))))
    assert rows[0][:5] == ["status", "payment_ref", "kind", "transaction_ids", "external_ids"]
    assert sorted(r[0] for r in rows[1:]) == [
        "amount_mismatch",
        "matched",
        "matched",
        "missing_in_ledger",
    ]
    first = reconcile(ledger, *args)
    assert reconcile(ledger, *args) == first  # the stored run, answered again
    table = reconcile(ledger, *args, fmt="table")
    assert first["reconciliation_id"] in table
    assert "needs a note" in table

    rid = first["reconciliation_id"]
    refused = run_ledger(
        "reconcile",
        "sign-off",
        "--database",
        ledger.url,
        "--reconciliation",
        rid,
        "--operator",
        "ana",
    )
    one_clear_line(refused, "note")
    assert refused.returncode == 2
    signed = reconcile(
        ledger,
        "sign-off",
        "--reconciliation",
        rid,
        "--operator",
        "ana",
        "--note",
        "pay-9 is another programme's",
    )
    assert signed["signed_off_by"] == "ana"
    shown = reconcile(ledger, "show", "--reconciliation", rid)
    assert shown == signed
    again = run_ledger(
        "reconcile",
        "sign-off",
        "--database",
        ledger.url,
        "--reconciliation",
        rid,
        "--operator",
        "bo",
        "--note",
        "x",
    )
    one_clear_line(again, "signed off")
    assert again.returncode == 2


@pytest.mark.parametrize(
    ("text", "args", "expected"),
    [
        (
            "external_id,payment_ref,amount,occurred_at\nx,p,5,2024-05-01T00:00:00Z\n",
            (),
            "header lacks kind, amount_minor",
        ),
        (
            HEADER
            + "x1,p,TOP_UP,10,2024-05-01T00:00:00Z\nx2,p,TOP_UP,12.50,2024-05-01T00:00:00Z\n",
            (),
            "line 3.amount_minor",
        ),
        (HEADER + "x1,p,GIFT,10,2024-05-01T00:00:00Z\n", (), "line 2.kind"),
        (HEADER + "x1,p,TOP_UP,10,yesterday\n", (), "line 2.occurred_at"),
        (
            HEADER + "x1,p,TOP_UP,10,2024-05-01T00:00:00Z\nx1,p,TOP_UP,11,2024-05-01T00:00:00Z\n",
            (),
            "line 3.external_id",
        ),
        (STATEMENT, ("--since", "2024-05-01T00:00:00"), "--since"),
        (STATEMENT, ("--tolerance-seconds", "ten"), "--tolerance-seconds"),
        (STATEMENT, ("--program", "nobody"), "nobody"),
    ],
)
def test_mistakes_are_one_line(
    ledger: Ledger, tmp_path: Path, text: str, args: tuple[str, ...], expected: str
) -> None:
    if "--program" not in args:
        args = ("--program", ledger.program, *args)
    result = run_ledger(
        "reconcile", "--database", ledger.url, "--statement", statement(tmp_path, text), *args
    )
    one_clear_line(result, expected)
    assert result.returncode == 2


def test_a_missing_file_or_database_is_one_line(ledger: Ledger, tmp_path: Path) -> None:
    result = run_ledger(
        "reconcile",
        "--database",
        ledger.url,
        "--program",
        ledger.program,
        "--statement",
        str(tmp_path / "nope.csv"),
    )
    one_clear_line(result, "cannot read the statement")
    assert result.returncode == 2
    result = run_ledger(
        "reconcile",
        "--database",
        f"sqlite:///{tmp_path / 'none.db'}",
        "--program",
        "p",
        "--statement",
        statement(tmp_path),
    )
    one_clear_line(result)
    assert result.returncode == 2
    result = run_ledger("reconcile", "show", "--database", ledger.url, "--reconciliation", "nope")
    one_clear_line(result, "no reconciliation nope")
    assert result.returncode == 2
