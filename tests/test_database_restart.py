"""PostgreSQL restarted under load (issue 13): `ledger serve` as a process on a cluster of the
test's own (never the shared one), a load of concurrent Earn calls, the cluster stopped with
`pg_ctl stop -m fast` and started again. While it is gone the server reports NOT_SERVING and
calls get UNAVAILABLE (never INTERNAL, never a hang past the deadline); it recovers by
itself; every acknowledged command is in the log exactly once, the balances are the sums of
the acknowledged earns, and the projections catch up."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.load import balance, command_events, health, logged_requests, serving, set_up_members
from tests.load import transaction_id as txid
from tests.pg_clusters import Cluster, temporary_cluster, wait_until
from tests.retrying_load import RetryingEarns

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PROGRAM = "restart"
MEMBERS = [f"member-{i}" for i in range(6)]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with temporary_cluster() as c:
        yield c


def status_of(target: str) -> int | None:
    try:
        return health(target)
    except grpc.RpcError:
        return None


def test_postgresql_restarted_under_load_loses_nothing_acknowledged(cluster: Cluster) -> None:
    url = cluster.create_database("tally")
    with serving(url) as server:
        set_up_members(server.target, PROGRAM, MEMBERS, 0)
        load = RetryingEarns(server.target, PROGRAM, MEMBERS, threads=6).start()
        try:
            load.wait_for("commands before the restart", lambda: load.count() >= 60)

            stopped_at = time.monotonic()
            cluster.stop("fast")
            wait_until("NOT_SERVING", lambda: status_of(server.target) == NOT_SERVING, 30)
            load.wait_for(
                "UNAVAILABLE during the outage",
                lambda: load.codes_since(stopped_at)[grpc.StatusCode.UNAVAILABLE] >= 3,
            )
            during = load.count()

            cluster.start()
            wait_until("SERVING again", lambda: status_of(server.target) == SERVING, 60)
            load.wait_for("commands after the restart", lambda: load.count() >= during + 60)
        finally:
            load.stop()

        assert not load.fatal, load.fatal
        # Only UNAVAILABLE, and only while the database was away: no INTERNAL, no
        # DEADLINE_EXCEEDED (a call that hung), nothing before the stop.
        assert set(load.codes_since(0)) == {grpc.StatusCode.UNAVAILABLE}
        assert load.codes_since(0) == load.codes_since(stopped_at)

        # Every acknowledged command (that is every command sent: each was retried until
        # acknowledged) is in the log exactly once: one request record, one event.
        acknowledged = set(load.acknowledged)
        records = logged_requests(url, PROGRAM)
        assert {r for r in records if r.startswith("till-")} == acknowledged
        assert all(records[r] == 1 for r in acknowledged)
        events = command_events(server.target, PROGRAM)
        assert {t: n for t, n in events.items() if n != 1} == {}
        assert set(events) == {txid(PROGRAM, r) for r in acknowledged}

        # The read models caught up with everything, counted once.
        expected = load.expected_balances()
        position = load.last_position()
        got = {m: balance(server.target, PROGRAM, m, position) for m in expected}
        assert got == expected
        assert Counter(records.values()) == Counter({1: len(records)})
