"""The read models in processes of their own (decisions 31 and 38), with real processes on
a real PostgreSQL: `ledger serve` starts two `ledger project` children, one holding the eager
read model's advisory lock and the other every lazy one's, while the server holds none (one
child for all with `--projector-processes 1`); read-your-writes works across them; a `kill
-9` of a child under load is repaired by a restart, with nothing lost or counted twice (the
read models equal a rebuild: `ledger audit replay`); SIGTERM stops them all, exit 0;
`--processes 2` has one set of projectors; each child serves its own metrics; the notices
never hold up a command; SQLite and bad flags are refused in one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from ledger.commit_notices import COMMITS, Listener, Notifier
from ledger.infrastructure.database import parse_database_url
from ledger.projector import read_model_groups
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import report_pb2 as rpb
from ledger.v1 import report_pb2_grpc as rpb_grpc
from tests.load import (
    LEDGER,
    CommandLoad,
    ServerProcess,
    balance,
    earn_request,
    free_port,
    ledger_stub,
    log_head,
    set_up_members,
)
from tests.support import scratch_postgres
from tests.test_operator_errors import one_clear_line
from tests.test_server import run_ledger
from tests.test_several_processes import lock_holders

PROGRAM = "projected"
MEMBERS = [f"m{i}" for i in range(6)]
OPENING = 100_000


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(stat.parent.name), cmdline))
    return found


EAGER, LAZY = read_model_groups(2)


def the_projectors(
    server: ServerProcess, url: str, processes: int = 2, limit: float = 30
) -> list[int]:
    """The pids of the server's `ledger project` children, once they hold every lock: with
    two, the first holds the eager read model's, the second every lazy one's."""
    deadline = time.monotonic() + limit
    groups = read_model_groups(processes)
    while True:
        projectors = [p for p, cmd in children(server.pid) if "ledger.project_command" in cmd]
        assert len(projectors) <= processes, children(server.pid)
        holders = lock_holders(url)
        for order in (projectors, projectors[::-1]):
            if len(order) == processes and holders == {
                name: [pid] for pid, group in zip(order, groups, strict=True) for name in group
            }:
                return order
        assert time.monotonic() < deadline, (
            f"the projectors do not hold the locks: {children(server.pid)}, {holders}"
        )
        time.sleep(0.1)


def gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_serve_projects_in_a_child_that_holds_the_locks_and_sigterm_stops_both() -> None:
    with scratch_postgres() as url:
        server = ServerProcess(url)
        try:
            server.wait_serving()
            projectors = the_projectors(server, url)
            assert server.pid not in projectors  # and the server holds none of the locks

            set_up_members(server.target, PROGRAM, MEMBERS[:1], points=0)
            channel, stub = ledger_stub(server.target)
            with channel:
                for n in range(1, 6):  # read-your-writes through the other process
                    earned = stub.Earn(earn_request(PROGRAM, MEMBERS[0], 10, f"e{n}"), timeout=30)
                    read = stub.GetAccount(
                        pb.GetAccountRequest(
                            program_id=PROGRAM, member_id=MEMBERS[0], min_position=earned.position
                        ),
                        timeout=30,
                    )
                    assert read.position >= earned.position
                    assert read.account.points_available == 10 * n
                # A lazy read model (the journal): the wait asks the projector for it.
                reports = rpb_grpc.ReportServiceStub(channel)
                trial = reports.GetTrialBalance(
                    rpb.GetTrialBalanceRequest(program_id=PROGRAM, min_position=earned.position),
                    timeout=30,
                )
                assert trial.position >= earned.position
                assert trial.rows

            code = server.terminate(timeout=30)
            assert code == 0, server.stderr()
            deadline = time.monotonic() + 10
            while not all(gone(projector) for projector in projectors):
                assert time.monotonic() < deadline, "a projector outlived the server"
                time.sleep(0.05)
        finally:
            server.close()
    stderr = server.stderr()
    assert stderr.count("projections process stopped") == 2, stderr
    assert '"stopped"' in stderr


def test_a_killed_projector_is_restarted_and_nothing_is_lost_or_counted_twice() -> None:
    with scratch_postgres() as url:
        server = ServerProcess(url)
        try:
            server.wait_serving()
            set_up_members(server.target, PROGRAM, MEMBERS, OPENING)
            eager, lazy = the_projectors(server, url)
            load = CommandLoad([server.target], PROGRAM, MEMBERS, threads=6).start()
            load.wait_acknowledged(100)
            os.kill(eager, signal.SIGKILL)  # the balances' writer: the reads below wait on it
            load.wait_acknowledged(len(load.acknowledged) + 100)  # commands go on meanwhile
            restarted, same = the_projectors(server, url)
            assert restarted != eager
            assert same == lazy  # the other child went on as it was
            load.wait_acknowledged(len(load.acknowledged) + 100)
            load.stop()
            assert not load.failed, load.failed

            expected = dict.fromkeys(MEMBERS, OPENING)
            for request_id in load.acknowledged:
                command = load.sent[request_id]
                expected[command.member] += command.delta
            head = log_head(url)
            assert {m: balance(server.target, PROGRAM, m, head) for m in MEMBERS} == expected
            assert server.terminate(timeout=30) == 0, server.stderr()
        finally:
            server.close()
        assert "the projections process (pid" in server.stderr()
        assert "killed by SIGKILL" in server.stderr()
        replay = run_ledger("audit", "replay", "--database", url, timeout=120)
        assert replay.returncode == 0, replay.stdout + replay.stderr


def test_a_sigterm_while_the_processes_start_stops_them_all_with_exit_0() -> None:
    # The server processes are spawned interpreters: a SIGTERM passed on while one still
    # imports, before serve() set its handlers, ends it by the signal. It never served, so
    # that is a stop, not a failure (it failed CI once, on a loaded machine).
    with scratch_postgres() as url:
        server = ServerProcess(url, "--processes", "2")
        try:
            deadline = time.monotonic() + 30
            while len([p for p, cmd in children(server.pid) if "spawn_main" in cmd]) < 2:
                assert time.monotonic() < deadline, children(server.pid)
                time.sleep(0.01)
        finally:
            code = server.terminate(timeout=40)
            server.close()
        assert code == 0, server.stderr()


def test_processes_2_share_one_set_of_projectors() -> None:
    with scratch_postgres() as url:
        server = ServerProcess(url, "--processes", "2")
        try:
            server.wait_serving()
            projectors = the_projectors(server, url)  # children of the parent, not of a server
            servers = [p for p, cmd in children(server.pid) if "spawn_main" in cmd]
            assert len(servers) == 2, children(server.pid)
            assert not set(projectors) & set(servers)
            set_up_members(server.target, PROGRAM, MEMBERS[:1], points=70)
            assert balance(server.target, PROGRAM, MEMBERS[0], log_head(url)) == 70
        finally:
            # SIGTERM even after a failure: a kill -9 of the parent would leave its server
            # processes running (multiprocessing's children), holding the database.
            code = server.terminate(timeout=40) if server.process.poll() is None else None
            server.close()
        assert code == 0, server.stderr()


def test_projector_processes_1_writes_every_read_model_in_one_child() -> None:
    with scratch_postgres() as url:
        server = ServerProcess(url, "--projector-processes", "1")
        try:
            server.wait_serving()
            the_projectors(server, url, processes=1)
            set_up_members(server.target, PROGRAM, MEMBERS[:1], points=70)
            assert balance(server.target, PROGRAM, MEMBERS[0], log_head(url)) == 70
            assert server.terminate(timeout=30) == 0, server.stderr()
        finally:
            server.close()


def _two_free_ports() -> int:
    """A port that is free, and the next one too."""
    while True:
        port = free_port()
        with socket.socket() as next_one:
            try:
                next_one.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def test_the_two_projectors_serve_their_metrics_on_the_port_and_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = _two_free_ports()
    monkeypatch.setenv("TALLY_PROJECTOR_METRICS_PORT", str(port))
    with scratch_postgres() as url:
        server = ServerProcess(url)
        try:
            server.wait_serving()
            set_up_members(server.target, PROGRAM, MEMBERS[:1], points=70)
            balance(server.target, PROGRAM, MEMBERS[0], log_head(url))
            for at, mine, theirs in ((port, EAGER, LAZY), (port + 1, LAZY, EAGER)):
                text = scrape(at, f'tally_projection="{mine[0]}"')
                for name in mine:
                    assert f'tally_projection="{name}"' in text, text
                for name in theirs:
                    assert f'tally_projection="{name}"' not in text, text
            assert server.terminate(timeout=30) == 0, server.stderr()
        finally:
            server.close()


@pytest.mark.parametrize("value", ["abc", "65535", "-1"])  # 65535: the second child's is none
def test_a_bad_projector_metrics_port_is_one_line(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLY_PROJECTOR_METRICS_PORT", value)
    with scratch_postgres() as url:
        result = run_ledger("serve", "--listen", f"127.0.0.1:{free_port()}", "--database", url)
    assert result.returncode == 2, result.stderr
    one_clear_line(
        result,
        f"ledger serve: TALLY_PROJECTOR_METRICS_PORT={value!r}: give a port from 0 to 65534",
    )


def scrape(port: int, wanted: str, limit: float = 30) -> str:
    """The Prometheus text on `port` once it holds `wanted` (or the last one seen)."""
    deadline = time.monotonic() + limit
    text = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            if wanted in text:
                break
        except OSError:
            pass
        time.sleep(0.1)
    return text


def test_project_writes_only_the_read_models_it_is_given() -> None:
    """Two `ledger project` run by hand, each given its share: together they hold every
    lock, each only its own."""
    with scratch_postgres() as url:
        env = {**os.environ, "TALLY_DATABASE_URL": url}
        started = [
            subprocess.Popen(
                [LEDGER, "project", "--read-models", ",".join(group)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for group in (EAGER, LAZY)
        ]
        try:
            deadline = time.monotonic() + 30
            wanted = {
                name: [process.pid]
                for process, group in zip(started, (EAGER, LAZY), strict=True)
                for name in group
            }
            while lock_holders(url) != wanted:
                assert time.monotonic() < deadline, lock_holders(url)
                time.sleep(0.1)
        finally:
            for process in started:
                process.send_signal(signal.SIGTERM)
            codes = [process.wait(timeout=30) for process in started]
        assert codes == [0, 0], [process.stderr.read() for process in started if process.stderr]


def test_a_notice_never_holds_up_the_committing_thread() -> None:
    """With no database behind it the notifier fails quietly (and says so once), and a
    writer thread's call still returns at once."""
    dead = parse_database_url("postgresql://postgres@127.0.0.1:1/none")
    notifier = Notifier(dead)
    notifier.start()
    try:
        began = time.perf_counter()
        for position in range(1, 10_001):
            notifier.committed(position)
        assert time.perf_counter() - began < 0.5  # 10,000 calls; each a lock and a flag
        deadline = time.monotonic() + 10
        while not notifier.failures:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert notifier.sent == 0
    finally:
        notifier.stop()


def test_commit_notices_are_coalesced_and_delivered() -> None:
    with scratch_postgres() as url:
        config = parse_database_url(url)
        payloads: list[str] = []
        listener = Listener(config, {COMMITS: payloads.append})
        listener.start()
        notifier = Notifier(config)
        notifier.start()
        try:
            assert listener.listening.wait(10)
            for position in range(1, 2001):
                notifier.committed(position)
            deadline = time.monotonic() + 10
            while not payloads or payloads[-1] != "2000":
                assert time.monotonic() < deadline, payloads[-5:]
                time.sleep(0.01)
            assert len(payloads) == notifier.sent < 2000  # one in flight at a time
            assert [int(p) for p in payloads] == sorted(int(p) for p in payloads)
        finally:
            notifier.stop()
            listener.stop()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["project", "--database", "sqlite:///l.db"], ["ledger project", "needs a PostgreSQL"]),
        (
            ["serve", "--projections", "process", "--database", "sqlite:///l.db"],
            ["ledger serve", "--projections process needs a PostgreSQL", "one process's"],
        ),
    ],
)
def test_projections_in_a_process_on_sqlite_are_one_line(
    args: list[str], expected: list[str], tmp_path: Path
) -> None:
    result = run_ledger(*args, cwd=tmp_path)
    assert result.returncode == 2
    one_clear_line(result, *expected)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["serve", "--projections", "elsewhere"], "'elsewhere' is not one of 'process', 'inline'"),
        (["project", "--metrics-port", "-1"], "--metrics-port: must be at least 0, got -1"),
        (
            ["project", "--read-models", "points,ledger"],
            "--read-models: 'ledger': give names among points, journal, revenue, payments,"
            " insights",
        ),
        (["project", "--read-models", ""], "--read-models: none: give names among points"),
        (["serve", "--projector-processes", "3"], "--projector-processes: '3' is not 1 or 2"),
        (
            ["import", "--projector-processes", "two", "--program", "p", "h.jsonl"],
            "--projector-processes: 'two' is not 1 or 2",
        ),
    ],
)
def test_bad_projection_flags_say_what_is_wanted(args: list[str], expected: str) -> None:
    result = run_ledger(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr.splitlines()[-1], result.stderr
