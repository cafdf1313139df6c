"""An operator's mistakes at the command line: each gets one clear line on stderr and a
non-zero exit, never a traceback (the real `ledger` command, as a subprocess)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support import ServerThread
from tests.test_server import free_port, run_ledger


def one_clear_line(result: object, *expected: str) -> str:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.returncode != 0, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, stderr
    for words in expected:
        assert words in stderr, stderr
    return stderr


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:abc", "the port must be a number"),
        ("127.0.0.1:99999", "the port must be a number from 0 to 65535"),
        ("127.0.0.1", "give HOST:PORT"),
        ("50051", "give HOST:PORT"),
        ("0.0.0.0:50051", "not a loopback address"),
    ],
)
def test_a_malformed_or_unsafe_listen_address_is_refused(
    listen: str, expected: str, tmp_path: Path
) -> None:
    result = run_ledger("serve", "--listen", listen, "--database", f"sqlite:///{tmp_path}/l.db")
    one_clear_line(result, "ledger serve", expected)
    assert not (tmp_path / "l.db").exists()  # refused before anything was made


def test_a_port_another_program_holds_is_refused_naming_the_port(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = run_ledger(
            "serve", "--listen", f"127.0.0.1:{port}", "--database", f"sqlite:///{tmp_path}/l.db"
        )
    one_clear_line(result, f"port {port}", "already in use")


def test_a_second_server_on_a_busy_port_is_refused(server: ServerThread, tmp_path: Path) -> None:
    """Regression: SO_REUSEPORT was always on, so a second server (another database even)
    started silently on the same port and answered some of the first one's clients."""
    result = run_ledger(
        "serve", "--listen", server.target, "--database", f"sqlite:///{tmp_path}/l.db"
    )
    one_clear_line(result, f"port {server.port}", "already in use")
