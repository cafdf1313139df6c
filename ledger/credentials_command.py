"""`ledger credentials create|list|revoke`. STUB: the security work fills this in."""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(sub: Any) -> None:
    sub.add_parser("credentials", help="manage the bearer tokens clients authenticate with")


def run(args: argparse.Namespace) -> int:
    return 2
