"""Programs, merchants and balances are never deleted: the database refuses it. The ledger
entries, lots and outbox events that name them carry no foreign key constraint to them
(migration 0006), so these triggers are what keep every row they name in place."""

import pytest
from django.db import ProgrammingError, connection, transaction

from loyalty.models import LedgerEntry, MemberBalance, Merchant, OutboxEvent, PointLot, Program

from .conftest import balance_of

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def refused(statement, params):
    with (
        pytest.raises(ProgrammingError, match="Cannot delete rows"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, params)


def test_a_program_cannot_be_deleted_in_the_database(program):
    refused("DELETE FROM loyalty_program WHERE id = %s", [program.pk])
    assert Program.objects.filter(pk=program.pk).exists()


def test_a_merchant_without_programs_cannot_be_deleted_in_the_database():
    merchant = Merchant.objects.create(id="m_alone")
    refused("DELETE FROM loyalty_merchant WHERE id = %s", [merchant.pk])
    assert Merchant.objects.filter(pk=merchant.pk).exists()


def test_a_member_balance_cannot_be_deleted_in_the_database(program, purchase):
    purchase(program)
    balance = balance_of(program)
    refused("DELETE FROM loyalty_memberbalance WHERE id = %s", [balance.pk])
    balance.refresh_from_db()
    assert balance.points_balance > 0


def test_what_an_earning_writes_names_a_program_and_merchant_that_stay(program, purchase):
    purchase(program)
    entry = LedgerEntry.objects.get()
    lot, event = PointLot.objects.get(), OutboxEvent.objects.get()
    assert entry.program_id == lot.program_id == event.program_id == program.pk
    assert event.merchant_id == program.merchant_id
    assert entry.balance_id == lot.balance_id == balance_of(program).pk
    refused("DELETE FROM loyalty_program WHERE id = %s", [program.pk])
    refused("DELETE FROM loyalty_merchant WHERE id = %s", [program.merchant_id])
    refused("DELETE FROM loyalty_memberbalance WHERE id = %s", [entry.balance_id])
    # Still there, and still readable through the relations.
    assert entry.program.pk == program.pk
    assert lot.entry.pk == entry.pk
    assert lot.balance.pk == entry.balance.pk


# The one DELETE let through: by the transaction that inserted the balance, before it commits,
# while the row is as inserted and no entry names it (a batch taking back the balance of a
# member whose items were all refused).


def delete_balance(pk) -> None:
    """As the batch does it: the id listed as inserted by this transaction, then deleted."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('loyalty.balances_inserted', %s, true)", [str(pk)])
        cursor.execute("DELETE FROM loyalty_memberbalance WHERE id = %s", [pk])


def test_a_balance_inserted_here_but_not_listed_as_inserted_cannot_be_deleted(program):
    with transaction.atomic():
        balance = MemberBalance.objects.create(program=program, member_id="new")
        refused("DELETE FROM loyalty_memberbalance WHERE id = %s", [balance.pk])
    assert MemberBalance.objects.filter(pk=balance.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_committed_balance_this_transaction_updated_cannot_be_deleted(program):
    """An UPDATE gives the row this transaction's xmin: that alone must not make it
    deletable (here a committed member with a tier and spend, but no points or entry)."""
    member = MemberBalance.objects.create(
        program=program, member_id="committed", tier="gold", lifetime_spend=1234
    )
    with transaction.atomic():
        MemberBalance.objects.filter(pk=member.pk).update(tier="gold")
        refused("DELETE FROM loyalty_memberbalance WHERE id = %s", [member.pk])
    assert MemberBalance.objects.filter(pk=member.pk).exists()


def test_the_transaction_that_inserted_a_balance_may_take_it_back_untouched(program):
    # Here inside the test's transaction, in savepoints: their ids are this transaction's.
    with transaction.atomic():
        balance = MemberBalance.objects.create(program=program, member_id="new")
        with transaction.atomic():
            delete_balance(balance.pk)
    assert not MemberBalance.objects.filter(pk=balance.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_committed_balance_cannot_be_deleted_even_with_no_history(program):
    empty = MemberBalance.objects.create(program=program, member_id="empty")  # committed
    refused("DELETE FROM loyalty_memberbalance WHERE id = %s", [empty.pk])
    with transaction.atomic():
        # Frozen by this transaction (which the row's xmin now names): no longer as inserted.
        MemberBalance.objects.filter(pk=empty.pk).update(is_frozen=True)
        refused("DELETE FROM loyalty_memberbalance WHERE id = %s", [empty.pk])
    assert MemberBalance.objects.filter(pk=empty.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_balance_this_transaction_inserted_and_wrote_to_cannot_be_deleted(program, actor):
    from loyalty.services.ingestion import ingest_in_transaction
    from tests.factories import PurchaseFactory

    with transaction.atomic():
        ingest_in_transaction(program=program, event=PurchaseFactory(member_id="paid"), actor=actor)
        paid = MemberBalance.objects.get(program=program, member_id="paid")
        refused("DELETE FROM loyalty_memberbalance WHERE id = %s", [paid.pk])  # an entry
        marked = MemberBalance.objects.create(program=program, member_id="marked")
        MemberBalance.objects.filter(pk=marked.pk).update(fraud_flags=[{"code": "x"}])
        refused("DELETE FROM loyalty_memberbalance WHERE id = %s", [marked.pk])  # changed
        fresh = MemberBalance.objects.create(program=program, member_id="fresh")
        delete_balance(fresh.pk)
    assert set(MemberBalance.objects.values_list("member_id", flat=True)) == {"paid", "marked"}
