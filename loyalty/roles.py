"""Staff roles as Django groups, with the admin model permissions each one holds.

API callers get their role from a verified credential (see the `access` app); staff users of
the admin get it from these groups. A `merchant_admin` user sees only the merchants they hold
the object permission `loyalty.view_merchant` on (django-guardian).
"""

from django.contrib.auth.models import Group, Permission
from django.db import transaction

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
        "loyalty.change_redemption",
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
