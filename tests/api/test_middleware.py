"""API requests skip the admin's middleware (sessions, CSRF, users, messages) and keep the
Prometheus metrics that describe them; the admin keeps everything."""

import pytest
from django.test import Client
from django_prometheus.middleware import Metrics

from .conftest import OWN

pytestmark = pytest.mark.django_db


def sample(metric, **labels) -> float:
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith(("_total", "_count")) and s.labels == labels:
                return s.value
    return 0.0


def test_api_requests_are_counted_and_timed_without_session_or_cookie(api, make_program):
    metrics = Metrics.get_instance()
    program = make_program(merchant_id=OWN)
    view = {"view": "events", "method": "POST"}
    before = sample(metrics.responses_by_status_view_method, status="201", **view)
    timed = sample(metrics.requests_latency_by_view_method, **view)
    body = {"program_id": str(program.pk), "member_id": "u_1", "type": "purchase",
            "amount": "5000", "currency": "XOF"}  # fmt: skip
    response = api("system").post("/api/v1/events", body)
    assert response.status_code == 201
    assert sample(metrics.responses_by_status_view_method, status="201", **view) == before + 1
    assert sample(metrics.requests_latency_by_view_method, **view) == timed + 1
    request = response.wsgi_request
    assert not hasattr(request, "session")  # SessionMiddleware did not run
    assert not hasattr(request, "_messages")  # nor MessageMiddleware
    assert "Set-Cookie" not in response
    assert response["X-Frame-Options"] == "DENY"  # security headers still set


def test_the_admin_keeps_sessions_csrf_and_messages(client):
    response = client.get("/admin/login/")
    assert response.status_code == 200
    assert "csrftoken" in response.cookies
    request = response.wsgi_request
    assert hasattr(request, "session")
    assert hasattr(request, "_messages")
    assert request.user.is_anonymous  # AuthenticationMiddleware ran


def test_each_status_is_counted_under_its_own_labels(api, own_program):
    metrics = Metrics.get_instance()
    view = {"view": "events", "method": "POST"}
    created = sample(metrics.responses_by_status_view_method, status="201", **view)
    refused = sample(metrics.responses_by_status_view_method, status="400", **view)
    timed = sample(metrics.requests_latency_by_view_method, **view)
    body = {"program_id": str(own_program.pk), "member_id": "u_1", "type": "purchase",
            "amount": "5000", "currency": "XOF"}  # fmt: skip
    client = api("system")
    for _ in range(2):
        assert client.post("/api/v1/events", body).status_code == 201
    assert client.post("/api/v1/events", {"type": "purchase"}).status_code == 400
    assert sample(metrics.responses_by_status_view_method, status="201", **view) == created + 2
    assert sample(metrics.responses_by_status_view_method, status="400", **view) == refused + 1
    assert sample(metrics.requests_latency_by_view_method, **view) == timed + 3


@pytest.mark.parametrize("debug", [True, False])
def test_a_path_no_api_route_matches_is_a_404_problem_with_debug_on_or_off(settings, debug):
    """`make run` serves with DEBUG on: an unknown API path is still the API's problem, not
    Django's HTML page."""
    settings.DEBUG = debug
    client = Client()
    for path in ["/api/v1/nothing", "/api/v1/programs/not-a-uuid"]:
        response = client.get(path)
        assert response.status_code == 404
        assert response["Content-Type"] == "application/problem+json"
        assert response.json()["code"] == "not_found"
    # Elsewhere Django's page stays.
    assert client.get("/no-such-page")["Content-Type"].startswith("text/html")
