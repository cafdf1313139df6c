"""Past one writer: does splitting programs across event stores raise the ceiling here?

    python -m benchmarks.scaling                 # 10 s per layout, Earn x64 in total
    python -m benchmarks.scaling --duration 3    # shorter

Layouts, each driven with the same total load (64 callers, one member each, Earn):
  one        one Tally process, one database (one events table, one table lock)
  two-dbs    two Tally processes, each on its own database: programs split in two, each
             half with its own events table, lock, WAL and server process (32 callers each)
  two-procs  two Tally processes on ONE database (shared table lock), 32 callers each

Prints calls/s per layout and the ratio to `one`; JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Earn, gather_limited, run_load
from benchmarks.run import (
    RESULTS,
    SERVERS,
    ServerProcess,
    create_database,
    drop_database,
    enroll,
    machine,
    open_session,
)

TOTAL_CALLERS = 64


async def drive(processes: list[ServerProcess], duration: float, tag: str) -> float:
    """Equal shares of the callers on each process at once; total successful calls/s."""
    await asyncio.gather(*(p.wait_serving() for p in processes))
    share = TOTAL_CALLERS // len(processes)
    plans = []
    for i, process in enumerate(processes):
        program = f"scale-{tag}-{i}"
        session = await open_session(process, program, f"{tag}-{i}")
        members = [f"m{k}" for k in range(share)]
        await gather_limited(
            [enroll(session, m, f"{tag}-{i}-enroll-{m}") for m in members], limit=16
        )
        plans.append((process, program, members))
    results = await asyncio.gather(
        *(
            run_load(p.target, Earn(), program, members, share, duration=duration, tag=tag)
            for p, program, members in plans
        )
    )
    errors = sum(r.error_count for r in results)
    if errors:
        print(f"{tag}: {errors} errors", file=sys.stderr)
    return sum(r.throughput for r in results)


def layout(name: str, duration: float, folder: Path) -> float:
    databases = [f"tally_scale_{os.getpid()}_{uuid.uuid4().hex[:6]}_{k}" for k in range(2)]
    urls = [create_database(db) for db in databases]
    targets = {"one": [urls[0]], "two-dbs": urls, "two-procs": [urls[0], urls[0]]}[name]
    processes = [ServerProcess(SERVERS[0], url, folder) for url in targets]
    try:
        return asyncio.run(drive(processes, duration, name))
    finally:
        for p in processes:
            p.stop()
        for db in databases:
            drop_database(db)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tally-scaling-") as folder:
        for name in ("one", "two-dbs", "two-procs"):
            rows[name] = layout(name, args.duration, Path(folder))
            print(f"{name:<10} {rows[name]:8.0f} calls/s", file=sys.stderr, flush=True)
    for name, rate in rows.items():
        print(f"{name:<10} {rate:8.0f} calls/s  {rate / rows['one']:.2f}x of one")
    out = RESULTS / f"scaling-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "calls_per_s": rows}, indent=2))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
