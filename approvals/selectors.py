"""Reads of approval requests, scoped to the caller's merchant."""

from django.db.models import QuerySet
from django.utils import timezone

from access.caller import Caller
from access.scoping import scope_queryset
from loyalty.errors import NotFound

from .models import ApprovalRequest


def approvals_due() -> QuerySet[ApprovalRequest]:
    """Requests past their expiry, still pending (the expiry job's)."""
    return ApprovalRequest.objects.filter(
        status=ApprovalRequest.Status.PENDING, expires_at__lte=timezone.now()
    )


def approval_requests_for_caller(
    *, caller: Caller, status: str | None = None, operation: str | None = None, program_id=None
) -> QuerySet[ApprovalRequest]:
    queryset = scope_queryset(ApprovalRequest.objects.all(), caller).prefetch_related("approvals")
    if status:
        queryset = queryset.filter(status=status)
    if operation:
        queryset = queryset.filter(operation=operation)
    if program_id:
        queryset = queryset.filter(program_id=program_id)
    return queryset


def approval_request_get_for_caller(*, caller: Caller, request_id) -> ApprovalRequest:
    """The request, or 404 when unknown or another merchant's."""
    try:
        found = approval_requests_for_caller(caller=caller).filter(pk=request_id).first()
    except (ValueError, TypeError):  # not a UUID
        found = None
    if found is None:
        raise NotFound("No such approval request.")
    return found


def approval_refusal(request: ApprovalRequest, *, actor_ids: frozenset[str], roles) -> str | None:
    """Why this person (every actor id of theirs: `person_actor_ids`) may not approve the
    request, as a stable code, or None when they may: the one rule the API and the admin show."""
    if request.status != ApprovalRequest.Status.PENDING:
        return "not_pending"
    if request.expires_at <= timezone.now():
        return "expired"  # still pending until the expiry job records it; never approvable
    if request.maker_id in actor_ids:
        return "maker"
    if any(a.actor_id in actor_ids for a in request.approvals.all()):
        return "already_approved"
    if not set(request.missing_roles) & set(roles):
        return "no_missing_role"
    return None
