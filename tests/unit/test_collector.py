"""The server's garbage-collection policy (ledger/collector.py, decisions 11 and 33): what
survives is frozen out of the collector's way, and no garbage is frozen with it."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from ledger.collector import collect_and_freeze, freeze_survivors


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_what_survives_is_frozen() -> None:
    survivors = [[n] for n in range(1000)]  # long-lived objects the collector tracks
    collect_and_freeze()
    assert gc.get_freeze_count() >= len(survivors)


def test_garbage_already_in_the_oldest_generation_is_collected_before_a_freeze() -> None:
    """The first policy collected the young generations only (gc.collect(1)) before freezing,
    so a cycle that died after reaching the oldest generation was frozen with the living."""
    node = Node()
    gone = weakref.ref(node)
    gc.collect()  # `node` survives into the oldest generation
    del node
    collect_and_freeze()
    assert gone() is None


def test_the_server_loop_freezes_every_interval() -> None:
    async def run() -> int:
        task = asyncio.create_task(freeze_survivors(interval=0.01))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if gc.get_freeze_count():
                break
        task.cancel()
        return gc.get_freeze_count()

    assert asyncio.run(run()) > 0
