"""A program or a campaign has no key of its own in the ledger: its Idempotency-Key record is
all that stops a retry from making it again. The create and its record commit together, so a
request that dies after its write cannot leave the write made and the key unrecorded."""

import pytest
from django.urls import get_resolver

import access.idempotency
from access.models import IdempotencyRecord
from loyalty.models import Campaign, Program

from .test_idempotency import TRANSACTIONS
from .test_programs_campaigns import PROGRAM, campaign_body

pytestmark = pytest.mark.django_db


class ProcessDied(Exception):
    pass


def dies_storing_the_answer(monkeypatch):
    # The views first, so that none is imported under the patch: a module importing
    # `idempotency_complete` by name (loyalty/api/events.py) would keep the stand-in.
    get_resolver().url_patterns  # noqa: B018 (loads the URL configuration)

    def died(record, response):
        raise ProcessDied

    monkeypatch.setattr(access.idempotency, "idempotency_complete", died)


CREATES = pytest.mark.parametrize(
    ("role", "path", "body", "model"),
    [
        pytest.param("ops_marketing", "/api/v1/programs", lambda p: PROGRAM, Program, id="program"),
        pytest.param("ops_marketing", "/api/v1/campaigns", campaign_body, Campaign, id="campaign"),
    ],
)


@TRANSACTIONS
@CREATES
def test_a_create_whose_answer_was_not_stored_was_not_made(
    api, own_program, monkeypatch, role, path, body, model, own_transaction
):
    before, sent = model.objects.count(), body(own_program)
    with monkeypatch.context() as patched:
        dies_storing_the_answer(patched)
        with pytest.raises(ProcessDied):
            api(role).post(path, sent, key="create-1")
    assert model.objects.count() == before
    # The retry makes it, once; its repeat is a replay.
    made = api(role).post(path, sent, key="create-1")
    assert made.status_code == 201, made.json()
    again = api(role).post(path, sent, key="create-1")
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == made.json()["id"]
    assert model.objects.count() == before + 1
    assert IdempotencyRecord.objects.get(key="create-1").status == "completed"


@CREATES
def test_a_refused_create_is_stored_apart_and_makes_nothing(
    api, own_program, role, path, body, model
):
    before = model.objects.count()
    refused = api(role).post(path, {**body(own_program), "name": ""}, key="create-2")
    assert refused.status_code == 400
    assert model.objects.count() == before
    assert not IdempotencyRecord.objects.filter(key="create-2").exists()


@TRANSACTIONS
def test_a_voucher_redeem_whose_answer_was_not_stored_was_not_made(
    api, active_voucher, monkeypatch, own_transaction
):
    """A redeem's repeat finds the voucher redeemed (422): had the redeem committed without
    its record, the retry of a till that never heard the answer would be refused."""
    path = f"/api/v1/vouchers/{active_voucher.code}/redeem"
    with monkeypatch.context() as patched:
        dies_storing_the_answer(patched)
        with pytest.raises(ProcessDied):
            api("system").post(path, key="redeem-1")
    active_voucher.refresh_from_db()
    assert active_voucher.status == "active"
    redeemed = api("system").post(path, key="redeem-1")
    assert (redeemed.status_code, redeemed.json()["status"]) == (200, "redeemed")
    again = api("system").post(path, key="redeem-1")
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == redeemed.json()
