"""Two-phase redemptions: hold (optionally capture at once), capture, release."""

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from access.idempotency import idempotent, replay_headers
from access.schema import IDEMPOTENCY_KEY, WRITE_ERRORS
from access.scoping import program_get_for_caller, redemption_get_for_caller

from ..models import Redemption
from ..services import redemption_capture, redemption_hold_or_replay, redemption_release
from .base import LoyaltyApi, no_input, validated
from .serializers import (
    RedemptionInputSerializer,
    RedemptionSerializer,
    redemption_body,
)


def _reload(redemption_id) -> Redemption:
    return Redemption.objects.select_related("balance", "voucher__balance").get(pk=redemption_id)


class RedemptionsApi(LoyaltyApi):
    method_permissions = {"post": "redemptions:write"}

    @extend_schema(
        operation_id="redemptions_create",
        summary="Hold points for a reward (with `capture: true`, hold and capture at once)",
        parameters=[IDEMPOTENCY_KEY],
        request=RedemptionInputSerializer,
        responses={201: RedemptionSerializer, **WRITE_ERRORS},
    )
    @idempotent
    def post(self, request):
        data = validated(RedemptionInputSerializer, request.data)
        program = program_get_for_caller(caller=request.caller, program_id=data["program_id"])
        redemption, replayed = redemption_hold_or_replay(
            program=program,
            member_id=data["member_id"],
            points=data["points"],
            reward_type=data["reward_type"],
            capture=data["capture"],
            idempotency_key=request.idempotency_key,
            actor=request.caller.actor,
        )
        # A key the program's ledger already holds (the HTTP record gone, or made by another
        # caller of the program): the redemption it made, as a replay.
        body = redemption_body(_reload(redemption.pk))
        return Response(body, status=201, headers=replay_headers(replayed))


class RedemptionCaptureApi(LoyaltyApi):
    method_permissions = {"post": "redemptions:write"}

    @extend_schema(
        operation_id="redemptions_capture",
        summary="Capture a held redemption: spend the points, issue the voucher",
        parameters=[IDEMPOTENCY_KEY],
        request=None,
        responses={200: RedemptionSerializer, **WRITE_ERRORS},
    )
    @idempotent
    def post(self, request, redemption_id):
        no_input(request)
        redemption = redemption_get_for_caller(caller=request.caller, redemption_id=redemption_id)
        redemption_capture(redemption_id=redemption.pk, actor=request.caller.actor)
        return Response(redemption_body(_reload(redemption.pk)))


class RedemptionReleaseApi(LoyaltyApi):
    method_permissions = {"post": "redemptions:write"}

    @extend_schema(
        operation_id="redemptions_release",
        summary="Release a held redemption: the points become available again",
        parameters=[IDEMPOTENCY_KEY],
        request=None,
        responses={200: RedemptionSerializer, **WRITE_ERRORS},
    )
    @idempotent
    def post(self, request, redemption_id):
        no_input(request)
        redemption = redemption_get_for_caller(caller=request.caller, redemption_id=redemption_id)
        redemption_release(redemption_id=redemption.pk, actor=request.caller.actor)
        return Response(redemption_body(_reload(redemption.pk)))
