"""A real failover (issue 13): a pg_auto_failover formation started by the test (a monitor,
a primary and a synchronous secondary on loopback ports), `ledger serve` on the multi-host URL
with target_session_attrs=read-write, a load of Earn calls, the primary stopped for good
(`pg_autoctl stop`), the secondary promoted by the monitor. Tally reconnects by itself, and
every acknowledged request is in the new primary's log exactly once."""

from __future__ import annotations

import time

import grpc
import psycopg

from tests.load import balance, logged_requests, serving, set_up_members
from tests.pg_clusters import auto_failover_formation
from tests.retrying_load import RetryingEarns

PROGRAM = "failover"
MEMBERS = [f"member-{i}" for i in range(6)]


def test_the_secondary_takes_over_and_nothing_acknowledged_is_lost() -> None:
    with auto_failover_formation("tally") as formation:
        primary, secondary = formation.nodes
        with psycopg.connect(formation.conninfo(primary)) as conn:
            # Commits wait for the secondary: what is acknowledged survives the primary.
            standbys = conn.execute("SHOW synchronous_standby_names").fetchone()
            level = conn.execute("SHOW synchronous_commit").fetchone()
        assert standbys is not None
        assert standbys[0].startswith("ANY 1 (")  # pg_auto_failover names the secondary
        assert level == ("on",)

        with serving(formation.url()) as server:
            set_up_members(server.target, PROGRAM, MEMBERS, 0)
            load = RetryingEarns(server.target, PROGRAM, MEMBERS, threads=6).start()
            try:
                load.wait_for("commands on the first primary", lambda: load.count() >= 60)
                before = load.count()
                stopped_at = time.monotonic()
                formation.stop_node(primary)
                formation.wait_for({secondary.name: "wait_primary"}, 60)
                load.wait_for(
                    "commands on the new primary", lambda: load.count() >= before + 60, 60
                )
            finally:
                load.stop()

            assert not load.fatal, load.fatal
            # While the primary was going, calls were told UNAVAILABLE (and retried), and
            # nothing else: no INTERNAL, no hang past the deadline.
            assert set(load.codes_since(0)) <= {grpc.StatusCode.UNAVAILABLE}
            assert load.codes_since(0) == load.codes_since(stopped_at)

            # The new primary's log: each acknowledged request once, nothing else of the load.
            records = logged_requests(formation.url(), PROGRAM)
            acknowledged = set(load.acknowledged)
            assert {r for r in records if r.startswith("till-")} == acknowledged
            assert all(records[r] == 1 for r in acknowledged)
            expected = load.expected_balances()
            position = load.last_position()
            got = {m: balance(server.target, PROGRAM, m, position) for m in expected}
            assert got == expected

        with psycopg.connect(formation.conninfo(secondary)) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        assert in_recovery == (False,)  # what we read above was the promoted secondary
