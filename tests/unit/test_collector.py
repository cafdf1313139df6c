"""The server's garbage-collection policy (ledger/collector.py, decisions 11 and 33): what
survives is frozen out of the collector's way, and no reference cycle is frozen for ever."""

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
    collect_and_freeze(sweep=False)
    assert gc.get_freeze_count() >= len(survivors)


def test_garbage_already_in_the_oldest_generation_is_collected_before_a_freeze() -> None:
    """The first policy collected the young generations only (gc.collect(1)) before freezing,
    so a cycle that died after reaching the oldest generation was frozen with the living."""
    node = Node()
    gone = weakref.ref(node)
    gc.collect()  # `node` survives into the oldest generation
    del node
    collect_and_freeze(sweep=False)
    assert gone() is None


def test_a_cycle_that_died_while_frozen_is_freed_by_the_next_sweep() -> None:
    node = Node()
    gone = weakref.ref(node)
    collect_and_freeze(sweep=False)  # frozen while alive: a command group in flight
    del node
    collect_and_freeze(sweep=False)
    assert gone() is not None  # frozen objects are out of the collector's sight
    collect_and_freeze(sweep=True)
    assert gone() is None


def test_the_server_loop_sweeps_every_few_freezes() -> None:
    async def run() -> weakref.ref[Node]:
        node = Node()
        gone = weakref.ref(node)
        collect_and_freeze(sweep=False)
        del node
        task = asyncio.create_task(freeze_survivors(interval=0.01, sweep_every=3))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if gone() is None:
                break
        task.cancel()
        return gone

    assert asyncio.run(run())() is None
