"""The per-request health check of a kept connection (CONN_HEALTH_CHECKS): no round trip while
the idle connection's socket is quiet, Django's `SELECT 1` as soon as the server said
something, and a connection the server ended is found unusable (then replaced)."""

import time

import pytest
from django.db import connection, connections
from django.db.backends.postgresql import base as django_postgresql

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def kept():
    """A second connection to the test database, like a worker's kept one."""
    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    yield wrapper
    wrapper.close()


def test_a_quiet_idle_connection_is_usable_without_a_round_trip(kept, monkeypatch):
    def round_trip(self):
        raise AssertionError("SELECT 1 sent")

    monkeypatch.setattr(django_postgresql.DatabaseWrapper, "is_usable", round_trip)
    assert kept.is_usable()


def test_a_pending_message_falls_back_to_select_1(kept):
    with kept.connection.cursor() as cursor:
        cursor.execute("LISTEN health_check_test")
    # NOTIFY is delivered at commit: sent from a third connection, outside the test's
    # transaction.
    other = connections.create_connection("default")
    other.ensure_connection()
    other.connection.autocommit = True
    other.connection.execute("NOTIFY health_check_test")
    other.close()
    time.sleep(0.1)
    assert kept.is_usable()  # SELECT 1 read the notification and answered


def test_a_connection_the_server_ended_is_unusable(kept):
    with kept.connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    time.sleep(0.2)
    assert not kept.is_usable()
