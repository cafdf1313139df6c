"""The server's garbage-collection policy (decisions 11 and 33).

The writer caches up to 50,000 accounts: millions of objects that live as long as the process.
CPython's full collection walks every tracked object, so its pause grows with the cache.
Frozen objects (`gc.freeze`) are left out of every collection, so the policy freezes what
has survived: the cache stops costing the collector anything.

Freezing has a price. A reference cycle that is frozen and becomes garbage later is never
collected while it stays frozen. Refcounting still frees everything else at once, an evicted
account for instance. Two kinds of cycle would be kept for ever:
- garbage already in the oldest generation when a freeze comes;
- cycles alive at a freeze that die afterwards, such as a group of commands in flight.
Each freeze therefore follows a full collection, which walks only what is not yet frozen,
i.e. what survived since the last freeze. Every `sweep_every` freezes, everything is thawed
and collected once, so what died while frozen is freed too. That walk costs a pause that
grows with the cache, once every few minutes.
"""

from __future__ import annotations

import asyncio
import gc

FREEZE_INTERVAL_SECONDS = 10.0
SWEEP_EVERY_FREEZES = 30  # a full sweep of the frozen objects every 5 minutes


def collect_and_freeze(sweep: bool) -> None:
    """Collect, then freeze the survivors. `sweep` thaws what is frozen first, so that the
    collection walks it too."""
    if sweep:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


async def freeze_survivors(
    interval: float = FREEZE_INTERVAL_SECONDS, sweep_every: int = SWEEP_EVERY_FREEZES
) -> None:
    """Apply the policy every `interval` seconds until cancelled."""
    freezes = 0
    while True:
        await asyncio.sleep(interval)
        freezes += 1
        collect_and_freeze(sweep=freezes % sweep_every == 0)
