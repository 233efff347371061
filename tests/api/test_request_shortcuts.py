"""The short ways of the API's request handling answer exactly what the long ways would:
content negotiation and parser choice, the shared DRF components of the views and their
cached `Allow` header."""

import pytest
from rest_framework.permissions import IsAdminUser, IsAuthenticated

from access.authentication import JWTAuthentication
from loyalty.api.base import LoyaltyApi
from loyalty.api.events import EventsApi
from loyalty.api.programs import ProgramsApi

from .test_problems import assert_problem

pytestmark = pytest.mark.django_db


def purchase(program) -> dict:
    return {"program_id": str(program.pk), "member_id": "u_1", "type": "purchase",
            "amount": "5000", "currency": "XOF"}  # fmt: skip


def test_a_query_string_without_format_still_answers_json(api, own_program):
    response = api("system").post("/api/v1/events?source=pos", purchase(own_program))
    assert response.status_code == 201, response.content
    assert response["Content-Type"] == "application/json"


def test_the_format_parameter_is_still_honoured(api, own_program):
    client = api("system")
    assert client.post("/api/v1/events?format=json", purchase(own_program)).status_code == 201
    # No renderer for it: DRF's own negotiation answers 404, as it always did.
    assert_problem(
        client.post("/api/v1/events?format=xml", purchase(own_program)), 404, "not_found"
    )


def test_json_with_parameters_goes_through_drfs_media_type_matching(api, own_program):
    client = api("system")
    response = client.post(
        "/api/v1/events", purchase(own_program), content_type="application/json; charset=utf-8"
    )
    assert response.status_code == 201, response.content
    response = client.post("/api/v1/events", b"{}", content_type="text/plain")
    assert_problem(response, 415, "unsupported_media_type")


def test_a_byte_order_mark_is_refused_with_jsons_own_message(api, own_program):
    response = api("system").post("/api/v1/events", "\ufeff{}".encode())
    body = assert_problem(response, 400, "malformed_request")
    assert "BOM" in body["detail"]


def test_views_share_stateless_components_but_not_their_lists():
    first, second = EventsApi(), EventsApi()
    assert first.get_authenticators() == second.get_authenticators()
    assert first.get_authenticators() is not second.get_authenticators()
    assert isinstance(first.get_authenticators()[0], JWTAuthentication)
    assert first.get_parsers()[0] is second.get_parsers()[0]
    assert first.get_renderers()[0] is second.get_renderers()[0]
    assert first.get_permissions()[0] is second.get_permissions()[0]


def test_composed_permissions_are_shared_and_unhashable_entries_built_per_request():
    class Composed(LoyaltyApi):
        permission_classes = [IsAuthenticated | IsAdminUser]

    assert Composed().get_permissions()[0] is Composed().get_permissions()[0]

    class Factory:  # a permission "class" that cannot be a cache key
        __hash__ = None

        def __call__(self):
            return IsAuthenticated()

    class Unhashable(LoyaltyApi):
        permission_classes = [Factory()]

    first, second = Unhashable().get_permissions(), Unhashable().get_permissions()
    assert isinstance(first[0], IsAuthenticated)
    assert first[0] is not second[0]


def test_allow_is_the_views_methods_on_every_answer(api, own_program):
    client = api("system")
    for _ in range(2):  # computed, then cached
        assert client.get("/api/v1/programs")["Allow"] == "GET, POST, HEAD"
        assert client.post("/api/v1/events", purchase(own_program))["Allow"] == "POST"
    # DRF's own computation, for comparison.
    view = ProgramsApi()
    view.head = view.get  # what View.setup does for a view with `get`
    assert ", ".join(view.allowed_methods) == "GET, POST, HEAD"


def test_allow_follows_what_as_view_sets_and_is_a_copy():
    class Both(LoyaltyApi):
        def get(self, request):
            pass

        def post(self, request):
            pass

    full = Both()
    full.head = full.get  # what View.setup does
    only_post = Both(http_method_names=["post", "options"])
    assert full.default_response_headers == {"Allow": "GET, POST, HEAD"}
    assert only_post.default_response_headers == {"Allow": "POST, OPTIONS"}
    full.default_response_headers["Allow"] = "changed"
    assert full.default_response_headers == {"Allow": "GET, POST, HEAD"}
