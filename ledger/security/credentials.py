"""The credentials file: JSON, mode 0600, written atomically (a temporary file renamed over
the old one, so a server reloading it never reads half a file).

    {"version": 1, "credentials": [
      {"name": "till-7", "roles": ["writer"], "programs": ["coffee"], "all_programs": false,
       "token_sha256": "<hex>", "certificate_subject": "", "created_at": "2026-..."}]}

A credential is a bearer token (only its SHA-256 is kept), a client certificate's subject
(mutual TLS), or both; it has roles and either a list of programmes or all of them."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography import x509

from ledger.security.principal import Principal
from ledger.security.roles import Role

FORMAT_VERSION = 1
NAME = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
PROGRAM_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # the API's identifier rule
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class SecurityConfigError(ValueError):
    """A credentials file, certificate or key the server cannot use: one line for the
    operator, at start."""


class CredentialsError(SecurityConfigError):
    """A credentials file that cannot be read or used, or a bad entry."""


def normalise_subject(subject: str) -> str:
    """A certificate subject in one spelling (RFC 4514, as `cryptography` writes it), so
    that "CN=till-7, O=Acme" in the file matches the certificate's "CN=till-7,O=Acme"."""
    tidy = re.sub(r"(?<!\\),\s+", ",", subject.strip())  # "CN=a, O=b" as people write it
    try:
        return x509.Name.from_rfc4514_string(tidy).rfc4514_string()
    except ValueError as e:
        raise CredentialsError(f"certificate subject {subject!r} is not RFC 4514: {e}") from None


@dataclass(frozen=True)
class Credential:
    name: str
    roles: frozenset[Role]
    programs: frozenset[str] | None  # None: all programmes
    token_sha256: str = ""
    certificate_subject: str = ""
    created_at: str = ""

    def principal(self) -> Principal:
        return Principal(self.name, self.roles, self.programs)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "roles": sorted(r.value for r in self.roles),
            "programs": sorted(self.programs or ()),
            "all_programs": self.programs is None,
            "token_sha256": self.token_sha256,
            "certificate_subject": self.certificate_subject,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, entry: Any, where: str) -> Credential:
        if not isinstance(entry, dict):
            raise CredentialsError(f"{where}: not an object")
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise CredentialsError(f"{where}: name must be 1..64 characters of [A-Za-z0-9._:@-]")
        where = f"{where} ({name})"
        roles = entry.get("roles")
        known = {r.value: r for r in Role}
        if not isinstance(roles, list) or not roles or any(r not in known for r in roles):
            raise CredentialsError(
                f"{where}: roles must be a list of writer, reader, auditor, admin"
            )
        all_programs = entry.get("all_programs", False)
        programs = entry.get("programs", [])
        if not isinstance(all_programs, bool) or not isinstance(programs, list):
            raise CredentialsError(f"{where}: programs must be a list, all_programs true or false")
        if all_programs == bool(programs):
            raise CredentialsError(f"{where}: give either programs or all_programs, not both")
        for p in programs:
            if not isinstance(p, str) or not PROGRAM_ID.fullmatch(p):
                raise CredentialsError(f"{where}: program {p!r} is not a programme id")
        token = entry.get("token_sha256", "")
        subject = entry.get("certificate_subject", "")
        if not isinstance(token, str) or (token and not SHA256_HEX.fullmatch(token)):
            raise CredentialsError(f"{where}: token_sha256 must be 64 lowercase hex digits")
        if not isinstance(subject, str):
            raise CredentialsError(f"{where}: certificate_subject must be a string")
        if not token and not subject:
            raise CredentialsError(f"{where}: neither a token nor a certificate subject")
        return cls(
            name=name,
            roles=frozenset(known[r] for r in roles),
            programs=None if all_programs else frozenset(programs),
            token_sha256=token,
            certificate_subject=normalise_subject(subject) if subject else "",
            created_at=str(entry.get("created_at", "")),
        )


@dataclass(frozen=True)
class CredentialSet:
    """Every credential of one file, indexed the two ways a caller is recognised."""

    credentials: tuple[Credential, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.credentials]
        for kind, keys in (
            ("name", names),
            ("token", [c.token_sha256 for c in self.credentials if c.token_sha256]),
            (
                "certificate subject",
                [c.certificate_subject for c in self.credentials if c.certificate_subject],
            ),
        ):
            repeated = sorted({k for k in keys if keys.count(k) > 1})
            if repeated:
                shown = repeated[0] if kind != "token" else "(a token hash)"
                raise CredentialsError(f"two credentials have the same {kind}: {shown}")

    @cached_property
    def _by_token(self) -> dict[str, Credential]:
        return {c.token_sha256: c for c in self.credentials if c.token_sha256}

    @cached_property
    def _by_subject(self) -> dict[str, Credential]:
        return {c.certificate_subject: c for c in self.credentials if c.certificate_subject}

    def by_token_hash(self, digest: str) -> Credential | None:
        return self._by_token.get(digest)

    def by_subject(self, subject: str) -> Credential | None:
        return self._by_subject.get(subject)

    def named(self, name: str) -> Credential | None:
        return next((c for c in self.credentials if c.name == name), None)

    def with_added(self, credential: Credential) -> CredentialSet:
        if self.named(credential.name) is not None:
            raise CredentialsError(f"a credential named {credential.name} exists already")
        return CredentialSet((*self.credentials, credential))

    def without(self, name: str) -> CredentialSet:
        if self.named(name) is None:
            raise CredentialsError(f"no credential named {name}")
        return CredentialSet(tuple(c for c in self.credentials if c.name != name))


def parse(text: str, path: str) -> CredentialSet:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CredentialsError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise CredentialsError(f"{path}: not a credentials file (version {FORMAT_VERSION})")
    entries = data.get("credentials")
    if not isinstance(entries, list):
        raise CredentialsError(f"{path}: credentials must be a list")
    found = [Credential.from_json(e, f"{path}: credential {i + 1}") for i, e in enumerate(entries)]
    try:
        return CredentialSet(tuple(found))
    except CredentialsError as e:
        raise CredentialsError(f"{path}: {e}") from None


def load(path: str) -> CredentialSet:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialsError(f"no credentials file {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialsError(f"cannot read credentials file {path}: {e}") from None
    return parse(text, path)


def save(path: str, credentials: Iterable[Credential]) -> None:
    """Write the file atomically, readable by its owner only."""
    text = json.dumps(
        {"version": FORMAT_VERSION, "credentials": [c.to_json() for c in credentials]},
        indent=2,
    )
    target = Path(path)
    fd, temporary = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
