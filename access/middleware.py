"""Refuses oversized API requests before anything reads them."""

from django.conf import settings
from django.http import JsonResponse

from .problems import PROBLEM_CONTENT_TYPE, problem


class RequestSizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            limit = settings.LOYALTY_API_MAX_BODY_BYTES
            if length > limit:
                body = problem(
                    status_code=413,
                    code="payload_too_large",
                    title="Payload too large",
                    detail=f"The request body exceeds {limit} bytes.",
                    instance=request.path,
                )
                return JsonResponse(body, status=413, content_type=PROBLEM_CONTENT_TYPE)
        return self.get_response(request)
