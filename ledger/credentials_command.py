"""`ledger credentials create|list|revoke`: the credentials file a server authenticates
callers against (docs/security.md). A new token is printed once, alone on the last line;
the file keeps only its SHA-256. A running server picks changes up within about a second."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.security.credentials import (
    PROGRAM_ID,
    Credential,
    CredentialsError,
    CredentialSet,
    load,
    normalise_subject,
    save,
)
from ledger.security.roles import parse_roles
from ledger.security.tokens import new_token, token_hash


def add_parsers(sub: Any) -> None:
    credentials = sub.add_parser(
        "credentials",
        help="manage the bearer tokens clients authenticate with",
        description="Manage the credentials file `ledger serve --credentials` reads: bearer "
        "tokens (kept as SHA-256) and client-certificate subjects, with roles and programmes.",
    )
    actions = credentials.add_subparsers(
        dest="credentials_command", required=True, metavar="{create,list,revoke}"
    )
    create = actions.add_parser(
        "create",
        help="add a credential and print its token once",
        description="Add a credential. Its token is printed once, alone on the last line; "
        "only its hash is stored.",
    )
    listing = actions.add_parser("list", help="list the credentials (never a token)")
    revoke = actions.add_parser(
        "revoke",
        help="remove a credential",
        description="Remove a credential; running servers refuse it within about a second.",
    )
    for parser in (create, listing, revoke):
        parser.add_argument(
            "--credentials",
            default=os.environ.get("TALLY_CREDENTIALS", ""),
            help="the credentials file (env TALLY_CREDENTIALS)",
        )
    for parser in (create, revoke):
        parser.add_argument("--name", required=True, help="the credential's name, e.g. till-7")
    create.add_argument(
        "--roles", required=True, help="comma-separated: writer, reader, auditor, admin"
    )
    create.add_argument("--programs", default="", help="comma-separated programme ids")
    create.add_argument(
        "--all-programs", action="store_true", help="every programme, present and future"
    )
    create.add_argument(
        "--certificate-subject",
        default="",
        help="mutual TLS: the client certificate subject (RFC 4514, e.g. CN=till-7,O=Acme) "
        "that identifies this credential as well",
    )
    create.add_argument(
        "--no-token",
        action="store_true",
        help="no bearer token: the certificate subject alone identifies it",
    )


def run(args: argparse.Namespace) -> int:
    try:
        if not args.credentials:
            raise CredentialsError("give --credentials FILE (or set TALLY_CREDENTIALS)")
        if args.credentials_command == "create":
            return _create(args)
        if args.credentials_command == "list":
            return _list(args.credentials)
        return _revoke(args.credentials, args.name)
    except CredentialsError as e:
        print(f"ledger credentials {args.credentials_command}: {e}", file=sys.stderr)
        return 2


def _create(args: argparse.Namespace) -> int:
    try:
        roles = parse_roles(args.roles)
    except ValueError as e:
        raise CredentialsError(f"--roles: {e}") from None
    programs = _programs(args.programs, args.all_programs)
    subject = normalise_subject(args.certificate_subject) if args.certificate_subject else ""
    if args.no_token and not subject:
        raise CredentialsError("--no-token needs --certificate-subject: nothing would identify it")
    token = "" if args.no_token else new_token()
    path = Path(args.credentials)
    existing = load(args.credentials) if path.exists() else CredentialSet(())
    credential = Credential(
        name=args.name,
        roles=roles,
        programs=programs,
        token_sha256=token_hash(token) if token else "",
        certificate_subject=subject,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    # The same checks as when a server loads it: a bad name is refused here, not there.
    Credential.from_json(credential.to_json(), f"--name {args.name}")
    updated = existing.with_added(credential)
    _save(args.credentials, updated)
    scope = "all programmes" if programs is None else ", ".join(sorted(programs))
    print(f"credential {credential.name}: roles {_roles(credential)}; programmes {scope}")
    if subject:
        print(f"certificate subject: {subject}")
    if token:
        print("bearer token (shown once; the file keeps only its SHA-256):")
        print(token)
    return 0


def _programs(text: str, all_programs: bool) -> frozenset[str] | None:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if all_programs and names:
        raise CredentialsError("give --programs or --all-programs, not both")
    if all_programs:
        return None
    if not names:
        raise CredentialsError("give --programs P1,P2 or --all-programs")
    for name in names:
        if not PROGRAM_ID.fullmatch(name):
            raise CredentialsError(
                f"--programs: {name!r} is not a programme id (1..64 of [A-Za-z0-9._:-])"
            )
    return frozenset(names)


def _list(path: str) -> int:
    found = load(path)
    print(f"{'name':24} {'roles':28} {'programmes':30} identified by")
    for c in found.credentials:
        scope = "*" if c.programs is None else ",".join(sorted(c.programs))
        by = [
            w for w, on in (("token", c.token_sha256), ("certificate", c.certificate_subject)) if on
        ]
        subject = f" {c.certificate_subject}" if c.certificate_subject else ""
        print(f"{c.name:24} {_roles(c):28} {scope:30} {'+'.join(by)}{subject}")
    return 0


def _revoke(path: str, name: str) -> int:
    _save(path, load(path).without(name))
    print(f"credential {name} revoked")
    return 0


def _roles(c: Credential) -> str:
    return ",".join(sorted(r.value for r in c.roles))


def _save(path: str, credentials: CredentialSet) -> None:
    try:
        save(path, credentials.credentials)
    except OSError as e:
        raise CredentialsError(f"cannot write {path}: {e.strerror}") from None
