"""Map failures to google.rpc.Status with details (ErrorInfo, BadRequest, RetryInfo)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ledger.domain import errors
from ledger.infrastructure.database import database_lost

ERROR_DOMAIN = "tally.ledger"
DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
# What a client is told to wait before retrying while the database is away (RetryInfo): about
# the health check's period, so that a retry lands after the next look at the database.
DATABASE_RETRY_SECONDS = 1


class InvalidArgument(Exception):
    """Malformed input: one (field, description) pair per violation."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))
        self.violations = violations


class Unavailable(Exception):
    pass


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def invalid_argument_status(error: InvalidArgument) -> status_pb2.Status:
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in error.violations
        ]
    )
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message=f"invalid request: {error}",
        details=[_pack(bad_request)],
    )


def domain_status(error: errors.DomainError, field_prefix: str = "") -> status_pb2.Status:
    """`field_prefix`: where the request sits in a larger one (a batch's `commands[3].reverse.`),
    for the field an InvalidField names."""
    if isinstance(error, errors.InvalidField):
        status = invalid_argument_status(
            InvalidArgument([(field_prefix + error.field, error.message)])
        )
        info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
        status.details.append(_pack(info))
        return status
    if isinstance(error, errors.NotFound):
        code = code_pb2.NOT_FOUND
    elif isinstance(error, errors.AlreadyExists):
        code = code_pb2.ALREADY_EXISTS
    elif isinstance(error, (errors.WriteConflict, errors.AtomicBatchAborted)):
        code = code_pb2.ABORTED
    elif isinstance(error, errors.InternalFault):
        code = code_pb2.INTERNAL
    else:
        code = code_pb2.FAILED_PRECONDITION
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    return status_pb2.Status(code=code, message=error.message, details=[_pack(info)])


def to_grpc(status: status_pb2.Status) -> grpc.Status:
    return rpc_status.to_status(status)


def database_unavailable_status() -> status_pb2.Status:
    """The database restarted, failed over or cannot be reached: UNAVAILABLE, retryable.
    A command may or may not have been committed when its connection broke; retrying it
    with the same request_id is safe either way (a recorded one answers from its record)."""
    info = error_details_pb2.ErrorInfo(reason=DATABASE_UNAVAILABLE, domain=ERROR_DOMAIN)
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=DATABASE_RETRY_SECONDS)
    )
    return status_pb2.Status(
        code=code_pb2.UNAVAILABLE,
        message="the database cannot be reached; retry with the same request_id",
        details=[_pack(info), _pack(retry)],
    )


def unexpected_status(error: Exception) -> status_pb2.Status | None:
    """The status for an exception that is none of our refusals: UNAVAILABLE for a lost
    database, None for anything else (a bug: the caller answers INTERNAL)."""
    return database_unavailable_status() if database_lost(error) else None
