"""A load of Earn calls that retries like a well-behaved till: a call answered UNAVAILABLE
is sent again with the same request_id until it is acknowledged. When the load stops, every
command it sent has been acknowledged once, so the log must hold each exactly once and the
balances must be the sums of what was acknowledged (the database tests: a restart, a
failover)."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import grpc

from tests.load import earn_request, ledger_stub

# A call's deadline: far above what the server needs to say UNAVAILABLE during an outage
# (its pool wait, twice), so that a DEADLINE_EXCEEDED is a hang, and a defect.
CALL_DEADLINE_SECONDS = 20.0
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


@dataclass
class RetryingEarns:
    target: str
    program: str
    members: list[str]
    threads: int = 8
    acknowledged: dict[str, tuple[str, int, int]] = field(
        default_factory=dict
    )  # member, points, position
    # Every failed attempt: (request_id, status code, when).
    failures: list[tuple[str, grpc.StatusCode, float]] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)  # what stopped a thread

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)
        ]

    def start(self) -> RetryingEarns:
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> None:
        """Each thread finishes the command it is on (acknowledged, or given up on)."""
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=120)
            assert not worker.is_alive(), "a load thread hung"

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def codes_since(self, moment: float) -> Counter[grpc.StatusCode]:
        with self._lock:
            return Counter(code for _, code, at in self.failures if at >= moment)

    def wait_for(self, what: str, condition: Any, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while not condition():
            assert not self.fatal, f"the load stopped: {self.fatal}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def expected_balances(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        with self._lock:
            for member, points, _ in self.acknowledged.values():
                totals[member] += points
        return dict(totals)

    def last_position(self) -> int:
        with self._lock:
            return max(position for _, _, position in self.acknowledged.values())

    def _run(self, index: int) -> None:
        channel, stub = ledger_stub(self.target)
        try:
            n = 0
            while not self._stop.is_set():
                n += 1
                member = self.members[(index + n) % len(self.members)]
                request_id = f"till-{index}-{n}"
                request = earn_request(self.program, member, 1 + n % 5, request_id)
                if not self._until_acknowledged(stub, request):
                    return
        finally:
            channel.close()

    def _until_acknowledged(self, stub: Any, request: Any) -> bool:
        give_up = time.monotonic() + 120
        while time.monotonic() < give_up:
            try:
                response = stub.Earn(request, timeout=CALL_DEADLINE_SECONDS)
            except grpc.RpcError as e:
                with self._lock:
                    self.failures.append((request.request_id, e.code(), time.monotonic()))
                if e.code() not in RETRYABLE:
                    self.fatal.append(f"{request.request_id}: {e.code()} {e.details()}")
                    return False
                time.sleep(0.1)  # as RetryInfo suggests, roughly: not a busy loop
                continue
            with self._lock:
                self.acknowledged[request.request_id] = (
                    request.member_id,
                    request.points,
                    response.position,
                )
            return True
        self.fatal.append(f"{request.request_id}: never acknowledged")
        return False
