"""The server's garbage-collection policy (decisions 11 and 33).

The writer caches 20,000 accounts by default (decision 37), more if configured: millions of
objects that live as long as the process.
CPython's full collection walks every tracked object, so its pause grows with the cache
(1.2 s at 50,000 cached accounts, 0.56 s at 20,000, measured). Frozen objects (`gc.freeze`)
are left out of every collection, so the policy freezes what has survived: the cache stops
costing the collector anything.

Freezing has a price. A reference cycle that is frozen and becomes garbage later is never
collected: nothing is ever thawed, because a thaw and a collection of everything is that
pause again. Refcounting still frees everything else at once, an evicted account for
instance. So:
- each freeze follows a full collection, which walks only what is not yet frozen (what
  survived since the last freeze), so that no garbage already in the oldest generation is
  frozen;
- the command path makes no cycles, so that none is in flight at a freeze. A refusal, a
  conflict and a crash drop their tracebacks once handled (ledger/application/group.py);
  tests/test_group_commit.py checks that commands leave no cyclic garbage.
"""

from __future__ import annotations

import asyncio
import gc

FREEZE_INTERVAL_SECONDS = 10.0


def collect_and_freeze() -> None:
    """Collect what is not frozen, then freeze the survivors."""
    gc.collect()
    gc.freeze()


async def freeze_survivors(interval: float = FREEZE_INTERVAL_SECONDS) -> None:
    """Apply the policy every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        collect_and_freeze()
