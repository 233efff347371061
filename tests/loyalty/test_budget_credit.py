"""What a refund gives back to the budget: exactly what its award was charged, at the point value
of the award, and never room past the limit, even once the limit is below what is spent."""

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F, Sum

from loyalty.errors import BudgetExhausted
from loyalty.models import BudgetShard, LedgerEntry
from loyalty.services import program_update
from loyalty.services.batch import events_ingest_batch
from loyalty.services.ingestion import earning, statement
from loyalty.verify import ledger_verify
from tests.factories import PurchaseFactory

from .conftest import db_state

pytestmark = pytest.mark.django_db

D = Decimal


def budget(program) -> tuple[Decimal, Decimal]:
    """(total spent, total allocated) of the program's shards."""
    totals = BudgetShard.objects.filter(program=program).aggregate(
        spent=Sum("spent"), allocated=Sum("allocated")
    )
    return totals["spent"], totals["allocated"]


def awards_until_refused(program, award, points: str, members: int = 50) -> Decimal:
    """Awards `points` to new members until the budget refuses one; the points awarded."""
    awarded = D(0)
    for i in range(members):
        try:
            awarded += award(program, points, member_id=f"new-{i}").entry.points
        except BudgetExhausted:
            return awarded
    raise AssertionError("the budget never refused an award")


def set_point_value(program, value: str, actor):
    return program_update(program_id=program.pk, changes={"point_value": D(value)}, actor=actor)


def set_limit(program, value: str, actor):
    return program_update(program_id=program.pk, changes={"budget_limit": D(value)}, actor=actor)


def test_every_award_records_the_point_value_it_was_charged_at(
    make_program, purchase, award, actor
):
    program = make_program(point_value=D("0.350000"), currency="USD")
    single = purchase(program, amount="100").entry
    referral = award(program, "40", member_id="u_2").entry
    [batched] = events_ingest_batch(
        items=[(program, PurchaseFactory(member_id="u_3", amount=D("100"), currency="USD"))],
        actor=actor,
    )

    assert single.details["point_value"] == "0.35"
    assert referral.details["point_value"] == "0.35"
    assert LedgerEntry.objects.get(pk=batched.entry.pk).details["point_value"] == "0.35"


def test_full_refund_after_the_point_value_was_raised_gives_back_what_was_charged(
    make_program, purchase, refund, award, actor
):
    program = make_program(budget_limit=D("1000"))
    purchase(program, amount="10000", reference="order-1")  # 200 points, 200 XOF
    program = set_point_value(program, "5", actor)

    refund(program, "order-1", amount="10000")

    # 200 XOF back, not 200 points at today's 5 XOF (1,000 XOF).
    assert budget(program) == (D("0"), D("1000"))
    # The whole limit, and no more, pays for new awards: 5 x 40 points x 5 XOF.
    assert awards_until_refused(program, award, "40") == D("200")
    assert budget(program) == (D("1000"), D("1000"))
    assert ledger_verify() == []


@pytest.mark.parametrize("point_value", ["0.1", "5"])
@pytest.mark.parametrize(
    "path",
    [
        "in_a_transaction",  # the test's: the ORM path
        # Outside a transaction, an earning goes through the pipelined statement.
        pytest.param(
            "pipelined", marks=[pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
        ),
    ],
)
def test_a_full_refund_after_a_point_value_change_gives_back_what_was_charged(
    make_program, purchase, refund, actor, point_value, path
):
    program = make_program(budget_limit=D("1000"))
    entry = purchase(program, amount="10000", reference="order-1").entry  # 200 XOF
    assert entry.details["point_value"] == "1"
    program = set_point_value(program, point_value, actor)

    refund(program, "order-1", amount="10000")

    assert budget(program) == (D("0"), D("1000"))
    assert ledger_verify() == []


def test_partial_refunds_after_a_point_value_change_add_up_to_the_charge(
    make_program, purchase, refund, actor
):
    program = make_program(budget_limit=D("100000"))
    purchase(program, amount="12525", reference="order-1")  # 250.50 points, 251 XOF
    purchase(program, member_id="u_2", amount="10000")  # 200 XOF, stays awarded
    program = set_point_value(program, "3", actor)

    refund(program, "order-1", amount="6262")
    refund(program, "order-1", amount="6263")

    assert budget(program) == (D("200"), D("100000"))
    assert ledger_verify() == []


@pytest.fixture
def unrecorded(monkeypatch):
    """Awards written as before the point value was recorded (both single paths' rules)."""

    def earn_apply(**kwargs):
        result = real(**kwargs)
        del result.details["point_value"]
        return result

    real = earning.earn_apply
    monkeypatch.setattr(earning, "earn_apply", earn_apply)
    monkeypatch.setattr(statement, "earn_apply", earn_apply)


@pytest.mark.usefixtures("unrecorded")
def test_a_refund_of_an_entry_without_a_recorded_point_value_uses_todays(
    make_program, purchase, refund, actor
):
    # The documented fallback for entries written before the point value was recorded.
    program = make_program(budget_limit=D("1000"))
    entry = purchase(program, amount="10000", reference="order-1").entry  # 200 XOF
    assert "point_value" not in entry.details
    purchase(program, member_id="u_2", amount="20000")  # 400 XOF
    program = set_point_value(program, "0.5", actor)

    refund(program, "order-1", amount="10000")

    assert budget(program) == (D("500"), D("1000"))


@pytest.mark.usefixtures("unrecorded")
def test_a_fallback_credit_past_what_was_charged_never_makes_room_past_the_limit(
    make_program, purchase, refund, award, actor
):
    program = make_program(budget_limit=D("1000"))
    purchase(program, amount="10000", reference="order-1")  # 200 XOF
    program = set_point_value(program, "5", actor)

    refund(program, "order-1", amount="10000")  # 1,000 XOF at today's value: 200 given back

    assert budget(program) == (D("0"), D("1000"))
    assert awards_until_refused(program, award, "40") == D("200")
    assert ledger_verify() == []


def test_a_manual_debit_gives_nothing_back_to_the_budget(make_program, award, actor):
    program = make_program(budget_limit=D("1000"))
    award(program, "200")  # 200 XOF
    program = set_point_value(program, "5", actor)

    award(program, "-200", type="manual_adjust", reason="correction")

    assert budget(program) == (D("200"), D("1000"))
    assert awards_until_refused(program, award, "40") == D("160")  # 800 XOF at 5 XOF
    assert ledger_verify() == []


def test_a_refund_after_the_limit_was_lowered_below_spending_makes_no_room(
    make_program, purchase, refund, award, actor
):
    program = make_program(budget_limit=D("1000"))
    for i in range(4):
        purchase(program, member_id=f"u_{i}", amount="10000", reference=f"order-{i}")
    program = set_limit(program, "300", actor)  # 800 XOF already spent
    with pytest.raises(BudgetExhausted):
        award(program, "1", member_id="new")

    refund(program, "order-0", member_id="u_0", amount="10000")

    # 600 spent, still past the 300 limit: the allocation follows the spending down.
    assert budget(program) == (D("600"), D("600"))
    before = db_state()
    with pytest.raises(BudgetExhausted):
        award(program, "1", member_id="new")
    assert db_state() == before
    assert ledger_verify() == []

    refund(program, "order-1", member_id="u_1", amount="10000")
    refund(program, "order-2", member_id="u_2", amount="10000")

    # 200 spent: the room is what the limit leaves, 100.
    assert budget(program) == (D("200"), D("300"))
    assert awards_until_refused(program, award, "10") == D("100")
    assert budget(program) == (D("300"), D("300"))
    assert ledger_verify() == []


def test_a_refund_under_a_budget_with_room_changes_one_shard_only(make_program, purchase, refund):
    program = make_program(budget_limit=D("10000"))
    purchase(program, amount="10000", reference="order-1")  # 200 XOF, on one shard
    before = {s.shard: (s.allocated, s.spent) for s in BudgetShard.objects.filter(program=program)}

    refund(program, "order-1", amount="5000")

    after = {s.shard: (s.allocated, s.spent) for s in BudgetShard.objects.filter(program=program)}
    changed = [shard for shard in before if before[shard] != after[shard]]
    assert len(changed) == 1
    [shard] = changed
    assert after[shard] == (before[shard][0], before[shard][1] - D("100"))


def run_verify() -> str:
    out = StringIO()
    call_command("loyalty_verify", stdout=out, stderr=StringIO())
    return out.getvalue()


def test_verify_reports_a_budget_allocated_past_its_limit(make_program, purchase, actor):
    program = make_program(budget_limit=D("1000"))
    purchase(program, amount="10000")
    program = set_limit(program, "100", actor)  # 200 spent: allocated 200, no room
    assert "OK" in run_verify()

    # What a refund's credit used to leave: spending lowered, the allocation kept.
    shard = BudgetShard.objects.filter(program=program, spent__gt=0).get()
    BudgetShard.objects.filter(pk=shard.pk).update(spent=F("spent") - 150)
    err = StringIO()

    with pytest.raises(CommandError):
        call_command("loyalty_verify", stdout=StringIO(), stderr=err)

    assert "budget_overallocated" in err.getvalue()
    # The program id as the database returns it (SQLite keeps UUIDs as bare hex).
    assert str(program.pk) in err.getvalue() or program.pk.hex in err.getvalue()


def test_a_tnd_budget_is_spread_charged_and_credited_in_the_places_it_is_stored(
    make_program, purchase, refund, actor
):
    """TND has three minor digits and the money columns two: a budget of 10 TND spread over
    the shards as 0.625 each was stored as 0.63 each, 10.08 in all, and verify saw it past
    its limit from the moment the program was made. Money is kept to the stored places."""
    program = make_program(
        currency="TND", budget_limit=D("10"), point_value=D("0.001"), earn_rate=D("1")
    )
    assert budget(program) == (D("0"), D("10"))
    assert ledger_verify() == []
    purchase(program, amount="5.55", reference="t1")  # 5.55 points at 0.001: 0.01 TND
    assert budget(program) == (D("0.01"), D("10"))
    program = set_limit(program, "10.01", actor)
    assert budget(program)[1] == D("10.01")
    refund(program, "t1", amount="5.55")
    assert budget(program) == (D("0"), D("10.01"))
    assert ledger_verify() == []


def test_a_limit_finer_than_the_currency_is_refused_on_every_path(make_program, actor):
    """The services the API, the admin and an approval's execution call, and the approval
    request itself (refused when filed, not at its last approval)."""
    from approvals.registry import _validate_budget
    from loyalty.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as refused:
        make_program(budget_limit=D("100.50"))
    assert list(refused.value.errors) == ["budget_limit"]
    program = make_program(budget_limit=D("100"))
    with pytest.raises(ValidationFailed):
        set_limit(program, "200.75", actor)
    with pytest.raises(ValidationFailed):
        _validate_budget({"program_id": str(program.pk), "changes": {"budget_limit": "300.25"}})
    assert budget(program) == (D("0"), D("100"))
    usd = make_program(currency="USD", budget_limit=D("100.50"))
    assert budget(usd) == (D("0"), D("100.50"))
