"""Where one command's wall time goes: Tally's own histograms beside the other servers' round trip.

    python -m benchmarks.breakdown                          # Earn, 1 caller, 10 s, 3 rounds
    python -m benchmarks.breakdown --operation topup --callers 16

Starts Tally (metrics on, `TALLY_METRICS_PORT`), the baseline and the in-memory server as
`benchmarks.run` does, drives each with the same load in turn, rotating the order each
round, and reads Tally's Prometheus histograms before and after each of its runs. Their sums
over their counts are means, so the table is of means (ms a call), nested:

- client round trip: the load generator's, every call (as in `benchmarks.run`);
- in the RPC handler: `rpc.server.duration` (our interceptor, from the request decoded to
  the response built; gRPC's transport and the client are outside it);
- submitted until answered: `tally.command.duration` (the handler's hand-over to the writer
  thread until the writer has the answer: queueing, deciding, saving);
- the event-store statement: `tally.event_store.write.duration` (one round trip to
  PostgreSQL and its commit, the WAL flush included).

The differences between the rows are the stages between them; the in-memory server's round
trip is what gRPC, protobuf and asyncio cost this machine for the same call, and the
baseline's is a hand-written command of one transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from benchmarks.loadgen import Earn, Operation, Redeem, Spend, TopUp, run_load
from benchmarks.run import (
    SERVERS,
    ServerProcess,
    create_database,
    drop_database,
    enroll,
    free_port,
    open_session,
    settle,
)

RPC_NAMES = {"earn": "Earn", "redeem": "Redeem", "topup": "TopUp", "spend": "Spend"}
# (row label, histogram, label that must be present) from the outermost stage inwards.
STAGES = (
    ("in the RPC handler", "rpc_server_duration_seconds", 'rpc_method="{rpc}"'),
    ("submitted until answered", "tally_command_duration_seconds", ""),
    ("the event-store statement", "tally_event_store_write_duration_seconds", ""),
)
SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def means(before: str, after: str, rpc: str) -> dict[str, float]:
    """Mean ms of each stage between two scrapes of the Prometheus text."""
    totals: dict[str, list[float]] = {}
    for sign, text in ((-1.0, before), (1.0, after)):
        for line in text.splitlines():
            match = SAMPLE.match(line)
            if not match:
                continue
            for label, histogram, label_filter in STAGES:
                wanted = label_filter.format(rpc=rpc)
                if wanted and wanted not in (match["labels"] or ""):
                    continue
                for part, index in (("_sum", 0), ("_count", 1)):
                    if match["name"] == histogram + part:
                        totals.setdefault(label, [0.0, 0.0])[index] += sign * float(match["value"])
    return {label: 1000 * total / count for label, (total, count) in totals.items() if count > 0}


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


async def measure(
    process: ServerProcess,
    operation: Operation,
    callers: int,
    duration: float,
    round_no: int,
    metrics_port: int | None,
) -> dict[str, float]:
    await process.wait_serving()
    tag = f"breakdown-{round_no}-{uuid.uuid4().hex[:6]}"
    session = await open_session(process, f"bench-{tag}", tag)
    try:
        members = [f"r{round_no}.m{i}" for i in range(callers)]
        positions = [await enroll(session, m, f"{tag}-enroll-{m}") for m in members]
        seeded = await operation.prepare(session.stub, session.program_id, members, tag)
        await settle(session, members[0], max([*positions, seeded]))
        before = metrics_text(metrics_port) if metrics_port else ""
        result = await run_load(
            process.target,
            operation,
            session.program_id,
            members,
            callers,
            duration=duration,
            tag=tag,
        )
        after = metrics_text(metrics_port) if metrics_port else ""
        await settle(session, members[0], result.max_position)
    finally:
        await session.channel.close()
    found = {"client round trip": result.mean_ms, "client p50": result.p50_ms}
    if metrics_port:
        found.update(means(before, after, RPC_NAMES[operation.name]))
    return found


async def one_server(
    name: str, operation: Operation, callers: int, duration: float, round_no: int, log_dir: Path
) -> dict[str, float]:
    spec = next(s for s in SERVERS if s.name == name)
    dbname = f"tally_breakdown_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = create_database(dbname) if spec.database else None
    metrics_port = free_port() if name == "tally" else None
    env = {"TALLY_METRICS_PORT": str(metrics_port)} if metrics_port else {}
    process: ServerProcess | None = None
    try:
        process = ServerProcess(spec, url, log_dir, env)
        return await measure(process, operation, callers, duration, round_no, metrics_port)
    finally:
        if process is not None:
            process.stop()
        if url:
            drop_database(dbname)


def render(results: dict[str, list[dict[str, float]]], title: str) -> str:
    servers = list(results)
    rows = ["client round trip", "client p50", *(label for label, _, _ in STAGES)]
    lines = [title, f"{'mean ms a call':<28}" + "".join(f"{s:>10}" for s in servers)]
    for row in rows:
        cells = []
        for server in servers:
            values = [r[row] for r in results[server] if row in r]
            cells.append(f"{statistics.median(values):>10.3f}" if values else f"{'-':>10}")
        lines.append(f"{row:<28}" + "".join(cells))
    tally = {
        row: statistics.median(r[row] for r in results["tally"])
        for row in rows
        if all(row in r for r in results["tally"])
    }
    if len(tally) == len(rows):
        trip, handler, command, write = (
            tally["client round trip"],
            tally[STAGES[0][0]],
            tally[STAGES[1][0]],
            tally[STAGES[2][0]],
        )
        lines += [
            "",
            "Tally's stages (medians of the rounds' means, ms):",
            f"  outside the handler (client, gRPC, protobuf, interceptors): {trip - handler:.3f}",
            f"  the handler around the command (request, answer): {handler - command:.3f}",
            f"  the writer before and after the statement: {command - write:.3f}",
            f"  the event-store statement: {write:.3f}",
        ]
        others = {s: statistics.median(r["client round trip"] for r in results[s]) for s in servers}
        if "memory" in others and "baseline" in others:
            # Nothing of ours but the one statement: the floor of Tally's round trip here.
            floor = others["memory"] + write
            lines.append(
                f"  the in-memory round trip + the statement: {floor:.3f}, "
                f"against the baseline's round trip {others['baseline']:.3f} "
                f"({floor / others['baseline']:.2f}x)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.breakdown",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--operation", choices=sorted(RPC_NAMES), default="earn")
    parser.add_argument("--callers", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default="tally,baseline,memory")
    parser.add_argument("--json", type=Path, help="also write every round's means here")
    args = parser.parse_args(argv)
    operations: dict[str, Operation] = {
        "earn": Earn(),
        "redeem": Redeem(),
        "topup": TopUp(),
        "spend": Spend(),
    }
    servers = args.servers.split(",")
    if "tally" not in servers or not set(servers) <= {s.name for s in SERVERS}:
        parser.error(f"--servers: tally and any of {', '.join(s.name for s in SERVERS)}")
    log_dir = Path(tempfile.mkdtemp(prefix="tally-breakdown-"))
    results: dict[str, list[dict[str, float]]] = {s: [] for s in servers}
    try:
        for round_no in range(args.rounds):
            order = servers[round_no % len(servers) :] + servers[: round_no % len(servers)]
            for server in order:
                found = asyncio.run(
                    one_server(
                        server,
                        operations[args.operation],
                        args.callers,
                        args.duration,
                        round_no,
                        log_dir,
                    )
                )
                results[server].append(found)
                print(
                    f"[round {round_no + 1}/{args.rounds}] {server:<9} "
                    + "  ".join(f"{k} {v:.3f}" for k, v in found.items()),
                    flush=True,
                )
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    title = (
        f"\n{args.operation} at {args.callers} caller(s), {args.duration:g} s x {args.rounds} "
        f"rounds, {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    print(render(results, title))
    if args.json:
        args.json.write_text(json.dumps({"operation": args.operation, "rounds": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
