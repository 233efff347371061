from decimal import Decimal

import pytest

from loyalty.services import event_ingest
from loyalty.verify import ledger_verify
from tests.factories import PurchaseFactory

pytestmark = pytest.mark.django_db


def test_purchase_awards_rate_times_amount(program, actor):
    result = event_ingest(
        program=program, event=PurchaseFactory(amount=Decimal("12500")), actor=actor
    )
    assert result.entry.points == Decimal("250.00")
    assert ledger_verify() == []


def test_batch_applies_each_item_on_its_own(program, actor):
    from loyalty.errors import CurrencyMismatch
    from loyalty.services.batch import events_ingest_batch

    good = PurchaseFactory(member_id="u1", amount=Decimal("1000"))
    bad = PurchaseFactory(member_id="u2", currency="USD")
    results = events_ingest_batch(
        items=[(program, good), (program, bad), (program, good)], actor=actor
    )
    assert results[0].entry.points == Decimal("20.00")
    assert isinstance(results[1], CurrencyMismatch)
    assert results[2].entry.pk == results[0].entry.pk
    assert ledger_verify() == []
