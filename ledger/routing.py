"""The routing table (`ledger serve --routes FILE`): which PostgreSQL cluster holds which
programmes, for when one primary is not enough (docs/scaling.md, decision 26).

A TOML file of named clusters, each a database and the programmes it holds; every programme
it does not name stays on `--database`, the default cluster:

    [clusters.east]
    database = "postgresql://tally@10.0.0.2:5432/tally"
    programs = ["coffee", "books"]

It is checked whole at start, and any mistake is one line (RoutingTableError): unknown keys,
a URL that is not PostgreSQL, a malformed or repeated programme id, two clusters on one
database."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.application.validation import IDENTIFIER
from ledger.infrastructure.database import DatabaseConfig, DatabaseUrlError, parse_database_url

DEFAULT = "default"  # the name of the cluster at --database
CLUSTER_KEYS = {"database", "programs"}


class RoutingTableError(DatabaseUrlError):
    """The routing table is unreadable or wrong. A DatabaseUrlError: it is where the
    databases are, and `ledger serve` answers it in one line, exit 2."""


@dataclass(frozen=True)
class Cluster:
    name: str
    database_url: str
    programs: frozenset[str]


@dataclass(frozen=True)
class RoutingTable:
    default: Cluster  # --database: every programme no other cluster names
    others: tuple[Cluster, ...]

    @property
    def clusters(self) -> tuple[Cluster, ...]:
        return (self.default, *self.others)

    def cluster_of(self, program_id: str) -> str:
        """The name of the cluster that holds `program_id` (or would, once created)."""
        for cluster in self.others:
            if program_id in cluster.programs:
                return cluster.name
        return self.default.name


def load_routes(path: str, default_database_url: str) -> RoutingTable:
    """Read and check the routing table at `path`; `default_database_url` is --database."""
    where = f"routing table {path}"
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise RoutingTableError(f"{where}: cannot read it ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RoutingTableError(f"{where}: not valid TOML ({e})") from None
    unknown = set(data) - {"clusters"}
    if unknown:
        raise RoutingTableError(f"{where}: unknown key {_names(unknown)} (known: clusters)")
    tables = data.get("clusters")
    if not isinstance(tables, dict) or not tables:
        raise RoutingTableError(f"{where}: give at least one [clusters.NAME] table")
    default = Cluster(DEFAULT, default_database_url, frozenset())
    databases = {_database_key(parse_database_url(default_database_url)): "--database"}
    placed: dict[str, str] = {}
    others = []
    for name, table in tables.items():
        cluster = _cluster(f"{where}: [clusters.{name}]", name, table)
        key = _database_key(parse_database_url(cluster.database_url))
        if key in databases:
            raise RoutingTableError(
                f"{where}: [clusters.{name}] is the database of {databases[key]} too: "
                "each cluster needs a database of its own"
            )
        databases[key] = f"[clusters.{name}]"
        for program_id in sorted(cluster.programs):
            if program_id in placed:
                raise RoutingTableError(
                    f"{where}: programme {program_id!r} is placed on both "
                    f"[clusters.{placed[program_id]}] and [clusters.{name}]"
                )
            placed[program_id] = name
        others.append(cluster)
    return RoutingTable(default, tuple(others))


def _cluster(where: str, name: str, table: Any) -> Cluster:
    if name == DEFAULT:
        raise RoutingTableError(f"{where}: {DEFAULT!r} is the name of --database's cluster")
    if not isinstance(table, dict):
        raise RoutingTableError(f"{where}: must be a table with database and programs")
    unknown = set(table) - CLUSTER_KEYS
    if unknown:
        raise RoutingTableError(
            f"{where}: unknown key {_names(unknown)} (known: {_names(CLUSTER_KEYS)})"
        )
    url = table.get("database")
    if not isinstance(url, str) or not url:
        raise RoutingTableError(f"{where}: database must be a postgresql:// URL")
    try:
        config = parse_database_url(url)
    except DatabaseUrlError as e:
        raise RoutingTableError(f"{where}: {e}") from None
    if config.kind != "postgres":
        raise RoutingTableError(f"{where}: database must be a postgresql:// URL, not {url!r}")
    programs = table.get("programs")
    if not isinstance(programs, list) or not programs:
        raise RoutingTableError(f"{where}: programs must be a list of programme ids")
    seen: set[str] = set()
    for program_id in programs:
        if not isinstance(program_id, str) or not IDENTIFIER.fullmatch(program_id):
            raise RoutingTableError(
                f"{where}: programme id {program_id!r} is not 1..64 characters of [A-Za-z0-9._:-]"
            )
        if program_id in seen:
            raise RoutingTableError(f"{where}: programme {program_id!r} is listed twice")
        seen.add(program_id)
    return Cluster(name, url, frozenset(seen))


def _database_key(config: DatabaseConfig) -> tuple[str, str, int, str]:
    """One database, however its URL is spelled (user, password and pool size aside)."""
    host = "127.0.0.1" if config.host == "localhost" else config.host
    return (config.kind, host, config.port, config.dbname or config.sqlite_path)


def _names(keys: set[str]) -> str:
    return ", ".join(sorted(keys))
