"""Over POST /api/v1/events/batch: an item refused for a member never seen leaves no member
behind (GET answers 404, as after the same event sent alone), on both batch paths."""

from decimal import Decimal

import pytest
from django.core.management import call_command

from loyalty.models import MemberBalance

from .conftest import OWN

pytestmark = pytest.mark.django_db


def purchase(program, member, key, amount="10000"):
    return {
        "program_id": str(program.pk), "member_id": member, "type": "purchase",
        "amount": amount, "currency": "XOF", "reference": f"order-{key}",
        "idempotency_key": key,
    }  # fmt: skip


def adjust(program, member, key, points):
    return {
        "program_id": str(program.pk), "member_id": member, "type": "manual_adjust",
        "points": points, "reason": "correction", "idempotency_key": key,
    }  # fmt: skip


def post_batch(client, *items):
    response = client.post("/api/v1/events/batch", {"events": list(items)})
    assert response.status_code == 200
    return [(r["status"], r.get("error", {}).get("code")) for r in response.json()["results"]]


def member_status(client, program, member) -> int:
    return client.get(f"/api/v1/programs/{program.pk}/members/{member}").status_code


def test_a_new_member_refused_for_the_budget_is_not_created(api, make_program):
    program = make_program(merchant_id=OWN, budget_limit=Decimal("200"))
    client = api("system")
    answers = post_batch(client, purchase(program, "paid", "k1"), purchase(program, "broke", "k2"))
    assert answers == [(201, None), (422, "budget_exhausted")]
    assert member_status(client, program, "paid") == 200
    assert member_status(client, program, "broke") == 404
    # The same event alone: refused, no member either.
    alone = client.post("/api/v1/events", {**purchase(program, "broke-2", "k3")}, key="k3")
    assert (alone.status_code, member_status(client, program, "broke-2")) == (422, 404)


def test_a_new_member_reusing_a_key_is_not_created(api, funded):
    client = api("system")
    assert post_batch(client, purchase(funded, "u_1", "taken")) == [(201, None)]
    answers = post_batch(client, purchase(funded, "ghost", "taken"))
    assert answers == [(422, "idempotency_key_reused")]
    assert member_status(client, funded, "ghost") == 404


def test_a_negative_adjustment_of_a_new_member_in_a_mixed_batch_is_not_created(api, funded):
    client = api("system")
    answers = post_batch(
        client,
        purchase(funded, "u_2", "p-1"),
        adjust(funded, "ghost", "a-1", "-5"),
        adjust(funded, "u_1", "a-2", "3"),
    )
    assert answers == [(201, None), (422, "insufficient_points"), (201, None)]
    assert member_status(client, funded, "ghost") == 404
    assert not MemberBalance.objects.filter(member_id="ghost").exists()
    call_command("loyalty_verify")  # exits 1 on any mismatch
