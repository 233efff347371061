"""Refusals of the approvals app (stable codes; the API renders them as problem details)."""

from loyalty.errors import Conflict, DomainError


class ApprovalPendingExists(Conflict):
    code = "approval_pending_exists"
    title = "A request for this operation and target is already waiting for approval"


class ApprovalNotPending(Conflict):
    code = "approval_not_pending"
    title = "The approval request is no longer pending"


class ApprovalExpired(Conflict):
    code = "approval_expired"
    title = "The approval request has expired"


class AlreadyApproved(Conflict):
    code = "already_approved"
    title = "This person has already approved the request"


class MakerCannotApprove(DomainError):
    code = "maker_cannot_approve"
    http_status = 403
    title = "The maker of a request cannot approve it"


class RoleNotRequired(DomainError):
    code = "approval_role_not_required"
    http_status = 403
    title = "None of the caller's roles is still needed by this request"
