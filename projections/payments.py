"""The paid-cash read model that reconciliation reads (docs/reconciliation.md): one row in
`rm_payments` per TopUp (kind TOP_UP, the cash paid: the bonus has no money behind it) and
per cash-out (kind REFUND, the cash handed back), with the payment reference a processor's
statement names.

A cash-out's event names the top-up it reverses, not its payment reference: the reference
is the reversed top-up's row, found in this batch or in the table. An account's events name
only the account: the member is known from its enrolment, kept in a table of this
projection's own (`rm_payment_accounts`), so that it depends on no other read model.
Every other event is handled by being ignored: it moves no money.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ledger.domain import events
from ledger.domain.reconciliation import REFUND, TOP_UP
from ledger.infrastructure.database import Cursor
from ledger.infrastructure.dialect import Dialect
from projections.accounts import members_of
from projections.points import micros

NAME = "payments"
PAYMENT_COLUMNS = (
    "program_id, transaction_id, member_id, payment_ref, kind, amount_minor, occurred_at,"
    " recorded_at, store_id, position"
)


class UnknownEvent(LookupError):
    """An event type this projection has no rule for: stop rather than skip it."""


class PaymentsProjection:
    name: ClassVar[str] = NAME
    tables: ClassVar[dict[str, tuple[str, ...]]] = {
        "rm_payments": ("program_id", "transaction_id"),
        "rm_payment_accounts": ("account_id",),
    }
    handled: ClassVar[frozenset[type]] = frozenset(events.ALL)
    # Lazy, like the journal: finance reconciles seldom; a reconciliation wakes it and waits.
    poll_interval: ClassVar[float] = 0.25

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def process(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]]) -> None:
        for _, event in batch_events:
            if type(event) not in self.handled:
                raise UnknownEvent(f"the payments projection has no rule for {type(event)}")
        money = [
            (position, e)
            for position, e in batch_events
            if isinstance(e, (events.StoredValueToppedUp, events.TopUpCashedOut))
        ]
        members = members_of(
            cur,
            self.dialect,
            "rm_payment_accounts",
            batch_events,
            {e.originator_id.hex for _, e in money},
        )
        if not money:
            return
        rows: list[tuple[Any, ...]] = []
        # transaction id of a top-up -> its payment reference, for this batch's cash-outs.
        refs: dict[tuple[str, str], str] = {}
        for position, event in money:
            account = members.get(event.originator_id.hex)
            if account is None:
                raise LookupError(f"account {event.originator_id} has events but no enrolment")
            program_id, member_id = account
            p = event.provenance  # type: ignore[attr-defined]
            if isinstance(event, events.StoredValueToppedUp):
                ref, kind, amount = event.payment_ref, TOP_UP, event.cash  # type: ignore[attr-defined]
                refs[(program_id, p.transaction_id)] = ref
            else:
                key = (program_id, p.reverses_transaction_id)
                # A payment_ref may be empty: look in this batch by key, not by truth.
                ref = refs[key] if key in refs else self._ref_of(cur, *key)
                kind, amount = REFUND, event.refunded_cash  # type: ignore[attr-defined]
            rows.append(
                (
                    program_id,
                    p.transaction_id,
                    member_id,
                    ref,
                    kind,
                    amount,
                    micros(p.occurred_at),
                    micros(event.timestamp),
                    p.store_id,
                    position,
                )
            )
        self.dialect.insert_rows(cur, f"INSERT INTO rm_payments ({PAYMENT_COLUMNS}) {{rows}}", rows)

    def _ref_of(self, cur: Cursor, program_id: str, top_up_id: str) -> str:
        cur.execute(
            "SELECT payment_ref FROM rm_payments"
            " WHERE program_id = ? AND transaction_id = ? AND kind = ?",
            (program_id, top_up_id, TOP_UP),
        )
        row = cur.fetchone()
        if row is None:
            raise LookupError(f"a cash-out reverses {top_up_id}, which is no top-up of ours")
        return str(row[0])
