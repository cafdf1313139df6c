"""Group commit: account commands that arrive together are saved in one transaction.

Each account belongs to one writer thread (partitioned by a hash of program and member), so
its aggregate stays cached there and concurrent groups never conflict on it. A writer takes
whatever has queued up while its previous transaction was committing (up to `max_group`),
lets `LedgerApplication.execute_group` decide and save it, and answers every command when
that transaction has committed: nothing is acknowledged before it is durable. The queues are
bounded: when one is full the caller is told at once (RESOURCE_EXHAUSTED), not kept waiting.

Every write of an account goes through its writer: commands, enrolments, atomic batches and
the server's own sweeps. An atomic batch is one group of its own; when its accounts belong
to several writers, each of them stops at the batch (a rendezvous: nobody is between
groups with a cached copy) and the first runs it with all their caches. Rendezvous are
queued under one lock, in the same order on every queue, so two of them never wait for
each other.
"""

from __future__ import annotations

import logging
import queue
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from functools import partial
from typing import Any
from uuid import UUID

from ledger.application import commands as c
from ledger.application.service import LedgerApplication
from ledger.application.views import Outcome
from ledger.domain import errors
from ledger.domain.account import MemberAccount
from ledger.domain.ids import account_id_key
from ledger.telemetry import instruments
from ledger.telemetry.instruments import Submission

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


Answer = Outcome | errors.DomainError


@dataclass
class _Pending:
    """Commands queued together: one command (its future gets the Outcome, or the refusal as
    its exception) or part of a batch (its future gets every command's answer, in order)."""

    commands: list[c.AccountCommand]
    future: Future[Any]
    batch: bool
    at_occurred: bool = False  # decide as of each command's occurred_at (imports)
    traced: Submission | None = None  # the caller's span and when it was handed over


@dataclass
class _Atomic:
    """An all-or-nothing batch, queued on every writer that owns one of its accounts."""

    commands: list[c.AccountCommand]
    future: Future[list[Answer]]
    partitions: list[int]
    barrier: threading.Barrier
    traced: Submission | None = None


class _Caches(MutableMapping[UUID, MemberAccount]):
    """The caches of several writers seen as one, each account in its own writer's."""

    def __init__(self, caches: dict[UUID, AccountCache]) -> None:
        self._by_account = caches

    def __getitem__(self, key: UUID) -> MemberAccount:
        return self._by_account[key][key]

    def __setitem__(self, key: UUID, value: MemberAccount) -> None:
        self._by_account[key][key] = value

    def __delitem__(self, key: UUID) -> None:
        del self._by_account[key][key]

    def __iter__(self) -> Iterator[UUID]:
        return (k for k, cache in self._by_account.items() if k in cache)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _CommandQueue(queue.Queue[_Pending | _Atomic | object]):
    """A writer's queue, bounded by the commands waiting in it rather than by its items (an
    ExecuteBatch is one item of up to 1,000 commands): at the limit, Overloaded at once."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.waiting = 0  # commands queued; changed under the queue's own mutex

    def _put(self, item: _Pending | _Atomic | object) -> None:
        weight = len(item.commands) if isinstance(item, _Pending | _Atomic) else 0
        if weight and self.waiting >= self.limit:
            raise Overloaded("too many commands waiting; retry shortly")
        self.waiting += weight
        super()._put(item)

    def _get(self) -> _Pending | _Atomic | object:
        item = super()._get()
        if isinstance(item, _Pending | _Atomic):
            self.waiting -= len(item.commands)
        return item


_STOP = object()


class GroupCommitWriter:
    def __init__(
        self,
        app: LedgerApplication,
        writers: int = 4,
        max_group: int = 256,
        queue_limit: int = 10_000,
        cache_per_writer: int = 20_000,  # ledger.runtime.DEFAULT_CACHE_ACCOUNTS (decision 37)
    ) -> None:
        self.app = app
        self.max_group = max_group
        self.queues: list[queue.Queue[_Pending | _Atomic | object]] = [
            _CommandQueue(queue_limit) for _ in range(writers)
        ]
        self.caches = [AccountCache(cache_per_writer) for _ in range(writers)]
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"writer-{i}", daemon=True)
            for i in range(writers)
        ]
        self._rendezvous = threading.Lock()

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Finish what is queued, then stop. Under the rendezvous lock, so that an atomic
        batch is queued before every writer's stop or after none."""
        with self._rendezvous:
            for q, thread in zip(self.queues, self.threads, strict=True):
                if thread.is_alive():
                    q.put(_STOP)
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=10)

    def submit(self, command: c.AccountCommand) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        traced = instruments.current.submitted([command])
        self._put(self._partition(command), _Pending([command], future, False, traced=traced))
        return future

    def submit_batch(
        self, commands: list[c.AccountCommand], at_occurred: bool = False
    ) -> Future[list[Answer]]:
        """Many commands as one queue item per writer: no future and no thread hop per
        command. The answers come back in the order of `commands`. `at_occurred`: decide
        each as of its occurred_at (see LedgerApplication.execute_group)."""
        parts: dict[int, list[int]] = {}
        for i, command in enumerate(commands):
            parts.setdefault(self._partition(command), []).append(i)
        combined: Future[list[Answer]] = Future()
        answers: list[Answer | None] = [None] * len(commands)
        remaining = [len(parts)]
        lock = threading.Lock()

        def settle(indices: list[int], part: Future[list[Answer]]) -> None:
            error = part.exception()
            with lock:
                if combined.done():
                    return
                if error is not None:
                    _settle(combined, error=error)
                    return
                for i, answer in zip(indices, part.result(), strict=True):
                    answers[i] = answer
                remaining[0] -= 1
                if remaining[0] == 0:
                    _settle(combined, [a for a in answers if a is not None])

        if not parts:
            combined.set_result([])
        for partition, indices in parts.items():
            future: Future[list[Answer]] = Future()
            future.add_done_callback(partial(settle, indices))
            # Overloaded after some parts were queued: those parts still run. That is the
            # non-atomic batch's contract: every item is idempotent, so the caller retries
            # the whole batch with the same request_ids.
            part = [commands[i] for i in indices]
            traced = instruments.current.submitted(part)
            pending = _Pending(part, future, True, at_occurred, traced)
            self._put(partition, pending)
        return combined

    def submit_atomic(self, commands: list[c.AccountCommand]) -> Future[list[Answer]]:
        """All or nothing, decided and saved by the writers that own its accounts."""
        future: Future[list[Answer]] = Future()
        partitions = sorted({self._partition(x) for x in commands})
        atomic = _Atomic(
            commands,
            future,
            partitions,
            threading.Barrier(len(partitions)),
            instruments.current.submitted(commands),
        )
        with self._rendezvous:
            try:
                for partition in partitions:
                    self._put(partition, atomic)
            except BaseException:
                # Writers that have it queued must not wait for the ones that do not.
                atomic.barrier.abort()
                raise
        return future

    def _partition(self, command: c.AccountCommand) -> int:
        key = f"{command.program_id}\x1f{command.member_id}".encode()
        return zlib.crc32(key) % len(self.queues)

    def _put(self, partition: int, pending: _Pending | _Atomic) -> None:
        if not self.threads[partition].is_alive():
            raise RuntimeError("the writers are not running: start() them first")
        try:
            self.queues[partition].put_nowait(pending)
        except queue.Full:
            raise Overloaded("too many commands waiting; retry shortly") from None

    def _run(self, index: int) -> None:
        q, cache = self.queues[index], self.caches[index]
        while True:
            first = q.get()
            if first is _STOP:
                return
            if isinstance(first, _Atomic):
                self._atomic(index, first)
                continue
            assert isinstance(first, _Pending)
            group, size = [first], len(first.commands)
            while size < self.max_group:  # a batch larger than max_group is still one group
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Atomic):  # after this group, as its own
                    self._execute(group, cache)
                    group = []
                    self._atomic(index, item)
                    break
                if not isinstance(item, _Pending):  # _STOP: finish this group first
                    q.put(_STOP)
                    break
                if item.at_occurred != first.at_occurred:  # its own group, next
                    self._execute(group, cache)
                    group, size, first = [], 0, item
                group.append(item)
                size += len(item.commands)
            if group:
                self._execute(group, cache)

    def _atomic(self, index: int, atomic: _Atomic) -> None:
        """Wait until every writer of the batch is here; the first of them runs it."""
        if len(atomic.partitions) > 1:
            try:
                atomic.barrier.wait()
            except threading.BrokenBarrierError:
                return  # not queued everywhere (a full queue): the caller was told
        try:
            if index == atomic.partitions[0]:
                caches = {
                    account_id_key(x.program_id, x.member_id): self.caches[self._partition(x)]
                    for x in atomic.commands
                }
                telemetry = instruments.current
                with telemetry.group([atomic.traced], len(atomic.commands)):
                    try:
                        answers = self.app.execute_atomic(atomic.commands, _Caches(caches))
                    except Exception as e:
                        log.exception("an atomic batch of %d commands failed", len(atomic.commands))
                        telemetry.failed(atomic.traced, atomic.commands, e)
                        _settle(atomic.future, error=e)
                    else:
                        telemetry.answered(atomic.traced, atomic.commands, answers)
                        _settle(atomic.future, answers)
        finally:
            if len(atomic.partitions) > 1:
                atomic.barrier.wait()  # the others wait until it is done with their caches

    def _execute(self, group: list[_Pending], cache: AccountCache) -> None:
        commands = [command for p in group for command in p.commands]
        telemetry = instruments.current
        with telemetry.group([p.traced for p in group], len(commands)):
            try:
                results = self.app.execute_group(commands, cache, at_occurred=group[0].at_occurred)
            except Exception as e:
                log.exception("a group of %d commands failed", len(commands))
                for p in group:
                    telemetry.failed(p.traced, p.commands, e)
                    _settle(p.future, error=e)
                return
            start = 0
            for p in group:
                answers = results[start : start + len(p.commands)]
                start += len(p.commands)
                telemetry.answered(p.traced, p.commands, answers)
                self._answer(p, answers)

    @staticmethod
    def _answer(p: _Pending, answers: list[Answer]) -> None:
        if p.batch:
            _settle(p.future, answers)
        elif isinstance(answers[0], errors.DomainError):
            _settle(p.future, error=answers[0])
        else:
            _settle(p.future, answers[0])


def _settle(future: Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    """Answer a caller that may have gone: a cancelled RPC (its deadline passed) cancels
    its future, and answering it then must not raise in, and so end, the writer thread. The
    command itself is committed or not exactly as decided; only the answer has nobody to
    go to."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass  # cancelled between the check and the answer
