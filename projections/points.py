"""The points read models: accounts, transaction history with running balances, lots, holds.

A batch is applied in memory first (rows loaded on first touch), then written with a handful
of statements, so catching up costs a few statements per few hundred events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import singledispatchmethod
from typing import Any, ClassVar, overload

from ledger.domain import events
from ledger.infrastructure.database import Cursor
from ledger.infrastructure.dialect import Dialect

NAME = "points"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@overload
def micros(moment: datetime) -> int: ...
@overload
def micros(moment: None) -> None: ...
@overload
def micros(moment: datetime | None) -> int | None: ...
def micros(moment: datetime | None) -> int | None:
    """A moment as the read models keep it: integer microseconds (decision 5)."""
    if moment is None:
        return None
    # Exact integers from the epoch (int(timestamp()) truncates toward zero: wrong by a
    # second for a fractional moment before 1970).
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class AccountRow:
    account_id: str
    program_id: str
    member_id: str
    points_available: int = 0
    points_held: int = 0
    points_debt: int = 0
    cash_minor: int = 0
    bonus_minor: int = 0
    enrolled_at: int = 0
    version: int = 0
    position: int = 0


@dataclass
class LotRow:
    program_id: str
    member_id: str
    lot_id: str
    earned_at: int
    expires_at: int | None
    points: int
    remaining: int
    held: int = 0
    expired: int = 0
    qualifying: int = 0
    qualifies_until: int | None = None


@dataclass
class TransactionRow:
    program_id: str
    member_id: str
    position: int
    transaction_id: str
    kind: str
    points_delta: int = 0
    held_delta: int = 0
    debt_delta: int = 0
    cash_delta_minor: int = 0
    bonus_delta_minor: int = 0
    points_after: int = 0
    held_after: int = 0
    debt_after: int = 0
    cash_after_minor: int = 0
    bonus_after_minor: int = 0
    qualifying_delta: int = 0
    qualifying_at: int = 0
    occurred_at: int = 0
    recorded_at: int = 0
    store_id: str = ""
    order_ref: str = ""
    reason: str = ""
    operator_id: str = ""
    request_id: str = ""
    reverses_transaction_id: str = ""
    hold_id: str = ""
    # The last instant the qualifying_delta counts toward the tier (the earn's window).
    qualifies_until: int | None = None
    # The account's aggregate version after this row's event (as_of reads, decision 20).
    version: int = 0
    # The programme version the event was decided under (0: not recorded with it).
    program_version: int = 0


_SELECT_ACCOUNT = (
    "SELECT account_id, program_id, member_id, points_available, points_held, points_debt,"
    " cash_minor, bonus_minor, enrolled_at, version, position FROM rm_accounts"
)
_SELECT_LOT = (
    "SELECT program_id, member_id, lot_id, earned_at, expires_at, points, remaining, held,"
    " expired, qualifying, qualifies_until FROM rm_lots"
)
# Events that need no account row read first: programs', and the enrolment that makes it.
_NO_ACCOUNT_ROW = (events.ProgramCreated, events.ProgramUpdated, events.MemberEnrolled)
# Event attributes that map lot ids to points: the lots an event reads back.
_ALLOCATIONS = ("consumed", "taken", "lots", "released", "returned", "credited")


@dataclass
class Batch:
    cur: Cursor
    accounts: dict[str, AccountRow] = field(default_factory=dict)
    lots: dict[tuple[str, str], LotRow] = field(default_factory=dict)
    new_lots: set[tuple[str, str]] = field(default_factory=set)
    transactions: list[TransactionRow] = field(default_factory=list)
    holds_new: list[tuple[Any, ...]] = field(default_factory=list)
    holds_closed: list[tuple[str, str, str, str]] = field(default_factory=list)
    programs: list[tuple[str, int]] = field(default_factory=list)
    # Lots the current event changed (written to rm_lot_history by `_record`), and the
    # history rows of the batch.
    touched: dict[tuple[str, str], LotRow] = field(default_factory=dict)
    lot_history: list[tuple[Any, ...]] = field(default_factory=list)

    def account(self, account_id: str) -> AccountRow:
        row = self.accounts.get(account_id)
        if row is None:
            self.cur.execute(f"{_SELECT_ACCOUNT} WHERE account_id = ?", (account_id,))
            found = self.cur.fetchone()
            if found is None:
                raise LookupError(f"account {account_id} has events but no MemberEnrolled")
            row = AccountRow(*found)
            self.accounts[account_id] = row
        return row

    def prefetch(self, batch_events: Sequence[tuple[int, Any]]) -> None:
        """Read the accounts and lots these batch_events touch in two queries, not one each."""
        account_ids = {
            e.originator_id.hex for _, e in batch_events if not isinstance(e, _NO_ACCOUNT_ROW)
        } - self.accounts.keys()
        if account_ids:
            marks = ",".join("?" * len(account_ids))
            self.cur.execute(f"{_SELECT_ACCOUNT} WHERE account_id IN ({marks})", [*account_ids])
            for found in self.cur.fetchall():
                row = AccountRow(*found)
                self.accounts[row.account_id] = row
        wanted: set[tuple[str, str]] = set()
        for _, e in batch_events:
            for name in _ALLOCATIONS:
                allocation = getattr(e, name, None)
                if isinstance(allocation, dict):
                    wanted.update((e.originator_id.hex, lot_id) for lot_id in allocation)
        keys = []
        for account_id, lot_id in wanted - self.lots.keys():
            account = self.accounts.get(account_id)
            if account is not None:
                keys.append((account_id, account.program_id, account.member_id, lot_id))
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            marks = ",".join(["(?,?,?)"] * len(chunk))
            self.cur.execute(
                f"{_SELECT_LOT} WHERE (program_id, member_id, lot_id) IN ({marks})",
                [value for key in chunk for value in key[1:]],
            )
            account_of = {key[1:3]: key[0] for key in chunk}
            for found in self.cur.fetchall():
                lot = LotRow(*found)
                self.lots[(account_of[(lot.program_id, lot.member_id)], lot.lot_id)] = lot

    def lot(self, account: AccountRow, lot_id: str) -> LotRow:
        key = (account.account_id, lot_id)
        row = self.lots.get(key)
        if row is None:
            self.cur.execute(
                f"{_SELECT_LOT} WHERE program_id = ? AND member_id = ? AND lot_id = ?",
                (account.program_id, account.member_id, lot_id),
            )
            found = self.cur.fetchone()
            if found is None:
                raise LookupError(f"lot {lot_id} is not in the read model")
            row = LotRow(*found)
            self.lots[key] = row
        return row

    def changed_lot(self, account: AccountRow, lot_id: str) -> LotRow:
        """The lot, marked as changed by the event being applied (a history row)."""
        row = self.lot(account, lot_id)
        self.touched[(account.account_id, lot_id)] = row
        return row


class UnhandledEvent(TypeError):
    """An event type no handler of the projection names: fail loudly, never skip it (a
    skipped event is a read model that silently disagrees with the log)."""


class PointsProjection:
    name: ClassVar[str] = NAME
    # The read models it writes, each with its key columns (a row's identity for replay).
    tables: ClassVar[dict[str, tuple[str, ...]]] = {
        "rm_programs": ("program_id",),
        "rm_accounts": ("program_id", "member_id"),
        "rm_transactions": ("program_id", "member_id", "position"),
        "rm_lots": ("program_id", "member_id", "lot_id"),
        "rm_holds": ("program_id", "member_id", "hold_id"),
        "rm_lot_history": ("program_id", "member_id", "lot_id", "position"),
    }

    handled: ClassVar[frozenset[type]]  # set below, from the handlers registered
    poll_interval: ClassVar[float] = 0.0  # eager: balances and history read one's writes

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def process(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]]) -> None:
        batch = Batch(cur)
        batch.prefetch(batch_events)
        for position, event in batch_events:
            self.apply(event, batch, position)
        self._flush(batch)

    @singledispatchmethod
    def apply(self, event: object, batch: Batch, position: int) -> None:
        raise UnhandledEvent(
            f"projection {self.name} has no handler for {type(event).__qualname__}"
        )

    @apply.register(events.ProgramCreated)
    def _program_created(self, event: Any, batch: Batch, position: int) -> None:
        batch.programs.append((event.program_id, position))

    @apply.register(events.ProgramUpdated)
    def _program_updated(self, event: Any, batch: Batch, position: int) -> None:
        """No rows: a program's settings are read from its aggregate."""

    # ------------------------------------------------------------------ events

    @apply.register(events.MemberEnrolled)
    def _enrolled(self, event: Any, batch: Batch, position: int) -> None:
        account = AccountRow(
            account_id=event.originator_id.hex,
            program_id=event.program_id,
            member_id=event.member_id,
            enrolled_at=micros(event.provenance.occurred_at) or 0,
        )
        batch.accounts[account.account_id] = account
        self._record(batch, position, event, account, "ENROLL")

    @apply.register(events.PointsEarned)
    def _on_PointsEarned(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        lot_points = event.points - event.debt_repaid
        until = micros(event.qualifies_until)
        self._open_lot(batch, account, event, lot_points, qualifies_until=until)
        row = self._record(
            batch,
            position,
            event,
            account,
            "EARN",
            points=lot_points,
            debt=-event.debt_repaid,
        )
        if until is not None:
            row.qualifying_delta = event.points
            row.qualifying_at = row.occurred_at
            row.qualifies_until = until

    @apply.register(events.PointsRedeemed)
    def _on_PointsRedeemed(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        self._take(batch, account, event.consumed)
        self._record(batch, position, event, account, "REDEEM", points=-_sum(event.consumed))

    @apply.register(events.PointsHeld)
    def _on_PointsHeld(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        self._take(batch, account, event.taken, held=True)
        points = _sum(event.taken)
        hold_id = event.provenance.transaction_id
        batch.holds_new.append(
            (account.program_id, account.member_id, hold_id, points, micros(event.expires_at))
        )
        row = self._record(batch, position, event, account, "HOLD", points=-points, held=points)
        row.hold_id = hold_id

    @apply.register(events.HoldCaptured)
    def _on_HoldCaptured(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        for lot_id, pts in event.consumed.items():
            batch.changed_lot(account, lot_id).held -= pts
        back = self._return_from_hold(batch, account, event.released, event.credited)
        self._close_hold(batch, account, event.hold_id, "CAPTURED")
        row = self._record(
            batch,
            position,
            event,
            account,
            "CAPTURE",
            points=back,
            held=-(_sum(event.released) + _sum(event.consumed)),
            debt=-event.debt_repaid,
        )
        row.hold_id = event.hold_id

    @apply.register(events.HoldReleased)
    def _on_HoldReleased(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        self._end_hold(batch, position, event, account, "RELEASED", "RELEASE")

    @apply.register(events.HoldExpired)
    def _on_HoldExpired(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        self._end_hold(batch, position, event, account, "EXPIRED", "HOLD_EXPIRED")

    @apply.register(events.PointsAdjusted)
    def _on_PointsAdjusted(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        if event.points > 0:
            lot_points = event.points - event.debt_repaid
            self._open_lot(batch, account, event, lot_points, qualifies_until=None)
            self._record(
                batch,
                position,
                event,
                account,
                "ADJUST",
                points=lot_points,
                debt=-event.debt_repaid,
            )
        else:
            self._take(batch, account, event.taken)
            self._record(batch, position, event, account, "ADJUST", points=event.points)

    @apply.register(events.EarnReversed)
    def _on_EarnReversed(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        self._take(batch, account, event.taken)
        row = self._record(
            batch,
            position,
            event,
            account,
            "REVERSE",
            points=-_sum(event.taken),
            debt=event.debt_added,
        )
        earn_lot = batch.lot(account, event.provenance.reverses_transaction_id)
        if earn_lot.qualifying:
            row.qualifying_delta = -event.points
            row.qualifying_at = earn_lot.earned_at
            row.qualifies_until = earn_lot.qualifies_until

    @apply.register(events.RedemptionReversed)
    def _on_RedemptionReversed(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        self._credit(batch, account, event.restored)
        self._record(
            batch,
            position,
            event,
            account,
            "REVERSE",
            points=_sum(event.restored),
            debt=-event.debt_repaid,
        )

    @apply.register(events.LotsExpired)
    def _on_LotsExpired(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        self._take(batch, account, event.lots)
        for lot_id, pts in event.lots.items():
            batch.changed_lot(account, lot_id).expired += pts
        self._record(batch, position, event, account, "EXPIRE", points=-_sum(event.lots))

    # ------------------------------------------------------------------ stored value
    # Balances and history only; lots of stored value are the aggregate's (and the
    # journal's, per store of issue).

    @apply.register(events.StoredValueToppedUp)
    def _on_StoredValueToppedUp(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        row = self._record(
            batch, position, event, account, "TOP_UP", cash=event.cash, bonus=event.bonus
        )
        # The till's order reference column carries the payment's (reconciliation reads it).
        row.order_ref = event.payment_ref

    @apply.register(events.StoredValueSpent)
    def _on_StoredValueSpent(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        self._record(batch, position, event, account, "SPEND", cash=-event.cash, bonus=-event.bonus)

    @apply.register(events.SpendRefunded)
    def _on_SpendRefunded(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        # With any cash a DEDUCT_SPENT_BONUS cash-out had withheld for the bonus coming back.
        cash = event.cash + _sum(event.cash_unwithheld)
        self._record(batch, position, event, account, "REVERSE", cash=cash, bonus=event.bonus)

    @apply.register(events.TopUpCashedOut)
    def _on_TopUpCashedOut(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        self._record(
            batch,
            position,
            event,
            account,
            "REVERSE",
            cash=-event.cash_taken,
            bonus=-event.bonus_forfeited,
        )

    @apply.register(events.PointsConverted)
    def _on_PointsConverted(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        self._take(batch, account, event.consumed)
        self._record(
            batch,
            position,
            event,
            account,
            "CONVERT",
            points=-_sum(event.consumed),
            bonus=event.value,
        )

    @apply.register(events.ConversionReversed)
    def _on_ConversionReversed(self, event: Any, batch: Batch, position: int) -> None:
        account = batch.account(event.originator_id.hex)
        self._credit(batch, account, event.restored)
        self._record(
            batch,
            position,
            event,
            account,
            "REVERSE",
            points=_sum(event.restored),
            debt=-event.debt_repaid,
            bonus=-event.value,
        )

    # ------------------------------------------------------------------ helpers

    def _end_hold(
        self, batch: Batch, position: int, event: Any, account: AccountRow, status: str, kind: str
    ) -> None:
        back = self._return_from_hold(batch, account, event.returned, event.credited)
        self._close_hold(batch, account, event.hold_id, status)
        row = self._record(
            batch,
            position,
            event,
            account,
            kind,
            points=back,
            held=-_sum(event.returned),
            debt=-event.debt_repaid,
        )
        row.hold_id = event.hold_id

    def _open_lot(
        self,
        batch: Batch,
        account: AccountRow,
        event: Any,
        points: int,
        qualifies_until: int | None,
    ) -> None:
        lot_id = event.provenance.transaction_id
        key = (account.account_id, lot_id)
        batch.lots[key] = batch.touched[key] = LotRow(
            account.program_id,
            account.member_id,
            lot_id,
            micros(event.provenance.occurred_at) or 0,
            micros(event.expires_at),
            points,
            points,
            qualifying=int(qualifies_until is not None),
            qualifies_until=qualifies_until,
        )
        batch.new_lots.add(key)

    def _take(
        self, batch: Batch, account: AccountRow, allocation: dict[str, int], held: bool = False
    ) -> None:
        for lot_id, pts in allocation.items():
            lot = batch.changed_lot(account, lot_id)
            lot.remaining -= pts
            if held:
                lot.held += pts

    def _return_from_hold(
        self, batch: Batch, account: AccountRow, returned: dict[str, int], credited: dict[str, int]
    ) -> int:
        """Held points come back: they leave `held` in the lots they were taken from and are
        credited where the event says (debt first, see MemberAccount._coming_back).
        Returns the points credited to lots."""
        for lot_id, pts in returned.items():
            batch.changed_lot(account, lot_id).held -= pts
        self._credit(batch, account, credited)
        return _sum(credited)

    def _credit(self, batch: Batch, account: AccountRow, allocation: dict[str, int]) -> None:
        for lot_id, pts in allocation.items():
            batch.changed_lot(account, lot_id).remaining += pts

    def _close_hold(self, batch: Batch, account: AccountRow, hold_id: str, status: str) -> None:
        batch.holds_closed.append((status, account.program_id, account.member_id, hold_id))

    def _record(
        self,
        batch: Batch,
        position: int,
        event: Any,
        account: AccountRow,
        kind: str,
        points: int = 0,
        held: int = 0,
        debt: int = 0,
        cash: int = 0,
        bonus: int = 0,
    ) -> TransactionRow:
        account.points_available += points
        account.points_held += held
        account.points_debt += debt
        account.cash_minor += cash
        account.bonus_minor += bonus
        account.version = event.originator_version
        account.position = position
        p = event.provenance
        recorded_at = micros(event.timestamp) or 0
        for lot in batch.touched.values():
            batch.lot_history.append(
                (
                    lot.program_id,
                    lot.member_id,
                    lot.lot_id,
                    position,
                    lot.remaining,
                    lot.held,
                    lot.expired,
                    recorded_at,
                )
            )
        batch.touched.clear()
        row = TransactionRow(
            program_id=account.program_id,
            member_id=account.member_id,
            position=position,
            transaction_id=p.transaction_id,
            kind=kind,
            points_delta=points,
            held_delta=held,
            debt_delta=debt,
            cash_delta_minor=cash,
            bonus_delta_minor=bonus,
            points_after=account.points_available,
            held_after=account.points_held,
            debt_after=account.points_debt,
            cash_after_minor=account.cash_minor,
            bonus_after_minor=account.bonus_minor,
            occurred_at=micros(p.occurred_at) or 0,
            recorded_at=recorded_at,
            store_id=p.store_id,
            order_ref=p.order_ref,
            reason=p.reason,
            operator_id=p.operator_id,
            request_id=p.request_id,
            reverses_transaction_id=p.reverses_transaction_id,
            version=event.originator_version,
            # Recorded with each event by programme versions (issue 12); 0 before them.
            program_version=getattr(p, "program_version", 0),
        )
        batch.transactions.append(row)
        return row

    def _flush(self, batch: Batch) -> None:
        # The inserts as one statement where the backend can (dialect.insert_many: the
        # tables are independent), then the holds a batch closed.
        self.dialect.insert_many(
            batch.cur,
            [
                (
                    "INSERT INTO rm_programs (program_id, created_position) {rows}"
                    " ON CONFLICT (program_id) DO NOTHING",
                    batch.programs,
                ),
                (
                    "INSERT INTO rm_accounts (account_id, program_id, member_id,"
                    " points_available, points_held, points_debt, cash_minor, bonus_minor,"
                    " enrolled_at, version, position) {rows}"
                    " ON CONFLICT (program_id, member_id) DO UPDATE SET"
                    " points_available = excluded.points_available,"
                    " points_held = excluded.points_held, points_debt = excluded.points_debt,"
                    " cash_minor = excluded.cash_minor, bonus_minor = excluded.bonus_minor,"
                    " version = excluded.version, position = excluded.position",
                    [_values(a) for a in batch.accounts.values()],
                ),
                (
                    f"INSERT INTO rm_lots ({_columns(LotRow)}) {{rows}}"
                    " ON CONFLICT (program_id, member_id, lot_id) DO UPDATE SET"
                    " remaining = excluded.remaining, held = excluded.held,"
                    " expired = excluded.expired",
                    [_values(lot) for lot in batch.lots.values()],
                ),
                (
                    "INSERT INTO rm_holds (program_id, member_id, hold_id, points, expires_at,"
                    " status) {rows}",
                    [(*hold, "ACTIVE") for hold in batch.holds_new],
                ),
                (
                    f"INSERT INTO rm_transactions ({_columns(TransactionRow)}) {{rows}}",
                    [_values(t) for t in batch.transactions],
                ),
                (
                    # A plain insert: exactly once, so a row written twice is a bug to hear of.
                    "INSERT INTO rm_lot_history (program_id, member_id, lot_id, position,"
                    " remaining, held, expired, recorded_at) {rows}",
                    batch.lot_history,
                ),
            ],
        )
        if batch.holds_closed:
            batch.cur.executemany(
                "UPDATE rm_holds SET status = ? WHERE program_id = ? AND member_id = ?"
                " AND hold_id = ?",
                batch.holds_closed,
            )


def _values(row: Any) -> tuple[Any, ...]:
    """A row's fields in order, shallow: dataclasses.astuple deep-copies every value and was
    half of a rebuild's time."""
    return tuple(getattr(row, name) for name in _field_names(type(row)))


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _columns(cls: type) -> str:
    """A row type's columns, named: its fields are the table's columns."""
    return ", ".join(_field_names(cls))


def _sum(allocation: dict[str, int]) -> int:
    return sum(allocation.values())


# Every event type the points read models handle (the test that each event of the log has
# a handler in every projection reads it).
PointsProjection.handled = frozenset(vars(PointsProjection)["apply"].dispatcher.registry) - {object}
