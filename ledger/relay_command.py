"""`ledger relay --nats URL --database URL`: the relay on its own, beside the servers (on
PostgreSQL; one per stream is active, others stand by). Runs until SIGTERM or SIGINT, then
stops as a server's relay does: what is read is published and acknowledged, the position
stored, the connection drained."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from ledger.relay import (
    DEFAULT_STREAM,
    DEFAULT_SUBJECT_PREFIX,
    Relay,
    RelayError,
    RelaySettings,
    relay_settings,
)


def add_parsers(sub: Any, database_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    relay = sub.add_parser(
        "relay",
        help="publish every event to NATS JetStream",
        description="Publish every event of the log to NATS JetStream, in log order, exactly "
        "once as a consumer sees it, on subjects <prefix>.<program>.<event_type> "
        "(docs/relay.md). Applies pending migrations first; stops gracefully on SIGTERM.",
    )
    database_arg(relay)
    relay.add_argument(
        "--nats",
        default=os.environ.get("TALLY_NATS_URL", ""),
        help="the NATS server, e.g. nats://127.0.0.1:4222; several comma-separated "
        "(env TALLY_NATS_URL)",
    )
    relay.add_argument(
        "--stream",
        default=os.environ.get("TALLY_RELAY_STREAM", DEFAULT_STREAM),
        help=f"the JetStream stream, made if missing (env TALLY_RELAY_STREAM; "
        f"default {DEFAULT_STREAM})",
    )
    relay.add_argument(
        "--subject-prefix",
        default=os.environ.get("TALLY_RELAY_SUBJECT_PREFIX", DEFAULT_SUBJECT_PREFIX),
        help="the subjects' first token(s) (env TALLY_RELAY_SUBJECT_PREFIX; "
        f"default {DEFAULT_SUBJECT_PREFIX})",
    )
    relay.add_argument(
        "--programs",
        default=os.environ.get("TALLY_RELAY_PROGRAMS", ""),
        help="only these programmes, comma-separated (env TALLY_RELAY_PROGRAMS; default all)",
    )
    relay.add_argument(
        "--batch-size", default="500", help="events read from the log at a time (default 500)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = relay_settings(
            args.nats,
            stream=args.stream,
            subject_prefix=args.subject_prefix,
            programs=args.programs,
            batch_size=_whole_number(args.batch_size),
        )
    except RelayError as e:
        return _refuse(str(e))
    from ledger.infrastructure.database import check_database, open_database, parse_database_url
    from ledger.infrastructure.migrations import migrate

    # A bad URL, an unreachable database or a failed migration: ledger.cli prints one line.
    config = parse_database_url(args.database)
    check_database(config, must_exist=config.kind == "sqlite")
    migrate(config)
    database = open_database(config, pool_size=2)
    try:
        asyncio.run(_relay(Relay(database, settings)))
    except RelayError as e:
        return _refuse(str(e))
    finally:
        database.close()
    return 0


async def _relay(relay: Relay) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await relay.start()
    settings: RelaySettings = relay.settings
    print(
        f"relaying to stream {settings.stream} at {settings.nats_url} "
        f"({', '.join(settings.subjects())})",
        file=sys.stderr,
        flush=True,
    )
    await stopping.wait()
    await relay.stop()


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RelayError(f"--batch-size {text!r} is not a whole number") from None


def _refuse(line: str) -> int:
    print(f"ledger relay: {line}", file=sys.stderr)
    return 2
