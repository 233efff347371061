"""Points, costs and totals past what the ledger's NUMERIC(20,2) columns hold are a typed
refusal of the one event (`ledger_limit_exceeded`), never a database error: on the single path,
in a batch (whose other items still apply) and over the API."""

from decimal import Decimal

import pytest

from loyalty.errors import LedgerLimitExceeded
from loyalty.services import event_ingest
from loyalty.services.batch import events_ingest_batch
from loyalty.verify import ledger_verify
from tests.api.conftest import (  # noqa: F401  (the API tests' fixtures)
    OWN,
    api,
    jwt_settings,
    make_token,
    public_pem,
    rsa_key,
)
from tests.factories import PointsEventFactory, PurchaseFactory

from .conftest import balance_of, db_state

pytestmark = pytest.mark.django_db

D = Decimal
HUGE = D("900000000000000000")  # 9 x 10^17: a valid amount, under the 10^18 limit


def test_a_purchase_whose_points_would_overflow_is_refused_and_changes_nothing(make_program, actor):
    program = make_program(earn_rate=D("5"))  # 4.5 x 10^18 points
    before = db_state()
    with pytest.raises(LedgerLimitExceeded):
        event_ingest(program=program, event=PurchaseFactory(amount=HUGE), actor=actor)
    assert db_state() == before


@pytest.mark.postgres  # SQLite cannot store totals this close to 10^18
def test_a_total_that_would_overflow_is_refused_and_the_member_keeps_earning(program, actor):
    def purchase(amount):
        event = PurchaseFactory(member_id="u", amount=amount)
        event_ingest(program=program, event=event, actor=actor)

    purchase(HUGE)
    with pytest.raises(LedgerLimitExceeded):  # lifetime_spend would pass 10^18
        purchase(HUGE)
    purchase(D("100"))
    assert balance_of(program, "u").lifetime_spend == HUGE + 100
    assert ledger_verify() == []


def test_an_adjustment_that_would_overflow_the_balance_is_refused(program, actor):
    big = D("600000000000000000")
    grant = PointsEventFactory(type="manual_adjust", member_id="u", points=big)
    event_ingest(program=program, event=grant, actor=actor)
    before = db_state()
    again = PointsEventFactory(type="manual_adjust", member_id="u", points=big)
    with pytest.raises(LedgerLimitExceeded):
        event_ingest(program=program, event=again, actor=actor)
    assert db_state() == before


def test_in_a_batch_only_the_item_is_refused(make_program, actor):
    program = make_program(earn_rate=D("5"))
    outcomes = events_ingest_batch(
        items=[
            (program, PurchaseFactory(member_id="good", amount=D("1000"))),
            (program, PurchaseFactory(member_id="big", amount=HUGE)),
            (program, PurchaseFactory(member_id="good", amount=D("2000"))),
        ],
        actor=actor,
    )
    assert isinstance(outcomes[1], LedgerLimitExceeded)
    assert not isinstance(outcomes[0], Exception)
    assert not isinstance(outcomes[2], Exception)
    assert balance_of(program, "good").lifetime_spend == 3000
    assert ledger_verify() == []


def test_over_the_api_the_batch_answers_each_item(make_program, api):  # noqa: F811
    program = make_program(merchant_id=OWN, earn_rate=D("5"))
    item = {"program_id": str(program.pk), "type": "purchase", "currency": "XOF"}
    body = {"events": [
        {**item, "member_id": "good", "amount": "1000", "idempotency_key": "k1"},
        {**item, "member_id": "big", "amount": str(HUGE), "idempotency_key": "k2"},
    ]}  # fmt: skip
    response = api("system").post("/api/v1/events/batch", body)
    assert response.status_code == 200
    good, big = response.json()["results"]
    assert good["status"] == 201
    assert (big["status"], big["error"]["code"]) == (422, "ledger_limit_exceeded")
    single = api("system").post("/api/v1/events", {**body["events"][1], "member_id": "big2"})
    assert (single.status_code, single.json()["code"]) == (422, "ledger_limit_exceeded")
