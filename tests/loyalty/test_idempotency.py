"""Exactly-once ingestion: a repeat of an idempotency key answers the first result and writes
nothing; the same key with a different body is refused."""

from decimal import Decimal

import pytest

from loyalty.errors import IdempotencyKeyReused
from loyalty.models import LedgerEntry
from loyalty.services import event_ingest
from loyalty.verify import ledger_verify
from tests.factories import PurchaseFactory, RefundFactory

from .conftest import balance_of, db_state

pytestmark = pytest.mark.django_db

D = Decimal


def test_replay_answers_the_first_result_and_writes_nothing(program, actor):
    event = PurchaseFactory(member_id="u_1", amount=D("12500"), idempotency_key="k-1")
    first = event_ingest(program=program, event=event, actor=actor)
    before = db_state()

    again = event_ingest(program=program, event=event, actor=actor)

    assert again.replayed is True
    assert first.replayed is False
    assert again.entry.pk == first.entry.pk
    assert again.as_dict() == first.as_dict()
    assert db_state() == before
    assert balance_of(program).points_balance == D("250.00")


def test_replay_after_later_events_still_answers_the_first_balance(program, actor, purchase):
    event = PurchaseFactory(member_id="u_1", amount=D("10000"), idempotency_key="k-1")
    first = event_ingest(program=program, event=event, actor=actor).as_dict()
    purchase(program, amount="10000")

    again = event_ingest(program=program, event=event, actor=actor).as_dict()

    assert again == first
    assert again["balance"]["points_balance"] == "200.00"


def test_replay_of_an_equal_amount_written_differently_is_a_replay(program, actor):
    event_ingest(
        program=program,
        event=PurchaseFactory(
            member_id="u_1", amount=D("12500"), idempotency_key="k-1", reference="o"
        ),
        actor=actor,
    )
    again = event_ingest(
        program=program,
        event=PurchaseFactory(
            member_id="u_1", amount=D("12500.00"), idempotency_key="k-1", reference="o"
        ),
        actor=actor,
    )
    assert again.replayed is True


@pytest.mark.parametrize(
    "change",
    [
        {"amount": D("12600")},
        {"member_id": "u_2"},
        {"reference": "order-other"},
        {"type": "refund", "original_reference": "order-x"},
    ],
)
def test_same_key_with_a_different_body_is_refused(program, actor, change):
    base = {"member_id": "u_1", "amount": D("12500"), "idempotency_key": "k-1", "reference": "o1"}
    event_ingest(program=program, event=PurchaseFactory(**base), actor=actor)
    before = db_state()

    factory = RefundFactory if change.get("type") == "refund" else PurchaseFactory
    with pytest.raises(IdempotencyKeyReused) as exc:
        event_ingest(program=program, event=factory(**{**base, **change}), actor=actor)

    assert exc.value.code == "idempotency_key_reused"
    assert db_state() == before


def test_keys_are_unique_per_program_not_globally(make_program, actor):
    one = make_program(name="One")
    two = make_program(name="Two")
    event = PurchaseFactory(member_id="u_1", amount=D("10000"), idempotency_key="shared-key")

    a = event_ingest(program=one, event=event, actor=actor)
    b = event_ingest(program=two, event=event, actor=actor)

    assert a.entry.pk != b.entry.pk
    assert not b.replayed
    assert LedgerEntry.objects.filter(idempotency_key="shared-key").count() == 2
    assert ledger_verify() == []


def test_refused_event_does_not_burn_its_key(make_program, actor):
    from loyalty.errors import BudgetExhausted
    from loyalty.services import program_update

    program = make_program(budget_limit=D("0"))
    event = PurchaseFactory(member_id="u_1", amount=D("10000"), idempotency_key="k-1")
    with pytest.raises(BudgetExhausted):
        event_ingest(program=program, event=event, actor=actor)

    program = program_update(program_id=program.pk, changes={"budget_limit": D("500")}, actor=actor)
    result = event_ingest(program=program, event=event, actor=actor)

    assert result.replayed is False
    assert result.entry.points == D("200.00")
