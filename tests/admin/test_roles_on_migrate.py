"""The staff role groups follow `loyalty.roles` after every `migrate`, not only in the demo."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command

from loyalty.roles import ROLE_ADMIN_PERMISSIONS

pytestmark = pytest.mark.django_db


def test_migrate_installs_and_refreshes_the_role_groups():
    Group.objects.all().delete()
    stale = Group.objects.create(name="finance_ops")
    stale.permissions.set(Permission.objects.filter(codename="delete_ledgerentry"))
    call_command("migrate", verbosity=0)
    assert set(Group.objects.values_list("name", flat=True)) >= set(ROLE_ADMIN_PERMISSIONS)
    finance = {
        f"{p.content_type.app_label}.{p.codename}"
        for p in Group.objects.get(name="finance_ops").permissions.select_related("content_type")
    }
    assert finance == set(ROLE_ADMIN_PERMISSIONS["finance_ops"])


def test_a_partial_migrate_before_auth_exists_installs_nothing_and_does_not_fail():
    """`migrate contenttypes` on an empty database: the signal's migration state has no auth
    models yet (its tables do not exist), so the role install waits for a later migrate."""
    from django.apps import apps
    from django.db.migrations.state import ProjectState

    from loyalty.apps import _roles_refresh

    Group.objects.all().delete()
    _roles_refresh(sender=list(apps.get_app_configs())[-1], apps=ProjectState().apps)
    assert not Group.objects.exists()
