"""A conflict inside the library's pipelined insert may surface as the pipeline's abort:
it is re-run as a conflict, never answered as a lost database (recorders.aborted_pipeline)."""

from __future__ import annotations

import psycopg
from eventsourcing.persistence import OperationalError

from ledger.infrastructure.database import database_lost
from ledger.infrastructure.recorders import aborted_pipeline


def _wrapped(cause: BaseException) -> OperationalError:
    try:
        try:
            raise cause
        except psycopg.Error as e:
            raise OperationalError(str(e)) from e  # as the library wraps it
    except OperationalError as wrapped:
        return wrapped


def test_an_aborted_pipeline_is_a_conflict() -> None:
    assert aborted_pipeline(_wrapped(psycopg.errors.PipelineAborted("pipeline aborted")))


def test_a_lost_connection_is_not() -> None:
    lost = _wrapped(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert not aborted_pipeline(lost)
    assert database_lost(lost)
