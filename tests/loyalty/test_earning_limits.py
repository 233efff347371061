"""Earning arithmetic at the edges of what the fields allow: the ledger's limit refuses an
award too large to hold (422), never a decimal error (a 500)."""

from decimal import Decimal

import pytest

from loyalty.errors import LedgerLimitExceeded
from loyalty.models import Tier
from loyalty.services import event_ingest
from loyalty.services.batch import events_ingest_batch
from tests.factories import PurchaseFactory

pytestmark = pytest.mark.django_db

SIRA_AT_ITS_LARGEST = {"enabled": True, "high_value_bonus": "10", "cross_module_bonus": "10"}
CASES = [
    pytest.param("6", {"enabled": False}, id="rate-alone"),
    pytest.param("6", SIRA_AT_ITS_LARGEST, id="sira-rates"),
    pytest.param("999", {"enabled": False}, id="tier-multiplier"),
]


def _program(make_program, tier_multiplier, sira):
    program = make_program(earn_rate=Decimal("999999"), sira_settings=sira)
    Tier.objects.filter(program=program).update(earn_multiplier=Decimal(tier_multiplier))
    return program


def _purchase():
    return PurchaseFactory(amount=Decimal("999999999999999999"), module="eats", currency="XOF")


@pytest.mark.parametrize(("tier_multiplier", "sira"), CASES)
def test_an_award_past_the_ledgers_limit_is_refused_not_a_crash(
    make_program, actor, tier_multiplier, sira
):
    program = _program(make_program, tier_multiplier, sira)
    with pytest.raises(LedgerLimitExceeded):
        event_ingest(program=program, event=_purchase(), actor=actor)


@pytest.mark.parametrize(("tier_multiplier", "sira"), CASES)
def test_a_batch_refuses_that_item_alone(make_program, actor, tier_multiplier, sira):
    program = _program(make_program, tier_multiplier, sira)
    small = PurchaseFactory(amount=Decimal("100"), currency="XOF")
    results = events_ingest_batch(items=[(program, _purchase()), (program, small)], actor=actor)
    assert isinstance(results[0], LedgerLimitExceeded)
    assert results[1].entry.points > 0
