"""Two approvers racing on the last approval: the operation runs exactly once."""

import threading
import time
from decimal import Decimal

import pytest

from approvals.errors import ApprovalNotPending
from approvals.models import ApprovalRequest
from approvals.services import approval_approve
from loyalty.actors import Actor
from loyalty.models import LedgerEntry, MemberBalance
from loyalty.verify import ledger_verify
from tests.approvals.conftest import FIN, OPS, OPS_2
from tests.parallel import run_parallel

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_racing_last_approvals_execute_once(program, adjustment):
    request = adjustment()
    approval_approve(request_id=request.pk, actor=OPS_2, roles=OPS)
    racers = [Actor(id=f"fin-{i}", role="finance_ops") for i in range(4)]

    results = run_parallel(
        len(racers),
        lambda i: approval_approve(request_id=request.pk, actor=racers[i], roles=FIN),
    )

    approved = [r for r in results if isinstance(r, ApprovalRequest)]
    refused = [r for r in results if not isinstance(r, ApprovalRequest)]
    assert len(approved) == 1, results
    assert len(refused) == len(racers) - 1, results
    assert all(type(r) is ApprovalNotPending for r in refused), results
    request.refresh_from_db()
    assert request.status == "executed"
    assert request.approvals.filter(role="finance_ops").count() == 1
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 1
    assert MemberBalance.objects.get(member_id="u_1").points_balance == Decimal("35000")
    assert ApprovalRequest.objects.count() == 1
    assert ledger_verify() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_policy_tightenings_at_once_never_end_looser_than_either(monkeypatch):
    """One person lowers the threshold while another shortens the requests' time to live
    (sending the threshold they read), at the same moment: the second is judged against the
    first's outcome (it would raise the threshold back) and is refused, rather than against
    the policy both started from."""
    from approvals import services
    from approvals.models import ApprovalPolicy
    from loyalty.errors import ValidationFailed

    judged = threading.Event()
    loosening = services.policy_loosening

    def slow_first_judgement(**kwargs):
        found = loosening(**kwargs)
        if not judged.is_set():
            judged.set()
            time.sleep(0.5)  # the other change starts meanwhile, and waits for the row
        return found

    monkeypatch.setattr(services, "policy_loosening", slow_first_judgement)
    roles = ["ops_marketing", "finance_ops"]
    changes = [
        {"threshold": Decimal("5000"), "ttl_hours": 24},
        {"threshold": Decimal("10000"), "ttl_hours": 12},
    ]

    def change(i):
        if i == 1:
            judged.wait(10)
        return services.approval_policy_update(
            operation="balance_adjustment", actor=Actor(id=f"fin-{i}", role="finance_ops"),
            enabled=True, required_roles=roles, **changes[i],
        )  # fmt: skip

    first, second = run_parallel(2, change)
    assert isinstance(first, ApprovalPolicy)
    assert isinstance(second, ValidationFailed)
    assert list(second.errors) == ["threshold"]
    assert ApprovalPolicy.objects.get().threshold == Decimal("5000")
