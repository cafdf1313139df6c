"""The purchase money an Earn reversal refunds (Reverse `refund_purchase_minor`, issue 15):
pro rata to the points when the till does not say, the till's amount when it does, parts
adding up to the purchase exactly, and what is refused. Also: reversals recorded before
refunds were (upcast to -1 and replayed pro rata), and requests recorded before the field
existed still matching their replay. Expectations computed by hand in each test."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from eventsourcing.application import project_aggregate
from eventsourcing.persistence import StoredEvent

from ledger.application import commands as c
from ledger.domain import errors
from ledger.domain.account import NOT_RECORDED, MemberAccount
from ledger.domain.insights import InsightSettings
from ledger.domain.program import (
    PointsConversion,
    ProgramSettings,
    ProgramSettingsAsDict,
    StoredValueSplit,
)
from ledger.domain.provenance import Provenance
from ledger.domain.reversals import Reversal
from tests.unit.test_account_model import make_mapper, state_of

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Member:
    def __init__(self) -> None:
        self.count = 0
        self.account = MemberAccount(
            program_id="prog", member_id="m", referrer_member_id="", provenance=self.prov()
        )

    def prov(self, reverses: str = "", store: str = "s1") -> Provenance:
        self.count += 1
        return Provenance(
            transaction_id=f"tx-{self.count:03d}",
            request_id=f"r-{self.count}",
            occurred_at=T0,
            store_id=store,
            reverses_transaction_id=reverses,
        )

    def earn(self, points: int, purchase_minor: int) -> str:
        p = self.prov()
        self.account.earn(p, T0, points, purchase_minor, None, None)
        return p.transaction_id

    def reverse(
        self, target: str, points: int = 0, amount: int = 0, refund: int | None = None
    ) -> Reversal:
        p = self.prov(reverses=target)
        return self.account.reverse(p, T0, target, points, amount, refund_purchase_minor=refund)

    def refunded(self, earn_id: str) -> int:
        return self.account.earns[earn_id].refunded_minor


def recorded_refunds(member: Member) -> list[int]:
    return [
        e.refund_purchase_minor
        for e in member.account.collect_events()
        if isinstance(e, MemberAccount.EarnReversed)
    ]


def test_unset_refunds_the_purchase_pro_rata_and_the_last_points_take_what_is_left() -> None:
    m = Member()
    earn = m.earn(300, 1000)
    # 1000 x 100/300 = 333.33 -> 333; again 333; the last 100 points take the 334 left.
    assert m.reverse(earn, 100).refund_purchase_minor == 333
    assert m.reverse(earn, 100).refund_purchase_minor == 333
    assert m.reverse(earn, 100).refund_purchase_minor == 334
    assert m.refunded(earn) == 1000
    assert recorded_refunds(m) == [333, 333, 334]


def test_pro_rata_rounds_half_up() -> None:
    m = Member()
    earn = m.earn(2, 5)
    assert m.reverse(earn, 1).refund_purchase_minor == 3  # 2.5 -> 3
    assert m.reverse(earn).refund_purchase_minor == 2  # all the rest
    assert m.refunded(earn) == 5


def test_a_reversal_of_all_the_points_at_once_refunds_the_whole_purchase() -> None:
    m = Member()
    earn = m.earn(7, 1001)
    done = m.reverse(earn)
    assert (done.points_reversed, done.refund_purchase_minor) == (7, 1001)


def test_the_given_amount_is_recorded_and_the_pro_rata_after_it_never_exceeds_the_rest() -> None:
    m = Member()
    earn = m.earn(100, 1000)
    # The till refunds 900 for 10 points (a returned item worth most of the order).
    assert m.reverse(earn, 10, refund=900).refund_purchase_minor == 900
    # Pro rata would be 1000 x 10/100 = 100; only 100 is left, so 100.
    assert m.reverse(earn, 10).refund_purchase_minor == 100
    # Nothing is left to refund: the next points go with none.
    assert m.reverse(earn, 10).refund_purchase_minor == 0
    # And the last ones too (all that is left is 0).
    assert m.reverse(earn).refund_purchase_minor == 0
    assert m.refunded(earn) == 1000
    assert recorded_refunds(m) == [900, 100, 0, 0]


def test_a_given_zero_refunds_nothing_and_a_given_amount_may_leave_money_unrefunded() -> None:
    m = Member()
    earn = m.earn(10, 500)
    assert m.reverse(earn, 5, refund=0).refund_purchase_minor == 0  # goodwill points only
    # The last points with a given 100: 400 of the purchase stay counted.
    assert m.reverse(earn, refund=100).refund_purchase_minor == 100
    assert m.refunded(earn) == 100


def test_an_earn_without_money_refunds_nothing() -> None:
    m = Member()
    earn = m.earn(50, 0)
    assert m.reverse(earn, 20).refund_purchase_minor == 0
    assert m.reverse(earn, refund=0).refund_purchase_minor == 0


def test_more_than_is_left_to_refund_is_refused_and_records_nothing() -> None:
    m = Member()
    earn = m.earn(100, 1000)
    m.reverse(earn, 50, refund=900)
    m.account.collect_events()
    before = state_of(m.account)
    with pytest.raises(errors.RefundExceedsPurchase) as refused:
        m.reverse(earn, 10, refund=101)
    assert refused.value.metadata == {"refundable": "100"}
    assert "only 100 minor units" in refused.value.message
    assert not m.account.collect_events()
    assert state_of(m.account) == before
    # Exactly what is left is fine.
    assert m.reverse(earn, 10, refund=100).refund_purchase_minor == 100


def test_more_than_the_purchase_on_a_first_reversal_is_refused() -> None:
    m = Member()
    earn = m.earn(10, 0)
    with pytest.raises(errors.RefundExceedsPurchase):
        m.reverse(earn, 1, refund=1)


def test_a_refund_with_any_other_kind_of_transaction_is_refused_on_its_field() -> None:
    m = Member()
    m.earn(100, 1000)
    redemption = m.prov()
    m.account.redeem(redemption, T0, 20)
    conversion = m.prov()
    m.account.convert_points(conversion, T0, 10, PointsConversion(10, 100))
    top_up = m.prov()
    m.account.top_up(top_up, T0, 1000, 0, "", None, 1)
    spend = m.prov()
    m.account.spend(spend, T0, 300, StoredValueSplit.PROPORTIONAL)
    m.account.collect_events()
    for target, points, amount in (
        (redemption.transaction_id, 5, 0),
        (conversion.transaction_id, 10, 0),
        (top_up.transaction_id, 0, 100),
        (spend.transaction_id, 0, 100),
    ):
        for refund in (0, 1):
            with pytest.raises(errors.RefundNotApplicable) as refused:
                m.reverse(target, points, amount, refund=refund)
            assert refused.value.field == "refund_purchase_minor"
            assert refused.value.reason == "REFUND_NOT_APPLICABLE"
        assert not m.account.collect_events()


def test_refunds_are_rebuilt_from_the_events_and_from_a_snapshot() -> None:
    m = Member()
    earn = m.earn(3, 100)
    m.reverse(earn, 1, refund=10)
    m.reverse(earn, 1)  # 100 x 1/3 = 33.3 -> 33
    mapper = make_mapper()
    stored = [mapper.to_stored_event(e) for e in m.account.collect_events()]
    rebuilt = project_aggregate(None, [mapper.to_domain_event(s) for s in stored])
    assert isinstance(rebuilt, MemberAccount)
    assert rebuilt.earns[earn].refunded_minor == 43
    assert rebuilt.earns[earn].purchase_minor == 100
    assert state_of(rebuilt) == state_of(m.account)


# ---------------------------------------------------------------- events recorded before


def as_version_1(stored: StoredEvent) -> StoredEvent:
    """An EarnReversed as it was recorded before refunds were: no refund field, version 1."""
    state: dict[str, Any] = json.loads(stored.state)
    assert state.pop("class_version") == 2
    del state["refund_purchase_minor"]
    return StoredEvent(
        originator_id=stored.originator_id,
        originator_version=stored.originator_version,
        topic=stored.topic,
        state=json.dumps(state).encode(),
    )


def test_an_old_reversal_is_upcast_to_not_recorded_and_replayed_pro_rata() -> None:
    m = Member()
    earn = m.earn(3, 100)
    m.reverse(earn, 1)  # recorded now as 33, but we rewrite it as an old event
    m.reverse(earn, 1, refund=50)
    m.reverse(earn)  # the rest: 100 - 33 - 50 = 17
    mapper = make_mapper()
    stored = [mapper.to_stored_event(e) for e in m.account.collect_events()]
    kinds = [s.topic.rsplit(".", 1)[1] for s in stored]
    first_reversal = kinds.index("EarnReversed")
    old = [as_version_1(s) if i == first_reversal else s for i, s in enumerate(stored)]
    decoded = [mapper.to_domain_event(s) for s in old]
    upcast = decoded[first_reversal]
    assert upcast.refund_purchase_minor == NOT_RECORDED == -1  # type: ignore[attr-defined]
    rebuilt = project_aggregate(None, decoded)
    assert isinstance(rebuilt, MemberAccount)
    # Replay takes the pro rata of the old one: 100 x 1/3 = 33, then 50 and 17 as recorded.
    assert rebuilt.earns[earn].refunded_minor == 100
    assert state_of(rebuilt) == state_of(m.account)


# ---------------------------------------------------------------- idempotency


def old_fingerprint(payload: dict[str, Any]) -> str:
    """The fingerprint as it was computed before refund_purchase_minor existed."""
    encoded = json.dumps(dict(sorted(payload.items())), separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


REVERSE_FIELDS: dict[str, Any] = {
    "program_id": "prog",
    "member_id": "m",
    "store_id": "s1",
    "transaction_id": "tx-1",
    "points": 5,
    "amount_minor": 0,
    "reason": "returned",
}


def test_a_reverse_recorded_before_the_field_existed_still_matches_its_replay() -> None:
    cmd = c.ReverseTransaction(request_id="r-1", **REVERSE_FIELDS)
    old = old_fingerprint({**REVERSE_FIELDS, "occurred_at": None, "command": "Reverse"})
    assert cmd.fingerprint() == old


def test_the_refund_is_part_of_the_fingerprint() -> None:
    unset = c.ReverseTransaction(request_id="r-1", **REVERSE_FIELDS).fingerprint()
    zero = c.ReverseTransaction(
        request_id="r-1", refund_purchase_minor=0, **REVERSE_FIELDS
    ).fingerprint()
    some = c.ReverseTransaction(
        request_id="r-1", refund_purchase_minor=300, **REVERSE_FIELDS
    ).fingerprint()
    other = c.ReverseTransaction(
        request_id="r-1", refund_purchase_minor=301, **REVERSE_FIELDS
    ).fingerprint()
    assert len({unset, zero, some, other}) == 4
    again = c.ReverseTransaction(request_id="r-2", refund_purchase_minor=300, **REVERSE_FIELDS)
    assert again.fingerprint() == some  # the request_id is not part of it


def test_a_create_program_with_the_default_insights_fingerprints_as_before_them() -> None:
    settings = ProgramSettings(display_name="P", currency="EUR")
    cmd = c.CreateProgram(program_id="p", request_id="r", settings=settings)
    before = {
        "program_id": "p",
        "command": "CreateProgram",
        "settings": {
            "display_name": "P",
            "currency": "EUR",
            "time_zone": "UTC",
            "point_value_minor": 0,
            "expiry_policy": {"kind": "NEVER", "days": 0, "years": 0},
            "tiers": [],
            "tier_window_days": 365,
            "stored_value_split": "PROPORTIONAL",
            "expected_redemption_rate_ppm": 1_000_000,
            "top_up_bonus": [],
            "points_conversion": None,
            "cash_out_policy": "FORFEIT_REMAINING_BONUS",
        },
    }
    assert cmd.fingerprint() == old_fingerprint(before)
    changed = c.CreateProgram(
        program_id="p",
        request_id="r",
        settings=ProgramSettings(
            display_name="P", currency="EUR", insights=InsightSettings(lost_after_days=200)
        ),
    )
    assert changed.fingerprint() != cmd.fingerprint()


# ---------------------------------------------------------------- programme settings


def test_settings_recorded_before_insights_decode_to_the_defaults() -> None:
    transcoding = ProgramSettingsAsDict()
    settings = ProgramSettings(
        display_name="P", currency="EUR", insights=InsightSettings(new_member_days=14)
    )
    encoded = transcoding.encode(settings)
    assert encoded["insights"]["new_member_days"] == 14
    assert transcoding.decode(encoded) == settings
    del encoded["insights"]
    assert transcoding.decode(encoded).insights == InsightSettings()
