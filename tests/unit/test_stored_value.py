"""Properties of stored value's pure functions (ledger/domain/stored_value.py): how a spend
splits, how lots are drawn, what a refund restores and where to, what a cash-out does.

The rules are those of decision 15; the account state machine (test_account_model.py)
checks the same rules through the aggregate, these check the functions on their own over a
wider range of numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.program import CashOutPolicy, StoredValueSplit
from ledger.domain.stored_value import (
    SpendRecord,
    ValueLot,
    cash_out,
    draw,
    refund_split,
    restore,
    split_spend,
    withheld_to_return,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MONEY = st.integers(0, 10**12)
POLICIES = st.sampled_from(StoredValueSplit)


@st.composite
def balances_and_amount(draw_: st.DrawFn) -> tuple[int, int, int]:
    """(cash, bonus, amount) with 0 <= amount <= cash + bonus, often at the edges."""
    cash = draw_(st.one_of(st.just(0), st.integers(0, 50), MONEY))
    bonus = draw_(st.one_of(st.just(0), st.integers(0, 50), MONEY))
    total = cash + bonus
    amount = draw_(
        st.one_of(st.integers(0, total), st.sampled_from([0, total, min(1, total), cash, bonus]))
    )
    return cash, bonus, amount


# ----------------------------------------------------------------------- split_spend


@given(balances_and_amount(), POLICIES)
def test_a_split_sums_to_the_amount_and_each_part_is_within_its_balance(
    case: tuple[int, int, int], policy: StoredValueSplit
) -> None:
    cash, bonus, amount = case
    if cash + bonus == 0:
        return  # nothing to spend from (the account refuses any positive amount)
    from_cash, from_bonus = split_spend(amount, cash, bonus, policy)
    assert from_cash + from_bonus == amount
    assert 0 <= from_cash <= cash
    assert 0 <= from_bonus <= bonus
    # Deterministic: the same inputs give the same split.
    assert split_spend(amount, cash, bonus, policy) == (from_cash, from_bonus)


@given(balances_and_amount())
def test_proportional_rounds_the_cash_part_down_so_the_remainder_goes_to_bonus(
    case: tuple[int, int, int],
) -> None:
    cash, bonus, amount = case
    if cash + bonus == 0:
        return
    from_cash, from_bonus = split_spend(amount, cash, bonus, StoredValueSplit.PROPORTIONAL)
    exact_cash = Fraction(amount * cash, cash + bonus)
    exact_bonus = Fraction(amount * bonus, cash + bonus)
    # The cash part is the exact share rounded down, the bonus part rounded up: never the
    # other way, whatever the numbers.
    assert from_cash <= exact_cash < from_cash + 1
    assert from_bonus - 1 < exact_bonus <= from_bonus


@given(balances_and_amount())
def test_cash_first_and_bonus_first_take_all_they_can_from_one_side(
    case: tuple[int, int, int],
) -> None:
    cash, bonus, amount = case
    if cash + bonus == 0:
        return
    assert split_spend(amount, cash, bonus, StoredValueSplit.CASH_FIRST) == (
        min(amount, cash),
        amount - min(amount, cash),
    )
    assert split_spend(amount, cash, bonus, StoredValueSplit.BONUS_FIRST) == (
        amount - min(amount, bonus),
        min(amount, bonus),
    )


# ----------------------------------------------------------------------- draw


def value_lot(i: int, cash: int, bonus: int) -> ValueLot:
    return ValueLot(f"lot-{i}", "s1", T0, i, cash, bonus, cash, bonus)


@given(
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)), min_size=1, max_size=6),
    st.booleans(),
    st.data(),
)
def test_draw_takes_from_the_lots_in_the_order_given(
    held: list[tuple[int, int]], cash: bool, data: st.DataObject
) -> None:
    lots = [value_lot(i, c, b) for i, (c, b) in enumerate(held)]
    left = [lot.cash_remaining if cash else lot.bonus_remaining for lot in lots]
    amount = data.draw(st.integers(0, sum(left)), label="amount")
    drawn = draw(lots, amount, cash=cash)
    assert sum(drawn.values()) == amount
    assert all(n > 0 for n in drawn.values())
    # The order of the lots, each taken in full before the next is touched.
    taken = [drawn.get(lot.lot_id, 0) for lot in lots]
    assert list(drawn) == [lot.lot_id for lot, n in zip(lots, taken, strict=True) if n]
    for i, n in enumerate(taken):
        assert n <= left[i]
        if any(taken[i + 1 :]):
            assert n == left[i]


# ----------------------------------------------------------------------- refund_split


@st.composite
def spend_and_refunds(draw_: st.DrawFn) -> tuple[int, int, list[int]]:
    """A spend's (cash, bonus) and refunds of random sizes that add up to at most all of
    it (often exactly all), in a random order."""
    cash = draw_(st.one_of(st.integers(0, 30), MONEY))
    bonus = draw_(st.one_of(st.integers(0, 30), MONEY))
    total = cash + bonus
    if total == 0:
        cash = 1
        total = 1
    cuts = draw_(st.lists(st.integers(0, total), max_size=6))
    bounds = sorted({0, total, *cuts})
    pieces = [b - a for a, b in pairwise(bounds)]
    pieces = draw_(st.permutations(pieces))
    if draw_(st.booleans()) and len(pieces) > 1:
        pieces = pieces[:-1]  # not all of it
    return cash, total - cash, pieces


def record_of(cash: int, bonus: int) -> SpendRecord:
    return SpendRecord(cash, bonus, {"lot": cash} if cash else {}, {"lot": bonus} if bonus else {})


@given(spend_and_refunds())
def test_partial_refunds_in_any_order_of_sizes_add_up_to_the_split(
    case: tuple[int, int, list[int]],
) -> None:
    cash, bonus, pieces = case
    record = record_of(cash, bonus)
    for piece in pieces:
        back_cash, back_bonus = refund_split(record, piece)
        assert back_cash + back_bonus == piece
        assert back_cash >= 0
        assert back_bonus >= 0
        record.cash_refunded += back_cash
        record.bonus_refunded += back_bonus
        assert record.cash_refunded <= cash
        assert record.bonus_refunded <= bonus
        # Pro rata on the cumulative total: the cash back so far is the exact share of
        # what was refunded so far, rounded down.
        refunded = record.cash_refunded + record.bonus_refunded
        assert record.cash_refunded == cash * refunded // (cash + bonus)
    if sum(pieces) == cash + bonus:
        assert (record.cash_refunded, record.bonus_refunded) == (cash, bonus)
        assert record.refundable == 0


@given(spend_and_refunds())
def test_what_a_refund_restores_does_not_depend_on_how_it_was_cut(
    case: tuple[int, int, list[int]],
) -> None:
    """Refunding a total in pieces restores what refunding it at once would."""
    cash, bonus, pieces = case
    in_pieces = record_of(cash, bonus)
    for piece in pieces:
        c, b = refund_split(in_pieces, piece)
        in_pieces.cash_refunded += c
        in_pieces.bonus_refunded += b
    at_once = refund_split(record_of(cash, bonus), sum(pieces))
    assert (in_pieces.cash_refunded, in_pieces.bonus_refunded) == at_once


# ----------------------------------------------------------------------- restore


@st.composite
def drawn_and_returns(draw_: st.DrawFn) -> tuple[dict[str, int], list[int]]:
    """An allocation drawn from lots, and amounts coming back that add up to at most it."""
    amounts = draw_(st.lists(st.integers(1, 100), min_size=1, max_size=6))
    drawn = {f"lot-{i}": n for i, n in enumerate(amounts)}
    total = sum(amounts)
    cuts = sorted({0, total, *draw_(st.lists(st.integers(0, total), max_size=5))})
    back = [b - a for a, b in pairwise(cuts)]
    if draw_(st.booleans()) and len(back) > 1:
        back = back[:-1]
    return drawn, back


@given(drawn_and_returns())
def test_restore_puts_back_into_the_lots_drawn_from_last_drawn_first(
    case: tuple[dict[str, int], list[int]],
) -> None:
    drawn, returns = case
    restored: dict[str, int] = {}
    for amount in returns:
        back = restore(drawn, restored, amount)
        assert sum(back.values()) == amount
        assert set(back) <= set(drawn)
        assert all(n > 0 for n in back.values())
        for lot_id, n in back.items():
            restored[lot_id] = restored.get(lot_id, 0) + n
        # Never more into a lot than was drawn from it ...
        assert all(restored.get(i, 0) <= n for i, n in drawn.items())
        # ... and last drawn first: a lot gets some back only once every lot drawn after
        # it has all of its share back.
        order = list(drawn)
        for i, lot_id in enumerate(order):
            if restored.get(lot_id, 0):
                assert all(restored.get(j, 0) == drawn[j] for j in order[i + 1 :])
    if sum(returns) == sum(drawn.values()):
        assert restored == drawn


# ----------------------------------------------------------------------- cash_out


@st.composite
def lots_for_cash_out(draw_: st.DrawFn) -> ValueLot:
    """A top-up some of whose cash and bonus was spent, refunded, cashed out already."""
    cash = draw_(st.integers(1, 10**9))
    bonus = draw_(st.one_of(st.just(0), st.integers(0, 10**9)))
    cash_left = draw_(st.one_of(st.integers(0, cash), st.sampled_from([0, cash])))
    bonus_left = draw_(st.one_of(st.integers(0, bonus), st.sampled_from([0, bonus])))
    bonus_spent = draw_(st.integers(0, bonus - bonus_left))  # net of refunds
    deducted = draw_(st.one_of(st.just(0), st.integers(0, bonus)))  # before, cumulative
    lot = ValueLot("lot", "s1", T0, 0, cash, bonus, cash_left, bonus_left)
    lot.bonus_spent = bonus_spent
    lot.bonus_deducted = deducted
    return lot


@given(lots_for_cash_out(), st.sampled_from(CashOutPolicy), st.data())
def test_a_cash_out_keeps_at_most_the_spent_bonus_and_forfeits_at_most_what_is_left(
    lot: ValueLot, policy: CashOutPolicy, data: st.DataObject
) -> None:
    taken = data.draw(
        st.one_of(st.integers(0, lot.cash_remaining), st.just(lot.cash_remaining)), label="taken"
    )
    out = cash_out(lot, taken, policy)
    assert out.cash_taken == taken
    assert out.refunded_cash + out.bonus_deducted == taken
    # The deduction never exceeds the cash taken, nor the bonus spent not deducted before.
    assert 0 <= out.bonus_deducted <= taken
    assert out.bonus_deducted <= max(0, lot.bonus_spent - lot.bonus_deducted)
    if policy is CashOutPolicy.FORFEIT_REMAINING_BONUS:
        assert out.bonus_deducted == 0
    else:
        assert out.bonus_deducted == min(taken, max(0, lot.bonus_spent - lot.bonus_deducted))
    # What lapses: never more than the bonus left, all of it with the last of the cash,
    # otherwise its share pro rata to the cash taken, rounded down.
    assert 0 <= out.bonus_forfeited <= lot.bonus_remaining
    if taken == lot.cash_remaining:
        assert out.bonus_forfeited == lot.bonus_remaining
    else:
        exact = Fraction(lot.bonus_remaining * taken, lot.cash_remaining)
        assert out.bonus_forfeited <= exact < out.bonus_forfeited + 1


@given(lots_for_cash_out(), st.sampled_from(CashOutPolicy), st.data())
def test_cash_outs_in_pieces_forfeit_all_the_bonus_and_deduct_the_spent_bonus_once(
    lot: ValueLot, policy: CashOutPolicy, data: st.DataObject
) -> None:
    """Cashing a top-up out in several pieces to the end: all its bonus left lapses, and
    (DEDUCT_SPENT_BONUS) the spent bonus not deducted before is deducted once in all, as
    far as the cash goes."""
    bonus_left, cash_left = lot.bonus_remaining, lot.cash_remaining
    owed = max(0, lot.bonus_spent - lot.bonus_deducted)
    cuts = data.draw(st.lists(st.integers(0, cash_left), max_size=5), label="cuts")
    bounds = sorted({0, cash_left, *cuts})
    pieces = [b - a for a, b in pairwise(bounds)] or [0]  # no cash left: one closing it
    forfeited = deducted = 0
    for taken in pieces:
        out = cash_out(lot, taken, policy)
        # As the account applies a TopUpCashedOut.
        lot.cash_remaining -= out.cash_taken
        lot.bonus_remaining -= out.bonus_forfeited
        lot.bonus_deducted += out.bonus_deducted
        forfeited += out.bonus_forfeited
        deducted += out.bonus_deducted
    assert lot.cash_remaining == 0
    assert forfeited == bonus_left
    if policy is CashOutPolicy.DEDUCT_SPENT_BONUS:
        assert deducted == min(owed, cash_left)
    else:
        assert deducted == 0


# ----------------------------------------------------------------------- withheld_to_return


@given(
    st.one_of(st.integers(1, 30), st.integers(1, 10**9)),
    st.data(),
)
def test_a_refund_of_spent_bonus_gives_back_what_was_withheld_for_it_and_no_more(
    spent: int, data: st.DataObject
) -> None:
    """After a refund brings `restored` of a lot's spent bonus back, the lot keeps cash for
    at most the bonus still spent: the rest of what cash-outs withheld comes back, and
    nothing comes back while the withheld cash stays within the bonus still spent."""
    lot = value_lot(0, 10**9, spent)
    lot.bonus_remaining = 0
    lot.bonus_spent = spent
    lot.bonus_deducted = data.draw(
        st.one_of(st.integers(0, spent), st.sampled_from([0, spent])), label="withheld"
    )
    restored = data.draw(st.one_of(st.integers(1, spent), st.just(spent)), label="restored")
    back = withheld_to_return({"lot": lot, "other": value_lot(1, 5, 5)}, {"lot": restored})
    assert set(back) <= {"lot"}
    assert all(n > 0 for n in back.values())
    returned = back.get("lot", 0)
    assert 0 <= returned <= lot.bonus_deducted
    still_spent = spent - restored
    assert lot.bonus_deducted - returned == min(lot.bonus_deducted, still_spent)
