"""OpenAPI descriptions of our authentication schemes and the problem-details error body."""

import inspect

from drf_spectacular.extensions import (
    OpenApiAuthenticationExtension,
    OpenApiSerializerFieldExtension,
)
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers

from .idempotency import KEY_REGEX


class DecimalStringSchema(OpenApiSerializerFieldExtension):
    """A decimal is written as a string; a request may also send a JSON number, which is read
    exactly (`"points": 5` is 5.00)."""

    target_class = "loyalty.api.fields.DecimalString"

    def map_serializer_field(self, auto_schema, direction):
        text = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "example": "250.00"}
        if direction == "request":
            return {"oneOf": [text, {"type": "number"}]}
        return text


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
        # The header that takes the key as it is, which is what an OpenAPI client (Swagger
        # UI's Authorize, a generated SDK) sends for an apiKey scheme.
        return {
            "type": "apiKey",
            "in": "header",
            "name": "X-Api-Key",
            "description": "A merchant API key, as it was shown once (`X-Api-Key: <key>`; "
            "or `Authorization: Api-Key <key>`).",
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
    411: problem("A chunked body: send it with a Content-Length."),
    413: problem("Request body too large."),
}
WRITE_ERRORS = {
    **COMMON_ERRORS,
    409: problem("Conflict (`idempotency_in_progress`, `invalid_state`)."),
    422: problem("Refused by a business rule (`insufficient_points`, `program_inactive`...)."),
}

IDEMPOTENCY_KEY = OpenApiParameter(
    name="Idempotency-Key",
    type=str,
    location=OpenApiParameter.HEADER,
    required=True,
    description="Unique per write; a repeat with the same body replays the first response "
    "(header `Idempotent-Replayed: true`).",
    pattern=KEY_REGEX,
)


PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "code": {"type": "string", "description": "Stable machine-readable error code."},
        "errors": {
            "type": "object",
            "additionalProperties": True,
            "description": "Per-field messages of a validation failure.",
        },
    },
    "required": ["type", "title", "status", "detail", "code"],
    "additionalProperties": True,  # domain errors add context members
}
ALWAYS = {
    "401": "No or bad credential.",
    "403": "The credential lacks the permission.",
    "406": "The `Accept` header asks for something other than JSON.",
    "411": "A chunked body: send it with a Content-Length.",
    "413": "Request body too large.",
}
READS = {**ALWAYS, "400": "Invalid query parameters.", "404": "Unknown or out of scope."}
WRITES = {
    **READS,
    "400": "Validation failed (per-field `errors`) or `Idempotency-Key` missing.",
    "409": "Conflict (`idempotency_in_progress`, `invalid_state`...).",
    "415": "The body is not JSON (`Content-Type`).",
    "422": "Refused by a business rule (`idempotency_key_reused`, `insufficient_points`...).",
}


# The response headers the API sends, by where it sends them.
REPLAYED_HEADER = {
    "Idempotent-Replayed": {
        "description": "`true` on an answer replayed for a repeat of the `Idempotency-Key` "
        "(the stored answer, or the one the ledger's key gives).",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
AUTHENTICATE_HEADER = {
    "WWW-Authenticate": {
        "description": "The schemes the API takes: "
        '`Bearer realm="molam-loyalty", Api-Key realm="molam-loyalty"`.',
        "schema": {"type": "string"},
    }
}
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait, with `idempotency_in_progress`.",
        "schema": {"type": "integer"},
    }
}


def problem_responses_hook(result, generator, request, public):
    """Every /api/v1/ operation documents its error answers as problem details
    (`application/problem+json`), whichever app declared the view, and the headers the API
    sends with them: `WWW-Authenticate` with a 401, `Retry-After` with a write's 409, and
    `Idempotent-Replayed` with what a write's `Idempotency-Key` may replay (a success, a
    409 or a 422). Descriptions a view or input inherited from the API's base classes (how
    the code is built, not what the endpoint does) are left out."""
    result.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    ref = {"$ref": "#/components/schemas/Problem"}
    inherited = _inherited_docs()
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/v1/"):
            continue
        for method, operation in operations.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            _page_envelope(operation, responses)
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": ref}}
            for status, description in (READS if method == "get" else WRITES).items():
                responses.setdefault(
                    status,
                    {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": ref}}},
                )
            _headers(operation, responses)
            if inspect.cleandoc(operation.get("description", "")) in inherited:
                del operation["description"]
    for component in result["components"]["schemas"].values():
        if inspect.cleandoc(component.get("description", "")) in inherited:
            del component["description"]
    return result


def _headers(operation: dict, responses: dict) -> None:
    idempotent = any(p.get("name") == "Idempotency-Key" for p in operation.get("parameters", []))
    for status, response in responses.items():
        headers = {}
        if status == "401":
            headers.update(AUTHENTICATE_HEADER)
        if idempotent and (status[0] == "2" or status in ("409", "422")):
            headers.update(REPLAYED_HEADER)
        if idempotent and status == "409":
            headers.update(RETRY_AFTER_HEADER)
        if headers:
            response.setdefault("headers", {}).update(headers)


def _inherited_docs() -> set[str]:
    """The docstrings of the API's base classes, which drf-spectacular hands to every view and
    input without one of its own."""
    from loyalty.api.base import LoyaltyApi
    from loyalty.api.serializers import StrictInput

    return {inspect.cleandoc(cls.__doc__) for cls in (LoyaltyApi, StrictInput)}


def _page_envelope(operation: dict, responses: dict) -> None:
    """A list answered through `loyalty.api.base.paginated` (it takes a `cursor`) is a page:
    `{"next", "previous", "results": [...]}`, not a bare array."""
    names = {p.get("name") for p in operation.get("parameters", [])}
    ok = responses.get("200", {}).get("content", {}).get("application/json", {})
    schema = ok.get("schema", {})
    if "cursor" in names and schema.get("type") == "array":
        ok["schema"] = {
            "type": "object",
            "properties": {
                "next": {"type": "string", "format": "uri", "nullable": True},
                "previous": {"type": "string", "format": "uri", "nullable": True},
                "results": schema,
            },
            "required": ["next", "previous", "results"],
        }
