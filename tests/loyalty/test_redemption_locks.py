"""A capture or release locks its member's balance and redemption, not the program: another
member's hold, capture or release in the same program goes on meanwhile."""

import threading
from decimal import Decimal

import pytest
from django.db import OperationalError, connection, transaction

from loyalty.services import event_ingest, redemption_release
from loyalty.services.redemptions import _lock_redemption
from loyalty.verify import ledger_verify
from tests.conftest import hold
from tests.factories import PurchaseFactory
from tests.parallel import join_all, start_thread

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_a_capture_in_flight_does_not_hold_up_another_members_release(program, actor):
    for member_id in ("x", "z"):
        event = PurchaseFactory(member_id=member_id, amount=Decimal("5000"), currency="XOF")
        event_ingest(program=program, event=event, actor=actor)
    held_x = hold(program, "50", actor, key="kx", member_id="x")
    held_z = hold(program, "50", actor, key="kz", member_id="z")
    locked, done = threading.Event(), threading.Event()

    def capture_in_flight():  # a capture of x, between its locks and its commit
        with transaction.atomic():
            _lock_redemption(held_x.pk)
            locked.set()
            done.wait(20)
        return "ok"

    results: dict = {}
    capture = start_thread(results, "capture", capture_in_flight)
    try:
        assert locked.wait(10)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
        try:
            released = redemption_release(redemption_id=held_z.pk, actor=actor)
        except OperationalError as exc:  # lock_timeout: it waited for the other member
            pytest.fail(f"the release of z waited for the capture of x: {exc}")
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
    finally:
        done.set()
        join_all([capture])
    assert released.status == "cancelled"
    assert results == {"capture": "ok"}
    assert ledger_verify() == []
