"""Staff roles as Django groups, with the admin model permissions each one holds.

API callers get their role from a verified credential (see the `access` app); staff users of
the admin get it from these groups. A `merchant_admin` user sees only the merchants they hold
the object permission `loyalty.view_merchant` on (django-guardian).

The model permissions below open the admin's pages; what a change or an action needs on them
is checked against the API's map (`access.permissions`, via `user_permissions`), so a role can
do no more in the console than over the API (the budget needs `budgets:write`, releasing a
hold `redemptions:write`, ...).
"""

from django.contrib.auth.models import Group, Permission
from django.db import transaction

from access.permissions import PERMISSIONS, permissions_for_roles

LOYALTY_MODELS = [
    "merchant", "program", "tier", "budgetshard", "memberbalance", "ledgerentry", "pointlot",
    "redemption", "voucher", "tiersnapshot", "campaign", "campaignaward", "job", "outboxevent",
]  # fmt: skip


def _view(models: list[str], app: str = "loyalty") -> list[str]:
    return [f"{app}.view_{m}" for m in models]


# The approvals queue and policies, and the audit trail (apps `approvals`, `audit`). Deciding
# an approval needs the ops_marketing or finance_ops group, checked by the approvals services.
APPROVALS_VIEW = ["approvals.view_approvalrequest", "approvals.view_approvalpolicy"]
AUDIT_VIEW = ["audit.view_auditentry", "audit.view_auditseal"]

ROLE_ADMIN_PERMISSIONS: dict[str, list[str]] = {
    "merchant_admin": _view(
        ["merchant", "program", "tier", "memberbalance", "ledgerentry", "redemption", "voucher",
         "campaign", "tiersnapshot"]
    ),
    "ops_marketing": [
        *_view(LOYALTY_MODELS),
        "loyalty.add_program", "loyalty.change_program", "loyalty.change_tier",
        "loyalty.add_campaign", "loyalty.change_campaign", "loyalty.add_job",
        *APPROVALS_VIEW,
    ],
    "finance_ops": [
        *_view(LOYALTY_MODELS),
        "loyalty.change_program", "loyalty.change_memberbalance", "loyalty.change_voucher",
        *APPROVALS_VIEW, "approvals.add_approvalpolicy", "approvals.change_approvalpolicy",
        "audit.view_auditentry",
    ],
    "auditor": [*_view(LOYALTY_MODELS), *AUDIT_VIEW, *APPROVALS_VIEW],
    "system": [*_view(LOYALTY_MODELS), *AUDIT_VIEW, *APPROVALS_VIEW],
}  # fmt: skip

ROLES = tuple(ROLE_ADMIN_PERMISSIONS)


@transaction.atomic
def roles_install() -> dict[str, Group]:
    """Creates (or refreshes) one group per role with exactly its permissions."""
    groups = {}
    for role, names in ROLE_ADMIN_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        perms = []
        for name in names:
            app_label, codename = name.split(".")
            perm = Permission.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if perm is not None:  # a model of a later app may not exist yet
                perms.append(perm)
        group.permissions.set(perms)
        groups[role] = group
    return groups


def user_roles(user) -> set[str]:
    if not user.is_authenticated:
        return set()
    return set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))


def user_permissions(user) -> frozenset[str]:
    """The API's named permissions (access.permissions) a staff user holds through their role
    groups; a superuser holds them all. The admin checks what a change needs against these, so
    a role can do in the console exactly what the API lets it do."""
    if user.is_superuser:
        return frozenset(PERMISSIONS)
    # `system` is the role of workers and internal services, which hold every permission: a
    # person put in that group gets none of them in the console.
    return permissions_for_roles(user_roles(user) - {"system"})


def user_has_permission(user, permission: str) -> bool:
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")
    return permission in user_permissions(user)
