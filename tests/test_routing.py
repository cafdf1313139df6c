"""Programmes on two PostgreSQL clusters (`ledger serve --routes`): the shared cluster at
5432 (a scratch database, --database, the default) and a temporary cluster of this test's
own holding programme B by the routing table. A real `ledger serve` process; where each
programme's rows land is checked in each database directly."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import grpc
import psycopg
import pytest

from ledger.domain.ids import account_id_key, program_id_key
from ledger.routing import RoutingTableError, load_routes
from ledger.v1 import audit_pb2 as apb
from ledger.v1 import audit_pb2_grpc as apb_grpc
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import report_pb2 as rpb
from ledger.v1 import report_pb2_grpc as rpb_grpc
from tests.replica_cluster import create_database, temporary_cluster
from tests.support import Client, new_id, refusal, scratch_postgres
from tests.test_operator_errors import one_clear_line
from tests.test_server import (
    _kill_if_running,
    _serve,
    _sigterm,
    _wait_serving,
    free_port,
    run_ledger,
)


@dataclass
class Placed:
    default_url: str  # --database: programme A, and any programme the table does not name
    second_url: str  # [clusters.second]: programme B
    routes: Path
    program_a: str
    program_b: str


@dataclass
class Served:
    target: str
    process: subprocess.Popen[str]
    client: Client

    @property
    def audit(self) -> apb_grpc.AuditServiceStub:
        return apb_grpc.AuditServiceStub(self.client.channel)

    @property
    def reports(self) -> rpb_grpc.ReportServiceStub:
        return rpb_grpc.ReportServiceStub(self.client.channel)


def routes_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def placed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Placed]:
    with scratch_postgres() as default_url, temporary_cluster() as second:
        second_url = create_database(second, "tally")
        program_b = new_id("b")
        routes = routes_file(
            tmp_path_factory.mktemp("routes") / "routes.toml",
            f'[clusters.second]\ndatabase = "{second_url}"\nprograms = ["{program_b}"]\n',
        )
        yield Placed(default_url, second_url, routes, new_id("a"), program_b)


@contextmanager
def serving(placed: Placed, routes: Path | None = None) -> Iterator[Served]:
    target = f"127.0.0.1:{free_port()}"
    process = _serve(target, placed.default_url, "--routes", str(routes or placed.routes))
    client = Client(target, "postgres")
    try:
        _wait_serving(target, process)
        yield Served(target, process, client)
    finally:
        client.close()
        if process.poll() is None:
            print(_sigterm(process, timeout=30))  # the server's log, shown on failure
        _kill_if_running(process)


@pytest.fixture(scope="module")
def served(placed: Placed) -> Iterator[Served]:
    with serving(placed) as running:
        yield running


@dataclass
class Member:
    program_id: str
    member_id: str
    position: int  # of its earn, in its own cluster's log


@pytest.fixture(scope="module")
def members(placed: Placed, served: Served) -> dict[str, Member]:
    """A member with 100 points in A and one with 200 in B."""
    found = {}
    for program_id, points in ((placed.program_a, 100), (placed.program_b, 200)):
        served.client.create_program(program_id=program_id)
        member_id = served.client.enroll(program_id)
        earned = served.client.earn(program_id, member_id, points)
        found[program_id] = Member(program_id, member_id, earned.position)
    return found


def aggregates_in(url: str, *ids: UUID) -> int:
    """How many of these aggregates have events in the database at `url`."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT originator_id) FROM ledger_events WHERE originator_id = ANY(%s)",
            ([*ids],),
        ).fetchone()
    return int(row[0]) if row else 0


def rows_in(url: str, table: str, program_id: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {table} WHERE program_id = %s", (program_id,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_each_programme_is_written_to_its_own_cluster_only(
    placed: Placed, members: dict[str, Member]
) -> None:
    for program_id, home, away in (
        (placed.program_a, placed.default_url, placed.second_url),
        (placed.program_b, placed.second_url, placed.default_url),
    ):
        ids = (
            program_id_key(program_id),
            account_id_key(program_id, members[program_id].member_id),
        )
        assert aggregates_in(home, *ids) == 2
        assert aggregates_in(away, *ids) == 0
        for table in ("rm_programs", "rm_accounts", "rm_transactions"):
            assert rows_in(home, table, program_id) >= 1, table
            assert rows_in(away, table, program_id) == 0, table


def test_account_queries_read_the_programmes_cluster(
    served: Served, members: dict[str, Member]
) -> None:
    for member, points in zip(members.values(), (100, 200), strict=True):
        answer = served.client.stub.GetAccount(
            pb.GetAccountRequest(
                program_id=member.program_id,
                member_id=member.member_id,
                min_position=member.position,
            ),
            timeout=30,
        )
        assert answer.account.points_available == points


def test_streamevents_of_a_programme_comes_from_its_cluster(
    placed: Placed, served: Served, members: dict[str, Member]
) -> None:
    for program_id in (placed.program_a, placed.program_b):
        events = list(
            served.audit.StreamEvents(apb.StreamEventsRequest(program_id=program_id), timeout=30)
        )
        assert {e.program_id for e in events} == {program_id}
        assert [e.event_type for e in events][:1] == ["ProgramCreated"]
        # Positions are per cluster: each log is its own, numbered from the start.
        assert events[-1].position == members[program_id].position


def test_reports_of_b_are_read_from_bs_cluster(
    placed: Placed, served: Served, members: dict[str, Member]
) -> None:
    b = members[placed.program_b]
    answer = served.reports.GetLiabilities(
        rpb.GetLiabilitiesRequest(program_id=b.program_id, min_position=b.position), timeout=30
    )
    assert answer.points_outstanding == 200


@pytest.mark.parametrize("rpc", ["StreamEvents", "VerifyChain"])
def test_the_whole_log_is_refused_name_a_programme(served: Served, rpc: str) -> None:
    def call() -> object:
        if rpc == "StreamEvents":
            return list(served.audit.StreamEvents(apb.StreamEventsRequest(), timeout=30))
        return served.audit.VerifyChain(apb.VerifyChainRequest(), timeout=30)

    with pytest.raises(grpc.RpcError) as refused:
        call()
    problem = refusal(refused.value)
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "several databases" in problem.fields["program_id"]


def test_create_checkpoint_names_no_programme_and_is_refused(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        served.audit.CreateCheckpoint(apb.CreateCheckpointRequest(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ledger audit checkpoint --database" in (refused.value.details() or "")


def test_a_reconciliation_is_found_on_the_cluster_that_holds_it(
    placed: Placed, served: Served, members: dict[str, Member]
) -> None:
    run = served.reports.ReconcileStatement(
        rpb.ReconcileStatementRequest(
            program_id=placed.program_b, source="bank", request_id=new_id("rec")
        ),
        timeout=30,
    )
    assert rows_in(placed.second_url, "reconciliations", placed.program_b) == 1
    assert rows_in(placed.default_url, "reconciliations", placed.program_b) == 0

    found = served.reports.GetReconciliation(
        rpb.GetReconciliationRequest(reconciliation_id=run.reconciliation_id), timeout=30
    )
    signed = served.reports.SignOffReconciliation(
        rpb.SignOffReconciliationRequest(
            reconciliation_id=run.reconciliation_id,
            operator_id="op-1",
            note="checked",
            request_id=new_id("sign"),
        ),
        timeout=30,
    )

    assert (found.program_id, signed.signed_off_by) == (placed.program_b, "op-1")
    with pytest.raises(grpc.RpcError) as refused:
        served.reports.GetReconciliation(
            rpb.GetReconciliationRequest(reconciliation_id=str(program_id_key("none"))),
            timeout=30,
        )
    assert refusal(refused.value).reason == "RECONCILIATION_NOT_FOUND"


def test_a_programme_on_the_wrong_cluster_cannot_be_served(
    placed: Placed, members: dict[str, Member], tmp_path: Path
) -> None:
    """A (on --database) placed on the second cluster by a changed table; and B (on the
    second cluster) left out of it, so that it would be looked for on --database."""
    both = f'"{placed.program_a}", "{placed.program_b}"'
    moved = routes_file(
        tmp_path / "moved.toml",
        f'[clusters.second]\ndatabase = "{placed.second_url}"\nprograms = [{both}]\n',
    )
    result = run_ledger(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--database",
        placed.default_url,
        "--routes",
        str(moved),
    )
    one_clear_line(result, f"programme {placed.program_a!r} is on cluster default")
    assert result.returncode == 2

    forgotten = routes_file(
        tmp_path / "forgotten.toml",
        f'[clusters.second]\ndatabase = "{placed.second_url}"\nprograms = ["other"]\n',
    )
    result = run_ledger(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--database",
        placed.default_url,
        "--routes",
        str(forgotten),
    )
    one_clear_line(result, f"holds programme {placed.program_b!r}")
    assert result.returncode == 2


def test_a_restart_keeps_the_placement(
    placed: Placed, served: Served, members: dict[str, Member]
) -> None:
    """Last in this module: it stops the module's server and starts another on the table."""
    print(_sigterm(served.process, timeout=30))
    with serving(placed) as again:
        for member, points in zip(members.values(), (100, 200), strict=True):
            answer = again.client.stub.GetAccount(
                pb.GetAccountRequest(program_id=member.program_id, member_id=member.member_id),
                timeout=30,
            )
            assert answer.account.points_available == points
        b = members[placed.program_b]
        before = rows_in(placed.second_url, "rm_transactions", b.program_id)
        more = again.client.earn(b.program_id, b.member_id, 5)
        again.client.stub.GetAccount(
            pb.GetAccountRequest(
                program_id=b.program_id, member_id=b.member_id, min_position=more.position
            ),
            timeout=30,
        )
        assert more.account.points_available == 205
        assert rows_in(placed.second_url, "rm_transactions", b.program_id) == before + 1
        assert rows_in(placed.default_url, "rm_transactions", b.program_id) == 0


URL = "postgresql://postgres@127.0.0.1:5999/tally"  # never opened: refused before
DEFAULT = "postgresql://postgres@127.0.0.1:5432/tally_routes_default"


def cluster(name: str = "s", database: str = URL, programs: str = '["p"]', extra: str = "") -> str:
    return f'[clusters.{name}]\ndatabase = "{database}"\nprograms = {programs}\n{extra}'


# Through `ledger serve` (one line, exit 2): the three kinds of mistake the operator makes most.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('default = "x"\n' + cluster(), "unknown key default"),
        (cluster(database="sqlite:///x.db"), "must be a postgresql:// URL"),
        (cluster() + cluster("t", URL + "2"), "placed on both [clusters.s] and [clusters.t]"),
    ],
)
def test_a_bad_routing_table_is_refused_in_one_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    routes = routes_file(tmp_path / "routes.toml", text)
    result = run_ledger(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--database",
        DEFAULT,
        "--routes",
        str(routes),
    )
    one_clear_line(result, "ledger serve", "routing table", expected)
    assert result.returncode == 2


# The others, where the table is read (the same exception `ledger serve` answers in one line).
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (cluster(extra='replica = "x"\n'), "unknown key replica"),
        (cluster(database="mysql://h/db"), "unsupported database URL"),
        ('[clusters.s]\ndatabase = 5\nprograms = ["p"]\n', "database must be a postgresql://"),
        (cluster(programs='["p", "p"]'), "listed twice"),
        (cluster(database=DEFAULT), "the database of --database"),
        (cluster(database=DEFAULT.replace("127.0.0.1", "localhost")), "database of --database"),
        (cluster(programs='["no spaces"]'), "is not 1..64 characters"),
        (f'[clusters.s]\ndatabase = "{URL}"\n', "programs must be a list"),
        (cluster("default"), "'default' is the name of --database's cluster"),
        ("[clusters.s\n", "not valid TOML"),
        ("[clusters.s]\n[clusters.s]\n", "not valid TOML"),
        ("", "at least one [clusters.NAME]"),
    ],
)
def test_every_mistake_in_a_routing_table_is_named(
    tmp_path: Path, text: str, expected: str
) -> None:
    routes = routes_file(tmp_path / "routes.toml", text)
    with pytest.raises(RoutingTableError) as refused:
        load_routes(str(routes), DEFAULT)
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_routing_table_places_the_programmes_it_names(tmp_path: Path) -> None:
    text = cluster(programs='["p", "q"]') + cluster("t", URL + "2", '["r"]')
    table = load_routes(str(routes_file(tmp_path / "routes.toml", text)), DEFAULT)
    assert [table.cluster_of(p) for p in ("p", "q", "r", "other")] == ["s", "s", "t", "default"]


def test_a_missing_routing_table_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run_ledger(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--database",
        "postgresql://postgres@127.0.0.1:5432/tally",
        "--routes",
        str(tmp_path / "none.toml"),
    )
    one_clear_line(result, "ledger serve", "cannot read it")
    assert result.returncode == 2
