"""RFC 9457 problem details: the one exception handler of the API.

Every error answers `application/problem+json` with `type`, `title`, `status`, `detail`,
`instance` and a stable `code`; validation failures add per-field `errors`. Domain errors
(`loyalty.errors.DomainError`) carry their own code and status; their context becomes
extension members. Unknown exceptions are bugs: they propagate (500, logged).
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DataError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from loyalty.errors import FIELD_ERRORS_DETAIL, DomainError, ValidationFailed

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://docs.molam.io/loyalty/problems/"

# DRF exceptions -> (stable code, title).
DRF_CODES: dict[type, tuple[str, str]] = {
    exceptions.NotAuthenticated: ("not_authenticated", "Authentication required"),
    exceptions.AuthenticationFailed: ("authentication_failed", "Authentication failed"),
    exceptions.PermissionDenied: ("permission_denied", "Permission denied"),
    exceptions.NotFound: ("not_found", "Not found"),
    exceptions.MethodNotAllowed: ("method_not_allowed", "Method not allowed"),
    exceptions.NotAcceptable: ("not_acceptable", "Not acceptable"),
    exceptions.UnsupportedMediaType: ("unsupported_media_type", "Unsupported media type"),
    exceptions.ParseError: ("malformed_request", "Malformed request body"),
    exceptions.Throttled: ("rate_limited", "Too many requests"),
}

# Context values that are safe to echo back as problem extension members.
RESERVED = {"type", "title", "status", "detail", "instance", "code", "errors"}


def problem(
    *,
    status_code: int,
    code: str,
    title: str,
    detail: str | None = None,
    instance: str | None = None,
    errors: dict | None = None,
    extra: dict | None = None,
) -> dict:
    body = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status_code,
        "detail": detail or title,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    for key, value in (extra or {}).items():
        if key not in RESERVED:
            body[key] = value if isinstance(value, str | int | bool | list | dict) else str(value)
    return body


def problem_response(body: dict, *, headers: dict | None = None) -> Response:
    return Response(body, status=body["status"], content_type=PROBLEM_CONTENT_TYPE, headers=headers)


def _field_errors(detail) -> dict | list:
    """DRF's error detail as plain lists of messages per field (nested where the input is)."""
    if isinstance(detail, dict):
        return {str(k): _field_errors(v) for k, v in detail.items()}
    if isinstance(detail, list):
        if all(isinstance(d, str) for d in detail):
            return [str(d) for d in detail]
        return [_field_errors(d) for d in detail]
    return [str(detail)]


def problem_exception_handler(exc, context) -> Response | None:
    request = context.get("request")
    instance = request.path if request is not None else None

    if isinstance(exc, ValidationFailed):
        body = problem(
            status_code=400,
            code=exc.code,
            title=exc.title,
            detail=exc.detail,
            instance=instance,
            errors=_field_errors(exc.errors),
            extra=exc.context,
        )
        return problem_response(body)
    if isinstance(exc, DomainError):
        body = problem(
            status_code=exc.http_status,
            code=exc.code,
            title=exc.title,
            detail=exc.detail,
            instance=instance,
            extra=exc.context,
        )
        # A repeat of a request still running: tell the client when to try again.
        headers = {"Retry-After": "1"} if exc.code == "idempotency_in_progress" else None
        return problem_response(body, headers=headers)
    if isinstance(exc, exceptions.ValidationError):
        errors = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        body = problem(
            status_code=400,
            code="validation_error",
            title="Invalid input",
            detail=FIELD_ERRORS_DETAIL,
            instance=instance,
            errors=_field_errors(errors),
        )
        return problem_response(body)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DataError | UnicodeEncodeError):
        # A value the database cannot store (out of range, a NUL, a lone surrogate, which
        # psycopg cannot encode) that validation let through: bad input, not a server fault.
        # Logged, because validation should catch it.
        logger.warning("%s on %s: %s", type(exc).__name__, instance, exc)
        body = problem(
            status_code=400,
            code="invalid_value",
            title="Invalid input",
            detail="A value is out of the range this API accepts.",
            instance=instance,
        )
        return problem_response(body)
    if isinstance(exc, exceptions.APIException):
        code, title = next(
            (v for k, v in DRF_CODES.items() if isinstance(exc, k)),
            (getattr(exc, "default_code", "error"), "Error"),
        )
        if isinstance(exc, exceptions.AuthenticationFailed) and exc.get_codes() in (
            "token_expired",
            "invalid_token",
        ):
            code = exc.get_codes()
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        body = problem(
            status_code=exc.status_code, code=code, title=title, detail=detail, instance=instance
        )
        return problem_response(body, headers=headers)
    return None


def _json_problem(request, status_code: int, code: str, title: str) -> JsonResponse:
    body = problem(status_code=status_code, code=code, title=title, instance=request.path)
    return JsonResponse(body, status=status_code, content_type=PROBLEM_CONTENT_TYPE)


def not_found_view(request, exception=None):
    """handler404: problem details under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return _json_problem(request, status.HTTP_404_NOT_FOUND, "not_found", "Not found")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def server_error_view(request):
    if request.path.startswith("/api/"):
        return _json_problem(request, 500, "internal_error", "Internal server error")
    from django.views.defaults import server_error

    return server_error(request)
