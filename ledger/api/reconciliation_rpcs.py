"""ReportService's reconciliation: ReconcileStatement, GetReconciliation,
SignOffReconciliation (docs/reconciliation.md). The servicer checks the request and
translates; the matching is ledger/domain/reconciliation.py and the storing
ledger/reconciliation_store.py, which `ledger reconcile` calls too."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ledger.api.ledger_service import reached, rpc
from ledger.api.report_base import ReportBase, checked
from ledger.api.responses import timestamp
from ledger.api.validation import Violations
from ledger.domain import errors
from ledger.domain import reconciliation as rec
from ledger.queries import from_micros
from ledger.reconciliation_store import (
    Reconciliations,
    check_statement,
    check_tolerance,
    statement_line,
)
from ledger.runtime import Tally
from ledger.security.principal import may_see
from ledger.v1 import report_pb2 as pb
from projections.payments import NAME as PAYMENTS
from projections.points import micros

KIND_NAMES = {
    pb.STATEMENT_LINE_KIND_TOP_UP: rec.TOP_UP,
    pb.STATEMENT_LINE_KIND_REFUND: rec.REFUND,
}
KIND_VALUES = {name: value for value, name in KIND_NAMES.items()}


class ReconciliationRpcs(ReportBase):
    def __init__(self, tally: Tally, executor: ThreadPoolExecutor) -> None:
        super().__init__(tally, executor)
        self.reconciliations = Reconciliations(tally.database)

    @rpc
    async def ReconcileStatement(self, request: Any, context: Any) -> pb.Reconciliation:
        v = checked(request)
        v.text("source", request.source, limit=128)
        if request.request_id:
            v.request_id(request.request_id)
        p = request.period
        since = v.timestamp("period.since", p.since, p.HasField("since"))
        until = v.timestamp("period.until", p.until, p.HasField("until"))
        if since and until and since >= until:
            v.add("period.until", "must be after period.since")
        tolerance = check_tolerance(v, "date_tolerance_seconds", request.date_tolerance_seconds)
        lines = []
        for i, line in enumerate(request.lines):
            field = f"lines[{i}]"
            present = line.HasField("occurred_at")
            if not present:
                v.add(f"{field}.occurred_at", "required")
            lines.append(
                statement_line(
                    v,
                    field,
                    line.external_id,
                    line.payment_ref,
                    KIND_NAMES.get(line.kind, ""),
                    line.amount_minor,
                    v.converted(f"{field}.occurred_at", line.occurred_at, present),
                )
            )
        check_statement(v, lines)
        v.raise_if_any()
        # Reconcile the ledger as it is: the paid-cash read model is lazy, so the call waits
        # for it to reach the log's last event (and min_position, if further).
        head = await self._run(self.tally.app.recorder.max_notification_id)
        await reached(self.tally, max(request.min_position, head or 0), context, (PAYMENTS,))
        await self._run(self.tally.app.get_program, request.program_id)  # PROGRAM_NOT_FOUND
        run = await self._run(
            self.reconciliations.run,
            request.program_id,
            request.source,
            micros(since),
            micros(until),
            tolerance,
            lines,
            request.request_id,
            micros(self.tally.app.clock()),
        )
        return present_run(run)

    @rpc
    async def GetReconciliation(self, request: Any, context: Any) -> pb.Reconciliation:
        v = Violations()
        v.text("reconciliation_id", request.reconciliation_id, limit=64, required=True)
        v.raise_if_any()
        return present_run(await self._visible_run(request.reconciliation_id))

    @rpc
    async def SignOffReconciliation(self, request: Any, context: Any) -> pb.Reconciliation:
        v = Violations()
        v.text("reconciliation_id", request.reconciliation_id, limit=64, required=True)
        v.identifier("operator_id", request.operator_id)
        v.text("note", request.note, limit=4000)
        v.request_id(request.request_id)
        v.raise_if_any()
        await self._visible_run(request.reconciliation_id)  # another programme's: NOT_FOUND
        run = await self._run(
            self.reconciliations.sign_off,
            request.reconciliation_id,
            request.operator_id,
            request.note,
            request.request_id,
            micros(self.tally.app.clock()),
        )
        return present_run(run)

    async def _visible_run(self, rid: str) -> rec.Run:
        """The run, if the caller may see its programme; otherwise the same NOT_FOUND as
        for an id that names no run. Checked in the async part: executors carry no caller."""
        run = await self._run(self.reconciliations.get, rid)
        if not may_see(run.program_id):
            raise errors.ReconciliationNotFound(f"no reconciliation {rid}", reconciliation_id=rid)
        return run


def present_run(run: rec.Run) -> pb.Reconciliation:
    r = run.result
    period = pb.Period()
    if run.since is not None:
        period.since.CopyFrom(timestamp(from_micros(run.since)))
    if run.until is not None:
        period.until.CopyFrom(timestamp(from_micros(run.until)))
    answer = pb.Reconciliation(
        reconciliation_id=run.reconciliation_id,
        program_id=run.program_id,
        source=run.source,
        period=period,
        date_tolerance_seconds=run.tolerance_seconds,
        matched=[
            pb.Match(
                payment_ref=m.payment_ref,
                transaction_ids=m.transaction_ids,
                external_ids=m.external_ids,
                amount_minor=m.amount_minor,
                kind=KIND_VALUES[m.kind],
            )
            for m in r.matched
        ],
        missing_in_ledger=[_line(x) for x in r.missing_in_ledger],
        missing_in_statement=[
            pb.LedgerPayment(
                transaction_id=e.transaction_id,
                member_id=e.member_id,
                payment_ref=e.payment_ref,
                kind=KIND_VALUES[e.kind],
                amount_minor=e.amount_minor,
                occurred_at=timestamp(from_micros(e.occurred_at)),
                store_id=e.store_id,
            )
            for e in r.missing_in_statement
        ],
        amount_mismatches=[
            pb.AmountMismatch(
                payment_ref=m.payment_ref,
                transaction_ids=m.transaction_ids,
                external_ids=m.external_ids,
                ledger_amount_minor=m.ledger_amount_minor,
                statement_amount_minor=m.statement_amount_minor,
                kind=KIND_VALUES[m.kind],
            )
            for m in r.amount_mismatches
        ],
        duplicate_lines=[_line(x) for x in r.duplicate_lines],
        outside_period=[_line(x) for x in r.outside_period],
        ledger_total_minor=r.ledger_total_minor,
        statement_total_minor=r.statement_total_minor,
        reconciled_at=timestamp(from_micros(run.reconciled_at)),
        position=run.position,
    )
    if run.sign_off is not None:
        answer.signed_off_by = run.sign_off.operator_id
        answer.signed_off_at.CopyFrom(timestamp(from_micros(run.sign_off.signed_off_at)))
        answer.sign_off_note = run.sign_off.note
    return answer


def _line(x: rec.StatementLine) -> pb.StatementLine:
    return pb.StatementLine(
        external_id=x.external_id,
        payment_ref=x.payment_ref,
        kind=KIND_VALUES[x.kind],
        amount_minor=x.amount_minor,
        occurred_at=timestamp(from_micros(x.occurred_at)),
    )
