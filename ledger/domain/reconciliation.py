"""Reconciliation: the ledger's paid cash against a processor's or bank's statement
(docs/reconciliation.md, decision 18). Pure: plain values in, a plain result out, no I/O,
so that the gRPC servicer and `ledger reconcile` run the very same matching and a re-run
over the same inputs gives the same result, field for field.

Money is integer minor units; times are integer microseconds since the epoch (UTC), the
read models' resolution, so that nothing is rounded differently on a re-run.

The rules, in the order they are applied:

1. Lines dated outside the period [since, until) are set aside (`outside_period`): they
   belong to another period's run. A line whose external_id was seen before is a duplicate
   (`duplicate_lines`), never matched. Nothing is dropped silently.
2. The rest is grouped by (payment_ref, kind). Within a group, one entry and one line of
   the same amount dated within the tolerance match one to one; per amount the two sides,
   each in date order, are paired by a two-pointer sweep, which pairs as many as can be.
3. Then one entry against two or more lines (a top-up paid in two card payments), then one
   line against two or more entries (one payment covering two top-ups): the same total, and
   every date within the tolerance of the one side's date. The first combination in a fixed
   order wins (fewest parts first, then date order), and the search is bounded.
4. What is left of a group with something on both sides and different totals is ONE amount
   mismatch; otherwise what is left is missing on its side (missing_in_ledger: lines;
   missing_in_statement: entries).

Each entry and each line ends in exactly one place of the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Literal

TOP_UP = "TOP_UP"
REFUND = "REFUND"
KINDS = (TOP_UP, REFUND)
Kind = Literal["TOP_UP", "REFUND"]

# The sum search of rule 3 looks at no more than this many combinations per item, and no
# combination of more parts: a statement is a few lines per payment reference, and a group
# of hundreds of lines of one reference must not make a run take hours. Past the bound the
# item is left to rule 4 (reported, never matched wrongly).
MAX_PARTS = 6
MAX_COMBINATIONS = 20_000


@dataclass(frozen=True)
class StatementLine:
    external_id: str  # the statement's own id for the line
    payment_ref: str
    kind: Kind
    amount_minor: int  # positive
    occurred_at: int  # microseconds since the epoch

    def sort_key(self) -> tuple[int, str, str, str, int]:
        return (self.occurred_at, self.external_id, self.payment_ref, self.kind, self.amount_minor)


@dataclass(frozen=True)
class LedgerPayment:
    """A paid-cash entry of the ledger: a top-up's cash (TOP_UP), or the cash a cash-out
    handed back (REFUND). Bonus is never here: no money stands behind it."""

    transaction_id: str
    member_id: str
    payment_ref: str
    kind: Kind
    amount_minor: int  # positive
    occurred_at: int  # microseconds since the epoch
    store_id: str = ""

    def sort_key(self) -> tuple[int, str]:
        return (self.occurred_at, self.transaction_id)


@dataclass(frozen=True)
class Match:
    payment_ref: str
    kind: Kind
    transaction_ids: tuple[str, ...]
    external_ids: tuple[str, ...]
    amount_minor: int


@dataclass(frozen=True)
class AmountMismatch:
    payment_ref: str
    kind: Kind
    transaction_ids: tuple[str, ...]
    external_ids: tuple[str, ...]
    ledger_amount_minor: int
    statement_amount_minor: int


@dataclass(frozen=True)
class Result:
    matched: tuple[Match, ...] = ()
    missing_in_ledger: tuple[StatementLine, ...] = ()
    missing_in_statement: tuple[LedgerPayment, ...] = ()
    amount_mismatches: tuple[AmountMismatch, ...] = ()
    duplicate_lines: tuple[StatementLine, ...] = ()
    outside_period: tuple[StatementLine, ...] = ()
    # Control totals, refunds negative: the entries of the period, and the lines that took
    # part in the matching (in the period, duplicates left out).
    ledger_total_minor: int = 0
    statement_total_minor: int = 0

    @property
    def unmatched(self) -> bool:
        """Anything a person must look at: signing off then needs a note."""
        return bool(
            self.missing_in_ledger
            or self.missing_in_statement
            or self.amount_mismatches
            or self.duplicate_lines
            or self.outside_period
        )


def signed(kind: str, amount: int) -> int:
    """Money in is positive, money handed back negative (the control totals)."""
    return amount if kind == TOP_UP else -amount


def conflicting_ids(lines: Sequence[StatementLine]) -> list[tuple[int, int]]:
    """(index, index of the first line with that external_id) for each line that repeats an
    external_id with different content: a statement that names two lines alike is broken,
    and guessing which is meant would be wrong. An identical repeat is a duplicate line,
    reported by `reconcile`."""
    first: dict[str, int] = {}
    found = []
    for i, line in enumerate(lines):
        j = first.setdefault(line.external_id, i)
        if j != i and lines[j] != line:
            found.append((i, j))
    return found


def reconcile(
    entries: Iterable[LedgerPayment],
    lines: Iterable[StatementLine],
    since: int | None,
    until: int | None,
    tolerance: int,
) -> Result:
    """Match the ledger's paid-cash `entries` of the period [since, until) (None: unbounded)
    against the statement's `lines`, dates within `tolerance` microseconds. The result does
    not depend on the order of either input."""
    ledger = sorted(entries, key=LedgerPayment.sort_key)
    seen: set[str] = set()
    considered: list[StatementLine] = []
    duplicates: list[StatementLine] = []
    outside: list[StatementLine] = []
    # Sorted first, so that which of two identical lines is "the repeat" cannot matter.
    for line in sorted(lines, key=StatementLine.sort_key):
        if line.external_id in seen:
            duplicates.append(line)
            continue
        seen.add(line.external_id)
        if (since is not None and line.occurred_at < since) or (
            until is not None and line.occurred_at >= until
        ):
            outside.append(line)
        else:
            considered.append(line)

    groups: dict[tuple[str, str], tuple[list[LedgerPayment], list[StatementLine]]] = {}
    for e in ledger:
        groups.setdefault((e.payment_ref, e.kind), ([], []))[0].append(e)
    for line in considered:
        groups.setdefault((line.payment_ref, line.kind), ([], []))[1].append(line)

    matched: list[Match] = []
    mismatches: list[AmountMismatch] = []
    missing_in_ledger: list[StatementLine] = []
    missing_in_statement: list[LedgerPayment] = []
    for (ref, kind), (group_entries, group_lines) in sorted(groups.items()):
        found, left_entries, left_lines = _match_group(group_entries, group_lines, tolerance)
        matched.extend(found)
        ledger_sum = sum(e.amount_minor for e in left_entries)
        statement_sum = sum(line.amount_minor for line in left_lines)
        if left_entries and left_lines and ledger_sum != statement_sum:
            mismatches.append(
                AmountMismatch(
                    ref,
                    _kind(kind),
                    tuple(e.transaction_id for e in left_entries),
                    tuple(line.external_id for line in left_lines),
                    ledger_sum,
                    statement_sum,
                )
            )
        else:
            missing_in_statement.extend(left_entries)
            missing_in_ledger.extend(left_lines)

    return Result(
        matched=tuple(matched),
        missing_in_ledger=tuple(sorted(missing_in_ledger, key=StatementLine.sort_key)),
        missing_in_statement=tuple(sorted(missing_in_statement, key=LedgerPayment.sort_key)),
        amount_mismatches=tuple(mismatches),
        duplicate_lines=tuple(duplicates),
        outside_period=tuple(outside),
        ledger_total_minor=sum(signed(e.kind, e.amount_minor) for e in ledger),
        statement_total_minor=sum(signed(line.kind, line.amount_minor) for line in considered),
    )


def _kind(kind: str) -> Kind:
    return "TOP_UP" if kind == TOP_UP else "REFUND"


def _match_group(
    entries: list[LedgerPayment], lines: list[StatementLine], tolerance: int
) -> tuple[list[Match], list[LedgerPayment], list[StatementLine]]:
    """Rules 2 and 3 within one (payment_ref, kind); both sides come in date order. Returns
    the matches and what is left of each side, still in date order."""
    matches: list[Match] = []
    used_entries: set[int] = set()
    used_lines: set[int] = set()

    # Rule 2: one to one, per amount. Both sides in date order: a line dated before the
    # current entry's window can match no later entry either, and vice versa, so the sweep
    # pairs as many as any pairing could.
    amounts = sorted({e.amount_minor for e in entries} & {x.amount_minor for x in lines})
    for amount in amounts:
        es = [i for i, e in enumerate(entries) if e.amount_minor == amount]
        ls = [j for j, x in enumerate(lines) if x.amount_minor == amount]
        a = b = 0
        while a < len(es) and b < len(ls):
            gap = lines[ls[b]].occurred_at - entries[es[a]].occurred_at
            if gap < -tolerance:
                b += 1
            elif gap > tolerance:
                a += 1
            else:
                e, x = entries[es[a]], lines[ls[b]]
                used_entries.add(es[a])
                used_lines.add(ls[b])
                matches.append(
                    Match(e.payment_ref, e.kind, (e.transaction_id,), (x.external_id,), amount)
                )
                a += 1
                b += 1

    # Rule 3a: one entry, several lines; 3b: one line, several entries.
    for i, e in enumerate(entries):
        if i in used_entries:
            continue
        candidates = [
            j
            for j, x in enumerate(lines)
            if j not in used_lines and abs(x.occurred_at - e.occurred_at) <= tolerance
        ]
        parts = _first_sum([lines[j].amount_minor for j in candidates], e.amount_minor)
        if parts is not None:
            chosen = [candidates[k] for k in parts]
            used_entries.add(i)
            used_lines.update(chosen)
            matches.append(
                Match(
                    e.payment_ref,
                    e.kind,
                    (e.transaction_id,),
                    tuple(lines[j].external_id for j in chosen),
                    e.amount_minor,
                )
            )
    for j, x in enumerate(lines):
        if j in used_lines:
            continue
        candidates = [
            i
            for i, e in enumerate(entries)
            if i not in used_entries and abs(x.occurred_at - e.occurred_at) <= tolerance
        ]
        parts = _first_sum([entries[i].amount_minor for i in candidates], x.amount_minor)
        if parts is not None:
            chosen = [candidates[k] for k in parts]
            used_lines.add(j)
            used_entries.update(chosen)
            matches.append(
                Match(
                    x.payment_ref,
                    x.kind,
                    tuple(entries[i].transaction_id for i in chosen),
                    (x.external_id,),
                    x.amount_minor,
                )
            )
    left_entries = [e for i, e in enumerate(entries) if i not in used_entries]
    left_lines = [x for j, x in enumerate(lines) if j not in used_lines]
    return matches, left_entries, left_lines


def _first_sum(amounts: Sequence[int], target: int) -> tuple[int, ...] | None:
    """The first combination (fewest parts, then in the order given) of two or more of
    `amounts` adding up to `target`, as indexes; None if none within the search's bound."""
    looked = 0
    for size in range(2, min(MAX_PARTS, len(amounts)) + 1):
        for combo in combinations(range(len(amounts)), size):
            looked += 1
            if looked > MAX_COMBINATIONS:
                return None
            if sum(amounts[k] for k in combo) == target:
                return combo
    return None


@dataclass(frozen=True)
class SignOff:
    operator_id: str
    note: str
    request_id: str
    signed_off_at: int  # microseconds since the epoch


@dataclass(frozen=True)
class Run:
    """A stored reconciliation: what was asked, what was found, where the ledger stood."""

    reconciliation_id: str
    program_id: str
    source: str
    since: int | None
    until: int | None
    tolerance_seconds: int
    result: Result
    reconciled_at: int
    position: int
    sign_off: SignOff | None = field(default=None)
