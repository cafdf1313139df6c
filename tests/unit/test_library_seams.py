"""Contract tests for Tally's seams with eventsourcing (ledger/infrastructure/library_seams.py).

A failure here after an upgrade of eventsourcing is not a test to fix: it names the Tally code
that copies or hooks into what changed. Re-check that code against the new library, then
update the entry (re-pin its SHA-256); docs/decisions/0012-library-seams.md says how.
"""

from __future__ import annotations

import inspect
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from ledger.infrastructure.library_seams import (
    EVENTSOURCING_VERSION,
    SEAMS,
    Seam,
    SeamBroken,
    resolve,
    source_sha256,
)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_installed_eventsourcing_is_the_one_the_seams_were_checked_against() -> None:
    installed = metadata.version("eventsourcing")
    assert installed == EVENTSOURCING_VERSION == "9.5.6", (
        f"eventsourcing {installed} is installed; the seams in "
        f"ledger/infrastructure/library_seams.py were checked against {EVENTSOURCING_VERSION}. "
        "Re-check every seam (docs/decisions/0012-library-seams.md), then move the pin."
    )
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert f"eventsourcing=={EVENTSOURCING_VERSION}" in dependencies, (
        "pyproject.toml must pin eventsourcing to the version the seams were checked against"
    )


def test_every_seam_is_checked_and_listed_once() -> None:
    unchecked = [s.key for s in SEAMS if s.params is None and not s.sha256 and s.check is None]
    assert not unchecked, f"seams that nothing verifies: {unchecked}"
    keys = [s.key for s in SEAMS]
    assert len(keys) == len(set(keys)), "a seam is listed twice"


@pytest.mark.parametrize("seam", SEAMS, ids=[s.key for s in SEAMS])
def test_seam(seam: Seam) -> None:
    try:
        target = resolve(seam.library)
    except (ImportError, AttributeError) as e:
        pytest.fail(seam.broken(f"it is gone ({e})"))
    try:
        resolve(seam.tally)
    except (ImportError, AttributeError) as e:
        pytest.fail(
            f"{seam.tally} no longer exists ({e}): update its entry in "
            "ledger/infrastructure/library_seams.py"
        )
    if seam.params is not None:
        params = tuple(inspect.signature(target).parameters)
        assert params == seam.params, seam.broken(
            f"its parameters are now {params}, not {seam.params}"
        )
    if seam.sha256:
        digest = source_sha256(target)
        assert digest == seam.sha256, seam.broken(
            f"its source changed (sha256 now {digest}, pinned {seam.sha256})"
        )
    if seam.check is not None:
        try:
            seam.check()
        except SeamBroken as e:
            pytest.fail(seam.broken(str(e)))
