"""Values the set-based batch encodes or decodes itself: the same bytes as psycopg's dumpers
(or the uuid module) would give, the same values as the ORM reads."""

import ipaddress
import uuid
from datetime import UTC, datetime

import pytest
from django.db import transaction
from psycopg.adapt import PyFormat, Transformer

from loyalty.models import MemberBalance
from loyalty.services.batch import _balances_lock, _inet, _tiers, _uuid4s


def test_outbox_ids_are_random_version_4_uuids():
    ids = _uuid4s(2000)
    assert len(ids) == len(set(ids)) == 2000
    for data in ids:
        assert len(data) == 16
        assert uuid.UUID(bytes=data, version=4).bytes == data
    assert _uuid4s(0) == []


@pytest.mark.parametrize("text", ["127.0.0.1", "10.1.2.3", "::1", "2001:db8::1", "::ffff:1.2.3.4"])
def test_an_address_is_inets_binary_form_as_psycopg_writes_it(text):
    address = ipaddress.ip_address(text)
    dumper = Transformer().get_dumper(address, PyFormat.BINARY)
    assert _inet(address) == dumper.dump(address)


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_locked_balance_reads_as_the_orm_reads_it(program):
    last = datetime(2026, 11, 27, 23, 59, 59, 999_999, tzinfo=UTC)
    MemberBalance.objects.create(program=program, member_id="u_1", last_purchase_at=last)
    MemberBalance.objects.create(program=program, member_id="u_2")
    programs = {program.id.int: program}
    with transaction.atomic():
        locked = _balances_lock(
            programs, {(program.id.int, "u_1"), (program.id.int, "u_2")}, _tiers(programs),
            wait=True,
        )  # fmt: skip
    for member_id in ("u_1", "u_2"):
        stored = MemberBalance.objects.get(program=program, member_id=member_id)
        read = locked[(program.id.int, member_id)].last_purchase_at
        assert read == stored.last_purchase_at
        assert getattr(read, "tzinfo", None) is getattr(stored.last_purchase_at, "tzinfo", None)
    assert locked[(program.id.int, "u_1")].last_purchase_at == last
