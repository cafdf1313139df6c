"""The pure matcher of ledger/domain/reconciliation.py: every kind of match, what is left
over, and properties (each line and entry in exactly one place, sums kept, order of the
inputs irrelevant)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.reconciliation import (
    REFUND,
    TOP_UP,
    LedgerPayment,
    Result,
    StatementLine,
    conflicting_ids,
    reconcile,
    signed,
)

S = 1_000_000  # a second in microseconds
DAY = 86_400 * S
T0 = 1_700_000_000 * S


def entry(tx: str, ref: str, amount: int, at: int = T0, kind: str = TOP_UP) -> LedgerPayment:
    return LedgerPayment(tx, "m", ref, kind, amount, at)  # type: ignore[arg-type]


def line(ext: str, ref: str, amount: int, at: int = T0, kind: str = TOP_UP) -> StatementLine:
    return StatementLine(ext, ref, kind, amount, at)  # type: ignore[arg-type]


def run(entries: list[LedgerPayment], lines: list[StatementLine], tol: int = 60 * S) -> Result:
    return reconcile(entries, lines, T0 - DAY, T0 + DAY, tol)


def test_one_to_one_by_ref_amount_and_date() -> None:
    r = run([entry("t1", "R1", 1000)], [line("x1", "R1", 1000, T0 + 30 * S)])
    assert [(m.transaction_ids, m.external_ids) for m in r.matched] == [(("t1",), ("x1",))]
    assert not r.unmatched
    assert r.ledger_total_minor == r.statement_total_minor == 1000


def test_a_top_up_paid_in_two_card_payments() -> None:
    r = run([entry("t1", "R1", 1000)], [line("x1", "R1", 600), line("x2", "R1", 400, T0 + S)])
    assert [(m.transaction_ids, m.external_ids, m.amount_minor) for m in r.matched] == [
        (("t1",), ("x1", "x2"), 1000)
    ]
    assert not r.unmatched


def test_one_payment_covering_two_top_ups() -> None:
    r = run([entry("t1", "R1", 300), entry("t2", "R1", 700, T0 + S)], [line("x1", "R1", 1000)])
    assert [(m.transaction_ids, m.external_ids) for m in r.matched] == [(("t1", "t2"), ("x1",))]


def test_same_ref_other_total_is_an_amount_mismatch() -> None:
    r = run([entry("t1", "R1", 1000)], [line("x1", "R1", 990)])
    assert r.matched == ()
    (m,) = r.amount_mismatches
    assert (m.ledger_amount_minor, m.statement_amount_minor) == (1000, 990)
    assert (m.transaction_ids, m.external_ids) == (("t1",), ("x1",))
    assert r.unmatched


def test_missing_on_either_side() -> None:
    r = run([entry("t1", "R1", 1000)], [line("x1", "R2", 1000)])
    assert [e.transaction_id for e in r.missing_in_statement] == ["t1"]
    assert [x.external_id for x in r.missing_in_ledger] == ["x1"]


def test_out_of_tolerance_with_the_same_total_is_missing_on_both_sides() -> None:
    r = run([entry("t1", "R1", 1000)], [line("x1", "R1", 1000, T0 + 61 * S)])
    assert r.matched == ()
    assert r.amount_mismatches == ()
    assert len(r.missing_in_statement) == len(r.missing_in_ledger) == 1


def test_each_entry_matches_at_most_once() -> None:
    """Blnk lets one entry satisfy several bank lines; here the second line is left."""
    r = run([entry("t1", "R1", 1000)], [line("x1", "R1", 1000), line("x2", "R1", 1000, T0 + S)])
    assert [m.external_ids for m in r.matched] == [("x1",)]
    assert [x.external_id for x in r.missing_in_ledger] == ["x2"]


def test_a_duplicate_line_is_reported_and_not_used() -> None:
    x = line("x1", "R1", 1000)
    r = run([entry("t1", "R1", 1000), entry("t2", "R1", 1000, T0 + S)], [x, x])
    assert r.duplicate_lines == (x,)
    assert [m.transaction_ids for m in r.matched] == [("t1",)]
    assert [e.transaction_id for e in r.missing_in_statement] == ["t2"]
    assert r.statement_total_minor == 1000


def test_an_external_id_naming_two_different_lines_is_a_conflict() -> None:
    lines = [line("x1", "R1", 1000), line("x2", "R1", 5), line("x1", "R1", 999)]
    assert conflicting_ids(lines) == [(2, 0)]
    assert conflicting_ids([lines[0], lines[0]]) == []


def test_a_line_outside_the_period_is_set_aside() -> None:
    late = line("x9", "R1", 1000, T0 + DAY)  # until is exclusive
    r = run([], [late, line("x0", "R1", 5, T0 - DAY)])  # since inclusive
    assert r.outside_period == (late,)
    assert [x.external_id for x in r.missing_in_ledger] == ["x0"]


def test_refunds_match_refunds_only_and_count_negative() -> None:
    r = run(
        [entry("t1", "R1", 1000), entry("c1", "R1", 400, T0 + S, REFUND)],
        [line("x1", "R1", 1000), line("x2", "R1", 400, T0 + S, REFUND)],
    )
    assert sorted(m.kind for m in r.matched) == [REFUND, TOP_UP]
    assert r.ledger_total_minor == r.statement_total_minor == 600
    r = run([entry("c1", "R1", 400, T0, REFUND)], [line("x2", "R1", 400)])
    assert r.matched == ()
    assert len(r.missing_in_ledger) == 1


def test_the_sweep_pairs_as_many_as_it_can() -> None:
    """Closest-first would pair t1 with x1 and leave t2; the sweep pairs both."""
    r = run(
        [entry("t1", "R1", 100, T0), entry("t2", "R1", 100, T0 + 15 * S)],
        [line("x1", "R1", 100, T0 + 8 * S), line("x2", "R1", 100, T0 - 9 * S)],
        tol=10 * S,
    )
    assert len(r.matched) == 2
    assert not r.unmatched


# ---------------------------------------------------------------------- properties

refs = st.sampled_from(["A", "B", "C"])
kinds = st.sampled_from([TOP_UP, REFUND])
amounts = st.integers(1, 12)
times = st.integers(T0 - 2 * DAY, T0 + 2 * DAY).map(lambda t: t - t % (20 * S))
entries_st = st.lists(st.tuples(refs, kinds, amounts, times), max_size=12).map(
    lambda xs: [
        LedgerPayment(f"t{i}", "m", r, k, a, t)  # type: ignore[arg-type]
        for i, (r, k, a, t) in enumerate(xs)
    ]
)
lines_st = st.lists(st.tuples(st.integers(0, 14), refs, kinds, amounts, times), max_size=14).map(
    lambda xs: [StatementLine(f"x{e}", r, k, a, t) for e, r, k, a, t in xs]  # type: ignore[arg-type]
)


def _without_conflicts(lines: list[StatementLine]) -> list[StatementLine]:
    first: dict[str, StatementLine] = {}
    return [x for x in lines if first.setdefault(x.external_id, x) == x]


@given(entries_st, lines_st, st.integers(0, 3), st.randoms(use_true_random=False))
def test_every_line_and_entry_lands_in_exactly_one_place(
    entries: list[LedgerPayment], raw: list[StatementLine], tol_steps: int, rnd: object
) -> None:
    lines = _without_conflicts(raw)
    tol = tol_steps * 20 * S
    r = reconcile(entries, lines, T0 - DAY, T0 + DAY, tol)

    by_id = {e.transaction_id: e for e in entries}
    placed_entries = Counter(
        [t for m in r.matched for t in m.transaction_ids]
        + [t for m in r.amount_mismatches for t in m.transaction_ids]
        + [e.transaction_id for e in r.missing_in_statement]
    )
    assert placed_entries == Counter(by_id.keys())

    distinct = {x.external_id: x for x in lines}
    placed_lines = Counter(
        [x for m in r.matched for x in m.external_ids]
        + [x for m in r.amount_mismatches for x in m.external_ids]
        + [x.external_id for x in r.missing_in_ledger + r.outside_period]
    )
    assert placed_lines == Counter(distinct.keys())
    assert len(r.duplicate_lines) == len(lines) - len(distinct)

    # Sums: a match is equal on both sides; a mismatch states both sides' sums.
    for m in r.matched:
        assert sum(by_id[t].amount_minor for t in m.transaction_ids) == m.amount_minor
        assert sum(distinct[x].amount_minor for x in m.external_ids) == m.amount_minor
        kinds_seen = {by_id[t].kind for t in m.transaction_ids}
        assert kinds_seen == {m.kind} == {distinct[x].kind for x in m.external_ids}
        stamps = [by_id[t].occurred_at for t in m.transaction_ids] + [
            distinct[x].occurred_at for x in m.external_ids
        ]
        assert max(stamps) - min(stamps) <= 2 * tol
    for mm in r.amount_mismatches:
        assert sum(by_id[t].amount_minor for t in mm.transaction_ids) == mm.ledger_amount_minor
        assert sum(distinct[x].amount_minor for x in mm.external_ids) == (mm.statement_amount_minor)
        assert mm.ledger_amount_minor != mm.statement_amount_minor
    assert r.ledger_total_minor == sum(signed(e.kind, e.amount_minor) for e in entries)
    in_period = [x for x in distinct.values() if T0 - DAY <= x.occurred_at < T0 + DAY]
    assert r.statement_total_minor == sum(signed(x.kind, x.amount_minor) for x in in_period)

    # Deterministic whatever the order of the inputs.
    shuffled_entries, shuffled_lines = list(entries), list(lines)
    rnd.shuffle(shuffled_entries)  # type: ignore[attr-defined]
    rnd.shuffle(shuffled_lines)  # type: ignore[attr-defined]
    assert reconcile(shuffled_entries, shuffled_lines, T0 - DAY, T0 + DAY, tol) == r
