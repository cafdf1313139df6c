"""Where a Tally server spends its time under load: py-spy on the server subprocess.

    python -m benchmarks.profile                      # Earn, 16 callers, 10 s of samples
    python -m benchmarks.profile --operation redeem --callers 64 --duration 20

Starts Tally on a scratch PostgreSQL database (as `benchmarks.run` does), drives it with the
load generator and records the server with `py-spy record --format raw --threads` (collapsed
stacks: open them in https://www.speedscope.app or feed them to flamegraph.pl). Then prints
a summary: samples by thread, the functions with the most samples on top of the stack (self)
and the ones most often anywhere on it (inclusive). Needs py-spy (`pip install py-spy`) and
permission to ptrace the server (root, or kernel.yama.ptrace_scope=0).

py-spy samples only threads that are running or runnable (idle threads waiting on a lock, a
socket or a queue are left out), so the numbers are where CPU time goes, not where callers
wait.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.loadgen import Batch, Earn, Operation, Redeem, run_load
from benchmarks.run import (
    RESULTS,
    SERVERS,
    Case,
    ServerProcess,
    create_database,
    drop_database,
    enroll,
    open_session,
)

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


# Where a command-handling thread is, by phase: the first phase one of whose functions is
# on the sample's stack. Names cover both write paths Tally has had: one transaction per
# command on the gRPC handler threads (`ledger_*`), and group commit on `writer-*` threads.
PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("save: insert_events (LOCK TABLE, INSERT, COMMIT)", ("insert_events",)),
    ("save: the rest (mapping, serialising)", ("Application.save",)),
    ("idempotency lookup", ("recorded", "existing_originators")),
    ("load account", ("get_account",)),
    ("load program", ("get_program",)),
    ("retry backoff", ("_backoff",)),
    ("decide and answer (domain, views)", ("decide", "AccountView.of", "_request_record")),
    ("other command work", ("_on_account", "_idempotent", "execute_group", "execute")),
    ("idle (waiting for work)", ("_worker", "GroupCommitWriter._run")),
]
COMMAND_THREADS = ("ledger", "writer")  # thread-name prefixes of the command paths


@dataclass
class Profile:
    samples: int
    by_thread: Counter[str]
    self_time: Counter[str]
    inclusive: Counter[str]
    phases: Counter[str]
    command_samples: int


def _frame_name(frame: str) -> str:
    """'earn (ledger/application/service.py:157)' -> 'earn (ledger/application/service.py)'"""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('function')} ({path})"


def _thread_group(frame: str) -> str:
    """'thread (18030): ledger_1' -> 'ledger' (thread names without their numbers)."""
    name = frame.split(": ", 1)[1] if ": " in frame else frame
    return re.sub(r"[_-]?\d+$", "", name) or name


# Frames on every worker thread's stack: they say nothing about where the time goes.
_PLUMBING = (
    "Thread._bootstrap",
    "Thread._bootstrap_inner",
    "Thread.run",
    "_worker (",
    "_WorkItem.run",
    "retry.<locals>",
)


def summarise_raw(text: str) -> Profile:
    by_thread: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    command_samples = 0
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = ""
        while frames and frames[0].startswith(("thread (", "process ")):
            thread = frames.pop(0)
        total += count
        group = _thread_group(thread)
        by_thread[group] += count
        if group in COMMAND_THREADS:
            command_samples += count
            phases[_phase(frames)] += count
        if frames:
            self_time[_frame_name(frames[-1])] += count
        for name in {_frame_name(f) for f in frames}:
            if not name.startswith(_PLUMBING):
                inclusive[name] += count
    return Profile(total, by_thread, self_time, inclusive, phases, command_samples)


def _phase(frames: list[str]) -> str:
    names = [f.split(" (", 1)[0] for f in frames]
    for phase, markers in PHASES:
        if any(name.endswith(m) or f".{m}" in name for name in names for m in markers):
            return phase
    return "other"


def render_profile(profile: Profile, top: int = 25) -> str:
    total = max(profile.samples, 1)
    lines = [f"{profile.samples} samples", "", "by thread:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in profile.by_thread.most_common()]
    if profile.command_samples:
        lines += ["", f"command threads ({', '.join(COMMAND_THREADS)}) by phase:"]
        lines += [
            f"  {n / profile.command_samples:6.1%}  {name}"
            for name, n in profile.phases.most_common()
        ]
    lines += ["", f"top {top} self (on top of the stack):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in profile.self_time.most_common(top)]
    lines += ["", f"top {top} inclusive (anywhere on the stack):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in profile.inclusive.most_common(top)]
    return "\n".join(lines)


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def _record(pid: int, duration: float, rate: int, gil: bool, path: Path) -> None:
    cmd = [
        _py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(duration)),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--threads",
        "--output",
        str(path),
    ]
    if gil:
        cmd.append("--gil")
    done = subprocess.run(
        cmd, capture_output=True, timeout=duration + 60, check=False, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0 or not path.exists():
        raise SystemExit(
            f"py-spy failed ({done.returncode}): "
            f"{(done.stdout + done.stderr).decode(errors='replace')}"
        )


async def _profile(
    process: ServerProcess, case: Case, duration: float, rate: int, paths: dict[str, Path]
) -> str:
    """Drive the server while py-spy records it once per entry of `paths` (wall, gil)."""
    await process.wait_serving()
    tag = f"profile-{uuid.uuid4().hex[:6]}"
    session = await open_session(process, f"bench-{tag}", tag)
    try:
        members = [f"{case.name}.m{i}" for i in range(case.members)]
        for m in members:
            await enroll(session, m, f"{tag}-enroll-{m}")
        await case.operation.prepare(session.stub, session.program_id, members, tag)
        load = asyncio.create_task(
            run_load(
                process.target,
                case.operation,
                session.program_id,
                members,
                case.callers,
                duration=len(paths) * (duration + 1.5) + 1.0,
                tag=tag,
            )
        )
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(0.5)  # the load is running before sampling starts
            for mode, path in paths.items():
                await loop.run_in_executor(
                    None, _record, process.pid, duration, rate, mode == "gil", path
                )
        finally:
            result = await load
        return (
            f"load during the profile: {result.throughput:.1f} calls/s, p50 "
            f"{result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, errors {result.errors}"
        )
    finally:
        await session.channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--operation", choices=("earn", "redeem", "batch"), default="earn")
    parser.add_argument("--batch-size", type=int, default=100, help="commands per batch call")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--hot", action="store_true", help="all callers on one member")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds sampled (<= 120)")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument(
        "--out",
        type=Path,
        help="prefix of the collapsed-stack files "
        "<prefix>-wall.txt and <prefix>-gil.txt "
        "(default benchmarks/results/profile-<timestamp>)",
    )
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 120 or not 1 <= args.callers <= 256:
        parser.error("--duration must be 1..120 s and --callers 1..256")
    operations: dict[str, Operation] = {
        "earn": Earn(),
        "redeem": Redeem(),
        "batch": Batch(args.batch_size),
    }
    case = Case(
        f"{args.operation}-{'hot-' if args.hot else ''}{args.callers}",
        operations[args.operation],
        args.callers,
        hot=args.hot,
        member_count=2_000 if args.operation == "batch" else 0,
    )
    prefix: Path = args.out or RESULTS / f"profile-{time.strftime('%Y%m%dT%H%M%S')}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # wall: every thread that is not idle; gil: only the thread holding the GIL.
    paths = {mode: prefix.with_name(f"{prefix.name}-{mode}.txt") for mode in ("wall", "gil")}

    spec = next(s for s in SERVERS if s.name == "tally")
    name = f"tally_profile_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    log_dir = Path(tempfile.mkdtemp(prefix="tally-profile-"))
    process: ServerProcess | None = None
    url = create_database(name)
    try:
        process = ServerProcess(spec, url, log_dir)
        load = asyncio.run(_profile(process, case, args.duration, args.rate, paths))
    except KeyboardInterrupt:
        return 130
    finally:
        if process is not None:
            process.stop()
        drop_database(name)
        shutil.rmtree(log_dir, ignore_errors=True)
    print(f"{case.name} against tally, py-spy {args.rate} Hz, {args.duration:g} s per mode")
    print(load)
    for mode, path in paths.items():
        title = (
            "WALL: all threads not idle" if mode == "wall" else "GIL: the thread holding the GIL"
        )
        print(f"\n=== {title} ({path})")
        print(render_profile(summarise_raw(path.read_text()), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
