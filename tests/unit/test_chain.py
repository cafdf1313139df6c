"""The event hash is exactly the documented formula (docs/audit.md), so an auditor's own
verifier in another language gets the same values."""

from __future__ import annotations

import hashlib
import struct
from uuid import UUID

from ledger.audit.checkpoints import Head, checkpoint_digest
from ledger.infrastructure.chain import GENESIS, event_hash

ONE = UUID("00000000-0000-0000-0000-000000000001")


def test_the_documented_test_vector() -> None:
    digest = event_hash(GENESIS, ONE, 1, "t", b"{}")
    assert digest.hex() == "7f1443a4896e214c4fd8b3526c956d31adfc22a2ae89da3af825d02b3cf83c4d"


def test_the_hash_is_the_formula_written_out_by_hand() -> None:
    u64 = struct.Struct(">Q").pack
    prev = hashlib.sha256(b"previous").digest()
    oid = b"00000000-0000-0000-0000-000000000001"
    topic = b"ledger.domain.account:MemberAccount.PointsEarned"
    state = '{"points":10,"note":"café"}'.encode()
    by_hand = hashlib.sha256(
        prev + u64(len(oid)) + oid + u64(7) + u64(len(topic)) + topic + u64(len(state)) + state
    ).digest()
    assert event_hash(prev, ONE, 7, topic.decode(), state) == by_hand


def test_every_part_of_an_event_changes_its_hash() -> None:
    base = event_hash(GENESIS, ONE, 2, "t", b"{}")
    assert event_hash(bytes([1]) + GENESIS[1:], ONE, 2, "t", b"{}") != base
    assert event_hash(GENESIS, UUID(int=2), 2, "t", b"{}") != base
    assert event_hash(GENESIS, ONE, 3, "t", b"{}") != base
    assert event_hash(GENESIS, ONE, 2, "u", b"{}") != base
    assert event_hash(GENESIS, ONE, 2, "t", b"{ }") != base
    # Length prefixes: moving a byte from the topic to the state is not the same event.
    assert event_hash(GENESIS, ONE, 2, "t{", b"}") != event_hash(GENESIS, ONE, 2, "t", b"{}")


def test_the_checkpoint_digest_is_the_formula_written_out_by_hand() -> None:
    u64 = struct.Struct(">Q").pack
    heads = [Head(UUID(int=9), 3, 40, b"\x01" * 32), Head(UUID(int=5), 1, 12, b"\x02" * 32)]
    expected = hashlib.sha256(
        b"tally-checkpoint-v1"
        + GENESIS
        + u64(1)
        + u64(40)
        + u64(52)
        + u64(2)
        + UUID(int=5).bytes
        + u64(1)
        + u64(12)
        + b"\x02" * 32
        + UUID(int=9).bytes
        + u64(3)
        + u64(40)
        + b"\x01" * 32
    ).digest()
    assert checkpoint_digest(1, 40, 52, GENESIS, heads) == expected
