"""Refuses oversized API requests before anything reads them; spares API requests the
middleware only the admin needs."""

from timeit import default_timer

from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.exceptions import MiddlewareNotUsed
from django.http import HttpResponseBadRequest, JsonResponse
from django_prometheus.middleware import PrometheusAfterMiddleware, PrometheusBeforeMiddleware

from .problems import PROBLEM_CONTENT_TYPE, not_found_view, problem


class RequestSizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            if "HTTP_TRANSFER_ENCODING" in request.META and not request.META.get("CONTENT_LENGTH"):
                # A chunked body: Django reads no body without a length, so the request would
                # be taken as empty (and past the size limit unchecked).
                body = problem(
                    status_code=411,
                    code="length_required",
                    title="Length required",
                    detail="Send the body with a Content-Length header, not chunked.",
                    instance=request.path,
                )
                return JsonResponse(body, status=411, content_type=PROBLEM_CONTENT_TYPE)
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


class NulInUrlRefused:
    """A NUL character in the path or a query parameter of a console page is a 400: PostgreSQL
    refuses it in a text value, and the admin's filters and object URLs would pass it to a
    query and answer 500. (The API checks its own parameters.)"""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        query = request.META.get("QUERY_STRING", "")
        if not is_api(request) and ("\x00" in request.path or "%00" in query):
            return HttpResponseBadRequest("NUL characters are not allowed in URLs.")
        return self.get_response(request)


class ApiNotFoundAsProblem:
    """With DEBUG on, a path no route matches gets Django's technical 404 page, which is HTML
    (handler404 only answers with DEBUG off): under /api/ it is the API's 404 problem, as in
    production. With DEBUG off it takes itself out of the chain."""

    def __init__(self, get_response):
        if not settings.DEBUG:
            raise MiddlewareNotUsed
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            response.status_code == 404
            and request.path.startswith("/api/")
            and response.get("Content-Type", "").startswith("text/html")
        ):
            return not_found_view(request)
        return response


# --- what the API's requests skip --------------------------------------------------------------
# Every request of an integration goes through /api/v1/ with a bearer credential: no session,
# cookie, CSRF token, Django user or flash message is ever read there, and those middleware
# cost ~40 us a request; django_prometheus's ten metrics another ~70 us. The admin, the docs
# and the ops endpoints keep the full stack. (The admin's system checks want these classes in
# MIDDLEWARE: the subclasses below are the same classes.) CSRF stays whole for
# `check --deploy`: DRF's views are csrf_exempt, so it costs the API next to nothing.
API_PREFIX = "/api/v1/"


def is_api(request) -> bool:
    return request.path_info.startswith(API_PREFIX)


class _OutsideApi:
    """Mixin: the middleware runs for every request except the API's."""

    def __call__(self, request):
        if is_api(request):
            return self.get_response(request)
        return super().__call__(request)


class SessionOutsideApi(_OutsideApi, SessionMiddleware):
    pass


class AuthenticationOutsideApi(_OutsideApi, AuthenticationMiddleware):
    pass


class MessagesOutsideApi(_OutsideApi, MessageMiddleware):
    pass


class PrometheusBeforeOutsideApi(_OutsideApi, PrometheusBeforeMiddleware):
    pass


class PrometheusAfter(PrometheusAfterMiddleware):
    """django_prometheus's metrics; for API requests only the two that describe them
    (`django_http_responses_total_by_status_view_method` and
    `django_http_requests_latency_seconds_by_view_method`), not the eight others (totals by
    method, transport, charset, body sizes...)."""

    def __init__(self, get_response):
        super().__init__(get_response)
        self._api_children: dict[tuple, tuple] = {}

    def __call__(self, request):
        if not is_api(request):
            return super().__call__(request)
        start = default_timer()
        response = self.get_response(request)
        counter, latency = self._children(response.status_code, request)
        counter.inc()
        latency.observe(default_timer() - start)
        return response

    def _children(self, status: int, request):
        """The two metrics' children for this answer: `labels()` validates and looks its
        labels up under a lock on every call; an API has a few dozen such combinations."""
        view, method = self._get_view_name(request), self._method(request)
        key = (status, view, method)
        children = self._api_children.get(key)
        if children is None:
            metrics = self.metrics
            children = (
                metrics.responses_by_status_view_method.labels(
                    status=str(status), view=view, method=method
                ),
                metrics.requests_latency_by_view_method.labels(view=view, method=method),
            )
            self._api_children[key] = children
        return children

    def process_view(self, request, view_func, *view_args, **view_kwargs):
        if not is_api(request):
            return super().process_view(request, view_func, *view_args, **view_kwargs)
        return None

    def process_template_response(self, request, response):
        if not is_api(request):
            return super().process_template_response(request, response)
        return response

    def process_exception(self, request, exception):
        if not is_api(request):
            return super().process_exception(request, exception)
        return None
