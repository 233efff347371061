"""Two approvers racing on the last approval: the operation runs exactly once."""

import threading
from decimal import Decimal

import pytest
from django.db import connection

from approvals.errors import AlreadyApproved, ApprovalNotPending, RoleNotRequired
from approvals.models import ApprovalRequest
from approvals.services import approval_approve
from loyalty.actors import Actor
from loyalty.models import LedgerEntry, MemberBalance
from loyalty.verify import ledger_verify
from tests.approvals.conftest import FIN, OPS, OPS_2

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_racing_last_approvals_execute_once(program, adjustment):
    request = adjustment()
    approval_approve(request_id=request.pk, actor=OPS_2, roles=OPS)
    racers = [Actor(id=f"fin-{i}", role="finance_ops") for i in range(4)]
    barrier = threading.Barrier(len(racers))
    outcomes = []

    def approve(actor):
        try:
            barrier.wait(5)
            approval_approve(request_id=request.pk, actor=actor, roles=FIN)
            outcomes.append("approved")
        except (ApprovalNotPending, RoleNotRequired, AlreadyApproved) as error:
            outcomes.append(error.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=approve, args=(a,)) for a in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("approved") == 1
    assert set(outcomes) - {"approved"} == {"approval_not_pending"}
    request.refresh_from_db()
    assert request.status == "executed"
    assert request.approvals.filter(role="finance_ops").count() == 1
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 1
    assert MemberBalance.objects.get(member_id="u_1").points_balance == Decimal("35000")
    assert ApprovalRequest.objects.count() == 1
    assert ledger_verify() == []
