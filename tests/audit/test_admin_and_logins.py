"""Admin logins, failed logins and logouts are audited; the audit admin is read-only for
everyone, superusers included, and usable by the `auditor` group."""

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEntry
from audit.services import audit_record
from loyalty.actors import Actor
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
PASSWORD = "pw-for-tests-1"


@pytest.fixture
def user_in():
    def make(role: str | None, superuser: bool = False):
        roles = [role] if role else []
        username = f"{role or 'root'}@molam.example"
        return make_user(username, *roles, superuser=superuser, password=PASSWORD)

    return make


def login(user) -> Client:
    client = Client(HTTP_USER_AGENT="Firefox/140", REMOTE_ADDR="10.1.2.3")
    response = client.post(reverse("admin:login"), {"username": user.username,
                                                    "password": PASSWORD})  # fmt: skip
    assert response.status_code == 302
    return client


def test_login_logout_and_failed_login_are_audited_without_the_username(user_in):
    user = user_in("auditor")
    client = login(user)
    client.post(reverse("admin:logout"))
    Client(REMOTE_ADDR="10.9.9.9").post(
        reverse("admin:login"), {"username": user.username, "password": "wrong"}
    )
    Client().post(reverse("admin:login"), {"username": "MyS3cretPass!", "password": "x"})
    rows = list(AuditEntry.objects.filter(entity_type="user").order_by("id"))
    assert [r.action for r in rows] == [
        "user.login", "user.logout", "user.login_failed", "user.login_failed",
    ]  # fmt: skip
    assert (rows[0].actor_id, rows[0].actor_role, rows[0].ip, rows[0].user_agent) == (
        f"user:{user.pk}", "auditor", "10.1.2.3", "Firefox/140",
    )  # fmt: skip
    assert (rows[2].entity_id, rows[2].ip) == (str(user.pk), "10.9.9.9")
    assert rows[2].changes["after"]["known_user"] is True
    assert rows[3].entity_id == "unknown"
    stored = str([r.changes for r in rows])
    assert user.username not in stored
    assert "MyS3cretPass!" not in stored  # a password typed as a username stays hidden
    assert rows[2].changes["after"]["username"].startswith("pii:")


def test_a_failed_login_behind_our_proxy_names_the_client(user_in, settings):
    """Brute force is traced to the client, not to our own proxy's address."""
    settings.LOYALTY_API_NUM_PROXIES = 1
    Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.9").post(
        reverse("admin:login"), {"username": "nobody", "password": "x"}
    )
    row = AuditEntry.objects.get(action="user.login_failed")
    assert row.ip == "203.0.113.9"


def test_audit_admin_is_read_only_even_for_superusers(user_in):
    entry = audit_record(actor=Actor(id="ops-1", role="ops_marketing"), action="program.update",
                         entity_type="program", entity_id="p1")  # fmt: skip
    client = login(user_in(None, superuser=True))
    change = reverse("admin:audit_auditentry_change", args=[entry.pk])
    assert client.get(reverse("admin:audit_auditentry_changelist")).status_code == 200
    page = client.get(change)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert client.get(reverse("admin:audit_auditentry_add")).status_code == 403
    assert client.post(change, {"action": "program.delete"}).status_code == 403
    delete = reverse("admin:audit_auditentry_delete", args=[entry.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    bulk = {"action": "delete_selected", "_selected_action": [entry.pk]}
    response = client.post(reverse("admin:audit_auditentry_changelist"), bulk)
    assert AuditEntry.objects.get(pk=entry.pk).action == "program.update"
    assert response.status_code in (200, 302)


def test_auditor_browses_filters_and_searches(user_in):
    audit_record(actor=Actor(id="ops-1", role="ops_marketing"), action="program.update",
                 entity_type="program", entity_id="p-search-me")  # fmt: skip
    audit_record(actor=Actor(id="fin-1", role="finance_ops"), action="balance.freeze",
                 entity_type="balance", entity_id="77")  # fmt: skip
    client = login(user_in("auditor"))
    url = reverse("admin:audit_auditentry_changelist")
    found = client.get(url, {"q": "p-search-me"})
    assert found.status_code == 200
    assert [e.entity_id for e in found.context["cl"].result_list] == ["p-search-me"]
    filtered = client.get(url, {"entity_type": "balance"})
    assert [e.action for e in filtered.context["cl"].result_list] == ["balance.freeze"]
    by_actor = client.get(url, {"q": "fin-1"})
    assert [e.entity_id for e in by_actor.context["cl"].result_list] == ["77"]


def test_roles_without_audit_view_cannot_open_it(user_in):
    client = login(user_in("ops_marketing"))
    assert client.get(reverse("admin:audit_auditentry_changelist")).status_code == 403


def _user_form(client, user) -> dict:
    """The admin's change form of `user` as the page fills it in."""
    form = client.get(reverse("admin:auth_user_change", args=[user.pk])).context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form.initial.get(name, field.initial)
        if value is None or name in ("password", "last_login", "date_joined"):
            continue
        if isinstance(value, list | tuple) or hasattr(value, "all"):
            data[name] = [
                getattr(v, "pk", v) for v in (value.all() if hasattr(value, "all") else value)
            ]
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        else:
            data[name] = value
    data.update({"date_joined_0": "2026-11-28", "date_joined_1": "10:00:00"})
    return data


def test_a_staff_users_roles_changed_in_the_admin_are_audited(user_in):
    """Groups are roles (who may adjust, change budgets, approve): giving one is a write."""
    from django.contrib.auth.models import Group

    root = user_in(None, superuser=True)
    bob = make_user("bob@molam.example", "ops_marketing")
    client = login(root)
    data = _user_form(client, bob)
    data["groups"] = [Group.objects.get(name="finance_ops").pk]
    response = client.post(reverse("admin:auth_user_change", args=[bob.pk]), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert list(bob.groups.values_list("name", flat=True)) == ["finance_ops"]
    entry = AuditEntry.objects.get(action="user.update", entity_id=str(bob.pk))
    assert entry.changes["before"]["groups"] == ["ops_marketing"]
    assert entry.changes["after"]["groups"] == ["finance_ops"]
    assert "bob@molam.example" not in str(entry.changes)  # the username is fingerprinted
    assert (entry.actor_id, entry.ip) == (f"user:{root.pk}", "10.1.2.3")

    password = reverse("admin:auth_user_password_change", args=[bob.pk])
    changed = client.post(password, {"password1": "a-new-pw-2026!", "password2": "a-new-pw-2026!",
                                     "usable_password": "true"})  # fmt: skip
    assert changed.status_code == 302
    assert AuditEntry.objects.filter(action="user.password_change", entity_id=str(bob.pk)).exists()


def test_a_staff_users_email_changed_in_the_admin_is_audited_not_in_clear(user_in):
    """Password resets go to the e-mail: changing an approver's is a write the trail keeps,
    as a fingerprint (the address itself is PII)."""
    root = user_in(None, superuser=True)
    bob = make_user("bob@molam.example", "finance_ops")
    client = login(root)
    data = _user_form(client, bob)
    data["email"] = "eve@elsewhere.example"
    response = client.post(reverse("admin:auth_user_change", args=[bob.pk]), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    entry = AuditEntry.objects.get(action="user.update", entity_id=str(bob.pk))
    before, after = entry.changes["before"], entry.changes["after"]
    assert before["email"] != after["email"]
    assert after["email"] is not None
    assert "eve@elsewhere.example" not in str(entry.changes)
    assert before["groups"] == after["groups"] == ["finance_ops"]


def test_a_merchant_created_and_renamed_in_the_admin_is_audited(user_in):
    from loyalty.models import Merchant

    client = login(user_in(None, superuser=True))
    add = client.post(reverse("admin:loyalty_merchant_add"), {"id": "m_new", "name": "Shop"})
    assert add.status_code == 302
    change = reverse("admin:loyalty_merchant_change", args=["m_new"])
    assert client.post(change, {"name": "Shop & Co"}).status_code == 302
    assert Merchant.objects.get(pk="m_new").name == "Shop & Co"
    created, renamed = AuditEntry.objects.filter(entity_type="merchant").order_by("id")
    assert (created.action, created.changes["after"]) == (
        "merchant.create", {"id": "m_new", "name": "Shop"},
    )  # fmt: skip
    assert (renamed.action, renamed.changes) == (
        "merchant.update", {"before": {"name": "Shop"}, "after": {"name": "Shop & Co"}},
    )  # fmt: skip


def test_deleting_a_staff_user_or_a_role_group_is_audited(user_in):
    """Deleting the finance_ops group takes the role from every member: a write like any."""
    from django.contrib.auth.models import Group

    client = login(user_in(None, superuser=True))
    bob = make_user("bob@molam.example", "finance_ops")
    group = Group.objects.get(name="finance_ops")
    delete = reverse("admin:auth_group_delete", args=[group.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 302
    gone = AuditEntry.objects.get(action="group.delete", entity_id=str(group.pk))
    assert gone.changes["before"]["name"] == "finance_ops"
    assert gone.changes["before"]["members"] == 1
    assert "loyalty.view_ledgerentry" in gone.changes["before"]["permissions"]

    bob.groups.add(Group.objects.get(name="ops_marketing"))
    assert (
        client.post(reverse("admin:auth_user_delete", args=[bob.pk]), {"post": "yes"}).status_code
        == 302
    )
    entry = AuditEntry.objects.get(action="user.delete", entity_id=str(bob.pk))
    assert entry.changes["before"]["groups"] == ["ops_marketing"]


def test_saving_a_staff_user_unchanged_in_the_admin_writes_no_entry(user_in):
    root = user_in(None, superuser=True)
    bob = make_user("bob@molam.example", "finance_ops")
    client = login(root)
    data = _user_form(client, bob)
    data.update(
        {"date_joined_0": bob.date_joined.strftime("%Y-%m-%d"),
         "date_joined_1": bob.date_joined.strftime("%H:%M:%S")}
    )  # fmt: skip
    response = client.post(reverse("admin:auth_user_change", args=[bob.pk]), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert not AuditEntry.objects.filter(action="user.update", entity_id=str(bob.pk)).exists()
