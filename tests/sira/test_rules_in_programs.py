"""SIRA's rules as programs configure them, on every ingestion path."""

from decimal import Decimal

import pytest

from loyalty.models import MemberBalance
from loyalty.services import TierInput, event_ingest
from loyalty.services.batch import events_ingest_batch
from tests.factories import PurchaseFactory

pytestmark = pytest.mark.django_db

D = Decimal


def _ingest(path, program, event, actor):
    if path == "single":
        return event_ingest(program=program, event=event, actor=actor)
    (result,) = events_ingest_batch(items=[(program, event)], actor=actor)
    return result


@pytest.mark.parametrize("path", ["single", "batch"])
@pytest.mark.parametrize("lowest", ["basic", "bronze"])
def test_tier_stagnation_is_the_lowest_tier_whatever_its_name(make_program, actor, path, lowest):
    """The seed's rule 8 rewards a member still on the entry tier ("basic" in the seed's
    ladder) after $300 of spend: a program whose lowest tier is named otherwise has it too."""
    program = make_program(
        tiers=[
            TierInput(lowest),
            TierInput("silver", min_points=D("1000")),
            TierInput("gold", min_points=D("5000")),
        ],
        sira_settings={"first_daily_purchase_points": "0"},
    )
    _ingest(path, program, PurchaseFactory(member_id="u_1", amount=D("400")), actor)

    second = _ingest(path, program, PurchaseFactory(member_id="u_1", amount=D("10")), actor)

    assert second.entry.balance.tier == lowest
    assert "tier_stagnation_incentive" in second.as_dict()["sira"]["reasons"]


@pytest.mark.parametrize("path", ["single", "batch"])
def test_tier_stagnation_is_not_for_a_member_above_the_lowest_tier(make_program, actor, path):
    program = make_program(
        tiers=[TierInput("bronze"), TierInput("silver", min_points=D("1000"))],
        sira_settings={"first_daily_purchase_points": "0"},
    )
    _ingest(path, program, PurchaseFactory(member_id="u_1", amount=D("400")), actor)
    MemberBalance.objects.filter(program=program, member_id="u_1").update(tier="silver")

    second = _ingest(path, program, PurchaseFactory(member_id="u_1", amount=D("10")), actor)

    assert "tier_stagnation_incentive" not in second.as_dict()["sira"]["reasons"]
