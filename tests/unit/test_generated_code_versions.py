"""The generated code in ledger/v1 and pyproject.toml agree on versions.

The generated modules check, at import, that the installed grpcio and protobuf are at least
the versions they were generated with, and refuse to load otherwise (RuntimeError,
VersionError). So the runtime floors in pyproject.toml must not admit anything older, and
the generators are pinned to exactly what made the committed files: CI regenerates them
and fails on any difference, and an unpinned grpcio-tools once changed every
`*_pb2_grpc.py` by releasing 1.85.4.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "ledger" / "v1"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement(name: str, section: list[str]) -> Requirement:
    found = [Requirement(r) for r in section if Requirement(r).name == name]
    assert len(found) == 1, f"pyproject.toml should name {name} once"
    return found[0]


def _floor(requirement: Requirement) -> Version:
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    assert floors, f"{requirement} has no lower bound"
    return max(floors)


def _grpc_generated_versions() -> set[Version]:
    found = set()
    for path in sorted(GENERATED.glob("*_pb2_grpc.py")):
        match = re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'", path.read_text(), re.M)
        assert match, f"{path.name}: no GRPC_GENERATED_VERSION"
        found.add(Version(match[1]))
    assert found, "no generated gRPC modules found"
    return found


def _protobuf_gencode_versions() -> set[Version]:
    found = set()
    for path in sorted(GENERATED.glob("*_pb2.py")):
        match = re.search(
            r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*"
            r"(\d+),\s*(\d+),\s*(\d+),",
            path.read_text(),
        )
        assert match, f"{path.name}: no protobuf runtime version check"
        found.add(Version(".".join(match.groups())))
    assert found, "no generated protobuf modules found"
    return found


def test_the_generators_are_pinned_to_the_versions_that_made_ledger_v1() -> None:
    dev = PROJECT["project"]["optional-dependencies"]["dev"]
    tools = _requirement("grpcio-tools", dev)
    assert [s.operator for s in tools.specifier] == ["=="], f"{tools}: pin it exactly"
    assert _grpc_generated_versions() == {_floor(tools)}, (
        "ledger/v1 was generated with another grpcio-tools than pyproject.toml pins: "
        "run scripts/gen-protos with the pinned one"
    )
    stubs = _requirement("mypy-protobuf", dev)
    assert [s.operator for s in stubs.specifier] == ["=="], f"{stubs}: pin it exactly"


def test_the_runtime_floors_admit_nothing_the_generated_code_refuses() -> None:
    dependencies = PROJECT["project"]["dependencies"]
    grpcio = _floor(_requirement("grpcio", dependencies))
    assert grpcio >= max(_grpc_generated_versions()), (
        f"pyproject.toml admits grpcio {grpcio}, older than ledger/v1 accepts"
    )
    protobuf = _requirement("protobuf", dependencies)
    gencode = max(_protobuf_gencode_versions())
    assert _floor(protobuf) >= gencode, (
        f"pyproject.toml admits protobuf {_floor(protobuf)}, older than ledger/v1 accepts"
    )
    # The runtime must be the gencode's major version: a next major refuses it too.
    assert Version(f"{gencode.major + 1}") not in protobuf.specifier, (
        f"{protobuf}: cap it below {gencode.major + 1}"
    )
