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
