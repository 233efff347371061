from decimal import Decimal

import pytest

from loyalty.services import event_ingest
from loyalty.verify import ledger_verify
from tests.factories import PurchaseFactory

pytestmark = pytest.mark.django_db


def test_purchase_awards_rate_times_amount(program, actor):
    result = event_ingest(program=program, event=PurchaseFactory(amount=Decimal("12500")),
                          actor=actor)
    assert result.entry.points == Decimal("250.00")
    assert ledger_verify() == []
