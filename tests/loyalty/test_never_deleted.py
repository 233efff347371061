"""Programs, merchants and balances are never deleted: the database refuses it. The ledger
entries, lots and outbox events that name them carry no foreign key constraint to them
(migration 0006), so these triggers are what keep every row they name in place."""

import pytest
from django.db import ProgrammingError, connection, transaction

from loyalty.models import LedgerEntry, Merchant, OutboxEvent, PointLot, Program

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
