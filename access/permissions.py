"""The one map from roles to named permissions, and the DRF permission that enforces it.

Roles come only from a verified credential (JWT `roles` claim, or the permission set stored
on a merchant API key); no header grants anything. Every API view names the permission each
of its methods needs; the RBAC matrix test is generated from this map and the URL list.
"""

import dataclasses

from rest_framework.permissions import BasePermission

# Named permissions: `<resource>:<verb>`. Other apps (audit, approvals, jobs, webhooks, SIRA)
# use the ones reserved for them here so the map stays the single source of truth.
PERMISSIONS = (
    "programs:read",
    "programs:create",
    "programs:write",
    "programs:suspend",
    "budgets:write",
    "members:read",
    "members:adjust",
    "members:freeze",
    "events:write",
    "redemptions:write",
    "vouchers:read",
    "vouchers:redeem",
    "campaigns:read",
    "campaigns:write",
    "audit:read",
    "approvals:read",
    "approvals:decide",
    "jobs:read",
    "jobs:run",
    "webhooks:read",
    "webhooks:write",
    "sira:read",
    "sira:feedback",
)

READ_PERMISSIONS = frozenset(p for p in PERMISSIONS if p.endswith(":read"))

# The most privileged role first: the one a staff user's actions are recorded under, and,
# among a token's roles that hold the permission a request used, the one it acts as.
ROLE_ORDER = ["system", "finance_ops", "ops_marketing", "auditor", "merchant_admin"]

# The seed's five roles (DESIGN.md "Identity, roles, scoping").
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    # View-only access to its own merchant's programs (a merchant_id scope is mandatory).
    "merchant_admin": frozenset(
        {"programs:read", "members:read", "vouchers:read", "campaigns:read"}
    ),
    # Campaigns, program updates, adjustment requests.
    "ops_marketing": frozenset(
        {
            "programs:read",
            "programs:create",
            "programs:write",
            "programs:suspend",
            "members:read",
            "members:adjust",
            "vouchers:read",
            "campaigns:read",
            "campaigns:write",
            "approvals:read",
            "approvals:decide",
            "jobs:read",
            "jobs:run",
            "sira:read",
            "webhooks:read",
        }
    ),
    # Adjustments, budgets, approvals, freezing.
    "finance_ops": frozenset(
        {
            "programs:read",
            "programs:suspend",
            "budgets:write",
            "members:read",
            "members:adjust",
            "members:freeze",
            "vouchers:read",
            "campaigns:read",
            "audit:read",
            "approvals:read",
            "approvals:decide",
            "jobs:read",
            "webhooks:read",
        }
    ),
    # Reads everything, the audit log included; changes nothing.
    "auditor": READ_PERMISSIONS,
    # Workers and internal services.
    "system": frozenset(PERMISSIONS),
}

ROLES = tuple(ROLE_PERMISSIONS)

# A merchant API key is an integration credential: it may hold any permission except
# deciding approvals, which needs a person (multi-signature approvals count people).
API_KEY_PERMISSIONS = frozenset(PERMISSIONS) - {"approvals:decide"}
# What `apikey_create` grants by default: what a merchant's checkout integration needs.
API_KEY_DEFAULT_PERMISSIONS = (
    "programs:read",
    "members:read",
    "events:write",
    "redemptions:write",
    "vouchers:read",
    "vouchers:redeem",
)


def permissions_for_roles(roles) -> frozenset[str]:
    granted: set[str] = set()
    for role in roles:
        granted |= ROLE_PERMISSIONS.get(role, frozenset())
    return frozenset(granted)


class HasPermission(BasePermission):
    """`permission_classes = [HasPermission("events:write")]`: the caller must hold it.

    Called with a permission name it returns a subclass (DRF instantiates permission classes
    itself), so views read like the permission map. Views with several methods on one URL set
    `method_permissions = {"get": "programs:read", "post": "programs:create"}` instead and use
    `HasPermission` bare.
    """

    permission: str = ""

    def __new__(cls, *args, **kwargs):
        if cls is HasPermission and args and isinstance(args[0], str):
            name = args[0]
            if name not in PERMISSIONS:
                raise ValueError(f"unknown permission {name!r}")
            return type(
                f"HasPermission_{name.replace(':', '_')}", (HasPermission,), {"permission": name}
            )
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def has_permission(self, request, view) -> bool:
        caller = getattr(request, "caller", None)
        method = request.method.lower()
        if caller is not None and (
            method not in view.http_method_names or not hasattr(view, method)
        ):
            return True  # an unsupported method: let the view answer 405
        needed = view_permission(type(view), "get" if method == "head" else method)
        # A method without a declared permission is refused, never open by omission.
        if caller is None or not needed:
            return False
        if isinstance(needed, tuple):  # any one of them (the view checks finer grains)
            used = next((p for p in needed if p in caller.permissions), None)
        else:
            used = needed if needed in caller.permissions else None
        if used is None:
            return False
        if len(caller.roles) > 1:
            _acts_as_its_role_for(request, caller, used)
        return True


def _acts_as_its_role_for(request, caller, permission: str) -> None:
    """A token with several roles acts, for the ledger and the audit trail, as the most
    privileged of its roles that holds the permission the request used (the first role of the
    token might be one that cannot make this write at all). The caller is shared between
    requests of one token (authentication caches it): this request gets its own copy."""
    role = next(
        (r for r in ROLE_ORDER if r in caller.roles and permission in ROLE_PERMISSIONS[r]),
        caller.actor.role,
    )
    if role != caller.actor.role:
        request._request.caller = dataclasses.replace(
            caller, actor=dataclasses.replace(caller.actor, role=role)
        )


def view_permission(view_cls, method: str) -> str | tuple[str, ...] | None:
    """The permission a view's method needs (used by the RBAC matrix and the schema); a
    tuple means any one of them."""
    per_method = getattr(view_cls, "method_permissions", None)
    if per_method:
        return per_method.get(method.lower())
    for perm_cls in getattr(view_cls, "permission_classes", []):
        if isinstance(perm_cls, type) and issubclass(perm_cls, HasPermission):
            return perm_cls.permission or None
    return None
