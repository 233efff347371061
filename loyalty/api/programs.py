"""Programs: list, create, read, update (budget changes need approval above the threshold),
suspend (always needs approval)."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from access.approval_gate import approval_gate, approval_pending_body
from access.idempotency import idempotent
from access.schema import COMMON_ERRORS, IDEMPOTENCY_KEY, WRITE_ERRORS
from access.scoping import merchant_check, program_get_for_caller, scope_queryset

from ..errors import ValidationFailed
from ..models import Program
from ..services import TierInput, program_create, program_set_status, program_update
from ..services.budget import with_budget_spent
from ..services.programs import program_status_check, program_update_check
from .base import LoyaltyApi, paginated, validated
from .members import PAGE_PARAMS
from .serializers import (
    ApprovalPendingSerializer,
    ProgramCreateSerializer,
    ProgramFilterSerializer,
    ProgramSerializer,
    ProgramUpdateSerializer,
    ReasonInputSerializer,
    program_body,
    tier_ranks_check,
)


def _tiers(tiers: list[dict] | None) -> list[TierInput] | None:
    return None if tiers is None else [TierInput(**t) for t in tiers]


def _json(changes: dict) -> dict:
    """The validated changes, JSON-safe, as an approval request stores them."""
    out = {}
    for key, value in changes.items():
        if key == "tiers" and value is not None:
            out[key] = [{k: str(v) for k, v in t.items()} for t in value]
        elif value is None or isinstance(value, bool | int | dict | list | str):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def _reload(program_id) -> Program:
    return Program.objects.prefetch_related("tiers").get(pk=program_id)


class ProgramsApi(LoyaltyApi):
    method_permissions = {"get": "programs:read", "post": "programs:create"}
    idempotency_atomic = True  # a program has no key of its own: made once, with its record

    @extend_schema(
        operation_id="programs_list",
        summary="Programs the caller may see",
        parameters=[ProgramFilterSerializer, *PAGE_PARAMS],
        responses={200: ProgramSerializer(many=True), **COMMON_ERRORS},
    )
    def get(self, request):
        filters = validated(ProgramFilterSerializer, request.query_params)
        programs = scope_queryset(
            with_budget_spent(Program.objects.prefetch_related("tiers")), request.caller
        )
        if "status" in filters:
            programs = programs.filter(status=filters["status"])
        if "merchant_id" in filters:
            programs = programs.filter(merchant_id=filters["merchant_id"])
        return paginated(self, request, programs, program_body, ordering=("-created_at", "-id"))

    @extend_schema(
        operation_id="programs_create",
        summary="Create a program (and its merchant on first use)",
        parameters=[IDEMPOTENCY_KEY],
        request=ProgramCreateSerializer,
        responses={201: ProgramSerializer, **WRITE_ERRORS},
    )
    @idempotent
    def post(self, request):
        data = dict(validated(ProgramCreateSerializer, request.data))
        if "tiers" in data:
            basis = data.get("tier_basis", Program.TierBasis.POINTS)
            data["tiers"] = tier_ranks_check(data["tiers"], basis)
        caller = request.caller
        merchant_id = data.pop("merchant_id", None) or caller.merchant_id
        if merchant_id is None:
            raise ValidationFailed(errors={"merchant_id": ["This field is required."]})
        merchant_check(caller, merchant_id)
        tiers = _tiers(data.pop("tiers", None))
        program = program_create(
            merchant_id=merchant_id,
            name=data.pop("name"),
            currency=data.pop("currency"),
            tiers=tiers,
            actor=caller.actor,
            **data,
        )
        return Response(program_body(_reload(program.pk)), status=201)


class ProgramDetailApi(LoyaltyApi):
    # PATCH: program fields need programs:write, `budget_limit` needs budgets:write.
    method_permissions = {"get": "programs:read", "patch": ("programs:write", "budgets:write")}

    @extend_schema(
        operation_id="programs_read",
        summary="A program",
        responses={200: ProgramSerializer, **COMMON_ERRORS},
    )
    def get(self, request, program_id):
        program = program_get_for_caller(caller=request.caller, program_id=program_id)
        return Response(program_body(_reload(program.pk)))

    @staticmethod
    def replay_permissions(request, record) -> set[str]:
        """What `patch` asks of the caller for these changes, for the replay of a stored
        answer (`idempotent`)."""
        changes = set(request.data) if isinstance(request.data, dict) else set()
        needed = {"budgets:write"} if "budget_limit" in changes else set()
        return needed | ({"programs:write"} if changes - {"budget_limit"} else set())

    @extend_schema(
        operation_id="programs_update",
        summary="Change a program (a budget change over the threshold waits for approval)",
        parameters=[IDEMPOTENCY_KEY],
        request=ProgramUpdateSerializer(partial=True),
        responses={
            200: ProgramSerializer,
            202: OpenApiResponse(ApprovalPendingSerializer, "Waiting for approval."),
            **WRITE_ERRORS,
        },
    )
    @idempotent
    def patch(self, request, program_id):
        caller = request.caller
        changes = dict(validated(ProgramUpdateSerializer, request.data, partial=True))
        if not changes:
            raise ValidationFailed(errors={"non_field_errors": ["Nothing to change."]})
        budget = "budget_limit" in changes
        if budget and not caller.has("budgets:write"):
            raise PermissionDenied("Changing the budget needs the budgets:write permission.")
        if set(changes) - {"budget_limit"} and not caller.has("programs:write"):
            raise PermissionDenied("Changing a program needs the programs:write permission.")
        program = program_get_for_caller(caller=caller, program_id=program_id)
        if "tiers" in changes:
            basis = changes.get("tier_basis", program.tier_basis)
            changes["tiers"] = tier_ranks_check(changes["tiers"], basis)
        fields = {name: value for name, value in changes.items() if name != "tiers"}
        tiers = _tiers(changes.get("tiers"))
        # Before the gate: no approval request for changes the service would refuse.
        program_update_check(program=program, changes=fields, tiers=tiers)
        if budget and changes["budget_limit"] != program.budget_limit:
            old, new = program.budget_limit, changes["budget_limit"]
            pending = approval_gate(
                operation="budget_change",
                program=program,
                target=f"program:{program.pk}",
                amount=None if old is None or new is None else new - old,
                actor=caller.actor,
                payload={"program_id": str(program.pk), "changes": _json(changes)},
            )
            if pending is not None:
                return Response(approval_pending_body(pending), status=202)
        program_update(program_id=program.pk, changes=fields, tiers=tiers, actor=caller.actor)
        return Response(program_body(_reload(program.pk)))


class ProgramSuspendApi(LoyaltyApi):
    method_permissions = {"post": "programs:suspend"}

    @extend_schema(
        operation_id="programs_suspend",
        summary="Suspend a program (needs multi-signature approval)",
        parameters=[IDEMPOTENCY_KEY],
        request=ReasonInputSerializer,
        responses={
            200: ProgramSerializer,
            202: OpenApiResponse(ApprovalPendingSerializer, "Waiting for approval."),
            **WRITE_ERRORS,
        },
    )
    @idempotent
    def post(self, request, program_id):
        data = validated(ReasonInputSerializer, request.data)
        program = program_get_for_caller(caller=request.caller, program_id=program_id)
        # Before the gate: no approval request for a change the service would refuse.
        if not program_status_check(program=program, status=Program.Status.SUSPENDED):
            return Response(program_body(_reload(program.pk)))
        pending = approval_gate(
            operation="program_suspend",
            program=program,
            target=f"program:{program.pk}",
            actor=request.caller.actor,
            payload={"program_id": str(program.pk), "reason": data["reason"]},
        )
        if pending is not None:
            return Response(approval_pending_body(pending), status=202)
        program_set_status(
            program_id=program.pk,
            status=Program.Status.SUSPENDED,
            reason=data["reason"],
            actor=request.caller.actor,
        )
        return Response(program_body(_reload(program.pk)))
