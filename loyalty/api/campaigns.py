"""Campaigns: list, create, read, update (execution is the workers' job)."""

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from access.idempotency import idempotent
from access.schema import COMMON_ERRORS, IDEMPOTENCY_KEY, WRITE_ERRORS
from access.scoping import campaign_get_for_caller, program_get_for_caller, scope_queryset

from ..errors import ValidationFailed
from ..models import Campaign
from ..services.campaigns_admin import campaign_create, campaign_update
from .base import LoyaltyApi, paginated, validated
from .members import PAGE_PARAMS
from .serializers import (
    CampaignCreateSerializer,
    CampaignFilterSerializer,
    CampaignSerializer,
    CampaignUpdateSerializer,
    campaign_body,
)


class CampaignsApi(LoyaltyApi):
    method_permissions = {"get": "campaigns:read", "post": "campaigns:write"}
    idempotency_atomic = True  # a campaign has no key of its own: made once, with its record

    @extend_schema(
        operation_id="campaigns_list",
        summary="Campaigns the caller may see, newest first",
        parameters=[CampaignFilterSerializer, *PAGE_PARAMS],
        responses={200: CampaignSerializer(many=True), **COMMON_ERRORS},
    )
    def get(self, request):
        filters = validated(CampaignFilterSerializer, request.query_params)
        campaigns = scope_queryset(Campaign.objects.all(), request.caller, "program__merchant_id")
        if "program_id" in filters:
            campaigns = campaigns.filter(program_id=filters["program_id"])
        if "status" in filters:
            campaigns = campaigns.filter(status=filters["status"])
        return paginated(self, request, campaigns, campaign_body, ordering=("-created_at", "-id"))

    @extend_schema(
        operation_id="campaigns_create",
        summary="Create a campaign (draft or scheduled)",
        parameters=[IDEMPOTENCY_KEY],
        request=CampaignCreateSerializer,
        responses={201: CampaignSerializer, **WRITE_ERRORS},
    )
    @idempotent
    def post(self, request):
        data = dict(validated(CampaignCreateSerializer, request.data))
        program = program_get_for_caller(caller=request.caller, program_id=data.pop("program_id"))
        campaign = campaign_create(program=program, actor=request.caller.actor, **data)
        return Response(campaign_body(campaign), status=201)


class CampaignDetailApi(LoyaltyApi):
    method_permissions = {"get": "campaigns:read", "patch": "campaigns:write"}

    @extend_schema(
        operation_id="campaigns_read",
        summary="A campaign",
        responses={200: CampaignSerializer, **COMMON_ERRORS},
    )
    def get(self, request, campaign_id):
        campaign = campaign_get_for_caller(caller=request.caller, campaign_id=campaign_id)
        return Response(campaign_body(campaign))

    @extend_schema(
        operation_id="campaigns_update",
        summary="Change a campaign that has not started",
        parameters=[IDEMPOTENCY_KEY],
        request=CampaignUpdateSerializer,
        responses={200: CampaignSerializer, **WRITE_ERRORS},
    )
    @idempotent
    def patch(self, request, campaign_id):
        changes = dict(validated(CampaignUpdateSerializer, request.data))
        campaign = campaign_get_for_caller(caller=request.caller, campaign_id=campaign_id)
        if not changes:
            raise ValidationFailed(errors={"non_field_errors": ["Nothing to change."]})
        campaign = campaign_update(
            campaign_id=campaign.pk, changes=changes, actor=request.caller.actor
        )
        return Response(campaign_body(campaign))
