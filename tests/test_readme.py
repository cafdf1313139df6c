"""The README's Python walkthrough runs as written against a real server, and the README
keeps exactly two set-up commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import ServerThread

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_walkthrough_runs_and_prints_the_history(server: ServerThread) -> None:
    text = README.read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    # Our own server, and a programme and request ids of this run: a shared server may
    # have seen the README's before.
    run = server.target.replace(":", "-").replace(".", "-")
    snippet = snippet.replace("127.0.0.1:50051", server.target).replace('"coffee"', f'"{run}"')
    result = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "20"
    assert lines[1:] == [
        "TRANSACTION_KIND_ENROLL 0 0",
        "TRANSACTION_KIND_EARN 120 120",
        "TRANSACTION_KIND_REDEEM -100 20",
    ]


def test_the_readme_has_two_set_up_commands() -> None:
    text = README.read_text()
    section = text.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert [c.strip() for c in commands] == ["scripts/serve", "scripts/test"]
