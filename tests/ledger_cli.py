"""One-shot `ledger` commands for the tests, each in a process of its own forked from one
that has already imported the command's modules.

Starting the installed `ledger` script costs about 1.5 s of imports (grpc, protobuf,
eventsourcing, psycopg, OpenTelemetry) before the command does anything, and the suite runs
several hundred short commands (an operator's mistake, a report, a `program show`): most of
the time of the command-line tests was Python starting. Here one process, the zygote,
imports `ledger.cli` and the command modules once, while no thread runs (a fork is safe
only then; it checks), and forks a child per command. The child takes the command's working
directory, environment and arguments, points stdout and stderr at files and stdin at
/dev/null, runs `ledger.cli.main` as the console script does (`sys.exit(main())`: an
uncaught exception prints its traceback and exits 1), and leaves through the interpreter's
exit steps (threads joined, atexit functions). What a test sees (exit code, stdout, stderr,
a timeout) is what the installed script gives; the script itself still runs in every test
that starts a server (`ledger serve` as a subprocess) and in test_wheel.

`TALLY_TEST_CLI=script` runs every command through the installed script instead.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

LEDGER = str(Path(sys.executable).parent / "ledger")

# Everything `ledger` may import for a command, so that no child pays for it.
_PRELOAD = (
    "ledger.cli",
    "ledger.program_commands",
    "ledger.report_commands",
    "ledger.reconcile_command",
    "ledger.credentials_command",
    "ledger.relay_command",
    "ledger.project_command",
    "ledger.importer",
    "ledger.runtime",
    "ledger.api.server",
    "ledger.audit.commands",
    "ledger.infrastructure.migrations",
)


def run(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`ledger *args` to completion, as subprocess.run(capture_output=True, text=True)."""
    command = [LEDGER, *args]
    environment = dict(os.environ if env is None else env)
    if os.environ.get("TALLY_TEST_CLI") == "script":
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    reply = _zygote().ask(
        {
            "args": args,
            "env": environment,
            "cwd": str(cwd) if cwd is not None else os.getcwd(),
            "timeout": timeout,
        }
    )
    if reply.get("error"):
        raise RuntimeError(f"the ledger zygote failed: {reply['error']}")
    if reply["timed_out"]:
        raise subprocess.TimeoutExpired(command, timeout, reply["stdout"], reply["stderr"])
    return subprocess.CompletedProcess(
        command, reply["returncode"], reply["stdout"], reply["stderr"]
    )


class _Zygote:
    """The pytest side: one zygote process, asked one command at a time."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import tests.ledger_cli as z; z.serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.lock = threading.Lock()
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"the ledger zygote did not start: {ready}")

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        with self.lock:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the ledger zygote exited")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


_started: list[_Zygote] = []  # the running one, last
_start_lock = threading.Lock()


def _zygote() -> _Zygote:
    with _start_lock:
        if not _started or _started[-1].process.poll() is not None:
            _started.append(_Zygote())
            atexit.register(_started[-1].close)
        return _started[-1]


# ---------------------------------------------------------------------- the zygote itself


def serve() -> None:
    """The zygote's loop: one JSON request a line on stdin, one JSON reply a line on stdout."""
    import importlib

    for name in _PRELOAD:
        importlib.import_module(name)
    # The replies go to the original pipe on a descriptor of its own, which each child closes.
    replies_fd = os.dup(1)
    replies = os.fdopen(replies_fd, "w", buffering=1)
    if threading.active_count() != 1:
        replies.write(json.dumps({"ready": False, "threads": threading.active_count()}) + "\n")
        return
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            reply = _one(json.loads(line), replies_fd)
        except Exception:
            reply = {"error": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")


def _one(request: dict[str, Any], replies_fd: int) -> dict[str, Any]:
    # mkdtemp, not TemporaryDirectory: the child runs the exit functions it inherited, and a
    # TemporaryDirectory's finalizer among them would delete the folder under the zygote.
    folder = tempfile.mkdtemp(prefix="ledger-cli-")
    try:
        return _forked(request, folder, replies_fd)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _forked(request: dict[str, Any], folder: str, replies_fd: int) -> dict[str, Any]:
    out, err = Path(folder) / "stdout", Path(folder) / "stderr"
    out.touch()  # read back even if the child fails before it opens them
    err.touch()
    pid = os.fork()
    if pid == 0:
        _child(request, out, err, replies_fd)  # never returns
    deadline = time.monotonic() + float(request["timeout"])
    status = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {
                "timed_out": True,
                "stdout": out.read_text(errors="replace"),
                "stderr": err.read_text(errors="replace"),
            }
        else:
            time.sleep(0.002)
    return {
        "timed_out": False,
        "returncode": os.waitstatus_to_exitcode(status),
        "stdout": out.read_text(errors="replace"),
        "stderr": err.read_text(errors="replace"),
    }


def _child(request: dict[str, Any], out: Path, err: Path, replies_fd: int) -> None:
    code: int = 1
    try:
        os.setpgid(0, 0)  # a signal meant for the zygote's group does not reach it
        os.close(replies_fd)
        for fd, path, flags in (
            (0, Path(os.devnull), os.O_RDONLY),
            (1, out, os.O_WRONLY | os.O_TRUNC),
            (2, err, os.O_WRONLY | os.O_TRUNC),
        ):
            opened = os.open(path, flags, 0o600)
            os.dup2(opened, fd)
            os.close(opened)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()
        random.seed()  # a fresh process's own, not the zygote's inherited state
        sys.argv = [LEDGER, *request["args"]]
        from ledger.cli import main

        code = _exit_code(main)
    except BaseException:  # whatever the zygote itself got wrong
        traceback.print_exc()
        code = 1
    finally:
        _leave(code)


def _exit_code(main: Any) -> int:
    """`sys.exit(main())` as the interpreter ends it: SystemExit's code, or a traceback and 1."""
    try:
        sys.exit(main())
    except SystemExit as stop:
        if stop.code is None:
            return 0
        if isinstance(stop.code, int):
            return stop.code
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def _leave(code: int) -> None:
    """The interpreter's exit steps (non-daemon threads joined, atexit functions, streams
    flushed), then the process ends without running the zygote's own loop."""
    try:
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)
