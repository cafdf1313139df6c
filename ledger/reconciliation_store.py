"""Reconciliation runs: read the period's paid cash (`rm_payments`, projections/payments.py),
match it with the pure rules of ledger/domain/reconciliation.py, and store the run, insert
only; load runs and record sign-offs. ReportService's reconciliation RPCs and
`ledger reconcile` both call `Reconciliations`, so they match alike (docs/reconciliation.md).

reconciliation_id is uuid5(program, request_id) when a request_id is given: the same
request_id with the same request answers the stored run again (whatever the ledger holds
since), with another request it is IDEMPOTENCY_KEY_REUSED. Without a request_id each run is
new, with a random id.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from ledger.application.validation import Violations
from ledger.domain import errors
from ledger.domain.ids import TALLY_NAMESPACE
from ledger.domain.reconciliation import (
    KINDS,
    AmountMismatch,
    LedgerPayment,
    Match,
    Result,
    Run,
    SignOff,
    StatementLine,
    conflicting_ids,
    reconcile,
)
from ledger.infrastructure.database import Database
from projections.payments import NAME as PAYMENTS
from projections.points import micros

MAX_LINES = 100_000
MAX_TOLERANCE_SECONDS = 366 * 24 * 3600
SECOND = 1_000_000  # microseconds


def reconciliation_id(program_id: str, request_id: str) -> str:
    if not request_id:
        return str(uuid.uuid4())
    return str(uuid.uuid5(TALLY_NAMESPACE, f"reconciliation\x1f{program_id}\x1f{request_id}"))


def fingerprint(
    program_id: str,
    source: str,
    since: int | None,
    until: int | None,
    tolerance_seconds: int,
    lines: Sequence[StatementLine],
) -> str:
    """SHA-256 of the request as matched: the lines sorted, since their order changes
    nothing of the result."""
    canonical = json.dumps(
        [
            program_id,
            source,
            since,
            until,
            tolerance_seconds,
            sorted([list(asdict(line).values()) for line in lines]),
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---------------------------------------------------------------------- checking a statement


def statement_line(
    v: Violations,
    field: str,
    external_id: str,
    payment_ref: str,
    kind: str,
    amount_minor: int,
    occurred_at: datetime | None,
) -> StatementLine:
    """One line checked, its violations named `<field>.<name>` (lines[3].amount_minor for
    gRPC, line 4's for the CSV command): the protobuf-free check both front ends share."""
    v.text(f"{field}.external_id", external_id, required=True)
    v.text(f"{field}.payment_ref", payment_ref, required=True)
    if kind not in KINDS:
        v.add(f"{field}.kind", "must be TOP_UP or REFUND")
    v.positive(f"{field}.amount_minor", amount_minor)
    moment = v.moment(f"{field}.occurred_at", occurred_at)
    if occurred_at is None:
        v.add(f"{field}.occurred_at", "is required")
    return StatementLine(
        external_id,
        payment_ref,
        "TOP_UP" if kind == "TOP_UP" else "REFUND",
        amount_minor,
        0 if moment is None else micros(moment),
    )


def check_statement(v: Violations, lines: Sequence[StatementLine], field: str = "lines") -> None:
    """A statement as a whole: not too long, and no external_id naming two different lines
    (an identical repeat is a duplicate, reported by the run, not refused)."""
    if len(lines) > MAX_LINES:
        v.add(field, f"at most {MAX_LINES} lines")
    for i, first in conflicting_ids(lines):
        v.add(
            f"{field}[{i}].external_id",
            f"repeats the external_id of {field}[{first}] with other content",
        )


def check_tolerance(v: Violations, field: str, seconds: int) -> int:
    return v.non_negative(field, seconds, limit=MAX_TOLERANCE_SECONDS)


# ---------------------------------------------------------------------- the result as JSON


def encode_result(result: Result) -> str:
    return json.dumps(asdict(result), separators=(",", ":"), sort_keys=True)


def decode_result(text: str) -> Result:
    data: dict[str, Any] = json.loads(text)
    return Result(
        matched=tuple(
            Match(
                m["payment_ref"],
                m["kind"],
                tuple(m["transaction_ids"]),
                tuple(m["external_ids"]),
                int(m["amount_minor"]),
            )
            for m in data["matched"]
        ),
        missing_in_ledger=tuple(StatementLine(**x) for x in data["missing_in_ledger"]),
        missing_in_statement=tuple(LedgerPayment(**x) for x in data["missing_in_statement"]),
        amount_mismatches=tuple(
            AmountMismatch(
                m["payment_ref"],
                m["kind"],
                tuple(m["transaction_ids"]),
                tuple(m["external_ids"]),
                int(m["ledger_amount_minor"]),
                int(m["statement_amount_minor"]),
            )
            for m in data["amount_mismatches"]
        ),
        duplicate_lines=tuple(StatementLine(**x) for x in data["duplicate_lines"]),
        outside_period=tuple(StatementLine(**x) for x in data["outside_period"]),
        ledger_total_minor=int(data["ledger_total_minor"]),
        statement_total_minor=int(data["statement_total_minor"]),
    )


_RUN_COLUMNS = (
    "r.reconciliation_id, r.program_id, r.source, r.since, r.until, r.tolerance_seconds,"
    " r.result, r.reconciled_at, r.position, r.request_id, r.fingerprint,"
    " s.operator_id, s.note, s.request_id, s.signed_off_at"
)


class Reconciliations:
    def __init__(self, database: Database) -> None:
        self.database = database

    def payments(
        self, program_id: str, since: int | None, until: int | None
    ) -> tuple[int, list[LedgerPayment]]:
        """The paid-cash entries of [since, until) in business time, and the read model's
        position they reflect, read by ONE statement (one snapshot on PostgreSQL too). An
        entry of no money (a cash-out whose cash was all withheld) is nothing to match."""
        sql = (
            "SELECT transaction_id, member_id, payment_ref, kind, amount_minor, occurred_at,"
            " store_id FROM rm_payments WHERE program_id = ? AND amount_minor > 0"
        )
        params: list[object] = [program_id]
        if since is not None:
            sql += " AND occurred_at >= ?"
            params.append(since)
        if until is not None:
            sql += " AND occurred_at < ?"
            params.append(until)
        sql += (
            " UNION ALL SELECT '', '', '', '', position, -1, '' FROM projection_tracking"
            " WHERE name = ?"
        )
        params.append(PAYMENTS)
        with self.database.read() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        position, found = 0, []
        for tx, member, ref, kind, amount, occurred_at, store in rows:
            if int(occurred_at) == -1 and tx == "":
                position = int(amount)
                continue
            found.append(
                LedgerPayment(
                    str(tx),
                    str(member),
                    str(ref),
                    "TOP_UP" if kind == "TOP_UP" else "REFUND",
                    int(amount),
                    int(occurred_at),
                    str(store),
                )
            )
        return position, found

    def run(
        self,
        program_id: str,
        source: str,
        since: int | None,
        until: int | None,
        tolerance_seconds: int,
        lines: Sequence[StatementLine],
        request_id: str,
        now: int,
    ) -> Run:
        """Match the statement against the ledger as the read model has it now, and store
        the run; for a request_id already used with this request, the stored run."""
        rid = reconciliation_id(program_id, request_id)
        printed = fingerprint(program_id, source, since, until, tolerance_seconds, lines)
        if request_id:
            earlier = self._load(rid)
            if earlier is not None:
                return self._repeat(earlier, printed)
        position, entries = self.payments(program_id, since, until)
        result = reconcile(entries, lines, since, until, tolerance_seconds * SECOND)
        run = Run(rid, program_id, source, since, until, tolerance_seconds, result, now, position)
        with self.database.transaction() as cur:
            cur.execute(
                "INSERT INTO reconciliations (reconciliation_id, program_id, request_id,"
                " fingerprint, source, since, until, tolerance_seconds, position,"
                " reconciled_at, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (reconciliation_id) DO NOTHING",
                (
                    rid,
                    program_id,
                    request_id,
                    printed,
                    source,
                    since,
                    until,
                    tolerance_seconds,
                    position,
                    now,
                    encode_result(result),
                ),
            )
            inserted = cur.rowcount == 1
        if not inserted:  # the same request_id, run meanwhile by another call
            found = self._load(rid)
            assert found is not None
            return self._repeat(found, printed)
        return run

    def _repeat(self, earlier: tuple[Run, str, str], printed: str) -> Run:
        run, _request_id, earlier_print = earlier
        if earlier_print != printed:
            raise errors.IdempotencyKeyReused(
                "request_id was used before for another reconciliation request",
                reconciliation_id=run.reconciliation_id,
            )
        return run

    def get(self, rid: str) -> Run:
        found = self._load(rid)
        if found is None:
            raise errors.ReconciliationNotFound(f"no reconciliation {rid}", reconciliation_id=rid)
        return found[0]

    def sign_off(self, rid: str, operator_id: str, note: str, request_id: str, now: int) -> Run:
        """Record who signed the run off, once. One with anything unmatched needs a note.
        The same request_id with the same operator and note answers the recorded sign-off;
        anything else after a sign-off is ALREADY_SIGNED_OFF."""
        run = self.get(rid)
        if run.sign_off is not None:
            return self._signed_again(run, operator_id, note, request_id)
        if run.result.unmatched and not note.strip():
            raise errors.NoteRequired(
                "this reconciliation has unmatched lines or entries: signing it off needs a note",
                reconciliation_id=rid,
            )
        with self.database.transaction() as cur:
            cur.execute(
                "INSERT INTO reconciliation_sign_offs (reconciliation_id, operator_id, note,"
                " request_id, signed_off_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (reconciliation_id) DO NOTHING",
                (rid, operator_id, note, request_id, now),
            )
        signed = self.get(rid)
        assert signed.sign_off is not None
        if signed.sign_off != SignOff(operator_id, note, request_id, now):
            # Another sign-off committed first.
            return self._signed_again(signed, operator_id, note, request_id)
        return signed

    def _signed_again(self, run: Run, operator_id: str, note: str, request_id: str) -> Run:
        s = run.sign_off
        assert s is not None
        if (s.request_id, s.operator_id, s.note) == (request_id, operator_id, note):
            return run
        raise errors.AlreadySignedOff(
            f"reconciliation {run.reconciliation_id} was signed off by {s.operator_id} already",
            reconciliation_id=run.reconciliation_id,
            signed_off_by=s.operator_id,
        )

    def _load(self, rid: str) -> tuple[Run, str, str] | None:
        """The run, with its request_id and fingerprint."""
        with self.database.read() as cur:
            cur.execute(
                f"SELECT {_RUN_COLUMNS} FROM reconciliations r"
                " LEFT JOIN reconciliation_sign_offs s"
                " ON s.reconciliation_id = r.reconciliation_id WHERE r.reconciliation_id = ?",
                (rid,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        (
            found_id,
            program_id,
            source,
            since,
            until,
            tolerance,
            result,
            reconciled_at,
            position,
            request_id,
            printed,
            operator_id,
            note,
            sign_off_request,
            signed_off_at,
        ) = row
        sign_off = (
            None
            if signed_off_at is None
            else SignOff(str(operator_id), str(note), str(sign_off_request), int(signed_off_at))
        )
        run = Run(
            str(found_id),
            str(program_id),
            str(source),
            None if since is None else int(since),
            None if until is None else int(until),
            int(tolerance),
            decode_result(str(result)),
            int(reconciled_at),
            int(position),
            sign_off,
        )
        return run, str(request_id), str(printed)


__all__ = ["KINDS", "MAX_LINES", "MAX_TOLERANCE_SECONDS", "Reconciliations"]
