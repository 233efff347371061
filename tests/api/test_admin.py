"""API keys are created in the admin (shown once, stored hashed); idempotency records are
read-only there."""

import re

import pytest
from django.contrib.auth.models import User

from access.models import MerchantAPIKey

from .conftest import OWN, ApiClient

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = User.objects.create_superuser("root", "root@example.com", "pw-123456789")
    client.force_login(user)
    return client, user


def test_admin_creates_a_key_shown_once(admin_client, funded):
    client, user = admin_client
    response = client.post(
        "/admin/access/merchantapikey/add/",
        {"name": "pos", "merchant": OWN, "permissions": '["members:read"]', "expiry_date": ""},
        follow=True,
    )
    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    key = re.search(r"is: (\S+)\. Please store", messages[0]).group(1)
    api_key = MerchantAPIKey.objects.get()
    assert (api_key.merchant_id, api_key.permissions, api_key.created_by) == (
        OWN, ["members:read"], str(user.pk)
    )  # fmt: skip
    assert key not in (api_key.hashed_key, api_key.id)
    reply = ApiClient(f"Api-Key {key}").get(f"/api/v1/programs/{funded.pk}/members/u_1")
    assert reply.status_code == 200


def test_admin_refuses_a_permission_a_key_cannot_hold(admin_client):
    client, _ = admin_client
    response = client.post(
        "/admin/access/merchantapikey/add/",
        {"name": "bad", "merchant": OWN, "permissions": '["approvals:decide"]'},
    )
    assert response.status_code == 200  # the form again, with the error
    assert b"Not grantable to an API key" in response.content
    assert not MerchantAPIKey.objects.exists()


def test_idempotency_records_are_read_only(admin_client):
    client, _ = admin_client
    assert client.get("/admin/access/idempotencyrecord/").status_code == 200
    assert client.get("/admin/access/idempotencyrecord/add/").status_code == 403
