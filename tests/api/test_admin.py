"""API keys are created in the admin (shown once, stored hashed), every change to one audited
(never its secret); idempotency records are read-only there."""

import json
import re
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from access.models import MerchantAPIKey
from access.services import apikey_create, apikey_update
from audit.models import AuditEntry
from loyalty.actors import Actor
from loyalty.errors import ValidationFailed

from .conftest import OTHER, OWN, ApiClient

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
    # Django's change log ("Recent actions") would keep the pk, which holds the hash.
    from django.contrib.admin.models import LogEntry

    assert not LogEntry.objects.filter(object_id__contains=api_key.hashed_key).exists()


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


# --- API keys: every change audited, the secret never ------------------------------------


def _new_key(client, **headers) -> tuple[MerchantAPIKey, str]:
    data = {"name": "pos", "merchant": OWN, "permissions": '["members:read", "audit:read"]',
            "expiry_date": ""}  # fmt: skip
    response = client.post("/admin/access/merchantapikey/add/", data, follow=True, **headers)
    assert response.status_code == 200
    message = str(next(iter(response.context["messages"])))
    key = re.search(r"is: (\S+)\. Please store", message)[1]
    return MerchantAPIKey.objects.get(prefix=key.split(".")[0]), key


def _assert_no_secret(entry: AuditEntry, api_key: MerchantAPIKey, key: str) -> None:
    stored = json.dumps(entry.changes)
    for secret in (key, key.split(".")[1], api_key.hashed_key, api_key.id):
        assert secret not in stored


def test_admin_key_creation_is_audited_without_the_secret(admin_client, own_program):
    client, user = admin_client
    api_key, key = _new_key(client, HTTP_USER_AGENT="Firefox/140", REMOTE_ADDR="10.1.2.3")
    entry = AuditEntry.objects.get(entity_type="api_key")
    assert (entry.action, entry.entity_id, entry.merchant_id) == (
        "api_key.create", api_key.prefix, OWN
    )  # fmt: skip
    assert (entry.actor_id, entry.actor_role, entry.ip, entry.user_agent) == (
        f"user:{user.pk}", "superuser", "10.1.2.3", "Firefox/140"
    )  # fmt: skip
    assert entry.changes["after"] == {
        "prefix": api_key.prefix, "name": "pos", "merchant_id": OWN,
        "permissions": ["audit:read", "members:read"], "expiry_date": None, "revoked": False,
        "created_by": str(user.pk),
    }  # fmt: skip
    _assert_no_secret(entry, api_key, key)


def test_admin_key_revocation_is_audited(admin_client, own_program):
    client, user = admin_client
    api_key, key = _new_key(client)
    url = f"/admin/access/merchantapikey/{api_key.pk}/change/"
    response = client.post(url, {"name": "pos", "revoked": "on", "expiry_date": ""})
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked
    entry = AuditEntry.objects.get(action="api_key.revoke")
    assert (entry.entity_type, entry.entity_id, entry.actor_id) == (
        "api_key", api_key.prefix, f"user:{user.pk}"
    )  # fmt: skip
    assert entry.changes == {"before": {"revoked": False}, "after": {"revoked": True}}
    _assert_no_secret(entry, api_key, key)
    assert ApiClient(f"Api-Key {key}").get("/api/v1/programs").status_code == 401


def test_admin_key_rename_is_audited_and_an_unchanged_save_is_not(admin_client, own_program):
    client, _ = admin_client
    api_key, _ = _new_key(client)
    url = f"/admin/access/merchantapikey/{api_key.pk}/change/"
    assert client.post(url, {"name": "pos", "expiry_date": ""}).status_code == 302
    assert not AuditEntry.objects.filter(action="api_key.update").exists()
    assert client.post(url, {"name": "checkout", "expiry_date": ""}).status_code == 302
    entry = AuditEntry.objects.get(action="api_key.update")
    assert entry.changes == {"before": {"name": "pos"}, "after": {"name": "checkout"}}


def test_admin_key_merchant_and_permissions_cannot_change(admin_client, own_program):
    """A key stays bound to its merchant, with the permissions it was created with."""
    client, _ = admin_client
    api_key, _ = _new_key(client)
    url = f"/admin/access/merchantapikey/{api_key.pk}/change/"
    form = client.get(url).context["adminform"].form
    assert "merchant" not in form.fields
    assert "permissions" not in form.fields
    response = client.post(url, {"name": "pos", "expiry_date": "", "merchant": OTHER,
                                 "permissions": '["events:write", "webhooks:write"]'})  # fmt: skip
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert (api_key.merchant_id, api_key.permissions) == (OWN, ["audit:read", "members:read"])
    assert not AuditEntry.objects.filter(action="api_key.update").exists()


def test_admin_keys_are_revoked_never_deleted(admin_client, own_program):
    client, _ = admin_client
    api_key, _ = _new_key(client)
    response = client.post(f"/admin/access/merchantapikey/{api_key.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert MerchantAPIKey.objects.filter(pk=api_key.pk).exists()


def test_the_service_audits_a_permission_change_before_and_after(own_program):
    actor = Actor(id="ops-1", role="ops_marketing")
    api_key, key = apikey_create(merchant_id=OWN, name="pos", permissions=["members:read"],
                                 actor=actor)  # fmt: skip
    apikey_update(key_id=api_key.pk, actor=actor,
                  changes={"permissions": ["members:read", "events:write"]})  # fmt: skip
    entry = AuditEntry.objects.get(action="api_key.update")
    assert entry.changes == {
        "before": {"permissions": ["members:read"]},
        "after": {"permissions": ["events:write", "members:read"]},
    }
    _assert_no_secret(entry, api_key, key)


def test_the_service_refuses_to_rebind_or_unrevoke_a_key(own_program):
    actor = Actor(id="ops-1", role="ops_marketing")
    api_key, _ = apikey_create(merchant_id=OWN, name="pos", permissions=[], actor=actor)
    with pytest.raises(ValidationFailed):
        apikey_update(key_id=api_key.pk, changes={"merchant_id": OTHER}, actor=actor)
    apikey_update(key_id=api_key.pk, changes={"revoked": True}, actor=actor)
    with pytest.raises(ValidationFailed):
        apikey_update(key_id=api_key.pk, changes={"revoked": False}, actor=actor)
    with pytest.raises(ValidationFailed):
        apikey_update(key_id=api_key.pk, changes={"permissions": ["approvals:decide"]},
                      actor=actor)  # fmt: skip
    api_key.refresh_from_db()
    assert (api_key.merchant_id, api_key.revoked) == (OWN, True)
    assert list(AuditEntry.objects.filter(entity_type="api_key").values_list("action", flat=True)
                .order_by("id")) == ["api_key.create", "api_key.revoke"]  # fmt: skip


def test_apikey_create_command_is_audited_without_the_secret():
    out = StringIO()
    call_command("apikey_create", "--merchant", OWN, "--name", "pos",
                 "--permission", "members:read", stdout=out, stderr=StringIO())  # fmt: skip
    key = out.getvalue().strip()
    api_key = MerchantAPIKey.objects.get(prefix=key.split(".")[0])
    entry = AuditEntry.objects.get(entity_type="api_key")
    assert (entry.action, entry.entity_id, entry.merchant_id, entry.actor_id) == (
        "api_key.create", api_key.prefix, OWN, "system:apikey_create"
    )  # fmt: skip
    assert entry.changes["after"]["permissions"] == ["members:read"]
    _assert_no_secret(entry, api_key, key)


def test_only_merchant_keys_are_made_in_the_admin():
    """The library's own key model is never read by the API: its stock admin would make keys
    that are refused everywhere, with no audit entry."""
    from django.contrib import admin
    from rest_framework_api_key.models import APIKey

    assert not admin.site.is_registered(APIKey)
    assert admin.site.is_registered(MerchantAPIKey)
