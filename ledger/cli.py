"""The `ledger` command: serve, project, migrate, program, report, reconcile, import, audit,
export, demo."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, NoReturn

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE = "sqlite:///ledger.db"
# ledger/runtime.py's, repeated so that building the parser imports nothing heavy.
DEFAULT_CACHE_ACCOUNTS = 20_000


class JsonFormatter(logging.Formatter):
    """One JSON object per line: structured logs a collector can parse."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(default_level: str = "INFO") -> None:
    """JSON lines on stderr at TALLY_LOG_LEVEL; by default INFO for the server, WARNING for
    the one-shot tools (whose own output says what they did)."""
    level = os.environ.get("TALLY_LOG_LEVEL", default_level).strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise LogLevelError(
            f"TALLY_LOG_LEVEL={os.environ.get('TALLY_LOG_LEVEL')!r} is no log level: "
            "give DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler])


class LogLevelError(ValueError):
    """TALLY_LOG_LEVEL names no level."""


def _database_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        default=os.environ.get("TALLY_DATABASE_URL", DEFAULT_DATABASE),
        help="sqlite:///FILE or postgresql://USER@HOST:PORT/DB (env TALLY_DATABASE_URL; "
        f"default {DEFAULT_DATABASE})",
    )


BIGGEST = 2**63 - 1  # what the databases' bigint (and SQLite's INTEGER) can hold


def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum` (and at most BIGGEST),
    refused in one line."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if value > BIGGEST:
            raise argparse.ArgumentTypeError(f"must be at most {BIGGEST}, got {value}")
        return value

    return parse


_positive_int = _whole_number(1)
_position = _whole_number(0)


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def _projections_mode(text: str) -> str:
    """--projections: process or inline ("" when neither flag nor environment says: process
    on PostgreSQL, inline on SQLite)."""
    if text not in ("", "process", "inline"):
        raise argparse.ArgumentTypeError(f"{text!r} is not one of 'process', 'inline'")
    return text


def _projector_processes(text: str) -> int:
    if text.strip() not in ("1", "2"):
        raise argparse.ArgumentTypeError(f"{text!r} is not 1 or 2")
    return int(text)


def _projector_processes_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--projector-processes",
        type=_projector_processes,
        default=os.environ.get("TALLY_PROJECTOR_PROCESSES", "2"),
        help="with --projections process: 2, the read-your-writes read models (balances, "
        "history) in one `ledger project` child and the journal, finance and insights in "
        "another; 1, all of them in one (env TALLY_PROJECTOR_PROCESSES; default 2; "
        "decision 38)",
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a mistake said in one line (argparse prints its whole usage first,
    up to a dozen lines, before the line that says what is wrong). Its subcommands' parsers
    are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (`{self.prog} --help` lists the options)\n")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ledger", description="Tally: the points and stored-value ledger")
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{serve,project,migrate,program,report,reconcile,credentials,relay,import,audit,"
        "export,demo}",
    )

    serve = sub.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the gRPC server (LedgerService, AuditService, health, reflection). "
        "Applies pending migrations first; stops gracefully on SIGTERM or SIGINT.",
    )
    serve.add_argument(
        "--listen",
        default=os.environ.get("TALLY_LISTEN", DEFAULT_LISTEN),
        help=f"HOST:PORT (env TALLY_LISTEN; default {DEFAULT_LISTEN})",
    )
    _database_arg(serve)
    serve.add_argument(
        "--processes",
        type=_positive_int,
        default=os.environ.get("TALLY_PROCESSES", "1"),
        help="server processes sharing the port, one per core (PostgreSQL only; "
        "env TALLY_PROCESSES; default 1)",
    )
    serve.add_argument(
        "--projections",
        type=_projections_mode,
        default=os.environ.get("TALLY_PROJECTIONS", ""),
        help="who writes the read models: 'process', a `ledger project` child this server "
        "starts and restarts (PostgreSQL; the default there), or 'inline', this server's "
        "own threads (the only one on SQLite) (env TALLY_PROJECTIONS)",
    )
    _projector_processes_arg(serve)
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="refuse to start if migrations are pending instead of applying them",
    )
    security = serve.add_argument_group("security (docs/security.md)")
    security.add_argument(
        "--credentials",
        default=os.environ.get("TALLY_CREDENTIALS", ""),
        help="a credentials file (`ledger credentials create`): clients must send a bearer "
        "token; needed to listen beyond loopback (env TALLY_CREDENTIALS)",
    )
    security.add_argument(
        "--tls-cert", default=os.environ.get("TALLY_TLS_CERT", ""), help="server certificate (PEM)"
    )
    security.add_argument(
        "--tls-key", default=os.environ.get("TALLY_TLS_KEY", ""), help="its private key (PEM)"
    )
    security.add_argument(
        "--tls-client-ca",
        default=os.environ.get("TALLY_TLS_CLIENT_CA", ""),
        help="mutual TLS: clients must present a certificate this CA signed (PEM)",
    )
    operations = serve.add_argument_group("operations (docs/operations.md)")
    operations.add_argument(
        "--metrics-port",
        type=_position,
        default=os.environ.get("TALLY_METRICS_PORT", "0"),
        help="serve Prometheus metrics on 127.0.0.1:PORT (env TALLY_METRICS_PORT; 0: none). "
        "Traces and metrics go by OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set",
    )
    operations.add_argument(
        "--report-database",
        default=os.environ.get("TALLY_REPORT_DATABASE_URL", ""),
        help="a PostgreSQL replica the reports read (env TALLY_REPORT_DATABASE_URL)",
    )
    operations.add_argument(
        "--routes",
        default=os.environ.get("TALLY_ROUTES", ""),
        help="a routing table placing programmes on other PostgreSQL clusters (env TALLY_ROUTES)",
    )
    operations.add_argument(
        "--nats",
        default=os.environ.get("TALLY_NATS_URL", ""),
        help="relay every event to NATS JetStream at this URL, e.g. nats://127.0.0.1:4222 "
        "(env TALLY_NATS_URL)",
    )
    operations.add_argument(
        "--cache-accounts",
        type=_positive_int,
        default=os.environ.get("TALLY_CACHE_ACCOUNTS", str(DEFAULT_CACHE_ACCOUNTS)),
        help="accounts the writer keeps in memory, about 5 KB each (env TALLY_CACHE_ACCOUNTS; "
        f"default {DEFAULT_CACHE_ACCOUNTS:,})",
    )
    operations.add_argument(
        "--grace",
        type=_seconds,
        # A string: argparse converts it with `type` only when the flag is not given, so a
        # bad TALLY_SHUTDOWN_GRACE is refused by `ledger serve` alone, in one line.
        default=os.environ.get("TALLY_SHUTDOWN_GRACE", "10"),
        help="seconds in-flight calls get to finish on SIGTERM (env TALLY_SHUTDOWN_GRACE; "
        "default 10)",
    )

    from ledger.project_command import add_parsers as add_project_parsers

    add_project_parsers(sub, _database_arg, _position)

    migrate = sub.add_parser(
        "migrate",
        help="apply pending schema migrations",
        description="Apply the pending schema migrations (ledger/migrations/<backend>/) and stop.",
    )
    _database_arg(migrate)

    from ledger.program_commands import add_parsers as add_program_parsers

    add_program_parsers(sub, _database_arg)

    from ledger.report_commands import add_parsers as add_report_parsers

    add_report_parsers(sub, _database_arg)

    from ledger.reconcile_command import add_parsers as add_reconcile_parsers

    add_reconcile_parsers(sub, _database_arg)

    from ledger.credentials_command import add_parsers as add_credentials_parsers

    add_credentials_parsers(sub)

    from ledger.relay_command import add_parsers as add_relay_parsers

    add_relay_parsers(sub, _database_arg)

    load = sub.add_parser(
        "import",
        help="load history (members, earns, redemptions...) from CSV or JSON lines",
        description="Load a retailer's history through the batch path; resumable: run it "
        "again after an interruption (see ledger/importer.py for the record format).",
    )
    _database_arg(load)
    load.add_argument("file", help="records: .csv (with a header) or .jsonl")
    load.add_argument("--program", required=True, help="the program (must exist)")
    load.add_argument("--format", choices=("csv", "jsonl"), help="default: by file extension")
    load.add_argument(
        "--source", help="name fixing the records' request_ids (default: the file name)"
    )
    load.add_argument(
        "--batch-size", type=_positive_int, default=1000, help="records per batch (at least 1)"
    )
    load.add_argument(
        "--projections",
        type=_projections_mode,
        default="",
        help="who writes the read models while it loads: 'process', a `ledger project` child "
        "(PostgreSQL; the default there), or 'inline', this process's own threads (the only "
        "one on SQLite)",
    )
    _projector_processes_arg(load)
    load.add_argument("--no-progress", action="store_true", help="no progress bar")

    audit = sub.add_parser(
        "audit",
        help="auditors' tools: verify the log, replay projections",
        description="Auditors' tools. They read the database and never change the log.",
    )
    audit_sub = audit.add_subparsers(
        dest="audit_command", required=True, metavar="{verify,replay,journal,checkpoint}"
    )
    verify = audit_sub.add_parser(
        "verify",
        help="recompute every hash chain and checkpoint; non-zero exit on findings",
        description="Recompute every account's hash chain and every checkpoint "
        "(docs/audit.md); exit 1 on any finding.",
    )
    _database_arg(verify)
    verify.add_argument("--program", default="", help="only this program's accounts")
    verify.add_argument(
        "--public-key", help="the trusted Ed25519 key (PEM) the checkpoints must be signed with"
    )
    replay = audit_sub.add_parser(
        "replay",
        help="rebuild the read models from the log elsewhere and compare them",
        description="Rebuild every read model from the log into a scratch database and "
        "compare it row by row with the live one; exit 1 on any difference.",
    )
    _database_arg(replay)
    journal = audit_sub.add_parser(
        "journal",
        help="check the journal's invariants; non-zero exit on findings",
        description="Check that every event's postings balance, that each member's ledger "
        "accounts equal the account's balances, and that the per-day sums the reports read "
        "equal the postings (docs/accounting.md); exit 1 on any finding.",
    )
    _database_arg(journal)
    journal.add_argument("--program", default="", help="only this program")
    checkpoint = audit_sub.add_parser(
        "checkpoint",
        help="write a checkpoint now",
        description="Write a checkpoint of the log now (signed with TALLY_CHECKPOINT_KEY if set).",
    )
    _database_arg(checkpoint)

    export = sub.add_parser(
        "export", help="export data for auditors", description="Export data for auditors."
    )
    export_sub = export.add_subparsers(dest="export_command", required=True, metavar="{events}")
    events = export_sub.add_parser(
        "events",
        help="every event as JSON lines, in log order",
        description="Write every event of the log as one JSON object a line, in log order.",
    )
    _database_arg(events)
    events.add_argument(
        "--since-position", type=_position, default=0, help="after this position (default 0)"
    )

    demo = sub.add_parser(
        "demo",
        help="earn and redeem points against a running server",
        description="Create a programme, enroll a member, earn and redeem against a running "
        "server, and print the history.",
    )
    demo.add_argument(
        "--target",
        default=os.environ.get("TALLY_LISTEN", DEFAULT_LISTEN),
        help=f"the server's HOST:PORT (default {DEFAULT_LISTEN})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_parsed(_parser().parse_args(argv))


def run_parsed(args: argparse.Namespace) -> int:
    """Run a parsed command: a mistake an operator can fix is one line, exit 2."""
    try:
        configure_logging("INFO" if args.command in ("serve", "project") else "WARNING")
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        line = _operator_error(e)
        if line is None:
            raise
        print(f"ledger {args.command}: {line}", file=sys.stderr)
        return 2


_OPERATOR_ERRNOS = frozenset(
    (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR, errno.ENOSPC, errno.EROFS)
)


def _operator_error(error: Exception) -> str | None:
    """The one line for a mistake an operator can fix (a bad URL or address, a database
    that cannot be had, pending migrations, a refused programme), or None for a bug, which
    keeps its traceback."""
    from ledger.api.errors import InvalidArgument
    from ledger.api.server import (
        ListenAddressError,
        ProcessesNeedPostgres,
        ProjectionsOptionError,
    )
    from ledger.audit.checkpoints import KeyFileError
    from ledger.domain.errors import DomainError
    from ledger.infrastructure.database import DatabaseUnavailable, DatabaseUrlError
    from ledger.infrastructure.migrations import MigrationError
    from ledger.infrastructure.single_process import DatabaseInUse
    from ledger.program_commands import ProgramArgumentError
    from ledger.projector import ProjectorMetricsPortError
    from ledger.relay import RelayError
    from ledger.security.credentials import SecurityConfigError

    if isinstance(error, InvalidArgument):
        return "; ".join(f"{field}: {why}" for field, why in error.violations)
    if isinstance(error, OSError) and error.errno in _OPERATOR_ERRNOS:
        # A file named on the command line that cannot be read or written, a full disk.
        return f"{error.strerror}: {error.filename}" if error.filename else str(error.strerror)
    if isinstance(error, DomainError):
        return error.message
    from ledger.importer import ImportFileError
    from ledger.runtime import WritersSettingError

    known = (
        LogLevelError,
        WritersSettingError,
        ImportFileError,
        ListenAddressError,
        ProcessesNeedPostgres,
        ProjectionsOptionError,
        ProjectorMetricsPortError,
        DatabaseUnavailable,
        DatabaseUrlError,
        DatabaseInUse,
        MigrationError,
        ProgramArgumentError,
        KeyFileError,
        SecurityConfigError,
        RelayError,
    )
    return str(error) if isinstance(error, known) else None


def _serve_options(args: argparse.Namespace) -> Any:
    from ledger.api.server import ServeOptions

    return ServeOptions(
        database_url=args.database,
        listen=args.listen,
        apply_migrations=not args.no_migrate,
        credentials=args.credentials,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        metrics_port=args.metrics_port,
        report_database=args.report_database,
        routes=args.routes,
        nats=args.nats,
        grace_seconds=args.grace,
        projections=args.projections,
        projector_processes=args.projector_processes,
        cache_accounts=args.cache_accounts,
    )


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from ledger.api.server import serve as run_server
        from ledger.api.server import serve_processes

        options = _serve_options(args)
        if args.processes > 1:
            return serve_processes(options, args.processes)
        asyncio.run(run_server(options))
        return 0
    if args.command == "project":
        from ledger.project_command import run as run_project

        return run_project(args)
    if args.command == "credentials":
        from ledger.credentials_command import run as run_credentials

        return run_credentials(args)
    if args.command == "relay":
        from ledger.relay_command import run as run_relay

        return run_relay(args)
    if args.command == "migrate":
        from ledger.infrastructure.database import check_database, parse_database_url
        from ledger.infrastructure.migrations import migrate as apply

        config = parse_database_url(args.database)
        check_database(config, must_exist=False)
        applied = apply(config)
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
        print(f"{len(applied)} migration(s) applied; schema is up to date")
        return 0
    if args.command == "program":
        from ledger.program_commands import run as run_program

        return run_program(args)
    if args.command == "report":
        from ledger.report_commands import run as run_report

        return run_report(args)
    if args.command == "reconcile":
        from ledger.reconcile_command import run as run_reconcile

        return run_reconcile(args)
    if args.command == "import":
        return _import(args)
    if args.command == "audit":
        from ledger.audit.commands import run_audit

        return run_audit(args)
    if args.command == "export":
        from ledger.audit.commands import export_events

        return export_events(args.database, args.since_position)
    if args.command == "demo":
        return _demo(args.target)
    return 2


def _import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ledger.importer import Importer
    from ledger.infrastructure.database import parse_database_url
    from ledger.projector import Projectors, opened_with_projector, sqlite_refusal
    from ledger.runtime import Tally

    # --projections process (PostgreSQL's default): the read models are written by a `ledger
    # project` child, as under `ledger serve` (decision 31), so this process's GIL is left
    # to the writer and the child catches up on another core while the import runs.
    config = parse_database_url(args.database)
    postgres = config.dialect.several_processes
    child_projects = args.projections == "process" or (args.projections == "" and postgres)
    if child_projects and not postgres:
        raise sqlite_refusal("--projections process", config.display)
    path = Path(args.file)
    if not path.is_file():
        print(f"ledger import: no such file: {path}", file=sys.stderr)
        return 2

    def open_() -> Tally:
        return Tally.from_url(
            args.database,
            exclusive="a `ledger import`",
            projection_mode="follow" if child_projects else "inline",
        )

    projector: Projectors | None = None
    if child_projects:
        tally, projector = opened_with_projector(
            args.database, open_, log_level="WARNING", processes=args.projector_processes
        )
    else:
        tally = open_()
    tally.start(sweep=False)
    try:
        importer = Importer(
            tally,
            args.program,
            path,
            fmt=args.format,
            source=args.source,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
        report = importer.run()
        # Read models are part of "loaded": wait for the projection to take it all in.
        tally.points.wait_for(tally.app.recorder.max_notification_id() or 0, timeout=3600)
        # The planner's statistics of the tables the import filled, before anyone reads
        # them: autovacuum takes them later, or never where it is off, and a plan made
        # without them read 64 cold accounts in 64 ms instead of 4 (decision 36).
        with tally.database.transaction() as cur:
            cur.execute("ANALYZE")
    finally:
        tally.close()
        if projector is not None and projector.stop() not in (None, 0):
            print("ledger import: the projections process did not stop cleanly", file=sys.stderr)
    print(
        f"{report.lines} records: {report.applied} applied, {report.replayed} already applied "
        f"before, {report.skipped} skipped (done by an earlier run), {report.rejected} "
        f"rejected; {report.seconds:.1f} s, {report.rate:,.0f} records/s"
    )
    if report.rejected:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(report.by_reason.items()))
        print(f"rejected by reason: {reasons}; details in {importer.rejects_path}")
    return 1 if report.rejected else 0


def _demo(target: str) -> int:
    """A walkthrough: create a program, enroll a member, earn, redeem, read back."""
    import grpc

    try:
        return _walkthrough(target)
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return _no_server(target)
        print(f"ledger demo: the server refused: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2


def _no_server(target: str) -> int:
    print(
        f"ledger demo: no Tally server answered at {target}: start one with `ledger serve`, "
        "or give its address with --target",
        file=sys.stderr,
    )
    return 2


def _walkthrough(target: str) -> int:
    import grpc

    from ledger.api.auth import with_env_token
    from ledger.v1 import ledger_pb2 as pb
    from ledger.v1 import ledger_pb2_grpc as pb_grpc

    run = uuid.uuid4().hex[:8]
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=5)
        except grpc.FutureTimeoutError:
            return _no_server(target)
        ledger = pb_grpc.LedgerServiceStub(with_env_token(channel))  # TALLY_TOKEN
        program = f"demo-{run}"
        ledger.CreateProgram(
            pb.CreateProgramRequest(
                program_id=program,
                display_name="Demo programme",
                currency="EUR",
                point_value_minor=1,
                expiry_policy=pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=365),
                tiers=[pb.Tier(code="SILVER", name="Silver", threshold=500)],
                request_id=f"{run}-program",
            )
        )
        print(
            f"programme {program} (Demo programme, EUR): points expire 365 days after they "
            "are earned; tier SILVER from 500 qualifying points"
        )
        ledger.EnrollMember(
            pb.EnrollMemberRequest(program_id=program, member_id="alice", request_id=f"{run}-e")
        )
        earned = ledger.Earn(
            pb.EarnRequest(
                program_id=program,
                member_id="alice",
                points=600,
                purchase_minor=6000,
                store_id="store-1",
                order_ref="order-1",
                request_id=f"{run}-earn",
            )
        )
        print(
            f"earned 600 points: available {earned.account.points_available}, "
            f"tier {earned.account.tier_code or '-'}"
        )
        redeemed = ledger.Redeem(
            pb.RedeemRequest(
                program_id=program,
                member_id="alice",
                points=250,
                store_id="store-2",
                order_ref="order-2",
                request_id=f"{run}-redeem",
            )
        )
        print(
            f"redeemed 250 points from lots {[c.lot_id for c in redeemed.consumed]}: "
            f"available {redeemed.account.points_available}"
        )
        history = ledger.ListTransactions(
            pb.ListTransactionsRequest(
                program_id=program, member_id="alice", min_position=redeemed.position
            )
        )
        for t in history.transactions:
            print(
                f"  {pb.TransactionKind.Name(t.kind):28} {t.points_delta:+6}"
                f"  balance {t.points_balance_after}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
