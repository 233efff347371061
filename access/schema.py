"""OpenAPI descriptions of our authentication schemes and the problem-details error body."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers


class JWTScheme(OpenApiAuthenticationExtension):
    target_class = "access.authentication.JWTAuthentication"
    name = "MolamID"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Molam ID token (RS256/ES256) with `sub`, `roles`, `merchant_id`.",
        }


class APIKeyScheme(OpenApiAuthenticationExtension):
    target_class = "access.authentication.APIKeyAuthentication"
    name = "MerchantAPIKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Api-Key <key>`: a merchant API key (or header `X-Api-Key: <key>`).",
        }


Problem = inline_serializer(
    name="Problem",
    fields={
        "type": serializers.CharField(),
        "title": serializers.CharField(),
        "status": serializers.IntegerField(),
        "detail": serializers.CharField(),
        "instance": serializers.CharField(required=False),
        "code": serializers.CharField(help_text="Stable machine-readable error code."),
        "errors": serializers.DictField(
            required=False, help_text="Per-field messages of a validation failure."
        ),
    },
)


def problem(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=Problem, description=description)


COMMON_ERRORS = {
    400: problem("Validation failed (`validation_error`, per-field `errors`)."),
    401: problem("No or bad credential."),
    403: problem("The credential lacks the permission."),
    404: problem("Unknown, or outside the caller's merchant."),
    413: problem("Request body too large."),
}
WRITE_ERRORS = {
    **COMMON_ERRORS,
    409: problem("Conflict (`idempotency_in_progress`, `invalid_state`)."),
    422: problem("Refused by a business rule (`insufficient_points`, `approval_required`...)."),
}

IDEMPOTENCY_KEY = OpenApiParameter(
    name="Idempotency-Key",
    type=str,
    location=OpenApiParameter.HEADER,
    required=True,
    description="Unique per write; a repeat with the same body replays the first response "
    "(header `Idempotent-Replayed: true`).",
    pattern=r"^[\x21-\x7e]{1,255}$",
)
