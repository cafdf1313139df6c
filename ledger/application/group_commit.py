"""Group commit: account commands that arrive together are saved in one transaction.

Each account belongs to one writer thread (partitioned by a hash of program and member), so
its aggregate stays cached there and concurrent groups never conflict on it. A writer takes
whatever has queued up while its previous transaction was committing (up to `max_group`),
lets `LedgerApplication.execute_group` decide and save it, and answers every command when
that transaction has committed: nothing is acknowledged before it is durable. The queues are
bounded: when one is full the caller is told at once (RESOURCE_EXHAUSTED), not kept waiting.
"""

from __future__ import annotations

import logging
import queue
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from concurrent.futures import Future
from dataclasses import dataclass
from uuid import UUID

from ledger.application import commands as c
from ledger.application.service import LedgerApplication
from ledger.application.views import Outcome
from ledger.domain import errors
from ledger.domain.account import MemberAccount

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The writer's queue is full: the caller should back off and retry."""


class AccountCache(MutableMapping[UUID, MemberAccount]):
    """Least-recently-used accounts of one writer."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[UUID, MemberAccount] = OrderedDict()

    def __getitem__(self, key: UUID) -> MemberAccount:
        self._items.move_to_end(key)
        return self._items[key]

    def __setitem__(self, key: UUID, value: MemberAccount) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __delitem__(self, key: UUID) -> None:
        del self._items[key]

    def __iter__(self) -> Iterator[UUID]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _Pending:
    command: c.AccountCommand
    future: Future[Outcome]


_STOP = object()


class GroupCommitWriter:
    def __init__(
        self,
        app: LedgerApplication,
        writers: int = 4,
        max_group: int = 256,
        queue_limit: int = 10_000,
        cache_per_writer: int = 50_000,
    ) -> None:
        self.app = app
        self.max_group = max_group
        self.queues: list[queue.Queue[_Pending | object]] = [
            queue.Queue(maxsize=queue_limit) for _ in range(writers)
        ]
        self.caches = [AccountCache(cache_per_writer) for _ in range(writers)]
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"writer-{i}", daemon=True)
            for i in range(writers)
        ]
        self.groups = 0
        self.commands = 0

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Finish what is queued, then stop."""
        for q, thread in zip(self.queues, self.threads, strict=True):
            if thread.is_alive():
                q.put(_STOP)
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=10)

    def submit(self, command: c.AccountCommand) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        key = f"{command.program_id}\x1f{command.member_id}".encode()
        partition = zlib.crc32(key) % len(self.queues)
        try:
            self.queues[partition].put_nowait(_Pending(command, future))
        except queue.Full:
            raise Overloaded("too many commands waiting; retry shortly") from None
        return future

    def _run(self, index: int) -> None:
        q, cache = self.queues[index], self.caches[index]
        while True:
            first = q.get()
            if first is _STOP:
                return
            group = [first]
            while len(group) < self.max_group:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    q.put(_STOP)
                    break
                group.append(item)
            self._execute([p for p in group if isinstance(p, _Pending)], cache)

    def _execute(self, group: list[_Pending], cache: AccountCache) -> None:
        try:
            results = self.app.execute_group([p.command for p in group], cache)
        except Exception as e:
            log.exception("a group of %d commands failed", len(group))
            for p in group:
                p.future.set_exception(e)
            return
        self.groups += 1
        self.commands += len(group)
        for p, result in zip(group, results, strict=True):
            if isinstance(result, errors.DomainError):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)
