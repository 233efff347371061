"""Shared fixtures. Tests run on PostgreSQL when DATABASE_URL points at one, else on SQLite
with the `postgres`-marked tests (row locks, triggers, real concurrency) skipped.

With LOYALTY_REQUIRE_POSTGRES=1 (CI) a run that is not on PostgreSQL, in which no `postgres`
test passed, or in which any test skipped (Redis down for the Celery worker test, say), fails
instead: CI runs everything."""

import os
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from loyalty.actors import Actor
from loyalty.roles import roles_install
from loyalty.services import program_create, redemption_hold
from tests.audit.flush import audit_tables_flushable  # noqa: F401  (session fixture)

REQUIRE_POSTGRES = os.environ.get("LOYALTY_REQUIRE_POSTGRES") == "1"
_postgres_passed = 0
_skipped: list[str] = []
STAFF_PASSWORD = "pw"  # make_user's default


def on_postgres() -> bool:
    return connection.vendor == "postgresql"


def pytest_collection_modifyitems(config, items):
    if on_postgres():
        return
    if REQUIRE_POSTGRES:
        pytest.exit("LOYALTY_REQUIRE_POSTGRES=1 but DATABASE_URL is not PostgreSQL", returncode=3)
    skip = pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL=postgres://...")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    global _postgres_passed
    if report.when == "call" and report.passed and "postgres" in report.keywords:
        _postgres_passed += 1
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if not REQUIRE_POSTGRES or exitstatus != 0:
        return
    if _postgres_passed == 0:
        session.exitstatus = 1
        print("\nFAILED: LOYALTY_REQUIRE_POSTGRES=1 but no PostgreSQL-only test passed.")
    elif _skipped:
        session.exitstatus = 1
        print(f"\nFAILED: LOYALTY_REQUIRE_POSTGRES=1 but {len(_skipped)} test(s) skipped:")
        for nodeid in _skipped:
            print(f"  {nodeid}")


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"PostgreSQL-only tests passed: {_postgres_passed}")


def make_user(name: str, *roles: str, superuser: bool = False, password: str = STAFF_PASSWORD):
    """A staff user in the given role groups (the groups are installed first)."""
    groups = roles_install()
    user = get_user_model().objects.create_user(
        username=name, password=password, is_staff=True, is_superuser=superuser
    )
    user.groups.set([groups[r] for r in roles])
    return user


def hold(program, points, actor, key="h1", member_id="u_1", **kw):
    """`redemption_hold` with the tests' defaults: member u_1, key h1, a discount."""
    kw.setdefault("reward_type", "discount")
    return redemption_hold(
        program=program,
        member_id=member_id,
        points=Decimal(points),
        idempotency_key=key,
        actor=actor,
        **kw,
    )


def logged_in(user) -> Client:
    """A test client with `user`'s session (no login request, so no login audit)."""
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def actor() -> Actor:
    return Actor(id="ops-1", role="ops_marketing", ip="127.0.0.1", user_agent="pytest")


@pytest.fixture
def make_program(actor):
    """Creates a program through the service (tiers and budget shards included)."""

    def make(**overrides):
        fields = {
            "merchant_id": "m_test",
            "name": "Test Rewards",
            "currency": "XOF",
            "timezone": "Africa/Dakar",
            "earn_rate": Decimal("0.02"),
            "point_value": Decimal("1"),
            "expiry_days": 365,
            "budget_limit": None,
            "max_earn_per_day": None,
            "sira_settings": {"enabled": False},
        }
        fields.update(overrides)
        return program_create(actor=actor, **fields)

    return make


@pytest.fixture
def program(make_program):
    return make_program()
