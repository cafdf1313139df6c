"""Model-based test of the MemberAccount aggregate.

A hypothesis state machine drives random command sequences against a real `MemberAccount`
and against `Model`, a plain-Python statement of the points rules written from DESIGN.md:
lists and dicts, no cleverness. The model is the spec; the aggregate must agree with it
after every step, refuse exactly what the model refuses, and be rebuilt exactly from its own
events after a round trip through the JSON transcoder the application uses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import project_aggregate
from eventsourcing.domain import DomainEventProtocol, Snapshot
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    UUIDAsHex,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ledger.application.transcodings import account_transcodings
from ledger.domain import errors, journal
from ledger.domain.account import MemberAccount
from ledger.domain.provenance import Provenance, ProvenanceAsDict
from ledger.domain.reversals import Reversal

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# Events a public command may record before it refuses: bringing the account up to `now`.
BRING_UP_EVENTS = {"HoldExpired", "LotsExpired"}


# ---------------------------------------------------------------------------------------
# The model: the rules, stated as simply as possible.
# ---------------------------------------------------------------------------------------


@dataclass
class MLot:
    points: int  # what the lot was opened with (after repaying debt)
    remaining: int  # spendable now
    earned_at: datetime
    expires_at: datetime | None
    held: int = 0  # taken by active holds
    expired: int = 0  # gone by expiry
    expired_reversed: int = 0  # expired points already set against a reversal of the earn
    # Other lots' points taken in place of this lot's when its earn was reversed while its
    # points were away; points coming back to this lot go back to those lots first.
    stood_in: dict[str, int] = field(default_factory=dict)


@dataclass
class MHold:
    taken: list[tuple[str, int]]  # (lot id, points) in the order they were taken
    expires_at: datetime

    @property
    def points(self) -> int:
        return sum(p for _, p in self.taken)


@dataclass
class MRedemption:
    # (lot id, points) in consumption order, less what reversals took back from the end.
    unreversed: list[list[Any]]

    @property
    def reversible(self) -> int:
        return sum(p for _, p in self.unreversed)


@dataclass
class MEarn:
    points: int
    occurred_at: datetime
    qualifying: bool
    reversed: int = 0
    # occurred_at + the tier window in force when it was recorded (None: not qualifying).
    until: datetime | None = None


@dataclass
class Model:
    lots: dict[str, MLot] = field(default_factory=dict)
    holds: dict[str, MHold] = field(default_factory=dict)
    closed_holds: set[str] = field(default_factory=set)
    earns: dict[str, MEarn] = field(default_factory=dict)
    redemptions: dict[str, MRedemption] = field(default_factory=dict)
    others: set[str] = field(default_factory=set)  # holds, releases, adjustments
    debt: int = 0
    # Debt by the reversed earn it came from, oldest first: whatever repays it stands in
    # for that earn's lot.
    debt_of: dict[str, int] = field(default_factory=dict)

    def clone(self) -> Model:
        return Model(
            # Deep enough: a refused trial must not touch the real model's stood_in dicts.
            lots={i: replace(lot, stood_in=dict(lot.stood_in)) for i, lot in self.lots.items()},
            holds={i: MHold(list(h.taken), h.expires_at) for i, h in self.holds.items()},
            closed_holds=set(self.closed_holds),
            earns={i: replace(e) for i, e in self.earns.items()},
            redemptions={
                i: MRedemption([list(x) for x in r.unreversed]) for i, r in self.redemptions.items()
            },
            others=set(self.others),
            debt=self.debt,
            debt_of=dict(self.debt_of),
        )

    # -- reads

    @property
    def available(self) -> int:
        return sum(lot.remaining for lot in self.lots.values())

    @property
    def held(self) -> int:
        return sum(hold.points for hold in self.holds.values())

    def spend_order(self) -> list[str]:
        """Lots with points left: earliest expiry first, never-expiring last, then oldest."""

        def key(lot_id: str) -> tuple[bool, datetime, datetime, str]:
            lot = self.lots[lot_id]
            if lot.expires_at is None:
                return (True, lot.earned_at, lot.earned_at, lot_id)
            return (False, lot.expires_at, lot.earned_at, lot_id)

        return sorted((i for i, lot in self.lots.items() if lot.remaining > 0), key=key)

    # -- helpers

    def take(self, points: int) -> list[tuple[str, int]]:
        taken = []
        for lot_id in self.spend_order():
            if points == 0:
                break
            lot = self.lots[lot_id]
            n = min(lot.remaining, points)
            lot.remaining -= n
            points -= n
            taken.append((lot_id, n))
        assert points == 0
        return taken

    def check_can_spend(self, points: int) -> None:
        if self.debt > 0:
            raise errors.AccountInDebt("model")
        if points > self.available:
            raise errors.InsufficientPoints("model")

    def open_lot(
        self, lot_id: str, points: int, earned_at: datetime, expires_at: datetime | None
    ) -> int:
        repaid = min(self.debt, points)
        self.debt -= repaid
        self.lots[lot_id] = MLot(points - repaid, points - repaid, earned_at, expires_at)
        self.repaid_by(lot_id, repaid)
        return repaid

    def repaid_by(self, lot_id: str, n: int) -> None:
        """`n` of this lot's points repaid debt: they stand in for the reversed lots the
        debt came from, oldest first."""
        for owing in list(self.debt_of):
            k = min(self.debt_of[owing], n)
            n -= k
            self.debt_of[owing] -= k
            if self.debt_of[owing] == 0:
                del self.debt_of[owing]
            if k and owing != lot_id:
                stood_in = self.lots[owing].stood_in
                stood_in[lot_id] = stood_in.get(lot_id, 0) + k

    def return_from_hold(self, hold_id: str) -> list[tuple[str, int]]:
        hold = self.holds.pop(hold_id)
        self.closed_holds.add(hold_id)
        self.come_back(hold.taken)
        return hold.taken

    def come_back(self, pieces: list[tuple[str, int]]) -> None:
        """Held points come back: the first of them repay debt, the rest go to their lots."""
        repay = min(self.debt, sum(n for _, n in pieces))
        self.debt -= repay
        repaying = []
        for lot_id, n in pieces:
            r = min(repay, n)
            repay -= r
            self.lots[lot_id].held -= n
            self.credit(lot_id, n - r)
            repaying.append((lot_id, r))
        for lot_id, r in repaying:
            self.repaid_by(lot_id, r)

    def credit(self, lot_id: str, n: int) -> None:
        """Points coming back to a lot: first to the lots that stood in for it, then to it."""
        stood_in = self.lots[lot_id].stood_in
        for other in list(stood_in):
            give = min(stood_in[other], n)
            self.lots[other].remaining += give
            stood_in[other] -= give
            n -= give
            if stood_in[other] == 0:
                del stood_in[other]
        self.lots[lot_id].remaining += n

    def active_hold(self, hold_id: str) -> MHold:
        if hold_id in self.holds:
            return self.holds[hold_id]
        if hold_id in self.closed_holds:
            raise errors.HoldNotActive("model")
        raise errors.HoldNotFound("model")

    # -- time

    def expire(self, as_of: datetime) -> dict[str, int]:
        """Every lot whose expiry has passed loses what remains in it."""
        gone = {}
        for lot_id, lot in self.lots.items():
            if lot.expires_at is not None and lot.expires_at <= as_of and lot.remaining > 0:
                gone[lot_id] = lot.remaining
                lot.expired += lot.remaining
                lot.remaining = 0
        return gone

    def bring_up_to(self, now: datetime) -> None:
        """Holds past their TTL give their points back, in the order their TTLs ran out (as
        an on-time sweep would have returned them), then due lots expire."""
        due = sorted(
            (h for h in self.holds if self.holds[h].expires_at <= now),
            key=lambda h: (self.holds[h].expires_at, h),
        )
        for hold_id in due:
            self.return_from_hold(hold_id)
        self.expire(now)

    # -- commands (each works on a copy; raising means refused)

    def qualifying_points(self, at: datetime) -> int:
        """Earns count toward the tier until the end of the window they were recorded
        under, that instant included."""
        return sum(
            e.points - e.reversed
            for e in self.earns.values()
            if e.until is not None and e.until >= at
        )

    def knows(self, tx: str) -> bool:
        return tx in self.earns or tx in self.redemptions or tx in self.others

    def earn(
        self,
        tx: str,
        now: datetime,
        points: int,
        earned_at: datetime,
        expires_at: datetime | None,
        qualifying: bool,
        window: timedelta,
    ) -> int:
        self.bring_up_to(now)
        repaid = self.open_lot(tx, points, earned_at, expires_at)
        until = earned_at + window if qualifying else None
        self.earns[tx] = MEarn(points, earned_at, qualifying, until=until)
        self.bring_up_to(now)
        return repaid

    def redeem(self, tx: str, now: datetime, points: int) -> list[tuple[str, int]]:
        self.bring_up_to(now)
        self.check_can_spend(points)
        taken = self.take(points)
        self.redemptions[tx] = MRedemption([[i, n] for i, n in taken])
        return taken

    def hold(self, tx: str, now: datetime, points: int, ttl: timedelta) -> list[tuple[str, int]]:
        self.bring_up_to(now)
        self.check_can_spend(points)
        taken = self.take(points)
        for lot_id, n in taken:
            self.lots[lot_id].held += n
        self.holds[tx] = MHold(taken, now + ttl)
        self.others.add(tx)
        return taken

    def capture(
        self, tx: str, now: datetime, hold_id: str, points: int
    ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        self.bring_up_to(now)
        hold = self.active_hold(hold_id)
        if points == 0:
            points = hold.points
        if points > hold.points:
            raise errors.CaptureExceedsHold("model")
        self.holds.pop(hold_id)
        self.closed_holds.add(hold_id)
        consumed, released = [], []
        for lot_id, n in hold.taken:
            c = min(n, points)
            points -= c
            self.lots[lot_id].held -= c
            if c:
                consumed.append((lot_id, c))
            if n - c:
                released.append((lot_id, n - c))
        self.come_back(released)
        self.redemptions[tx] = MRedemption([[i, n] for i, n in consumed])
        self.bring_up_to(now)
        return consumed, released

    def release(self, tx: str, now: datetime, hold_id: str) -> list[tuple[str, int]]:
        self.bring_up_to(now)
        self.active_hold(hold_id)
        returned = self.return_from_hold(hold_id)
        self.others.add(tx)
        self.bring_up_to(now)
        return returned

    def adjust(
        self, tx: str, now: datetime, points: int, earned_at: datetime, expires_at: datetime | None
    ) -> None:
        self.bring_up_to(now)
        if points > 0:
            self.open_lot(tx, points, earned_at, expires_at)
        else:
            if -points > self.available:
                raise errors.InsufficientPoints("model")
            self.take(-points)
        self.others.add(tx)
        self.bring_up_to(now)

    def reverse(self, tx: str, now: datetime, target: str, points: int) -> tuple[int, int]:
        self.bring_up_to(now)
        if target in self.earns:
            result = self.reverse_earn(target, points)
        elif target in self.redemptions:
            result = (self.reverse_redemption(target, points), 0)
        elif target in self.others:
            raise errors.TransactionNotReversible("model")
        else:
            raise errors.TransactionNotFound("model")
        self.others.add(tx)
        self.bring_up_to(now)  # points put back into an expired lot expire at once
        return result

    @staticmethod
    def amount(reversible: int, requested: int) -> int:
        if reversible == 0:
            raise errors.NothingLeftToReverse("model")
        if requested > reversible:
            raise errors.ReversalExceedsOriginal("model")
        return requested or reversible

    def reverse_earn(self, target: str, requested: int) -> tuple[int, int]:
        earn = self.earns[target]
        points = self.amount(earn.points - earn.reversed, requested)
        earn.reversed += points
        owed = points
        own = self.lots[target]
        # From the lot the earn opened ...
        n = min(own.remaining, owed)
        own.remaining -= n
        owed -= n
        # ... its expired points are gone already: nothing to claw back for them ...
        n = min(own.expired - own.expired_reversed, owed)
        own.expired_reversed += n
        owed -= n
        # ... then from other lots, and what is left becomes debt.
        for lot_id in self.spend_order():
            n = min(self.lots[lot_id].remaining, owed)
            self.lots[lot_id].remaining -= n
            owed -= n
            if n and lot_id != target:
                own.stood_in[lot_id] = own.stood_in.get(lot_id, 0) + n
        self.debt += owed
        if owed:
            self.debt_of[target] = self.debt_of.get(target, 0) + owed
        return points, owed

    def reverse_redemption(self, target: str, requested: int) -> int:
        redemption = self.redemptions[target]
        points = self.amount(redemption.reversible, requested)
        repaid = min(self.debt, points)
        self.debt -= repaid
        # Last consumed first: put back into the lots what did not repay debt ...
        self.pop_from_end(redemption, points - repaid, restore=True)
        # ... and count the debt repaid against the next ones.
        self.pop_from_end(redemption, repaid, restore=False)
        return points

    def pop_from_end(self, redemption: MRedemption, points: int, restore: bool) -> None:
        while points:
            entry = redemption.unreversed[-1]
            n = min(entry[1], points)
            if restore:
                self.credit(entry[0], n)
            else:
                self.repaid_by(entry[0], n)
            entry[1] -= n
            points -= n
            if entry[1] == 0:
                redemption.unreversed.pop()


# ---------------------------------------------------------------------------------------
# Events: the JSON round trip the application's event store makes, and totals by kind.
# ---------------------------------------------------------------------------------------


def make_mapper() -> Mapper[UUID]:
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DecimalAsStr())
    transcoder.register(DatetimeAsISO())
    transcoder.register(ProvenanceAsDict())
    for transcoding in account_transcodings():
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


@dataclass
class Totals:
    """Sums over the event log, for the points identities."""

    earned: int = 0
    adjusted_in: int = 0
    adjusted_out: int = 0
    redeemed: int = 0  # including captures
    expired: int = 0
    earn_reversed_clawed: int = 0  # reversed earn points, less those that had expired already
    redemption_reversed: int = 0
    debt_added: int = 0
    debt_repaid: int = 0
    # Points put into lots (opened, restored) and taken out of them (spent, expired, clawed).
    into_lots: int = 0
    out_of_lots: int = 0

    def add(self, event: Any) -> None:
        kind = type(event).__name__
        if kind == "PointsEarned":
            self.earned += event.points
            self.debt_repaid += event.debt_repaid
            self.into_lots += event.points - event.debt_repaid
        elif kind in ("PointsRedeemed", "HoldCaptured"):
            self.redeemed += sum(event.consumed.values())
            self.out_of_lots += sum(event.consumed.values())
        elif kind == "PointsAdjusted":
            if event.points > 0:
                self.adjusted_in += event.points
                self.debt_repaid += event.debt_repaid
                self.into_lots += event.points - event.debt_repaid
            else:
                assert sum(event.taken.values()) == -event.points
                self.adjusted_out += -event.points
                self.out_of_lots += -event.points
        elif kind == "EarnReversed":
            taken = sum(event.taken.values())
            assert taken + event.from_expired + event.debt_added == event.points
            self.earn_reversed_clawed += event.points - event.from_expired
            self.debt_added += event.debt_added
            self.out_of_lots += taken
        elif kind == "RedemptionReversed":
            assert sum(event.restored.values()) + event.debt_repaid == event.points
            self.redemption_reversed += event.points
            self.debt_repaid += event.debt_repaid
            self.into_lots += sum(event.restored.values())
        elif kind == "LotsExpired":
            assert all(n > 0 for n in event.lots.values())
            self.expired += sum(event.lots.values())
            self.out_of_lots += sum(event.lots.values())
        else:
            assert kind in ("MemberEnrolled", "PointsHeld", "HoldReleased", "HoldExpired"), kind
        if kind in ("HoldCaptured", "HoldReleased", "HoldExpired"):
            # Held points that repaid debt leave the lots for good.
            self.debt_repaid += event.debt_repaid
            self.out_of_lots += event.debt_repaid


def state_of(account: MemberAccount) -> dict[str, Any]:
    """Everything the aggregate knows, for before/after and replay comparisons."""
    state = {k: v for k, v in vars(account).items() if not k.startswith("_")}
    state["version"] = account.version
    # A cache, not a fact: a lower bound of the open lots' expiries, tightened by scans.
    earliest = state.pop("earliest_expiry")
    expiries = [
        lot.expires_at
        for lot in account.lots.values()
        if lot.remaining > 0 and lot.expires_at is not None
    ]
    assert earliest is None or not expiries or earliest <= min(expiries)
    assert expiries == [] or earliest is not None
    return state


# ---------------------------------------------------------------------------------------
# The state machine.
# ---------------------------------------------------------------------------------------

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

# When a lot expires: never, at a midnight some days from today (so that lots share expiry
# instants and the earn-time tie-break matters), or at an offset from now.
Expiry = tuple[str, timedelta] | None
EXPIRY: st.SearchStrategy[Expiry] = st.one_of(
    st.none(),
    st.tuples(st.just("midnight"), st.integers(-2, 6).map(lambda d: d * DAY)),
    st.tuples(st.just("now"), st.sampled_from([-HOUR, timedelta(0), HOUR, 12 * HOUR, 2 * DAY])),
)


class AccountMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.count = 0
        self.tier_window = 3 * DAY
        self.model = Model()
        self.mapper = make_mapper()
        self.stored: list[StoredEvent] = []
        self.totals = Totals()
        self.journal: dict[tuple[str, str], int] = {}  # (ledger account, unit) -> balance
        self.replayed: MemberAccount | None = None
        self.account = MemberAccount(
            program_id="prog",
            member_id="member",
            referrer_member_id="",
            provenance=self.provenance(),
        )
        self.record()

    # -- plumbing

    def provenance(self, occurred_at: datetime | None = None, reverses: str = "") -> Provenance:
        self.count += 1
        return Provenance(
            transaction_id=f"tx-{self.count:04d}",
            request_id=f"req-{self.count:04d}",
            occurred_at=occurred_at or self.now,
            order_ref=f"order-{self.count}",
            reverses_transaction_id=reverses,
        )

    def record(self) -> None:
        """Take the new events as the store would: encoded, then decoded for the replay."""
        new: list[DomainEventProtocol[UUID]] = []
        for pending in self.account.collect_events():
            stored = self.mapper.to_stored_event(pending)
            self.stored.append(stored)
            new.append(self.mapper.to_domain_event(stored))
        for decoded in new:
            self.totals.add(decoded)
            entries = journal.postings(decoded, "member", "CNY")
            assert type(decoded) in journal.NO_POSTINGS or entries, type(decoded)
            assert sum(p.amount for p in entries) == 0, entries  # each event balances
            for p in entries:
                key = (p.ledger_account, p.unit)
                self.journal[key] = self.journal.get(key, 0) + p.amount
        self.replayed = project_aggregate(self.replayed, new)

    def expires_at(self, expiry: Expiry) -> datetime | None:
        if expiry is None:
            return None
        base, offset = expiry
        if base == "midnight":
            return self.now.replace(hour=0, minute=0, second=0, microsecond=0) + offset
        return self.now + offset

    def peek(self) -> Model:
        """The model as the next command will see it, once brought up to now."""
        model = self.model.clone()
        model.bring_up_to(self.now)
        return model

    def execute(
        self,
        prov: Provenance,
        on_model: Callable[[Model], Any],
        on_account: Callable[[MemberAccount], Any],
    ) -> None:
        trial = self.model.clone()
        model_before = self.model.clone()
        expected_error: type[errors.DomainError] | None = None
        expected: Any = None
        try:
            expected = on_model(trial)
        except errors.DomainError as refusal:
            expected_error = type(refusal)

        before = copy.deepcopy(self.account)
        actual_error: type[errors.DomainError] | None = None
        actual: Any = None
        try:
            actual = on_account(self.account)
        except errors.DomainError as refusal:
            actual_error = type(refusal)

        assert actual_error is expected_error, (actual_error, expected_error)
        if actual_error is None:
            assert actual == expected, (actual, expected)
            self.model = trial
            self.record()
            return

        # Refused: the command recorded nothing of its own. At most it brought the account
        # up to now first, exactly as if the account had been brought up to now alone.
        pending = [type(e).__name__ for e in self.account.collect_events()]
        assert set(pending) <= BRING_UP_EVENTS, pending
        if pending:
            probe = copy.deepcopy(before)
            probe.bring_up_to(self.now, prov)
            assert [type(e).__name__ for e in probe.collect_events()] == pending
            assert state_of(self.account) == state_of(probe)
        else:
            assert state_of(self.account) == state_of(before)
        # The application discards the aggregate: so do we, and the model is untouched.
        self.account = before
        assert not self.account.collect_events()
        assert self.model == model_before

    # -- rules

    @rule(
        points=st.integers(1, 200),
        expiry=EXPIRY,
        backdate=st.sampled_from([timedelta(0), HOUR, DAY, 2 * DAY]),
        qualifying=st.booleans(),
    )
    def earn(self, points: int, expiry: Expiry, backdate: timedelta, qualifying: bool) -> None:
        prov = self.provenance(occurred_at=self.now - backdate)
        expires_at = self.expires_at(expiry)
        tx, now, earned_at = prov.transaction_id, self.now, prov.occurred_at
        window = self.tier_window
        until = earned_at + window if qualifying else None
        self.execute(
            prov,
            lambda m: m.earn(tx, now, points, earned_at, expires_at, qualifying, window),
            lambda a: a.earn(prov, now, points, 0, expires_at, until),
        )

    @rule(days=st.sampled_from([1, 3, 10]))
    def update_tier_window(self, days: int) -> None:
        """An UpdateProgram: earns recorded from now on count for the new window."""
        self.tier_window = timedelta(days=days)

    def draw_points(self, data: st.DataObject) -> int:
        """Mostly what can be spent, sometimes exactly all of it or one more."""
        available = self.peek().available
        return data.draw(
            st.one_of(
                st.integers(1, max(1, available)),
                st.sampled_from([max(1, available), available + 1]),
                st.integers(1, 400),
            ),
            label="points",
        )

    def draw_target(self, data: st.DataObject, likely: list[str], unlikely: list[str]) -> str:
        """Mostly one of `likely`, now and then one of `unlikely` (which is never empty)."""
        if likely and data.draw(st.integers(0, 4), label="pick") > 0:
            return data.draw(st.sampled_from(likely), label="target")
        return data.draw(st.sampled_from(unlikely), label="target")

    def has_lots(self) -> bool:
        return bool(self.model.lots)

    @precondition(has_lots)
    @rule(data=st.data())
    def redeem(self, data: st.DataObject) -> None:
        points = self.draw_points(data)
        prov = self.provenance()
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.redeem(tx, now, points),
            lambda a: list(a.redeem(prov, now, points).items()),
        )

    @precondition(has_lots)
    @rule(
        data=st.data(),
        ttl=st.sampled_from([timedelta(seconds=1), HOUR, DAY, 3 * DAY]),
    )
    def hold(self, data: st.DataObject, ttl: timedelta) -> None:
        points = self.draw_points(data)
        prov = self.provenance()
        tx, now = prov.transaction_id, self.now

        def on_account(a: MemberAccount) -> list[tuple[str, int]]:
            hold = a.hold(prov, now, points, ttl)
            assert hold.hold_id == tx
            assert hold.expires_at == now + ttl
            assert hold.points == points
            return list(hold.taken.items())

        self.execute(prov, lambda m: m.hold(tx, now, points, ttl), on_account)

    def any_holds(self) -> bool:
        return bool(self.model.holds or self.model.closed_holds)

    def draw_hold(self, data: st.DataObject) -> str:
        return self.draw_target(
            data, sorted(self.model.holds), [*sorted(self.model.closed_holds), "no-such-hold"]
        )

    @precondition(any_holds)
    @rule(data=st.data())
    def capture(self, data: st.DataObject) -> None:
        hold_id = self.draw_hold(data)
        size = self.model.holds[hold_id].points if hold_id in self.model.holds else 50
        points = data.draw(
            st.one_of(st.just(0), st.integers(1, size), st.sampled_from([size, size + 1])),
            label="points",
        )
        prov = self.provenance()
        tx, now = prov.transaction_id, self.now

        def on_account(a: MemberAccount) -> tuple[list[tuple[str, int]], ...]:
            consumed, released = a.capture_hold(prov, now, hold_id, points)
            return list(consumed.items()), list(released.items())

        self.execute(prov, lambda m: m.capture(tx, now, hold_id, points), on_account)

    @precondition(any_holds)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        hold_id = self.draw_hold(data)
        prov = self.provenance()
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.release(tx, now, hold_id),
            lambda a: list(a.release_hold(prov, now, hold_id).items()),
        )

    @rule(
        data=st.data(),
        credit=st.booleans(),
        expiry=EXPIRY,
    )
    def adjust(self, data: st.DataObject, credit: bool, expiry: Expiry) -> None:
        points = (
            data.draw(st.integers(1, 200), label="points") if credit else -self.draw_points(data)
        )
        prov = self.provenance()
        expires_at = self.expires_at(expiry)
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.adjust(tx, now, points, now, expires_at),
            lambda a: a.adjust(prov, now, points, expires_at),
        )

    @precondition(lambda self: bool(self.model.earns))
    @rule(data=st.data())
    def reverse_earn(self, data: st.DataObject) -> None:
        self.reverse(data, sorted(self.model.earns))

    @precondition(lambda self: bool(self.model.redemptions))
    @rule(data=st.data())
    def reverse_redemption(self, data: st.DataObject) -> None:
        """Of a Redeem or of a capture."""
        self.reverse(data, sorted(self.model.redemptions))

    @precondition(lambda self: bool(self.model.earns))
    @rule(data=st.data())
    def spend_all_then_refund_a_purchase(self, data: st.DataObject) -> None:
        """The road into debt: everything spent, then an earn reversed in full."""
        available = self.peek().available
        if available:
            prov = self.provenance()
            tx, now = prov.transaction_id, self.now
            self.execute(
                prov,
                lambda m: m.redeem(tx, now, available),
                lambda a: list(a.redeem(prov, now, available).items()),
            )
        target = data.draw(st.sampled_from(sorted(self.model.earns)), label="target")
        prov = self.provenance(reverses=target)
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.reverse(tx, now, target, 0),
            lambda a: points_and_debt(a.reverse(prov, now, target, 0)),
        )

    @precondition(lambda self: bool(self.model.earns))
    @rule(data=st.data(), holds=st.integers(2, 3))
    def overdue_holds_on_a_reversed_lot(self, data: st.DataObject, holds: int) -> None:
        """Several holds taken from one lot, its earn reversed while they are out, then all
        of them overdue at once: they come back through the lots that stood in for it."""
        for _ in range(holds):
            available = self.peek().available
            if not available:
                break
            points = data.draw(st.integers(1, max(1, available // holds)), label="held")
            ttl = data.draw(st.sampled_from([timedelta(seconds=1), HOUR]), label="ttl")
            self.place_hold(points, ttl)
        target = data.draw(st.sampled_from(sorted(self.model.earns)), label="target")
        prov = self.provenance(reverses=target)
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.reverse(tx, now, target, 0),
            lambda a: points_and_debt(a.reverse(prov, now, target, 0)),
        )
        self.now += data.draw(st.sampled_from([HOUR, 2 * HOUR, 2 * DAY]), label="later")

    def place_hold(self, points: int, ttl: timedelta) -> None:
        prov = self.provenance()
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.hold(tx, now, points, ttl),
            lambda a: list(a.hold(prov, now, points, ttl).taken.items()),
        )

    def reverse(self, data: st.DataObject, likely: list[str]) -> None:
        target = self.draw_target(data, likely, [*sorted(self.model.others), "no-such-transaction"])
        if target in self.model.earns:
            earn = self.model.earns[target]
            reversible = earn.points - earn.reversed
        elif target in self.model.redemptions:
            reversible = self.model.redemptions[target].reversible
        else:
            reversible = 10
        points = data.draw(
            st.one_of(
                st.just(0),
                st.integers(1, max(1, reversible)),
                st.sampled_from([max(1, reversible), reversible + 1]),
            ),
            label="points",
        )
        prov = self.provenance(reverses=target)
        tx, now = prov.transaction_id, self.now
        self.execute(
            prov,
            lambda m: m.reverse(tx, now, target, points),
            lambda a: points_and_debt(a.reverse(prov, now, target, points)),
        )

    @rule(
        step=st.sampled_from(
            [timedelta(seconds=1), HOUR, 6 * HOUR, DAY - HOUR, DAY, 3 * DAY, 10 * DAY]
        )
    )
    def advance_time(self, step: timedelta) -> None:
        self.now += step

    @rule(ago=st.sampled_from([timedelta(0), HOUR, DAY, 3 * DAY]))
    def expire_lots(self, ago: timedelta) -> None:
        """The sweep or RunExpiry, at an instant no later than now; twice expires nothing."""
        as_of = self.now - ago
        prov = Provenance(transaction_id=f"sweep-{self.count}", request_id="", occurred_at=as_of)
        self.count += 1
        expected = self.model.expire(as_of)
        due = self.account.expire_lots(as_of, prov)
        assert due == expected
        self.record()
        assert self.account.expire_lots(as_of, prov) == {}
        assert not self.account.collect_events()

    # -- invariants

    @invariant()
    def agrees_with_model(self) -> None:
        a, m = self.account, self.model
        assert (a.available, a.held, a.debt) == (m.available, m.held, m.debt)
        assert set(a.lots) == set(m.lots)
        for lot_id, lot in a.lots.items():
            expected = m.lots[lot_id]
            assert (lot.points, lot.remaining, lot.held, lot.expired, lot.expired_reversed) == (
                expected.points,
                expected.remaining,
                expected.held,
                expected.expired,
                expected.expired_reversed,
            ), lot_id
            assert (lot.earned_at, lot.expires_at) == (expected.earned_at, expected.expires_at)
        assert {h: (x.points, list(x.taken.items()), x.expires_at) for h, x in a.holds.items()} == {
            h: (x.points, x.taken, x.expires_at) for h, x in m.holds.items()
        }
        assert a.closed_hold_ids == m.closed_holds
        assert a.debt_of == m.debt_of
        assert a.debt == sum(a.debt_of.values())
        for lot_id, lot in a.lots.items():
            assert lot.in_lieu == m.lots[lot_id].stood_in, lot_id
        assert {k: (e.points, e.reversed) for k, e in a.earns.items()} == {
            k: (e.points, e.reversed) for k, e in m.earns.items()
        }
        assert {k: r.reversible for k, r in a.redemptions.items()} == {
            k: r.reversible for k, r in m.redemptions.items()
        }
        for at in (self.now, self.now + DAY, T0, self.now + 5 * DAY, self.now):
            assert a.qualifying_points(at) == m.qualifying_points(at)
        for tx in (*m.earns, *m.redemptions, *m.others):
            assert tx in a.earns or tx in a.redemptions or tx in a.other_transaction_ids
        assert "no-such-transaction" not in a.other_transaction_ids

    @invariant()
    def nothing_negative(self) -> None:
        a = self.account
        assert a.available >= 0
        assert a.held >= 0
        assert a.debt >= 0
        for lot in a.lots.values():
            assert lot.remaining >= 0
            assert lot.held >= 0
            assert lot.expired >= 0
            assert 0 <= lot.expired_reversed <= lot.expired
        for record in a.redemptions.values():
            assert all(0 <= record.reversed.get(i, 0) <= n for i, n in record.consumed.items())
        for earn in a.earns.values():
            assert 0 <= earn.reversed <= earn.points

    @invariant()
    def balances_add_up(self) -> None:
        a = self.account
        open_lots = a.open_lots()
        assert {lot.lot_id for lot in open_lots} == {
            i for i, lot in a.lots.items() if lot.remaining > 0
        }
        assert a.available == sum(lot.remaining for lot in open_lots)
        assert a.held == sum(h.points for h in a.holds.values())
        assert a.held == sum(lot.held for lot in a.lots.values())
        for hold in a.holds.values():
            assert hold.points == sum(hold.taken.values())

    @invariant()
    def points_identity(self) -> None:
        """What the events say came in and went out equals what the member has."""
        a, t = self.account, self.totals
        assert a.available + a.held == t.into_lots - t.out_of_lots
        assert a.debt == t.debt_added - t.debt_repaid
        assert a.available + a.held - a.debt == (
            t.earned
            + t.adjusted_in
            - t.adjusted_out
            - t.redeemed
            - t.expired
            - t.earn_reversed_clawed
            + t.redemption_reversed
        )

    @invariant()
    def the_journal_agrees_with_the_account(self) -> None:
        """Double entry: the postings of all events sum to zero, and the member's ledger
        accounts hold exactly what the account says."""
        a = self.account
        assert sum(self.journal.values()) == 0
        balance = self.journal.get
        assert balance((journal.member_points("member"), journal.POINTS), 0) == a.available
        assert balance((journal.member_points_held("member"), journal.POINTS), 0) == a.held
        assert balance((journal.member_points_debt("member"), journal.POINTS), 0) == -a.debt

    @invariant()
    def rebuilt_from_events(self) -> None:
        assert self.replayed is not None
        assert state_of(self.replayed) == state_of(self.account)

    @invariant()
    def restored_from_a_snapshot(self) -> None:
        # A snapshot through the JSON transcoder, then the account rebuilt from it alone.
        stored = self.mapper.to_stored_event(Snapshot.take(self.account))
        restored = project_aggregate(None, [self.mapper.to_domain_event(stored)])
        assert isinstance(restored, MemberAccount)
        assert state_of(restored) == state_of(self.account)

    def teardown(self) -> None:
        # And once more from nothing, from the stored events alone.
        events = [self.mapper.to_domain_event(s) for s in self.stored]
        rebuilt = project_aggregate(None, events)
        assert isinstance(rebuilt, MemberAccount)
        assert state_of(rebuilt) == state_of(self.account)


# How many examples, and whether seeds are fixed, comes from the hypothesis profile
# (tests/conftest.py: `ci` derandomized, `hunt` random and many).
AccountMachine.TestCase.settings = settings(
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAccountModel = AccountMachine.TestCase


def points_and_debt(done: Reversal) -> tuple[int, int]:
    return done.points_reversed, done.debt_added
