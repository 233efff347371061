"""Every write service leaves an audit entry.

The list of services is discovered, not written down: everything `loyalty.services` exports,
every public `@transaction.atomic` entry point of a `loyalty.services.*` module, and every
public function of `approvals.services`. A new service without a scenario here fails
`test_every_service_has_a_scenario`; a scenario whose service writes no audit entry fails
`test_service_leaves_an_audit_entry`.
"""

import importlib
import inspect
import pkgutil
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

import approvals.services as approval_services
import loyalty.services as loyalty_services
from audit.models import AuditEntry
from loyalty.actors import Actor, system_actor
from loyalty.models import MemberBalance, Redemption, TierSnapshot
from tests.conftest import hold
from tests.factories import PointsEventFactory

pytestmark = pytest.mark.django_db

OPS = Actor(id="ops-1", role="ops_marketing")
OPS_2 = Actor(id="ops-2", role="ops_marketing")
FIN = Actor(id="fin-1", role="finance_ops")
CHECKED: list[str] = []


@contextmanager
def audited(entity_type: str):
    """Asserts the block (the service call alone, not its set-up) appends an entry about an
    entity of `entity_type`."""
    latest = AuditEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0
    yield
    new = AuditEntry.objects.filter(id__gt=latest)
    assert new.filter(entity_type=entity_type).exists(), (
        f"no `{entity_type}` audit entry; the call wrote "
        f"{list(new.values_list('action', flat=True))}"
    )
    CHECKED.append(entity_type)


def discovered_services() -> dict[str, object]:
    found = {}
    for name in loyalty_services.__all__:
        obj = getattr(loyalty_services, name)
        if inspect.isfunction(obj):
            found[name] = obj
    for info in pkgutil.iter_modules(loyalty_services.__path__):
        module = importlib.import_module(f"loyalty.services.{info.name}")
        for name, obj in vars(module).items():
            if (
                inspect.isfunction(obj)
                and obj.__module__ == module.__name__
                and not name.startswith("_")
                and hasattr(obj, "__wrapped__")  # a transaction entry point
            ):
                found[name] = obj
    for name, obj in vars(approval_services).items():
        public = inspect.isfunction(obj) and not name.startswith("_")
        if public and obj.__module__ == approval_services.__name__:
            found[name] = obj
    # Entry points whose transaction lives in a private helper.
    from loyalty.services.batch import events_ingest_batch

    found["events_ingest_batch"] = events_ingest_batch
    return found


# --- scenarios: call the service once, successfully; return the expected entity_type --------


def _member(program, points="500", member="u_1"):
    loyalty_services.event_ingest(
        program=program,
        event=PointsEventFactory(member_id=member, points=Decimal(points)),
        actor=OPS,
    )
    return member


def _hold(program, key="h1", capture=False):
    _member(program)
    return hold(program, "100", OPS, key=key, capture=capture)


def _request(program, operation="program_suspend"):
    return approval_services.approval_request_create(
        operation=operation, program=program, target=f"program:{program.pk}",
        payload={"program_id": str(program.pk), "reason": "fraud"}, actor=OPS,
    )  # fmt: skip


def s_event_ingest(program, make_program):
    with audited("transaction"):
        _member(program)


def s_events_ingest_batch(program, make_program):
    from loyalty.services.batch import events_ingest_batch

    items = [(program, PointsEventFactory(member_id=f"b{i}")) for i in range(2)]
    with audited("transaction"):
        events_ingest_batch(items=items, actor=OPS)


def s_program_create(program, make_program):
    with audited("program"):
        make_program(name="Another")


def s_program_update(program, make_program):
    with audited("program"):
        loyalty_services.program_update(program_id=program.pk, changes={"name": "N"}, actor=OPS)


def s_program_set_status(program, make_program):
    with audited("program"):
        loyalty_services.program_set_status(program_id=program.pk, status="suspended", actor=OPS)


def s_balance_set_frozen(program, make_program):
    _member(program)
    with audited("balance"):
        loyalty_services.balance_set_frozen(
            program=program, member_id="u_1", frozen=True, actor=FIN
        )


def s_redemption_hold(program, make_program):
    with audited("redemption"):
        _hold(program)


def s_redemption_hold_or_replay(program, make_program):
    _member(program)
    with audited("redemption"):
        loyalty_services.redemption_hold_or_replay(
            program=program, member_id="u_1", points=Decimal("100"), reward_type="discount",
            idempotency_key="h1", actor=OPS,
        )  # fmt: skip


def s_redemption_capture(program, make_program):
    hold = _hold(program)
    with audited("redemption"):
        loyalty_services.redemption_capture(redemption_id=hold.pk, actor=OPS)


def s_redemption_release(program, make_program):
    hold = _hold(program)
    with audited("redemption"):
        loyalty_services.redemption_release(redemption_id=hold.pk, actor=OPS)


def s_redemption_expire(program, make_program):
    hold = _hold(program)
    with time_machine.travel(hold.expires_at + timedelta(seconds=1)), audited("redemption"):
        assert loyalty_services.redemption_expire(redemption_id=hold.pk, actor=OPS)


def s_redemptions_expire_due(program, make_program):
    hold = _hold(program)
    with time_machine.travel(hold.expires_at + timedelta(seconds=1)), audited("redemption"):
        assert loyalty_services.redemptions_expire_due(actor=system_actor("hold_expiry")) == 1


def s_voucher_redeem(program, make_program):
    hold = _hold(program, capture=True)
    voucher = Redemption.objects.get(pk=hold.pk).voucher
    with audited("voucher"):
        loyalty_services.voucher_redeem(voucher=voucher, actor=OPS)


def s_vouchers_expire_due(program, make_program):
    voucher = Redemption.objects.get(pk=_hold(program, capture=True).pk).voucher
    with time_machine.travel(voucher.expires_at + timedelta(seconds=1)), audited("voucher"):
        assert loyalty_services.vouchers_expire_due(actor=system_actor("hold_expiry")) == 1


def _campaign(program):
    from loyalty.services.campaigns_admin import campaign_create

    return campaign_create(
        program=program, name="Back", segment="all", bonus_points=Decimal("50"),
        scheduled_at=timezone.now() + timedelta(days=1), actor=OPS,
    )  # fmt: skip


def s_campaign_create(program, make_program):
    with audited("campaign"):
        _campaign(program)


def s_campaign_update(program, make_program):
    from loyalty.services.campaigns_admin import campaign_update

    campaign = _campaign(program)
    with audited("campaign"):
        campaign_update(campaign_id=campaign.pk, changes={"name": "Later"}, actor=OPS)


def s_job_create(program, make_program):
    from loyalty.services.jobs import job_create

    with audited("job"):
        job_create(kind="tier_evaluation", actor=OPS, program=program)


def s_jobs_reap_stale(program, make_program):
    from datetime import timedelta

    from django.conf import settings

    from loyalty.services.jobs import job_create, jobs_reap_stale

    job_create(kind="tier_evaluation", actor=OPS, program=program)
    later = timedelta(seconds=settings.LOYALTY_JOB_STALE_SECONDS + 1)
    with time_machine.travel(timezone.now() + later), audited("job"):
        assert jobs_reap_stale() == 1


def s_tier_rollback(program, make_program):
    from loyalty.services.tiers import tier_rollback

    _member(program)
    balance = MemberBalance.objects.get(program=program, member_id="u_1")
    balance.tier = "silver"
    balance.save(update_fields=["tier"])
    snapshot = TierSnapshot.objects.create(
        balance=balance, program=program, from_tier="basic", to_tier="silver", reason="test",
        points_balance=balance.points_balance, lifetime_spend=0, actor_id="system",
    )  # fmt: skip
    with audited("balance"):
        tier_rollback(snapshot_id=snapshot.pk, actor=OPS)


def s_approval_request_create(program, make_program):
    with audited("approval"):
        _request(program)


def s_approval_approve(program, make_program):
    request = _request(program)
    with audited("approval"):
        approval_services.approval_approve(
            request_id=request.pk, actor=OPS_2, roles={"ops_marketing"}
        )


def s_approval_reject(program, make_program):
    request = _request(program)
    with audited("approval"):
        approval_services.approval_reject(
            request_id=request.pk, actor=FIN, roles={"finance_ops"}, comment="no"
        )


def s_approval_expire(program, make_program):
    request = _request(program)
    with time_machine.travel(request.expires_at + timedelta(seconds=1)), audited("approval"):
        assert approval_services.approval_expire(request_id=request.pk, actor=FIN)


def s_approvals_expire(program, make_program):
    request = _request(program)
    with time_machine.travel(request.expires_at + timedelta(seconds=1)), audited("approval"):
        assert approval_services.approvals_expire(actor=system_actor("approval_expiry")) == 1


def s_approval_policy_update(program, make_program):
    with audited("approval_policy"):
        approval_services.approval_policy_update(
            operation="balance_adjustment", actor=FIN, enabled=True, threshold=Decimal("5000"),
            required_roles=["ops_marketing", "finance_ops"], ttl_hours=24,
        )  # fmt: skip


SCENARIOS = {
    name.removeprefix("s_"): fn for name, fn in list(globals().items()) if name.startswith("s_")
}


def test_every_service_has_a_scenario():
    missing = sorted(set(discovered_services()) - set(SCENARIOS))
    assert missing == [], f"write services without an audit scenario here: {missing}"


@pytest.mark.parametrize("service", sorted(SCENARIOS))
def test_service_leaves_an_audit_entry(service, program, make_program):
    CHECKED.clear()
    SCENARIOS[service](program, make_program)
    assert len(CHECKED) == 1  # the scenario did check its call
