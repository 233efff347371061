"""`manage.py loyalty_verify`: exit 0 on a sound ledger, non-zero with a report naming each
balance that disagrees with its ledger entries, holds or lots."""

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import ProgrammingError, connection, transaction
from django.db.models import F

from loyalty.models import LedgerEntry, MemberBalance, PointLot
from tests.conftest import hold

from .conftest import balance_of

pytestmark = pytest.mark.django_db

D = Decimal


@pytest.fixture
def ledger(program, purchase, refund, award, actor):
    """A little of everything: purchases, a refund, a referral, a hold and a capture."""
    purchase(program, member_id="a", amount="10000", reference="order-a")
    purchase(program, member_id="b", amount="5000")
    refund(program, "order-a", member_id="a", amount="2500")
    award(program, "40", member_id="b")
    hold(program, "50", actor, key="r1", member_id="a", capture=True)
    hold(program, "30", actor, key="r2", member_id="b")
    return program


def run_verify() -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("loyalty_verify", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_sound_ledger_passes(ledger):
    out, err = run_verify()
    assert "OK" in out
    assert "2 members" in out
    assert err == ""


def test_balance_altered_behind_the_service_is_reported(ledger):
    MemberBalance.objects.filter(member_id="a").update(points_balance=F("points_balance") + 1)
    err = StringIO()

    with pytest.raises(CommandError) as exc:
        call_command("loyalty_verify", stdout=StringIO(), stderr=err)

    assert "mismatch" in str(exc.value)
    report = err.getvalue()
    assert "balance_vs_ledger" in report
    assert "'a'" in report
    assert "'b'" not in report.split("balance_vs_ledger")[1].split("\n")[0]


def test_locked_points_without_a_hold_are_reported(ledger):
    MemberBalance.objects.filter(member_id="b").update(locked=D("0"))
    err = StringIO()
    with pytest.raises(CommandError):
        call_command("loyalty_verify", stdout=StringIO(), stderr=err)
    assert "locked_vs_holds" in err.getvalue()
    assert "'b'" in err.getvalue()


def test_lots_out_of_step_with_the_balance_are_reported(ledger, program):
    lot = PointLot.objects.filter(balance=balance_of(program, "b"), remaining__gt=0).first()
    PointLot.objects.filter(pk=lot.pk).update(remaining=F("remaining") - 1)
    err = StringIO()
    with pytest.raises(CommandError):
        call_command("loyalty_verify", stdout=StringIO(), stderr=err)
    assert "lots_vs_balance" in err.getvalue()


def _sql(statement, params):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


@pytest.mark.postgres
def test_ledger_entries_cannot_be_updated_or_deleted_in_the_database(ledger):
    entry = LedgerEntry.objects.first()
    for statement in (
        lambda: LedgerEntry.objects.filter(pk=entry.pk).update(points=D("1000000")),
        lambda: _sql("DELETE FROM loyalty_ledgerentry WHERE id = %s", [entry.pk]),
    ):
        with pytest.raises(ProgrammingError, match="Cannot update or delete"), transaction.atomic():
            statement()
    entry.refresh_from_db()
    assert entry.points != D("1000000")
    run_verify()


@pytest.mark.postgres
def test_an_entry_rewritten_behind_the_trigger_breaks_the_chain_and_is_reported(ledger):
    entry = LedgerEntry.objects.filter(type="purchase").order_by("id").first()
    # What only the table owner can do (the test's transaction rolls it all back).
    _sql("SET CONSTRAINTS ALL IMMEDIATE", [])  # no pending FK checks, or ALTER refuses
    _sql("ALTER TABLE loyalty_ledgerentry DISABLE TRIGGER USER", [])
    LedgerEntry.objects.filter(pk=entry.pk).update(points=F("points") + 5)
    _sql("ALTER TABLE loyalty_ledgerentry ENABLE TRIGGER USER", [])
    err = StringIO()

    with pytest.raises(CommandError):
        call_command("loyalty_verify", stdout=StringIO(), stderr=err)

    report = err.getvalue()
    # The balance no longer equals its entries, and the running totals stop matching.
    assert "balance_vs_ledger" in report
    assert "balance_after_chain" in report


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_a_limit_below_one_is_refused_not_an_ok(program, limit):
    """With no row shown per check, every check came back empty: OK on a corrupt ledger."""
    MemberBalance.objects.create(program=program, member_id="tampered", points_balance=Decimal(1))
    with pytest.raises(CommandError, match="--limit"):
        call_command("loyalty_verify", "--limit", limit, stdout=StringIO(), stderr=StringIO())
