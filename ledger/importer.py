"""`ledger import`: load a retailer's existing history through the batch path.

Records (CSV with a header row, or JSON lines), one per line, in time order:

    type       member | earn | redeem | adjust | reverse | top_up | spend
    member_id  required
    store_id   required for earn, redeem, reverse, top_up and spend (settlement follows the
               store), as the API requires it; optional for member and adjust
    points     earn, redeem: 1..10^15; reverse: 0..10^15 (0 = all that is left);
               adjust: signed, not 0, between -10^15 and 10^15
    occurred_at  ISO 8601 with an offset (2024-03-01T10:15:00+01:00), between 1970 and
                 9999 and not in the future; default: now
    request_id   optional; default "import:<source>:<line>"
    order_ref, reason  at most 256 characters; adjust: reason required
    operator_id  adjust: required
    purchase_minor, expires_at (ISO 8601 like occurred_at), qualifying (true/false, 1/0,
                 yes/no; default true): earn
    referrer_member_id  member: optional, not the member itself
    reverses     reverse: the request_id of the record it reverses
    refund_purchase_minor  reverse of an earn: the purchase money refunded (0..10^15);
                 empty or absent = the earn's purchase pro rata to the points reversed
    amount_minor reverse (of a spend or a top-up): 0..10^15 (0 = all that is left);
                 spend: 1..10^15
    cash_minor, bonus_minor, payment_ref  top_up: cash 1..10^15; bonus 0..10^15, empty or
                 absent = the program's top_up_bonus schedule

Every record becomes the command an RPC would make, checked and built by the API's own
builders (`ledger/application/validation.py`): a record the RPC would refuse is refused,
with the same field names and descriptions. The importer's own checks are only those of
turning text into values (a number that is not one, a timestamp without a UTC offset) and
one rule stricter than the API's: `occurred_at` must not lie in the future at all (the API
allows 5 minutes of clock skew), since each command is decided as of its `occurred_at` (so
points that were valid then can be spent then, in history order). The commands go through
the group-commit writer in batches.

Resumable without duplicates: every record's request_id is fixed by its source name and
line, so a record applied before is answered from its idempotency record, never applied
twice. A small state file (`<file>.import-state.json`) remembers how many lines are done,
so a resumed import skips them without even asking. Records that are invalid or refused
are written, with the reason, to `<file>.rejects.jsonl` and do not stop the import.

The state file only saves time, so it is used only when it is certainly this import's: it
names the database (its URL without a password; a SQLite file by its absolute path), the
program, the source name and the file (its size and the SHA-256 of its whole content,
taken in the pass that counts the lines), and the request_id of the last record done, which
must be recorded in the database. If any of these differ (another database, or the same
URL after the database was made again; another program; an edited or appended file; a
state file of an older version), the state file is ignored with one line on stderr saying
why, and the import starts at line 1. That is the safer choice for an operator rather than
stopping with an error: starting over cannot apply anything twice (every record is answered
from its record if it was applied before, and a different record under a request_id already
used is refused as IDEMPOTENCY_KEY_REUSED and set aside), while skipping can silently lose
records; and an error would teach the operator to delete state files by hand, which costs
the same restart with more steps. The price is time: a whole-file hash means an appended
file is replayed from its first line too. The run then replaces the state file with its own.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ledger.application import commands as c
from ledger.application import validation as build
from ledger.application.group_commit import Answer
from ledger.application.validation import (
    MAX_FUTURE,
    AccountFields,
    InvalidCommand,
    Violations,
)
from ledger.domain import errors
from ledger.domain.ids import request_id_key
from ledger.infrastructure.requests import existing_requests
from ledger.runtime import Tally

KINDS = ("member", "earn", "redeem", "adjust", "reverse", "top_up", "spend")
STATE_VERSION = 2


class ImportFileError(ValueError):
    """The file cannot be read as records at all (not UTF-8 text, say): one line, exit 2."""


class BadRecord(ValueError):
    """A record that cannot become a command; the message says which field and why."""


@dataclass
class ImportReport:
    lines: int = 0
    skipped: int = 0  # done by an earlier run (state file)
    applied: int = 0
    replayed: int = 0  # applied by an earlier run, answered from the idempotency record
    rejected: int = 0
    seconds: float = 0.0
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        done = self.applied + self.replayed + self.rejected
        return done / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------- reading


def read_records(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every record; a line that is not a record yields a dict
    with only "_error". UTF-8, with or without the byte-order mark spreadsheets write."""
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            try:
                for row in reader:
                    yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}
            except UnicodeDecodeError:
                raise ImportFileError(
                    f"{path}: line {reader.line_num + 1} is not UTF-8 text: save the file as UTF-8"
                ) from None
        return
    with path.open("rb") as binary:
        for number, raw in enumerate(binary, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                yield number, {"_error": "not UTF-8 text"}
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield number, {"_error": f"not JSON: {e.msg}"}
                continue
            yield number, record if isinstance(record, dict) else {"_error": "not an object"}


FORMATS_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


def detect_format(path: Path) -> str:
    """By the file's extension; another is refused rather than guessed (a file of JSON
    lines read as CSV is 0 records and no word why)."""
    found = FORMATS_BY_SUFFIX.get(path.suffix.lower())
    if found is None:
        raise ImportFileError(
            f"{path}: cannot tell its format from {path.suffix or 'no extension'!r}: "
            "give --format csv or --format jsonl"
        )
    return found


def _text(record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    return "" if value is None else str(value)


def _timestamp(record: dict[str, Any], name: str, v: Violations) -> datetime | None:
    value = record.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        v.add(name, "must be an ISO 8601 timestamp")
        return None
    if moment.tzinfo is None:
        v.add(name, "must carry a UTC offset (e.g. 2024-03-01T10:15:00+01:00)")
        return None
    return moment


def _integer(record: dict[str, Any], name: str, v: Violations, default: int | None = None) -> int:
    value = record.get(name, default)
    if value is None:
        v.add(name, "required")
        return 0
    if isinstance(value, bool):
        v.add(name, "must be an integer")
        return 0
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: 1e400 is infinity
        v.add(name, "must be an integer")
        return 0
    if isinstance(value, float) and value != number:
        v.add(name, "must be an integer")
    return number


_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _boolean(record: dict[str, Any], name: str, v: Violations, default: bool) -> bool:
    value = record.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _TRUE + _FALSE:
        v.add(name, "must be true or false")
        return default
    return text in _TRUE


def to_command(
    record: dict[str, Any], program_id: str, source: str, line: int, now: datetime
) -> c.AccountCommand:
    """The command a record asks for, built by the API's builders (BadRecord if not)."""
    if "_error" in record:
        raise BadRecord(record["_error"])
    kind = str(record.get("type", "")).strip().lower()
    if kind not in KINDS:
        raise BadRecord(f"type: must be one of {', '.join(KINDS)}")
    v = Violations()
    occurred = _timestamp(record, "occurred_at", v)
    # The builders allow MAX_FUTURE of clock skew; history may not lie ahead at all.
    if occurred is not None and now < occurred <= now + MAX_FUTURE:
        v.add("occurred_at", "must not be in the future")
    common: AccountFields = {
        "program_id": program_id,
        "member_id": _text(record, "member_id"),
        "request_id": _text(record, "request_id") or f"import:{source}:{line}",
        "occurred_at": occurred,
        "store_id": _text(record, "store_id"),
    }
    try:
        return _build(kind, record, common, program_id, now, v)
    except InvalidCommand as e:
        raise BadRecord(str(e)) from None


def _build(
    kind: str,
    record: dict[str, Any],
    common: AccountFields,
    program_id: str,
    now: datetime,
    v: Violations,
) -> c.AccountCommand:
    if kind == "member":
        return build.enroll_member(
            **common,
            referrer_member_id=_text(record, "referrer_member_id"),
            now=now,
            violations=v,
        )
    if kind == "earn":
        return build.earn(
            **common,
            points=_integer(record, "points", v),
            purchase_minor=_integer(record, "purchase_minor", v, 0),
            order_ref=_text(record, "order_ref"),
            reason=_text(record, "reason"),
            qualifying=_boolean(record, "qualifying", v, default=True),
            expires_at=_timestamp(record, "expires_at", v),
            now=now,
            violations=v,
        )
    if kind == "redeem":
        return build.redeem(
            **common,
            points=_integer(record, "points", v),
            order_ref=_text(record, "order_ref"),
            reason=_text(record, "reason"),
            now=now,
            violations=v,
        )
    if kind == "adjust":
        return build.adjust(
            **common,
            points=_integer(record, "points", v),
            reason=_text(record, "reason"),
            operator_id=_text(record, "operator_id"),
            now=now,
            violations=v,
        )
    if kind == "top_up":
        bonus = record.get("bonus_minor")
        return build.top_up(
            **common,
            cash_minor=_integer(record, "cash_minor", v),
            bonus_minor=None if bonus in (None, "") else _integer(record, "bonus_minor", v),
            payment_ref=_text(record, "payment_ref"),
            now=now,
            violations=v,
        )
    if kind == "spend":
        return build.spend(
            **common,
            amount_minor=_integer(record, "amount_minor", v),
            order_ref=_text(record, "order_ref"),
            now=now,
            violations=v,
        )
    # reverse: the record names the request it reverses; its transaction id follows.
    reverses = v.request_id(_text(record, "reverses"), "reverses")
    return build.reverse(
        **common,
        transaction_id=str(request_id_key(program_id, reverses)),
        points=_integer(record, "points", v, 0),
        amount_minor=_integer(record, "amount_minor", v, 0),
        reason=_text(record, "reason"),
        refund_purchase_minor=(
            _integer(record, "refund_purchase_minor", v)
            if _text(record, "refund_purchase_minor")
            else None
        ),
        now=now,
        violations=v,
    )


# ---------------------------------------------------------------------- running


@dataclass
class _Batch:
    lines: list[int]
    records: list[dict[str, Any]]
    commands: list[c.AccountCommand]
    future: Future[list[Answer]]
    last_line: int


class Importer:
    def __init__(
        self,
        tally: Tally,
        program_id: str,
        path: Path,
        fmt: str | None = None,
        source: str | None = None,
        batch_size: int = 1000,
        progress: bool = True,
    ) -> None:
        self.tally = tally
        self.program_id = program_id
        self.path = path
        self.fmt = fmt or detect_format(path)
        self.source = source or path.name
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.progress = progress
        self.state_path = path.with_name(path.name + ".import-state.json")
        self.rejects_path = path.with_name(path.name + ".rejects.jsonl")
        self.database = database_key(tally)
        self._file: dict[str, Any] = {}  # size and sha256, set by run()
        self._last_request_id = ""  # of the last record applied or replayed

    def run(self) -> ImportReport:
        self.tally.app.get_program(self.program_id)  # ProgramNotFound before any work
        report = ImportReport()
        total = self._scan()
        done_through = self._load_state()
        started = time.perf_counter()
        bar = self._bar(total, done_through)
        in_flight: list[_Batch] = []
        # A fresh start rewrites the rejects; a resumed one adds to the earlier run's.
        mode = "a" if done_through else "w"
        with self.rejects_path.open(mode, encoding="utf-8") as rejects:
            lines: list[int] = []
            records: list[dict[str, Any]] = []
            commands: list[c.AccountCommand] = []
            now = datetime.now(UTC)
            last_line = done_through
            for line, record in read_records(self.path, self.fmt):
                report.lines += 1
                last_line = line
                if line <= done_through:
                    report.skipped += 1
                    continue
                try:
                    command = to_command(record, self.program_id, self.source, line, now)
                except BadRecord as e:
                    self._reject(rejects, report, line, record, "INVALID_ARGUMENT", str(e))
                    bar.update(1)
                    continue
                lines.append(line)
                records.append(record)
                commands.append(command)
                if len(commands) >= self.batch_size:
                    in_flight.append(self._submit(lines, records, commands, line))
                    lines, records, commands = [], [], []
                    # Two batches in flight: the next one is parsed while one commits.
                    while len(in_flight) > 1:
                        self._settle(in_flight.pop(0), rejects, report, bar)
            if commands:
                in_flight.append(self._submit(lines, records, commands, last_line))
            for batch in in_flight:
                self._settle(batch, rejects, report, bar)
            self._save_state(last_line)
        bar.close()
        report.seconds = time.perf_counter() - started
        return report

    def _submit(
        self,
        lines: list[int],
        records: list[dict[str, Any]],
        commands: list[c.AccountCommand],
        last_line: int,
    ) -> _Batch:
        future = self.tally.writer.submit_batch(commands, at_occurred=True)
        return _Batch(lines, records, commands, future, last_line)

    def _settle(self, batch: _Batch, rejects: IO[str], report: ImportReport, bar: Any) -> None:
        answers = batch.future.result()
        for line, record, command, answer in zip(
            batch.lines, batch.records, batch.commands, answers, strict=True
        ):
            if isinstance(answer, errors.DomainError):
                self._reject(rejects, report, line, record, answer.reason, str(answer))
                continue
            if answer.replayed:
                report.replayed += 1
            else:
                report.applied += 1
            self._last_request_id = command.request_id
        rejects.flush()
        self._save_state(batch.last_line)
        bar.update(len(batch.commands))
        bar.set_postfix(rejected=report.rejected, refresh=False)

    def _reject(
        self,
        rejects: IO[str],
        report: ImportReport,
        line: int,
        record: dict[str, Any],
        reason: str,
        message: str,
    ) -> None:
        report.rejected += 1
        report.by_reason[reason] = report.by_reason.get(reason, 0) + 1
        entry = {"line": line, "reason": reason, "message": message, "record": record}
        rejects.write(json.dumps(entry, default=str) + "\n")

    # The state file only saves time: correctness comes from the request_ids. So it is used
    # only when it is certainly this import's; otherwise one line on stderr, and line 1.

    def _load_state(self) -> int:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            state = None
        why = self._not_ours(state)
        if why:
            self._note(f"ignoring {self.state_path}: {why}; importing from line 1")
            return 0
        assert isinstance(state, dict)
        self._last_request_id = state["last_request_id"]
        return int(state["done_through_line"])

    def _not_ours(self, state: object) -> str:
        """Why a state file is not this import's ("" if it is)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return "not a state file of this version"
        if not isinstance(state.get("done_through_line"), int) or not isinstance(
            state.get("last_request_id"), str
        ):
            return "not a state file of this version"
        for key, ours, what in (
            ("database", self.database, "into another database"),
            ("program_id", self.program_id, "into another program"),
            ("source", self.source, "under another source name"),
        ):
            if state.get(key) != ours:
                return f"it is the progress of an import {what} ({state.get(key)}, not {ours})"
        if state.get("file") != self._file:
            return f"{self.path.name} has changed since that run (size or content)"
        last = state["last_request_id"]
        if last and not existing_requests(
            self.tally.database, [request_id_key(self.program_id, last)]
        ):
            return f"the last record it says is done ({last}) is not in this database"
        return ""

    def _save_state(self, line: int) -> None:
        state = {
            "version": STATE_VERSION,
            "database": self.database,
            "program_id": self.program_id,
            "source": self.source,
            "file": self._file,
            "done_through_line": line,
            "last_request_id": self._last_request_id,
        }
        temporary = self.state_path.with_name(self.state_path.name + ".tmp")
        temporary.write_text(json.dumps(state), encoding="utf-8")
        temporary.replace(self.state_path)

    def _note(self, message: str) -> None:
        print(f"ledger import: {message}", file=sys.stderr, flush=True)

    def _scan(self) -> int:
        """The number of records (for the progress bar), and the file's identity."""
        digest = hashlib.sha256()
        size = count = 0
        with self.path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
                count += chunk.count(b"\n")
        self._file = {"size": size, "sha256": digest.hexdigest()}
        return max(0, count - 1) if self.fmt == "csv" else count

    def _bar(self, total: int, done: int) -> Any:
        from tqdm import tqdm

        return tqdm(
            total=total,
            initial=min(done, total),
            unit="rec",
            unit_scale=True,
            disable=not self.progress,
            desc=f"import {self.path.name}",
        )


def database_key(tally: Tally) -> str:
    """The database, as the state file names it: its URL without a password, a SQLite file
    by its absolute path (the same relative URL from another directory is another file)."""
    config = tally.config
    if config.sqlite_path:
        config = dataclasses.replace(config, sqlite_path=str(Path(config.sqlite_path).resolve()))
    return config.display
