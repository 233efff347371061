"""The RBAC matrix: every API endpoint x every role x own/other merchant -> the exact status.

Generated from the permission map (access.permissions.ROLE_PERMISSIONS) and the URL list:
`test_every_endpoint_has_a_case` fails as soon as an endpoint is added without an entry in
CASES, or an entry outlives its endpoint, so none can be missed or go stale. Objects belong
to the merchant OWN; the caller is scoped either to OWN or to OTHER. Expected: 403 without
the permission (whatever the scope); otherwise the case's status for OWN, and 404 (or an
empty 200 for lists) for OTHER.
"""

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from access.approval_gate import approval_gate
from access.permissions import ROLE_PERMISSIONS, ROLES, view_permission
from loyalty.actors import Actor
from loyalty.models import Job, MemberBalance, TierSnapshot
from loyalty.services.campaigns_admin import campaign_create
from loyalty.services.jobs import job_create

from .conftest import OTHER

pytestmark = pytest.mark.django_db

METHODS = ("get", "post", "put", "patch", "delete")


def api_endpoints() -> dict[tuple[str, str], type]:
    """(url name, METHOD) -> view class for every route under /api/v1/."""
    found: dict[tuple[str, str], type] = {}

    def walk(patterns, prefix):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith("api/v1/"):
                view_cls = getattr(pattern.callback, "view_class", None)
                assert view_cls is not None, f"{route}: API routes must be class-based views"
                for method in METHODS:
                    if hasattr(view_cls, method):
                        found[(pattern.name, method.upper())] = view_cls

    walk(get_resolver().url_patterns, "")
    return found


@dataclass(frozen=True)
class Case:
    build: object  # world -> (path, body)
    ok: int  # status for a permitted caller of the owning merchant
    other: int = 404  # status for a permitted caller of another merchant
    # The permission this request needs, when finer than the view's (e.g. PATCH name only).
    needs: str | None = None
    # Statuses for roles whose outcome a business rule decides (e.g. who may approve).
    by_role: dict = field(default_factory=dict)


def member(w, suffix=""):
    return f"/api/v1/programs/{w['program'].pk}/members/u_1{suffix}"


def event_body(w, member_id="u_5"):
    return {"program_id": str(w["program"].pk), "member_id": member_id, "type": "purchase",
            "amount": "1000", "currency": "XOF"}  # fmt: skip


# Approving and rejecting: only people holding a still-missing required role may approve
# (the maker is someone else); anyone with a required role may reject.
DECIDE_BY_ROLE = {"system": 403}

CASES: dict[tuple[str, str], Case] = {
    ("events", "POST"): Case(lambda w: ("/api/v1/events", event_body(w)), 201),
    ("events-batch", "POST"): Case(
        lambda w: (
            "/api/v1/events/batch",
            {"events": [{**event_body(w), "idempotency_key": "b-1"}]},
        ),
        200,
        other=200,
    ),
    ("redemptions", "POST"): Case(
        lambda w: (
            "/api/v1/redemptions",
            {
                "program_id": str(w["program"].pk),
                "member_id": "u_1",
                "points": "10",
                "reward_type": "discount",
            },
        ),
        201,
    ),
    ("redemption-capture", "POST"): Case(
        lambda w: (f"/api/v1/redemptions/{w['hold'].pk}/capture", {}), 200
    ),
    ("redemption-release", "POST"): Case(
        lambda w: (f"/api/v1/redemptions/{w['hold'].pk}/release", {}), 200
    ),
    ("programs", "GET"): Case(lambda w: ("/api/v1/programs", None), 200, other=200),
    ("programs", "POST"): Case(
        lambda w: (
            "/api/v1/programs",
            {
                "merchant_id": w["program"].merchant_id,
                "name": "New",
                "currency": "XOF",
                "earn_rate": "0.01",
                "point_value": "1",
            },
        ),
        201,
    ),
    ("program", "GET"): Case(lambda w: (f"/api/v1/programs/{w['program'].pk}", None), 200),
    ("program", "PATCH"): Case(
        lambda w: (f"/api/v1/programs/{w['program'].pk}", {"name": "Renamed"}),
        200,
        needs="programs:write",
    ),
    ("program-suspend", "POST"): Case(
        lambda w: (f"/api/v1/programs/{w['program'].pk}/suspend", {"reason": "r"}), 202
    ),
    ("member", "GET"): Case(lambda w: (member(w), None), 200),
    ("member-transactions", "GET"): Case(lambda w: (member(w, "/transactions"), None), 200),
    ("member-tier-history", "GET"): Case(lambda w: (member(w, "/tier-history"), None), 200),
    ("member-adjustments", "POST"): Case(
        lambda w: (member(w, "/adjustments"), {"points": "5", "reason": "r"}), 201
    ),
    ("member-freeze", "POST"): Case(lambda w: (member(w, "/freeze"), {"reason": "r"}), 200),
    ("member-unfreeze", "POST"): Case(lambda w: (member(w, "/unfreeze"), {}), 200),
    ("vouchers", "GET"): Case(lambda w: ("/api/v1/vouchers", None), 200, other=200),
    ("voucher", "GET"): Case(lambda w: (f"/api/v1/vouchers/{w['voucher'].code}", None), 200),
    ("voucher-redeem", "POST"): Case(
        lambda w: (f"/api/v1/vouchers/{w['voucher'].code}/redeem", {}), 200
    ),
    ("campaigns", "GET"): Case(lambda w: ("/api/v1/campaigns", None), 200, other=200),
    ("campaigns", "POST"): Case(
        lambda w: (
            "/api/v1/campaigns",
            {
                "program_id": str(w["program"].pk),
                "name": "C",
                "segment": "all",
                "bonus_points": "10",
                "scheduled_at": "2030-01-01T00:00:00Z",
            },
        ),
        201,
    ),
    ("campaign", "GET"): Case(lambda w: (f"/api/v1/campaigns/{w['campaign'].pk}", None), 200),
    ("campaign", "PATCH"): Case(
        lambda w: (f"/api/v1/campaigns/{w['campaign'].pk}", {"name": "C2"}), 200
    ),
    ("audit-search", "GET"): Case(lambda w: ("/api/v1/audit", None), 200, other=200),
    ("audit-entity-trail", "GET"): Case(
        lambda w: (f"/api/v1/audit/program/{w['program'].pk}", None), 200
    ),
    ("approvals-list", "GET"): Case(lambda w: ("/api/v1/approvals", None), 200, other=200),
    ("approvals-read", "GET"): Case(lambda w: (f"/api/v1/approvals/{w['approval'].pk}", None), 200),
    ("approvals-approve", "POST"): Case(
        lambda w: (f"/api/v1/approvals/{w['approval'].pk}/approve", {"comment": "ok"}),
        200,
        by_role=DECIDE_BY_ROLE,
    ),
    ("approvals-reject", "POST"): Case(
        lambda w: (f"/api/v1/approvals/{w['approval'].pk}/reject", {"comment": "no"}),
        200,
        by_role=DECIDE_BY_ROLE,
    ),
    **{
        (f"workers-{kind}", "POST"): Case(
            lambda w: (f"/api/v1/workers/{w['kind']}", {"program_id": str(w["program"].pk)}),
            202,
        )
        for kind in ("tier-evaluation", "point-expiry", "campaign-execution")
    },
    ("job", "GET"): Case(lambda w: (f"/api/v1/jobs/{w['job'].pk}", None), 200),
    ("tier-snapshot-rollback", "POST"): Case(
        lambda w: (f"/api/v1/tier-snapshots/{w['snapshot'].pk}/rollback", {"reason": "r"}),
        201,
    ),
}


def test_every_endpoint_has_a_case():
    endpoints = api_endpoints()
    missing = sorted(set(endpoints) - set(CASES))
    assert not missing, f"endpoints without an RBAC matrix entry: {missing}"
    stale = sorted(set(CASES) - set(endpoints))
    assert not stale, f"RBAC matrix entries for endpoints that are not mounted: {stale}"
    for (name, method), view_cls in endpoints.items():
        needed = view_permission(view_cls, method)
        assert needed, f"{name} {method} declares no permission"
        finer = CASES[(name, method)].needs
        if finer is not None:
            assert finer in (needed if isinstance(needed, tuple) else (needed,))


def test_every_role_is_in_the_map():
    assert set(ROLES) == {"merchant_admin", "ops_marketing", "finance_ops", "auditor", "system"}
    # The auditor changes nothing.
    assert all(p.endswith(":read") for p in ROLE_PERMISSIONS["auditor"])


@pytest.fixture
def world(funded, pending_hold, active_voucher, actor):
    program = funded
    maker = Actor(id="maker-1", role="ops_marketing", merchant_id=program.merchant_id)
    approval = approval_gate(
        operation="balance_adjustment",
        program=program,
        target=f"balance:{program.pk}:u_1",
        payload={"program_id": str(program.pk), "member_id": "u_1", "points": "20000",
                 "reason": "migration", "idempotency_key": "matrix"},
        amount=Decimal("20000"),
        actor=maker,
    )  # fmt: skip
    balance = MemberBalance.objects.get(program=program, member_id="u_1")
    balance.tier = "silver"
    balance.save(update_fields=["tier"])
    snapshot = TierSnapshot.objects.create(
        balance=balance, program=program, from_tier="basic", to_tier="silver", reason="test",
        points_balance=balance.points_balance, lifetime_spend=balance.lifetime_spend,
        actor_id="system",
    )  # fmt: skip
    return {
        "program": program,
        "hold": pending_hold,
        "voucher": active_voucher,
        "approval": approval,
        "snapshot": snapshot,
        "campaign": campaign_create(
            program=program,
            name="Win-back",
            segment="inactive",
            bonus_points=Decimal("10"),
            scheduled_at=timezone.now() + timedelta(days=1),
            actor=actor,
        ),
        "job": job_create(kind=Job.Kind.HOLD_EXPIRY, actor=actor, program=program),
    }


def expected(case: Case, view_cls, method: str, role: str, scope: str) -> int:
    needed = case.needs or view_permission(view_cls, method)
    options = needed if isinstance(needed, tuple) else (needed,)
    if not any(p in ROLE_PERMISSIONS[role] for p in options):
        return 403
    if scope == "other":
        return case.other
    return case.by_role.get(role, case.ok)


ENDPOINTS = api_endpoints()


@pytest.mark.parametrize("scope", ["own", "other"])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint", sorted(CASES), ids=[f"{n}-{m}" for n, m in sorted(CASES)])
def test_matrix(api, world, endpoint, role, scope):
    name, method = endpoint
    case = CASES[endpoint]
    world["kind"] = name.removeprefix("workers-")
    path, body = case.build(world)
    merchant_id = world["program"].merchant_id if scope == "own" else OTHER
    client = api(role, merchant_id=merchant_id, sub=f"{role}-person")
    if method == "GET":
        response = client.get(path)
    elif method == "POST":
        response = client.post(path, body)
    else:
        response = client.patch(path, body)
    want = expected(case, ENDPOINTS[endpoint], method, role, scope)
    assert response.status_code == want, (response.status_code, response.content[:300])
    if want == 200 and case.other == 200 and scope == "other" and method == "GET":
        assert response.json()["results"] == []  # lists are scoped, not refused
