"""/api/v1/audit: the trail of one entity, and a search; read-only, cursor-paginated."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers

from access.schema import COMMON_ERRORS
from loyalty.api.base import LoyaltyApi, paginated, validated
from loyalty.api.fields import AwareDateTime, iso
from loyalty.errors import NotFound, ValidationFailed

from ..models import AuditEntry
from ..selectors import ENTITY_TYPES, audit_entries_for_caller

PAGE_PARAMS = [
    OpenApiParameter("cursor", str, description="Opaque cursor from `next`/`previous`."),
    OpenApiParameter("limit", int, description="Page size, 1 to 200 (default 50)."),
]


def audit_entry_body(entry: AuditEntry) -> dict:
    return {
        "id": str(entry.pk),
        "entity_type": entry.entity_type,
        "entity_id": entry.entity_id,
        "action": entry.action,
        "merchant_id": entry.merchant_id or None,
        "actor_id": entry.actor_id,
        "actor_role": entry.actor_role,
        "ip": entry.ip,
        "user_agent": entry.user_agent,
        "credential_id": entry.credential_id or None,
        "changes": entry.changes,
        "created_at": iso(entry.created_at),
        "digest": entry.digest,
    }


class AuditEntrySerializer(serializers.Serializer):
    id = serializers.CharField()
    entity_type = serializers.CharField()
    entity_id = serializers.CharField()
    action = serializers.CharField()
    merchant_id = serializers.CharField(allow_null=True)
    actor_id = serializers.CharField()
    actor_role = serializers.CharField()
    ip = serializers.CharField(allow_null=True)
    user_agent = serializers.CharField()
    credential_id = serializers.CharField(
        allow_null=True, help_text="The API credential used (jwt:<jti or sub>, apikey:<prefix>)"
    )
    changes = serializers.DictField(help_text="before/after, PII masked")
    created_at = serializers.DateTimeField()
    digest = serializers.CharField(help_text="HMAC of the entry (checked by audit_verify)")


class AuditSearchSerializer(serializers.Serializer):
    entity_type = serializers.ChoiceField(choices=ENTITY_TYPES, required=False)
    entity_id = serializers.CharField(required=False, max_length=64)
    actor_id = serializers.CharField(required=False, max_length=128)
    action = serializers.CharField(required=False, max_length=64)
    since = AwareDateTime(required=False, help_text="Inclusive, ISO 8601 with a zone.")
    until = AwareDateTime(required=False, help_text="Exclusive, ISO 8601 with a zone.")

    def validate(self, attrs):
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["Must be after `since`."]})
        return attrs


class AuditSearchApi(LoyaltyApi):
    method_permissions = {"get": "audit:read"}

    @extend_schema(
        operation_id="audit_search",
        summary="Search the audit trail by entity, actor, action and time range, newest first",
        parameters=[AuditSearchSerializer, *PAGE_PARAMS],
        responses={200: AuditEntrySerializer(many=True), **COMMON_ERRORS},
    )
    def get(self, request):
        filters = validated(AuditSearchSerializer, request.query_params)
        queryset = audit_entries_for_caller(caller=request.caller, **filters)
        return paginated(self, request, queryset, audit_entry_body)


ENTITY_ID_MAX = AuditEntry._meta.get_field("entity_id").max_length


class AuditEntityTrailApi(LoyaltyApi):
    method_permissions = {"get": "audit:read"}

    @extend_schema(
        operation_id="audit_entity_trail",
        summary="The audit trail of one entity, newest first",
        parameters=[*PAGE_PARAMS],
        responses={200: AuditEntrySerializer(many=True), **COMMON_ERRORS},
    )
    def get(self, request, entity_type, entity_id):
        if entity_type not in ENTITY_TYPES:
            raise ValidationFailed(errors={"entity_type": [f"One of {list(ENTITY_TYPES)}."]})
        # An id no entry can carry (a NUL, longer than the column) is an unknown entity, not
        # a value for the database to refuse.
        if "\x00" in entity_id or len(entity_id) > ENTITY_ID_MAX:
            raise NotFound("No audit entries for this entity.")
        queryset = audit_entries_for_caller(
            caller=request.caller, entity_type=entity_type, entity_id=entity_id
        )
        # An entity the caller may not see answers like an unknown one.
        if not queryset.exists():
            raise NotFound("No audit entries for this entity.")
        return paginated(self, request, queryset, audit_entry_body)
