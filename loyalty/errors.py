"""Typed domain errors: each has a stable machine-readable `code` and the HTTP status the API
maps it to. Services raise them; the API's exception handler renders problem details."""

from typing import Any


class DomainError(Exception):
    code = "domain_error"
    http_status = 422
    title = "Request refused"

    def __init__(self, detail: str | None = None, **context: Any) -> None:
        self.detail = detail or self.title
        self.context = context
        super().__init__(self.detail)


class ValidationFailed(DomainError):
    code = "validation_error"
    http_status = 400
    title = "Invalid input"

    def __init__(self, detail: str | None = None, *, errors: dict | None = None, **context):
        if detail is None and errors:  # as the serializers' own refusals say it
            detail = FIELD_ERRORS_DETAIL
        super().__init__(detail, **context)
        self.errors = errors or {}


FIELD_ERRORS_DETAIL = "The request has invalid fields; see `errors`."


class PermissionMissing(DomainError):
    """The caller's credential lacks a permission this particular request needs, beyond the
    endpoint's own (a `manual_adjust` event needs `members:adjust`)."""

    code = "permission_denied"
    http_status = 403
    title = "Permission denied"


class NotFound(DomainError):
    code = "not_found"
    http_status = 404
    title = "Not found"


class Conflict(DomainError):
    code = "conflict"
    http_status = 409
    title = "Conflict"


class ProgramInactive(DomainError):
    code = "program_inactive"
    title = "The program is not active"


class CurrencyMismatch(DomainError):
    code = "currency_mismatch"
    title = "The currency does not match the program's currency"


class AccountFrozen(DomainError):
    code = "account_frozen"
    title = "The member's account is frozen"


class FraudReview(DomainError):
    code = "fraud_review"
    title = "The member's account is under fraud review"


class OutstandingDebt(DomainError):
    code = "outstanding_debt"
    title = "The member owes points from a refund; redemptions wait until it is repaid"


class InsufficientPoints(DomainError):
    code = "insufficient_points"
    title = "Not enough available points"


class BudgetExhausted(DomainError):
    code = "budget_exhausted"
    title = "The program's budget is exhausted"


class DailyCapReached(DomainError):
    code = "daily_cap_reached"
    title = "The member's daily earning cap is reached"


class OriginalNotFound(DomainError):
    code = "original_not_found"
    title = "The refunded purchase does not exist for this member"


class RefundExceedsOriginal(DomainError):
    code = "refund_exceeds_original"
    title = "The refunds exceed the original purchase amount"


class LedgerLimitExceeded(DomainError):
    code = "ledger_limit_exceeded"
    title = "The points or totals would pass what the ledger can hold (10^18)"


class QueueUnavailable(DomainError):
    code = "queue_unavailable"
    http_status = 503
    title = "The job queue is unreachable: the job was not started"


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"
    title = "The idempotency key was already used for a different request"


class InvalidState(DomainError):
    code = "invalid_state"
    http_status = 409
    title = "The object is not in a state that allows this operation"


class HoldExpired(DomainError):
    code = "hold_expired"
    title = "The redemption hold has expired"


class VoucherNotRedeemable(DomainError):
    code = "voucher_not_redeemable"
    title = "The voucher is not active"
