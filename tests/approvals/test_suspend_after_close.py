"""An approved suspension of a program closed meanwhile fails; it does not reopen the program."""

import pytest

from approvals.services import approval_approve, approval_request_create
from loyalty.models import Program
from loyalty.services import program_set_status
from tests.approvals.conftest import FIN, FIN_1, OPS, OPS_2, OPS_MAKER

pytestmark = pytest.mark.django_db


def test_suspension_approved_after_the_program_closed_fails_and_it_stays_closed(program):
    request = approval_request_create(
        operation="program_suspend", program=program, target=f"program:{program.pk}",
        payload={"program_id": str(program.pk), "reason": "fraud"}, actor=OPS_MAKER,
    )  # fmt: skip
    program_set_status(program_id=program.pk, status="closed", actor=OPS_MAKER)
    approval_approve(request_id=request.pk, actor=OPS_2, roles=OPS)
    approval_approve(request_id=request.pk, actor=FIN_1, roles=FIN)
    request.refresh_from_db()
    assert (request.status, request.error_code) == ("failed", "invalid_state")
    assert Program.objects.get(pk=program.pk).status == Program.Status.CLOSED
