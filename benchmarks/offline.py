"""The bulk cases, each beside a reference measured in the same run on the same data:

    import     `ledger import` of members, earns and redemptions (JSON lines) into a scratch
               PostgreSQL database, read models by a `ledger project` child (the default)
               and again with --projections inline
               | reference: COPY of the same lines into a plain table
    rebuild    the points projection rebuilt from zero over that log (read models emptied)
               | reference: reading and decoding the same events, writing nothing
    list-10k   ListTransactions over gRPC for a member with 10,000 transactions: the first
               page, a page deep in the history, and paging through all of it
               | reference: GetAccount of the same member (one row)
    cold       what a command on an account outside the writer's cache costs: Earn at 1 and
               64 callers, every call on another member (members with five earns each),
               on members the server has not loaded since it started
               | reference: the same on members it holds in its cache, in the same run
    accounts   RSS of a Tally server process with N accounts in its database after every
               one of them was written once, at the default writer cache and at 50,000
               (the cache is bounded; the RSS is also sampled every tenth of the way)
               | reference: RSS of the same server with an empty database
    reports    finance's reports over gRPC over a log of 1M events of points and stored
               value spread over 120 days (made by the real aggregates, COPYed into the log,
               then every projection caught up, which is timed too): liabilities now and
               at a part-day, movements and settlement for a month with part-day bounds,
               the trial balance | reference: GetAccount of one member
    insights   InsightsService over a programme of 100,000 members with two years of
               purchases, refunds, redemptions and stored value at 20 stores (real
               aggregates, COPYed): the insights projection's catch-up from zero, member
               insights, programme figures, a segment's first page and a walk of all of it,
               now and as of an earlier instant | reference: GetAccount of one member

    python -m benchmarks.offline            # full: 200k records, 1M accounts (~10 min)
    python -m benchmarks.offline --quick    # 20k records, 50k accounts
    python -m benchmarks.offline --smoke    # tiny (the test suite)
    python -m benchmarks.offline --cases import,rebuild --json out.json

Prints a table and writes JSON to benchmarks/results/offline-<timestamp>.json (or --json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg

from benchmarks.loadgen import percentile
from benchmarks.run import (
    RESULTS,
    SERVERS,
    ServerProcess,
    ServerSpec,
    create_database,
    drop_database,
    machine,
)
from ledger.application import commands as c
from ledger.domain.program import ProgramSettings
from ledger.infrastructure.chain import GENESIS, event_hash
from ledger.runtime import DEFAULT_CACHE_ACCOUNTS, Tally
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc
from projections.points import PointsProjection, micros
from projections.runner import ProjectionRunner

LEDGER = str(Path(sys.executable).parent / "ledger")
READ_MODELS = tuple(PointsProjection.tables)


@dataclass(frozen=True)
class Sizes:
    records: int  # import and rebuild
    members: int  # of the import
    history: int  # transactions of the list-10k member
    accounts: int  # the RSS case
    verify_events: int  # the verify case
    report_events: int  # the reports case
    insight_members: int  # the insights case
    cold_members: int  # the cold case (a third fit in the server's cache)


MODES = {
    "full": Sizes(
        200_000,
        members=20_000,
        history=10_000,
        accounts=1_000_000,
        verify_events=1_000_000,
        report_events=1_000_000,
        insight_members=100_000,
        cold_members=30_000,
    ),
    "quick": Sizes(
        20_000,
        members=2_000,
        history=10_000,
        accounts=50_000,
        verify_events=100_000,
        report_events=100_000,
        insight_members=10_000,
        cold_members=6_000,
    ),
    "smoke": Sizes(
        2_000,
        members=200,
        history=300,
        accounts=1_000,
        verify_events=2_000,
        report_events=2_000,
        insight_members=300,
        cold_members=600,
    ),
}


def history_lines(members: int, records: int, member_prefix: str = "m") -> Iterator[str]:
    """Members first, then earns with a redemption after every fourth, in time order."""
    start = datetime.now(UTC) - timedelta(days=30)
    for i in range(members):
        yield json.dumps(
            {"type": "member", "member_id": f"{member_prefix}{i}", "occurred_at": start.isoformat()}
        )
    step = timedelta(days=29) / max(1, records)
    for i in range(records - members):
        kind = "redeem" if i % 5 == 4 else "earn"
        # A redemption follows an earn of the same member.
        member = f"{member_prefix}{(i - 1 if kind == 'redeem' else i) % members}"
        at = (start + step * i).isoformat()
        points = 10 if kind == "redeem" else 100
        yield json.dumps(
            {"type": kind, "member_id": member, "points": points, "store_id": "s1",
             "order_ref": f"o{i}", "occurred_at": at}
        )  # fmt: skip


@contextmanager
def scratch(tag: str) -> Iterator[str]:
    name = f"tally_offline_{os.getpid()}_{uuid.uuid4().hex[:6]}_{tag}"
    url = create_database(name)
    try:
        yield url
    finally:
        drop_database(name)


def new_program(url: str, program_id: str = "p") -> None:
    tally = Tally.from_url(url)
    try:
        settings = ProgramSettings("Offline benchmark", "EUR")
        tally.app.create_program(
            c.CreateProgram(program_id=program_id, request_id=program_id, settings=settings)
        )
    finally:
        tally.close()


@contextmanager
def serving(url: str, folder: Path, spec: ServerSpec = SERVERS[0]) -> Iterator[tuple[Any, int]]:
    """A Tally server on `url` until the block ends: (its LedgerService stub, its pid)."""
    with serving_channel(url, folder, spec) as (channel, pid):
        yield pb_grpc.LedgerServiceStub(channel), pid


@contextmanager
def serving_channel(
    url: str, folder: Path, spec: ServerSpec = SERVERS[0]
) -> Iterator[tuple[grpc.Channel, int]]:
    """A Tally server on `url` until the block ends: (a channel to it, its pid)."""
    server = ServerProcess(spec, url, folder)
    try:
        asyncio.run(server.wait_serving())
        with grpc.insecure_channel(server.target) as channel:
            yield channel, server.pid
    finally:
        server.stop()


def run_import(
    url: str, path: Path, program: str = "p", projections: str = "", options: tuple[str, ...] = ()
) -> tuple[float, str]:
    """`ledger import` of `path`, read models loaded included: (seconds, its summary)."""
    command = [LEDGER, "import", "--database", url, "--program", program, "--no-progress"]
    if projections:
        command += ["--projections", projections]
    command += options
    started = time.perf_counter()
    done = subprocess.run(
        [*command, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"ledger import failed ({done.returncode}): {done.stdout[-1000:]}{done.stderr[-2000:]}"
        )
    return seconds, done.stdout.strip()


def copy_reference(url: str, path: Path) -> float:
    """COPY the same lines into a plain one-column table: the database's own ceiling."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE copy_reference (line jsonb)")
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy("COPY copy_reference (line) FROM STDIN") as copy,
            path.open() as f,
        ):
            for line in f:
                copy.write_row((line.strip(),))
        seconds = time.perf_counter() - started
        conn.execute("DROP TABLE copy_reference")
    return seconds


def case_import_and_rebuild(sizes: Sizes, folder: Path) -> list[dict[str, Any]]:
    path = folder / "history.jsonl"
    path.write_text("\n".join(history_lines(sizes.members, sizes.records)) + "\n")
    rows = []
    with scratch("import") as url:
        new_program(url)
        seconds, summary = run_import(url, path)
        copy_s = copy_reference(url, path)
        what = f"ledger import, {sizes.records:,} records ({sizes.members:,} members)"
        rows.append(_import_row("import", what, sizes.records, seconds, copy_s, summary))
        rows.append(rebuild(url))
    # The lever of decision 38 in the same run: one projections process instead of two.
    with scratch("import-one-projector") as url:
        new_program(url)
        seconds, summary = run_import(url, path, options=("--projector-processes", "1"))
        what = "the same import with --projector-processes 1 (one child for all read models)"
        rows.append(
            _import_row("import-one-projector", what, sizes.records, seconds, copy_s, summary)
        )
    # The lever of decision 34 in the same run: the read models in the import's own process.
    with scratch("import-inline") as url:
        new_program(url)
        seconds, summary = run_import(url, path, projections="inline")
        what = (
            "the same import with --projections inline (the read models in the "
            "import's own process)"
        )
        rows.append(_import_row("import-inline", what, sizes.records, seconds, copy_s, summary))
    return rows


def _import_row(
    case: str, what: str, records: int, seconds: float, copy_seconds: float, summary: str
) -> dict[str, Any]:
    return {
        "case": case,
        "what": what,
        "rate": records / seconds,
        "unit": "records/s",
        "seconds": seconds,
        "reference": "COPY of the same lines into a plain table",
        "reference_rate": records / copy_seconds,
        "detail": summary,
    }


def rebuild(url: str) -> dict[str, Any]:
    tally = Tally.from_url(url)
    try:
        with tally.database.transaction() as cur:
            for table in READ_MODELS:
                cur.execute(f"DELETE FROM {table}")
            cur.execute("DELETE FROM projection_tracking")
        events = tally.app.recorder.max_notification_id() or 0
        decode = tally.app.mapper.to_domain_event
        started = time.perf_counter()
        position = 0
        while True:
            batch = tally.app.recorder.select_notifications(start=position + 1, limit=500)
            if not batch:
                break
            for n in batch:
                decode(n)
            position = batch[-1].id
        read_s = time.perf_counter() - started
        runner = ProjectionRunner(
            tally.database, tally.app.recorder, decode, PointsProjection(tally.database.dialect)
        )
        started = time.perf_counter()
        runner.run_until_caught_up()
        seconds = time.perf_counter() - started
    finally:
        tally.close()
    return {
        "case": "rebuild",
        "what": f"points projection from zero, {events:,} events",
        "rate": events / seconds,
        "unit": "events/s",
        "seconds": seconds,
        "reference": "read and decode the same events, write nothing",
        "reference_rate": events / read_s,
    }


def _latencies(call: Callable[[], Any], count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def _p(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def case_list(sizes: Sizes, folder: Path) -> list[dict[str, Any]]:
    path = folder / "one-member.jsonl"
    path.write_text("\n".join(history_lines(1, sizes.history + 1, member_prefix="solo")) + "\n")
    with scratch("list") as url:
        new_program(url)
        run_import(url, path)
        with serving(url, folder) as (stub, _):
            member: dict[str, Any] = {"program_id": "p", "member_id": "solo0"}
            first = _latencies(
                lambda: stub.ListTransactions(pb.ListTransactionsRequest(**member, page_size=100)),
                200,
            )
            pages: list[str] = []
            token, started = "", time.perf_counter()
            while True:
                response = stub.ListTransactions(
                    pb.ListTransactionsRequest(**member, page_size=100, page_token=token)
                )
                token = response.next_page_token
                if not token:
                    break
                pages.append(token)
            walk_s = time.perf_counter() - started
            deep_token = pages[len(pages) * 9 // 10] if pages else ""
            deep = _latencies(
                lambda: stub.ListTransactions(
                    pb.ListTransactionsRequest(**member, page_size=100, page_token=deep_token)
                ),
                200,
            )
            account = _latencies(lambda: stub.GetAccount(pb.GetAccountRequest(**member)), 200)
    common = {"unit": "ms", "reference": "GetAccount of the same member"}
    return [
        {"case": "list-first-page", "what": f"first 100 of {sizes.history:,}",
         "p50": _p(first, 0.5), "p99": _p(first, 0.99),
         "reference_p50": _p(account, 0.5), "reference_p99": _p(account, 0.99), **common},
        {"case": "list-deep-page", "what": "a page 90% into the history",
         "p50": _p(deep, 0.5), "p99": _p(deep, 0.99),
         "reference_p50": _p(account, 0.5), "reference_p99": _p(account, 0.99), **common},
        {"case": "list-all-pages", "what": f"{len(pages) + 1} pages of 100, one after another",
         "seconds": walk_s, "unit": "s"},
    ]  # fmt: skip


def case_as_of(sizes: Sizes, folder: Path) -> list[dict[str, Any]]:
    """as_of reads of one member with `history` transactions (decision 20): GetAccount and
    ListLots as of random recorded instants inside the history, beside GetAccount now."""
    path = folder / "as-of-member.jsonl"
    path.write_text("\n".join(history_lines(1, sizes.history + 1, member_prefix="asof")) + "\n")
    with scratch("asof") as url:
        new_program(url)
        run_import(url, path)
        last = datetime.now(UTC)
        pick = random.Random(20)
        with serving(url, folder) as (stub, _):
            member: dict[str, Any] = {"program_id": "p", "member_id": "asof0"}
            stub.GetAccount(pb.GetAccountRequest(**member, as_of=_ts(last)))  # caught up
            enrolment = stub.ListTransactions(pb.ListTransactionsRequest(**member, page_size=1))
            first = enrolment.transactions[0].recorded_at.ToDatetime(tzinfo=UTC)

            def moment() -> Any:
                """A random recorded instant from the enrolment to the end of the import."""
                return _ts(first + (last - first) * pick.random())

            account = _latencies(
                lambda: stub.GetAccount(pb.GetAccountRequest(**member, as_of=moment())), 200
            )
            lots = _latencies(
                lambda: stub.ListLots(pb.ListLotsRequest(**member, as_of=moment())), 200
            )
            lots_now = _latencies(lambda: stub.ListLots(pb.ListLotsRequest(**member)), 200)
            now = _latencies(lambda: stub.GetAccount(pb.GetAccountRequest(**member)), 200)
    common = {
        "unit": "ms",
        "reference": "GetAccount now, the same member",
        "reference_p50": _p(now, 0.5),
        "reference_p99": _p(now, 0.99),
    }
    return [
        {"case": "as-of-account", "what": f"GetAccount(as_of) at random T, {sizes.history:,}"
         " transactions", "p50": _p(account, 0.5), "p99": _p(account, 0.99), **common},
        {"case": "as-of-lots", "what": f"ListLots(as_of) at random T (ListLots now p50"
         f" {_p(lots_now, 0.5):.2f} ms)", "p50": _p(lots, 0.5), "p99": _p(lots, 0.99),
         "now_p50": _p(lots_now, 0.5), "now_p99": _p(lots_now, 0.99), **common},
    ]  # fmt: skip


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children_rss_mib(pid: int) -> float:
    """RSS of the server's child processes (its projections process, decision 31)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with suppress(OSError):  # it ended between the listing and the read
                total += rss_mib(int(child)) + children_rss_mib(int(child))
    return total


# The cache sizes the accounts case measures: the default, and the default before decision
# 37 (what the RSS goal, < 300 MB at 1M accounts, gives up for it).
CACHE_SIZES = (DEFAULT_CACHE_ACCOUNTS, 50_000)


def _touch_all(stub: Any, count: int, tag: str, pid: int) -> list[tuple[int, float]]:
    """One accepted Earn per account through the writer; RSS at every tenth of the way."""
    curve: list[tuple[int, float]] = []
    step = max(1000, count // 10)
    for start in range(0, count, 1000):
        stub.ExecuteBatch(
            pb.ExecuteBatchRequest(
                program_id="p",
                commands=[
                    pb.BatchCommand(
                        earn=pb.EarnRequest(
                            member_id=f"m{i}", points=1, store_id="s", request_id=f"{tag}-{i}"
                        )
                    )
                    for i in range(start, min(count, start + 1000))
                ],
            ),
            timeout=600,
        )
        done = min(count, start + 1000)
        if done % step == 0 or done == count:
            curve.append((done, round(rss_mib(pid), 1)))
    return curve


def case_accounts(sizes: Sizes, folder: Path) -> list[dict[str, Any]]:
    path = folder / "members.jsonl"
    path.write_text("\n".join(history_lines(sizes.accounts, sizes.accounts)) + "\n")
    rows: list[dict[str, Any]] = []
    with scratch("accounts") as url:
        new_program(url)
        with serving(url, folder) as (_stub, pid):
            empty = rss_mib(pid)
        run_import(url, path)
        # One import, then a fresh server per cache size: each touches every account once
        # more, so both see the same database and the same number of writes.
        for cache in CACHE_SIZES:
            spec = replace(SERVERS[0], argv=(*SERVERS[0].argv, "--cache-accounts", str(cache)))
            with serving(url, folder, spec) as (stub, pid):
                curve = _touch_all(stub, sizes.accounts, f"touch-{cache}", pid)
                rss, projections = rss_mib(pid), children_rss_mib(pid)  # while it runs
            rows.append(
                {
                    "case": "accounts-rss"
                    if cache == DEFAULT_CACHE_ACCOUNTS
                    else f"accounts-rss-{cache // 1000}k",
                    "what": f"API process RSS with {sizes.accounts:,} accounts, each written "
                    f"once, --cache-accounts {cache:,}",
                    "rss_mib": rss,
                    "unit": "MiB",
                    "reference": "the same server, empty database",
                    "reference_rss_mib": empty,
                    "projections_rss_mib": projections,
                    "curve": curve,
                }
            )
    return rows


# ---------------------------------------------------------------------- cold accounts

COLD_EARNS_PER_MEMBER = 5  # a member's history, so a cold load replays a few events
COLD_ROUNDS = 3


def case_cold(sizes: Sizes, folder: Path) -> list[dict[str, Any]]:
    """The price of an account outside the writer's cache (the other side of a smaller
    --cache-accounts): commands on members the server holds against commands on members
    it must load, alternating in rounds on one server, each call on another member."""
    members = sizes.cold_members
    cache = members // 3
    warm = [f"m{i}" for i in range(cache // 2)]  # loaded before the clock starts
    fresh = iter(f"m{i}" for i in range(cache, members))  # each used once, cold
    # The members outside the cache, shared out: a tenth of each round's to the one caller.
    per_round = (members - cache) // COLD_ROUNDS
    per_run = {1: per_round // 11, 64: per_round - per_round // 11}
    path = folder / "cold.jsonl"
    records = members * (1 + COLD_EARNS_PER_MEMBER)
    path.write_text("\n".join(history_lines(members, records)) + "\n")
    runs: dict[tuple[int, str], list[dict[str, float]]] = {}
    with scratch("cold") as url:
        new_program(url)
        run_import(url, path)
        spec = replace(SERVERS[0], argv=(*SERVERS[0].argv, "--cache-accounts", str(cache)))
        server = ServerProcess(spec, url, folder)
        try:
            asyncio.run(server.wait_serving())
            asyncio.run(_earn_each(server.target, warm, 64, "load"))  # into the cache
            for round_no in range(COLD_ROUNDS):
                for callers, calls in per_run.items():
                    cold = [next(fresh) for _ in range(calls)]
                    hot = (warm * (calls // len(warm) + 1))[:calls]
                    for kind, who in (("warm", hot), ("cold", cold))[:: 1 - 2 * (round_no % 2)]:
                        tag = f"{kind}-{callers}-r{round_no}"
                        result = asyncio.run(_earn_each(server.target, who, callers, tag))
                        runs.setdefault((callers, kind), []).append(result)
        finally:
            server.stop()
    what = (
        f"Earn, each call on another of {members:,} members ({COLD_EARNS_PER_MEMBER} earns"
        f" each), --cache-accounts {cache:,}, medians of {COLD_ROUNDS} rounds"
    )
    median = _median_of_runs(runs)
    one_cold, one_warm = median[(1, "cold")], median[(1, "warm")]
    many_cold, many_warm = median[(64, "cold")], median[(64, "warm")]
    return [
        {
            "case": "cold-1",
            "what": f"{what}, 1 caller, accounts outside the cache",
            "p50": one_cold["p50"],
            "p99": one_cold["p99"],
            "reference_p50": one_warm["p50"],
            "reference_p99": one_warm["p99"],
            "reference": "the same on cached accounts",
        },
        {
            "case": "cold-64",
            "what": f"{what}, 64 callers, accounts outside the cache (p50 "
            f"{many_cold['p50']:.1f} ms, p99 {many_cold['p99']:.1f} ms; cached: p50 "
            f"{many_warm['p50']:.1f} ms, p99 {many_warm['p99']:.1f} ms)",
            "rate": many_cold["rate"],
            "unit": "calls/s",
            "reference": "the same on cached accounts",
            "reference_rate": many_warm["rate"],
            "runs": {f"{c}-{k}": v for (c, k), v in runs.items()},
        },
    ]


async def _earn_each(
    target: str, member_ids: list[str], callers: int, tag: str
) -> dict[str, float]:
    """One Earn per member in `member_ids`, `callers` at a time: calls/s, p50 and p99 (ms)."""
    queue = iter(enumerate(member_ids))
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LedgerServiceStub(channel)

        async def caller() -> None:
            for i, member in queue:
                began = time.perf_counter()
                await stub.Earn(
                    pb.EarnRequest(
                        program_id="p",
                        member_id=member,
                        points=1,
                        store_id="s",
                        request_id=f"{tag}-{i}",
                    ),
                    timeout=60,
                )
                latencies.append((time.perf_counter() - began) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "rate": len(latencies) / seconds,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
    }


def _median_of_runs(
    runs: dict[tuple[int, str], list[dict[str, float]]],
) -> dict[tuple[int, str], dict[str, float]]:
    return {
        key: {m: statistics.median(r[m] for r in results) for m in ("rate", "p50", "p99")}
        for key, results in runs.items()
    }


def synthetic_log(url: str, events: int, per_account: int = 10) -> None:
    """A correctly chained log of `events` Earn-sized events, COPYed straight into the events
    table (writing it through the service would take most of an hour): the verifier reads
    rows, so how they were written does not matter to its speed."""
    tally = Tally.from_url(url)  # applies the migrations
    tally.close()
    topic = "ledger.domain.account:MemberAccount.PointsEarned"
    with psycopg.connect(url, autocommit=True) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY ledger_events (originator_id, originator_version, topic, state, prev_hash,"
                " hash) FROM STDIN"
            ) as copy,
        ):
            accounts = max(1, events // per_account)
            for a in range(accounts):
                oid = uuid.UUID(int=a + 1)
                prev = GENESIS
                for version in range(1, per_account + 1):
                    state = json.dumps(
                        {"program_id": "p", "member_id": f"m{a}", "points": version,
                         "provenance": {"_type_": "provenance", "_data_": {
                             "transaction_id": str(uuid.uuid4()), "store_id": "s1"}}}
                    ).encode()  # fmt: skip
                    digest = event_hash(prev, oid, version, topic, state)
                    copy.write_row((oid, version, topic, state, prev, digest))
                    prev = digest
        conn.execute("ANALYZE ledger_events")


def case_verify(sizes: Sizes, folder: Path) -> list[dict[str, Any]]:
    """`ledger audit verify` over the whole log (hash chains and checkpoints)."""
    with scratch("verify") as url:
        synthetic_log(url, sizes.verify_events)
        return [verify_rate(url)]


def verify_rate(url: str) -> dict[str, Any]:
    subprocess.run([LEDGER, "audit", "checkpoint", "--database", url], check=True, text=True,
                   capture_output=True)  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(
        [LEDGER, "audit", "verify", "--database", url], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"verify failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")
    events = int(done.stdout.split("ok: ", 1)[1].split(" events", 1)[0])
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        conn.execute("SELECT sum(length(state)) FROM ledger_events").fetchone()
        scan_s = time.perf_counter() - started
    return {
        "case": "verify",
        "what": f"ledger audit verify, {events:,} events (process start included)",
        "rate": events / seconds,
        "unit": "events/s",
        "seconds": seconds,
        "reference": "PostgreSQL scanning the same states (sum of lengths)",
        "reference_rate": events / scan_s,
    }


REPORT_DAYS = 120
REPORT_STORES = 10
REPORT_START = datetime(2026, 1, 1, tzinfo=UTC)


def stored_value_log(url: str, events: int) -> int:
    """A log of about `events` events of one programme (CNY, Asia/Shanghai, a top-up bonus
    and a conversion rate): members earning, redeeming, topping up, spending, refunding and
    converting at ten stores, decided by the real aggregates, recorded `REPORT_DAYS` days
    apart from first to last. Stored through the application's mapper and COPYed into the
    events table with their hash chains (writing a million events through the service takes
    most of an hour). Returns how many were written."""
    import random

    from ledger.domain.account import MemberAccount
    from ledger.domain.errors import DomainError
    from ledger.domain.program import (
        ExpiryKind,
        ExpiryPolicy,
        PointsConversion,
        Program,
        TopUpBonusStep,
    )
    from ledger.domain.provenance import Provenance

    tally = Tally.from_url(url)  # applies the migrations; its mapper encodes the events
    mapper = tally.app.mapper
    tally.close()
    rng = random.Random(7)
    settings = ProgramSettings(
        "Reports benchmark",
        "CNY",
        time_zone="Asia/Shanghai",
        point_value_minor=1,
        # Year-end clearing (积分清零): every lot in one bucket, the forecast's worst case.
        expiry_policy=ExpiryPolicy(ExpiryKind.END_OF_YEAR_AFTER_YEARS, years=0),
        expected_redemption_rate_ppm=900_000,
        top_up_bonus=(TopUpBonusStep(10_000, 1_000), TopUpBonusStep(50_000, 8_000)),
        points_conversion=PointsConversion(100, 100),
    )
    span = timedelta(days=REPORT_DAYS)
    members = max(10, events // 20)
    pending: list[Any] = []
    program = Program(program_id="p", settings=settings, transaction_id="p")
    # Recorded when the log starts, like everything else in it (custody counts periods
    # from the programme's creation).
    created: list[Any] = list(program.collect_events())  # frozen dataclasses
    pending += [replace(e, timestamp=REPORT_START) for e in created]
    accounts: dict[int, MemberAccount] = {}
    spends: dict[int, list[str]] = {}
    count = 0

    def prov(at: datetime, reverses: str = "") -> Provenance:
        nonlocal count
        count += 1
        return Provenance(
            transaction_id=f"tx-{count}",
            request_id=f"r-{count}",
            occurred_at=at,
            store_id=f"s{rng.randrange(REPORT_STORES)}",
            reverses_transaction_id=reverses,
        )

    while len(pending) < events:
        at = REPORT_START + span * len(pending) / events
        m = rng.randrange(members)
        account = accounts.get(m)
        if account is None:
            accounts[m] = MemberAccount(
                program_id="p", member_id=f"m{m}", referrer_member_id="", provenance=prov(at)
            )
            spends[m] = []
        else:
            roll = rng.random()
            try:
                if roll < 0.35:
                    expires_at = settings.expiry_policy.expires_at(at, settings.time_zone)
                    purchase = rng.randint(1_000, 50_000)
                    account.earn(prov(at), at, rng.randint(10, 500), purchase, expires_at, None)
                elif roll < 0.45:
                    account.redeem(prov(at), at, rng.randint(1, 50))
                elif roll < 0.6:
                    cash = rng.choice((5_000, 10_000, 20_000, 50_000))
                    step = settings.top_up_step(cash)
                    bonus = step.bonus_for(cash) if step else 0
                    p = prov(at)
                    account.top_up(p, at, cash, bonus, f"pay-{p.transaction_id}", None, 1)
                elif roll < 0.85:
                    p = prov(at)
                    account.spend(p, at, rng.randint(100, 8_000), settings.stored_value_split)
                    spends[m].append(p.transaction_id)
                elif roll < 0.93 and spends[m]:
                    spent = rng.choice(spends[m])
                    account.reverse(prov(at, reverses=spent), at, spent, 0, rng.randint(1, 500))
                else:
                    account.convert_points(prov(at), at, 100, settings.points_conversion)
            except DomainError:
                pass  # refused: nothing happened, as at a till
        for e in accounts[m].collect_events():
            recorded: Any = e  # the library's events are frozen dataclasses
            pending.append(replace(recorded, timestamp=at))
    with psycopg.connect(url, autocommit=True) as conn:
        chains: dict[Any, bytes] = {}
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY ledger_events (originator_id, originator_version, topic, state, prev_hash,"
                " hash) FROM STDIN"
            ) as copy,
        ):
            for event in pending:
                stored = mapper.to_stored_event(event)
                prev = chains.get(stored.originator_id, GENESIS)
                digest = event_hash(
                    prev, stored.originator_id, stored.originator_version, stored.topic,
                    stored.state,
                )  # fmt: skip
                copy.write_row(
                    (stored.originator_id, stored.originator_version, stored.topic,
                     stored.state, prev, digest)
                )  # fmt: skip
                chains[stored.originator_id] = digest
        conn.execute("ANALYZE ledger_events")
    return len(pending)


def case_reports(sizes: Sizes, folder: Path) -> list[dict[str, Any]]:
    from ledger.v1 import report_pb2 as rpb
    from ledger.v1 import report_pb2_grpc as rpb_grpc

    with scratch("reports") as url:
        written = stored_value_log(url, sizes.report_events)
        tally = Tally.from_url(url)
        try:
            started = time.perf_counter()
            for runner in tally.projections.values():
                runner.run_until_caught_up()
            catch_up_s = time.perf_counter() - started
        finally:
            tally.close()
        # Fresh statistics for the planner, as autovacuum would give them after a bulk load
        # (before them, PostgreSQL guesses one row per table and sorts the forecast on disk).
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")
        # Bounds inside days (part-days are read from the postings), a month apart.
        month_start = REPORT_START + timedelta(days=31, hours=5, minutes=17)
        month_end = month_start + timedelta(days=30, hours=3)
        with serving_channel(url, folder) as (channel, _):
            stub = pb_grpc.LedgerServiceStub(channel)
            reports = rpb_grpc.ReportServiceStub(channel)
            calls: dict[str, Callable[[], Any]] = {
                "liabilities": lambda: reports.GetLiabilities(
                    rpb.GetLiabilitiesRequest(program_id="p", group_by_store=True)
                ),
                "liabilities-as-of": lambda: reports.GetLiabilities(
                    rpb.GetLiabilitiesRequest(program_id="p", as_of=_ts(month_end))
                ),
                "movements": lambda: reports.GetMovements(
                    rpb.GetMovementsRequest(
                        program_id="p", since=_ts(month_start), until=_ts(month_end)
                    )
                ),
                "settlement": lambda: reports.GetSettlement(
                    rpb.GetSettlementRequest(
                        program_id="p", since=_ts(month_start), until=_ts(month_end)
                    )
                ),
                "trial-balance": lambda: reports.GetTrialBalance(
                    rpb.GetTrialBalanceRequest(program_id="p", as_of=_ts(month_end))
                ),
                "deferred-revenue": lambda: reports.GetDeferredRevenue(
                    rpb.GetDeferredRevenueRequest(program_id="p", as_of=_ts(month_end))
                ),
                "breakage": lambda: reports.GetBreakage(
                    rpb.GetBreakageRequest(program_id="p", cohort=rpb.COHORT_MONTH)
                ),
                "expiry-forecast": lambda: reports.GetExpiryForecast(
                    rpb.GetExpiryForecastRequest(
                        program_id="p", since=_ts(FORECAST_SINCE), until=_ts(FORECAST_UNTIL)
                    )
                ),
                "custody": lambda: reports.GetPrepaidCustody(
                    rpb.GetPrepaidCustodyRequest(
                        program_id="p",
                        period=rpb.CUSTODY_PERIOD_MONTH,
                        ratio_ppm=200_000,
                        since=_ts(REPORT_START),
                        until=_ts(REPORT_START + timedelta(days=REPORT_DAYS)),
                    )
                ),
            }
            # A week's statement: the week's top-ups, one line each, matched afresh each
            # time (every run is stored).
            week = _statement(tally_url=url, since=month_start, days=7)
            calls["reconcile-week"] = lambda: reports.ReconcileStatement(
                rpb.ReconcileStatementRequest(
                    program_id="p",
                    source="bench",
                    period=rpb.Period(
                        since=_ts(month_start), until=_ts(month_start + timedelta(days=7))
                    ),
                    lines=week,
                    date_tolerance_seconds=60,
                    request_id=str(uuid.uuid4()),
                ),
                timeout=120,
            )
            timings = {name: _latencies(call, 30) for name, call in calls.items()}
            account = _latencies(
                lambda: stub.GetAccount(pb.GetAccountRequest(program_id="p", member_id="m1")), 200
            )
    common = {"unit": "ms", "reference": "GetAccount of one member"}
    rows: list[dict[str, Any]] = [
        {"case": "reports-catch-up", "what": f"every projection from zero over {written:,} events",
         "rate": written / catch_up_s, "unit": "events/s", "seconds": catch_up_s,
         "reference": "none (absolute)", "reference_rate": 0},
    ]  # fmt: skip
    for name, values in timings.items():
        rows.append(
            {"case": f"report-{name}", "what": f"over {written:,} events, {REPORT_DAYS} days",
             "p50": _p(values, 0.5), "p99": _p(values, 0.99),
             "reference_p50": _p(account, 0.5), "reference_p99": _p(account, 0.99), **common}
        )  # fmt: skip
    return rows


FORECAST_SINCE = datetime(2026, 12, 1, tzinfo=UTC)
FORECAST_UNTIL = datetime(2027, 1, 31, tzinfo=UTC)


def _statement(tally_url: str, since: datetime, days: int) -> list[Any]:
    """The processor's lines for the top-ups that occurred in [since, since + days): what a
    clean statement of the period says (one line per payment)."""
    from ledger.v1 import report_pb2 as rpb

    until = since + timedelta(days=days)
    with psycopg.connect(tally_url) as conn:
        rows = conn.execute(
            "SELECT transaction_id, payment_ref, amount_minor, occurred_at FROM rm_payments"
            " WHERE program_id = 'p' AND kind = 'TOP_UP' AND occurred_at >= %s"
            " AND occurred_at < %s ORDER BY occurred_at",
            (int(since.timestamp() * 1e6), int(until.timestamp() * 1e6)),
        ).fetchall()
    return [
        rpb.StatementLine(
            external_id=f"x-{tx}",
            payment_ref=ref,
            kind=rpb.STATEMENT_LINE_KIND_TOP_UP,
            amount_minor=amount,
            occurred_at=_ts(datetime.fromtimestamp(at / 1e6, UTC)),
        )
        for tx, ref, amount, at in rows
    ]


# ---------------------------------------------------------------------- insights (issue 15)

INSIGHT_DAYS = 730  # two years of purchases
INSIGHT_STORES = 20
# (purchase cycle in days, share of members): weekly regulars to twice-a-year visitors.
INSIGHT_HABITS = ((7, 10), (14, 15), (30, 30), (45, 20), (90, 15), (180, 10))


def _insight_plans(members: int, start: datetime, end: datetime, rng: random.Random) -> list[Any]:
    """What every member does, as (recorded at, order, member, action, detail), time-ordered:
    an enrolment on a day of the two years; one member in ten never buys; the others buy
    on their own habit (a cycle of 7 to 180 days, each gap 0.5 to 1.5 of it) from a few days
    after enrolling until they drift away (an exponential life, mean a year) or the end; at
    their home store seven times in ten; one purchase in 25 refunded (wholly or in part) a
    few days later; one in 50 uploaded by an offline till up to three days after it
    occurred. A fifth of the buyers load stored value once and pay with it while it lasts."""
    cycles = [c for c, share in INSIGHT_HABITS for _ in range(share)]
    span = (end - start).total_seconds()
    plans: list[Any] = []
    order = 0

    def plan(at: datetime, member: int, action: str, detail: Any = None) -> None:
        nonlocal order
        order += 1
        plans.append((at, order, member, action, detail))

    for m in range(members):
        enrolled = start + timedelta(seconds=span * rng.random())
        plan(enrolled, m, "enrol", f"s{rng.randrange(INSIGHT_STORES)}")
        if rng.random() < 0.1:
            continue
        cycle = rng.choice(cycles)
        leaves = enrolled + timedelta(days=rng.expovariate(1 / 365))
        level = rng.uniform(0.5, 3.0)  # this member's basket size
        home = f"s{rng.randrange(INSIGHT_STORES)}"
        if rng.random() < 0.2:
            plan(enrolled + timedelta(minutes=5), m, "top-up", home)
        at = enrolled + timedelta(days=rng.uniform(0, 7))
        while at < min(leaves, end):
            store = home if rng.random() < 0.7 else f"s{rng.randrange(INSIGHT_STORES)}"
            purchase = int(rng.randint(2_000, 30_000) * level)
            late = timedelta(days=rng.uniform(0, 3)) if rng.random() < 0.02 else timedelta(0)
            plan(at + late, m, "purchase", (at, store, purchase))
            if rng.random() < 0.04:
                refund_at = at + late + timedelta(days=rng.uniform(1, 10))
                if refund_at < end:
                    plan(refund_at, m, "refund", order)  # names the purchase's plan
            at += timedelta(days=cycle * rng.uniform(0.5, 1.5))
    plans.sort(key=lambda p: (p[0], p[1]))
    return plans


def insights_log(url: str, members: int) -> tuple[int, datetime]:
    """A programme (CNY, Asia/Shanghai, three tiers) of `members` members with two years of
    purchases ending an hour ago (_insight_plans), decided by the real aggregates and COPYed
    into the events table with their hash chains, as stored_value_log does. Each purchase is
    an Earn of a point per yuan with its purchase money; a stored-value member's purchase is
    also a Spend of it while the card covers it; a refund reverses the Earn (all its points,
    or half: its purchase pro rata) and refunds the Spend; a member with 500 points
    available redeems them at a purchase one time in three. Returns (events written, the
    last instant)."""
    from ledger.domain.account import MemberAccount
    from ledger.domain.errors import DomainError
    from ledger.domain.program import ExpiryKind, ExpiryPolicy, Program, TierRule, TopUpBonusStep
    from ledger.domain.provenance import Provenance

    tally = Tally.from_url(url)  # applies the migrations; its mapper encodes the events
    mapper = tally.app.mapper
    tally.close()
    rng = random.Random(15)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    start = end - timedelta(days=INSIGHT_DAYS)
    settings = ProgramSettings(
        "Insights benchmark",
        "CNY",
        time_zone="Asia/Shanghai",
        point_value_minor=1,
        expiry_policy=ExpiryPolicy(ExpiryKind.END_OF_YEAR_AFTER_YEARS, years=1),
        tiers=(
            TierRule("member", "Member", 0),
            TierRule("silver", "Silver", 2_000),
            TierRule("gold", "Gold", 8_000),
        ),
        tier_window_days=365,
        top_up_bonus=(TopUpBonusStep(50_000, 5_000),),
    )
    plans = _insight_plans(members, start, end, rng)
    program = Program(program_id="p", settings=settings, transaction_id="p")
    created = start - timedelta(days=1)
    accounts: dict[int, MemberAccount] = {}
    earn_of_plan: dict[int, tuple[str, str]] = {}  # purchase plan -> (earn tx, spend tx)
    count = written = 0

    def prov(at: datetime, store: str, reverses: str = "") -> Provenance:
        nonlocal count
        count += 1
        return Provenance(
            transaction_id=f"tx-{count}",
            request_id=f"r-{count}",
            occurred_at=at,
            store_id=store,
            reverses_transaction_id=reverses,
        )

    with psycopg.connect(url, autocommit=True) as conn:
        chains: dict[Any, bytes] = {}
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY ledger_events (originator_id, originator_version, topic, state, prev_hash,"
                " hash) FROM STDIN"
            ) as copy,
        ):

            def write(events: Any, recorded_at: datetime) -> None:
                nonlocal written
                for e in events:
                    stored = mapper.to_stored_event(replace(e, timestamp=recorded_at))
                    prev = chains.get(stored.originator_id, GENESIS)
                    digest = event_hash(
                        prev, stored.originator_id, stored.originator_version, stored.topic,
                        stored.state,
                    )  # fmt: skip
                    copy.write_row(
                        (stored.originator_id, stored.originator_version, stored.topic,
                         stored.state, prev, digest)
                    )  # fmt: skip
                    chains[stored.originator_id] = digest
                    written += 1

            write(program.collect_events(), created)
            for at, order, m, action, detail in plans:
                if action == "enrol":
                    accounts[m] = MemberAccount(
                        program_id="p", member_id=f"m{m}", referrer_member_id="",
                        provenance=prov(at, detail),
                    )  # fmt: skip
                    write(accounts[m].collect_events(), at)
                    continue
                account = accounts[m]
                try:
                    if action == "top-up":
                        p = prov(at, detail)
                        account.top_up(p, at, 50_000, 5_000, f"pay-{p.transaction_id}", 50_000, 1)
                    elif action == "purchase":
                        occurred, store, purchase = detail
                        points = purchase // 100
                        expires_at = settings.expiry_policy.expires_at(occurred, settings.time_zone)
                        earn = prov(occurred, store)
                        account.earn(
                            earn, at, points, purchase, expires_at,
                            settings.qualifies_until(occurred),
                        )  # fmt: skip
                        spend = ""
                        if account.cash + account.bonus >= purchase:
                            paid = prov(occurred, store)
                            account.spend(paid, at, purchase, settings.stored_value_split)
                            spend = paid.transaction_id
                        earn_of_plan[order] = (earn.transaction_id, spend)
                        if account.available >= 500 and account.debt == 0 and rng.random() < 0.34:
                            account.redeem(prov(occurred, store), at, 500)
                    elif action == "refund" and detail in earn_of_plan:
                        earn_tx, spend_tx = earn_of_plan.pop(detail)
                        whole = rng.random() < 0.6
                        points = 0 if whole else max(1, account.earns[earn_tx].points // 2)
                        store = f"s{rng.randrange(INSIGHT_STORES)}"
                        account.reverse(prov(at, store, earn_tx), at, earn_tx, points)
                        if spend_tx:
                            paid_with = account.spends[spend_tx]
                            half = max(1, (paid_with.cash + paid_with.bonus) // 2)
                            amount = 0 if whole else half
                            account.reverse(prov(at, store, spend_tx), at, spend_tx, 0, amount)
                except DomainError:
                    pass  # refused: nothing happened, as at a till
                write(account.collect_events(), at)
        conn.execute("ANALYZE ledger_events")
    return written, end


def case_insights(sizes: Sizes, folder: Path) -> list[dict[str, Any]]:
    """InsightsService over a programme of `insight_members` members with two years of
    purchases (insights_log): the insights projection caught up from zero (the other read
    models first, untimed), then GetMemberInsights of random members, GetProgramInsights,
    ListSegmentMembers' first page and a walk of a whole segment, each now and as of 90
    days before the last purchase."""
    from ledger.v1 import insights_pb2 as ipb
    from ledger.v1 import insights_pb2_grpc as ipb_grpc
    from projections.insights import NAME as INSIGHTS

    with scratch("insights") as url:
        written, end = insights_log(url, sizes.insight_members)
        tally = Tally.from_url(url)
        try:
            for name, runner in tally.projections.items():
                if name != INSIGHTS:
                    runner.run_until_caught_up()
            started = time.perf_counter()
            tally.projections[INSIGHTS].run_until_caught_up()
            catch_up_s = time.perf_counter() - started
        finally:
            tally.close()
        earlier_at = end - timedelta(days=90)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")
            # As of 90 days earlier, only the members enrolled by then have insights (the
            # others are NOT_FOUND): the as-of reads pick among those.
            enrolled_earlier = [
                str(m)
                for (m,) in conn.execute(
                    "SELECT member_id FROM rm_insight_members WHERE program_id = 'p'"
                    " AND enrolled_at <= %s ORDER BY member_id",
                    (micros(earlier_at),),
                )
            ]
        earlier = _ts(earlier_at)
        pick = random.Random(28)
        members = sizes.insight_members
        with serving_channel(url, folder) as (channel, _):
            stub = ipb_grpc.InsightsServiceStub(channel)
            account = pb_grpc.LedgerServiceStub(channel)

            def member(**at: Any) -> Any:
                chosen = pick.choice(enrolled_earlier) if at else f"m{pick.randrange(members)}"
                return stub.GetMemberInsights(
                    ipb.GetMemberInsightsRequest(program_id="p", member_id=chosen, **at)
                )

            def programme(**at: Any) -> Any:
                return stub.GetProgramInsights(
                    ipb.GetProgramInsightsRequest(program_id="p", **at), timeout=120
                )

            segment = ipb.RFM_SEGMENT_CANNOT_LOSE

            def first_page(**at: Any) -> Any:
                return stub.ListSegmentMembers(
                    ipb.ListSegmentMembersRequest(
                        program_id="p", rfm_segment=segment, page_size=100, **at
                    ),
                    timeout=120,
                )

            def walk(**at: Any) -> tuple[int, int, float]:
                """Every page of the segment, 1,000 a page: (members, pages, seconds)."""
                started, token, seen, pages = time.perf_counter(), "", 0, 0
                while True:
                    page = stub.ListSegmentMembers(
                        ipb.ListSegmentMembersRequest(
                            program_id="p",
                            rfm_segment=segment,
                            page_size=1000,
                            page_token=token,
                            **at,
                        ),
                        timeout=120,
                    )
                    seen, pages, token = seen + len(page.members), pages + 1, page.next_page_token
                    if not token:
                        break
                if seen != page.total:
                    raise RuntimeError(f"walked {seen} members, the control total is {page.total}")
                return seen, pages, time.perf_counter() - started

            # The server's sweeper expires the lots past their expiry when it starts (the
            # log's first-year lots are: about 1 in 100 members), writing through the writer
            # while its read models follow: the reads are timed once that is over.
            head = _settled(url)
            swept = head - written
            stub.GetProgramInsights(  # the server's first read of the programme, untimed
                ipb.GetProgramInsightsRequest(program_id="p", min_position=head), timeout=300
            )
            # The as-of reads are fewer (each reads a row per member and makes the cuts),
            # so that the case stays within minutes.
            timings = {
                "member": _latencies(member, 200),
                "member-as-of": _latencies(lambda: member(as_of=earlier), 20),
                "program": _latencies(programme, 10),
                "program-as-of": _latencies(lambda: programme(as_of=earlier), 5),
                "segment-page": _latencies(first_page, 30),
                "segment-page-as-of": _latencies(lambda: first_page(as_of=earlier), 5),
            }
            walks = {"": walk(), "-as-of": walk(as_of=earlier)}
            figures = programme()
            reference = _latencies(
                lambda: account.GetAccount(pb.GetAccountRequest(program_id="p", member_id="m1")),
                200,
            )
        cli = _insights_cli(url)
        profiles = _insights_profiles(url, earlier_at)
    what = f"{members:,} members, {written:,} events, {INSIGHT_DAYS} days"
    rows: list[dict[str, Any]] = [
        {"case": "insights-catch-up", "what": f"insights projection from zero, {what}",
         "rate": written / catch_up_s, "unit": "events/s", "seconds": catch_up_s,
         "reference": "none (absolute)", "reference_rate": 0,
         "purchasing_members": figures.purchasing_members,
         "revenue_minor": figures.revenue_minor, "swept_events_before_reads": swept},
    ]  # fmt: skip
    for name, values in timings.items():
        rows.append(
            {"case": f"insights-{name}", "what": what, "p50": _p(values, 0.5),
             "p99": _p(values, 0.99), "reference_p50": _p(reference, 0.5),
             "reference_p99": _p(reference, 0.99), "unit": "ms",
             "reference": "GetAccount of one member"}
        )  # fmt: skip
        if name in profiles:
            rows[-1]["profile"] = profiles[name]
    for suffix, (seen, pages, seconds) in walks.items():
        at = " as of 90 days earlier" if suffix else ""
        rows.append(
            {"case": f"insights-walk{suffix}", "unit": "s", "seconds": seconds,
             "what": f"every page of CANNOT_LOSE{at}: {seen:,} members, {pages} pages of 1,000"}
        )  # fmt: skip
    seconds, listed = cli
    rows.append(
        {"case": "insights-cli", "unit": "s", "seconds": seconds,
         "what": f"ledger report insights --segment cannot_lose --format csv: {listed:,} members"}
    )  # fmt: skip
    return rows


def _settled(url: str, quiet: float = 2.0, limit: float = 300.0) -> int:
    """The log head once it has not moved for `quiet` seconds (the server's sweeper has
    written its first sweep)."""
    deadline = time.monotonic() + limit
    with psycopg.connect(url, autocommit=True) as conn:

        def head() -> int:
            row = conn.execute("SELECT COALESCE(MAX(notification_id), 0) FROM ledger_events")
            return int(row.fetchone()[0])  # type: ignore[index]

        last, since = head(), time.monotonic()
        while time.monotonic() - since < quiet and time.monotonic() < deadline:
            time.sleep(0.5)
            now = head()
            if now != last:
                last, since = now, time.monotonic()
    return last


def _insights_cli(url: str) -> tuple[float, int]:
    """`ledger report insights` writing a segment's CSV, as a marketer runs it: (seconds,
    members listed), the control total on stderr checked against the rows."""
    started = time.perf_counter()
    done = subprocess.run(
        [LEDGER, "report", "insights", "--database", url, "--program", "p",
         "--segment", "cannot_lose", "--format", "csv"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"ledger report insights failed: {done.stderr[-2000:]}")
    listed = len(done.stdout.splitlines()) - 1
    if f": {listed} members" not in done.stderr:
        raise RuntimeError(f"{listed} rows, but stderr says {done.stderr!r}")
    return seconds, listed


def _insights_profiles(url: str, earlier: datetime) -> dict[str, str]:
    """Where the time of the insights reads goes: each read once in this process under
    cProfile (the 14 functions of most cumulative and the 8 of most own time), by the name
    of its latency row."""
    import cProfile
    import io
    import pstats

    from ledger.domain.insights import Segment
    from ledger.insights_queries import InsightsQueries, Page, SegmentFilter

    tally = Tally.from_url(url)
    try:
        queries = InsightsQueries(tally.database)
        program = tally.app.get_program("p")
        now = tally.app.clock()
        chosen = SegmentFilter(segment=Segment.CANNOT_LOSE)
        reads: dict[str, Callable[[], Any]] = {
            "member": lambda: queries.member_insights(program, "m1", now),
            "member-as-of": lambda: queries.member_insights(program, "m1", earlier),
            "program": lambda: queries.program_insights(program, now),
            "program-as-of": lambda: queries.program_insights(program, earlier),
            "segment-page": lambda: queries.segment_members(program, chosen, now, Page(100)),
        }
        found = {}
        for name, read in reads.items():
            profile = cProfile.Profile()
            profile.runcall(read)
            text = io.StringIO()
            stats = pstats.Stats(profile, stream=text)
            stats.sort_stats("cumulative").print_stats(14)
            stats.sort_stats("tottime").print_stats(8)
            found[name] = text.getvalue()
        return found
    finally:
        tally.close()


def _ts(moment: datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


CASES: dict[str, Callable[[Sizes, Path], list[dict[str, Any]]]] = {
    "import": case_import_and_rebuild,  # also measures the rebuild, over the imported log
    "list": case_list,
    "as-of": case_as_of,
    "cold": case_cold,
    "accounts": case_accounts,
    "verify": case_verify,
    "reports": case_reports,
    "insights": case_insights,
}


def render(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        if "rate" in r:
            ratio = r["rate"] / r["reference_rate"] if r.get("reference_rate") else 0
            lines.append(
                f"{r['case']:<16} {r['rate']:>10,.0f} {r['unit']:<10} reference "
                f"{r['reference_rate']:>10,.0f} ({ratio:.2f}x)  {r['what']}; "
                f"reference: {r['reference']}"
                if r.get("reference_rate")
                else f"{r['case']:<16} {r['rate']:>10,.0f} {r['unit']:<10} {r['what']}"
            )
        elif "p50" in r:
            lines.append(
                f"{r['case']:<16} p50 {r['p50']:6.2f} ms p99 {r['p99']:6.2f} ms  reference p50 "
                f"{r['reference_p50']:5.2f} ms p99 {r['reference_p99']:5.2f} ms  {r['what']}"
            )
        elif "rss_mib" in r:
            lines.append(
                f"{r['case']:<16} {r['rss_mib']:8.0f} MiB  reference {r['reference_rss_mib']:.0f}"
                f" MiB  {r['what']}; projections process {r['projections_rss_mib']:.0f} MiB"
            )
        else:
            lines.append(f"{r['case']:<16} {r['seconds']:8.2f} s  {r['what']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true")
    which.add_argument("--smoke", action="store_true")
    parser.add_argument("--cases", help=f"comma-separated, of {','.join(CASES)}")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = MODES[mode]
    names = args.cases.split(",") if args.cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tally-offline-") as folder:
        for name in names:
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            rows += CASES[name](sizes, Path(folder))
    print(f"Tally bulk cases ({mode}); {sizes}")
    print(render(rows))
    out = args.json or RESULTS / f"offline-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"mode": mode, "machine": machine(), "rows": rows}, indent=2))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
