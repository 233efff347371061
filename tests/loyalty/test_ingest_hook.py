"""`event_ingest(in_transaction=...)`: a caller's write joins the event's transaction, after
the event's rows and before COMMIT; it does not run for a replay, and when it fails the event
is not written either."""

from decimal import Decimal

import pytest

from loyalty.models import LedgerEntry
from loyalty.services import event_ingest
from tests.factories import PurchaseFactory

from .conftest import balance_of, db_state

pytestmark = pytest.mark.django_db

D = Decimal


def test_the_hook_runs_once_after_the_events_rows(program, actor):
    event = PurchaseFactory(member_id="u_1", amount=D("5000"))
    seen = []

    def hook(result):
        # The entry and the balance are already written, in the same transaction.
        seen.append((result, LedgerEntry.objects.filter(pk=result.entry.pk).exists()))
        seen.append(balance_of(program).points_balance)

    result = event_ingest(program=program, event=event, actor=actor, in_transaction=hook)

    assert seen == [(result, True), D("100")]
    assert result.replayed is False


def test_the_hook_does_not_run_for_a_replay(program, actor):
    event = PurchaseFactory(member_id="u_1", amount=D("5000"))
    event_ingest(program=program, event=event, actor=actor)
    calls = []

    again = event_ingest(program=program, event=event, actor=actor, in_transaction=calls.append)

    assert again.replayed is True
    assert calls == []


def test_a_failing_hook_rolls_the_event_back(program, actor, purchase):
    purchase(program, member_id="u_1")
    before = db_state()

    def hook(result):
        raise RuntimeError("the caller's write failed")

    with pytest.raises(RuntimeError):
        event_ingest(
            program=program,
            event=PurchaseFactory(member_id="u_1", amount=D("5000")),
            actor=actor,
            in_transaction=hook,
        )

    assert db_state() == before
    assert balance_of(program).points_balance == D("200")  # the first purchase only
