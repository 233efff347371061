"""Two approvers racing on the last approval: the operation runs exactly once."""

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
