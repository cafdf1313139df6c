"""`ledger relay --nats URL`. STUB: the relay work fills this in."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_parsers(sub: Any, database_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    relay = sub.add_parser("relay", help="publish every event to NATS JetStream")
    database_arg(relay)


def run(args: argparse.Namespace) -> int:
    return 2
