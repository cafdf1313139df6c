"""Domain errors, each named for what went wrong and carrying a stable reason code.

The gRPC layer maps the class to a status code (NotFound -> NOT_FOUND, RuleViolation ->
FAILED_PRECONDITION with ErrorInfo reason, ...); the domain knows nothing of gRPC.
"""

from __future__ import annotations


class DomainError(Exception):
    reason: str = "DOMAIN_ERROR"

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata


class NotFound(DomainError):
    """Something named by the command does not exist."""


class ProgramNotFound(NotFound):
    reason = "PROGRAM_NOT_FOUND"


class MemberNotFound(NotFound):
    reason = "MEMBER_NOT_FOUND"


class TransactionNotFound(NotFound):
    reason = "TRANSACTION_NOT_FOUND"


class HoldNotFound(NotFound):
    reason = "HOLD_NOT_FOUND"


class AlreadyExists(DomainError):
    """The command would create something that exists already."""


class ProgramAlreadyExists(AlreadyExists):
    reason = "PROGRAM_ALREADY_EXISTS"


class MemberAlreadyEnrolled(AlreadyExists):
    reason = "MEMBER_ALREADY_ENROLLED"


class IdempotencyKeyReused(AlreadyExists):
    reason = "IDEMPOTENCY_KEY_REUSED"


class RuleViolation(DomainError):
    """A business rule refuses the command; nothing is written."""


class InsufficientPoints(RuleViolation):
    reason = "INSUFFICIENT_POINTS"


class InsufficientStoredValue(RuleViolation):
    reason = "INSUFFICIENT_STORED_VALUE"


class ConversionNotAvailable(RuleViolation):
    """The program sets no points_conversion rate."""

    reason = "CONVERSION_NOT_AVAILABLE"


class NotAMultipleOfRate(RuleViolation):
    """Points to convert (or a conversion to reverse) that the rate does not divide."""

    reason = "NOT_A_MULTIPLE_OF_RATE"


class AccountInDebt(RuleViolation):
    reason = "ACCOUNT_IN_DEBT"


class HoldNotActive(RuleViolation):
    reason = "HOLD_NOT_ACTIVE"


class CaptureExceedsHold(RuleViolation):
    reason = "CAPTURE_EXCEEDS_HOLD"


class NothingLeftToReverse(RuleViolation):
    reason = "NOTHING_LEFT_TO_REVERSE"


class ReversalExceedsOriginal(RuleViolation):
    reason = "REVERSAL_EXCEEDS_ORIGINAL"


class ReversalInWrongUnit(RuleViolation):
    """Points named for a money transaction, or money for a points one."""

    reason = "REVERSAL_IN_WRONG_UNIT"


class TransactionNotReversible(RuleViolation):
    reason = "TRANSACTION_NOT_REVERSIBLE"


class RefundExceedsPurchase(RuleViolation):
    """An Earn reversal's refund_purchase_minor beyond the purchase money not refunded yet."""

    reason = "REFUND_EXCEEDS_PURCHASE"


class InvalidField(DomainError):
    """Input the account alone can tell is malformed (a field the named transaction's kind
    does not take): INVALID_ARGUMENT with a violation on `field`, as a stateless check's."""

    field: str = ""


class RefundNotApplicable(InvalidField):
    """refund_purchase_minor given with the reversal of something other than an Earn."""

    reason = "REFUND_NOT_APPLICABLE"
    field = "refund_purchase_minor"


class BalanceLimitExceeded(RuleViolation):
    reason = "BALANCE_LIMIT_EXCEEDED"


class ExpiryInFuture(RuleViolation):
    reason = "EXPIRY_IN_FUTURE"


class AtomicBatchAborted(DomainError):
    """Not applied because another command of the same atomic batch was refused."""

    reason = "ATOMIC_BATCH_ABORTED"


class WriteConflict(DomainError):
    """Concurrent writers kept conflicting after every retry (maps to ABORTED)."""

    reason = "WRITE_CONFLICT"


class InternalFault(DomainError):
    """The server's own code failed on this command (a bug, logged); nothing of it was
    written (maps to INTERNAL)."""

    reason = "INTERNAL"


class ReconciliationNotFound(NotFound):
    reason = "RECONCILIATION_NOT_FOUND"


class NoteRequired(RuleViolation):
    """A reconciliation with anything unmatched is signed off only with a note saying why."""

    reason = "NOTE_REQUIRED"


class AlreadySignedOff(RuleViolation):
    """A reconciliation is signed off once; this one was, by another request."""

    reason = "ALREADY_SIGNED_OFF"
