"""Values the set-based batch sends in their column's binary form itself: the same bytes as
psycopg's dumpers (or the uuid module) would give."""

import ipaddress
import uuid

import pytest
from psycopg.adapt import PyFormat, Transformer

from loyalty.services.batch import _inet, _uuid4s


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
