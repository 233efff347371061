"""Refusals: each is a typed error with a stable code, and nothing changes (no entry, lot,
audit row, outbox row, balance movement or budget spend)."""

from decimal import Decimal

import pytest

from loyalty.actors import Actor
from loyalty.errors import (
    AccountFrozen,
    BudgetExhausted,
    CurrencyMismatch,
    FraudReview,
    OriginalNotFound,
    ProgramInactive,
    ValidationFailed,
)
from loyalty.models import MemberBalance
from loyalty.services import balance_set_frozen, event_ingest, program_set_status
from loyalty.services.balances import has_blocking_flag
from loyalty.verify import ledger_verify
from tests.factories import PointsEventFactory, PurchaseFactory

from .conftest import balance_of, db_state

pytestmark = pytest.mark.django_db

D = Decimal
FINANCE = Actor(id="fin-1", role="finance_ops")


def test_frozen_member_earns_nothing(program, purchase, award):
    purchase(program, amount="10000")
    balance_set_frozen(program=program, member_id="u_1", frozen=True, actor=FINANCE)
    before = db_state()

    with pytest.raises(AccountFrozen) as exc:
        purchase(program, amount="10000")
    assert exc.value.code == "account_frozen"
    with pytest.raises(AccountFrozen):
        award(program, "100")

    assert db_state() == before
    assert balance_of(program).points_balance == D("200.00")


def test_staff_corrections_still_apply_to_a_frozen_member(program, purchase):
    """A freeze stops the member's own activity (earning, redeeming); finance corrects the
    account while it is frozen, which is what a fraud review freezes it for."""
    purchase(program, amount="10000")  # 200 points
    balance_set_frozen(program=program, member_id="u_1", frozen=True, actor=FINANCE)

    debit = event_ingest(
        program=program,
        event=PointsEventFactory(
            member_id="u_1", type="manual_adjust", points=D("-150"), reason="fraudulent earning"
        ),
        actor=FINANCE,
    )

    assert debit.entry.points == D("-150.00")
    balance = balance_of(program)
    assert (balance.points_balance, balance.is_frozen) == (D("50.00"), True)


def test_unfrozen_member_earns_again(program, purchase):
    purchase(program, amount="10000")
    balance_set_frozen(program=program, member_id="u_1", frozen=True, actor=FINANCE)
    balance_set_frozen(program=program, member_id="u_1", frozen=False, actor=FINANCE)

    assert purchase(program, amount="10000").entry.points == D("200.00")


@pytest.mark.parametrize("status", ["suspended", "closed"])
def test_inactive_program_refuses_earning(program, purchase, award, status):
    purchase(program, amount="10000")
    program_set_status(program_id=program.pk, status=status, actor=FINANCE)
    program.refresh_from_db()
    before = db_state()

    with pytest.raises(ProgramInactive) as exc:
        purchase(program, amount="10000")
    assert exc.value.code == "program_inactive"
    with pytest.raises(ProgramInactive):
        purchase(program, member_id="new-member", amount="10000")
    with pytest.raises(ProgramInactive):
        award(program, "10", type="campaign_bonus")

    assert db_state() == before
    assert not MemberBalance.objects.filter(member_id="new-member").exists()


def test_suspended_program_still_claws_back_refunds_but_closed_does_not(program, purchase, refund):
    purchase(program, amount="10000", reference="order-1")
    program_set_status(program_id=program.pk, status="suspended", actor=FINANCE)
    program.refresh_from_db()

    # Refusing a refund would let the member keep points nobody paid for.
    assert refund(program, "order-1", amount="5000").entry.points == D("-100.00")

    program_set_status(program_id=program.pk, status="closed", actor=FINANCE)
    program.refresh_from_db()
    before = db_state()
    with pytest.raises(ProgramInactive):
        refund(program, "order-1", amount="5000")
    assert db_state() == before


def test_currency_mismatch_is_refused(program, purchase):
    purchase(program, amount="10000")
    before = db_state()

    with pytest.raises(CurrencyMismatch) as exc:
        purchase(program, amount="10000", currency="USD")

    assert exc.value.code == "currency_mismatch"
    assert exc.value.context == {"expected": "XOF", "received": "USD"}
    assert db_state() == before


def test_blocking_fraud_flag_refuses_earning_while_detection_is_on(make_program, purchase):
    program = make_program()
    purchase(program, amount="10000")
    balance = balance_of(program)
    balance.fraud_flags = [{"code": "manual_review"}]
    balance.save(update_fields=["fraud_flags"])
    assert has_blocking_flag(balance)
    before = db_state()

    with pytest.raises(FraudReview) as exc:
        purchase(program, amount="10000")

    assert exc.value.code == "fraud_review"
    assert db_state() == before


def test_fraud_flag_is_ignored_when_detection_is_off(make_program, purchase):
    program = make_program(fraud_detection_enabled=False)
    purchase(program, amount="10000")
    balance = balance_of(program)
    balance.fraud_flags = [{"code": "manual_review"}]
    balance.save(update_fields=["fraud_flags"])

    assert purchase(program, amount="10000").entry.points == D("200.00")


def test_budget_caps_the_last_award_then_refuses_with_budget_exhausted(make_program, purchase):
    program = make_program(budget_limit=D("300"))  # XOF, 1 XOF per point

    first = purchase(program, amount="10000")  # 200 points
    second = purchase(program, member_id="u_2", amount="10000")  # 100 left

    assert first.entry.points == D("200.00")
    assert second.entry.points == D("100.00")
    assert second.as_dict()["breakdown"]["capped_by"] == "budget"
    assert second.as_dict()["breakdown"]["capped_points"] == "100.00"
    before = db_state()
    assert before["budget_spent"] == D("300")

    with pytest.raises(BudgetExhausted) as exc:
        purchase(program, member_id="u_3", amount="10000")

    assert exc.value.code == "budget_exhausted"
    assert db_state() == before
    assert not MemberBalance.objects.filter(member_id="u_3").exists()
    assert ledger_verify() == []


def test_budget_counts_money_at_point_value_rounded_up(make_program, purchase):
    # 0.5 XOF per point; 250.50 points cost 125.25 XOF, charged as 126 (XOF has no cents), so
    # rounding can never let awards pass the limit.
    program = make_program(point_value=D("0.5"), budget_limit=D("1000"))

    purchase(program, amount="12525")

    assert db_state()["budget_spent"] == D("126")


def test_manual_credit_past_the_budget_is_refused_whole(make_program, award):
    program = make_program(budget_limit=D("100"))
    before = db_state()

    with pytest.raises(BudgetExhausted):
        award(program, "150", type="manual_adjust", reason="goodwill")

    assert db_state() == before


def test_refund_of_unknown_purchase_is_refused(program, purchase, refund):
    purchase(program, amount="10000", reference="order-1")
    before = db_state()

    with pytest.raises(OriginalNotFound) as exc:
        refund(program, "order-404", amount="100")
    assert exc.value.code == "original_not_found"
    # Another member's purchase is not theirs to refund.
    with pytest.raises(OriginalNotFound):
        refund(program, "order-1", member_id="u_2", amount="100")

    assert db_state()["entries"] == before["entries"]
    assert db_state()["points"] == before["points"]


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "bogus"},
        {"member_id": ""},
        {"idempotency_key": ""},
        {"currency": ""},
    ],
)
def test_invalid_event_is_refused_with_field_errors(program, actor, fields):
    before = db_state()
    with pytest.raises(ValidationFailed) as exc:
        event_ingest(program=program, event=PurchaseFactory(**fields), actor=actor)
    assert set(exc.value.errors) == {next(iter(fields))}
    assert db_state() == before


def test_points_event_needs_a_reason(program, actor):
    with pytest.raises(ValidationFailed) as exc:
        event_ingest(program=program, event=PointsEventFactory(reason=""), actor=actor)
    assert "reason" in exc.value.errors


def test_award_with_a_program_read_before_its_budget_limit_was_set_respects_the_limit(
    make_program, purchase, actor
):
    from loyalty.models import Program
    from loyalty.services import program_update

    program = make_program(budget_limit=None)
    stale = Program.objects.get(pk=program.pk)  # e.g. a request that read it a moment ago
    program_update(program_id=program.pk, changes={"budget_limit": D("150")}, actor=actor)

    result = purchase(stale, amount="10000")  # 200 points, 150 affordable

    assert result.entry.points == D("150.00")
    assert result.as_dict()["breakdown"]["capped_by"] == "budget"
    assert db_state()["budget_spent"] == D("150")
    assert ledger_verify() == []


def test_award_with_a_program_read_before_its_budget_limit_was_lifted_is_paid(
    make_program, purchase, actor
):
    from loyalty.models import Program
    from loyalty.services import program_update

    program = make_program(budget_limit=D("100"))
    stale = Program.objects.get(pk=program.pk)
    program_update(program_id=program.pk, changes={"budget_limit": None}, actor=actor)

    result = purchase(stale, amount="10000")

    assert result.entry.points == D("200.00")
    assert db_state()["budget_spent"] == D("200")
    assert ledger_verify() == []


@pytest.mark.parametrize("amount", ["NaN", "sNaN", "Infinity", "1E+25", "1000000000000000000"])
def test_amount_that_is_not_a_finite_number_the_ledger_can_hold_is_refused(program, actor, amount):
    before = db_state()
    with pytest.raises(ValidationFailed) as exc:
        event_ingest(program=program, event=PurchaseFactory(amount=D(amount)), actor=actor)
    assert "amount" in exc.value.errors
    assert db_state() == before


@pytest.mark.parametrize("points", ["NaN", "Infinity", "1E+20"])
def test_points_that_are_not_a_finite_number_the_ledger_can_hold_are_refused(
    program, actor, points
):
    before = db_state()
    with pytest.raises(ValidationFailed) as exc:
        event_ingest(program=program, event=PointsEventFactory(points=D(points)), actor=actor)
    assert "points" in exc.value.errors
    assert db_state() == before
