"""Reports from a read replica (`ledger serve --report-database`): a real primary cluster and
a hot standby streaming from it (tests/replica_cluster.py), a real `ledger serve` on the
primary whose ReportService reads the standby. Pausing the standby's replay shows where each
read goes: reports wait for the replica's own positions, commands and account queries do not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest

from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import report_pb2 as rpb
from ledger.v1 import report_pb2_grpc as rpb_grpc
from tests.replica_cluster import (
    Cluster,
    create_database,
    standby_of,
    temporary_cluster,
    wait_for_database,
)
from tests.support import Client
from tests.test_operator_errors import one_clear_line
from tests.test_server import (
    _kill_if_running,
    _serve,
    _sigterm,
    _wait_serving,
    free_port,
    run_ledger,
)

DBNAME = "tally"


@dataclass
class Replicated:
    primary: Cluster
    standby: Cluster
    client: Client
    reports: rpb_grpc.ReportServiceStub

    def standby_positions(self) -> dict[str, int]:
        with psycopg.connect(self.standby.conninfo(DBNAME)) as conn:
            rows = conn.execute("SELECT name, position FROM projection_tracking").fetchall()
        return {str(name): int(position) for name, position in rows}

    def replay(self, on: bool) -> None:
        with psycopg.connect(self.standby.conninfo(), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()" if on else "SELECT pg_wal_replay_pause()")


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    with temporary_cluster() as primary:
        create_database(primary, DBNAME)
        with standby_of(primary) as standby:
            wait_for_database(standby, DBNAME)
            target = f"127.0.0.1:{free_port()}"
            process = _serve(target, primary.url(DBNAME), "--report-database", standby.url(DBNAME))
            client = Client(target, "postgres")
            try:
                _wait_serving(target, process)
                yield Replicated(
                    primary, standby, client, rpb_grpc.ReportServiceStub(client.channel)
                )
            finally:
                client.close()
                if process.poll() is None:
                    print(_sigterm(process, timeout=30))  # the server's log, shown on failure
                _kill_if_running(process)


def earned(replicated: Replicated, points: int) -> tuple[str, str, int]:
    """A programme with one member who earned `points`; the earn's log position."""
    program, member = replicated.client.member()
    return program, member, replicated.client.earn(program, member, points).position


def test_a_report_with_min_position_sees_the_write_on_the_replica(
    replicated: Replicated,
) -> None:
    program, _, position = earned(replicated, 600)

    answer = replicated.reports.GetLiabilities(
        rpb.GetLiabilitiesRequest(program_id=program, min_position=position), timeout=30
    )

    assert answer.points_outstanding == 600
    assert answer.position >= position


def test_reports_wait_for_the_replica_not_the_primary(replicated: Replicated) -> None:
    replicated.replay(on=False)
    try:
        program, member, position = earned(replicated, 250)
        # Account queries read the primary, which has the earn.
        account = replicated.client.stub.GetAccount(
            pb.GetAccountRequest(program_id=program, member_id=member, min_position=position),
            timeout=30,
        )
        assert account.account.points_available == 250
        # The report waits for the replica, which has not replayed it.
        with pytest.raises(grpc.RpcError) as refused:
            replicated.reports.GetLiabilities(
                rpb.GetLiabilitiesRequest(program_id=program, min_position=position), timeout=1
            )
        assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Without min_position the report answers at once, from the replica as it stands,
        # and says how far that is: the replica's position, short of the primary's.
        stale = replicated.reports.GetTrialBalance(
            rpb.GetTrialBalanceRequest(program_id=program), timeout=30
        )
        assert stale.position == replicated.standby_positions()["journal"]
        assert stale.position < position
    finally:
        replicated.replay(on=True)
    caught_up = replicated.reports.GetLiabilities(
        rpb.GetLiabilitiesRequest(program_id=program, min_position=position), timeout=30
    )
    assert caught_up.points_outstanding == 250


def test_a_position_beyond_the_log_times_out_cleanly(replicated: Replicated) -> None:
    program, _, position = earned(replicated, 10)

    with pytest.raises(grpc.RpcError) as refused:
        replicated.reports.GetTrialBalance(
            rpb.GetTrialBalanceRequest(program_id=program, min_position=position + 10**9),
            timeout=1,
        )

    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server is none the worse for it.
    answer = replicated.reports.GetTrialBalance(
        rpb.GetTrialBalanceRequest(program_id=program, min_position=position), timeout=30
    )
    assert answer.position >= position


def test_reconciliation_stays_on_the_primary(replicated: Replicated) -> None:
    """It stores its runs: a read-only standby could not."""
    program, _, _ = earned(replicated, 10)

    run = replicated.reports.ReconcileStatement(
        rpb.ReconcileStatementRequest(program_id=program, source="bank", request_id="r-1"),
        timeout=30,
    )

    again = replicated.reports.GetReconciliation(
        rpb.GetReconciliationRequest(reconciliation_id=run.reconciliation_id), timeout=30
    )
    assert again.reconciliation_id == run.reconciliation_id


@pytest.mark.parametrize(
    ("report_database", "expected"),
    [
        (lambda r, tmp: f"sqlite:///{tmp}/r.db", "a report replica is a PostgreSQL standby"),
        # A primary (here the --database itself) is no replica: most often the wrong cluster.
        (lambda r, tmp: r.primary.url(DBNAME), "is not a standby"),
        (
            lambda r, tmp: f"postgresql://postgres@127.0.0.1:{free_port()}/{DBNAME}",
            "cannot reach PostgreSQL",
        ),
    ],
    ids=["not-postgres", "takes-writes", "unreachable"],
)
def test_a_report_database_that_is_no_reachable_standby_is_refused_in_one_line(
    replicated: Replicated,
    tmp_path: Path,
    report_database: Callable[[Replicated, Path], str],
    expected: str,
) -> None:
    result = run_ledger(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--database",
        replicated.primary.url(DBNAME),
        "--report-database",
        report_database(replicated, tmp_path),
    )
    one_clear_line(result, "ledger serve", expected)
    assert result.returncode == 2
