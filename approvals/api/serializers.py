"""Wire shape of an approval request (DESIGN.md: id, operation, status, approvals, result)."""

from rest_framework import serializers

from access.selectors import person_actor_ids
from loyalty.api.fields import Text, iso
from loyalty.api.serializers import StrictInput

from ..models import ApprovalRequest, Operation
from ..selectors import approval_refusal


def caller_decision(request: ApprovalRequest, *, actor_ids: frozenset[str], roles) -> dict:
    """Whether this caller (every actor id of the person: `person_actor_ids`) may approve,
    and why not: the maker's own request is not approvable by them."""
    reason = approval_refusal(request, actor_ids=actor_ids, roles=roles)
    return {"can_approve": reason is None, "reason": reason}


def approval_request_body(
    request: ApprovalRequest, caller=None, actor_ids: frozenset[str] | None = None
) -> dict:
    """`actor_ids`: the caller's `person_actor_ids`, when the caller already has them (a list
    page asks once, not once per row)."""
    error = None
    if caller is not None and actor_ids is None:
        actor_ids = person_actor_ids(caller.actor.id)
    if request.error_code:
        error = {"code": request.error_code, "detail": request.error_detail}
    return {
        "id": str(request.pk),
        "operation": request.operation,
        "status": request.status,
        "program_id": str(request.program_id),
        "merchant_id": request.merchant_id,
        "target": request.target,
        "payload": request.payload,
        "amount": None if request.amount is None else str(request.amount),
        "maker": {"actor_id": request.maker_id, "role": request.maker_role},
        "required_roles": list(request.required_roles),
        "missing_roles": request.missing_roles if request.status == "pending" else [],
        "approvals": [
            {"actor_id": a.actor_id, "role": a.role, "at": iso(a.at), "comment": a.comment}
            for a in request.approvals.all()
        ],
        "result": request.result if request.status == "executed" else None,
        "error": error,
        "reject_reason": request.reject_reason or None,
        "decided_by": request.decided_by or None,
        "created_at": iso(request.created_at),
        "expires_at": iso(request.expires_at),
        "decided_at": iso(request.decided_at),
        "you": None
        if caller is None
        else caller_decision(request, actor_ids=actor_ids, roles=caller.roles),
    }


class ApprovalFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=ApprovalRequest.Status.choices, required=False)
    operation = serializers.ChoiceField(choices=Operation.choices, required=False)
    program = serializers.UUIDField(required=False)


class ApproveInputSerializer(StrictInput):
    comment = Text(required=False, allow_blank=True, max_length=2000, default="")


class RejectInputSerializer(StrictInput):
    comment = Text(max_length=2000, help_text="The reason; required.")


class _ApprovalSerializer(serializers.Serializer):
    actor_id = serializers.CharField()
    role = serializers.CharField()
    at = serializers.DateTimeField()
    comment = serializers.CharField()


class _ActorSerializer(serializers.Serializer):
    actor_id = serializers.CharField()
    role = serializers.CharField()


class _CallerDecisionSerializer(serializers.Serializer):
    can_approve = serializers.BooleanField()
    reason = serializers.ChoiceField(
        choices=["not_pending", "expired", "maker", "already_approved", "no_missing_role"],
        allow_null=True,
    )


class ApprovalRequestSerializer(serializers.Serializer):
    id = serializers.CharField()
    operation = serializers.ChoiceField(choices=Operation.choices)
    status = serializers.ChoiceField(choices=ApprovalRequest.Status.choices)
    program_id = serializers.CharField()
    merchant_id = serializers.CharField()
    target = serializers.CharField()
    payload = serializers.DictField()
    amount = serializers.CharField(allow_null=True)
    maker = _ActorSerializer()
    required_roles = serializers.ListField(child=serializers.CharField())
    missing_roles = serializers.ListField(child=serializers.CharField())
    approvals = _ApprovalSerializer(many=True)
    result = serializers.DictField(allow_null=True)
    error = serializers.DictField(allow_null=True)
    reject_reason = serializers.CharField(allow_null=True)
    decided_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    decided_at = serializers.DateTimeField(allow_null=True)
    you = _CallerDecisionSerializer(help_text="Whether the caller may approve, and why not.")
