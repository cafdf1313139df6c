"""`ledger audit verify|replay|checkpoint` and `ledger export events`. These open the
database without applying migrations: an audit reads what is there and changes nothing
(apart from `checkpoint`, which adds one)."""

from __future__ import annotations

import argparse
import sys

from ledger.audit.checkpoints import load_public_key, load_signing_key, raw, write_checkpoint
from ledger.audit.events import EventReader
from ledger.audit.replay import replay
from ledger.audit.verify import verify
from ledger.infrastructure.database import open_database, parse_database_url


def run_audit(args: argparse.Namespace) -> int:
    if args.audit_command == "verify":
        return _verify(args.database, args.program, args.public_key)
    if args.audit_command == "replay":
        return _replay(args.database)
    return _checkpoint(args.database)


def _verify(url: str, program_id: str, public_key_path: str | None) -> int:
    key = raw(load_public_key(public_key_path)) if public_key_path else None
    db = open_database(parse_database_url(url))
    try:
        report = verify(db, program_id, key)
    finally:
        db.close()
    for finding in sorted(report.findings, key=lambda f: f.position):
        print(f"position {finding.position}: {finding.kind}: {finding.detail}")
    status = "ok" if report.ok else f"FAILED, first bad position {report.first_bad_position}"
    print(
        f"{status}: {report.events_checked} events, {report.accounts} accounts, "
        f"{report.checkpoints_checked} checkpoints checked"
        + ("" if key else "; checkpoint signatures checked against their own keys only")
    )
    return 0 if report.ok else 1


def _replay(url: str) -> int:
    report = replay(url)
    for d in report.differences[:100]:
        print(f"{d.table} {d.key}: live {d.live} != replayed {d.replayed}")
    if len(report.differences) > 100:
        print(f"... and {len(report.differences) - 100} more differences")
    status = "ok" if report.ok else f"FAILED: {len(report.differences)} rows differ"
    print(f"{status}: {report.rows_compared} rows compared, log replayed to {report.position}")
    return 0 if report.ok else 1


def _checkpoint(url: str) -> int:
    db = open_database(parse_database_url(url))
    try:
        made = write_checkpoint(db, load_signing_key())
    finally:
        db.close()
    if made is None:
        print("no events since the last checkpoint")
    else:
        signed = "signed" if made.signature else "unsigned"
        print(
            f"checkpoint {made.checkpoint_id} at position {made.position}: {made.event_count} "
            f"events, {len(made.heads)} accounts, digest {made.digest.hex()} ({signed})"
        )
    return 0


def export_events(url: str, since_position: int) -> int:
    db = open_database(parse_database_url(url))
    reader = EventReader(db)
    position = since_position
    out = sys.stdout
    try:
        while True:
            events, position = reader.scan(position, 1000)
            if not events:
                return 0
            out.write("".join(e.to_json() + "\n" for e in events))
    finally:
        out.flush()
        db.close()
