"""Finance's reports through ReportService on both backends (docs/reports.md): liabilities
equal the members' balances and the stores of issue add up to them; movements tie (opening +
lines = closing) and meet the liabilities at their bounds, for bounds inside a day between
two postings, whole days, empty periods and the whole history, and equal the lines worked out
from the raw postings of the period; settlement between stores; every bad input.

The history is built so that every line of every report moves: points earned, redeemed,
held, expired at once (an earn dated past its expiry), reversed into debt and repaid,
converted to bonus, adjusted; stored value topped up at two stores, spent at others, refunded
at a third store, cashed out under DEDUCT_SPENT_BONUS. Member and store ids hold ':' (a
member id ending like an account kind, too), which the reports must parse right.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.journal_queries import JournalDoesNotTie, JournalQueries
from ledger.journal_queries import Movements as Lines
from ledger.queries import from_micros
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import report_pb2 as rpb
from ledger.v1 import report_pb2_grpc
from projections.journal import control_account, local_day, next_day
from tests.support import Client, new_id, open_tally, refused, ts

RATE = pb.PointsConversion(points=10, value_minor=100)
DEDUCT = pb.CASH_OUT_POLICY_DEDUCT_SPENT_BONUS
A, B, C, D = "mall:A", "B", "C:1", "D"
LINES = [f.name for f in rpb.Movements.DESCRIPTOR.fields]
MICRO = timedelta(microseconds=1)


def reports(client: Client) -> report_pb2_grpc.ReportServiceStub:
    return report_pb2_grpc.ReportServiceStub(client.channel)


@dataclass
class History:
    program: str
    members: list[str]
    last: int  # the log position of its last command


def build_history(client: Client, time_zone: str = "UTC") -> History:
    program = client.create_program(
        point_value_minor=2, points_conversion=RATE, cash_out_policy=DEDUCT, time_zone=time_zone
    )
    alice = client.enroll(program, f"{new_id('alice')}:cash")  # its kind is `points` & co.
    bob = client.enroll(program, new_id("bob"))
    client.earn(program, alice, 500, store_id=A)
    bobs = client.earn(program, bob, 200, store_id=B)
    client.redeem(program, alice, 100, store_id=B)
    held = client.hold(program, bob, 50)
    late = client.earn(  # expires as it is earned
        program, alice, 30, store_id=A, expires_at=ts(datetime.now(UTC) - timedelta(days=1))
    )
    client.reverse(program, alice, late.transaction_id, store_id=B)  # undoes that expiry
    topped = client.top_up(program, alice, 1000, bonus_minor=100, store_id=A)
    spent = client.spend(program, alice, 550, store_id=B)  # 500 cash, 50 bonus
    client.refund(program, alice, spent.transaction_id, 110, store_id=C)  # 100 cash, 10 bonus
    client.convert(program, alice, 100, store_id=D)  # 1000 of bonus
    client.top_up(program, bob, 300, bonus_minor=0, store_id=B)
    client.spend(program, bob, 300, store_id=A)
    client.refund(program, alice, topped.transaction_id, store_id=A)  # cash-out
    client.reverse(program, bob, bobs.transaction_id, store_id=B)  # 150 back, 50 into debt
    client.release(program, bob, held.hold_id)  # the held 50 repay the debt
    last = client.adjust(program, alice, 5)
    return History(program, [alice, bob], last.position)


def postings(client: Client, program: str, min_position: int = 0) -> list[rpb.Posting]:
    found, token = [], ""
    while True:
        page = reports(client).ListPostings(
            rpb.ListPostingsRequest(
                program_id=program, page_size=1000, page_token=token, min_position=min_position
            )
        )
        found.extend(page.postings)
        token = page.next_page_token
        if not token:
            return found


def moment(t: Timestamp) -> datetime:
    return t.ToDatetime(tzinfo=UTC)


def liabilities(client: Client, program: str, as_of: datetime | None = None, **f: Any) -> Any:
    if as_of is not None:
        f["as_of"] = ts(as_of)
    return reports(client).GetLiabilities(rpb.GetLiabilitiesRequest(program_id=program, **f))


def movements(
    client: Client, program: str, since: datetime | None, until: datetime | None
) -> rpb.GetMovementsResponse:
    request = rpb.GetMovementsRequest(program_id=program)
    if since is not None:
        request.since.CopyFrom(ts(since))
    if until is not None:
        request.until.CopyFrom(ts(until))
    got: rpb.GetMovementsResponse = reports(client).GetMovements(request)
    return got


def settlement(
    client: Client, program: str, since: datetime | None = None, until: datetime | None = None
) -> rpb.GetSettlementResponse:
    request = rpb.GetSettlementRequest(program_id=program)
    if since is not None:
        request.since.CopyFrom(ts(since))
    if until is not None:
        request.until.CopyFrom(ts(until))
    got: rpb.GetSettlementResponse = reports(client).GetSettlement(request)
    return got


def lines(m: rpb.Movements) -> dict[str, int]:
    return {name: getattr(m, name) for name in LINES}


def kind(account: str) -> str:
    return account.rsplit(":", 1)[1]


def expected_lines(period: list[rpb.Posting], currency: str) -> dict[str, dict[str, int]]:
    """The movement lines worked out from the raw postings of a period (docs/reports.md),
    without the opening and closing balances."""

    def total(unit: str, scope: str, name: str, sign: Callable[[int], bool]) -> int:
        return sum(
            p.amount
            for p in period
            if p.unit == unit
            and p.ledger_account.startswith(f"{scope}:")
            and kind(p.ledger_account) == name
            and sign(p.amount)
        )

    def net(unit: str, scope: str, name: str) -> int:
        return total(unit, scope, name, lambda _: True)

    def debit(unit: str, scope: str, name: str) -> int:
        return -total(unit, scope, name, lambda a: a < 0)

    def credit(unit: str, scope: str, name: str) -> int:
        return total(unit, scope, name, lambda a: a > 0)

    zero = dict.fromkeys(LINES[1:-1], 0)
    pts, cur = "points", currency
    return {
        "points": zero
        | {
            "issued": debit(pts, "store", "points_issued"),
            "reversed": -credit(pts, "store", "points_issued"),
            "redeemed": -net(pts, "store", "points_redeemed"),
            "converted": -net(pts, "store", "points_converted"),
            "expired": -net(pts, "program", "points_expired"),
            "adjusted": -net(pts, "program", "points_adjusted"),
            "debt_settled": -net(pts, "member", "points_debt"),
        },
        "cash": zero
        | {
            "issued": -net(cur, "store", "cash_received"),
            "redeemed": -credit(cur, "store", "cash_spent"),
            "refunded": debit(cur, "store", "cash_spent"),
            "cashed_out": -net(cur, "store", "cash_paid_out"),
            "withheld": -net(cur, "store", "cash_withheld"),
        },
        "bonus": zero
        | {
            "issued": -net(cur, "store", "bonus_granted"),
            "converted": -net(cur, "store", "bonus_converted"),
            "redeemed": -credit(cur, "store", "bonus_spent"),
            "refunded": debit(cur, "store", "bonus_spent"),
            "forfeited": -net(cur, "store", "bonus_forfeited"),
        },
    }


def balances_at(got: Any) -> dict[str, int]:
    """GetLiabilities' figures as the three balances movements open and close with."""
    return {
        "points": got.points_outstanding,
        "cash": got.stored_value_cash_minor,
        "bonus": got.stored_value_bonus_minor,
    }


def check_period(
    client: Client,
    h: History,
    journal: list[rpb.Posting],
    since: datetime | None,
    until: datetime | None,
) -> rpb.GetMovementsResponse:
    """Movements over (since, until] tie, open and close at the liabilities of their
    bounds, and have the lines of the postings recorded in the period."""
    got = movements(client, h.program, since, until)
    opening = balances_at(liabilities(client, h.program, since)) if since else None
    closing = balances_at(liabilities(client, h.program, until))
    inside = [
        p
        for p in journal
        if (since is None or moment(p.recorded_at) > since)
        and (until is None or moment(p.recorded_at) <= until)
    ]
    worked_out = expected_lines(inside, "EUR")
    for name in ("points", "cash", "bonus"):
        m = lines(getattr(got, name))
        movement = sum(v for line, v in m.items() if line not in ("opening", "closing"))
        assert m["opening"] + movement == m["closing"], (name, m)
        assert m["opening"] == (opening[name] if opening else 0), (name, since)
        assert m["closing"] == closing[name], (name, until)
        assert {k: v for k, v in m.items() if k not in ("opening", "closing")} == worked_out[
            name
        ], (name, since, until)
    return got


# ---------------------------------------------------------------------- days and part-days


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sums_at_the_edges_of_local_days(backend: str) -> None:
    """Postings exactly at a local midnight and a microsecond before, around a day of 23
    hours (Europe/Berlin's spring change), written as the journal writes them: every moment
    counts what was recorded at or before it, whether from whole days or the part-day."""
    zone = ZoneInfo("Europe/Berlin")
    start = local_day(datetime(2024, 3, 31, 12, tzinfo=zone), zone)  # a 23-hour day
    following = next_day(start, zone)
    assert following - start == 23 * 3600 * 1_000_000
    amounts = {start - 1: 1, start: 20, start + 5 * 3600 * 1_000_000: 300, following: 4000}
    with open_tally(backend) as tally:
        with tally.database.transaction() as cur:
            cur.execute(
                "INSERT INTO projection_tracking (name, position) VALUES ('journal', 4)"
                " ON CONFLICT (name) DO UPDATE SET position = 4"
            )
            cur.execute("INSERT INTO rm_journal_programs VALUES ('edge', 'EUR', 'Europe/Berlin')")
            for position, (recorded, amount) in enumerate(amounts.items(), 1):
                day = local_day(from_micros(recorded), zone)
                for seq, (account, signed) in enumerate(
                    [("member:m:cash", amount), ("store:s:cash_received", -amount)]
                ):
                    cur.execute(
                        "INSERT INTO rm_postings VALUES"
                        " ('edge', ?, ?, 't', ?, 'EUR', ?, ?, ?, 's')",
                        (position, seq, account, signed, recorded, recorded),
                    )
                    cur.execute(
                        "INSERT INTO rm_journal_daily VALUES ('edge', ?, ?, 'EUR', 's', ?, ?, 1)"
                        " ON CONFLICT (program_id, day, ledger_account, unit, store_id) DO UPDATE"
                        " SET debit = rm_journal_daily.debit + excluded.debit,"
                        " credit = rm_journal_daily.credit + excluded.credit",
                        (day, control_account(account), max(-signed, 0), max(signed, 0)),
                    )
        queries = JournalQueries(tally.database)

        def cash(at: int | None) -> int:
            moment_ = None if at is None else from_micros(at)
            return queries.liabilities("edge", "EUR", 0, moment_).stored_value_cash_minor

        five = start + 5 * 3600 * 1_000_000
        assert [cash(t) for t in (start - 2, start - 1, start, five - 1, five)] == [
            0,
            1,
            21,
            21,
            321,
        ]
        assert [cash(t) for t in (following - 1, following, following + 1, None)] == [
            321,
            4321,
            4321,
            4321,
        ]
        period = queries.movements("edge", "EUR", from_micros(start - 1), from_micros(following))
        assert (period.cash.opening, period.cash.issued, period.cash.closing) == (1, 4320, 4321)
        assert queries.sums("edge", None)[0] == 4

        # A kind of member account the part-day's SQL does not know is collapsed all the same.
        with tally.database.transaction() as cur:
            cur.execute(
                "INSERT INTO rm_postings VALUES ('edge', 5, 0, 't', 'member:m:x:gift', 'EUR', 7,"
                " ?, ?, 's')",
                (five + 1, five + 1),
            )
        rows = queries.trial_balance("edge", from_micros(five + 1)).rows
        assert [(r.ledger_account, r.credit) for r in rows if "gift" in r.ledger_account] == [
            ("member:*:gift", 7)
        ]


# ---------------------------------------------------------------------- liabilities


def test_liabilities_are_the_members_balances_and_the_stores_add_up(client: Client) -> None:
    h = build_history(client)
    got = liabilities(client, h.program, group_by_store=True, min_position=h.last)
    assert got.position >= h.last
    accounts = [client.account(h.program, m, min_position=h.last) for m in h.members]
    assert got.points_outstanding == sum(a.points_available + a.points_held for a in accounts)
    assert got.points_debt == sum(a.points_debt for a in accounts)
    assert got.points_value_minor == got.points_outstanding * 2
    assert got.point_value_minor == 2
    assert got.stored_value_cash_minor == sum(a.stored_value_cash_minor for a in accounts)
    assert got.stored_value_bonus_minor == sum(a.stored_value_bonus_minor for a in accounts)
    assert got.currency == "EUR"
    stores = {s.store_id: (s.stored_value_cash_minor, s.stored_value_bonus_minor) for s in got.rows}
    assert sum(c for c, _ in stores.values()) == got.stored_value_cash_minor
    assert sum(b for _, b in stores.values()) == got.stored_value_bonus_minor
    # A: 1000 + 100 sold, 500 + 50 spent at B, 100 + 10 refunded at C, all the rest cashed
    # out (560 paid, 40 withheld, 60 forfeited). B: 300 sold, spent at A. D: 1000 of bonus
    # converted, of which nothing spent yet (alice's A lot went first, then was cashed out).
    assert stores == {D: (0, 1000)}
    by_hand = (got.points_outstanding, got.points_debt, got.stored_value_cash_minor)
    # alice 500 - 100 - 100 converted + 5; bob 200 - 50 held - 150 reversed, debt repaid.
    assert by_hand == (305, 0, 0)

    plain = liabilities(client, h.program)  # not grouped: no rows, the same totals
    assert list(plain.rows) == []
    assert balances_at(plain) == balances_at(got)


def test_liabilities_by_store_while_stored_value_is_outstanding(client: Client) -> None:
    program, alice = client.member()
    bob = client.enroll(program)
    client.top_up(program, alice, 1000, bonus_minor=100, store_id=A)
    client.top_up(program, bob, 400, bonus_minor=40, store_id=B)
    client.spend(program, alice, 220, store_id=B)  # 200 cash, 20 bonus of A's
    last = client.spend(program, bob, 110, store_id=A)  # 100 cash, 10 bonus of B's
    got = liabilities(client, program, group_by_store=True, min_position=last.position)
    stores = {s.store_id: (s.stored_value_cash_minor, s.stored_value_bonus_minor) for s in got.rows}
    assert stores == {A: (800, 80), B: (300, 30)}
    assert (got.stored_value_cash_minor, got.stored_value_bonus_minor) == (1100, 110)


def test_liabilities_as_of_a_moment_inside_the_history(client: Client) -> None:
    h = build_history(client)
    journal = postings(client, h.program, h.last)
    at = moment(journal[len(journal) // 2].recorded_at)
    before = [p for p in journal if moment(p.recorded_at) <= at]
    got = liabilities(client, h.program, at, group_by_store=True)

    def member_sum(name: str, unit: str) -> int:
        return sum(
            p.amount
            for p in before
            if p.ledger_account.startswith("member:")
            and kind(p.ledger_account) == name
            and p.unit == unit
        )

    assert got.points_outstanding == member_sum("points", "points") + member_sum(
        "points_held", "points"
    )
    assert got.points_debt == -member_sum("points_debt", "points")
    assert got.stored_value_cash_minor == member_sum("cash", "EUR")
    assert got.stored_value_bonus_minor == member_sum("bonus", "EUR")
    assert sum(s.stored_value_cash_minor for s in got.rows) == got.stored_value_cash_minor
    assert sum(s.stored_value_bonus_minor for s in got.rows) == got.stored_value_bonus_minor
    nothing = liabilities(client, h.program, moment(journal[0].recorded_at) - MICRO)
    assert balances_at(nothing) == {"points": 0, "cash": 0, "bonus": 0}


def test_min_position_is_honoured(client: Client) -> None:
    """The journal is lazy (it looks every 0.25 s): without waiting for min_position, a
    report right after a write would miss it."""
    program, alice = client.member()
    for i in range(5):
        last = client.top_up(program, alice, 100 + i, bonus_minor=0, store_id=A)
        got = liabilities(client, program, min_position=last.position)
        assert got.position >= last.position
        assert got.stored_value_cash_minor == sum(100 + j for j in range(i + 1))


# ---------------------------------------------------------------------- movements


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_movements_tie_and_meet_the_liabilities_at_their_bounds(client: Client, zone: str) -> None:
    h = build_history(client, time_zone=zone)
    journal = postings(client, h.program, h.last)
    times = sorted({moment(p.recorded_at) for p in journal})
    assert len(times) >= 10
    first, third, middle, last = times[0], times[2], times[len(times) // 2], times[-1]
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    whole = check_period(client, h, journal, None, None)
    for t in times:  # a bound at every posting: each transaction is some period's last
        check_period(client, h, journal, None, t)
        check_period(client, h, journal, t, None)
    # Bounds inside the day, each exactly at a posting (which the period then excludes at
    # since, includes at until), and between postings; whole days (tomorrow: only day sums).
    for since, until in [
        (None, middle),
        (middle, None),
        (third, middle),
        (third + MICRO, middle - MICRO),
        (first - MICRO, last),
        (first - timedelta(days=3), tomorrow),
        (middle, tomorrow + timedelta(days=2)),
        (None, tomorrow),
    ]:
        check_period(client, h, journal, since, until)

    assert lines(whole.points) == {
        "opening": 0,
        "issued": 730,  # 500 + 200 + 30
        "reversed": -230,  # alice's 30 and bob's 200
        "redeemed": -100,
        "converted": -100,
        "expired": 0,  # 30 expired, then that expiry undone by the earn's reversal
        "adjusted": 5,
        "debt_settled": 0,  # 50 into debt, repaid by the released hold
        "refunded": 0,
        "cashed_out": 0,
        "withheld": 0,
        "forfeited": 0,
        "closing": 305,
    }
    assert lines(whole.cash) == {
        **dict.fromkeys(LINES, 0),
        "issued": 1300,
        "redeemed": -800,
        "refunded": 100,
        "cashed_out": -560,
        "withheld": -40,
    }
    assert lines(whole.bonus) == {
        **dict.fromkeys(LINES, 0),
        "issued": 100,
        "converted": 1000,
        "redeemed": -50,
        "refunded": 10,
        "forfeited": -60,
        "closing": 1000,
    }
    assert whole.currency == "EUR"


def test_an_empty_period_has_no_movements(client: Client) -> None:
    h = build_history(client)
    journal = postings(client, h.program, h.last)
    times = sorted({moment(p.recorded_at) for p in journal})
    gap = next(
        (a, b) for a, b in itertools.pairwise(times) if b - a > 2 * MICRO
    )  # two postings with room between them
    now = datetime.now(UTC)
    for since, until in [
        (gap[0], gap[1] - MICRO),  # after one posting, before the next
        (now + timedelta(hours=1), now + timedelta(hours=2)),  # not yet
        (datetime(2001, 1, 1, tzinfo=UTC), datetime(2001, 1, 2, tzinfo=UTC)),  # long before
    ]:
        got = check_period(client, h, journal, since, until)
        for name in ("points", "cash", "bonus"):
            m = lines(getattr(got, name))
            assert m["opening"] == m["closing"]
            assert [v for k, v in m.items() if k not in ("opening", "closing")] == [0] * 11


def test_movements_that_do_not_tie_are_refused() -> None:
    """The server's own check (INTERNAL if ever the journal disagrees with itself)."""
    Lines(opening=10, issued=5, redeemed=-3, closing=12).check("points")
    with pytest.raises(JournalDoesNotTie, match="points movements do not tie"):
        Lines(opening=10, issued=5, redeemed=-3, closing=13).check("points")


# ---------------------------------------------------------------------- settlement


def settled(r: rpb.SettlementRow) -> tuple[str, str, int, int]:
    return r.issuing_store_id, r.redeeming_store_id, r.cash_minor, r.bonus_minor


def test_settlement_follows_the_money_across_stores(client: Client) -> None:
    program, alice = client.member()
    bob = client.enroll(program)
    client.top_up(program, alice, 1000, bonus_minor=100, store_id=A)
    spent = client.spend(program, alice, 550, store_id=B)  # A's 500 cash, 50 bonus
    client.refund(program, alice, spent.transaction_id, 110, store_id=C)  # 100, 10 back at C
    client.spend(program, alice, 110, store_id=A)  # at its own store of issue: not settled
    client.top_up(program, bob, 300, bonus_minor=0, store_id=B)
    last = client.spend(program, bob, 300, store_id=A)
    reports(client).GetTrialBalance(
        rpb.GetTrialBalanceRequest(program_id=program, min_position=last.position)
    )
    got = settlement(client, program)
    assert [settled(r) for r in got.rows] == [  # by issuing store, then redeeming store
        (B, A, 300, 0),
        (A, B, 500, 50),
        (A, C, -100, -10),
    ]
    assert [
        (n.debtor_store_id, n.creditor_store_id, n.cash_minor, n.bonus_minor) for n in got.net
    ] == [
        (A, B, 200, 50),  # A holds 500 + 50 that B took, B holds 300 that A took
        (C, A, 100, 10),  # C put 100 + 10 of A's back on the card
    ]
    assert (got.total_cash_minor, got.total_bonus_minor) == (700, 40)
    assert (got.spent_cash_minor, got.spent_bonus_minor) == (800, 50)
    assert got.currency == "EUR"
    assert got.position >= last.position

    whole = movements(client, program, None, None)
    assert got.spent_cash_minor == -(whole.cash.redeemed + whole.cash.refunded)
    assert got.spent_bonus_minor == -(whole.bonus.redeemed + whole.bonus.refunded)

    # A period that starts after the first spend leaves it out.
    journal = postings(client, program)
    refund_time = max(moment(p.recorded_at) for p in journal if p.store_id == C and p.unit == "EUR")
    later = settlement(client, program, since=refund_time - MICRO)
    assert {(r.issuing_store_id, r.redeeming_store_id) for r in later.rows} == {(B, A), (A, C)}
    assert [settled(r) for r in settlement(client, program, since=refund_time).rows] == [
        (B, A, 300, 0)
    ]
    assert [settled(r) for r in settlement(client, program, until=refund_time - MICRO).rows] == [
        (A, B, 500, 50)
    ]


def test_netting_is_oriented_by_cash_and_bonus_together(client: Client) -> None:
    program, alice = client.member()
    bob = client.enroll(program)
    client.top_up(program, alice, 100, bonus_minor=1000, store_id=A)
    client.spend(program, alice, 1100, store_id=B)  # A's 100 cash, 1000 bonus taken at B
    client.top_up(program, bob, 500, bonus_minor=0, store_id=B)
    last = client.spend(program, bob, 500, store_id=A)  # B's 500 cash taken at A
    reports(client).GetTrialBalance(
        rpb.GetTrialBalanceRequest(program_id=program, min_position=last.position)
    )
    got = settlement(client, program)
    assert [settled(r) for r in got.rows] == [(B, A, 500, 0), (A, B, 100, 1000)]
    # A owes B 600 in all: 1000 of bonus, less the 400 of cash B owes A.
    assert [
        (n.debtor_store_id, n.creditor_store_id, n.cash_minor, n.bonus_minor) for n in got.net
    ] == [(A, B, -400, 1000)]


# ---------------------------------------------------------------------- bad input

REQUESTS: dict[str, Any] = {
    "GetTrialBalance": rpb.GetTrialBalanceRequest,
    "GetLiabilities": rpb.GetLiabilitiesRequest,
    "GetMovements": rpb.GetMovementsRequest,
    "GetSettlement": rpb.GetSettlementRequest,
}
PERIODS = ("GetMovements", "GetSettlement")
BAD_NANOS = Timestamp(seconds=1, nanos=-1)
TOO_LATE = Timestamp(seconds=253402300800)  # 10000-01-01
NOW = Timestamp(seconds=1_700_000_000)
LATER = Timestamp(seconds=1_700_000_001)


def bad_inputs() -> list[tuple[str, dict[str, Any], str]]:
    cases: list[tuple[str, dict[str, Any], str]] = []
    for rpc in REQUESTS:
        cases += [
            (rpc, {"program_id": "bad id"}, "program_id"),
            (rpc, {"program_id": ""}, "program_id"),
            (rpc, {"program_id": "x" * 65}, "program_id"),
            (rpc, {"min_position": -1}, "min_position"),
        ]
        times = ("since", "until") if rpc in PERIODS else ("as_of",)
        for name in times:
            cases += [(rpc, {name: BAD_NANOS}, name), (rpc, {name: TOO_LATE}, name)]
    for rpc in PERIODS:
        cases += [
            (rpc, {"since": NOW, "until": NOW}, "until"),
            (rpc, {"since": LATER, "until": NOW}, "until"),
        ]
    return cases


@pytest.mark.parametrize(("rpc", "fields", "field"), bad_inputs())
def test_bad_input_is_invalid_argument_naming_the_field(
    client: Client, rpc: str, fields: dict[str, Any], field: str
) -> None:
    program = client.create_program()
    request = REQUESTS[rpc](**{"program_id": program, **fields})
    problem = refused(lambda: getattr(reports(client), rpc)(request, timeout=10))
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in problem.fields, problem.fields


def test_every_bad_field_is_named_at_once(client: Client) -> None:
    request = rpb.GetMovementsRequest(
        program_id="bad id", min_position=-1, since=BAD_NANOS, until=TOO_LATE
    )
    problem = refused(lambda: reports(client).GetMovements(request, timeout=10))
    assert set(problem.fields) == {"program_id", "min_position", "since", "until"}


@pytest.mark.parametrize("rpc", [*REQUESTS, "ListPostings"])
def test_an_unknown_programme_is_not_found(client: Client, rpc: str) -> None:
    request = (REQUESTS.get(rpc) or rpb.ListPostingsRequest)(program_id=new_id("nosuch"))
    problem = refused(lambda: getattr(reports(client), rpc)(request, timeout=10))
    assert (problem.code, problem.reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")


@pytest.mark.parametrize("rpc", list(REQUESTS))
def test_a_position_the_journal_has_not_reached_is_waited_for(client: Client, rpc: str) -> None:
    program = client.create_program()
    request = REQUESTS[rpc](program_id=program, min_position=2**62)
    problem = refused(lambda: getattr(reports(client), rpc)(request, timeout=0.5))
    assert problem.code == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_the_extreme_times_are_accepted_in_any_zone(client: Client, zone: str) -> None:
    """1970-01-01 and 9999-12-31 (UTC), the API's bounds, fall on other local days in
    zones far from UTC: still whole days the journal can name."""
    program, member = client.member(time_zone=zone)
    last = client.top_up(program, member, 100, bonus_minor=0, store_id=A)
    first, end = datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)
    assert balances_at(liabilities(client, program, first, min_position=last.position)) == {
        "points": 0,
        "cash": 0,
        "bonus": 0,
    }
    assert liabilities(client, program, end).stored_value_cash_minor == 100
    assert movements(client, program, first, end).cash.issued == 100
    assert settlement(client, program, first, end).spent_cash_minor == 0
