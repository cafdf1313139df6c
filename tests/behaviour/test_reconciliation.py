"""Reconciliation through ReportService on both backends (docs/reconciliation.md): a
statement against the ledger's top-ups and cash-outs, every kind of match and leftover, a
duplicate line, a partial refund, a line outside the period, re-runs, sign-off rules and bad
input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from ledger.v1 import report_pb2 as rpb
from ledger.v1 import report_pb2_grpc
from tests.support import Client, new_id, refused, ts

TOP_UP = rpb.STATEMENT_LINE_KIND_TOP_UP
REFUND = rpb.STATEMENT_LINE_KIND_REFUND


def reports(client: Client) -> report_pb2_grpc.ReportServiceStub:
    return report_pb2_grpc.ReportServiceStub(client.channel)


def line(
    ext: str, ref: str, amount: int, at: datetime, kind: rpb.StatementLineKind.ValueType = TOP_UP
) -> rpb.StatementLine:
    return rpb.StatementLine(
        external_id=ext, payment_ref=ref, kind=kind, amount_minor=amount, occurred_at=ts(at)
    )


def reconcile(client: Client, program: str, lines: list[rpb.StatementLine], **f: Any) -> Any:
    now = datetime.now(UTC)
    f.setdefault(
        "period", rpb.Period(since=ts(now - timedelta(hours=1)), until=ts(now + timedelta(hours=1)))
    )
    f.setdefault("date_tolerance_seconds", 600)
    f.setdefault("request_id", new_id("rec"))
    f.setdefault("source", "acme-pay")
    request = rpb.ReconcileStatementRequest(program_id=program, lines=lines, **f)
    return reports(client).ReconcileStatement(request, timeout=30)


def setup(client: Client) -> tuple[str, str, dict[str, str]]:
    """Top-ups and a partial cash-out; a spend and its refund, which move no money."""
    program = client.create_program()
    member = client.enroll(program)
    tx = {}
    tx["one"] = client.top_up(
        program, member, 1000, bonus_minor=100, payment_ref="pay-1"
    ).transaction_id
    tx["split"] = client.top_up(
        program, member, 1000, bonus_minor=0, payment_ref="pay-2"
    ).transaction_id
    tx["a"] = client.top_up(program, member, 300, bonus_minor=0, payment_ref="pay-3").transaction_id
    tx["b"] = client.top_up(program, member, 700, bonus_minor=0, payment_ref="pay-3").transaction_id
    tx["short"] = client.top_up(
        program, member, 500, bonus_minor=0, payment_ref="pay-4"
    ).transaction_id
    tx["alone"] = client.top_up(
        program, member, 200, bonus_minor=0, payment_ref="pay-5"
    ).transaction_id
    spent = client.spend(program, member, 150)
    client.refund(program, member, spent.transaction_id, 50)
    tx["cash_out"] = client.refund(program, member, tx["one"], 400).transaction_id
    return program, member, tx


def test_every_kind_of_match_and_leftover(client: Client) -> None:
    program, member, tx = setup(client)
    now = datetime.now(UTC)
    statement = [
        line("x1", "pay-1", 1000, now),  # the cash only: the 100 bonus has no money behind it
        line("x2", "pay-2", 600, now),  # one top-up paid in two card payments
        line("x3", "pay-2", 400, now + timedelta(seconds=5)),
        line("x4", "pay-3", 1000, now),  # one payment covering two top-ups
        line("x5", "pay-4", 450, now),  # amount mismatch
        line("x6", "pay-9", 999, now),  # nothing in the ledger
        line("x7", "pay-1", 400, now, REFUND),  # the partial cash-out's cash handed back
        line("x7", "pay-1", 400, now, REFUND),  # the same line twice
        line("x8", "pay-5", 200, now - timedelta(days=2)),  # outside the period
    ]
    r = reconcile(client, program, statement)
    matched = {
        (m.payment_ref, m.kind): (list(m.transaction_ids), list(m.external_ids)) for m in r.matched
    }
    assert matched == {
        ("pay-1", TOP_UP): ([tx["one"]], ["x1"]),
        ("pay-1", REFUND): ([tx["cash_out"]], ["x7"]),
        ("pay-2", TOP_UP): ([tx["split"]], ["x2", "x3"]),
        ("pay-3", TOP_UP): ([tx["a"], tx["b"]], ["x4"]),
    }
    (mismatch,) = r.amount_mismatches
    assert (mismatch.payment_ref, list(mismatch.transaction_ids), list(mismatch.external_ids)) == (
        "pay-4",
        [tx["short"]],
        ["x5"],
    )
    assert (mismatch.ledger_amount_minor, mismatch.statement_amount_minor) == (500, 450)
    assert [x.external_id for x in r.missing_in_ledger] == ["x6"]
    assert [(e.transaction_id, e.member_id, e.amount_minor) for e in r.missing_in_statement] == [
        (tx["alone"], member, 200)
    ]
    assert [x.external_id for x in r.duplicate_lines] == ["x7"]
    assert [x.external_id for x in r.outside_period] == ["x8"]
    # Control totals, refunds negative: the spend and its refund move no money.
    assert r.ledger_total_minor == 1000 + 1000 + 300 + 700 + 500 + 200 - 400
    assert r.statement_total_minor == 1000 + 600 + 400 + 1000 + 450 + 999 - 400
    assert r.position > 0
    assert r.program_id == program
    assert r.source == "acme-pay"
    assert not r.signed_off_by


def test_a_rerun_gives_the_same_result_and_a_request_id_is_idempotent(client: Client) -> None:
    program, _, _ = setup(client)
    now = datetime.now(UTC)
    statement = [line("x1", "pay-1", 1000, now), line("x2", "pay-3", 1000, now)]
    period = rpb.Period(since=ts(now - timedelta(hours=1)), until=ts(now + timedelta(hours=1)))
    first = reconcile(client, program, statement, period=period, request_id="rec-1")
    again = reconcile(client, program, list(reversed(statement)), period=period, request_id="rec-1")
    assert again == first  # the stored run, answered again
    other = reconcile(client, program, statement, period=period, request_id="rec-2")
    assert other.reconciliation_id != first.reconciliation_id
    for field in ("reconciliation_id", "reconciled_at"):
        other.ClearField(field)
        first.ClearField(field)
    assert other == first  # the same ledger position, the same result
    stored = reports(client).GetReconciliation(
        rpb.GetReconciliationRequest(reconciliation_id=again.reconciliation_id), timeout=30
    )
    assert stored == again
    reused = refused(
        lambda: reconcile(client, program, statement[:1], period=period, request_id="rec-1")
    )
    assert reused.code == grpc.StatusCode.ALREADY_EXISTS


def test_sign_off_rules(client: Client) -> None:
    program, _, _ = setup(client)
    stub = reports(client)
    unmatched = reconcile(client, program, [line("x1", "pay-1", 1000, datetime.now(UTC))])

    def sign(rid: str, note: str = "", request_id: str = "so-1", operator: str = "ana") -> Any:
        return stub.SignOffReconciliation(
            rpb.SignOffReconciliationRequest(
                reconciliation_id=rid, operator_id=operator, note=note, request_id=request_id
            ),
            timeout=30,
        )

    no_note = refused(lambda: sign(unmatched.reconciliation_id))
    assert (no_note.code, no_note.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOTE_REQUIRED")
    signed = sign(unmatched.reconciliation_id, note="pay-5 paid by bank transfer")
    assert signed.signed_off_by == "ana"
    assert signed.sign_off_note.startswith("pay-5")
    assert signed.HasField("signed_off_at")
    assert sign(unmatched.reconciliation_id, note="pay-5 paid by bank transfer") == signed
    twice = refused(lambda: sign(unmatched.reconciliation_id, note="other", request_id="so-2"))
    assert (twice.code, twice.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_SIGNED_OFF")
    got = stub.GetReconciliation(
        rpb.GetReconciliationRequest(reconciliation_id=unmatched.reconciliation_id), timeout=30
    )
    assert got == signed

    # A programme whose statement matches everything signs off without a note.
    clean_program = client.create_program()
    member = client.enroll(clean_program)
    client.top_up(clean_program, member, 500, bonus_minor=50, payment_ref="p")
    clean = reconcile(client, clean_program, [line("x", "p", 500, datetime.now(UTC))])
    assert len(clean.matched) == 1
    assert sign(clean.reconciliation_id, request_id="so-3").signed_off_by == "ana"

    missing = refused(lambda: sign("no-such-run", note="n"))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "RECONCILIATION_NOT_FOUND")
    missing = refused(
        lambda: stub.GetReconciliation(rpb.GetReconciliationRequest(reconciliation_id="nope"))
    )
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "RECONCILIATION_NOT_FOUND")


def test_bad_input_names_each_field(client: Client) -> None:
    program = client.create_program()
    now = datetime.now(UTC)
    bad = refused(
        lambda: reconcile(
            client,
            program,
            [
                line("x1", "p", 100, now),
                rpb.StatementLine(external_id="x2", payment_ref="p", amount_minor=-5),
                line("x1", "p", 101, now),
            ],
            period=rpb.Period(since=ts(now), until=ts(now)),
            date_tolerance_seconds=-1,
        )
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad.fields) == {
        "lines[1].kind",
        "lines[1].amount_minor",
        "lines[1].occurred_at",
        "lines[2].external_id",
        "period.until",
        "date_tolerance_seconds",
    }
    unknown = refused(lambda: reconcile(client, "no-such-programme", []))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")
