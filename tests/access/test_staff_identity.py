"""The link from a staff user to their Molam ID subject: rules, audit, the admin page, and
the actor id it gives the user in the admin and the login audit."""

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.test import Client, RequestFactory
from django.urls import reverse

from access.models import StaffIdentity
from access.selectors import staff_actor, staff_actor_id
from access.services import staff_identity_link
from audit.models import AuditEntry
from loyalty.actors import Actor, system_actor
from loyalty.admin import request_actor
from loyalty.errors import ValidationFailed
from tests.conftest import logged_in, make_user

pytestmark = pytest.mark.django_db
ADD = "admin:access_staffidentity_add"
LIST = "admin:access_staffidentity_changelist"
SYSTEM = system_actor("test")


def test_link_is_audited_and_gives_the_actor_id():
    user = make_user("alice_admin", "finance_ops")
    assert staff_actor_id(user) == f"user:{user.pk}"
    link = staff_identity_link(user_id=user.pk, molam_subject="alice", actor=SYSTEM)
    assert (link.user_id, link.molam_subject) == (user.pk, "alice")
    entry = AuditEntry.objects.get(action="staff_identity.link")
    assert (entry.entity_type, entry.entity_id, entry.actor_id) == (
        "staff_identity", str(user.pk), "system:test",
    )  # fmt: skip
    assert entry.changes["after"] == {"user_id": user.pk, "molam_subject": "alice"}
    user = get_user_model().objects.get(pk=user.pk)
    actor = staff_actor(user)
    assert (actor.id, actor.role) == ("alice", "finance_ops")


def test_subject_is_unique_and_a_user_has_one_link():
    alice, other = make_user("alice_admin"), make_user("other")
    staff_identity_link(user_id=alice.pk, molam_subject="alice", actor=SYSTEM)
    with pytest.raises(ValidationFailed) as taken:
        staff_identity_link(user_id=other.pk, molam_subject="alice", actor=SYSTEM)
    assert "molam_subject" in taken.value.errors
    with pytest.raises(ValidationFailed) as linked:
        staff_identity_link(user_id=alice.pk, molam_subject="alice-2", actor=SYSTEM)
    assert "user" in linked.value.errors
    # The database refuses too, whatever the caller.
    with pytest.raises(IntegrityError), transaction.atomic():
        StaffIdentity.objects.create(user=other, molam_subject="alice")
    assert StaffIdentity.objects.count() == 1
    assert AuditEntry.objects.filter(action="staff_identity.link").count() == 1


@pytest.mark.parametrize(
    "subject",
    ["", "user:7", "system", "system:tiers", "anonymous", "apikey:ab12", " alice", "x" * 129],
)
def test_empty_reserved_or_malformed_subjects_are_refused(subject):
    user = make_user("someone")
    with pytest.raises(ValidationFailed):
        staff_identity_link(user_id=user.pk, molam_subject=subject, actor=SYSTEM)
    assert not StaffIdentity.objects.exists()


@pytest.mark.parametrize(
    "subject", ["", "user:7", "system", "system:tiers", "anonymous", "apikey:ab12"]
)
def test_database_refuses_empty_and_reserved_subjects(subject):
    user = make_user("someone")
    with pytest.raises(IntegrityError), transaction.atomic():
        StaffIdentity.objects.create(user=user, molam_subject=subject)


def test_nobody_links_themselves():
    user = make_user("mallory", superuser=True)
    with pytest.raises(ValidationFailed):
        staff_identity_link(
            user_id=user.pk, molam_subject="bob", actor=Actor(id=f"user:{user.pk}", role="x")
        )
    assert not StaffIdentity.objects.exists()


def test_a_linked_user_cannot_be_deleted():
    user = make_user("alice_admin")
    staff_identity_link(user_id=user.pk, molam_subject="alice", actor=SYSTEM)
    with pytest.raises(ProtectedError):
        user.delete()


def test_unlinked_staff_keep_their_user_id_in_the_admin_and_the_login_audit():
    user = make_user("frank", "ops_marketing")
    request = RequestFactory().get("/admin/", REMOTE_ADDR="10.1.2.3")
    request.user = user
    actor = request_actor(request)
    assert (actor.id, actor.role, actor.ip) == (f"user:{user.pk}", "ops_marketing", "10.1.2.3")
    Client().login(username="frank", password="pw")
    assert AuditEntry.objects.get(action="user.login").actor_id == f"user:{user.pk}"


def test_linked_staff_act_and_log_in_under_their_subject():
    user = make_user("alice_admin", "ops_marketing")
    staff_identity_link(user_id=user.pk, molam_subject="alice", actor=SYSTEM)
    request = RequestFactory().get("/admin/")
    request.user = get_user_model().objects.get(pk=user.pk)
    assert request_actor(request).id == "alice"
    client = Client()
    assert client.login(username="alice_admin", password="pw")
    login = AuditEntry.objects.get(action="user.login")
    assert (login.actor_id, login.entity_id) == ("alice", str(user.pk))
    client.logout()
    assert AuditEntry.objects.get(action="user.logout").actor_id == "alice"


def test_superuser_links_a_staff_user_in_the_admin():
    root = make_user("root", superuser=True)
    alice = make_user("alice_admin", "finance_ops")
    linked = make_user("linked")
    staff_identity_link(user_id=linked.pk, molam_subject="linked-sub", actor=SYSTEM)
    client = logged_in(root)

    page = client.get(reverse(ADD))
    assert page.status_code == 200
    choices = {c.value for c, _ in page.context["adminform"].form.fields["user"].choices if c}
    # Staff not yet linked, never oneself.
    assert alice.pk in choices
    assert root.pk not in choices
    assert linked.pk not in choices

    mine = client.post(reverse(ADD), {"user": root.pk, "molam_subject": "root-sub"})
    assert mine.status_code == 200  # the form again: not a valid choice
    taken = client.post(reverse(ADD), {"user": alice.pk, "molam_subject": "linked-sub"})
    assert taken.status_code == 200
    reserved = client.post(reverse(ADD), {"user": alice.pk, "molam_subject": "user:1"})
    assert reserved.status_code == 200
    assert StaffIdentity.objects.count() == 1

    ok = client.post(reverse(ADD), {"user": alice.pk, "molam_subject": "alice"})
    assert ok.status_code == 302
    link = StaffIdentity.objects.get(user=alice)
    assert link.molam_subject == "alice"
    entry = AuditEntry.objects.filter(action="staff_identity.link").latest("id")
    assert (entry.actor_id, entry.actor_role, entry.entity_id) == (
        f"user:{root.pk}", "superuser", str(alice.pk),
    )  # fmt: skip

    listing = client.get(reverse(LIST))
    assert listing.status_code == 200
    assert b"alice" in listing.content
    # A link is never edited nor deleted.
    change = reverse("admin:access_staffidentity_change", args=[link.pk])
    assert client.get(change).status_code == 200  # read-only view
    client.post(change, {"user": alice.pk, "molam_subject": "mallory"})
    link.refresh_from_db()
    assert link.molam_subject == "alice"
    delete = reverse("admin:access_staffidentity_delete", args=[link.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert StaffIdentity.objects.filter(pk=link.pk).exists()


@pytest.mark.parametrize("role", ["finance_ops", "ops_marketing", "auditor", "merchant_admin"])
def test_staff_roles_cannot_link_identities(role):
    client = logged_in(make_user("someone", role))
    assert client.get(reverse(ADD)).status_code == 403
    other = make_user("other")
    assert client.post(reverse(ADD), {"user": other.pk, "molam_subject": "x"}).status_code == 403
    assert not StaffIdentity.objects.exists()


def test_a_staff_actor_behind_our_proxy_is_the_client_not_the_proxy(settings, rf):
    """The admin's audit rows name the client as the API's do (access.caller.client_ip)."""
    settings.LOYALTY_API_NUM_PROXIES = 1
    request = rf.get(
        "/admin/",
        REMOTE_ADDR="10.0.0.2",
        HTTP_X_FORWARDED_FOR="198.51.100.7",
        HTTP_USER_AGENT="x" * 1000,
    )
    actor = staff_actor(make_user("behind_proxy", "finance_ops"), request)
    assert actor.ip == "198.51.100.7"
    assert actor.user_agent == "x" * 400
