"""`ledger project --database URL`: the read models in a process of their own (PostgreSQL;
ledger/projector.py, decisions 31 and 38). `ledger serve` starts two by default (points,
and the lazy read models: `--read-models` names a process's share); run it alone to
share one set of projections between servers started with `--projections process` on
other machines, or to keep a standby: one process at a time writes each read model (its
advisory lock) and another takes over within about a second when it goes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any


def add_parsers(
    sub: Any,
    database_arg: Callable[[argparse.ArgumentParser], None],
    port: Callable[[str], int],
) -> None:
    project = sub.add_parser(
        "project",
        help="run the projections (the read models) in a process of their own",
        description="Run the registered projections (balances, history, journal, revenue, "
        "payments, insights; or those --read-models names) and nothing else: no gRPC, no "
        "writer, no sweeper. Woken by the "
        "servers' commits (PostgreSQL NOTIFY), polls every 50 ms besides. PostgreSQL only. "
        "Applies pending migrations first; stops on SIGTERM or SIGINT (exit 0).",
    )
    database_arg(project)
    project.add_argument(
        "--metrics-port",
        type=port,
        default=os.environ.get("TALLY_PROJECTOR_METRICS_PORT", "0"),
        help="serve Prometheus metrics on 127.0.0.1:PORT (env TALLY_PROJECTOR_METRICS_PORT, "
        "which the one `ledger serve` starts reads too; 0: none)",
    )
    project.add_argument(
        "--no-migrate",
        action="store_true",
        help="refuse to start if migrations are pending instead of applying them",
    )
    project.add_argument(
        "--read-models",
        type=_read_models,
        default=(),
        metavar="NAME[,NAME...]",
        help="write only these read models (default: all of them: "
        f"{', '.join(_registered())}); another `ledger project` writes the others",
    )
    # Set by `ledger serve` for its child: stop when that process is gone.
    project.add_argument("--parent", type=int, default=0, help=argparse.SUPPRESS)


def _registered() -> list[str]:
    from projections import REGISTERED

    return [p.name for p in REGISTERED]


def _read_models(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    known = _registered()
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        shown = ", ".join(repr(name) for name in unknown) or "none"
        raise argparse.ArgumentTypeError(f"{shown}: give names among {', '.join(known)}")
    return tuple(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    """`python -m ledger.project_command ARGS` is `ledger project ARGS` without importing
    the other commands (seconds of grpc, protobuf and NATS): how `ledger serve` starts its
    child."""
    from ledger import cli

    parser = cli.OneLineParser(prog="ledger")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub, cli._database_arg, cli._position)
    return cli.run_parsed(parser.parse_args(["project", *(sys.argv[1:] if argv is None else argv)]))


def run(args: argparse.Namespace) -> int:
    from ledger.projector import run_projector

    return run_projector(
        args.database,
        metrics_port=args.metrics_port,
        apply_migrations=not args.no_migrate,
        parent=args.parent,
        read_models=args.read_models,
    )


if __name__ == "__main__":
    sys.exit(main())
