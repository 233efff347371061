"""The single-event earning path on PostgreSQL: the balance lock also probes the key and draws
the entry id, one statement writes the entry, lot, outbox event, audit entry and balance, and
the budget shard is charged in that statement too, unless no shard can pay: then the event
runs again on the savepoint-guarded path."""

from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext

from audit.integrity import entry_digest_of
from audit.models import AuditEntry
from loyalty.models import BudgetShard, LedgerEntry, MemberBalance, OutboxEvent, PointLot
from loyalty.services import event_ingest
from loyalty.services.balances import lot_expiry
from loyalty.verify import ledger_verify
from tests.factories import PurchaseFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

D = Decimal


def test_one_statement_writes_the_rows_the_orm_path_would(program, actor, purchase):
    purchase(program, member_id="u_1", amount="10000")  # 200 points, the member exists now
    event = PurchaseFactory(member_id="u_1", amount=D("5000"), currency="XOF")

    result = event_ingest(program=program, event=event, actor=actor)

    entry = LedgerEntry.objects.get(idempotency_key=event.idempotency_key)
    assert entry.pk == result.entry.pk
    assert (entry.points, entry.balance_after) == (D("100"), D("300"))
    assert entry.created_at == result.entry.created_at
    balance = MemberBalance.objects.get(program=program, member_id="u_1")
    assert (balance.points_balance, balance.lifetime_earned) == (D("300"), D("300"))
    assert (balance.lifetime_spend, balance.purchase_count) == (D("15000"), 2)
    assert balance.last_purchase_at is not None
    lot = PointLot.objects.get(entry=entry)
    assert (lot.points, lot.remaining, lot.balance_id) == (D("100"), D("100"), balance.pk)
    assert lot.earned_at == entry.created_at
    assert lot.expires_at == lot_expiry(program, entry.created_at)
    outbox = OutboxEvent.objects.get(payload__transaction_id=str(entry.pk))
    assert outbox.event_type == "loyalty.points.earned"
    assert outbox.merchant_id == program.merchant_id
    assert outbox.payload["balance"]["points_balance"] == "300.00"
    audit = AuditEntry.objects.get(entity_type="transaction", entity_id=str(entry.pk))
    assert audit.action == "transaction.purchase"
    assert audit.actor_id == actor.id
    assert audit.changes["after"]["balance_after"] == "300.00"
    assert audit.digest == entry_digest_of(audit)  # exactly what audit_record would seal
    assert audit.txid > 0  # the database default still applies
    assert result.as_dict()["balance"]["points_balance"] == "300.00"
    assert ledger_verify() == []


def test_an_earning_of_an_existing_member_takes_two_statements(program, actor, purchase):
    purchase(program, member_id="u_1")
    event = PurchaseFactory(member_id="u_1", amount=D("5000"), currency="XOF")

    with CaptureQueriesContext(connection) as queries:
        event_ingest(program=program, event=event, actor=actor)

    # Lock (with key probe and entry id), then the one write with the budget shard; the
    # test's own transaction turns the service's BEGIN/COMMIT into a SAVEPOINT/RELEASE pair.
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 2, statements


def test_a_repeat_is_answered_from_the_lock_statement(program, actor):
    event = PurchaseFactory(member_id="u_1", amount=D("5000"), currency="XOF")
    first = event_ingest(program=program, event=event, actor=actor)
    audit_before = AuditEntry.objects.count()

    again = event_ingest(program=program, event=event, actor=actor)

    assert again.replayed
    assert again.as_dict() == first.as_dict()
    assert LedgerEntry.objects.filter(program=program).count() == 1
    assert AuditEntry.objects.count() == audit_before
    assert MemberBalance.objects.get(member_id="u_1").points_balance == D("100")


def test_a_charge_no_single_shard_can_pay_is_retried_through_the_slow_path(make_program, actor):
    # 3,000 XOF over 16 shards (187.50 each): 400 points cost more than any one shard holds,
    # so the savepoint-free fast path gives up, the transaction is rolled back and run again
    # with the savepoint-guarded path, whose slow path pays across the shards.
    program = make_program(budget_limit=D("3000"))
    event = PurchaseFactory(member_id="u_1", amount=D("20000"), currency="XOF")

    result = event_ingest(program=program, event=event, actor=actor)

    assert result.entry.points == D("400")
    assert LedgerEntry.objects.filter(program=program).count() == 1
    assert PointLot.objects.filter(program=program).count() == 1
    assert OutboxEvent.objects.filter(program=program).count() == 1
    assert AuditEntry.objects.filter(entity_type="transaction").count() == 1
    assert MemberBalance.objects.get(member_id="u_1").points_balance == D("400")
    spent = BudgetShard.objects.filter(program=program).aggregate(s=Sum("spent"))["s"]
    assert spent == D("400")
    assert ledger_verify() == []
