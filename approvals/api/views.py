"""/api/v1/approvals: list, read, approve, reject. Thin: parse, call one service, shape."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response

from access.idempotency import idempotent
from access.schema import COMMON_ERRORS, IDEMPOTENCY_KEY, WRITE_ERRORS
from access.selectors import person_actor_ids
from loyalty.api.base import LoyaltyApi, paginated, validated

from ..selectors import approval_request_get_for_caller, approval_requests_for_caller
from ..services import approval_approve, approval_reject
from .serializers import (
    ApprovalFilterSerializer,
    ApprovalRequestSerializer,
    ApproveInputSerializer,
    RejectInputSerializer,
    approval_request_body,
)

PAGE_PARAMS = [
    OpenApiParameter("cursor", str, description="Opaque cursor from `next`/`previous`."),
    OpenApiParameter("limit", int, description="Page size, 1 to 200 (default 50)."),
]


class ApprovalListApi(LoyaltyApi):
    method_permissions = {"get": "approvals:read"}

    @extend_schema(
        operation_id="approvals_list",
        summary="Approval requests, newest first (filter by status, operation, program)",
        parameters=[ApprovalFilterSerializer, *PAGE_PARAMS],
        responses={200: ApprovalRequestSerializer(many=True), **COMMON_ERRORS},
    )
    def get(self, request):
        filters = validated(ApprovalFilterSerializer, request.query_params)
        queryset = approval_requests_for_caller(
            caller=request.caller,
            status=filters.get("status"),
            operation=filters.get("operation"),
            program_id=filters.get("program"),
        )
        caller = request.caller
        ids = person_actor_ids(caller.actor.id)
        return paginated(self, request, queryset, lambda r: approval_request_body(r, caller, ids),
                         ordering=("-created_at", "-id"))  # fmt: skip


class ApprovalDetailApi(LoyaltyApi):
    method_permissions = {"get": "approvals:read"}

    @extend_schema(
        operation_id="approvals_read",
        summary="One approval request: payload, maker, approvals so far, result",
        responses={200: ApprovalRequestSerializer, **COMMON_ERRORS},
    )
    def get(self, request, request_id):
        found = approval_request_get_for_caller(caller=request.caller, request_id=request_id)
        return Response(approval_request_body(found, request.caller))


class ApprovalApproveApi(LoyaltyApi):
    method_permissions = {"post": "approvals:decide"}
    idempotency_per_person = True  # a decision is its person's: see `idempotent`

    @extend_schema(
        operation_id="approvals_approve",
        summary="Approve in one of the caller's roles still missing; the last approval runs it",
        description="The maker cannot approve; one person fills one role. When the last "
        "required role is filled the stored payload runs at once: `status` becomes "
        "`executed` (with `result`) or `failed` (with `error`).",
        parameters=[IDEMPOTENCY_KEY],
        request=ApproveInputSerializer,
        responses={200: ApprovalRequestSerializer, **WRITE_ERRORS},
    )
    @idempotent
    def post(self, request, request_id):
        data = validated(ApproveInputSerializer, request.data)
        caller = request.caller
        found = approval_request_get_for_caller(caller=caller, request_id=request_id)
        approval_approve(
            request_id=found.pk, actor=caller.actor, roles=set(caller.roles),
            comment=data["comment"],
        )  # fmt: skip
        return Response(approval_request_body(_reload(caller, found.pk), caller))


class ApprovalRejectApi(LoyaltyApi):
    method_permissions = {"post": "approvals:decide"}
    idempotency_per_person = True  # a decision is its person's: see `idempotent`

    @extend_schema(
        operation_id="approvals_reject",
        summary="Reject a pending request (a reason is required); it will never run",
        parameters=[IDEMPOTENCY_KEY],
        request=RejectInputSerializer,
        responses={200: ApprovalRequestSerializer, **WRITE_ERRORS},
    )
    @idempotent
    def post(self, request, request_id):
        data = validated(RejectInputSerializer, request.data)
        caller = request.caller
        found = approval_request_get_for_caller(caller=caller, request_id=request_id)
        approval_reject(
            request_id=found.pk, actor=caller.actor, roles=set(caller.roles),
            comment=data["comment"],
        )  # fmt: skip
        return Response(approval_request_body(_reload(caller, found.pk), caller))


def _reload(caller, pk):
    return approval_request_get_for_caller(caller=caller, request_id=pk)
